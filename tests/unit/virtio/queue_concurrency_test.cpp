// The queue against a driver running on another thread, with real blocking notifications in
// both directions (eventfd-like counters). A missing barrier or a wrong suppression decision
// shows up as a lost wakeup: one side sleeps forever while the other waits for it, and the test
// fails on its timeout instead of hanging.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <ostream>
#include <thread>

#include "unit/virtio/queue_fixture.hpp"

namespace pier::virtio::testing {
namespace {

using namespace std::chrono_literals;

// An eventfd: notify() adds one, wait() consumes everything or times out.
class Signal {
 public:
  void notify() {
    {
      std::lock_guard lock(mutex_);
      ++count_;
    }
    cv_.notify_one();
  }
  bool wait(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    if (!cv_.wait_for(lock, timeout, [&] { return count_ > 0; })) return false;
    count_ = 0;
    return true;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  uint64_t count_ = 0;
};

struct Params {
  uint64_t features;
  bool device_polls;  // disable notifications while draining, enable + recheck after
  bool indirect;
};

void PrintTo(const Params& p, std::ostream* os) {
  *os << "features=" << std::hex << p.features << std::dec << " device_polls=" << p.device_polls
      << " indirect=" << p.indirect;
}

class VirtioQueueConcurrency : public ::testing::TestWithParam<Params> {};

TEST_P(VirtioQueueConcurrency, NoLostNotificationsUnderLoad) {
  const auto [features, device_polls, indirect] = GetParam();
  constexpr uint16_t kSize = 64;
  constexpr uint32_t kChains = 100000;
  QueueFixture f(kSize, features, 64 << 20, kSize);
  ASSERT_TRUE(f.activate());
  // One 4-byte readable and one 4-byte writable buffer per sequence slot; at most kSize / 2
  // chains are in flight, so slots are never reused while in use.
  const uint64_t in_buffers = f.guest.alloc(4 * kSize);
  const uint64_t out_buffers = f.guest.alloc(4 * kSize);

  Signal kick;
  Signal irq;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> device_errors{0};
  std::thread device([&] {
    Queue& q = f.queue;
    while (!stop.load()) {
      if (!kick.wait(20ms)) continue;
      for (;;) {
        if (device_polls) q.disable_notification();
        while (auto chain = q.pop()) {
          uint32_t seq = 0;
          if (chain->copy_from(0, std::span(reinterpret_cast<uint8_t*>(&seq), 4)) != 4) {
            ++device_errors;
          }
          seq = ~seq;
          chain->copy_to(0, std::span(reinterpret_cast<const uint8_t*>(&seq), 4));
          q.push(std::move(*chain), 4);
        }
        if (q.failed()) ++device_errors;
        if (q.should_interrupt()) irq.notify();
        // pop() re-armed notifications when it found the ring empty; the polling style
        // re-enables them here and goes round again if buffers slipped in meanwhile.
        if (!device_polls || !q.enable_notification()) break;
      }
    }
  });

  std::map<uint16_t, uint32_t> in_flight;  // head -> sequence number
  uint32_t sent = 0;
  uint32_t done = 0;
  uint32_t waits = 0;
  bool stalled = false;
  while (done < kChains && !stalled) {
    bool added = false;
    while (sent < kChains && in_flight.size() < kSize / 2) {
      const uint64_t slot = sent % kSize;
      f.guest.write_obj<uint32_t>(in_buffers + 4 * slot, sent);
      auto head = f.driver.chain()
                      .raw(in_buffers + 4 * slot, 4, 0)
                      .raw(out_buffers + 4 * slot, 4, kDescFlagWrite)
                      .indirect(indirect)
                      .add();
      ASSERT_TRUE(head);
      in_flight[*head] = sent++;
      added = true;
    }
    if (added) {
      f.driver.publish();
      if (f.driver.kick_needed()) kick.notify();
    }
    uint32_t reaped = 0;
    while (auto used = f.driver.get_used()) {
      auto it = in_flight.find(used->id);
      ASSERT_NE(it, in_flight.end());
      ASSERT_EQ(used->len, 4u);
      uint32_t value = 0;
      std::memcpy(&value, used->written.data(), 4);
      ASSERT_EQ(value, ~it->second);
      in_flight.erase(it);
      ++done;
      ++reaped;
    }
    if (reaped == 0) {
      // Sleep until an interrupt, unless entries arrived while interrupts were being enabled.
      if (f.driver.enable_interrupts()) continue;
      ++waits;
      if (!irq.wait(10s)) stalled = true;
    }
  }
  stop = true;
  device.join();
  EXPECT_FALSE(stalled) << "lost wakeup after " << done << " chains (" << sent << " sent)";
  EXPECT_EQ(done, kChains);
  EXPECT_EQ(device_errors.load(), 0u);
  EXPECT_FALSE(f.queue.failed()) << f.queue.describe_fault();
  RecordProperty("driver_waits", static_cast<int>(waits));
}

INSTANTIATE_TEST_SUITE_P(
    Modes, VirtioQueueConcurrency,
    ::testing::Values(Params{kAllFeatures, false, false}, Params{kAllFeatures, true, false},
                      Params{kNoEventIdx, false, false}, Params{kNoEventIdx, true, false},
                      Params{kAllFeatures, true, true}),
    [](const auto& info) {
      const auto& p = info.param;
      return std::string(p.features & kFeatureRingEventIdx ? "EventIdx" : "Flags") +
             (p.device_polls ? "Polling" : "PopRearms") + (p.indirect ? "Indirect" : "");
    });

}  // namespace
}  // namespace pier::virtio::testing
