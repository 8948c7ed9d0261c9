// A hostile guest and an endless host peer against the console device (issue 13, items 1 and 3):
// whatever they do, the device holds at most a queue's worth of chains, and one notification or
// backend event does a bounded amount of work before the I/O thread serves anything else.
#include <gtest/gtest.h>

#include <string>

#include "unit/virtio/console_test_harness.hpp"

namespace pier::virtio::testing {
namespace {

using namespace linux_console;
using console::FlowWait;

constexpr uint32_t kAgent = 1;
constexpr size_t kChainsPerRun = 256;  // console_device.cpp's budget, as the guest sees it

// The port's transmit queue with one 4 KiB readable buffer in descriptor 0, made available
// again and again without waiting for the device to use it. With nobody reading the port, the
// device holds every chain it takes; it used to take them without limit (a 16-entry queue held
// 320 000 chains, +164 MiB in 0.9 s).
TEST(ConsoleHostile, TransmitHeadReusedWithNoClientStopsAtTheQueueSize) {
  ConsoleHarness h;
  h.port("agent", false, /*connected=*/false, kAgent);
  h.boot();
  ASSERT_NE(h.os->port(kAgent), nullptr);
  ASSERT_GE(h.os->open(kAgent), 0);
  FakeQueueDriver& tx = h.os->driver(tx_queue(kAgent));
  const uint64_t buffer = h.guest.alloc(4096);
  tx.write_descriptor(0, {buffer, 4096, 0, 0});
  for (int i = 0; i < 100000; ++i) {
    tx.expose_raw(0);
    h.os->transport().notify(tx_queue(kAgent));
  }
  const auto s = h.stats(kAgent);
  EXPECT_LE(s.tx_chains_held, h.options.queue_size);
  EXPECT_LE(s.bytes_buffered, 4096u * h.options.queue_size);
  EXPECT_TRUE(h.os->transport().needs_reset());
  ASSERT_FALSE(h.os->transport().errors().empty());
  EXPECT_NE(h.os->transport().errors()[0].find("in flight"), std::string::npos)
      << h.os->transport().errors()[0];
}

// A guest whose console output never ends: every time the device writes to the backend the
// guest has already added another buffer (a vCPU writing while the I/O thread works). One
// notification used to loop until the guest stopped; now it takes kChainsPerRun chains and
// posts the rest behind whatever else the I/O loop has to do.
TEST(ConsoleHostile, EndlessConsoleOutputYieldsTheIoThreadEveryBudget) {
  ConsoleHarness h;
  auto console = h.port("console", /*console=*/true);
  h.boot();
  FakeQueueDriver& tx = h.os->driver(tx_queue(0));
  size_t added = 0;
  constexpr size_t kGuestChains = 3 * kChainsPerRun + 10;
  console->during_call = [&] {
    while (tx.get_used()) {
    }
    if (added < kGuestChains && tx.chain().readable("x").build()) ++added;
  };
  console->take_output();
  ASSERT_TRUE(tx.chain().readable("x").build());
  ++added;
  const size_t writes_before = console->writev_calls;
  h.os->transport().notify(tx_queue(0));
  EXPECT_EQ(console->writev_calls - writes_before, kChainsPerRun);
  EXPECT_EQ(h.stats(0).to_host_wait, FlowWait::kYielded);
  // Each round of the I/O loop takes the next budget's worth, until the guest stops adding.
  h.run_posted();
  EXPECT_EQ(console->writev_calls - writes_before, 2 * kChainsPerRun);
  for (int round = 0; round < 10; ++round) h.run_posted();
  EXPECT_EQ(added, kGuestChains);
  EXPECT_EQ(console->take_output(), std::string(kGuestChains, 'x'));
  EXPECT_EQ(h.stats(0).to_host_wait, FlowWait::kMoving);
  EXPECT_FALSE(h.os->transport().needs_reset());
}

// A host peer that never stops sending and a guest that re-posts every receive buffer at once:
// one readable event used to move bytes for as long as both kept up. Now it moves about 1 MiB,
// then yields to the loop, and the stream goes on, in order, round after round.
TEST(ConsoleHostile, EndlessHostInputYieldsTheIoThreadEveryMegabyte) {
  // 256 receive buffers, so the ring never runs dry while the device holds its batch of 16.
  ConsoleOptions options = small_console_options();
  options.queue_size = 256;
  ConsoleHarness h(options);
  auto agent = h.port("agent", false, true, kAgent);
  h.boot();
  ASSERT_GE(h.os->open(kAgent), 0);
  FakeQueueDriver& rx = h.os->driver(rx_queue(kAgent));
  std::string received;
  size_t sent = 0;
  constexpr size_t kChunk = 64 * 1024;
  constexpr size_t kTotal = 8u << 20;
  auto pattern = [](size_t i) { return static_cast<char>('a' + (i * 7 + i / 4093) % 26); };
  agent->during_call = [&] {
    // The guest: take what arrived, re-post the buffers (Linux's port rx: 4 KiB each).
    while (auto used = rx.get_used()) {
      received.append(used->written.begin(), used->written.end());
      ASSERT_TRUE(rx.chain().writable(4096).build());
    }
    // The peer: always more to read, until kTotal.
    while (agent->input.size() < kChunk && sent < kTotal) agent->input.push_back(pattern(sent++));
  };
  agent->send(std::string(1, pattern(sent++)));
  const uint64_t first = h.stats(kAgent).bytes_to_guest;
  EXPECT_GE(first, 1u << 20);
  EXPECT_LT(first, (1u << 20) + 64 * 4096);
  EXPECT_EQ(h.stats(kAgent).to_guest_wait, FlowWait::kYielded);
  for (int round = 0; round < 64 && h.stats(kAgent).bytes_to_guest < kTotal; ++round) {
    h.run_posted();
  }
  agent->during_call();  // the guest takes the last buffers
  EXPECT_EQ(h.stats(kAgent).bytes_to_guest, kTotal);
  ASSERT_EQ(received.size(), kTotal);
  for (size_t i = 0; i < kTotal; ++i) {
    ASSERT_EQ(received[i], pattern(i)) << "byte " << i;
  }
}

}  // namespace
}  // namespace pier::virtio::testing
