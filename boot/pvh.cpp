#include "boot/pvh.hpp"

#include <fmt/format.h>

#include <cstring>

#include "vmm/error.hpp"

namespace pier::boot {
namespace {

template <class T>
void put(PvhStartInfo& page, size_t offset, T value) {
  std::memcpy(page.data() + offset, &value, sizeof(T));
}

}  // namespace

PvhStartInfo build_pvh_start_info(const PvhStartInfoConfig& config) {
  if (config.memmap.size() > pvh::kMaxMemmapEntries) {
    throw Error(fmt::format("the memory map has {} entries; the PVH start info holds {}",
                            config.memmap.size(), pvh::kMaxMemmapEntries));
  }
  PvhStartInfo page{};
  put<uint32_t>(page, pvh::kMagicOffset, pvh::kMagic);
  put<uint32_t>(page, pvh::kVersionOffset, pvh::kVersion);
  put<uint32_t>(page, pvh::kFlags, 0);
  put<uint64_t>(page, pvh::kCmdlinePaddr, config.cmdline_address);
  put<uint64_t>(page, pvh::kRsdpPaddr, config.rsdp);
  if (config.initrd_size > 0) {
    put<uint32_t>(page, pvh::kNrModules, 1);
    put<uint64_t>(page, pvh::kModlistPaddr, config.address + pvh::kModlistOffset);
    put<uint64_t>(page, pvh::kModlistOffset + 0, config.initrd_address);
    put<uint64_t>(page, pvh::kModlistOffset + 8, config.initrd_size);
    // cmdline_paddr and reserved stay 0.
  }
  put<uint64_t>(page, pvh::kMemmapPaddr, config.address + pvh::kMemmapOffset);
  put<uint32_t>(page, pvh::kMemmapEntries, static_cast<uint32_t>(config.memmap.size()));
  for (size_t i = 0; i < config.memmap.size(); ++i) {
    const size_t at = pvh::kMemmapOffset + i * pvh::kMemmapEntrySize;
    put<uint64_t>(page, at, config.memmap[i].addr);
    put<uint64_t>(page, at + 8, config.memmap[i].size);
    put<uint32_t>(page, at + 16, static_cast<uint32_t>(config.memmap[i].type));
  }
  return page;
}

}  // namespace pier::boot
