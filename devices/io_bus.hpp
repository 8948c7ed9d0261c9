#pragma once
// Dispatch of guest port I/O and MMIO exits to devices by address range. Ranges are registered at
// set-up (and may be moved later, e.g. PCI BARs); lookups happen on the vCPU threads.
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>
#include <vector>

namespace pier {

// A device on the bus. `offset` is relative to the start of the registered range. Data is little
// endian, 1-8 bytes. Implementations must tolerate any offset/size the guest produces.
class BusDevice {
 public:
  virtual ~BusDevice() = default;
  virtual void read(uint64_t offset, std::span<uint8_t> data) = 0;
  virtual void write(uint64_t offset, std::span<const uint8_t> data) = 0;
};

class IoBus {
 public:
  explicit IoBus(std::string name) : name_(std::move(name)) {}

  // Throws pier::Error when the range overlaps one already registered.
  void add(uint64_t base, uint64_t size, std::shared_ptr<BusDevice> device, std::string label);
  // Removes the range starting at `base` registered for `device`; returns whether one was found.
  bool remove(uint64_t base, const BusDevice* device);

  // Returns false when no device claims the address: reads are then all-ones (as on an empty
  // ISA/PCI bus), writes are dropped. Unclaimed accesses are counted.
  bool read(uint64_t addr, std::span<uint8_t> data);
  bool write(uint64_t addr, std::span<const uint8_t> data);

  uint64_t unclaimed_accesses() const;

 private:
  struct Range {
    uint64_t base;
    uint64_t size;
    std::shared_ptr<BusDevice> device;
    std::string label;
  };
  // Returns the device and the offset into it, or nullptr.
  std::shared_ptr<BusDevice> find(uint64_t addr, uint64_t len, uint64_t* offset) const;

  std::string name_;
  mutable std::shared_mutex mutex_;
  std::vector<Range> ranges_;  // sorted by base
  mutable std::mutex unclaimed_mutex_;
  uint64_t unclaimed_ = 0;
};

}  // namespace pier
