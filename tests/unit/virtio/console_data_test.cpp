// ConsoleDevice's data paths against a model of Linux 6.1's virtio_console driver and fake
// backends: host connect and disconnect as events, host -> guest reads only into posted buffers
// of an open port, guest -> host writes held until the backend took them (and their kicks),
// console output completed at once through the ring, emergency writes. No KVM.
#include <gtest/gtest.h>

#include <string>

#include "unit/virtio/console_test_harness.hpp"

namespace pier::virtio::testing {
namespace {

using namespace linux_console;

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
  ConsoleHarness h(small_console_options(), stingy_control(2));
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
  auto p1 = h.boot_with_open_port("org.pier.agent");
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
  ConsoleHarness h(small_console_options(), few_rx_buffers(2, 8));
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
  auto p1 = h.boot_with_open_port("org.pier.bulk");
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
  auto p1 = h.boot_with_open_port("org.pier.slow");
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
  auto p1 = h.boot_with_open_port("org.pier.slow");
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
  auto p1 = h.boot_with_open_port("org.pier.rx");
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
  auto p1 = h.boot_with_open_port("org.pier.agent");
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
  auto p1 = h.boot_with_open_port("org.pier.stream");
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
  auto p1 = h.boot_with_open_port("org.pier.agent");
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
  EXPECT_EQ(c0->output, "");                    // flushed on the I/O thread, not the vCPU
  h.run_posted();
  EXPECT_EQ(c0->output, "XY");
  EXPECT_EQ(h.device->stats().emergency_bytes, 2u);
  std::array<uint8_t, 4> emerg{1, 1, 1, 1};
  h.device->read_config(8, emerg);
  EXPECT_EQ(emerg, (std::array<uint8_t, 4>{}));
}

}  // namespace
}  // namespace pier::virtio::testing
