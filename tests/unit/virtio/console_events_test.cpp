// The console device's port-event observer (for the runtime API): which events, in which order,
// delivered outside the device lock (the observer may call back into the device).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "unit/virtio/console_test_harness.hpp"

namespace pier::virtio::testing {
namespace {

using console::PortEvent;

struct Recorder {
  std::vector<std::string> events;
  ConsoleDevice* device = nullptr;
  void attach(ConsoleDevice& d) {
    device = &d;
    d.set_observer([this](const PortEvent& e) {
      events.push_back(std::string(console::to_string(e.kind)) + ":" + std::to_string(e.id) + ":" +
                       e.name);
      // Called unlocked: calling back into the device must not deadlock.
      (void)device->port_stats(e.id);
      (void)device->stats();
    });
  }
};

TEST(ConsoleEvents, GuestOpenCloseHostConnectAddRemoveInOrder) {
  ConsoleHarness h;
  h.port("", true);
  auto agent = h.port("org.pier.agent", false, /*connected=*/false);
  h.start();
  Recorder r;
  r.attach(*h.device);
  ASSERT_TRUE(h.os->probe());
  h.os->settle();
  // The hvc console came up: the guest opened port 0.
  EXPECT_EQ(r.events, (std::vector<std::string>{"guest-opened:0:"}));
  r.events.clear();

  ASSERT_EQ(h.os->open(1), 0);
  h.os->settle();
  agent->connect();
  agent->disconnect();
  h.os->close(1);
  h.os->settle();
  EXPECT_EQ(r.events, (std::vector<std::string>{
                          "guest-opened:1:org.pier.agent", "host-connected:1:org.pier.agent",
                          "host-disconnected:1:org.pier.agent", "guest-closed:1:org.pier.agent"}));
  r.events.clear();

  auto [backend, state] = make_fake_backend();
  PortConfig c;
  c.name = "org.pier.hot";
  c.backend = std::move(backend);
  const uint32_t id = h.device->add_port(std::move(c));
  h.os->settle();
  ASSERT_EQ(h.os->open(id), 0);
  h.os->settle();
  h.device->remove_port(id);
  h.os->settle();
  const std::string n = std::to_string(id) + ":org.pier.hot";
  EXPECT_EQ(r.events, (std::vector<std::string>{"port-added:" + n, "guest-opened:" + n,
                                                "port-removed:" + n}));
}

TEST(ConsoleEvents, DriverResetClosesOpenPortsAndNoEventsWithoutObserver) {
  ConsoleHarness h;
  h.port("", true);
  h.port("org.pier.a");
  h.boot();  // no observer yet: nothing recorded, nothing queued
  ASSERT_EQ(h.os->open(1), 0);
  h.os->settle();
  Recorder r;
  r.attach(*h.device);
  h.device->reset();  // a vCPU-thread call: queued, delivered by the next I/O-thread entry
  EXPECT_TRUE(r.events.empty());
  h.device->queue_notify(ConsoleDevice::kControlRxQueue);
  EXPECT_EQ(r.events, (std::vector<std::string>{"guest-closed:0:", "guest-closed:1:org.pier.a"}));
  r.events.clear();
  h.device->set_observer({});
  auto [backend, state] = make_fake_backend();
  PortConfig c;
  c.name = "org.pier.b";
  c.backend = std::move(backend);
  h.device->add_port(std::move(c));
  EXPECT_TRUE(r.events.empty());
}

}  // namespace
}  // namespace pier::virtio::testing
