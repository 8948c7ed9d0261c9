#pragma once
// A vector of trivially copyable values that keeps its first N elements inline, so popping a
// short descriptor chain (the common case: 1 to a few descriptors) allocates nothing. Longer
// chains spill to the heap once. Only what the virtqueue code needs: push_back, clear, span.
#include <algorithm>
#include <array>
#include <cstddef>
#include <span>
#include <type_traits>
#include <vector>

namespace pier::virtio {

template <class T, size_t N>
class SmallVector {
  static_assert(std::is_trivially_copyable_v<T>);

 public:
  SmallVector() = default;
  // Copies and moves touch only the elements in use, not the whole inline array.
  SmallVector(const SmallVector& other) { *this = other; }
  SmallVector(SmallVector&& other) noexcept { *this = std::move(other); }
  SmallVector& operator=(const SmallVector& other) {
    if (this != &other) {
      heap_ = other.heap_;
      size_ = other.size_;
      if (heap_.empty()) std::copy_n(other.inline_.data(), size_, inline_.data());
    }
    return *this;
  }
  SmallVector& operator=(SmallVector&& other) noexcept {
    if (this != &other) {
      heap_ = std::move(other.heap_);
      size_ = other.size_;
      if (heap_.empty()) std::copy_n(other.inline_.data(), size_, inline_.data());
      other.heap_.clear();
      other.size_ = 0;
    }
    return *this;
  }

  void push_back(const T& value) {
    if (!heap_.empty() || size_ == N) {
      // Spill: from here on every element lives in heap_.
      if (heap_.empty()) heap_.assign(inline_.begin(), inline_.begin() + size_);
      heap_.push_back(value);
    } else {
      inline_[size_] = value;
    }
    ++size_;
  }
  void clear() {
    heap_.clear();
    size_ = 0;
  }

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  T* data() { return heap_.empty() ? inline_.data() : heap_.data(); }
  const T* data() const { return heap_.empty() ? inline_.data() : heap_.data(); }
  T& operator[](size_t i) { return data()[i]; }
  const T& operator[](size_t i) const { return data()[i]; }
  T* begin() { return data(); }
  T* end() { return data() + size_; }
  const T* begin() const { return data(); }
  const T* end() const { return data() + size_; }
  std::span<T> span() { return {data(), size_}; }
  std::span<const T> span() const { return {data(), size_}; }

 private:
  std::array<T, N> inline_;
  std::vector<T> heap_;
  size_t size_ = 0;
};

}  // namespace pier::virtio
