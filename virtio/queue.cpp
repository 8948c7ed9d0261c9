#include "virtio/queue.hpp"

#include <fmt/format.h>

#include <bit>
#include <cstring>

#include "virtio/virtio.hpp"
#include "vmm/error.hpp"
#include "vmm/log.hpp"

namespace pier::virtio {
namespace {

static_assert(std::atomic_ref<uint16_t>::is_always_lock_free);
static_assert(std::atomic_ref<uint32_t>::is_always_lock_free);
static_assert(std::atomic_ref<uint16_t>::required_alignment <= kAvailAlign);
static_assert(std::atomic_ref<uint32_t>::required_alignment <= kUsedAlign);

// Ring field offsets (struct virtq_avail / struct virtq_used).
constexpr uint64_t kRingFlags = 0;
constexpr uint64_t kRingIdx = 2;
constexpr uint64_t kRingEntries = 4;
constexpr uint64_t kUsedElemSize = 8;

// A ring field in guest memory, accessed atomically. The rings' alignment (checked in
// activate()) makes every 16-bit field 2-aligned and every used element 4-aligned.
template <class T>
std::atomic_ref<T> field(uint8_t* ring, uint64_t offset) {
  return std::atomic_ref<T>(*reinterpret_cast<T*>(ring + offset));
}

}  // namespace

std::string_view to_string(QueueError error) {
  switch (error) {
    case QueueError::kNone:
      return "no error";
    case QueueError::kNotVersion1:
      return "driver did not negotiate VIRTIO_F_VERSION_1";
    case QueueError::kBadSize:
      return "queue size is 0, not a power of two or above the maximum";
    case QueueError::kRingMisaligned:
      return "ring address misaligned";
    case QueueError::kRingOutOfRange:
      return "ring outside guest RAM";
    case QueueError::kAvailIndexJump:
      return "avail index moved by more than the queue size";
    case QueueError::kHeadOutOfRange:
      return "avail ring entry is not a descriptor index";
    case QueueError::kNextOutOfRange:
      return "descriptor next index out of range";
    case QueueError::kChainLoop:
      return "descriptor chain loops";
    case QueueError::kChainTooLong:
      return "descriptor chain longer than the queue size";
    case QueueError::kZeroLength:
      return "zero-length descriptor";
    case QueueError::kBufferOutOfRange:
      return "buffer outside guest RAM";
    case QueueError::kIndirectNotNegotiated:
      return "indirect descriptor without INDIRECT_DESC";
    case QueueError::kNestedIndirect:
      return "indirect descriptor inside an indirect table";
    case QueueError::kIndirectWithNext:
      return "descriptor has both INDIRECT and NEXT";
    case QueueError::kBadIndirectLength:
      return "bad indirect table length";
    case QueueError::kIndirectOutOfRange:
      return "indirect table outside guest RAM";
    case QueueError::kLengthOverflow:
      return "descriptor chain longer than 4 GiB";
    case QueueError::kReadableAfterWritable:
      return "device-readable descriptor after a writable one";
    case QueueError::kTooManyInFlight:
      return "more buffers in flight than the queue size (a head made available again before "
             "it was used)";
  }
  return "unknown queue error";
}

Queue::Queue(uint16_t index, uint16_t max_size) : index_(index), max_size_(max_size) {
  if (max_size == 0 || max_size > kMaxQueueSize || !std::has_single_bit(max_size)) {
    throw Error(fmt::format("virtqueue {}: maximum size {} is not a power of two in 1..32768",
                            index, max_size));
  }
  size_ = max_size;
}

void Queue::set_size(uint16_t size) {
  if (!ready_) size_ = size;
}
void Queue::set_desc_addr(uint64_t gpa) {
  if (!ready_) desc_addr_ = gpa;
}
void Queue::set_avail_addr(uint64_t gpa) {
  if (!ready_) avail_addr_ = gpa;
}
void Queue::set_used_addr(uint64_t gpa) {
  if (!ready_) used_addr_ = gpa;
}

void Queue::reset() {
  ready_ = false;
  size_ = max_size_;
  desc_addr_ = avail_addr_ = used_addr_ = 0;
  memory_ = nullptr;
  desc_ = avail_ = used_ = nullptr;
  event_idx_ = indirect_ = false;
  notify_enabled_ = true;
  armed_avail_event_.reset();
  last_avail_ = shadow_avail_ = used_idx_ = signalled_used_ = 0;
  pushes_since_check_ = 0;
  fault_ = {};
  ++generation_;
}

bool Queue::activate(const GuestMemory& memory, uint64_t driver_features) {
  ready_ = false;
  fault_ = {};
  notify_enabled_ = true;
  armed_avail_event_.reset();
  last_avail_ = shadow_avail_ = used_idx_ = signalled_used_ = 0;
  pushes_since_check_ = 0;
  ++generation_;
  memory_ = &memory;
  event_idx_ = (driver_features & kFeatureRingEventIdx) != 0;
  indirect_ = (driver_features & kFeatureRingIndirectDesc) != 0;

  if (!(driver_features & kFeatureVersion1)) return fail(QueueError::kNotVersion1);
  // "Queue Size value is always a power of 2. The maximum Queue Size value is 32768."
  if (size_ == 0 || size_ > max_size_ || !std::has_single_bit(size_)) {
    return fail(QueueError::kBadSize, size_);
  }
  // "The driver MUST ensure that the physical address of the first byte of each virtqueue part
  // is a multiple of the specified alignment value" (16, 2, 4). The atomic ring accesses below
  // depend on it.
  if (desc_addr_ % kDescAlign) return fail(QueueError::kRingMisaligned, 0, desc_addr_);
  if (avail_addr_ % kAvailAlign) return fail(QueueError::kRingMisaligned, 1, avail_addr_);
  if (used_addr_ % kUsedAlign) return fail(QueueError::kRingMisaligned, 2, used_addr_);
  auto desc = memory.slice(desc_addr_, desc_table_bytes(size_));
  if (!desc) return fail(QueueError::kRingOutOfRange, 0, desc_addr_, desc_table_bytes(size_));
  auto avail = memory.slice(avail_addr_, avail_ring_bytes(size_));
  if (!avail) return fail(QueueError::kRingOutOfRange, 1, avail_addr_, avail_ring_bytes(size_));
  auto used = memory.slice(used_addr_, used_ring_bytes(size_));
  if (!used) return fail(QueueError::kRingOutOfRange, 2, used_addr_, used_ring_bytes(size_));
  desc_ = desc->data();
  avail_ = avail->data();
  used_ = used->data();

  // The used ring is the device's: start it empty, asking for every notification.
  field<uint16_t>(used_, kRingFlags).store(0, std::memory_order_relaxed);
  field<uint16_t>(used_, kRingIdx).store(0, std::memory_order_release);
  if (event_idx_) {
    field<uint16_t>(used_, kRingEntries + kUsedElemSize * size_)
        .store(0, std::memory_order_relaxed);
  }
  ready_ = true;
  return true;
}

bool Queue::fail(QueueError error, uint32_t index, uint64_t addr, uint64_t len) {
  if (fault_.error != QueueError::kNone) return false;
  fault_ = {error, index, addr, len};
  if (error_handler_ != nullptr) {
    error_handler_->on_queue_error(*this);
  } else {
    static log::OnceFlag once;
    if (once.first()) log::warn("virtio: {} (no transport to report it)", describe_fault());
  }
  return false;
}

std::string Queue::describe_fault() const {
  const auto& f = fault_;
  std::string what;
  switch (f.error) {
    case QueueError::kNone:
      break;
    case QueueError::kNotVersion1:
      break;
    case QueueError::kBadSize:
      what = fmt::format(": size {} (maximum {})", f.index, max_size_);
      break;
    case QueueError::kRingMisaligned:
    case QueueError::kRingOutOfRange: {
      static constexpr std::string_view kParts[] = {"descriptor table", "avail ring", "used ring"};
      what = fmt::format(": {} at {:#x} ({} bytes)", kParts[f.index % 3], f.addr, f.len);
      break;
    }
    case QueueError::kAvailIndexJump:
      what = fmt::format(": avail.idx {} after {}", f.index, f.len);
      break;
    case QueueError::kHeadOutOfRange:
      what = fmt::format(": head {} in slot {} (size {})", f.index, f.addr, size_);
      break;
    case QueueError::kTooManyInFlight:
      what = fmt::format(": head {} in slot {} with {} chains already in flight (size {})", f.index,
                         f.addr, f.len, size_);
      break;
    default:
      what = fmt::format(": descriptor {} addr {:#x} len {}", f.index, f.addr, f.len);
      break;
  }
  return fmt::format("virtqueue {}: {}{}", index_, to_string(f.error), what);
}

uint16_t Queue::load_avail_idx() const {
  // Acquire: the driver wrote the ring entries and descriptors, then a write barrier, then idx.
  return field<uint16_t>(avail_, kRingIdx).load(std::memory_order_acquire);
}

bool Queue::check_avail_jump(uint16_t avail_idx) {
  // The driver can only expose as many chains as the ring holds; a larger distance means idx was
  // decremented or garbage ("A driver MUST NOT decrement the available idx").
  if (static_cast<uint16_t>(avail_idx - last_avail_) > size_) {
    return fail(QueueError::kAvailIndexJump, avail_idx, 0, last_avail_);
  }
  return true;
}

void Queue::arm_avail_event() {
  // With EVENT_IDX, avail_event = N asks the driver to notify once it writes avail entry N.
  field<uint16_t>(used_, kRingEntries + kUsedElemSize * size_)
      .store(shadow_avail_, std::memory_order_relaxed);
  // Store avail_event, then load avail.idx: a full fence, pairing with the driver's
  // "store idx; mb; load avail_event" in virtqueue_kick_prepare_split(). Either the driver sees
  // our avail_event and kicks, or we see its new idx.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  armed_avail_event_ = shadow_avail_;
}

bool Queue::refresh_avail() {
  shadow_avail_ = load_avail_idx();
  if (shadow_avail_ == last_avail_ && notify_enabled_ && event_idx_ &&
      armed_avail_event_ != last_avail_) {
    arm_avail_event();
    shadow_avail_ = load_avail_idx();
  }
  if (!check_avail_jump(shadow_avail_)) return false;
  return shadow_avail_ != last_avail_;
}

bool Queue::has_available() {
  if (!ready_ || failed()) return false;
  if (shadow_avail_ != last_avail_) return true;
  return refresh_avail();
}

std::optional<Chain> Queue::pop() {
  if (!ready_ || failed()) return std::nullopt;
  if (shadow_avail_ == last_avail_ && !refresh_avail()) return std::nullopt;

  const uint16_t slot = last_avail_ & (size_ - 1);
  const uint16_t head =
      field<uint16_t>(avail_, kRingEntries + 2ull * slot).load(std::memory_order_relaxed);
  if (head >= size_) {
    fail(QueueError::kHeadOutOfRange, head, slot);
    return std::nullopt;
  }
  // Every chain in flight holds at least one descriptor of the table until the device uses it,
  // so a driver can never have more than size_ of them. One more means a head made available
  // again while the device still holds it: a guest that does so in a loop would make the device
  // hold chains (and whatever it keeps per chain) without limit.
  if (in_flight() >= size_) {
    fail(QueueError::kTooManyInFlight, head, slot, in_flight());
    return std::nullopt;
  }
  // Built in place in the optional that is returned (no move of the segment list).
  std::optional<Chain> result(std::in_place);
  Chain& chain = *result;
  chain.head_ = head;
  chain.generation_ = generation_;
  if (!parse_chain(head, chain)) return std::nullopt;
  ++last_avail_;
  chain.valid_ = true;
  return result;
}

namespace {

// One fetch of a descriptor: memcpy into a local, then a compiler barrier so the compiler
// cannot re-read guest memory in place of the local (the guest may rewrite the descriptor
// after we validated the copy).
inline void read_descriptor(const uint8_t* at, void* out) {
  std::memcpy(out, at, kDescSize);
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

}  // namespace

bool Queue::parse_chain(uint16_t head, Chain& chain) {
  const uint8_t* table = desc_;
  uint32_t table_size = size_;
  uint16_t index = head;
  uint32_t visited = 0;  // descriptors visited in the current table
  uint64_t total = 0;
  bool in_indirect = false;
  for (;;) {
    // A chain that visits more descriptors than its table holds has visited one twice.
    if (visited == table_size) return fail(QueueError::kChainLoop, index);
    ++visited;
    Descriptor d;
    read_descriptor(table + kDescSize * index, &d);

    if (d.flags & kDescFlagIndirect) {
      // "The driver MUST NOT set the VIRTQ_DESC_F_INDIRECT flag unless the
      // VIRTIO_F_INDIRECT_DESC feature was negotiated. The driver MUST NOT set the
      // VIRTQ_DESC_F_INDIRECT flag within an indirect descriptor (ie. only one table per
      // descriptor). ... A driver MUST NOT set both VIRTQ_DESC_F_INDIRECT and VIRTQ_DESC_F_NEXT
      // in flags." The device MUST ignore VIRTQ_DESC_F_WRITE on this descriptor.
      if (!indirect_) return fail(QueueError::kIndirectNotNegotiated, index, d.addr, d.len);
      if (in_indirect) return fail(QueueError::kNestedIndirect, index, d.addr, d.len);
      if (d.flags & kDescFlagNext) return fail(QueueError::kIndirectWithNext, index, d.addr, d.len);
      // The table holds len / 16 descriptors; "A driver MUST NOT create a descriptor chain
      // longer than the Queue Size of the device", so more entries than that is an error too.
      if (d.len == 0 || d.len % kDescSize != 0 || d.len / kDescSize > size_) {
        return fail(QueueError::kBadIndirectLength, index, d.addr, d.len);
      }
      auto t = memory_->slice(d.addr, d.len);
      if (!t) return fail(QueueError::kIndirectOutOfRange, index, d.addr, d.len);
      // The indirect descriptor has no NEXT, so the chain continues in the table and ends
      // there ("zero or more normal chained descriptors followed by a single descriptor with
      // flags&VIRTQ_DESC_F_INDIRECT").
      table = t->data();
      table_size = d.len / kDescSize;
      index = 0;
      visited = 0;
      in_indirect = true;
      continue;
    }

    if (!add_segment(d, index, chain, total)) return false;
    // Counts the direct part and the indirect part together.
    if (chain.descriptor_count() > size_) return fail(QueueError::kChainTooLong, index);
    if (!(d.flags & kDescFlagNext)) return true;
    if (d.next >= table_size) return fail(QueueError::kNextOutOfRange, d.next);
    index = d.next;
  }
}

bool Queue::add_segment(const Descriptor& d, uint32_t index, Chain& chain, uint64_t& total) {
  // Zero-length buffers are an error, as in QEMU ("zero sized buffers are not allowed"): no
  // driver that works with QEMU produces them, a zero-length iovec is useless to readv/writev,
  // and skipping them silently would let a guest build arbitrarily long chains of nothing.
  if (d.len == 0) return fail(QueueError::kZeroLength, index, d.addr, d.len);
  auto buffer = memory_->slice(d.addr, d.len);
  if (!buffer) return fail(QueueError::kBufferOutOfRange, index, d.addr, d.len);
  // "Drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total"; used.len is 32
  // bits, so the device's lengths stay within uint32_t.
  total += d.len;
  if (total > UINT32_MAX) return fail(QueueError::kLengthOverflow, index, d.addr, total);
  const iovec segment{buffer->data(), buffer->size()};
  if (d.flags & kDescFlagWrite) {
    chain.segments_.push_back(segment);
    chain.writable_length_ += d.len;
  } else {
    // "The driver MUST place any device-writable descriptor elements after any device-readable
    // descriptor elements."
    if (chain.segments_.size() != chain.num_readable_) {
      return fail(QueueError::kReadableAfterWritable, index, d.addr, d.len);
    }
    chain.segments_.push_back(segment);
    ++chain.num_readable_;
    chain.readable_length_ += d.len;
  }
  return true;
}

bool Queue::push(Chain&& chain, uint32_t written) {
  if (!chain.valid_) return false;
  const uint16_t head = chain.head_;
  const uint32_t generation = chain.generation_;
  // used.len is "the total of bytes written into the buffer"; never claim more than exists.
  if (written > chain.writable_length_) written = static_cast<uint32_t>(chain.writable_length_);
  chain.release();  // consumed whatever happens below
  if (!ready_ || failed() || generation != generation_) return false;

  const uint64_t elem = kRingEntries + kUsedElemSize * (used_idx_ & (size_ - 1));
  field<uint32_t>(used_, elem).store(head, std::memory_order_relaxed);
  field<uint32_t>(used_, elem + 4).store(written, std::memory_order_relaxed);
  ++used_idx_;
  // Release: "The device MUST set len prior to updating the used idx", and the bytes written
  // into the buffers must be visible before the driver sees the entry.
  field<uint16_t>(used_, kRingIdx).store(used_idx_, std::memory_order_release);
  if (pushes_since_check_ != UINT32_MAX) ++pushes_since_check_;
  return true;
}

bool Queue::should_interrupt() {
  if (!ready_ || failed() || pushes_since_check_ == 0) return false;
  const uint32_t pushes = pushes_since_check_;
  pushes_since_check_ = 0;
  const uint16_t old_used = signalled_used_;
  signalled_used_ = used_idx_;
  // used.idx was stored (release) in push(); the driver's used_event / flags must be read after
  // that store is visible: store->load needs a full fence (vhost_notify's smp_mb(), pairing with
  // the driver's virtio_mb() in virtqueue_enable_cb / virtqueue_poll).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (!event_idx_) {
    // "If flags is 1, the device SHOULD NOT send a notification. If flags is 0, the device MUST
    // send a notification." Only the low bit has a meaning.
    const uint16_t flags = field<uint16_t>(avail_, kRingFlags).load(std::memory_order_relaxed);
    return (flags & kAvailFlagNoInterrupt) == 0;
  }
  // 65536 or more pushes since the last check wrap the 16-bit window: notify to be safe.
  if (pushes > 0xffff) return true;
  const uint16_t used_event =
      field<uint16_t>(avail_, kRingEntries + 2ull * size_).load(std::memory_order_relaxed);
  // "If the idx field in the used ring (which determined where that descriptor index was
  // placed) was equal to used_event, the device MUST send a notification" -- for a batch, if
  // any of the entries old_used..used_idx_-1 was used_event.
  return need_event(used_event, used_idx_, old_used);
}

void Queue::disable_notification() {
  notify_enabled_ = false;
  if (!ready_ || failed()) return;
  // With EVENT_IDX there is nothing to write: avail_event stays where it was, so the driver
  // stops kicking once it is past it (at most one more kick).
  if (!event_idx_) {
    field<uint16_t>(used_, kRingFlags).store(kUsedFlagNoNotify, std::memory_order_relaxed);
  }
}

bool Queue::enable_notification() {
  notify_enabled_ = true;
  if (!ready_ || failed()) return false;
  if (event_idx_) {
    arm_avail_event();
  } else {
    field<uint16_t>(used_, kRingFlags).store(0, std::memory_order_relaxed);
    // Same store->load ordering as in arm_avail_event(): clear NO_NOTIFY, then re-read idx.
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
  shadow_avail_ = load_avail_idx();
  if (!check_avail_jump(shadow_avail_)) return false;
  return shadow_avail_ != last_avail_;
}

}  // namespace pier::virtio
