// console::Port on its own (virtio/console/port.hpp): one port's data queues on fake guest
// memory and FakeQueueDrivers, a fake backend as the host peer, and a FakeLink in place of the
// device. What a direction waits for after each kind of stop, the per-run budgets and their
// continuations, held transmit chains and their offsets, the console ring, removal and reset,
// and the thread-role checks. The same behaviour through the whole device and a model of Linux's
// driver is in console_data_test.cpp.
#include "virtio/console/port.hpp"

#include <gtest/gtest.h>

#include <ostream>
#include <string>

#include "unit/virtio/console_fake_link.hpp"
#include "unit/virtio/console_test_harness.hpp"

namespace pier::virtio::testing {
namespace {

using console::FlowWait;
using console::port_rx_queue;
using console::port_tx_queue;

constexpr uint32_t kId = 1;

// ---------------------------------------------------------------------------------------------
// Host -> guest: every stop names its restart event, and the backend's input interest matches.

struct RxStop {
  const char* name;
  bool driver_active;   // the link hands out queues (DRIVER_OK)
  bool guest_open;      // PORT_READY + PORT_OPEN(1)
  bool host_connected;  // a peer on the backend
  size_t buffers;       // 8-byte receive buffers the guest posted
  std::string input;    // what the peer sent
  FlowWait wait;        // afterwards
  bool want_input;      // afterwards
  std::string delivered;
};
void PrintTo(const RxStop& c, std::ostream* os) {
  *os << c.name;
}

class PortRxStops : public ::testing::TestWithParam<RxStop> {};

TEST_P(PortRxStops, WaitAndInterestFollowTheStop) {
  const RxStop& c = GetParam();
  PartHarness h;
  auto peer = h.add_port(kId, "p", false, c.host_connected);
  h.link.active = c.driver_active;
  if (c.guest_open) h.open(kId);
  h.post_rx(kId, c.buffers, 8);
  peer->input = c.input;
  h.port(kId).pump_rx();
  EXPECT_EQ(h.port(kId).rx_wait(), c.wait) << to_string(h.port(kId).rx_wait());
  EXPECT_EQ(peer->want_input, c.want_input);
  EXPECT_EQ(h.take_rx(kId), c.delivered);
  // Nothing is read unless the port could take it.
  if (c.delivered.empty()) {
    EXPECT_EQ(peer->input, c.input);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Port, PortRxStops,
    ::testing::Values(
        RxStop{"NoDriver", false, true, true, 1, "x", FlowWait::kNoDriver, false, ""},
        RxStop{"GuestClosed", true, false, true, 1, "x", FlowWait::kGuestClosed, false, ""},
        RxStop{"HostDisconnected", true, true, false, 1, "x", FlowWait::kHostDisconnected, false,
               ""},
        RxStop{"NoGuestBuffers", true, true, true, 0, "x", FlowWait::kNoGuestBuffers, false, ""},
        RxStop{"BackendEmpty", true, true, true, 2, "", FlowWait::kBackendNotReadable, true, ""},
        RxStop{"BackendDrained", true, true, true, 2, "abc", FlowWait::kBackendNotReadable, true,
               "abc"},
        // 16 bytes of room, 20 offered: the buffers fill, the rest waits in the peer.
        RxStop{"BuffersFilled", true, true, true, 2, "0123456789abcdefWXYZ",
               FlowWait::kNoGuestBuffers, false, "0123456789abcdef"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(Port, RxReadsStraightIntoManyBuffersAtOnce) {
  PartHarness h(4, 64);
  auto peer = h.add_port(kId);
  h.open(kId);
  h.post_rx(kId, 40, 4096);
  const std::string data = pattern(40000);
  peer->input = data;
  h.port(kId).pump_rx();
  // kRxBatch (16) buffers of 4 KiB gathered into one readv: 64 KiB of room for 40000 bytes.
  EXPECT_EQ(peer->readv_calls, 1u);
  EXPECT_EQ(h.take_rx(kId), data);
  EXPECT_EQ(h.port(kId).stats().bytes_to_guest, 40000u);
  EXPECT_EQ(h.port(kId).stats().rx_buffers_held, 6u);  // 16 popped, 10 filled
}

TEST(Port, RxYieldsAfterItsByteBudgetAndAsksToContinue) {
  PartHarness h(4, 512);
  auto peer = h.add_port(kId);
  h.open(kId);
  h.post_rx(kId, 512, 4096);  // 2 MiB of guest buffers
  peer->input = pattern(console::kRxBytesPerRun + 12345);
  h.port(kId).pump_rx();
  EXPECT_EQ(h.port(kId).rx_wait(), FlowWait::kYielded);
  EXPECT_FALSE(peer->want_input);  // the continuation, not the backend, restarts it
  EXPECT_EQ(h.link.continuations, std::vector<uint16_t>{port_rx_queue(kId)});
  EXPECT_EQ(h.port(kId).stats().bytes_to_guest, console::kRxBytesPerRun);
  h.port(kId).pump_rx();  // the continuation
  EXPECT_EQ(h.port(kId).stats().bytes_to_guest, console::kRxBytesPerRun + 12345);
  EXPECT_EQ(h.port(kId).rx_wait(), FlowWait::kBackendNotReadable);
}

TEST(Port, RxBufferWithNoRoomIsReturnedEmpty) {
  PartHarness h;
  auto peer = h.add_port(kId);
  h.open(kId);
  auto& d = h.link.driver(port_rx_queue(kId));
  ASSERT_TRUE(d.chain().readable("not writable").build());
  peer->input = "x";
  h.port(kId).pump_rx();
  const auto used = d.get_all_used();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].len, 0u);
  EXPECT_EQ(peer->input, "x");
}

// ---------------------------------------------------------------------------------------------
// Guest -> host, generic port: a chain is completed only when all its bytes reached the peer.

struct TxCase {
  const char* name;
  size_t write_budget;        // what the peer takes
  size_t writes;              // 100-byte guest writes
  size_t expected_written;    // bytes the peer got
  size_t expected_completed;  // chains the guest got back
  FlowWait wait;
  bool want_output;
};
void PrintTo(const TxCase& c, std::ostream* os) {
  *os << c.name;
}

class PortGenericTx : public ::testing::TestWithParam<TxCase> {};

TEST_P(PortGenericTx, ChainsAreHeldUntilEveryByteIsWritten) {
  const TxCase& c = GetParam();
  PartHarness h;
  auto peer = h.add_port(kId);
  h.open(kId);
  peer->write_budget = c.write_budget;
  std::string sent;
  for (size_t i = 0; i < c.writes; ++i) {
    sent += pattern(100, i);
    h.write_tx(kId, std::string_view(sent).substr(i * 100));
  }
  h.port(kId).generic_tx(h.tx_queue(kId));
  EXPECT_EQ(peer->output, sent.substr(0, c.expected_written));
  EXPECT_EQ(h.tx_completed(kId), c.expected_completed);
  EXPECT_EQ(h.port(kId).tx_wait(), c.wait);
  EXPECT_EQ(peer->want_output, c.want_output);
  const auto s = h.port(kId).stats();
  EXPECT_EQ(s.bytes_from_guest, 100 * c.writes);
  EXPECT_EQ(s.bytes_to_host, c.expected_written);
  EXPECT_EQ(s.bytes_buffered, 100 * c.writes - c.expected_written);
  EXPECT_EQ(s.tx_chains_held, c.writes - c.expected_completed);
}

INSTANTIATE_TEST_SUITE_P(
    Port, PortGenericTx,
    ::testing::Values(TxCase{"AllTaken", SIZE_MAX, 3, 300, 3, FlowWait::kMoving, false},
                      TxCase{"MidChain", 150, 3, 150, 1, FlowWait::kBackendNotWritable, true},
                      TxCase{"ChainBoundary", 200, 3, 200, 2, FlowWait::kBackendNotWritable, true},
                      TxCase{"Full", 0, 2, 0, 0, FlowWait::kBackendNotWritable, true}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(Port, HeldChainsResumeFromTheirOffsetForTheNextPeer) {
  PartHarness h;
  auto peer = h.add_port(kId);
  h.open(kId);
  peer->write_budget = 5;
  const std::string a = pattern(300, 1), b = pattern(200, 2);
  h.write_tx(kId, a);
  h.write_tx(kId, b);
  h.port(kId).generic_tx(h.tx_queue(kId));
  EXPECT_EQ(peer->take_output(), a.substr(0, 5));
  peer->connected = false;
  h.port(kId).host_changed(false);
  EXPECT_EQ(h.port(kId).tx_wait(), FlowWait::kHostDisconnected);
  EXPECT_EQ(h.tx_completed(kId), 0u);
  peer->connected = true;
  peer->write_budget = SIZE_MAX;
  h.port(kId).host_changed(true);
  EXPECT_EQ(peer->take_output(), (a + b).substr(5));
  EXPECT_EQ(h.tx_completed(kId), 2u);
  EXPECT_EQ(h.port(kId).stats().host_connects, 1u);
  EXPECT_EQ(h.link.events, (std::vector<std::string>{"guest-opened 1", "host-disconnected 1",
                                                     "host-connected 1"}));
}

TEST(Port, FullBackendTurnsTransmitKicksOffAndItsWakeupTakesNewChains) {
  PartHarness h;
  auto peer = h.add_port(kId);
  h.open(kId);
  peer->write_budget = 10;
  h.write_tx(kId, pattern(100));
  h.port(kId).generic_tx(h.tx_queue(kId));
  EXPECT_FALSE(h.tx_queue(kId).notification_enabled());  // on_writable wakes the port instead
  h.write_tx(kId, "more");                               // no kick for this one
  peer->write_budget = SIZE_MAX;
  h.port(kId).flush_out();  // on_writable
  EXPECT_EQ(peer->output, pattern(100) + "more");
  EXPECT_EQ(h.tx_completed(kId), 2u);
  EXPECT_TRUE(h.tx_queue(kId).notification_enabled());
  EXPECT_EQ(h.port(kId).tx_wait(), FlowWait::kMoving);
}

// ---------------------------------------------------------------------------------------------
// Guest -> host, console port: completed at once, the rest in the ring.

TEST(Port, ConsoleTxCompletesAtOnceAndRingsWhatThePeerDidNotTake) {
  PartHarness h;
  auto peer = h.add_port(0, "", true, /*connected=*/false);
  h.open(0);
  h.write_tx(0, "boot 1\n");
  h.write_tx(0, "boot 2\n");
  h.port(0).console_tx(h.tx_queue(0));
  EXPECT_EQ(h.tx_completed(0), 2u);
  EXPECT_EQ(h.port(0).tx_wait(), FlowWait::kHostDisconnected);
  EXPECT_EQ(h.port(0).stats().bytes_buffered, 14u);
  peer->connected = true;
  peer->write_budget = 4;
  h.port(0).host_changed(true);  // replay
  EXPECT_EQ(peer->take_output(), "boot");
  EXPECT_EQ(h.port(0).tx_wait(), FlowWait::kBackendNotWritable);
  EXPECT_TRUE(peer->want_output);
  h.write_tx(0, "!");  // behind the ring: order kept
  h.port(0).console_tx(h.tx_queue(0));
  EXPECT_EQ(h.tx_completed(0), 1u);
  peer->write_budget = SIZE_MAX;
  h.port(0).flush_out();
  EXPECT_EQ(peer->take_output(), " 1\nboot 2\n!");
  EXPECT_FALSE(peer->want_output);
}

TEST(Port, ConsoleRingKeepsTheNewestBytesAndCountsTheRest) {
  PartHarness h;
  auto peer = h.add_port(0, "", true, /*connected=*/false, /*ring_bytes=*/16);
  h.open(0);
  const std::string big = pattern(5000);
  h.write_tx(0, "0123456789");
  h.write_tx(0, big);
  h.port(0).console_tx(h.tx_queue(0));
  EXPECT_EQ(h.port(0).stats().console_bytes_dropped, 10u + 5000 - 16);
  peer->connected = true;
  h.port(0).host_changed(true);
  EXPECT_EQ(peer->output, big.substr(5000 - 16));
}

TEST(Port, ConsoleTxYieldsAfterItsChainBudget) {
  PartHarness h(4, 512);
  h.add_port(0, "", true);
  h.open(0);
  for (size_t i = 0; i < console::kChainsPerRun + 3; ++i) h.write_tx(0, "x");
  h.port(0).console_tx(h.tx_queue(0));
  EXPECT_EQ(h.tx_completed(0), console::kChainsPerRun);
  EXPECT_EQ(h.port(0).tx_wait(), FlowWait::kYielded);
  EXPECT_EQ(h.link.continuations, std::vector<uint16_t>{port_tx_queue(0)});
  h.port(0).console_tx(h.tx_queue(0));
  EXPECT_EQ(h.tx_completed(0), 3u);
  EXPECT_EQ(h.port(0).tx_wait(), FlowWait::kMoving);
}

TEST(Port, EmergencyBytesWaitInTheRingForTheIoThread) {
  PartHarness h;
  auto peer = h.add_port(0, "", true);
  h.port(0).buffer_emergency_byte('!');
  EXPECT_EQ(peer->output, "");
  h.port(0).flush_out();
  EXPECT_EQ(peer->output, "!");
}

// ---------------------------------------------------------------------------------------------
// Removal and reset.

TEST(Port, ReleaseWritesOnceThenDiscardsAndCompletesHeldChains) {
  PartHarness h;
  auto peer = h.add_port(kId);
  h.open(kId);
  peer->write_budget = 3;
  h.write_tx(kId, "unsent tail");
  h.port(kId).generic_tx(h.tx_queue(kId));
  peer->write_budget = 2;  // the last attempt takes two more bytes
  h.port(kId).release_guest_bytes();
  EXPECT_EQ(peer->output, "unsen");
  EXPECT_EQ(h.tx_completed(kId), 1u);  // the guest gets its buffer back
  const auto s = h.port(kId).stats();
  EXPECT_EQ(s.bytes_discarded, 6u);
  EXPECT_EQ(s.bytes_buffered, 0u);
  EXPECT_TRUE(h.tx_queue(kId).notification_enabled());
  h.port(kId).stop_backend();
  EXPECT_TRUE(peer->stopped);
}

TEST(Port, ForgetGuestDiscardsHeldWritesAndClosesThePort) {
  PartHarness h;
  auto peer = h.add_port(kId);
  h.open(kId);
  h.port(kId).set_add_sent(true);
  h.port(kId).set_announced_host(true);
  peer->write_budget = 0;
  h.write_tx(kId, "held across reset");
  h.port(kId).generic_tx(h.tx_queue(kId));
  h.port(kId).forget_guest();
  const auto s = h.port(kId).stats();
  EXPECT_EQ(s.bytes_discarded, 17u);
  EXPECT_EQ(s.tx_chains_held, 0u);
  EXPECT_FALSE(s.guest_ready);
  EXPECT_FALSE(s.guest_connected);
  EXPECT_FALSE(h.port(kId).add_sent());
  EXPECT_FALSE(h.port(kId).announced_host());
  EXPECT_EQ(s.to_guest_wait, FlowWait::kNoDriver);
  EXPECT_EQ(s.to_host_wait, FlowWait::kNoDriver);
  EXPECT_EQ(h.link.events, (std::vector<std::string>{"guest-opened 1", "guest-closed 1"}));
}

// ---------------------------------------------------------------------------------------------
// Thread roles: queue and backend work outside the device's dispatch, or from a
// vCPU-role call, aborts.

TEST(PortDeathTest, QueueWorkOutsideTheIoRoleAborts) {
  ASSERT_TRUE(console::kThreadRoleChecks) << "built with PIER_NO_THREAD_ROLE_CHECKS";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        PartHarness h;
        h.add_port(kId);
        h.role.end();
        h.port(kId).pump_rx();
      },
      "outside the device's I/O-thread dispatch");
  EXPECT_DEATH(
      {
        PartHarness h;
        h.add_port(kId);
        console::VcpuRoleScope vcpu;
        h.port(kId).flush_out();
      },
      "vCPU-role call");
}

}  // namespace
}  // namespace pier::virtio::testing
