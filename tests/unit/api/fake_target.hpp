#pragma once
// A Target with ports in a table: what the request handler and the server are tested against.
#include <fmt/format.h>

#include <functional>
#include <string>
#include <vector>

#include "vmm/api/protocol.hpp"
#include "vmm/error.hpp"

namespace pier::api::testing {

class FakeTarget final : public Target {
 public:
  explicit FakeTarget(uint32_t max_ports = 31) : max_ports_(max_ports) {}

  AddedPort add_port(const std::string& name, const std::string& backend, bool console) override {
    ++add_calls;
    if (on_add) on_add();
    if (backend.find('=') == std::string::npos && backend != "pty" && backend != "null") {
      throw Error(fmt::format("unknown port backend '{}'", backend));
    }
    uint32_t id = 0;
    for (const auto& p : ports_) {
      if (p.name == name) throw Error(fmt::format("duplicate port name '{}'", name));
    }
    while (id < max_ports_ && find(id) != nullptr) ++id;
    if (id == max_ports_) throw Error("all port ids are in use: raise --max-ports");
    virtio::console::PortStats p;
    p.id = id;
    p.name = name;
    p.backend = backend;
    p.console = console;
    ports_.push_back(p);
    return {id, backend + " (fake)", "addr-" + name};
  }
  void remove_port(uint32_t id) override {
    ++remove_calls;
    for (auto it = ports_.begin(); it != ports_.end(); ++it) {
      if (it->id == id) {
        ports_.erase(it);
        return;
      }
    }
    throw Error(fmt::format("there is no port {}", id));
  }
  std::vector<virtio::console::PortStats> ports() const override { return ports_; }
  json status() const override { return {{"state", "running"}, {"ports", ports_.size()}}; }
  void quit() override { ++quit_calls; }

  virtio::console::PortStats* find(uint32_t id) {
    for (auto& p : ports_) {
      if (p.id == id) return &p;
    }
    return nullptr;
  }

  int add_calls = 0, remove_calls = 0, quit_calls = 0;
  // Runs inside add_port (the machine broadcasts port-added from there).
  std::function<void()> on_add;

 private:
  uint32_t max_ports_;
  std::vector<virtio::console::PortStats> ports_;
};

}  // namespace pier::api::testing
