// ConsoleDevice's control protocol as the guest meets it, against a model of Linux 6.1's
// virtio_console driver and fake backends: ports added and removed at run time (with the races
// the fuzzer found), RESIZE, and hostile or broken drivers. No KVM.
#include <gtest/gtest.h>

#include <array>
#include <ostream>
#include <string>

#include "unit/virtio/console_test_harness.hpp"
#include "vmm/error.hpp"

namespace pier::virtio::testing {
namespace {

using namespace linux_console;

// ---------------------------------------------------------------------------------------------
// Port removal and hot-plug.

TEST(ConsoleDevice, RemoveThenReAddTheSameId) {
  ConsoleHarness h;
  auto old = h.boot_with_open_port("org.pier.old");
  old->write_budget = 3;
  ASSERT_EQ(h.os->write(1, "unsent tail"), 11);
  h.os->settle();
  EXPECT_EQ(h.os->tx_outstanding(1), 1u);

  h.device->remove_port(1);
  h.os->settle();
  EXPECT_TRUE(old->stopped);
  EXPECT_EQ(h.events_for(1).back(), ev(kPortRemove, 1));
  EXPECT_EQ(h.os->port(1), nullptr);       // unplugged in the guest
  EXPECT_EQ(h.os->tx_outstanding(1), 0u);  // held chains returned so the guest frees them
  EXPECT_FALSE(h.device->port_stats(1).has_value());
  EXPECT_THROW(h.device->remove_port(1), Error);

  auto fresh = h.add_port_now("org.pier.new", 1);
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
  auto state =
      h.add_port_now("org.pier.replacement", 0, false);  // nobody connected: a generic port holds
  ASSERT_TRUE(h.guest_port(0).console);                  // the guest still thinks hvc0 is there
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
  ConsoleHarness h(small_console_options(), stingy_control(1));
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
  ConsoleHarness h(small_console_options(), stingy_control(1));
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

TEST(ConsoleDevice, ResizeKnownBeforeProbeAndConfigSpace) {
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
  EXPECT_EQ(h.guest_port(0).resizes, 2);
  EXPECT_THROW(h.device->resize(1, 80, 24), Error);  // not a console
  EXPECT_THROW(h.device->resize(3, 80, 24), Error);  // no such port
  std::array<uint8_t, 4> size{};
  h.device->read_config(0, size);
  EXPECT_EQ(size, (std::array<uint8_t, 4>{132, 0, 43, 0}));  // config: cols, rows
  EXPECT_TRUE(h.os->problems().empty()) << h.os->problems_text();
}

// The RESIZE field order (--resize-order) against kernels reading either order.
struct ResizeOrder {
  const char* name;
  console::ResizeLayout device_layout;
  bool guest_reads_cols_first;    // Linux after 5326ab737a47
  uint16_t seen_cols, seen_rows;  // after resize(0, 200, 50)
};
void PrintTo(const ResizeOrder& c, std::ostream* os) {
  *os << c.name;
}

class ConsoleDeviceResize : public ::testing::TestWithParam<ResizeOrder> {};

TEST_P(ConsoleDeviceResize, GuestSeesTheSizeInTheOrderItReads) {
  const ResizeOrder& c = GetParam();
  ConsoleOptions o = small_console_options();
  o.resize_layout = c.device_layout;
  LinuxConsoleOptions lo;
  lo.resize_cols_first = c.guest_reads_cols_first;
  ConsoleHarness h(o, lo);
  h.port("", true);
  h.boot();
  h.device->resize(0, 200, 50);
  h.os->settle();
  EXPECT_EQ(h.guest_port(0).cols, c.seen_cols);
  EXPECT_EQ(h.guest_port(0).rows, c.seen_rows);
}

INSTANTIATE_TEST_SUITE_P(
    ConsoleDevice, ConsoleDeviceResize,
    ::testing::Values(ResizeOrder{"Linux61RowsFirst", console::ResizeLayout::kRowsCols, false, 200,
                                  50},
                      ResizeOrder{"SpecColsFirst", console::ResizeLayout::kColsRows, true, 200, 50},
                      // The wrong --resize-order for the kernel: the guest gets the fields swapped.
                      ResizeOrder{"Mismatched", console::ResizeLayout::kRowsCols, true, 50, 200}),
    [](const auto& info) { return std::string(info.param.name); });

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

  ConsoleHarness h2(small_console_options(), stingy_control(4));
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
  send(999, kPortOpen, 1);        // id beyond max_nr_ports
  send(3, kPortOpen, 1);          // id in range, no such port
  send(1, 99, 1);                 // unknown event
  send(1, kPortOpen, 7);          // PORT_OPEN value 7
  send(kBadId, kDeviceReady, 0);  // DEVICE_READY 0: the driver failed
  send(kBadId, kDeviceReady, 1);  // a second DEVICE_READY
  send(1, kPortAdd, 1);           // events only the device sends
  send(1, kPortName, 1);
  send(1, kResize, 1);
  send(1, kPortReady, 5);
  const uint8_t shorty[4] = {1, 0, 0, 0};
  h.os->send_raw_control(shorty);  // 4-byte message
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
  ConsoleHarness h(small_console_options(), stingy_control(1));
  h.port("", true);
  h.port("org.pier.agent");
  h.start();
  ASSERT_TRUE(h.os->probe());
  for (int i = 0; i < 1000; ++i) h.os->send_control(1, kPortReady, 1);
  EXPECT_LE(h.device->stats().control_pending, 6u * 4);
}

TEST(ConsoleDevice, BrokenTxChainPutsTheDeviceInNeedsReset) {
  ConsoleHarness h;
  auto p1 = h.boot_with_open_port("org.pier.agent");
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

}  // namespace
}  // namespace pier::virtio::testing
