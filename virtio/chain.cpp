#include "virtio/chain.hpp"

#include <algorithm>
#include <cstring>

namespace pier::virtio {
namespace {

// Appends to `out` the part of `segments` that starts `offset` bytes in and is at most
// `max_bytes` long.
IovecList slice_segments(std::span<const iovec> segments, size_t offset, size_t max_bytes) {
  IovecList out;
  for (const iovec& seg : segments) {
    if (max_bytes == 0) break;
    if (offset >= seg.iov_len) {
      offset -= seg.iov_len;
      continue;
    }
    const size_t len = std::min(seg.iov_len - offset, max_bytes);
    out.push_back({static_cast<uint8_t*>(seg.iov_base) + offset, len});
    max_bytes -= len;
    offset = 0;
  }
  return out;
}

}  // namespace

Chain& Chain::operator=(Chain&& other) noexcept {
  if (this != &other) {
    segments_ = std::move(other.segments_);
    num_readable_ = other.num_readable_;
    readable_length_ = other.readable_length_;
    writable_length_ = other.writable_length_;
    generation_ = other.generation_;
    head_ = other.head_;
    valid_ = other.valid_;
    other.release();
  }
  return *this;
}

size_t Chain::copy_from(size_t offset, std::span<uint8_t> out) const {
  size_t done = 0;
  for (const iovec& seg : readable()) {
    if (done == out.size()) break;
    if (offset >= seg.iov_len) {
      offset -= seg.iov_len;
      continue;
    }
    const size_t len = std::min(seg.iov_len - offset, out.size() - done);
    std::memcpy(out.data() + done, static_cast<const uint8_t*>(seg.iov_base) + offset, len);
    done += len;
    offset = 0;
  }
  return done;
}

size_t Chain::copy_to(size_t offset, std::span<const uint8_t> in) const {
  size_t done = 0;
  for (const iovec& seg : writable()) {
    if (done == in.size()) break;
    if (offset >= seg.iov_len) {
      offset -= seg.iov_len;
      continue;
    }
    const size_t len = std::min(seg.iov_len - offset, in.size() - done);
    std::memcpy(static_cast<uint8_t*>(seg.iov_base) + offset, in.data() + done, len);
    done += len;
    offset = 0;
  }
  return done;
}

IovecList Chain::readable_iovecs(size_t offset, size_t max_bytes) const {
  return slice_segments(readable(), offset, max_bytes);
}

IovecList Chain::writable_iovecs(size_t offset, size_t max_bytes) const {
  return slice_segments(writable(), offset, max_bytes);
}

}  // namespace pier::virtio
