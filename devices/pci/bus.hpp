#pragma once
// PCI bus 0: the type-1 configuration mechanism (CONFIG_ADDRESS 0xCF8, CONFIG_DATA 0xCFC-0xCFF),
// a host bridge at 00:00.0, up to 31 more single-function devices, and the allocator for BARs in
// the 32-bit MMIO window. Absent functions read all-ones, as on real hardware.
#include <array>
#include <memory>
#include <mutex>
#include <string>

#include "devices/io_bus.hpp"
#include "devices/pci/config_space.hpp"

namespace pier::pci {

class Function {
 public:
  virtual ~Function() = default;
  virtual std::string name() const = 0;
  virtual ConfigSpace& config() = 0;
  // Config space accesses from the guest; the default applies ConfigSpace's semantics.
  virtual void config_read(uint16_t offset, std::span<uint8_t> data) {
    config().read(offset, data);
  }
  virtual void config_write(uint16_t offset, std::span<const uint8_t> data) {
    config().write(offset, data);
  }
};

class Bus {
 public:
  static constexpr unsigned kSlots = 32;

  // `mmio_start`/`mmio_end`: the window BARs are allocated from.
  Bus(uint64_t mmio_start, uint64_t mmio_end);

  // Puts `function` in the lowest free slot; returns the slot (device number).
  unsigned add(std::shared_ptr<Function> function);
  void remove(unsigned slot);
  std::shared_ptr<Function> function(unsigned slot) const;

  // A naturally aligned BAR address for `size` bytes; throws pier::Error when the window is full.
  uint64_t allocate_bar(uint64_t size);

  // The device for I/O ports 0xCF8-0xCFF.
  std::shared_ptr<BusDevice> config_io() { return config_io_; }

  // Config access by bus/device/function/offset (also used by tests and an ECAM window).
  void config_read(uint32_t bdf, uint16_t offset, std::span<uint8_t> data);
  void config_write(uint32_t bdf, uint16_t offset, std::span<const uint8_t> data);

 private:
  class ConfigIo;

  mutable std::mutex mutex_;
  std::array<std::shared_ptr<Function>, kSlots> slots_{};
  uint64_t next_bar_;
  uint64_t mmio_end_;
  std::shared_ptr<BusDevice> config_io_;
};

// bus/device/function packed like CONFIG_ADDRESS bits 23:8.
constexpr uint32_t bdf(unsigned bus, unsigned device, unsigned function) {
  return (bus << 8) | (device << 3) | function;
}

}  // namespace pier::pci
