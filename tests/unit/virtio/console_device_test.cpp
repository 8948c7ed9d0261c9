// ConsoleDevice against a model of Linux 6.1's virtio_console driver (linux_console_model.hpp)
// and fake backends, the device as a whole: its shape and configuration, the start-up handshake
// through the control queue, resets, restores from hibernation, drivers without MULTIPORT, and
// the threads that call it. The data paths are in console_data_test.cpp, hot-plug, resize and
// hostile drivers in console_device_control_test.cpp; the parts on their own in
// console_port_test.cpp and console_control_endpoint_test.cpp. No KVM.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <thread>

#include "unit/virtio/console_test_harness.hpp"
#include "virtio/console/thread_role.hpp"
#include "vmm/error.hpp"

namespace pier::virtio::testing {
namespace {

using namespace linux_console;

// ---------------------------------------------------------------------------------------------
// Device shape and configuration.

TEST(ConsoleDevice, ShapeForLinuxProbe) {
  ConsoleHarness h(ConsoleOptions{});  // defaults: 31 ports
  h.port("", true);
  h.start();
  const auto& d = *h.device;
  EXPECT_EQ(d.device_id(), 3u);
  EXPECT_NE(d.device_features() & kFMultiport, 0u);
  EXPECT_NE(d.device_features() & kFSize, 0u);
  EXPECT_NE(d.device_features() & kFeatureVersion1, 0u);
  // Pitfall 1: Linux creates 2 * (max_nr_ports + 1) queues and fails on any of size 0.
  EXPECT_EQ(d.num_queues(), 64u);
  for (size_t q = 0; q < d.num_queues(); ++q) EXPECT_GT(d.queue_max_size(q), 0) << q;
  std::array<uint8_t, 12> config{};
  h.device->read_config(0, config);
  uint32_t max;
  std::memcpy(&max, &config[4], 4);
  EXPECT_EQ(max, 31u);
  EXPECT_EQ(d.config_size(), 12u);
  // Reads past the end are zeros; writes to read-only fields are ignored.
  std::array<uint8_t, 4> tail{1, 1, 1, 1};
  h.device->read_config(12, tail);
  EXPECT_EQ(tail, (std::array<uint8_t, 4>{}));
  const uint32_t bogus = 7;
  h.device->write_config(4, std::span(reinterpret_cast<const uint8_t*>(&bogus), 4));
  h.device->read_config(0, config);
  std::memcpy(&max, &config[4], 4);
  EXPECT_EQ(max, 31u);
}

TEST(ConsoleDevice, MaxPortsUpTo511) {
  ConsoleOptions o;
  o.max_ports = 511;
  ConsoleHarness h(o);
  h.port("", true);
  h.start();
  EXPECT_EQ(h.device->num_queues(), 1024u);
  for (size_t q = 0; q < h.device->num_queues(); ++q) ASSERT_GT(h.device->queue_max_size(q), 0);
}

TEST(ConsoleDevice, RejectsBadConfiguration) {
  EventLoop loop;
  auto make = [&](ConsoleOptions o, std::vector<PortConfig> ports) {
    ConsoleDevice d(loop, o, std::move(ports));
  };
  auto cfg = [](std::string name, std::optional<uint32_t> id = std::nullopt) {
    PortConfig c;
    c.name = std::move(name);
    c.backend = make_fake_backend().first;
    c.id = id;
    return c;
  };
  auto two = [&](PortConfig a, PortConfig b) {
    std::vector<PortConfig> v;
    v.push_back(std::move(a));
    v.push_back(std::move(b));
    return v;
  };
  ConsoleOptions o;
  o.max_ports = 0;
  EXPECT_THROW(make(o, {}), Error);
  o.max_ports = 512;
  EXPECT_THROW(make(o, {}), Error);
  o = ConsoleOptions{};
  o.queue_size = 100;
  EXPECT_THROW(make(o, {}), Error);
  o = ConsoleOptions{};
  o.control_queue_size = 0;
  EXPECT_THROW(make(o, {}), Error);
  o = ConsoleOptions{};
  EXPECT_THROW(make(o, two(cfg("dup"), cfg("dup"))), Error);
  EXPECT_THROW(make(o, two(cfg("a", 3), cfg("b", 3))), Error);
  EXPECT_THROW(make(o, two(cfg("a", 31), cfg("b"))), Error);
  EXPECT_THROW(make(o, two(cfg("bad name"), cfg("b"))), Error);
  std::vector<PortConfig> none;
  PortConfig no_backend;
  none.push_back(std::move(no_backend));
  EXPECT_THROW(make(o, std::move(none)), Error);
  o.max_ports = 2;
  std::vector<PortConfig> three;
  for (int i = 0; i < 3; ++i) three.push_back(cfg(""));
  try {
    make(o, std::move(three));
    FAIL() << "more ports than max_ports accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--max-ports"), std::string::npos) << e.what();
  }
}

TEST(ConsoleDevice, AutomaticIdsAvoidExplicitOnes) {
  ConsoleHarness h;
  h.port("a");                  // auto
  h.port("b", false, true, 0);  // explicit 0
  h.port("c");                  // auto
  h.start();
  EXPECT_EQ(h.stats(0).name, "b");
  EXPECT_EQ(h.stats(1).name, "a");
  EXPECT_EQ(h.stats(2).name, "c");
}

// ---------------------------------------------------------------------------------------------
// Start-up handshake.

TEST(ConsoleDevice, HandshakeInLinuxOrder) {
  ConsoleHarness h;
  auto con0 = h.port("", true, true);
  auto agent = h.port("org.pier.agent", false, true);
  auto log = h.port("org.pier.log", false, false);
  h.boot();
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();

  // Every port is announced (pitfall 2: port 0 too), in id order, before anything else.
  const auto& msgs = h.os->control_log();
  ASSERT_GE(msgs.size(), 3u);
  for (uint32_t i = 0; i < 3; ++i) {
    EXPECT_EQ(msgs[i].event, kPortAdd);
    EXPECT_EQ(msgs[i].id, i);
  }
  // After each PORT_READY, QEMU's order: CONSOLE_PORT, PORT_NAME, PORT_OPEN (if connected).
  EXPECT_EQ(h.events_for(0),
            (std::vector<std::string>{ev(kPortAdd, 1), ev(kConsolePort, 1), ev(kPortOpen, 1)}));
  EXPECT_EQ(h.events_for(1),
            (std::vector<std::string>{ev(kPortAdd, 1), ev(kPortName, 1), ev(kPortOpen, 1)}));
  EXPECT_EQ(h.events_for(2), (std::vector<std::string>{ev(kPortAdd, 1), ev(kPortName, 1)}));

  auto& g0 = h.guest_port(0);
  EXPECT_TRUE(g0.console);
  EXPECT_TRUE(g0.guest_connected);
  EXPECT_TRUE(g0.host_connected);
  EXPECT_EQ(h.guest_port(1).name, "org.pier.agent");
  EXPECT_TRUE(h.guest_port(1).host_connected);
  EXPECT_FALSE(h.guest_port(1).guest_connected);
  EXPECT_EQ(h.guest_port(2).name, "org.pier.log");
  EXPECT_FALSE(h.guest_port(2).host_connected);  // pitfall 4 the other way: no false "open"

  // The host sees the guest's side: the hvc sent PORT_OPEN(1) for the console.
  const auto s0 = h.stats(0);
  EXPECT_TRUE(s0.guest_ready);
  EXPECT_TRUE(s0.guest_connected);
  EXPECT_TRUE(h.stats(1).guest_ready);
  EXPECT_FALSE(h.stats(1).guest_connected);
  const auto ds = h.device->stats();
  EXPECT_TRUE(ds.driver_ready);
  EXPECT_TRUE(ds.multiport);
  EXPECT_EQ(ds.control_pending, 0u);
  EXPECT_EQ(ds.control_ignored, 0u);
}

TEST(ConsoleDevice, HostPortsWithoutPortZero) {
  ConsoleHarness h;
  h.port("org.pier.only", false, true, 2);
  h.boot();
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
  EXPECT_EQ(h.os->ports().size(), 1u);
  EXPECT_EQ(h.guest_port(2).name, "org.pier.only");
}

TEST(ConsoleDevice, OneControlMessagePerBuffer) {
  ConsoleHarness h;
  h.port("", true);
  h.port("org.pier.a");
  h.port("org.pier.b");
  h.port("org.pier.c");
  h.boot();
  // The model flags any buffer holding more than one message (pitfall 5).
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
  for (const auto& r : h.os->control_log()) {
    if (r.event == kPortName) {
      EXPECT_EQ(r.len, 8 + r.payload.size());
      EXPECT_EQ(r.payload.find('\0'), std::string::npos);
    } else {
      EXPECT_EQ(r.len, 8u) << r.event;
    }
  }
  EXPECT_EQ(h.count_events(kPortAdd), 4u);
  EXPECT_EQ(h.count_events(kPortName), 3u);
}

TEST(ConsoleDevice, PortNameLongerThanTheGuestBuffer) {
  LinuxConsoleOptions lo;
  lo.control_buffer_size = 64;  // a driver posting tiny control buffers
  ConsoleHarness h(small_console_options(), lo);
  const std::string long_name = "org.pier." + std::string(200, 'x');
  h.port("", true);
  auto agent = h.port(long_name);
  h.boot();
  // The name arrives cut to what the buffer holds (logged once); nothing else is disturbed.
  EXPECT_EQ(h.guest_port(1).name, long_name.substr(0, 64 - 8));
  EXPECT_TRUE(h.guest_port(1).host_connected);
  EXPECT_EQ(h.device->stats().control_pending, 0u);
  ASSERT_EQ(h.os->open(1), 0);
  agent->send("still works");
  h.os->settle();
  EXPECT_EQ(h.os->read(1), "still works");
}

TEST(ConsoleDevice, ControlQueueNeverDropsWhenTheGuestIsSlowToRefill) {
  ConsoleOptions o = small_console_options();
  o.max_ports = 31;
  LinuxConsoleOptions lo;
  lo.control_rx_buffers = 1;  // one control buffer ...
  lo.refill_control = false;  // ... given back only when the test says so
  ConsoleHarness h(o, lo);
  h.port("", true);
  for (int i = 1; i < 31; ++i) h.port("org.pier.p" + std::to_string(i), false, i % 2 == 0);
  h.start();
  ASSERT_TRUE(h.os->probe());
  size_t peak = 0;
  for (int round = 0; round < 1000; ++round) {
    peak = std::max(peak, h.device->stats().control_pending);
    const size_t handled = h.os->control_work();
    if (handled == 0 && h.device->stats().control_pending == 0) break;
    h.os->refill_control(1);
  }
  h.os->settle();
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
  EXPECT_EQ(h.device->stats().control_pending, 0u);
  EXPECT_GE(peak, 30u);      // they really queued up on the host
  EXPECT_LE(peak, 6u * 31);  // and stayed within the documented bound
  EXPECT_EQ(h.os->ports().size(), 31u);
  EXPECT_EQ(h.count_events(kPortAdd), 31u);
  EXPECT_EQ(h.count_events(kPortName), 30u);
  EXPECT_EQ(h.count_events(kConsolePort), 1u);
  EXPECT_EQ(h.count_events(kPortOpen), 1u + 15u);  // console + connected even-numbered ports
  for (uint32_t i = 1; i < 31; ++i) {
    EXPECT_EQ(h.guest_port(i).name, "org.pier.p" + std::to_string(i));
    EXPECT_EQ(h.guest_port(i).host_connected, i % 2 == 0) << i;
  }
  // PORT_ADDs arrived in id order.
  uint32_t next = 0;
  for (const auto& r : h.os->control_log()) {
    if (r.event == kPortAdd) {
      EXPECT_EQ(r.id, next++);
    }
  }
}

TEST(ConsoleDevice, PortOpenWaitsForPortReady) {
  // Pitfall 3: CONSOLE_PORT / PORT_OPEN for a port before the guest's PORT_READY.
  ConsoleHarness h(small_console_options(), stingy_control(1));
  h.port("", true);
  auto p1 = h.port("org.pier.late", false, false);
  h.start();
  ASSERT_TRUE(h.os->probe());
  // The guest has not even seen PORT_ADD(1) yet; the host side connects meanwhile.
  p1->connect();
  p1->disconnect();
  p1->connect();
  for (int round = 0; round < 100 && h.device->stats().control_pending > 0; ++round) {
    h.os->control_work();
    h.os->refill_control(1);
  }
  h.os->settle();
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
  EXPECT_EQ(h.events_for(1),
            (std::vector<std::string>{ev(kPortAdd, 1), ev(kPortName, 1), ev(kPortOpen, 1)}));
  EXPECT_TRUE(h.guest_port(1).host_connected);
}

// ---------------------------------------------------------------------------------------------
// Reset, non-multiport drivers, threads.

TEST(ConsoleDevice, ResetAndReprobe) {
  ConsoleHarness h;
  auto p1 = h.boot_with_open_port("org.pier.agent");
  auto c0 = h.console0;
  p1->write_budget = 0;
  ASSERT_EQ(h.os->write(1, "held across reset"), 17);
  c0->disconnect();
  ASSERT_EQ(h.os->put_chars(0, "ring survives"), 13);
  h.os->transport().reset();
  EXPECT_EQ(h.stats(1).bytes_discarded, 17u);  // the driver that wrote them is gone
  EXPECT_FALSE(h.stats(1).guest_ready);

  h.os = std::make_unique<LinuxConsoleModel>(h.guest, *h.device, h.linux_options);
  ASSERT_TRUE(h.os->probe());
  h.os->settle();
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
  EXPECT_EQ(h.guest_port(1).name, "org.pier.agent");
  c0->connect();
  EXPECT_EQ(c0->take_output(), "ring survives");
  p1->make_room(100);
  ASSERT_EQ(h.os->open(1), 0);
  ASSERT_EQ(h.os->write(1, "after"), 5);
  h.os->settle();
  EXPECT_EQ(p1->output, "after");
}

TEST(ConsoleDevice, RestoreFromHibernation) {
  ConsoleHarness h;
  auto p1 = h.boot_with_open_port("org.pier.agent");
  auto c0 = h.console0;
  ASSERT_TRUE(h.os->freeze_and_restore());  // PORT_READY for each port, no DEVICE_READY
  h.os->settle();
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
  EXPECT_TRUE(h.stats(0).guest_connected);
  EXPECT_TRUE(h.stats(1).guest_connected);
  ASSERT_EQ(h.os->write(1, "after restore"), 13);
  p1->send("back");
  ASSERT_EQ(h.os->put_chars(0, "hvc"), 3);
  h.os->settle();
  EXPECT_EQ(p1->output, "after restore");
  EXPECT_EQ(h.os->read(1), "back");
  EXPECT_EQ(c0->output, "hvc");
  // The guest knows port 1 although no PORT_ADD went out since the reset: removal is told.
  h.device->remove_port(1);
  h.os->settle();
  EXPECT_EQ(h.os->port(1), nullptr);
}

TEST(ConsoleDevice, RestoredDriverWithAReplacedPortIsResynced) {
  // Found by the fuzzer: hvc0 is replaced by a generic port at id 0 while the guest is frozen
  // (the PORT_REMOVE/PORT_ADD die with the reset). The restored driver re-announces its old
  // console with PORT_READY(0); the device must not hand queue 1 to the new port while that
  // hvc still writes to it, and must tell the guest about the replacement.
  ConsoleHarness h(small_console_options(), stingy_control(1));
  auto c0 = h.port("", true);
  h.start();
  ASSERT_TRUE(h.os->probe());
  h.os->refill_control(16);
  h.os->settle();
  ASSERT_TRUE(h.guest_port(0).console);
  h.device->remove_port(0);
  auto state =
      h.add_port_now("org.pier.replacement", 0, false);  // nobody connected: a generic port holds
  ASSERT_TRUE(h.os->freeze_and_restore());               // the queued PORT_REMOVE/PORT_ADD are gone
  ASSERT_TRUE(h.guest_port(0).console);                  // the restored guest still has its hvc0
  EXPECT_EQ(h.os->put_chars(0, "old hvc"), 7);
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
  EXPECT_EQ(state->output, "");
  h.os->refill_control(16);
  h.os->settle();
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
  EXPECT_FALSE(h.guest_port(0).console);
  EXPECT_EQ(h.guest_port(0).name, "org.pier.replacement");
  EXPECT_TRUE(h.stats(0).guest_ready);
}

TEST(ConsoleDevice, DriverWithoutMultiport) {
  LinuxConsoleOptions lo;
  lo.multiport = false;
  ConsoleHarness h(small_console_options(), lo);
  auto c0 = h.port("", true);
  h.port("org.pier.unused");
  h.boot();
  EXPECT_FALSE(h.device->stats().multiport);
  ASSERT_EQ(h.os->put_chars(0, "single port"), 11);
  EXPECT_EQ(c0->output, "single port");
  c0->send("in");
  h.os->settle();
  EXPECT_EQ(h.os->read(0), "in");
  const size_t config_irqs = h.os->transport().config_interrupts();
  h.device->resize(0, 80, 25);
  EXPECT_EQ(h.os->transport().config_interrupts(), config_irqs + 1);
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
}

TEST(ConsoleDevice, ConfigAndStatsFromOtherThreads) {
  // vCPU threads read config / write emerg_wr and an API thread reads stats while the I/O
  // thread moves data: one lock, no deadlock, consistent numbers.
  ConsoleHarness h;
  auto p1 = h.boot_with_open_port("org.pier.agent");
  auto c0 = h.console0;
  std::atomic<bool> stop{false};
  std::thread vcpu([&] {
    std::array<uint8_t, 12> config;
    while (!stop) h.device->read_config(0, config);
  });
  std::thread api([&] {
    while (!stop) {
      auto all = h.device->port_stats();
      EXPECT_EQ(all.size(), 2u);
    }
  });
  const std::string data = pattern(100000);
  for (size_t off = 0; off < data.size(); off += 1000) {
    p1->send(std::string_view(data).substr(off, 1000));
    h.os->settle();
  }
  stop = true;
  vcpu.join();
  api.join();
  EXPECT_EQ(h.os->read(1), data);
}

// Debug builds: the device's queue work checks its thread role. A register handler (vCPU role)
// that called into queue work directly would race the I/O thread on the rings: it aborts.
TEST(ConsoleDeviceDeathTest, QueueWorkReachedFromAVcpuRoleCallAborts) {
  ASSERT_TRUE(console::kThreadRoleChecks) << "built with PIER_NO_THREAD_ROLE_CHECKS";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  ConsoleHarness h;
  auto p1 = h.boot_with_open_port("org.pier.agent");
  EXPECT_DEATH(
      {
        console::VcpuRoleScope vcpu;
        h.device->queue_notify(ConsoleDevice::rx_queue(1));
      },
      "vCPU-role call");
  // The same notification from the I/O role is fine.
  h.device->queue_notify(ConsoleDevice::rx_queue(1));
  p1->send("still fine");
  h.os->settle();
  EXPECT_EQ(h.os->read(1), "still fine");
}

}  // namespace
}  // namespace pier::virtio::testing
