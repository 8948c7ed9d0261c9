#include "vmm/guest_memory.hpp"

#include <gtest/gtest.h>

#include <array>

#include "boot/layout.hpp"
#include "vmm/error.hpp"

namespace pier {
namespace {

using layout::GiB;
using layout::MiB;

TEST(GuestMemory, SmallGuestHasOneRegion) {
  auto mem = GuestMemory::create(64 * MiB);
  ASSERT_EQ(mem.regions().size(), 1u);
  EXPECT_EQ(mem.regions()[0].gpa, 0u);
  EXPECT_EQ(mem.regions()[0].size, 64 * MiB);
}

TEST(GuestMemory, LargeGuestIsSplitAroundTheHole) {
  auto mem = GuestMemory::create(5 * GiB);
  ASSERT_EQ(mem.regions().size(), 2u);
  EXPECT_EQ(mem.regions()[0].end(), layout::kMmioHoleStart);
  EXPECT_EQ(mem.regions()[1].gpa, layout::kHighRamStart);
  EXPECT_EQ(mem.regions()[0].size + mem.regions()[1].size, 5 * GiB);
  EXPECT_FALSE(mem.contains(layout::kMmioHoleStart, 1));
  EXPECT_FALSE(mem.contains(layout::kIoapic, 4));
  EXPECT_TRUE(mem.contains(layout::kHighRamStart, 4096));
  EXPECT_TRUE(mem.write_obj<uint64_t>(layout::kHighRamStart + 8, 0x1122334455667788));
  EXPECT_EQ(mem.read_obj<uint64_t>(layout::kHighRamStart + 8), 0x1122334455667788u);
}

TEST(GuestMemory, AccessesAcrossTheHoleAreRejected) {
  auto mem = GuestMemory::create(4 * GiB);
  EXPECT_FALSE(mem.contains(layout::kMmioHoleStart - 8, 16));
  EXPECT_FALSE(mem.slice(layout::kMmioHoleStart - 8, 16).has_value());
  EXPECT_TRUE(mem.contains(layout::kMmioHoleStart - 8, 8));
}

TEST(GuestMemory, BoundsChecksNeverOverflow) {
  auto mem = GuestMemory::create(64 * MiB);
  EXPECT_FALSE(mem.contains(UINT64_MAX, 2));
  EXPECT_FALSE(mem.contains(4096, UINT64_MAX));
  EXPECT_FALSE(mem.contains(64 * MiB, 1));
  EXPECT_TRUE(mem.contains(64 * MiB - 1, 1));
  EXPECT_FALSE(mem.contains(64 * MiB - 1, 2));
  std::array<uint8_t, 4> buf{};
  EXPECT_FALSE(mem.read(64 * MiB - 2, buf));
  EXPECT_FALSE(mem.write(UINT64_MAX - 1, buf));
  EXPECT_FALSE(mem.read_obj<uint32_t>(64 * MiB - 2).has_value());
}

TEST(GuestMemory, SetupHelpersThrowActionableErrors) {
  auto mem = GuestMemory::create(64 * MiB);
  std::array<uint8_t, 16> bytes{};
  EXPECT_THROW(mem.load(64 * MiB - 8, bytes, "initrd"), Error);
  try {
    mem.load(64 * MiB - 8, bytes, "initrd");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("initrd"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("--memory"), std::string::npos);
  }
  EXPECT_NO_THROW(mem.fill(0, 4096, 0xab, "page"));
  EXPECT_EQ(mem.read_obj<uint8_t>(100), 0xab);
}

TEST(GuestMemory, RejectsUnalignedSizes) {
  EXPECT_THROW(GuestMemory::create(4095), Error);
}

}  // namespace
}  // namespace pier
