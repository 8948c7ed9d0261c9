#include "boot/e820.hpp"

#include "boot/layout.hpp"

namespace pier::boot {

std::vector<E820Entry> build_e820(std::span<const MemoryRegion> ram) {
  std::vector<E820Entry> map;
  for (const auto& r : ram) {
    if (r.gpa == 0) {
      map.push_back({0, layout::kEbdaStart, E820Type::kRam});
      map.push_back(
          {layout::kEbdaStart, layout::kLowRamEnd - layout::kEbdaStart, E820Type::kReserved});
      if (r.end() > layout::kLowRamEnd) {
        map.push_back({layout::kLowRamEnd, r.end() - layout::kLowRamEnd, E820Type::kRam});
      }
    } else {
      map.push_back({r.gpa, r.size, E820Type::kRam});
    }
  }
  return map;
}

}  // namespace pier::boot
