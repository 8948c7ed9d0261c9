#include "devices/pci/bus.hpp"

#include <fmt/format.h>

#include <cstring>

#include "vmm/error.hpp"

namespace pier::pci {
namespace {

// The host bridge: Red Hat's generic PCI host bridge id (1b36:0008), class 06/00.
class HostBridge final : public Function {
 public:
  HostBridge() : config_(0x1b36, 0x0008, 0x06, 0x00) {}
  std::string name() const override { return "host bridge"; }
  ConfigSpace& config() override { return config_; }

 private:
  ConfigSpace config_;
};

}  // namespace

// CONFIG_ADDRESS (0xCF8, 32-bit): bit 31 enable, bus 23:16, device 15:11, function 10:8,
// register 7:2. CONFIG_DATA (0xCFC-0xCFF) accesses the selected dword at any byte offset.
class Bus::ConfigIo final : public BusDevice {
 public:
  explicit ConfigIo(Bus& bus) : bus_(bus) {}

  void read(uint64_t offset, std::span<uint8_t> data) override {
    std::lock_guard lock(mutex_);
    if (offset < 4) {
      // Only whole-dword accesses reach CONFIG_ADDRESS (byte writes to 0xCFB are the old
      // mechanism-#2 probe and must not change it).
      if (offset == 0 && data.size() == 4) {
        std::memcpy(data.data(), &address_, 4);
      } else {
        std::memset(data.data(), 0xff, data.size());
      }
      return;
    }
    if (!(address_ & 0x8000'0000u)) {
      std::memset(data.data(), 0xff, data.size());
      return;
    }
    bus_.config_read((address_ >> 8) & 0xffff,
                     static_cast<uint16_t>((address_ & 0xfc) + (offset - 4)), data);
  }

  void write(uint64_t offset, std::span<const uint8_t> data) override {
    std::lock_guard lock(mutex_);
    if (offset < 4) {
      if (offset == 0 && data.size() == 4) {
        std::memcpy(&address_, data.data(), 4);
        address_ &= 0x80ff'fffcu;
      }
      return;
    }
    if (!(address_ & 0x8000'0000u)) return;
    bus_.config_write((address_ >> 8) & 0xffff,
                      static_cast<uint16_t>((address_ & 0xfc) + (offset - 4)), data);
  }

 private:
  Bus& bus_;
  std::mutex mutex_;  // CONFIG_ADDRESS is shared by all vCPUs, as on hardware
  uint32_t address_ = 0;
};

Bus::Bus(uint64_t mmio_start, uint64_t mmio_end)
    : next_bar_(mmio_start), mmio_end_(mmio_end), config_io_(std::make_shared<ConfigIo>(*this)) {
  slots_[0] = std::make_shared<HostBridge>();
}

unsigned Bus::add(std::shared_ptr<Function> function) {
  std::lock_guard lock(mutex_);
  for (unsigned slot = 1; slot < kSlots; ++slot) {
    if (!slots_[slot]) {
      slots_[slot] = std::move(function);
      return slot;
    }
  }
  throw Error("PCI bus 0 is full (31 devices)");
}

void Bus::remove(unsigned slot) {
  std::lock_guard lock(mutex_);
  if (slot > 0 && slot < kSlots) slots_[slot].reset();
}

std::shared_ptr<Function> Bus::function(unsigned slot) const {
  std::lock_guard lock(mutex_);
  return slot < kSlots ? slots_[slot] : nullptr;
}

uint64_t Bus::allocate_bar(uint64_t size) {
  std::lock_guard lock(mutex_);
  const uint64_t address = (next_bar_ + size - 1) & ~(size - 1);
  if (address + size > mmio_end_ || address + size < address) {
    throw Error(fmt::format("no room for a {} KiB PCI BAR in the MMIO window", size >> 10));
  }
  next_bar_ = address + size;
  return address;
}

void Bus::config_read(uint32_t bdf_value, uint16_t offset, std::span<uint8_t> data) {
  const unsigned bus = bdf_value >> 8, device = (bdf_value >> 3) & 31, fn = bdf_value & 7;
  std::shared_ptr<Function> f = (bus == 0 && fn == 0) ? function(device) : nullptr;
  if (!f) {
    std::memset(data.data(), 0xff, data.size());
    return;
  }
  f->config_read(offset, data);
}

void Bus::config_write(uint32_t bdf_value, uint16_t offset, std::span<const uint8_t> data) {
  const unsigned bus = bdf_value >> 8, device = (bdf_value >> 3) & 31, fn = bdf_value & 7;
  std::shared_ptr<Function> f = (bus == 0 && fn == 0) ? function(device) : nullptr;
  if (f) f->config_write(offset, data);
}

}  // namespace pier::pci
