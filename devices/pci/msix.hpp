#pragma once
// MSI-X (PCI 3.0 §6.8.2): a table of {address, data, vector control} entries and a pending-bit
// array, both in a memory BAR, plus the enable and function-mask bits of the capability's
// message control. Masked vectors collect pending bits, delivered when unmasked. Interrupt
// delivery itself (a KVM MSI route + irqfd per vector) belongs to the transport: this class tells
// it when a vector's message changed and whether a vector may fire.
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

namespace pier::pci {

class Msix {
 public:
  static constexpr size_t kEntrySize = 16;
  static constexpr uint16_t kControlEnable = 1u << 15;
  static constexpr uint16_t kControlFunctionMask = 1u << 14;
  static constexpr uint32_t kVectorMasked = 1u;

  struct Message {
    uint64_t address = 0;
    uint32_t data = 0;
  };

  explicit Msix(unsigned vectors);

  unsigned vectors() const { return static_cast<unsigned>(entries_.size()); }
  size_t table_size() const { return entries_.size() * kEntrySize; }
  size_t pba_size() const { return ((entries_.size() + 63) / 64) * 8; }

  // Accesses to the table and PBA regions of the BAR (offsets within each region).
  void table_read(uint64_t offset, std::span<uint8_t> data);
  void table_write(uint64_t offset, std::span<const uint8_t> data);
  void pba_read(uint64_t offset, std::span<uint8_t> data);

  // Message control from the capability (only enable and function mask are writable).
  void set_message_control(uint16_t control);
  uint16_t message_control() const;
  bool enabled() const { return enabled_.load(std::memory_order_acquire); }

  Message message(unsigned vector) const;
  // Fires `vector` through `fire` when it may be delivered now; otherwise records it pending.
  // Returns whether it fired. Thread-safe (called from the I/O and vCPU threads).
  bool signal(unsigned vector);
  bool pending(unsigned vector) const;

  // The transport's hooks: a vector's message changed (reprogram its route), and deliver a vector.
  std::function<void(unsigned vector, const Message& message)> on_message_changed;
  std::function<void(unsigned vector)> fire;

 private:
  struct Entry {
    uint32_t address_low = 0, address_high = 0, data = 0, control = kVectorMasked;
  };
  bool masked_locked(unsigned vector) const;
  void deliver_pending_locked(std::vector<unsigned>& out);

  mutable std::mutex mutex_;
  std::vector<Entry> entries_;
  std::vector<bool> pending_;
  std::atomic<bool> enabled_{false};
  bool function_masked_ = false;
};

}  // namespace pier::pci
