#include "devices/io_bus.hpp"

#include <gtest/gtest.h>

#include "vmm/error.hpp"

namespace pier {
namespace {

class Recorder : public BusDevice {
 public:
  void read(uint64_t offset, std::span<uint8_t> data) override {
    last_offset = offset;
    for (auto& b : data) b = 0x42;
  }
  void write(uint64_t offset, std::span<const uint8_t> data) override {
    last_offset = offset;
    last_size = data.size();
  }
  uint64_t last_offset = ~0ull;
  size_t last_size = 0;
};

TEST(IoBus, DispatchesByRangeWithOffsets) {
  IoBus bus("test");
  auto a = std::make_shared<Recorder>();
  auto b = std::make_shared<Recorder>();
  bus.add(0x3f8, 8, a, "a");
  bus.add(0x60, 5, b, "b");
  uint8_t v[2] = {1, 2};
  EXPECT_TRUE(bus.write(0x3fb, std::span(v, 1)));
  EXPECT_EQ(a->last_offset, 3u);
  EXPECT_TRUE(bus.write(0x64, std::span(v, 1)));
  EXPECT_EQ(b->last_offset, 4u);
  EXPECT_TRUE(bus.read(0x3f8, std::span(v, 2)));
  EXPECT_EQ(v[0], 0x42);
}

TEST(IoBus, UnclaimedReadsAreAllOnesAndCounted) {
  IoBus bus("test");
  uint8_t v[4] = {};
  EXPECT_FALSE(bus.read(0x80, std::span(v, 4)));
  for (uint8_t b : v) EXPECT_EQ(b, 0xff);
  EXPECT_FALSE(bus.write(0x80, std::span(v, 1)));
  EXPECT_EQ(bus.unclaimed_accesses(), 2u);
}

TEST(IoBus, AccessStraddlingTheEndIsUnclaimed) {
  IoBus bus("test");
  auto a = std::make_shared<Recorder>();
  bus.add(0x100, 4, a, "a");
  uint8_t v[4] = {};
  EXPECT_FALSE(bus.read(0x102, std::span(v, 4)));
  EXPECT_TRUE(bus.read(0x100, std::span(v, 4)));
}

TEST(IoBus, OverlapsAreRejectedAndRangesRemovable) {
  IoBus bus("test");
  auto a = std::make_shared<Recorder>();
  bus.add(0x100, 0x10, a, "a");
  EXPECT_THROW(bus.add(0x10f, 1, a, "b"), Error);
  EXPECT_THROW(bus.add(0xf0, 0x11, a, "c"), Error);
  EXPECT_NO_THROW(bus.add(0x110, 1, a, "d"));
  EXPECT_TRUE(bus.remove(0x100, a.get()));
  EXPECT_FALSE(bus.remove(0x100, a.get()));
  uint8_t v = 0;
  EXPECT_FALSE(bus.read(0x100, std::span(&v, 1)));
}

}  // namespace
}  // namespace pier
