#include "virtio/console/output_ring.hpp"

#include <algorithm>
#include <cstring>

namespace pier::virtio::console {

size_t OutputRing::push(std::span<const uint8_t> data) {
  size_t dropped = 0;
  if (capacity_ == 0) {
    dropped_ += data.size();
    return data.size();
  }
  if (data.size() >= capacity_) {
    // Only the newest `capacity_` bytes can stay: everything buffered and the head of `data`
    // go.
    dropped = size_ + (data.size() - capacity_);
    data = data.subspan(data.size() - capacity_);
    head_ = size_ = 0;
  } else if (size_ + data.size() > capacity_) {
    const size_t excess = size_ + data.size() - capacity_;
    consume(excess);
    dropped = excess;
  }
  if (!buf_) buf_ = std::make_unique<uint8_t[]>(capacity_);
  size_t tail = (head_ + size_) % capacity_;
  const size_t first = std::min(data.size(), capacity_ - tail);
  std::memcpy(buf_.get() + tail, data.data(), first);
  std::memcpy(buf_.get(), data.data() + first, data.size() - first);
  size_ += data.size();
  dropped_ += dropped;
  return dropped;
}

size_t OutputRing::peek(std::array<iovec, 2>& iov) const {
  if (size_ == 0) return 0;
  const size_t first = std::min(size_, capacity_ - head_);
  iov[0] = {buf_.get() + head_, first};
  if (first == size_) return 1;
  iov[1] = {buf_.get(), size_ - first};
  return 2;
}

void OutputRing::consume(size_t n) {
  n = std::min(n, size_);
  size_ -= n;
  head_ = size_ == 0 ? 0 : (head_ + n) % capacity_;
}

}  // namespace pier::virtio::console
