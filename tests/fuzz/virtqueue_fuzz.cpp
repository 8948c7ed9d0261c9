// Fuzzes the split virtqueue as a device sees it: the input fills the descriptor table, the avail
// ring and a block of indirect tables in a small fake guest RAM, then drives a sequence of
// operations (publish an avail index and pop, push held chains, interrupt and notification
// decisions, ring edits, resets). Whatever the guest wrote, every chain's segments must lie
// inside guest RAM, lengths must add up and stay within 32 bits, and the queue must either work
// or report an error, recovering after a reset. ASan/UBSan watch pier's own memory.
//
// Input: [0] queue size (1 << (b % 9); bit 7: raw 16-bit size from the first op instead)
//        [1] features (bit 0 EVENT_IDX, bit 1 INDIRECT_DESC, bits 2+3 drop VERSION_1,
//            bits 4-6 ring placement: 0-5 aligned, 6 misaligned, 7 outside RAM)
//        [2] number of operations N, then N x {op, le16 value}
//        then the avail ring entries (2 x size), the descriptor table (16 x size) and 128
//        descriptors for indirect tables; missing bytes read as zero.
// Descriptor addresses are steered by their top two bits so that chains often hit RAM:
// 0 = into the indirect-table block, 1 = anywhere in or just past RAM, 2 = raw 64-bit value,
// 3 = straddling the end of RAM; lengths, next indices and avail entries are steered towards
// plausible values unless their top bit is set (see steer()).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include "virtio/queue.hpp"
#include "virtio/virtio.hpp"
#include "vmm/guest_memory.hpp"

namespace {

using namespace pier;
using namespace pier::virtio;

constexpr uint64_t kRam = 256 << 10;
constexpr uint64_t kDescGpa = 0x1000;   // up to 256 x 16 = 4 KiB
constexpr uint64_t kAvailGpa = 0x2000;  // up to 6 + 2 x 256
constexpr uint64_t kUsedGpa = 0x3000;   // up to 6 + 8 x 256
constexpr uint64_t kTablesGpa = 0x4000;
constexpr uint64_t kTableDescriptors = 128;
constexpr uint16_t kMaxSize = 256;

struct Input {
  const uint8_t* data;
  size_t size;
  size_t pos = 0;
  uint8_t byte() { return pos < size ? data[pos++] : 0; }
  uint16_t u16() { return static_cast<uint16_t>(byte() | byte() << 8); }
  void bytes(uint8_t* out, size_t n) {
    for (size_t i = 0; i < n; ++i) out[i] = byte();
  }
};

struct Desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(Desc) == 16);

Desc steer(Desc d) {
  const uint64_t a = d.addr & ~(3ull << 62);
  switch (d.addr >> 62) {
    case 0:
      d.addr = kTablesGpa + a % (kTableDescriptors * 16);
      break;
    case 1:
      d.addr = a % (kRam + kRam / 4);
      break;
    case 2:
      break;
    default:
      d.addr = kRam - a % 64;
      break;
  }
  // Mostly plausible lengths (short buffers, indirect tables of 0..8 entries); a set top bit
  // keeps the raw, possibly huge, value.
  if (!(d.len & 0x8000'0000)) {
    d.len =
        (d.flags & kDescFlagIndirect) ? (d.len % 9) * 16 + (d.len & 0x100 ? 8 : 0) : d.len % 4096;
  }
  // Mostly small next indices, so chains stay in range, loop and run long.
  if (!(d.next & 0x8000)) d.next %= 8;
  return d;
}

// With PIER_FUZZ_STATS set in the environment, prints at exit how often each queue error and
// a successful pop happened, to see that the steering reaches every case.
struct Stats {
  uint64_t errors[32] = {};
  uint64_t chains = 0;
  uint64_t indirect_chains = 0;
  ~Stats() {
    if (std::getenv("PIER_FUZZ_STATS") == nullptr) return;
    std::fprintf(stderr, "chains popped: %llu (%llu with more descriptors than ring slots)\n",
                 static_cast<unsigned long long>(chains),
                 static_cast<unsigned long long>(indirect_chains));
    for (int e = 1; e < 32; ++e) {
      if (errors[e] == 0) continue;
      const auto name = to_string(static_cast<QueueError>(e));
      std::fprintf(stderr, "%8llu %.*s\n", static_cast<unsigned long long>(errors[e]),
                   static_cast<int>(name.size()), name.data());
    }
  }
} stats;

class Counter : public QueueErrorHandler {
 public:
  void on_queue_error(const Queue& queue) override {
    ++stats.errors[static_cast<int>(queue.error()) & 31];
    ++errors;
    // Exactly one report per failure, with a real error.
    if (queue.error() == QueueError::kNone || errors > 1) std::abort();
  }
  int errors = 0;
};

const GuestMemory& memory() {
  static const GuestMemory mem = GuestMemory::create(kRam);
  return mem;
}

void check_chain(const Chain& chain, uint16_t size, uint16_t value) {
  const auto ram = *memory().slice(0, kRam);
  size_t readable = 0;
  size_t writable = 0;
  for (const iovec& v : chain.readable()) {
    const auto* p = static_cast<const uint8_t*>(v.iov_base);
    if (v.iov_len == 0 || p < ram.data() || p + v.iov_len > ram.data() + ram.size()) std::abort();
    readable += v.iov_len;
  }
  for (const iovec& v : chain.writable()) {
    const auto* p = static_cast<const uint8_t*>(v.iov_base);
    if (v.iov_len == 0 || p < ram.data() || p + v.iov_len > ram.data() + ram.size()) std::abort();
    writable += v.iov_len;
  }
  if (readable != chain.readable_length() || writable != chain.writable_length()) std::abort();
  if (readable + writable > UINT32_MAX) std::abort();
  if (chain.descriptor_count() == 0 || chain.descriptor_count() > size) std::abort();
  if (chain.head() >= size) std::abort();

  // The helpers at an input-chosen offset stay inside the chain.
  uint8_t scratch[256];
  const size_t offset = value % (readable + 8);
  const size_t got = chain.copy_from(offset, scratch);
  if (got > sizeof(scratch) || got > (offset < readable ? readable - offset : 0)) std::abort();
  size_t sum = 0;
  for (const iovec& v : chain.readable_iovecs(offset, value)) sum += v.iov_len;
  if (sum > value || sum > (offset < readable ? readable - offset : 0)) std::abort();
  sum = 0;
  for (const iovec& v : chain.writable_iovecs(value % (writable + 8))) sum += v.iov_len;
  if (sum > writable) std::abort();
  std::memset(scratch, value & 0xff, sizeof(scratch));
  if (chain.copy_to(value % (writable + 8), scratch) > writable) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in{data, size};
  const GuestMemory& mem = memory();
  std::memset(mem.slice(0, kRam)->data(), 0, kRam);

  const uint8_t size_sel = in.byte();
  const uint8_t feature_sel = in.byte();
  const size_t num_ops = in.byte();
  std::vector<uint8_t> ops(num_ops * 3);
  in.bytes(ops.data(), ops.size());

  uint16_t qsize = static_cast<uint16_t>(1u << (size_sel % 9));
  if ((size_sel & 0x80) && num_ops > 0) qsize = static_cast<uint16_t>(ops[1] | ops[2] << 8);
  uint64_t features = kFeatureVersion1;
  if (feature_sel & 1) features |= kFeatureRingEventIdx;
  if (feature_sel & 2) features |= kFeatureRingIndirectDesc;
  if ((feature_sel & 0x0c) == 0x0c) features &= ~kFeatureVersion1;

  // Ring contents, written the way a guest would (the queue reads only what lies in RAM).
  const uint16_t fill = std::clamp<uint16_t>(qsize, 1, kMaxSize);
  // Avail entries first (short inputs reach them): mostly valid heads, a set top bit keeps the
  // raw value.
  for (uint16_t i = 0; i < fill; ++i) {
    uint16_t head = in.u16();
    if (!(head & 0x8000)) head %= fill;
    mem.write_obj(kAvailGpa + 4 + 2ull * i, head);
  }
  for (uint16_t i = 0; i < fill; ++i) {
    Desc d;
    in.bytes(reinterpret_cast<uint8_t*>(&d), sizeof d);
    mem.write_obj(kDescGpa + 16ull * i, steer(d));
  }
  for (uint64_t i = 0; i < kTableDescriptors; ++i) {
    Desc d;
    in.bytes(reinterpret_cast<uint8_t*>(&d), sizeof d);
    mem.write_obj(kTablesGpa + 16 * i, steer(d));
  }

  Counter counter;
  Queue queue(0, kMaxSize);
  queue.set_error_handler(&counter);
  auto configure = [&](uint8_t placement) {
    queue.set_size(qsize);
    switch ((placement >> 4) & 7) {
      case 6:
        queue.set_desc_addr(kDescGpa + 8);
        queue.set_avail_addr(kAvailGpa + 1);
        queue.set_used_addr(kUsedGpa + 2);
        break;
      case 7:
        queue.set_desc_addr(kRam - 16);
        queue.set_avail_addr(kRam - 2);
        queue.set_used_addr(kRam);
        break;
      default:
        queue.set_desc_addr(kDescGpa);
        queue.set_avail_addr(kAvailGpa);
        queue.set_used_addr(kUsedGpa);
        break;
    }
  };
  configure(feature_sel);
  const bool activated = queue.activate(mem, features);
  if (activated == queue.failed()) std::abort();

  std::vector<Chain> held;
  uint16_t avail_idx = 0;
  for (size_t i = 0; i < num_ops; ++i) {
    const uint8_t op = ops[3 * i];
    const uint16_t value = static_cast<uint16_t>(ops[3 * i + 1] | ops[3 * i + 2] << 8);
    switch (op % 8) {
      case 0: {  // the driver publishes entries: avail.idx moves by a small or an arbitrary step
        avail_idx = (op & 0x80) ? value : static_cast<uint16_t>(avail_idx + value % 8);
        mem.write_obj<uint16_t>(kAvailGpa + 2, avail_idx);
        for (int n = 0; n <= 2 * kMaxSize + 1; ++n) {
          auto chain = queue.pop();
          if (!chain) break;
          if (!chain->valid() || queue.failed()) std::abort();
          check_chain(*chain, qsize, value);
          ++stats.chains;
          if (chain->descriptor_count() > 1 && chain->descriptor_count() > fill / 2) {
            ++stats.indirect_chains;
          }
          held.push_back(std::move(*chain));
          // A guest can expose the same head again and again; the fuzzer bounds what it holds.
          if (held.size() > 1024) {
            (void)queue.push(std::move(held.front()), 0);
            held.erase(held.begin());
          }
        }
        break;
      }
      case 1:  // the device finishes the oldest chain
        if (!held.empty()) {
          const bool ok = queue.push(std::move(held.front()), value * 37u);
          if (ok && queue.failed()) std::abort();
          if (held.front().valid()) std::abort();  // consumed either way
          held.erase(held.begin());
        }
        break;
      case 2:  // ...or all of them, newest first
        while (!held.empty()) {
          (void)queue.push(std::move(held.back()), value);
          held.pop_back();
        }
        break;
      case 3:
        mem.write_obj<uint16_t>(kAvailGpa + 4 + 2ull * std::min(qsize, kMaxSize), value);
        (void)queue.should_interrupt();
        break;
      case 4:
        if (value & 1) {
          queue.disable_notification();
        } else {
          (void)queue.enable_notification();
        }
        (void)queue.has_available();
        break;
      case 5:  // the guest rewrites a ring entry or descriptor while the device works
        if (value & 1) {
          mem.write_obj<uint16_t>(kAvailGpa + 4 + 2ull * ((value >> 1) % fill), value >> 4);
        } else {
          Desc d{static_cast<uint64_t>(value) << 50 | value, value,
                 static_cast<uint16_t>(value >> 3), static_cast<uint16_t>(value >> 7)};
          mem.write_obj(kDescGpa + 16ull * ((value >> 1) % fill), steer(d));
        }
        break;
      case 6:
        mem.write_obj<uint16_t>(kAvailGpa, value);
        break;
      default: {  // device reset and a fresh initialization; held chains become stale
        queue.reset();
        counter.errors = 0;
        if (value & 1) qsize = static_cast<uint16_t>(1u << (value % 9));
        configure(static_cast<uint8_t>(value >> 8));
        avail_idx = 0;
        mem.write_obj<uint16_t>(kAvailGpa + 2, 0);
        if (queue.activate(mem, features) == queue.failed()) std::abort();
        for (auto& chain : held) {
          if (queue.push(std::move(chain), 0)) std::abort();
        }
        held.clear();
        break;
      }
    }
    if (counter.errors > 0 && !queue.failed()) std::abort();
  }
  return 0;
}
