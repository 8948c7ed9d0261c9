#pragma once
// A FIFO of move-only values in one growable circular array: the console device keeps popped
// chains in these (held tx chains with their offsets, unfilled rx buffers). Unlike std::deque it
// allocates only when it grows past its largest size so far, so the steady-state hot path
// allocates nothing. Its size is bounded by the queue the chains came from: Queue::pop() hands
// out at most the queue's size in chains not yet pushed back (kTooManyInFlight).
#include <cstddef>
#include <utility>
#include <vector>

namespace pier::virtio::console {

template <class T>
class Fifo {
 public:
  bool empty() const { return size_ == 0; }
  size_t size() const { return size_; }

  T& front() { return items_[head_]; }
  const T& front() const { return items_[head_]; }
  // The i-th element from the front.
  T& at(size_t i) { return items_[(head_ + i) & (items_.size() - 1)]; }
  const T& at(size_t i) const { return items_[(head_ + i) & (items_.size() - 1)]; }

  void push_back(T&& value) { emplace_back() = std::move(value); }
  // The new last slot, to be assigned in place (one move instead of several for big values).
  T& emplace_back() {
    if (size_ == items_.size()) grow();
    ++size_;
    return items_[(head_ + size_ - 1) & (items_.size() - 1)];
  }
  T pop_front() {
    T value = std::move(items_[head_]);
    items_[head_] = T{};
    discard_front();
    return value;
  }
  // Removes the front element after the caller moved its value out of front() (it is left as
  // it is: moved-from, overwritten by a later push).
  void discard_front() {
    head_ = (head_ + 1) & (items_.size() - 1);
    --size_;
  }
  void clear() {
    while (size_ > 0) pop_front();
    head_ = 0;
  }

 private:
  void grow() {
    std::vector<T> bigger(items_.empty() ? 8 : items_.size() * 2);
    for (size_t i = 0; i < size_; ++i) bigger[i] = std::move(at(i));
    items_ = std::move(bigger);
    head_ = 0;
  }

  std::vector<T> items_;  // capacity is a power of two (or 0)
  size_t head_ = 0;
  size_t size_ = 0;
};

}  // namespace pier::virtio::console
