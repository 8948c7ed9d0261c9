#pragma once
// A ConsoleDevice with fake backends driven by the Linux driver model: what every console
// device test starts from.
#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "unit/virtio/console_fake_backend.hpp"
#include "unit/virtio/linux_console_model.hpp"
#include "virtio/console/console_device.hpp"
#include "vmm/event_loop.hpp"

namespace pier::virtio::testing {

using console::ConsoleDevice;
using console::ConsoleOptions;
using console::PortConfig;
using BackendState = FakePortBackend::State;

// `n` bytes of recognisable text (a different text per seed).
inline std::string pattern(size_t n, size_t seed = 0) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7 + seed) % 26);
  return s;
}

// A guest that starts with `buffers` control receive buffers and posts more only when the test
// says so (LinuxConsoleModel::refill_control): control messages queue up on the host.
inline LinuxConsoleOptions stingy_control(size_t buffers) {
  LinuxConsoleOptions o;
  o.control_rx_buffers = buffers;
  o.refill_control = false;
  return o;
}

// A guest that posts only `count` receive buffers of `size` bytes per port: a slow reader.
inline LinuxConsoleOptions few_rx_buffers(size_t count, uint32_t size) {
  LinuxConsoleOptions o;
  o.port_rx_buffers = count;
  o.rx_buffer_size = size;
  return o;
}

inline ConsoleOptions small_console_options() {
  ConsoleOptions o;
  o.max_ports = 4;
  o.queue_size = 16;
  o.control_queue_size = 16;
  return o;
}

struct ConsoleHarness {
  explicit ConsoleHarness(ConsoleOptions options = small_console_options(),
                          LinuxConsoleOptions linux_options = {})
      : options(options), linux_options(linux_options) {}

  // Configures a port (before start()); returns its backend's state.
  std::shared_ptr<BackendState> port(std::string name, bool console = false, bool connected = true,
                                     std::optional<uint32_t> id = std::nullopt) {
    auto [backend, state] = make_fake_backend(connected);
    PortConfig c;
    c.name = std::move(name);
    c.console = console;
    c.backend = std::move(backend);
    c.id = id;
    configs.push_back(std::move(c));
    return state;
  }

  void start() {
    device = std::make_unique<ConsoleDevice>(loop, options, std::move(configs));
    os = std::make_unique<LinuxConsoleModel>(guest, *device, linux_options);
  }
  // start(), probe and let the guest settle.
  void boot() {
    start();
    ASSERT_TRUE(os->probe());
    os->settle();
  }

  // The usual machine: the console at port 0 and a port `name` at id 1, booted, with port 1
  // open in the guest. Returns port 1's backend.
  std::shared_ptr<BackendState> boot_with_open_port(std::string name) {
    console0 = port("", true);
    auto state = port(std::move(name));
    boot();
    EXPECT_EQ(os->open(1), 0);
    return state;
  }

  // add_port() while the machine runs; returns the new port's backend.
  std::shared_ptr<BackendState> add_port_now(std::string name,
                                             std::optional<uint32_t> id = std::nullopt,
                                             bool connected = true) {
    auto [backend, state] = make_fake_backend(connected);
    PortConfig c;
    c.name = std::move(name);
    c.backend = std::move(backend);
    c.id = id;
    device->add_port(std::move(c));
    return state;
  }

  console::PortStats stats(uint32_t id) const {
    auto s = device->port_stats(id);
    EXPECT_TRUE(s.has_value()) << "no port " << id;
    return s.value_or(console::PortStats{});
  }
  LinuxConsoleModel::Port& guest_port(uint32_t id) {
    auto* p = os->port(id);
    if (p == nullptr) throw std::runtime_error("guest has no port " + std::to_string(id));
    return *p;
  }
  // The control messages the guest received for `id`, as "EVENT:value" words.
  std::vector<std::string> events_for(uint32_t id) const {
    std::vector<std::string> out;
    for (const auto& r : os->control_log()) {
      if (r.id == id) out.push_back(std::to_string(r.event) + ":" + std::to_string(r.value));
    }
    return out;
  }
  size_t count_events(uint16_t event) const {
    size_t n = 0;
    for (const auto& r : os->control_log()) n += r.event == event;
    return n;
  }
  // With a guest that refills control-rx only when told: hand back one buffer at a time until
  // every message was delivered and handled.
  void trickle_control() {
    for (int round = 0; round < 10000; ++round) {
      const size_t handled = os->control_work();
      if (handled == 0 && device->stats().control_pending == 0) return;
      os->refill_control(1);
    }
    ADD_FAILURE() << "control queue never drained";
  }
  // Runs whatever the device posted to the I/O loop (emergency-write flushes, continuations of
  // work that used up its budget): one round of the loop, as often as the test calls it.
  void run_posted() {
    bool done = false;
    loop.post([&done] { done = true; });
    loop.run_until([&done] { return done; },
                   std::chrono::steady_clock::now() + std::chrono::seconds(5));
  }

  ConsoleOptions options;
  LinuxConsoleOptions linux_options;
  EventLoop loop;
  FakeGuest guest{128ull << 20};
  std::vector<PortConfig> configs;
  std::unique_ptr<ConsoleDevice> device;
  std::unique_ptr<LinuxConsoleModel> os;  // the guest kernel's driver
  std::shared_ptr<BackendState> console0;  // port 0's backend, after boot_with_open_port()
};

// "event:value" words.
inline std::string ev(uint16_t event, uint16_t value) {
  return std::to_string(event) + ":" + std::to_string(value);
}

}  // namespace pier::virtio::testing
