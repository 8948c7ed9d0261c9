// Device-side cost of the split virtqueue: pop a chain (read avail, walk and validate the
// descriptors, map them to host spans) and push it back to the used ring, for chains of 1, 4 and
// 16 descriptors, direct and indirect. Fake guest memory, one thread, EVENT_IDX negotiated.
// The driver side is kept out of the loop: the chains are written once and the avail ring
// points at them over and over; every 256 chains the "driver" publishes 256 more with one store.
//
//   build-virtio/benches/virtqueue_bench   (Time = ns per chain)
#include <benchmark/benchmark.h>

#include <vector>

#include "tests/unit/virtio/fake_driver.hpp"

namespace {

using namespace pier::virtio;
using namespace pier::virtio::testing;

constexpr uint16_t kSize = 256;
constexpr uint32_t kBufferBytes = 64;

struct Bench {
  Bench(int descriptors, bool indirect)
      : queue(0, kSize), driver(guest, queue, kSize), n(descriptors) {
    driver.set_features(kQueueFeatures);
    if (!queue.activate(guest.memory(), kQueueFeatures)) throw std::runtime_error("activate");
    const uint64_t buffers = guest.alloc(kBufferBytes * n);
    // Half readable (a request header and data), half writable (the reply), like most devices.
    auto desc = [&](int i, uint16_t next) {
      const int readable = (n + 1) / 2;
      uint16_t flags = i < readable ? 0 : kDescFlagWrite;
      if (i + 1 < n) flags |= kDescFlagNext;
      return RawDescriptor{buffers + kBufferBytes * i, kBufferBytes, flags, next};
    };
    std::vector<uint16_t> heads;
    if (indirect) {
      for (uint16_t c = 0; c < kSize; ++c) {
        const uint64_t table = guest.alloc(16ull * n, 16);
        for (int i = 0; i < n; ++i) {
          guest.write_obj(table + 16ull * i, desc(i, static_cast<uint16_t>(i + 1)));
        }
        driver.write_descriptor(c, {table, static_cast<uint32_t>(16 * n), kDescFlagIndirect, 0});
        heads.push_back(c);
      }
    } else {
      for (int c = 0; c < kSize / n; ++c) {
        for (int i = 0; i < n; ++i) {
          const auto index = static_cast<uint16_t>(c * n + i);
          driver.write_descriptor(index, desc(i, static_cast<uint16_t>(index + 1)));
        }
        heads.push_back(static_cast<uint16_t>(c * n));
      }
    }
    for (uint16_t slot = 0; slot < kSize; ++slot) {
      driver.set_avail_entry(slot, heads[slot % heads.size()]);
    }
  }

  Chain pop() {
    auto chain = queue.pop();
    if (!chain) {
      avail = static_cast<uint16_t>(avail + kSize);
      driver.set_avail_idx(avail);
      chain = queue.pop();
    }
    return std::move(*chain);
  }

  FakeGuest guest{64ull << 20};
  Queue queue;
  FakeQueueDriver driver;
  int n;
  uint16_t avail = 0;
};

// One iteration is one chain, so the Time column is ns per chain.
void set_counters(benchmark::State& state) {
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}

// pop + push.
void BM_PopPush(benchmark::State& state) {
  Bench b(static_cast<int>(state.range(0)), state.range(1) != 0);
  for (auto _ : state) {
    Chain chain = b.pop();
    benchmark::DoNotOptimize(chain.readable_length());
    b.queue.push(std::move(chain), static_cast<uint32_t>(chain.writable_length()));
  }
  if (b.queue.failed()) state.SkipWithError(b.queue.describe_fault().c_str());
  set_counters(state);
}

// pop + push + the used-buffer notification decision after every chain (a full fence and a
// used_event load), as a device that completes one request per notification does.
void BM_PopPushShouldInterrupt(benchmark::State& state) {
  Bench b(static_cast<int>(state.range(0)), state.range(1) != 0);
  for (auto _ : state) {
    Chain chain = b.pop();
    benchmark::DoNotOptimize(chain.readable_length());
    b.queue.push(std::move(chain), 0);
    benchmark::DoNotOptimize(b.queue.should_interrupt());
  }
  if (b.queue.failed()) state.SkipWithError(b.queue.describe_fault().c_str());
  set_counters(state);
}

// pop + iovec export of both parts (what a readv/writev device does) + push.
void BM_PopIovecsPush(benchmark::State& state) {
  Bench b(static_cast<int>(state.range(0)), state.range(1) != 0);
  for (auto _ : state) {
    Chain chain = b.pop();
    auto in = chain.readable_iovecs();
    auto out = chain.writable_iovecs();
    benchmark::DoNotOptimize(in.data());
    benchmark::DoNotOptimize(out.data());
    b.queue.push(std::move(chain), 0);
  }
  if (b.queue.failed()) state.SkipWithError(b.queue.describe_fault().c_str());
  set_counters(state);
}

// A notification's worth of work as the console device does it: the driver publishes `batch`
// single-descriptor chains (one kick), the device pops until the ring is empty - the empty pop
// re-arms avail_event behind a full fence - pushes each chain back, and asks once whether to
// interrupt. Time = ns per chain, so the per-kick cost shows as batch shrinks (batch 1 is a
// driver kicking for every buffer).
void BM_DrainBatch(benchmark::State& state) {
  Bench b(1, false);
  const auto batch = static_cast<uint16_t>(state.range(0));
  for (auto _ : state) {
    b.avail = static_cast<uint16_t>(b.avail + batch);
    b.driver.set_avail_idx(b.avail);
    while (auto chain = b.queue.pop()) {
      benchmark::DoNotOptimize(chain->readable_length());
      b.queue.push(std::move(*chain), 0);
    }
    benchmark::DoNotOptimize(b.queue.should_interrupt());
  }
  if (b.queue.failed()) state.SkipWithError(b.queue.describe_fault().c_str());
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * batch);
  state.counters["ns/chain"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * batch,
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void shapes(benchmark::internal::Benchmark* bench) {
  bench->ArgNames({"descriptors", "indirect"});
  for (int indirect : {0, 1}) {
    for (int n : {1, 4, 16}) bench->Args({n, indirect});
  }
}

BENCHMARK(BM_PopPush)->Apply(shapes);
BENCHMARK(BM_PopPushShouldInterrupt)->Apply(shapes);
BENCHMARK(BM_PopIovecsPush)->Apply(shapes);
BENCHMARK(BM_DrainBatch)->ArgName("batch")->Arg(1)->Arg(16)->Arg(64)->Arg(256);

}  // namespace
