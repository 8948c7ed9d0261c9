#pragma once
// The split virtqueue, device side (virtio 1.2 section 2.7 "Split Virtqueues").
//
// Who calls what, and on which thread:
//  - The transport owns the Queue objects, and every call on a Queue happens on the I/O thread
//    (device.hpp "Threads"). The transport keeps the size and ring addresses the driver
//    programs (on vCPU threads) itself; on the I/O thread it writes them into the not-ready
//    queue and calls activate() (on queue enable or DRIVER_OK, transport's choice), and calls
//    reset() on a device reset.
//  - The device, on that same I/O thread, pops chains, pushes them back and asks whether the
//    driver wants an interrupt. A Queue is not internally locked: the transport hands it to the
//    device in Device::activate() and takes it back after Device::reset() has returned.
//
// Memory ordering. The rings live in guest RAM and the driver updates them concurrently from
// another CPU. Guest memory is outside the C++ memory model, so the queue treats it the way
// Linux treats a device's memory (READ_ONCE/WRITE_ONCE plus explicit barriers):
//  - 16-bit ring indices and flags are accessed with std::atomic_ref<uint16_t> on the
//    (naturally aligned, checked at activation) ring fields: avail.idx is loaded with acquire,
//    so the ring entries and descriptors the driver wrote before its write barrier and idx
//    update are visible after it; used.idx is stored with release, so the used element and the
//    bytes written into the buffers are visible before the driver can see the new index.
//  - A full fence (std::atomic_thread_fence(seq_cst), mfence on x86) separates the device's
//    store of used.idx from its load of used_event / avail.flags (should_interrupt), and its
//    store of avail_event / used.flags from its re-load of avail.idx (enable_notification and
//    pop on an empty ring). Both are store->load orderings that only a full fence provides; they
//    pair with the driver's virtio_mb() in virtqueue_kick_prepare_split() and
//    virtqueue_poll() in Linux's virtio_ring.c. Without them one side can miss the other's
//    update and a notification is lost.
//  - Descriptors are copied into a local with one memcpy followed by a compiler barrier, then
//    only the copy is validated and used: a guest rewriting a descriptor while the device parses
//    it cannot make the device use an address or length other than the one it checked.
//    (Indirect tables need not be 8-byte aligned, so per-field atomics are not an option there.)
// Why atomic_ref and not volatile: volatile gives neither acquire/release ordering against the
// surrounding plain accesses nor a guarantee of untorn 16-bit accesses; atomic_ref gives both and
// costs nothing extra on x86-64, where relaxed/acquire/release loads and stores are plain movs
// and only the seq_cst fence emits an instruction. The fences are taken once per batch (after a
// run of pushes, when the ring runs empty), not once per chain.
#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "virtio/chain.hpp"
#include "vmm/guest_memory.hpp"

namespace pier::virtio {

// Descriptor flags (struct virtq_desc).
inline constexpr uint16_t kDescFlagNext = 1;
inline constexpr uint16_t kDescFlagWrite = 2;
inline constexpr uint16_t kDescFlagIndirect = 4;
// avail.flags: the driver does not want used-buffer notifications (without EVENT_IDX).
inline constexpr uint16_t kAvailFlagNoInterrupt = 1;
// used.flags: the device does not want available-buffer notifications (without EVENT_IDX).
inline constexpr uint16_t kUsedFlagNoNotify = 1;

// Ring part sizes and alignments ("Virtqueue Part / Alignment / Size" table).
inline constexpr uint64_t kDescSize = 16;
inline constexpr uint64_t kDescAlign = 16;
inline constexpr uint64_t kAvailAlign = 2;
inline constexpr uint64_t kUsedAlign = 4;
constexpr uint64_t desc_table_bytes(uint16_t size) {
  return kDescSize * size;
}
// flags, idx, ring[size], used_event.
constexpr uint64_t avail_ring_bytes(uint16_t size) {
  return 6 + 2ull * size;
}
// flags, idx, {id, len}[size], avail_event.
constexpr uint64_t used_ring_bytes(uint16_t size) {
  return 6 + 8ull * size;
}

// vring_need_event() from the virtio spec / Linux: after moving an index from `old_idx` to
// `new_idx`, the other side asked to be notified when the index passes `event` (i.e. the entry at
// `event` was written). All arithmetic is modulo 2^16.
constexpr bool need_event(uint16_t event, uint16_t new_idx, uint16_t old_idx) {
  return static_cast<uint16_t>(new_idx - event - 1) < static_cast<uint16_t>(new_idx - old_idx);
}

// Why a queue stopped working. Every value other than kNone is a driver bug or a hostile guest;
// the queue then does nothing until reset() and the transport puts the device in NEEDS_RESET.
enum class QueueError : uint8_t {
  kNone = 0,
  kNotVersion1,            // activated without VIRTIO_F_VERSION_1 (legacy layout unsupported)
  kBadSize,                // size 0, not a power of two, or above the device's maximum
  kRingMisaligned,         // desc not 16-, avail not 2-, used not 4-byte aligned
  kRingOutOfRange,         // a ring part not inside one guest RAM region
  kAvailIndexJump,         // avail.idx moved more than the queue size past the last seen entry
  kHeadOutOfRange,         // avail ring entry >= queue size
  kNextOutOfRange,         // next >= size of the table it indexes
  kChainLoop,              // a chain visiting more descriptors than its table holds
  kChainTooLong,           // more buffer descriptors than the queue size (direct + indirect)
  kZeroLength,             // a buffer descriptor of length 0
  kBufferOutOfRange,       // a buffer not inside one guest RAM region (outside RAM, in the hole)
  kIndirectNotNegotiated,  // VIRTQ_DESC_F_INDIRECT without VIRTIO_RING_F_INDIRECT_DESC
  kNestedIndirect,         // VIRTQ_DESC_F_INDIRECT inside an indirect table
  kIndirectWithNext,       // VIRTQ_DESC_F_INDIRECT together with VIRTQ_DESC_F_NEXT
  kBadIndirectLength,      // table length 0, not a multiple of 16, or more entries than size
  kIndirectOutOfRange,     // an indirect table not inside one guest RAM region
  kLengthOverflow,         // chain's total length above UINT32_MAX
  kReadableAfterWritable,  // a device-readable descriptor after a device-writable one
  kTooManyInFlight,        // more chains popped and not yet used than the queue size
};
std::string_view to_string(QueueError error);

// What went wrong, with enough detail for one useful log line.
struct QueueFault {
  QueueError error = QueueError::kNone;
  uint32_t index = 0;  // descriptor index, ring slot or value involved (see describe())
  uint64_t addr = 0;
  uint64_t len = 0;
};

class Queue;

// Told once when a queue enters its error state. The transport implements it: set
// NEEDS_RESET (0x40) in device status, send a config-change interrupt, and log describe_fault()
// once (a log::OnceFlag, so a guest that breaks its queues in a loop cannot flood the log).
// Without a handler the queue logs a warning once itself.
// It is called synchronously from inside the failing call, on the I/O thread: from activate()
// (while a vCPU thread waits for it holding the transport's lock) and from pop(),
// has_available() or enable_notification() in the device. So it must not take a lock that is held
// around those calls; set an atomic flag and signal the config interrupt instead.
class QueueErrorHandler {
 public:
  virtual void on_queue_error(const Queue& queue) = 0;

 protected:
  ~QueueErrorHandler() = default;
};

class Queue {
 public:
  // `max_size`: what the device supports (a power of two <= 32768); also the size the transport
  // reports until the driver writes a smaller one. Throws pier::Error otherwise.
  Queue(uint16_t index, uint16_t max_size);
  Queue(Queue&&) noexcept = default;
  Queue& operator=(Queue&&) noexcept = default;
  Queue(const Queue&) = delete;
  Queue& operator=(const Queue&) = delete;

  uint16_t index() const { return index_; }
  uint16_t max_size() const { return max_size_; }

  // ---- Transport side: configuration while the queue is not ready (ignored while ready).
  void set_size(uint16_t size);
  void set_desc_addr(uint64_t gpa);
  void set_avail_addr(uint64_t gpa);
  void set_used_addr(uint64_t gpa);
  uint16_t size() const { return size_; }
  uint64_t desc_addr() const { return desc_addr_; }
  uint64_t avail_addr() const { return avail_addr_; }
  uint64_t used_addr() const { return used_addr_; }
  void set_error_handler(QueueErrorHandler* handler) { error_handler_ = handler; }

  // Validates size and ring layout against guest RAM, maps the rings and starts with empty
  // indices and notifications enabled. `driver_features` are the negotiated features (EVENT_IDX
  // and INDIRECT_DESC are taken from them). Returns false and enters the error state (telling
  // the error handler) when the layout is invalid. `memory` must outlive the queue's activity.
  bool activate(const GuestMemory& memory, uint64_t driver_features);
  // Back to the state after construction: not ready, size = max_size, addresses 0, no error.
  // Chains popped before the reset become stale (push ignores them).
  void reset();

  bool ready() const { return ready_; }
  bool failed() const { return fault_.error != QueueError::kNone; }
  QueueError error() const { return fault_.error; }
  const QueueFault& fault() const { return fault_; }
  // One line for the log, e.g. "virtqueue 3: buffer outside guest RAM: descriptor 7 addr
  // 0xbffffff8 len 16".
  std::string describe_fault() const;

  // ---- Device side.
  // The next available chain, or nullopt when the ring is empty, the queue is not ready, or the
  // chain is invalid (then the queue is in its error state: check failed()). When the ring is
  // empty and notifications are enabled, it re-arms them (avail_event with EVENT_IDX) and
  // re-checks the ring, so a device that pops until nullopt never misses a kick.
  [[nodiscard]] std::optional<Chain> pop();
  // True when an entry is pending (pop() returns a chain or finds it invalid); false when the
  // ring is empty or the queue is not usable. Re-arms notifications like pop().
  bool has_available();
  // Returns the chain to the driver with `written` bytes written into its writable part
  // (clamped to writable_length()). Consumes the chain. Returns false and does nothing to the
  // ring when the chain is stale (popped before a reset), already pushed, or the queue failed.
  bool push(Chain&& chain, uint32_t written);
  // After one or more pushes: whether the driver wants a used-buffer notification now
  // (avail.flags NO_INTERRUPT without EVENT_IDX, used_event with it). Call it once per batch;
  // it covers every push since the previous call.
  bool should_interrupt();

  // Available-buffer notification suppression, for devices that poll: disable while draining,
  // then enable, which returns true when buffers arrived meanwhile (process them, since the
  // driver may not have kicked). Notifications start enabled.
  void disable_notification();
  [[nodiscard]] bool enable_notification();
  bool notification_enabled() const { return notify_enabled_; }

  // Driver-visible counters, for tests and debugging.
  uint16_t last_avail_idx() const { return last_avail_; }
  uint16_t used_idx() const { return used_idx_; }
  // Chains popped and not yet pushed back. Never more than size(): pop() puts the queue in its
  // error state (kTooManyInFlight) rather than hand out one more.
  uint16_t in_flight() const { return static_cast<uint16_t>(last_avail_ - used_idx_); }

 private:
  struct Descriptor {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
  };
  static_assert(sizeof(Descriptor) == kDescSize);

  bool fail(QueueError error, uint32_t index = 0, uint64_t addr = 0, uint64_t len = 0);
  // Reloads avail.idx (re-arming notifications first when the ring looks empty). Returns true
  // when an entry is pending; false when empty or on error.
  bool refresh_avail();
  bool check_avail_jump(uint16_t avail_idx);
  bool parse_chain(uint16_t head, Chain& chain);
  bool add_segment(const Descriptor& d, uint32_t index, Chain& chain, uint64_t& total);
  void arm_avail_event();

  uint16_t load_avail_idx() const;

  uint16_t index_ = 0;
  uint16_t max_size_ = 0;
  uint16_t size_ = 0;
  uint64_t desc_addr_ = 0;
  uint64_t avail_addr_ = 0;
  uint64_t used_addr_ = 0;

  bool ready_ = false;
  bool event_idx_ = false;
  bool indirect_ = false;
  bool notify_enabled_ = true;
  // The avail_event value last published and followed by a full fence, so an empty pop() on an
  // already armed ring costs no fence.
  std::optional<uint16_t> armed_avail_event_;

  const GuestMemory* memory_ = nullptr;
  uint8_t* desc_ = nullptr;   // host view of the descriptor table
  uint8_t* avail_ = nullptr;  // host view of the available ring
  uint8_t* used_ = nullptr;   // host view of the used ring

  uint16_t last_avail_ = 0;          // next avail ring entry to consume
  uint16_t shadow_avail_ = 0;        // avail.idx as last loaded
  uint16_t used_idx_ = 0;            // next used ring entry to write (= used.idx published)
  uint16_t signalled_used_ = 0;      // used_idx_ at the last should_interrupt()
  uint32_t pushes_since_check_ = 0;  // pushes since the last should_interrupt()
  uint32_t generation_ = 0;          // bumped by reset() and activate()

  QueueFault fault_;
  QueueErrorHandler* error_handler_ = nullptr;
};

}  // namespace pier::virtio
