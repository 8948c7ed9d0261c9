// ConsoleDevice against a model of Linux 6.1's virtio_console driver (linux_console_model.hpp)
// and fake backends: the start-up handshake, the control queue, both data directions with
// their flow control, host connect/disconnect, the console ring, port hot-plug, hostile driver
// messages and each pitfall of reference/design-notes.md §4.5. No KVM.
#include "virtio/console/console_device.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <thread>

#include "unit/virtio/console_test_harness.hpp"
#include "vmm/error.hpp"

namespace pier::virtio::testing {
namespace {

using namespace linux_console;
namespace con = console;

std::string pattern(size_t n, size_t seed = 0) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7 + seed) % 26);
  return s;
}

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
  h.port("a");        // auto
  h.port("b", false, true, 0);  // explicit 0
  h.port("c");        // auto
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
  EXPECT_EQ(h.events_for(0), (std::vector<std::string>{ev(kPortAdd, 1), ev(kConsolePort, 1),
                                                         ev(kPortOpen, 1)}));
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
  EXPECT_GE(peak, 30u);  // they really queued up on the host
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
  LinuxConsoleOptions lo;
  lo.control_rx_buffers = 1;
  lo.refill_control = false;
  ConsoleHarness h(small_console_options(), lo);
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
// Host connect / disconnect.

TEST(ConsoleDevice, HostConnectIsAnEvent) {
  ConsoleHarness h;
  h.port("", true);
  auto p1 = h.port("org.pier.agent", false, false);
  h.boot();
  EXPECT_FALSE(h.guest_port(1).host_connected);
  ASSERT_EQ(h.os->open(1), 0);
  // Pitfall 4: while the host is not connected the guest's writes would block / EAGAIN.
  EXPECT_EQ(h.os->write(1, "x"), -EAGAIN);
  p1->connect();
  h.os->settle();
  EXPECT_TRUE(h.guest_port(1).host_connected);
  EXPECT_EQ(h.os->write(1, "hello"), 5);
  h.os->settle();
  EXPECT_EQ(p1->take_output(), "hello");
  p1->disconnect();
  h.os->settle();
  EXPECT_FALSE(h.guest_port(1).host_connected);
  EXPECT_EQ(h.events_for(1).back(), ev(kPortOpen, 0));
  EXPECT_EQ(h.stats(1).host_connects, 1u);
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
}

TEST(ConsoleDevice, HostFlappingWhileTheGuestIsBusyStaysBounded) {
  LinuxConsoleOptions lo;
  lo.control_rx_buffers = 2;
  lo.refill_control = false;
  ConsoleHarness h(small_console_options(), lo);
  h.port("", true);
  auto p1 = h.port("org.pier.flap", false, false);
  h.start();
  ASSERT_TRUE(h.os->probe());
  h.trickle_control();
  ASSERT_EQ(h.guest_port(1).name, "org.pier.flap");
  // The guest takes no control buffers now; a client connects and leaves 1000 times.
  for (int i = 0; i < 1000; ++i) {
    p1->connect();
    EXPECT_LE(h.device->stats().control_pending, 1u);
    p1->disconnect();
    EXPECT_LE(h.device->stats().control_pending, 1u);
  }
  p1->connect();
  h.os->refill_control(16);
  h.os->settle();
  EXPECT_TRUE(h.guest_port(1).host_connected);
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
}

TEST(ConsoleDevice, DisconnectReportedFromInsideReadv) {
  // A backend that notices the peer is gone while reading and tells the listener at once: the
  // device queues the re-entrant callback instead of deadlocking on its own lock.
  ConsoleHarness h;
  h.port("", true);
  auto p1 = h.port("org.pier.agent");
  h.boot();
  ASSERT_EQ(h.os->open(1), 0);
  p1->hang_up_in_next_readv = true;
  p1->send("lost?");
  h.os->settle();
  EXPECT_FALSE(h.guest_port(1).host_connected);
  EXPECT_FALSE(h.stats(1).host_connected);
  // The unread bytes are still in the "socket"; the next peer... is the same fake: reconnect.
  p1->connect();
  h.os->settle();
  EXPECT_EQ(h.os->read(1), "lost?");
}

// ---------------------------------------------------------------------------------------------
// Host -> guest.

TEST(ConsoleDevice, HostDataWaitsUntilTheGuestOpensThePort) {
  // Pitfall 7: Linux discards data for a generic port the guest has not opened.
  ConsoleHarness h;
  h.port("", true);
  auto p1 = h.port("org.pier.agent");
  h.boot();
  const size_t reads_before = p1->readv_calls;
  p1->send("early bytes");
  h.os->settle();
  EXPECT_EQ(p1->readv_calls, reads_before);  // not a single read from the backend
  EXPECT_FALSE(p1->want_input);
  EXPECT_EQ(p1->input, "early bytes");  // the host writer still holds them
  ASSERT_EQ(h.os->open(1), 0);
  h.os->settle();
  EXPECT_EQ(h.os->read(1), "early bytes");
  EXPECT_EQ(h.guest_port(1).discarded, 0u);
  EXPECT_TRUE(p1->want_input);  // buffers available again: tell us about more
  p1->send("more");
  h.os->settle();
  EXPECT_EQ(h.os->read(1), "more");
  // Closed again: reading stops.
  ASSERT_EQ(h.os->close(1), 0);
  h.os->settle();
  EXPECT_FALSE(p1->want_input);
  const size_t reads = p1->readv_calls;
  p1->send("after close");
  h.os->settle();
  EXPECT_EQ(p1->readv_calls, reads);
  ASSERT_EQ(h.os->open(1), 0);
  h.os->settle();
  EXPECT_EQ(h.os->read(1), "after close");
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
  EXPECT_EQ(h.stats(1).bytes_to_guest, 11u + 4 + 11);
}

TEST(ConsoleDevice, NoRxBuffersMeansNoReadsAndNothingLost) {
  LinuxConsoleOptions lo;
  lo.port_rx_buffers = 2;
  lo.rx_buffer_size = 8;
  ConsoleHarness h(small_console_options(), lo);
  h.port("", true);
  auto p1 = h.port("org.pier.bulk");
  h.boot();
  ASSERT_EQ(h.os->open(1), 0);
  const std::string data = pattern(1000);
  p1->send(data);
  // The reader is slow: the two 8-byte buffers are filled, then the device stops reading.
  EXPECT_EQ(p1->input.size(), 1000u - 16);
  EXPECT_FALSE(p1->want_input);
  EXPECT_EQ(h.stats(1).bytes_to_guest, 16u);
  std::string got;
  for (int round = 0; round < 1000 && got.size() < data.size(); ++round) {
    h.os->in_intr(1);  // the reader consumes and re-posts the buffers (a kick)
    got += h.os->read(1);
    // Host bytes left over means the device has no empty guest buffer in hand.
    if (!p1->input.empty()) {
      EXPECT_EQ(h.stats(1).rx_buffers_held, 0u);
    }
  }
  EXPECT_EQ(got, data);
  EXPECT_TRUE(p1->input.empty());
  EXPECT_EQ(h.os->empty_rx_buffers(), 0u);  // never a 0-byte buffer (the guest reads EOF)
}

TEST(ConsoleDevice, RxGathersManyBuffersPerRead) {
  ConsoleHarness h;
  h.port("", true);
  auto p1 = h.port("org.pier.bulk");
  h.boot();
  ASSERT_EQ(h.os->open(1), 0);
  const std::string data = pattern(40000);
  const size_t reads = p1->readv_calls;
  p1->send(data);
  // 16 buffers of 4 KiB posted: 64 KiB of room, one readv (plus none: a short read ends it).
  EXPECT_EQ(p1->readv_calls - reads, 1u);
  h.os->settle();
  EXPECT_EQ(h.os->read(1), data);
}

TEST(ConsoleDevice, ConsoleInputFlowsOnceTheHvcIsUp) {
  ConsoleHarness h;
  auto c0 = h.port("", true);
  h.boot();
  c0->send("ls\n");
  h.os->settle();
  EXPECT_EQ(h.os->read(0), "ls\n");
}

// ---------------------------------------------------------------------------------------------
// Guest -> host.

TEST(ConsoleDevice, ThrottleAndResume) {
  ConsoleHarness h;
  h.port("", true);
  auto p1 = h.port("org.pier.slow");
  h.boot();
  ASSERT_EQ(h.os->open(1), 0);
  p1->write_budget = 10;
  const std::string data = pattern(100);
  ASSERT_EQ(h.os->write(1, data), 100);
  h.os->settle();
  // The backend took 10 bytes; the chain is held (not used) until the rest is written.
  EXPECT_EQ(p1->output, data.substr(0, 10));
  EXPECT_EQ(h.os->tx_outstanding(1), 1u);
  EXPECT_TRUE(p1->want_output);
  EXPECT_EQ(h.stats(1).bytes_buffered, 90u);
  p1->make_room(50);
  h.os->settle();
  EXPECT_EQ(p1->output, data.substr(0, 60));
  EXPECT_EQ(h.os->tx_outstanding(1), 1u);
  p1->make_room(1000);
  h.os->settle();
  EXPECT_EQ(p1->output, data);
  EXPECT_EQ(h.os->tx_outstanding(1), 0u);  // used only now
  EXPECT_FALSE(p1->want_output);
  EXPECT_EQ(h.stats(1).bytes_to_host, 100u);
  EXPECT_EQ(h.stats(1).bytes_buffered, 0u);
}

TEST(ConsoleDevice, FullBackendFillsTheGuestQueueNotTheHost) {
  ConsoleHarness h;  // queue size 16
  h.port("", true);
  auto p1 = h.port("org.pier.stuck");
  h.boot();
  ASSERT_EQ(h.os->open(1), 0);
  p1->write_budget = 0;
  std::string sent;
  int accepted = 0;
  for (int i = 0; i < 100; ++i) {
    const std::string chunk = pattern(1000, i);
    const ssize_t n = h.os->write(1, chunk);
    if (n == -EAGAIN) break;
    ASSERT_EQ(n, 1000);
    sent += chunk;
    ++accepted;
  }
  // The guest's writer is throttled by its own queue: 16 writes in flight, then EAGAIN. The
  // device holds what it popped before the backend filled up; the rest waits in the ring (no
  // kicks while the backend is full: its on_writable brings the device back).
  EXPECT_EQ(accepted, 16);
  EXPECT_EQ(h.os->tx_outstanding(1), 16u);
  EXPECT_GE(h.stats(1).tx_chains_held, 1u);
  EXPECT_LE(h.stats(1).tx_chains_held, 16u);
  EXPECT_EQ(p1->output, "");
  p1->make_room(SIZE_MAX / 2);
  h.os->settle();
  EXPECT_EQ(p1->output, sent);
  EXPECT_EQ(h.os->write(1, "again"), 5);
}

TEST(ConsoleDevice, NoTransmitKicksNeededWhileTheBackendIsFull) {
  ConsoleHarness h;
  h.port("", true);
  auto p1 = h.port("org.pier.slow");
  h.boot();
  ASSERT_EQ(h.os->open(1), 0);
  const uint16_t txq = linux_console::tx_queue(1);
  p1->write_budget = 10;
  std::string sent = pattern(1000, 0);
  ASSERT_EQ(h.os->write(1, sent), 1000);  // the device writes 10 bytes and waits for room
  const size_t kicks = h.os->transport().kicks(txq);
  EXPECT_GE(kicks, 1u);
  for (int i = 1; i < 8; ++i) {
    const std::string chunk = pattern(1000, i);
    ASSERT_EQ(h.os->write(1, chunk), 1000);
    sent += chunk;
  }
  // The device is woken by the backend, not by the driver: at most the one kick EVENT_IDX lets
  // through after notifications go off (was one per write).
  EXPECT_LE(h.os->transport().kicks(txq), kicks + 1);
  EXPECT_EQ(p1->output, sent.substr(0, 10));
  p1->make_room(SIZE_MAX / 2);  // on_writable: the device takes the waiting chains itself
  h.os->settle();
  EXPECT_EQ(p1->output, sent);
  // Idle again, it asks for kicks: the next write is noticed and written at once.
  const size_t before = h.os->transport().kicks(txq);
  ASSERT_EQ(h.os->write(1, "again"), 5);
  EXPECT_EQ(h.os->transport().kicks(txq), before + 1);
  EXPECT_EQ(p1->output, sent + "again");
}

TEST(ConsoleDevice, NoReceiveKicksNeededWhileTheDeviceHoldsBuffers) {
  ConsoleHarness h;
  h.port("", true);
  auto p1 = h.port("org.pier.rx");
  h.boot();
  ASSERT_EQ(h.os->open(1), 0);
  h.os->settle();
  const uint16_t rxq = linux_console::rx_queue(1);
  const size_t kicks = h.os->transport().kicks(rxq);
  std::string sent, got;
  for (int i = 0; i < 20; ++i) {
    // Two messages before the guest runs: the device tops up its buffers for the second while
    // the guest has not posted the first one again, so it finds the ring empty.
    for (int k = 0; k < 2; ++k) {
      const std::string chunk = pattern(100, 2 * i + k);
      p1->send(chunk);
      sent += chunk;
    }
    h.os->settle();  // the guest takes the buffers and posts them again
    got += h.os->read(1);
  }
  EXPECT_EQ(got, sent);
  // The device tops up its buffers when the backend wakes it: the refills need no kick (one
  // per round before).
  EXPECT_LE(h.os->transport().kicks(rxq), kicks + 1) << "before " << kicks;
  // Out of buffers, it asks for kicks again: a host that sends more than the guest posted still
  // gets everything through as the guest reads.
  const std::string big = pattern(40000, 99);
  p1->send(big);
  std::string rest;
  for (int i = 0; i < 100 && rest.size() < big.size(); ++i) {
    h.os->settle();
    rest += h.os->read(1);
  }
  EXPECT_EQ(rest, big);
}

TEST(ConsoleDevice, DisconnectWithChainsHeldGoesToTheNextClientInOrder) {
  ConsoleHarness h;
  h.port("", true);
  auto p1 = h.port("org.pier.agent");
  h.boot();
  ASSERT_EQ(h.os->open(1), 0);
  p1->write_budget = 5;
  const std::string a = pattern(300, 1), b = pattern(200, 2);
  ASSERT_EQ(h.os->write(1, a), 300);
  ASSERT_EQ(h.os->write(1, b), 200);
  h.os->settle();
  EXPECT_EQ(p1->take_output(), a.substr(0, 5));  // client A got 5 bytes
  // Client A leaves: the guest is told, its writes now wait, the held chains stay held.
  p1->disconnect();
  h.os->settle();
  EXPECT_FALSE(h.guest_port(1).host_connected);
  EXPECT_EQ(h.os->tx_outstanding(1), 2u);
  EXPECT_EQ(h.os->write(1, "blocked"), -EAGAIN);
  EXPECT_EQ(h.stats(1).bytes_buffered, 495u);
  // Client B arrives and gets everything after byte 5, exactly once and in order.
  p1->write_budget = SIZE_MAX;
  p1->connect();
  h.os->settle();
  EXPECT_EQ(p1->take_output(), (a + b).substr(5));
  EXPECT_EQ(h.os->tx_outstanding(1), 0u);
  EXPECT_TRUE(h.guest_port(1).host_connected);
  EXPECT_EQ(h.os->write(1, "next"), 4);
  h.os->settle();
  EXPECT_EQ(p1->take_output(), "next");
  EXPECT_EQ(h.stats(1).bytes_to_host, 504u);
  EXPECT_EQ(h.stats(1).bytes_discarded, 0u);
}

TEST(ConsoleDevice, ManyReconnectsMidStreamLoseNothing) {
  ConsoleHarness h;
  h.port("", true);
  auto p1 = h.port("org.pier.stream");
  h.boot();
  ASSERT_EQ(h.os->open(1), 0);
  const std::string data = pattern(200000, 3);
  std::string received;
  size_t sent = 0;
  p1->write_budget = 0;
  for (int cycle = 0; cycle < 50 || sent < data.size(); ++cycle) {
    p1->make_room(777 + 13 * static_cast<size_t>(cycle));  // each client reads a little
    while (sent < data.size()) {
      const ssize_t n = h.os->write(1, std::string_view(data).substr(sent, 3000));
      if (n < 0) break;
      sent += static_cast<size_t>(n);
    }
    h.os->settle();
    p1->disconnect();
    received += p1->take_output();
    h.os->settle();
    p1->write_budget = 0;
    p1->connect();
    h.os->settle();
    if (cycle > 10000) break;
  }
  p1->make_room(SIZE_MAX / 2);
  h.os->settle();
  received += p1->take_output();
  EXPECT_EQ(received.size(), data.size());
  EXPECT_TRUE(received == data);
  EXPECT_GE(h.stats(1).host_connects, 50u);
}

TEST(ConsoleDevice, GuestCloseKeepsItsAcceptedBytes) {
  // Bytes write() accepted reach the host even if the guest closes the port before the host
  // took them.
  ConsoleHarness h;
  h.port("", true);
  auto p1 = h.port("org.pier.agent");
  h.boot();
  ASSERT_EQ(h.os->open(1), 0);
  p1->write_budget = 0;
  ASSERT_EQ(h.os->write(1, "last words"), 10);
  ASSERT_EQ(h.os->close(1), 0);
  h.os->settle();
  p1->make_room(100);
  h.os->settle();
  EXPECT_EQ(p1->output, "last words");
}

// ---------------------------------------------------------------------------------------------
// Console output.

TEST(ConsoleDevice, ConsoleTxIsCompletedAtOnceEvenWithNobodyReading) {
  // Pitfall 6: hvc spins until its buffer is used.
  ConsoleHarness h;
  auto c0 = h.port("", true, false);
  h.boot();
  ASSERT_EQ(h.os->put_chars(0, "boot message 1\n"), 15);
  ASSERT_EQ(h.os->put_chars(0, "boot message 2\n"), 15);
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
  EXPECT_EQ(h.stats(0).bytes_buffered, 30u);
  // A client attaches: the ring is replayed.
  c0->connect();
  EXPECT_EQ(c0->take_output(), "boot message 1\nboot message 2\n");
  // With the client attached but not reading, output still completes at once.
  c0->write_budget = 4;
  ASSERT_EQ(h.os->put_chars(0, "abcdefgh"), 8);
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
  EXPECT_EQ(c0->take_output(), "abcd");
  EXPECT_TRUE(c0->want_output);
  ASSERT_EQ(h.os->put_chars(0, "ijk"), 3);  // behind the ring: order kept
  EXPECT_EQ(c0->output, "");
  c0->make_room(100);
  EXPECT_EQ(c0->take_output(), "efghijk");
  EXPECT_FALSE(c0->want_output);
  EXPECT_EQ(h.stats(0).console_bytes_dropped, 0u);
}

TEST(ConsoleDevice, ConsoleRingOverflowIsCounted) {
  ConsoleOptions o = small_console_options();
  o.console_ring_bytes = 16;
  ConsoleHarness h(o);
  auto c0 = h.port("", true, false);
  h.boot();
  ASSERT_EQ(h.os->put_chars(0, "0123456789"), 10);
  ASSERT_EQ(h.os->put_chars(0, "ABCDEFGHIJ"), 10);
  EXPECT_EQ(h.stats(0).console_bytes_dropped, 4u);
  EXPECT_EQ(h.stats(0).bytes_buffered, 16u);
  // One write far bigger than the ring: only its tail survives; every other byte is counted.
  const std::string big = pattern(5000);
  ASSERT_EQ(h.os->put_chars(0, big), 5000);
  EXPECT_EQ(h.stats(0).console_bytes_dropped, 4u + 16 + (5000 - 16));
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
  c0->connect();
  EXPECT_EQ(c0->take_output(), big.substr(5000 - 16));
  EXPECT_EQ(h.stats(0).bytes_from_guest, 5020u);
}

TEST(ConsoleDevice, EmergencyWriteReachesPortZero) {
  ConsoleHarness h;
  auto c0 = h.port("", true);
  h.start();  // before any driver: the spec allows emerg_wr on an unconfigured device
  const uint32_t ch = 'X';
  h.device->write_config(8, std::span(reinterpret_cast<const uint8_t*>(&ch), 4));
  const uint8_t y = 'Y';
  h.device->write_config(8, std::span(&y, 1));
  h.device->write_config(9, std::span(&y, 1));  // not the character byte: ignored
  EXPECT_EQ(c0->output, "");                     // flushed on the I/O thread, not the vCPU
  h.run_posted();
  EXPECT_EQ(c0->output, "XY");
  EXPECT_EQ(h.device->stats().emergency_bytes, 2u);
  std::array<uint8_t, 4> emerg{1, 1, 1, 1};
  h.device->read_config(8, emerg);
  EXPECT_EQ(emerg, (std::array<uint8_t, 4>{}));
}

// ---------------------------------------------------------------------------------------------
// Port removal and hot-plug.

TEST(ConsoleDevice, RemoveThenReAddTheSameId) {
  ConsoleHarness h;
  h.port("", true);
  auto old = h.port("org.pier.old");
  h.boot();
  ASSERT_EQ(h.os->open(1), 0);
  old->write_budget = 3;
  ASSERT_EQ(h.os->write(1, "unsent tail"), 11);
  h.os->settle();
  EXPECT_EQ(h.os->tx_outstanding(1), 1u);

  h.device->remove_port(1);
  h.os->settle();
  EXPECT_TRUE(old->stopped);
  EXPECT_EQ(h.events_for(1).back(), ev(kPortRemove, 1));
  EXPECT_EQ(h.os->port(1), nullptr);  // unplugged in the guest
  EXPECT_EQ(h.os->tx_outstanding(1), 0u);  // held chains returned so the guest frees them
  EXPECT_FALSE(h.device->port_stats(1).has_value());
  EXPECT_THROW(h.device->remove_port(1), Error);

  auto [backend, fresh] = make_fake_backend();
  PortConfig c;
  c.name = "org.pier.new";
  c.backend = std::move(backend);
  c.id = 1;
  EXPECT_EQ(h.device->add_port(std::move(c)), 1u);
  h.os->settle();
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
  ASSERT_NE(h.os->port(1), nullptr);
  EXPECT_EQ(h.guest_port(1).name, "org.pier.new");
  EXPECT_TRUE(h.guest_port(1).host_connected);
  ASSERT_EQ(h.os->open(1), 0);
  ASSERT_EQ(h.os->write(1, "to new"), 6);
  fresh->send("from new");
  h.os->settle();
  EXPECT_EQ(fresh->output, "to new");
  EXPECT_EQ(h.os->read(1), "from new");
  EXPECT_EQ(old->output, "uns");  // the old client never sees the new port's bytes
}

TEST(ConsoleDevice, ConsoleReplacedByAGenericPortNeverStallsTheOldHvc) {
  // Found by the fuzzer: port 0 (hvc0) is removed and a generic port added at id 0 while the
  // guest has not processed the removal; its hvc keeps writing to queue 1 and spins on each
  // buffer. The new port must not hold them.
  ConsoleHarness h;
  auto c0 = h.port("", true);
  h.boot();
  h.device->remove_port(0);  // PORT_REMOVE(0): delivered, not yet handled by the guest's work
  auto [backend, state] = make_fake_backend(false);  // nobody connected: a generic port holds
  PortConfig c;
  c.name = "org.pier.replacement";
  c.backend = std::move(backend);
  c.id = 0;
  h.device->add_port(std::move(c));
  ASSERT_TRUE(h.guest_port(0).console);  // the guest still thinks hvc0 is there
  ASSERT_EQ(h.os->put_chars(0, "old console output"), 18);
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
  EXPECT_EQ(state->output, "");  // not the new port's bytes
  EXPECT_EQ(h.device->stats().orphan_tx_bytes, 18u);
  h.os->settle();
  EXPECT_EQ(h.guest_port(0).name, "org.pier.replacement");
  EXPECT_FALSE(h.guest_port(0).console);
}

TEST(ConsoleDevice, PortReadyBeforeItsPortAddReachedTheGuestIsIgnored) {
  // The guest cannot have a port whose PORT_ADD is still waiting on the host for a control
  // buffer: a PORT_READY then answers an earlier incarnation of the id (or is forged) and must
  // not hand the queues to the new port.
  LinuxConsoleOptions lo;
  lo.control_rx_buffers = 1;
  lo.refill_control = false;
  ConsoleHarness h(small_console_options(), lo);
  h.port("", true);
  auto p1 = h.port("org.pier.agent");
  h.start();
  ASSERT_TRUE(h.os->probe());  // PORT_ADD(0) delivered, PORT_ADD(1) waiting on the host
  const uint64_t ignored = h.device->stats().control_ignored;
  h.os->send_control(1, kPortReady, 1);
  EXPECT_FALSE(h.stats(1).guest_ready);
  EXPECT_EQ(h.device->stats().control_ignored, ignored + 1);
  // The real handshake still completes once the guest gets its buffers.
  h.os->refill_control(16);
  h.os->settle();
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
  EXPECT_TRUE(h.stats(1).guest_ready);
  EXPECT_EQ(h.guest_port(1).name, "org.pier.agent");
}

TEST(ConsoleDevice, RemoveBeforeTheGuestHeardOfThePortWithdrawsItsAdd) {
  LinuxConsoleOptions lo;
  lo.control_rx_buffers = 1;
  lo.refill_control = false;
  ConsoleHarness h(small_console_options(), lo);
  h.port("", true);
  h.port("org.pier.brief");
  h.start();
  ASSERT_TRUE(h.os->probe());  // PORT_ADD(0) delivered, PORT_ADD(1) waiting on the host
  h.device->remove_port(1);
  h.os->refill_control(16);
  h.os->settle();
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
  EXPECT_TRUE(h.events_for(1).empty());  // neither PORT_ADD nor PORT_REMOVE
}

TEST(ConsoleDevice, AddPortAtRuntime) {
  ConsoleHarness h;
  h.port("", true);
  h.boot();
  auto [backend, state] = make_fake_backend();
  PortConfig c;
  c.name = "org.pier.hotplug";
  c.backend = std::move(backend);
  const uint32_t id = h.device->add_port(std::move(c));
  EXPECT_EQ(id, 1u);
  EXPECT_TRUE(state->started);
  h.os->settle();
  EXPECT_EQ(h.guest_port(1).name, "org.pier.hotplug");
  PortConfig dup;
  dup.name = "org.pier.hotplug";
  dup.backend = make_fake_backend().first;
  EXPECT_THROW(h.device->add_port(std::move(dup)), Error);
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
}

TEST(ConsoleDevice, TxOnAQueueWithoutAPortIsDiscardedNotHeld) {
  ConsoleHarness h;
  h.port("", true);
  h.boot();
  // Port 2 has no host port; a hostile driver writes on its queue anyway.
  auto& d = h.os->driver(tx_queue(2));
  ASSERT_TRUE(d.chain().readable("nobody").build());
  h.os->transport().kick(tx_queue(2));
  EXPECT_EQ(d.get_all_used().size(), 1u);
  EXPECT_EQ(h.device->stats().orphan_tx_bytes, 6u);
}

// ---------------------------------------------------------------------------------------------
// Resize.

TEST(ConsoleDevice, ResizeLinux61Layout) {
  ConsoleHarness h;
  h.port("", true);
  h.port("org.pier.agent");
  h.start();
  h.device->resize(0, 100, 30);  // the terminal's size, known before the guest is up
  ASSERT_TRUE(h.os->probe());
  h.os->settle();
  EXPECT_EQ(h.guest_port(0).cols, 100);  // sent right after CONSOLE_PORT
  EXPECT_EQ(h.guest_port(0).rows, 30);
  h.device->resize(0, 132, 43);
  h.os->settle();
  EXPECT_EQ(h.guest_port(0).cols, 132);
  EXPECT_EQ(h.guest_port(0).rows, 43);
  EXPECT_EQ(h.guest_port(0).resizes, 2);
  EXPECT_THROW(h.device->resize(1, 80, 24), Error);  // not a console
  EXPECT_THROW(h.device->resize(3, 80, 24), Error);  // no such port
  std::array<uint8_t, 4> size{};
  h.device->read_config(0, size);
  EXPECT_EQ(size, (std::array<uint8_t, 4>{132, 0, 43, 0}));  // config: cols, rows
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
}

TEST(ConsoleDevice, ResizeSpecLayoutForNewerKernels) {
  ConsoleOptions o = small_console_options();
  o.resize_layout = console::ResizeLayout::kColsRows;
  LinuxConsoleOptions lo;
  lo.resize_cols_first = true;
  ConsoleHarness h(o, lo);
  h.port("", true);
  h.boot();
  h.device->resize(0, 200, 50);
  h.os->settle();
  EXPECT_EQ(h.guest_port(0).cols, 200);
  EXPECT_EQ(h.guest_port(0).rows, 50);
}

TEST(ConsoleDevice, ResizeCoalescesAndNeedsFSize) {
  // Pitfall 8: without F_SIZE Linux ignores RESIZE, so none is sent.
  LinuxConsoleOptions lo;
  lo.f_size = false;
  ConsoleHarness h(small_console_options(), lo);
  h.port("", true);
  h.boot();
  h.device->resize(0, 90, 30);
  h.os->settle();
  EXPECT_EQ(h.count_events(kResize), 0u);

  LinuxConsoleOptions slow;
  slow.control_rx_buffers = 4;
  slow.refill_control = false;
  ConsoleHarness h2(small_console_options(), slow);
  h2.port("", true);
  h2.start();
  ASSERT_TRUE(h2.os->probe());
  for (int i = 0; i < 20 && h2.device->stats().control_pending + h2.os->control_work() > 0; ++i) {
    h2.os->refill_control(1);
  }
  // The guest is not taking control buffers: many resizes leave one pending message.
  for (uint16_t c = 1; c <= 100; ++c) h2.device->resize(0, c, static_cast<uint16_t>(c + 1));
  EXPECT_EQ(h2.device->stats().control_pending, 1u);
  h2.os->refill_control(4);
  h2.os->settle();
  EXPECT_EQ(h2.guest_port(0).cols, 100);
  EXPECT_EQ(h2.guest_port(0).rows, 101);
}

// ---------------------------------------------------------------------------------------------
// Hostile or broken drivers.

TEST(ConsoleDevice, HostileControlMessagesAreIgnored) {
  ConsoleHarness h;
  h.port("", true);
  auto p1 = h.port("org.pier.agent");
  h.boot();
  const uint64_t ignored0 = h.device->stats().control_ignored;
  auto send = [&](uint32_t id, uint16_t event, uint16_t value) {
    h.os->send_control(id, event, value);
  };
  send(999, kPortOpen, 1);          // id beyond max_nr_ports
  send(3, kPortOpen, 1);            // id in range, no such port
  send(1, 99, 1);                   // unknown event
  send(1, kPortOpen, 7);            // PORT_OPEN value 7
  send(kBadId, kDeviceReady, 0);    // DEVICE_READY 0: the driver failed
  send(kBadId, kDeviceReady, 1);    // a second DEVICE_READY
  send(1, kPortAdd, 1);             // events only the device sends
  send(1, kPortName, 1);
  send(1, kResize, 1);
  send(1, kPortReady, 5);
  const uint8_t shorty[4] = {1, 0, 0, 0};
  h.os->send_raw_control(shorty);   // 4-byte message
  h.os->settle();
  EXPECT_FALSE(h.os->transport().needs_reset());
  EXPECT_GE(h.device->stats().control_ignored - ignored0, 11u);
  // No extra PORT_ADDs from the repeated DEVICE_READY, nothing sent for the bogus ports.
  EXPECT_EQ(h.count_events(kPortAdd), 2u);
  // The device still works both ways.
  ASSERT_EQ(h.os->open(1), 0);
  ASSERT_EQ(h.os->write(1, "alive"), 5);
  p1->send("yes");
  h.os->settle();
  EXPECT_EQ(p1->output, "alive");
  EXPECT_EQ(h.os->read(1), "yes");
  EXPECT_TRUE(h.stats(1).guest_connected);
}

TEST(ConsoleDevice, PortOpenBeforePortReadyIsIgnored) {
  ConsoleHarness h;
  h.port("", true);
  auto p1 = h.port("org.pier.agent");
  h.start();
  ASSERT_TRUE(h.os->probe());
  // Before settle(): the guest has PORT_ADDs in its buffers but has not answered them.
  h.os->send_control(1, kPortOpen, 1);
  EXPECT_FALSE(h.stats(1).guest_connected);
  p1->send("must wait");
  EXPECT_EQ(p1->readv_calls, 0u);
  h.os->settle();
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
}

TEST(ConsoleDevice, PortReadyFailureIsLoggedAndTheRestWorks) {
  ConsoleHarness h;
  h.port("", true);
  h.port("org.pier.agent");
  h.start();
  ASSERT_TRUE(h.os->probe());
  h.os->send_control(1, kPortReady, 0);  // the guest failed to add port 1
  h.os->settle();
  EXPECT_TRUE(h.guest_port(0).console);
}

TEST(ConsoleDevice, RepeatedPortReadyIsAnsweredOncePerWait) {
  LinuxConsoleOptions lo;
  lo.control_rx_buffers = 1;
  lo.refill_control = false;
  ConsoleHarness h(small_console_options(), lo);
  h.port("", true);
  h.port("org.pier.agent");
  h.start();
  ASSERT_TRUE(h.os->probe());
  for (int i = 0; i < 1000; ++i) h.os->send_control(1, kPortReady, 1);
  EXPECT_LE(h.device->stats().control_pending, 6u * 4);
}

TEST(ConsoleDevice, BrokenTxChainPutsTheDeviceInNeedsReset) {
  ConsoleHarness h;
  h.port("", true);
  auto p1 = h.port("org.pier.agent");
  h.boot();
  ASSERT_EQ(h.os->open(1), 0);
  auto& d = h.os->driver(tx_queue(1));
  // A buffer outside guest RAM.
  ASSERT_TRUE(d.chain().raw(0xfff0'0000'0000ull, 16, 0).build());
  h.os->transport().kick(tx_queue(1));
  EXPECT_TRUE(h.os->transport().needs_reset());
  // The device itself did not throw and its other queues keep working.
  p1->send("rx still fine");
  h.os->settle();
  EXPECT_EQ(h.os->read(1), "rx still fine");
}

// ---------------------------------------------------------------------------------------------
// Reset, non-multiport drivers, threads.

TEST(ConsoleDevice, ResetAndReprobe) {
  ConsoleHarness h;
  auto c0 = h.port("", true);
  auto p1 = h.port("org.pier.agent");
  h.boot();
  ASSERT_EQ(h.os->open(1), 0);
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
  auto c0 = h.port("", true);
  auto p1 = h.port("org.pier.agent");
  h.boot();
  ASSERT_EQ(h.os->open(1), 0);
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
  LinuxConsoleOptions lo;
  lo.control_rx_buffers = 1;
  lo.refill_control = false;
  ConsoleHarness h(small_console_options(), lo);
  auto c0 = h.port("", true);
  h.start();
  ASSERT_TRUE(h.os->probe());
  h.os->refill_control(16);
  h.os->settle();
  ASSERT_TRUE(h.guest_port(0).console);
  h.device->remove_port(0);
  auto [backend, state] = make_fake_backend(false);  // nobody connected: a generic port holds
  PortConfig c;
  c.name = "org.pier.replacement";
  c.backend = std::move(backend);
  c.id = 0;
  h.device->add_port(std::move(c));
  ASSERT_TRUE(h.os->freeze_and_restore());  // the queued PORT_REMOVE/PORT_ADD are gone
  ASSERT_TRUE(h.guest_port(0).console);     // the restored guest still has its hvc0
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
  auto c0 = h.port("", true);
  auto p1 = h.port("org.pier.agent");
  h.boot();
  ASSERT_EQ(h.os->open(1), 0);
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

}  // namespace
}  // namespace pier::virtio::testing
