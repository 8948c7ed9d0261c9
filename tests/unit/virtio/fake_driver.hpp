#pragma once
// The driver side of split virtqueues, for tests of the queue and of virtio devices without a
// guest or KVM (modelled on Fuchsia's VirtioQueueFake + DescriptorChainBuilder and Firecracker's
// VirtQueue test utilities). It behaves like Linux's virtio_ring.c: a free list of descriptors,
// chains written before a release store of avail.idx, kicks decided with vring_need_event() on
// avail_event (or used.flags), used entries read after an acquire load of used.idx and
// used_event advanced as they are consumed. It also gives raw access to every ring field for
// the hostile-guest tests.
//
// Header-only and free of GoogleTest so benchmarks and fuzzers can use it too. Test misuse and
// device misbehaviour (a used id that is not outstanding) throw std::runtime_error.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "virtio/device.hpp"
#include "virtio/interrupt.hpp"
#include "virtio/queue.hpp"
#include "virtio/virtio.hpp"
#include "vmm/guest_memory.hpp"

namespace pier::virtio::testing {

// Guest RAM for tests (GuestMemory::create needs no KVM) plus a bump allocator for rings,
// tables and buffers.
class FakeGuest {
 public:
  explicit FakeGuest(uint64_t ram_bytes = 64ull << 20, uint64_t heap_start = 0x10000)
      : memory_(GuestMemory::create(ram_bytes)), next_(heap_start) {}

  const GuestMemory& memory() const { return memory_; }

  // `bytes` of zeroed guest RAM at an address aligned to `align`.
  uint64_t alloc(uint64_t bytes, uint64_t align = 16) {
    const uint64_t gpa = (next_ + align - 1) & ~(align - 1);
    auto s = memory_.slice(gpa, bytes);
    if (!s) throw std::runtime_error("FakeGuest: out of guest RAM");
    std::memset(s->data(), 0, s->size());
    next_ = gpa + bytes;
    return gpa;
  }

  void write(uint64_t gpa, std::span<const uint8_t> bytes) const {
    if (!memory_.write(gpa, bytes)) throw std::runtime_error("FakeGuest: write outside RAM");
  }
  std::vector<uint8_t> read(uint64_t gpa, size_t len) const {
    std::vector<uint8_t> out(len);
    if (!memory_.read(gpa, out)) throw std::runtime_error("FakeGuest: read outside RAM");
    return out;
  }
  template <class T>
  void write_obj(uint64_t gpa, const T& value) const {
    if (!memory_.write_obj(gpa, value)) throw std::runtime_error("FakeGuest: write outside RAM");
  }
  template <class T>
  T read_obj(uint64_t gpa) const {
    auto v = memory_.read_obj<T>(gpa);
    if (!v) throw std::runtime_error("FakeGuest: read outside RAM");
    return *v;
  }
  // A naturally aligned guest field accessed atomically, like the device does.
  template <class T>
  std::atomic_ref<T> atomic(uint64_t gpa) const {
    auto s = memory_.slice(gpa, sizeof(T));
    if (!s || gpa % alignof(T) != 0) throw std::runtime_error("FakeGuest: bad atomic field");
    return std::atomic_ref<T>(*reinterpret_cast<T*>(s->data()));
  }

 private:
  GuestMemory memory_;
  uint64_t next_;
};

struct RawDescriptor {
  uint64_t addr = 0;
  uint32_t len = 0;
  uint16_t flags = 0;
  uint16_t next = 0;
};
static_assert(sizeof(RawDescriptor) == 16);

struct QueueLayout {
  uint64_t desc = 0;
  uint64_t avail = 0;
  uint64_t used = 0;
};

// A used entry as the driver sees it, with the bytes the device wrote (the first `len` bytes of
// the chain's writable buffers).
struct UsedBuffer {
  uint16_t id = 0;
  uint32_t len = 0;
  std::vector<uint8_t> written;
  std::string text() const { return std::string(written.begin(), written.end()); }
};

class FakeQueueDriver;

// Builds one chain: readable buffers first, then writable ones (or in any order with raw(), for
// hostile tests), as direct descriptors or one indirect table.
class DescriptorChainBuilder {
 public:
  explicit DescriptorChainBuilder(FakeQueueDriver& driver) : driver_(driver) {}

  // A device-readable buffer holding `data` (copied into fresh guest RAM).
  DescriptorChainBuilder& readable(std::span<const uint8_t> data);
  DescriptorChainBuilder& readable(std::string_view text) {
    return readable(std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
  }
  // A device-writable buffer of `len` bytes (fresh guest RAM, zeroed); its address in *gpa.
  DescriptorChainBuilder& writable(uint32_t len, uint64_t* gpa = nullptr);
  // A descriptor exactly as given (NEXT and next are still managed by the builder).
  DescriptorChainBuilder& raw(uint64_t addr, uint32_t len, uint16_t flags) {
    elems_.push_back({addr, len, static_cast<uint16_t>(flags & ~kDescFlagNext), 0});
    return *this;
  }
  // Put the descriptors in one indirect table referenced by a single ring descriptor.
  DescriptorChainBuilder& indirect(bool on = true) {
    indirect_ = on;
    return *this;
  }

  // Writes the descriptors and the avail ring entry and publishes avail.idx. Returns the head,
  // or nullopt when the driver lacks free descriptors (like virtqueue_add's -ENOSPC).
  std::optional<uint16_t> build();
  // Same, without publishing avail.idx (FakeQueueDriver::publish() does, for batches).
  std::optional<uint16_t> add();

 private:
  FakeQueueDriver& driver_;
  std::vector<RawDescriptor> elems_;
  bool indirect_ = false;
};

class FakeQueueDriver {
 public:
  // Lays out a queue of `size` entries (rings freshly allocated in `guest`, or at `layout`),
  // zeroes them and programs `queue`'s size and addresses. Does not activate it.
  FakeQueueDriver(FakeGuest& guest, Queue& queue, uint16_t size,
                  std::optional<QueueLayout> layout = std::nullopt)
      : guest_(guest), queue_(queue), size_(size) {
    if (layout) {
      layout_ = *layout;
    } else {
      layout_.desc = guest.alloc(desc_table_bytes(size), kDescAlign);
      layout_.avail = guest.alloc(avail_ring_bytes(size), kAvailAlign);
      layout_.used = guest.alloc(used_ring_bytes(size), 4096);
    }
    reinit();
  }

  // Driver state back to a freshly initialized queue: rings zeroed, every descriptor free,
  // `queue` programmed again (after a device reset).
  void reinit() {
    auto zero = [&](uint64_t gpa, uint64_t len) {
      auto s = guest_.memory().slice(gpa, len);
      if (s) std::memset(s->data(), 0, s->size());
    };
    zero(layout_.desc, desc_table_bytes(size_));
    zero(layout_.avail, avail_ring_bytes(size_));
    zero(layout_.used, used_ring_bytes(size_));
    free_.clear();
    for (uint32_t i = 0; i < size_; ++i) free_.push_back(static_cast<uint16_t>(i));
    outstanding_.clear();
    avail_idx_ = kicked_avail_ = last_used_ = 0;
    interrupts_enabled_ = true;
    queue_.set_size(size_);
    queue_.set_desc_addr(layout_.desc);
    queue_.set_avail_addr(layout_.avail);
    queue_.set_used_addr(layout_.used);
  }

  FakeGuest& guest() { return guest_; }
  Queue& queue() { return queue_; }
  uint16_t size() const { return size_; }
  const QueueLayout& layout() const { return layout_; }
  size_t num_free() const { return free_.size(); }
  size_t num_outstanding() const { return outstanding_.size(); }

  DescriptorChainBuilder chain() { return DescriptorChainBuilder(*this); }

  // ---- Available ring, driver view.
  uint16_t avail_idx() const { return avail_idx_; }
  // Release-store avail.idx (Linux: virtio_wmb, then the idx write).
  void publish() { field16(layout_.avail + 2).store(avail_idx_, std::memory_order_release); }
  // virtqueue_kick_prepare_split(): whether entries published since the last call need a
  // notification, per avail_event (EVENT_IDX) or used.flags.
  bool kick_needed() {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const uint16_t old = kicked_avail_;
    kicked_avail_ = avail_idx_;
    if (event_idx()) return need_event(avail_event(), avail_idx_, old);
    return (used_flags() & kUsedFlagNoNotify) == 0;
  }

  // ---- Used ring, driver view.
  // The next used entry, or nullopt when the device has not returned any. Frees the chain's
  // descriptors and, with interrupts enabled and EVENT_IDX, moves used_event past it like
  // virtqueue_get_buf().
  std::optional<UsedBuffer> get_used() {
    if (last_used_ == used_idx()) return std::nullopt;
    const uint64_t elem = layout_.used + 4 + 8ull * (last_used_ & (size_ - 1));
    UsedBuffer used;
    used.id = static_cast<uint16_t>(guest_.read_obj<uint32_t>(elem));
    used.len = guest_.read_obj<uint32_t>(elem + 4);
    ++last_used_;
    auto it = outstanding_.find(used.id);
    if (guest_.read_obj<uint32_t>(elem) >= size_ || it == outstanding_.end()) {
      throw std::runtime_error("FakeQueueDriver: device returned id " + std::to_string(used.id) +
                               " that is not outstanding");
    }
    uint32_t left = used.len;
    for (const auto& [gpa, len] : it->second.writable) {
      const uint32_t n = std::min(left, len);
      auto bytes = guest_.read(gpa, n);
      used.written.insert(used.written.end(), bytes.begin(), bytes.end());
      left -= n;
    }
    for (uint16_t d : it->second.descriptors) free_.push_back(d);
    outstanding_.erase(it);
    if (event_idx() && interrupts_enabled_) set_used_event(last_used_);
    return used;
  }
  std::vector<UsedBuffer> get_all_used() {
    std::vector<UsedBuffer> all;
    while (auto u = get_used()) all.push_back(std::move(*u));
    return all;
  }
  uint16_t last_used() const { return last_used_; }

  // Used-buffer notification suppression, driver side (virtqueue_disable_cb / enable_cb).
  void disable_interrupts() {
    interrupts_enabled_ = false;
    if (!event_idx()) set_avail_flags(kAvailFlagNoInterrupt);
  }
  // Returns true when used entries arrived meanwhile (virtqueue_enable_cb's "more used").
  bool enable_interrupts() {
    interrupts_enabled_ = true;
    if (event_idx()) {
      set_used_event(last_used_);
    } else {
      set_avail_flags(0);
    }
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return used_idx() != last_used_;
  }

  // ---- Raw ring access, for hostile tests and assertions.
  uint16_t used_idx() const { return field16(layout_.used + 2).load(std::memory_order_acquire); }
  uint16_t used_flags() const { return field16(layout_.used).load(std::memory_order_relaxed); }
  uint16_t avail_event() const {
    return field16(layout_.used + 4 + 8ull * size_).load(std::memory_order_relaxed);
  }
  uint16_t used_event() const {
    return field16(layout_.avail + 4 + 2ull * size_).load(std::memory_order_relaxed);
  }
  void set_used_event(uint16_t v) {
    field16(layout_.avail + 4 + 2ull * size_).store(v, std::memory_order_relaxed);
  }
  void set_avail_flags(uint16_t v) { field16(layout_.avail).store(v, std::memory_order_relaxed); }
  void set_avail_entry(uint16_t slot, uint16_t head) {
    field16(layout_.avail + 4 + 2ull * (slot & (size_ - 1))).store(head, std::memory_order_relaxed);
  }
  // Sets the driver's avail index and publishes it, whatever the ring holds.
  void set_avail_idx(uint16_t idx) {
    avail_idx_ = idx;
    publish();
  }
  void write_descriptor(uint16_t index, const RawDescriptor& d) {
    guest_.write_obj(layout_.desc + 16ull * index, d);
  }
  RawDescriptor read_descriptor(uint16_t index) const {
    return guest_.read_obj<RawDescriptor>(layout_.desc + 16ull * index);
  }
  // Places `head` in the next avail slot and publishes it, without any bookkeeping (for chains
  // written with write_descriptor()).
  void expose_raw(uint16_t head) {
    set_avail_entry(avail_idx_, head);
    ++avail_idx_;
    publish();
  }

  bool event_idx() const { return event_idx_; }
  // The driver's notion of the negotiated features (the transport passes the same to
  // Queue::activate()).
  void set_features(uint64_t features) { event_idx_ = (features & kFeatureRingEventIdx) != 0; }

 private:
  friend class DescriptorChainBuilder;
  struct Outstanding {
    std::vector<uint16_t> descriptors;
    std::vector<std::pair<uint64_t, uint32_t>> writable;
  };

  std::atomic_ref<uint16_t> field16(uint64_t gpa) const { return guest_.atomic<uint16_t>(gpa); }

  std::optional<uint16_t> add_chain(const std::vector<RawDescriptor>& elems, bool indirect,
                                    bool publish_now) {
    if (elems.empty()) throw std::runtime_error("DescriptorChainBuilder: empty chain");
    const size_t needed = indirect ? 1 : elems.size();
    if (free_.size() < needed) return std::nullopt;
    Outstanding out;
    for (const auto& e : elems) {
      if (e.flags & kDescFlagWrite) out.writable.emplace_back(e.addr, e.len);
    }
    auto take = [&] {
      const uint16_t d = free_.front();
      free_.pop_front();
      out.descriptors.push_back(d);
      return d;
    };
    uint16_t head;
    if (indirect) {
      const uint64_t table = guest_.alloc(16ull * elems.size(), 16);
      for (size_t i = 0; i < elems.size(); ++i) {
        RawDescriptor d = elems[i];
        if (i + 1 < elems.size()) {
          d.flags |= kDescFlagNext;
          d.next = static_cast<uint16_t>(i + 1);
        }
        guest_.write_obj(table + 16 * i, d);
      }
      head = take();
      write_descriptor(head,
                       {table, static_cast<uint32_t>(16 * elems.size()), kDescFlagIndirect, 0});
    } else {
      std::vector<uint16_t> ids;
      for (size_t i = 0; i < elems.size(); ++i) ids.push_back(take());
      for (size_t i = 0; i < elems.size(); ++i) {
        RawDescriptor d = elems[i];
        if (i + 1 < elems.size()) {
          d.flags |= kDescFlagNext;
          d.next = ids[i + 1];
        }
        write_descriptor(ids[i], d);
      }
      head = ids[0];
    }
    outstanding_[head] = std::move(out);
    set_avail_entry(avail_idx_, head);
    ++avail_idx_;
    if (publish_now) publish();
    return head;
  }

  FakeGuest& guest_;
  Queue& queue_;
  uint16_t size_;
  QueueLayout layout_;
  bool event_idx_ = false;
  std::deque<uint16_t> free_;
  std::map<uint16_t, Outstanding> outstanding_;
  uint16_t avail_idx_ = 0;
  uint16_t kicked_avail_ = 0;
  uint16_t last_used_ = 0;
  bool interrupts_enabled_ = true;
};

inline DescriptorChainBuilder& DescriptorChainBuilder::readable(std::span<const uint8_t> data) {
  const uint64_t gpa = driver_.guest().alloc(std::max<size_t>(data.size(), 1), 8);
  driver_.guest().write(gpa, data);
  elems_.push_back({gpa, static_cast<uint32_t>(data.size()), 0, 0});
  return *this;
}

inline DescriptorChainBuilder& DescriptorChainBuilder::writable(uint32_t len, uint64_t* gpa) {
  const uint64_t at = driver_.guest().alloc(std::max<uint32_t>(len, 1), 8);
  if (gpa != nullptr) *gpa = at;
  elems_.push_back({at, len, kDescFlagWrite, 0});
  return *this;
}

inline std::optional<uint16_t> DescriptorChainBuilder::build() {
  return driver_.add_chain(elems_, indirect_, true);
}
inline std::optional<uint16_t> DescriptorChainBuilder::add() {
  return driver_.add_chain(elems_, indirect_, false);
}

// Plays the transport and the driver's initialization for a Device: feature negotiation, one
// FakeQueueDriver per queue, DRIVER_OK, notifications, interrupts counted per queue, NEEDS_RESET
// on a queue error, device reset. Device tests drive the device through it exactly as the
// virtio-pci transport will, minus the registers.
class FakeTransport : public Interrupt, public QueueErrorHandler {
 public:
  FakeTransport(FakeGuest& guest, Device& device) : guest_(guest), device_(device) {
    queues_.reserve(device.num_queues());
    for (size_t i = 0; i < device.num_queues(); ++i) {
      queues_.emplace_back(static_cast<uint16_t>(i), device.queue_max_size(i));
      queues_.back().set_error_handler(this);
    }
    queue_interrupts_.assign(device.num_queues(), 0);
    kicks_.assign(device.num_queues(), 0);
  }

  // ACKNOWLEDGE | DRIVER, then FEATURES_OK with `wanted` & device_features() (VERSION_1
  // always). Returns false when the device refuses them.
  bool negotiate(uint64_t wanted) {
    status_ = kStatusAcknowledge | kStatusDriver;
    features_ = (wanted & device_.device_features()) | kFeatureVersion1;
    if ((device_.device_features() & kFeatureVersion1) == 0) return false;
    if (!device_.ack_features(features_)) return false;
    status_ |= kStatusFeaturesOk;
    return true;
  }

  // Lays out every queue (`size` entries, or the device's maximum when 0), activates the queues
  // and then the device (DRIVER_OK). Re-uses the ring memory after a reset.
  void start(uint16_t size = 0) {
    for (size_t i = 0; i < queues_.size(); ++i) {
      const uint16_t n = size != 0 ? std::min(size, queues_[i].max_size()) : queues_[i].max_size();
      if (drivers_.size() <= i) {
        drivers_.push_back(std::make_unique<FakeQueueDriver>(guest_, queues_[i], n));
      } else {
        drivers_[i]->reinit();
      }
      drivers_[i]->set_features(features_);
      queues_[i].activate(guest_.memory(), features_);
    }
    status_ |= kStatusDriverOk;
    device_.activate(queues_, *this);
  }

  // The driver writes status 0: the device stops, the queues forget their rings.
  void reset() {
    device_.reset();
    for (auto& q : queues_) q.reset();
    status_ = 0;
  }

  FakeQueueDriver& driver(size_t q) { return *drivers_.at(q); }
  Queue& queue(size_t q) { return queues_.at(q); }
  uint64_t features() const { return features_; }
  uint8_t status() const { return status_; }
  bool needs_reset() const { return (status_ & kStatusNeedsReset) != 0; }
  const std::vector<std::string>& errors() const { return errors_; }

  // The ioeventfd path: the device hears about queue `q`.
  void notify(uint16_t q) { device_.queue_notify(q); }
  // Linux's virtqueue_kick(): notify only when the device asked for it. Returns whether it did.
  bool kick(uint16_t q) {
    if (!driver(q).kick_needed()) return false;
    ++kicks_.at(q);
    notify(q);
    return true;
  }
  // The notifications kick() sent for queue `q` (each one an exit in a real guest).
  size_t kicks(uint16_t q) const { return kicks_.at(q); }

  size_t queue_interrupts(uint16_t q) const { return queue_interrupts_.at(q); }
  size_t config_interrupts() const { return config_interrupts_; }

  void signal_queue(uint16_t queue_index) override { ++queue_interrupts_.at(queue_index); }
  void signal_config() override { ++config_interrupts_; }
  // The device asked to be notified again (its per-run budget ran out): kept until the test
  // delivers it with run_notify_again(), like the eventfd the I/O loop reads later.
  void notify_again(uint16_t queue_index) override { notify_again_.push_back(queue_index); }
  // Delivers the pending notify_again() requests (not the ones they cause); returns how many.
  size_t run_notify_again() {
    std::vector<uint16_t> pending;
    pending.swap(notify_again_);
    for (uint16_t q : pending) notify(q);
    return pending.size();
  }
  void on_queue_error(const Queue& queue) override {
    errors_.push_back(queue.describe_fault());
    // "If the device has experienced an error from which it can't recover ... it SHOULD set
    // DEVICE_NEEDS_RESET ... and MUST send a device configuration change notification."
    status_ |= kStatusNeedsReset;
    signal_config();
  }

 private:
  FakeGuest& guest_;
  Device& device_;
  std::vector<Queue> queues_;
  std::vector<std::unique_ptr<FakeQueueDriver>> drivers_;
  std::vector<size_t> queue_interrupts_;
  std::vector<size_t> kicks_;
  size_t config_interrupts_ = 0;
  std::vector<uint16_t> notify_again_;
  uint64_t features_ = 0;
  uint8_t status_ = 0;
  std::vector<std::string> errors_;
};

}  // namespace pier::virtio::testing
