// The address map must never overlap: RAM (from e820) vs the fixed boot structures, the MMIO hole
// and KVM's private pages.
#include "boot/layout.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "boot/e820.hpp"
#include "vmm/guest_memory.hpp"

namespace pier {
namespace {

using namespace layout;

struct Range {
  std::string name;
  uint64_t start, end;
};

TEST(Layout, FixedBootRangesDoNotOverlap) {
  std::vector<Range> ranges = {
      {"gdt", kBootGdt, kBootGdt + kBootGdtEntries * 8},
      {"idt", kBootIdt, kBootIdt + kBootIdtSize},
      {"pvh start info", kPvhStartInfo, kPvhStartInfo + kPvhStartInfoSize},
      {"zero page", kZeroPage, kZeroPage + kZeroPageSize},
      {"page tables", kPml4, kPageTablesEnd},
      {"cmdline", kCmdline, kCmdline + kCmdlineMax},
      {"setup_data", kSetupData, kSetupData + kSetupDataMax},
      {"acpi", kAcpiStart, kAcpiEnd},
      {"pci mmio", kPciMmioStart, kPciMmioEnd},
      {"ioapic", kIoapic, kIoapic + kIoapicSize},
      {"lapic", kLapic, kLapic + kLapicSize},
      {"kvm identity map", kKvmIdentityMap, kKvmIdentityMap + 4096},
      {"kvm tss", kKvmTss, kKvmTss + kKvmTssSize},
  };
  for (size_t i = 0; i < ranges.size(); ++i) {
    EXPECT_LT(ranges[i].start, ranges[i].end) << ranges[i].name;
    for (size_t j = i + 1; j < ranges.size(); ++j) {
      const bool overlap = ranges[i].start < ranges[j].end && ranges[j].start < ranges[i].end;
      EXPECT_FALSE(overlap) << ranges[i].name << " overlaps " << ranges[j].name;
    }
  }
}

TEST(Layout, E820RamNeverCoversTheHoleOrReservedAreas) {
  for (uint64_t ram : {64 * MiB, 3 * GiB, 3 * GiB + 4096, 5 * GiB, 16 * GiB}) {
    auto mem = GuestMemory::create(ram);
    auto map = boot::build_e820(mem.regions());
    uint64_t total = 0;
    for (const auto& e : map) {
      if (e.type != boot::E820Type::kRam) continue;
      total += e.size;
      const uint64_t end = e.addr + e.size;
      EXPECT_FALSE(e.addr < kMmioHoleEnd && kMmioHoleStart < end) << "RAM in the hole";
      EXPECT_FALSE(e.addr < kAcpiEnd && kEbdaStart < end) << "RAM over the legacy area";
    }
    // Everything but the reserved legacy window is usable RAM.
    EXPECT_EQ(total, ram - (kLowRamEnd - kEbdaStart)) << ram;
  }
}

TEST(Layout, E820WithAndWithoutHighMemory) {
  auto small = GuestMemory::create(256 * MiB);
  auto map = boot::build_e820(small.regions());
  ASSERT_EQ(map.size(), 3u);
  EXPECT_EQ(map[0].addr, 0u);
  EXPECT_EQ(map[0].size, kEbdaStart);
  EXPECT_EQ(map[1].type, boot::E820Type::kReserved);
  EXPECT_EQ(map[2].addr, kLowRamEnd);
  EXPECT_EQ(map[2].addr + map[2].size, 256 * MiB);

  auto big = GuestMemory::create(6 * GiB);
  map = boot::build_e820(big.regions());
  ASSERT_EQ(map.size(), 4u);
  EXPECT_EQ(map[2].addr + map[2].size, kMmioHoleStart);
  EXPECT_EQ(map[3].addr, kHighRamStart);
  EXPECT_EQ(map[3].size, 6 * GiB - kMmioHoleStart);
}

}  // namespace
}  // namespace pier
