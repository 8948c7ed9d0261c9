#pragma once
// The parts of the console device on their own: a FakeLink plays the ConsoleDevice for a Port
// or a ControlEndpoint (console/device_link.hpp) over real Queues driven by FakeQueueDrivers in
// fake guest memory, and records what the part asked of the device (interrupts, continuations,
// orphaned transmit, port events). The test thread holds the I/O role for it (PartHarness), as
// the device's dispatch would.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "unit/virtio/console_fake_backend.hpp"
#include "unit/virtio/fake_driver.hpp"
#include "virtio/console/control_endpoint.hpp"
#include "virtio/console/port.hpp"
#include "virtio/console/thread_role.hpp"
#include "vmm/event_loop.hpp"

namespace pier::virtio::testing {

// A control message header as a driver writes it: le32 id, le16 event, le16 value.
inline std::vector<uint8_t> control_header(uint32_t id, uint16_t event, uint16_t value) {
  std::vector<uint8_t> bytes(8);
  std::memcpy(&bytes[0], &id, 4);
  std::memcpy(&bytes[4], &event, 2);
  std::memcpy(&bytes[6], &value, 2);
  return bytes;
}

class FakeLink final : public console::DeviceLink {
 public:
  // `queues` queues of `size` entries, laid out and activated with `features`.
  FakeLink(FakeGuest& guest, size_t queues, uint16_t size, uint64_t features) {
    queues_.reserve(queues);
    for (size_t i = 0; i < queues; ++i) queues_.emplace_back(static_cast<uint16_t>(i), size);
    for (auto& q : queues_) {
      drivers_.push_back(std::make_unique<FakeQueueDriver>(guest, q, size));
      drivers_.back()->set_features(features);
      q.activate(guest.memory(), features);
    }
    interrupts.assign(queues, 0);
  }

  FakeQueueDriver& driver(uint16_t index) { return *drivers_.at(index); }
  Queue& queue(uint16_t index) { return queues_.at(index); }

  // ---- DeviceLink
  Queue* usable_queue(uint16_t index) override {
    console::assert_io_role(role_owner());
    if (!active || index >= queues_.size()) return nullptr;
    Queue& q = queues_[index];
    return q.ready() && !q.failed() ? &q : nullptr;
  }
  void signal(Queue& q) override {
    if (q.should_interrupt()) ++interrupts.at(q.index());
  }
  void continue_later(uint16_t index) override { continuations.push_back(index); }
  void orphan_tx(Queue& q) override {
    while (auto chain = q.pop()) {
      orphaned_bytes += chain->readable_length();
      q.push(std::move(*chain), 0);
    }
  }
  void note(const console::Port& port, console::PortEvent::Kind kind) override {
    events.push_back(std::string(console::to_string(kind)) + " " + std::to_string(port.id()));
  }
  console::Port* port(uint32_t id) override {
    auto it = ports.find(id);
    return it == ports.end() ? nullptr : it->second;
  }
  void for_each_port(const std::function<void(console::Port&)>& fn) override {
    for (auto& [id, p] : ports) fn(*p);
  }

  bool active = true;                        // false: usable_queue() finds nothing
  std::map<uint32_t, console::Port*> ports;  // what port() and for_each_port() see
  std::vector<size_t> interrupts;            // used-buffer interrupts per queue
  std::vector<uint16_t> continuations;       // continue_later() requests, in order
  uint64_t orphaned_bytes = 0;               // orphan_tx() bytes
  std::vector<std::string> events;           // "guest-opened 1", ...

 private:
  std::vector<Queue> queues_;
  std::vector<std::unique_ptr<FakeQueueDriver>> drivers_;
};

// A FakeLink with its guest memory, a loop for the backends and the I/O role held by the test
// thread, plus ports made on it.
struct PartHarness {
  explicit PartHarness(uint32_t max_ports = 4, uint16_t queue_size = 16,
                       uint64_t features = kQueueFeatures)
      : link(guest, 2 * (size_t{max_ports} + 1), queue_size, features),
        rx_held(max_ports),
        role(link.role_owner()) {}

  // A started port with a fake backend, registered with the link; returns its backend state.
  std::shared_ptr<FakePortBackend::State> add_port(uint32_t id, std::string name = "",
                                                   bool console = false, bool connected = true,
                                                   size_t ring_bytes = 64 * 1024) {
    auto [backend, state] = make_fake_backend(connected);
    console::PortConfig config;
    config.name = std::move(name);
    config.console = console;
    config.backend = std::move(backend);
    ports.push_back(std::make_unique<console::Port>(link, shared, rx_held.at(id), id, next_serial++,
                                                    std::move(config), ring_bytes));
    ports.back()->start(loop, std::make_unique<NullListener>());
    link.ports[id] = ports.back().get();
    return state;
  }
  console::Port& port(uint32_t id) { return *link.ports.at(id); }
  // A port the guest has taken and opened.
  void open(uint32_t id) {
    port(id).set_guest_ready(true);
    port(id).set_guest_connected(true);
  }
  // `count` receive buffers of `size` bytes posted on port `id`'s receiveq.
  void post_rx(uint32_t id, size_t count, uint32_t size) {
    auto& d = link.driver(console::port_rx_queue(id));
    for (size_t i = 0; i < count; ++i) ASSERT_TRUE(d.chain().writable(size).build());
  }
  // What the device placed in port `id`'s receive buffers, in order.
  std::string take_rx(uint32_t id) {
    std::string out;
    for (auto& u : link.driver(console::port_rx_queue(id)).get_all_used()) out += u.text();
    return out;
  }
  // One guest write of `text` on port `id`'s transmitq.
  void write_tx(uint32_t id, std::string_view text) {
    ASSERT_TRUE(link.driver(console::port_tx_queue(id)).chain().readable(text).build());
  }
  Queue& tx_queue(uint32_t id) { return link.queue(console::port_tx_queue(id)); }
  size_t tx_completed(uint32_t id) {
    return link.driver(console::port_tx_queue(id)).get_all_used().size();
  }

  class NullListener final : public chardev::PortBackend::Listener {
   public:
    void on_host_connected(bool) override {}
    void on_readable() override {}
    void on_writable() override {}
  };

  FakeGuest guest{32ull << 20};
  EventLoop loop;
  FakeLink link;
  console::PortShared shared;
  std::vector<console::Fifo<Chain>> rx_held;  // per id, as the device's slots
  std::vector<std::unique_ptr<console::Port>> ports;
  uint64_t next_serial = 1;
  console::IoRoleScope role;  // declared last: held while the parts are used
};

}  // namespace pier::virtio::testing
