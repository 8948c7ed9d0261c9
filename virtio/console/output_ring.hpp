#pragma once
// The bounded byte ring that holds console output the host side did not take (no client on the
// socket, a full pty, a slow terminal). Console-port tx is completed at once because Linux's hvc
// put_chars() busy-waits for it, so the bytes have to go somewhere: here, replayed to the next
// client. When the ring is full the OLDEST bytes are dropped (the newest output is what a user
// attaching to a console wants to see) and counted; nothing is dropped silently.
//
// Storage is allocated on the first push, so a port that never buffers costs nothing.
// Not thread-safe: the console device guards it with its lock.
#include <sys/uio.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

namespace pier::virtio::console {

class OutputRing {
 public:
  explicit OutputRing(size_t capacity) : capacity_(capacity) {}

  size_t capacity() const { return capacity_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  // Bytes dropped (oldest first) since construction, because the ring was full.
  uint64_t dropped() const { return dropped_; }

  // Appends `data`; when it does not fit, the oldest bytes (or, for data larger than the whole
  // ring, the head of `data` itself) are dropped and counted. Returns the bytes dropped now.
  size_t push(std::span<const uint8_t> data);
  // The buffered bytes, oldest first, as at most two iovecs (the ring wraps once).
  size_t peek(std::array<iovec, 2>& iov) const;
  // Forgets the oldest `n` bytes (after they were written out).
  void consume(size_t n);
  // Counts `n` bytes as dropped without storing them: for input so large that only its tail
  // could stay (the caller pushes just that tail, which then drops everything older).
  void count_dropped(size_t n) { dropped_ += n; }
  // Drops everything buffered without counting it (the port went away: its bytes are counted by
  // the caller, which knows why).
  void clear() { head_ = size_ = 0; }

 private:
  size_t capacity_;
  std::unique_ptr<uint8_t[]> buf_;
  size_t head_ = 0;  // index of the oldest byte
  size_t size_ = 0;
  uint64_t dropped_ = 0;
};

}  // namespace pier::virtio::console
