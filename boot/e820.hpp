#pragma once
// The guest's e820 memory map, derived from the RAM regions and the fixed layout.
#include <cstdint>
#include <span>
#include <vector>

#include "vmm/guest_memory.hpp"

namespace pier::boot {

enum class E820Type : uint32_t { kRam = 1, kReserved = 2, kAcpi = 3, kNvs = 4 };

struct E820Entry {
  uint64_t addr;
  uint64_t size;
  E820Type type;
};

// [0, EBDA) RAM; [EBDA, 1 MiB) reserved (legacy area, ACPI tables); [1 MiB, low end) RAM;
// [4 GiB, ...) RAM when the guest has memory above the hole. Nothing in the MMIO hole is RAM.
std::vector<E820Entry> build_e820(std::span<const MemoryRegion> ram);

}  // namespace pier::boot
