#pragma once
// A descriptor chain popped from a split virtqueue, as a scatter-gather list of host spans.
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

#include "virtio/small_vector.hpp"

namespace pier::virtio {

// Enough for every chain Linux's console, rng and net drivers build without a heap allocation.
inline constexpr size_t kInlineSegments = 16;
using IovecList = SmallVector<iovec, kInlineSegments>;

// One buffer the driver made available: the device-readable segments followed by the
// device-writable ones, each already checked to lie inside one guest RAM region and mapped to
// its host address. A device reads and writes the guest's buffers through these spans directly
// (readv/writev between a socket and the guest, no bounce buffer).
//
// Contract:
//  - A Chain is move-only and is returned exactly once, by handing it to Queue::push(), which
//    consumes it (the moved-from Chain is !valid()). A chain that is destroyed without a push
//    leaves its descriptors with the device until the queue is reset; that is what a device
//    does on reset, and never otherwise.
//  - A device may keep a chain for as long as it likes (e.g. a console tx chain that is written
//    to the backend in pieces, tracked with an offset) and pop others meanwhile.
//  - The spans stay valid while the VM's GuestMemory lives (guest RAM is mapped once for the
//    life of the VM). After a queue reset a held chain is stale: Queue::push() drops it without
//    touching the used ring.
//  - The driver may scribble over the buffers while the device holds them (a hostile guest):
//    the bytes a device copies out are a snapshot; parse headers from a copy, never twice from
//    guest memory.
//  - The device must not write the readable segments ("A device MUST NOT write to a
//    device-readable buffer"); iovec cannot express const, so readable() is const by
//    convention.
class Chain {
 public:
  Chain() = default;
  Chain(Chain&& other) noexcept { *this = std::move(other); }
  Chain& operator=(Chain&& other) noexcept;
  Chain(const Chain&) = delete;
  Chain& operator=(const Chain&) = delete;
  ~Chain() = default;

  // False for a default-constructed chain and after it was moved from or pushed.
  bool valid() const { return valid_; }
  explicit operator bool() const { return valid_; }

  // The head descriptor index (what goes into the used ring's id).
  uint16_t head() const { return head_; }
  // Buffer descriptors in the chain, not counting the one pointing at an indirect table.
  size_t descriptor_count() const { return segments_.size(); }

  std::span<const iovec> readable() const { return segments_.span().first(num_readable_); }
  std::span<const iovec> writable() const { return segments_.span().subspan(num_readable_); }
  // Sums of the segment lengths; the queue rejects chains whose total exceeds UINT32_MAX.
  size_t readable_length() const { return readable_length_; }
  size_t writable_length() const { return writable_length_; }

  // Copies readable bytes starting `offset` bytes into the readable part into `out`. Returns the
  // number copied: min(out.size(), readable_length() - offset), 0 when offset is past the end.
  size_t copy_from(size_t offset, std::span<uint8_t> out) const;
  // Copies `in` into the writable part starting `offset` bytes into it. Returns the number
  // copied, which is short when the writable part ends.
  size_t copy_to(size_t offset, std::span<const uint8_t> in) const;

  // The readable / writable segments from byte `offset` on, at most `max_bytes` long, for
  // writev / readv (the first segment is trimmed to start at the offset).
  IovecList readable_iovecs(size_t offset = 0, size_t max_bytes = SIZE_MAX) const;
  IovecList writable_iovecs(size_t offset = 0, size_t max_bytes = SIZE_MAX) const;

 private:
  friend class Queue;
  // Back to the empty, invalid state of a default-constructed chain.
  void release() {
    segments_.clear();
    num_readable_ = readable_length_ = writable_length_ = 0;
    valid_ = false;
  }

  IovecList segments_;  // readable segments, then writable ones
  size_t num_readable_ = 0;
  size_t readable_length_ = 0;
  size_t writable_length_ = 0;
  uint32_t generation_ = 0;  // Queue::generation_ when popped; stale after a reset
  uint16_t head_ = 0;
  bool valid_ = false;
};

}  // namespace pier::virtio
