#include "devices/pci/msix.hpp"

#include <cstring>

namespace pier::pci {

Msix::Msix(unsigned vectors) : entries_(vectors), pending_(vectors, false) {}

void Msix::table_read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard lock(mutex_);
  for (size_t i = 0; i < data.size(); ++i) {
    const uint64_t at = offset + i;
    const size_t index = at / kEntrySize;
    if (index >= entries_.size()) {
      data[i] = 0xff;
      continue;
    }
    const auto* bytes = reinterpret_cast<const uint8_t*>(&entries_[index]);
    data[i] = bytes[at % kEntrySize];
  }
}

void Msix::table_write(uint64_t offset, std::span<const uint8_t> data) {
  std::vector<unsigned> changed, to_fire;
  {
    std::lock_guard lock(mutex_);
    for (size_t i = 0; i < data.size(); ++i) {
      const uint64_t at = offset + i;
      const size_t index = at / kEntrySize;
      if (index >= entries_.size()) continue;
      auto* bytes = reinterpret_cast<uint8_t*>(&entries_[index]);
      const size_t field = at % kEntrySize;
      if (field >= 12) {
        // Vector control: only the mask bit is defined; the rest reads as zero.
        if (field == 12) bytes[12] = data[i] & kVectorMasked;
        continue;
      }
      if (bytes[field] != data[i]) {
        bytes[field] = data[i];
        if (changed.empty() || changed.back() != index)
          changed.push_back(static_cast<unsigned>(index));
      }
    }
    deliver_pending_locked(to_fire);
  }
  for (unsigned v : changed) {
    if (on_message_changed) on_message_changed(v, message(v));
  }
  for (unsigned v : to_fire) {
    if (fire) fire(v);
  }
}

void Msix::pba_read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard lock(mutex_);
  for (size_t i = 0; i < data.size(); ++i) {
    uint8_t byte = 0;
    for (unsigned bit = 0; bit < 8; ++bit) {
      const uint64_t vector = (offset + i) * 8 + bit;
      if (vector < pending_.size() && pending_[vector]) byte |= static_cast<uint8_t>(1u << bit);
    }
    data[i] = byte;
  }
}

void Msix::set_message_control(uint16_t control) {
  std::vector<unsigned> to_fire;
  {
    std::lock_guard lock(mutex_);
    function_masked_ = control & kControlFunctionMask;
    enabled_.store(control & kControlEnable, std::memory_order_release);
    deliver_pending_locked(to_fire);
  }
  for (unsigned v : to_fire) {
    if (fire) fire(v);
  }
}

uint16_t Msix::message_control() const {
  std::lock_guard lock(mutex_);
  uint16_t control = static_cast<uint16_t>(entries_.size() - 1);  // table size is N-1 encoded
  if (enabled_.load()) control |= kControlEnable;
  if (function_masked_) control |= kControlFunctionMask;
  return control;
}

Msix::Message Msix::message(unsigned vector) const {
  std::lock_guard lock(mutex_);
  if (vector >= entries_.size()) return {};
  const Entry& e = entries_[vector];
  return {uint64_t(e.address_high) << 32 | e.address_low, e.data};
}

bool Msix::masked_locked(unsigned vector) const {
  return function_masked_ || (entries_[vector].control & kVectorMasked);
}

bool Msix::signal(unsigned vector) {
  {
    std::lock_guard lock(mutex_);
    if (vector >= entries_.size() || !enabled_.load()) return false;
    if (masked_locked(vector)) {
      pending_[vector] = true;
      return false;
    }
  }
  if (fire) fire(vector);
  return true;
}

bool Msix::pending(unsigned vector) const {
  std::lock_guard lock(mutex_);
  return vector < pending_.size() && pending_[vector];
}

void Msix::deliver_pending_locked(std::vector<unsigned>& out) {
  if (!enabled_.load()) return;
  for (unsigned v = 0; v < entries_.size(); ++v) {
    if (pending_[v] && !masked_locked(v)) {
      pending_[v] = false;
      out.push_back(v);
    }
  }
}

}  // namespace pier::pci
