#include "devices/io_bus.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "vmm/error.hpp"
#include "vmm/log.hpp"

namespace pier {

void IoBus::add(uint64_t base, uint64_t size, std::shared_ptr<BusDevice> device,
                std::string label) {
  std::unique_lock lock(mutex_);
  if (size == 0 || base + size < base) {
    throw Error(fmt::format("{} bus: invalid range for {}", name_, label));
  }
  for (const auto& r : ranges_) {
    if (base < r.base + r.size && r.base < base + size) {
      throw Error(fmt::format("{} bus: {} at {:#x}+{:#x} overlaps {} at {:#x}+{:#x}", name_, label,
                              base, size, r.label, r.base, r.size));
    }
  }
  Range range{base, size, std::move(device), std::move(label)};
  auto at = std::lower_bound(ranges_.begin(), ranges_.end(), base,
                             [](const Range& r, uint64_t b) { return r.base < b; });
  ranges_.insert(at, std::move(range));
}

bool IoBus::remove(uint64_t base, const BusDevice* device) {
  std::unique_lock lock(mutex_);
  auto it = std::find_if(ranges_.begin(), ranges_.end(), [&](const Range& r) {
    return r.base == base && r.device.get() == device;
  });
  if (it == ranges_.end()) return false;
  ranges_.erase(it);
  return true;
}

std::shared_ptr<BusDevice> IoBus::find(uint64_t addr, uint64_t len, uint64_t* offset) const {
  std::shared_lock lock(mutex_);
  auto it = std::upper_bound(ranges_.begin(), ranges_.end(), addr,
                             [](uint64_t a, const Range& r) { return a < r.base; });
  if (it == ranges_.begin()) return nullptr;
  --it;
  if (addr - it->base >= it->size || len > it->size - (addr - it->base)) return nullptr;
  *offset = addr - it->base;
  return it->device;
}

bool IoBus::read(uint64_t addr, std::span<uint8_t> data) {
  uint64_t offset = 0;
  if (auto dev = find(addr, data.size(), &offset)) {
    dev->read(offset, data);
    return true;
  }
  std::memset(data.data(), 0xff, data.size());
  {
    std::lock_guard lock(unclaimed_mutex_);
    ++unclaimed_;
  }
  log::debug("{} bus: unclaimed read of {} bytes at {:#x}", name_, data.size(), addr);
  return false;
}

bool IoBus::write(uint64_t addr, std::span<const uint8_t> data) {
  uint64_t offset = 0;
  if (auto dev = find(addr, data.size(), &offset)) {
    dev->write(offset, data);
    return true;
  }
  {
    std::lock_guard lock(unclaimed_mutex_);
    ++unclaimed_;
  }
  log::debug("{} bus: unclaimed write of {} bytes at {:#x}", name_, data.size(), addr);
  return false;
}

uint64_t IoBus::unclaimed_accesses() const {
  std::lock_guard lock(unclaimed_mutex_);
  return unclaimed_;
}

}  // namespace pier
