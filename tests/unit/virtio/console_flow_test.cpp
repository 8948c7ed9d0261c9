// Flow control of a generic console port under every order of events a real machine can
// produce, single-threaded and deterministic (issue 20: a host->guest stream that stopped after
// the host reader paused). A seeded scheduler interleaves the host peer (sending into a bounded
// "socket", reading or pausing its reads), the guest driver (bare-guest style: EVENT_IDX or not,
// kicks only when the device asked, buffers re-posted as they are consumed) and the I/O loop
// (level-triggered readiness, kicks delivered late like an eventfd), and also runs the guest
// from inside the device's backend calls (a vCPU racing the I/O thread). After any prefix of
// events, letting the machine run with the host reader still paused must deliver every byte the
// host sent; a stop that no pending event can restart is a stall, reported with the port's
// FlowWait.
#include <gtest/gtest.h>

#include <deque>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "unit/virtio/console_test_harness.hpp"

namespace pier::virtio::testing {
namespace {

using namespace linux_console;
using console::FlowWait;

constexpr uint32_t kPort = 1;

// The port's two queues as a polling driver uses them (tests/bare/lib/virtio_console.c): fixed
// buffers re-posted in descriptor slot avail_idx % size, used entries taken in order, a kick
// only when need_event() says the device asked. Kicks are queued, not delivered: the scheduler
// hands them to the device later (the ioeventfd -> I/O thread path).
class Guest {
 public:
  Guest(ConsoleHarness& h, std::mt19937& rng, std::deque<uint16_t>& kicks)
      : h_(h),
        rx_(h.os->driver(rx_queue(kPort))),
        tx_(h.os->driver(tx_queue(kPort))),
        kicks_(kicks) {
    rx_last_used_ = rx_.used_idx();
    tx_last_used_ = tx_.used_idx();
    const unsigned nrx = 1 + rng() % 12;
    for (unsigned i = 0; i < nrx; ++i) {
      rx_bufs_.push_back(h.guest.alloc(kRxBytes, 8));
      post_rx(i);
    }
    for (unsigned i = 0; i < kTxChains; ++i) tx_bufs_.push_back(h.guest.alloc(kTxBytes, 8));
    kick(rx_, rx_queue(kPort));
  }

  // Takes what the device placed in the rx buffers and posts them again.
  void read() {
    bool posted = false;
    while (rx_.used_idx() != rx_last_used_) {
      const uint64_t elem = rx_.layout().used + 4 + 8ull * (rx_last_used_ % rx_.size());
      const auto id = static_cast<uint16_t>(h_.guest.read_obj<uint32_t>(elem));
      const uint32_t len = h_.guest.read_obj<uint32_t>(elem + 4);
      ++rx_last_used_;
      const unsigned buf = slot_buf_.at(id);
      const auto bytes = h_.guest.read(rx_bufs_[buf], len);
      received.append(bytes.begin(), bytes.end());
      post_rx(buf);
      posted = true;
    }
    if (posted) kick(rx_, rx_queue(kPort));
  }

  // Reclaims completed writes and queues more of `data` (from `queued` on).
  void write(const std::string& data) {
    while (tx_.used_idx() != tx_last_used_) {
      ++tx_last_used_;
      --tx_inflight_;
    }
    bool added = false;
    while (tx_inflight_ < kTxChains && queued < data.size()) {
      const size_t n = std::min<size_t>(kTxBytes, data.size() - queued);
      const uint64_t gpa = tx_bufs_[tx_next_];
      tx_next_ = (tx_next_ + 1) % kTxChains;
      h_.guest.write(gpa, std::span(reinterpret_cast<const uint8_t*>(data.data() + queued), n));
      add(tx_, gpa, static_cast<uint32_t>(n), false);
      queued += n;
      ++tx_inflight_;
      added = true;
    }
    if (added) kick(tx_, tx_queue(kPort));
  }

  std::string received;
  size_t queued = 0;

 private:
  static constexpr uint32_t kRxBytes = 48;
  static constexpr uint32_t kTxBytes = 40;
  static constexpr unsigned kTxChains = 6;

  void post_rx(unsigned buf) {
    slot_buf_[static_cast<uint16_t>(rx_.avail_idx() % rx_.size())] = buf;
    add(rx_, rx_bufs_[buf], kRxBytes, true);
  }
  static void add(FakeQueueDriver& d, uint64_t gpa, uint32_t len, bool writable) {
    const auto slot = static_cast<uint16_t>(d.avail_idx() % d.size());
    d.write_descriptor(slot, {gpa, len, static_cast<uint16_t>(writable ? kDescFlagWrite : 0), 0});
    d.set_avail_entry(d.avail_idx(), slot);
    d.set_avail_idx(static_cast<uint16_t>(d.avail_idx() + 1));
  }
  void kick(FakeQueueDriver& d, uint16_t q) {
    if (d.kick_needed()) kicks_.push_back(q);
  }

  ConsoleHarness& h_;
  FakeQueueDriver& rx_;
  FakeQueueDriver& tx_;
  std::deque<uint16_t>& kicks_;
  std::vector<uint64_t> rx_bufs_, tx_bufs_;
  std::map<uint16_t, unsigned> slot_buf_;
  uint16_t rx_last_used_ = 0, tx_last_used_ = 0;
  unsigned tx_inflight_ = 0, tx_next_ = 0;
};

std::string stream(size_t n, uint32_t seed) {
  std::mt19937 r(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>('a' + r() % 26);
  return s;
}

struct Run {
  explicit Run(uint32_t seed, bool event_idx) : rng(seed) {
    LinuxConsoleOptions lo;
    lo.fill_port_rx = false;  // the Guest above drives port 1's queues
    if (!event_idx) lo.ring_features &= ~kFeatureRingEventIdx;
    h = std::make_unique<ConsoleHarness>(small_console_options(), lo);
    h->port("", true);
    host = h->port("org.pier.flow");
    h->boot();
    EXPECT_EQ(h->os->open(kPort), 0);
    h->os->settle();
    guest = std::make_unique<Guest>(*h, rng, kicks);
    to_guest = stream(4000, seed);
    to_host = stream(4000, seed + 1);
    host->write_budget = kSocketRoom;
    // The guest runs while the device is inside a backend call, as a vCPU does while the I/O
    // thread works: right after the device armed a kick, or while it reads or writes.
    host->during_call = [this] {
      if (rng() % 3 == 0) guest->read();
      if (rng() % 3 == 0) guest->write(to_host);
    };
  }

  // One event, chosen by the seed. Returns false when it did nothing.
  bool step(bool host_reads) {
    switch (rng() % 6) {
      case 0: {  // the host writes into its socket while there is room
        const size_t room = kSocketRoom - std::min(kSocketRoom, host->input.size());
        const size_t n = std::min<size_t>({room, 1 + rng() % 200, to_guest.size() - sent});
        if (n == 0) return false;
        host->input.append(to_guest, sent, n);
        sent += n;
        return true;
      }
      case 1: {  // the host reads what reached its socket: room again toward it
        if (!host_reads || host->output.empty()) return false;
        const std::string got = host->take_output();
        host_got += got;
        host->write_budget += got.size();
        return true;
      }
      case 2:
        guest->read();
        return true;
      case 3:
        guest->write(to_host);
        return true;
      case 4: {  // a kick reaches the device
        if (kicks.empty()) return false;
        const uint16_t q = kicks.front();
        kicks.pop_front();
        h->os->transport().notify(q);
        return true;
      }
      default:
        return level_events();
    }
  }

  // Level-triggered readiness, as epoll reports it for what the device asked.
  bool level_events() {
    bool any = false;
    if (host->want_input && host->listener && !host->input.empty()) {
      host->listener->on_readable();
      any = true;
    }
    if (host->want_output && host->listener && host->write_budget > 0) {
      host->listener->on_writable();
      any = true;
    }
    return any;
  }

  // Everything except the host's reads runs until nothing changes. Returns an empty string, or
  // what is stuck.
  std::string settle_with_host_reader_paused() {
    for (int round = 0; round < 100000; ++round) {
      bool progress = !kicks.empty();
      while (!kicks.empty()) {
        const uint16_t q = kicks.front();
        kicks.pop_front();
        h->os->transport().notify(q);
      }
      progress |= level_events();
      const size_t received = guest->received.size(), queued = guest->queued;
      guest->read();
      guest->write(to_host);
      progress |= guest->received.size() != received || guest->queued != queued || !kicks.empty();
      if (!progress) break;
    }
    if (host->input.empty()) return {};
    const auto s = h->stats(kPort);
    return "host->guest stalled with " + std::to_string(host->input.size()) +
           " bytes in the socket: to_guest_wait " +
           std::string(console::to_string(s.to_guest_wait)) + ", want_input " +
           std::to_string(host->want_input) + ", rx buffers held " +
           std::to_string(s.rx_buffers_held) + ", to_host_wait " +
           std::string(console::to_string(s.to_host_wait)) + " | " + ring_state();
  }
  std::string ring_state() {
    FakeQueueDriver& d = h->os->driver(rx_queue(kPort));
    Queue& q = h->os->transport().queue(rx_queue(kPort));
    return "rx avail " + std::to_string(d.avail_idx()) + " last_avail " +
           std::to_string(q.last_avail_idx()) + " used " + std::to_string(d.used_idx()) +
           " avail_event " + std::to_string(d.avail_event()) + " used.flags " +
           std::to_string(d.used_flags()) + " notify_enabled " +
           std::to_string(q.notification_enabled()) + " kicks pending " +
           std::to_string(kicks.size());
  }
  bool level_ready() const {
    return (host->want_input && !host->input.empty()) ||
           (host->want_output && host->write_budget > 0);
  }

  static constexpr size_t kSocketRoom = 300;
  std::mt19937 rng;
  std::unique_ptr<ConsoleHarness> h;
  std::shared_ptr<BackendState> host;
  std::unique_ptr<Guest> guest;
  std::deque<uint16_t> kicks;
  std::string to_guest, to_host, host_got;
  size_t sent = 0;
};

void explore(bool event_idx) {
  for (uint32_t seed = 1; seed <= 300; ++seed) {
    Run r(seed, event_idx);
    bool host_reads = true;
    for (int i = 0; i < 400; ++i) {
      if (r.rng() % 40 == 0) host_reads = !host_reads;  // the host reader pauses / resumes
      r.step(host_reads);
      if (i % 50 == 49) {
        // Whatever happened so far, the host->guest stream must not depend on the host reading.
        const std::string stuck = r.settle_with_host_reader_paused();
        ASSERT_EQ(stuck, "") << "seed " << seed << " event_idx " << event_idx << " step " << i;
      }
    }
    // The host sends the rest and reads everything: both streams complete, in order.
    r.host->during_call = nullptr;
    for (int round = 0; round < 100000 && (r.guest->received.size() < r.to_guest.size() ||
                                           r.host_got.size() < r.to_host.size());
         ++round) {
      r.step(true);
    }
    ASSERT_EQ(r.guest->received, r.to_guest) << "seed " << seed;
    ASSERT_EQ(r.host_got, r.to_host) << "seed " << seed;
    ASSERT_TRUE(r.h->os->problems().empty()) << r.h->os->problems_text();
  }
}

TEST(ConsoleFlow, HostToGuestNeverWaitsForTheHostReaderWithEventIdx) {
  explore(true);
}
TEST(ConsoleFlow, HostToGuestNeverWaitsForTheHostReaderWithoutEventIdx) {
  explore(false);
}

// Each stop of each direction names its restart event in the port's stats.
TEST(ConsoleFlow, FlowWaitNamesEveryStop) {
  ConsoleHarness h(small_console_options(), few_rx_buffers(2, 8));
  h.port("", true);
  auto p1 = h.port("org.pier.flow", false, /*connected=*/false);
  h.start();
  EXPECT_EQ(h.stats(kPort).to_guest_wait, FlowWait::kNoDriver);
  ASSERT_TRUE(h.os->probe());
  h.os->settle();
  EXPECT_EQ(h.stats(kPort).to_guest_wait, FlowWait::kGuestClosed);
  ASSERT_EQ(h.os->open(kPort), 0);
  h.os->settle();
  EXPECT_EQ(h.stats(kPort).to_guest_wait, FlowWait::kHostDisconnected);
  p1->connect();
  h.os->settle();
  EXPECT_EQ(h.stats(kPort).to_guest_wait, FlowWait::kBackendNotReadable);
  EXPECT_EQ(h.stats(kPort).to_host_wait, FlowWait::kMoving);
  // More than the guest's two 8-byte buffers: the host writer is throttled by the guest.
  p1->send("0123456789abcdefXYZ");
  EXPECT_EQ(h.stats(kPort).to_guest_wait, FlowWait::kNoGuestBuffers);
  EXPECT_FALSE(p1->want_input);
  h.os->settle();  // the guest reads and posts again: its kick restarts the device
  h.os->settle();
  EXPECT_EQ(h.os->read(kPort), "0123456789abcdefXYZ");
  EXPECT_EQ(h.stats(kPort).to_guest_wait, FlowWait::kBackendNotReadable);
  // The host stops reading: the guest's writes are held.
  p1->write_budget = 3;
  ASSERT_EQ(h.os->write(kPort, "hello"), 5);
  EXPECT_EQ(h.stats(kPort).to_host_wait, FlowWait::kBackendNotWritable);
  EXPECT_TRUE(p1->want_output);
  p1->make_room(100);
  EXPECT_EQ(p1->take_output(), "hello");
  EXPECT_EQ(h.stats(kPort).to_host_wait, FlowWait::kMoving);
  p1->disconnect();
  h.os->settle();
  EXPECT_EQ(h.stats(kPort).to_guest_wait, FlowWait::kHostDisconnected);
  EXPECT_EQ(h.stats(kPort).to_host_wait, FlowWait::kHostDisconnected);
}

}  // namespace
}  // namespace pier::virtio::testing
