#include <gtest/gtest.h>

#include <cstring>

#include "boot/layout.hpp"
#include "devices/pci/bus.hpp"
#include "devices/pci/config_space.hpp"
#include "vmm/error.hpp"

namespace pier::pci {
namespace {

uint32_t read32(ConfigSpace& c, uint16_t off) {
  uint32_t v = 0;
  c.read(off, std::span(reinterpret_cast<uint8_t*>(&v), 4));
  return v;
}
void write32(ConfigSpace& c, uint16_t off, uint32_t v) {
  c.write(off, std::span(reinterpret_cast<const uint8_t*>(&v), 4));
}

TEST(PciConfigSpace, IdentityFieldsAreReadOnly) {
  ConfigSpace c(0x1af4, 0x1043, 0x07, 0x80);
  EXPECT_EQ(read32(c, 0), 0x10431af4u);
  write32(c, 0, 0xdeadbeef);
  EXPECT_EQ(read32(c, 0), 0x10431af4u);
  EXPECT_EQ(read32(c, 0x08) >> 8, 0x078000u);
}

TEST(PciConfigSpace, Bar64SizingAndRelocation) {
  ConfigSpace c(0x1af4, 0x1043, 0x07, 0x80);
  c.add_memory_bar(0, {.size = 0x4000, .is_64bit = true}, 0xc0004000);
  EXPECT_EQ(read32(c, 0x10), 0xc0004004u);  // 64-bit memory BAR type bits
  EXPECT_EQ(read32(c, 0x14), 0u);
  std::vector<std::tuple<unsigned, uint64_t, uint64_t>> moves;
  c.on_bar_moved = [&](unsigned bar, uint64_t from, uint64_t to) {
    moves.emplace_back(bar, from, to);
  };
  // Sizing: all-ones reads back the size mask with the type bits.
  write32(c, 0x10, 0xffffffff);
  write32(c, 0x14, 0xffffffff);
  EXPECT_EQ(read32(c, 0x10), 0xffffc004u);
  EXPECT_EQ(read32(c, 0x14), 0xffffffffu);
  // Relocate to 0x1_2345_8000.
  write32(c, 0x10, 0x23458000);
  write32(c, 0x14, 0x1);
  EXPECT_EQ(c.bar_address(0), 0x123458000ull);
  ASSERT_FALSE(moves.empty());
  EXPECT_EQ(std::get<2>(moves.back()), 0x123458000ull);
}

TEST(PciConfigSpace, CommandChangesAreReported) {
  ConfigSpace c(0x1af4, 0x1043, 0x07, 0x80);
  int calls = 0;
  c.on_command_changed = [&](uint16_t from, uint16_t to) {
    ++calls;
    EXPECT_EQ(from, 0);
    EXPECT_EQ(to, cfg::kCommandMemory | cfg::kCommandBusMaster);
  };
  uint16_t cmd = cfg::kCommandMemory | cfg::kCommandBusMaster | 0x8000;  // bit 15 is not writable
  c.write(cfg::kCommand, std::span(reinterpret_cast<const uint8_t*>(&cmd), 2));
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(c.command(), cfg::kCommandMemory | cfg::kCommandBusMaster);
}

TEST(PciConfigSpace, CapabilityListIsWalkable) {
  ConfigSpace c(0x1af4, 0x1043, 0x07, 0x80);
  const std::vector<uint8_t> a(14, 0xaa), b(10, 0xbb);
  const uint8_t first = c.add_capability(cfg::kCapVendor, a);
  const uint8_t second = c.add_capability(cfg::kCapMsix, b);
  EXPECT_TRUE((read32(c, cfg::kStatus - 2) >> 16) & cfg::kStatusCapabilities);
  uint8_t ptr = 0;
  c.read(cfg::kCapabilitiesPointer, std::span(&ptr, 1));
  EXPECT_EQ(ptr, first);
  EXPECT_EQ(ptr % 4, 0);
  uint8_t hdr[2];
  c.read(ptr, hdr);
  EXPECT_EQ(hdr[0], cfg::kCapVendor);
  EXPECT_EQ(hdr[1], second);
  c.read(second, hdr);
  EXPECT_EQ(hdr[0], cfg::kCapMsix);
  EXPECT_EQ(hdr[1], 0);
}

TEST(PciConfigSpace, OutOfRangeAccessesAreSafe) {
  ConfigSpace c(0x1af4, 0x1043, 0x07, 0x80);
  uint8_t data[4] = {1, 2, 3, 4};
  c.write(254, data);  // runs past the end
  c.write(4000, data);
  uint8_t back[4];
  c.read(254, back);
  EXPECT_EQ(back[2], 0xff);
}

class PciBusTest : public ::testing::Test {
 protected:
  uint32_t cfg_read32(unsigned dev, uint16_t reg) {
    const uint32_t addr = 0x8000'0000u | (dev << 11) | reg;
    io_->write(0, std::span(reinterpret_cast<const uint8_t*>(&addr), 4));
    uint32_t v = 0;
    io_->read(4, std::span(reinterpret_cast<uint8_t*>(&v), 4));
    return v;
  }
  Bus bus_{layout::kPciMmioStart, layout::kPciMmioEnd};
  std::shared_ptr<BusDevice> io_ = bus_.config_io();
};

TEST_F(PciBusTest, HostBridgeAtZeroAndAbsentFunctionsReadAllOnes) {
  EXPECT_EQ(cfg_read32(0, 0), 0x00081b36u);
  EXPECT_EQ(cfg_read32(0, 8) >> 16, 0x0600u);
  EXPECT_EQ(cfg_read32(5, 0), 0xffffffffu);
  // Function 1 of the host bridge does not exist.
  const uint32_t addr = 0x8000'0000u | (1 << 8);
  io_->write(0, std::span(reinterpret_cast<const uint8_t*>(&addr), 4));
  uint32_t v = 0;
  io_->read(4, std::span(reinterpret_cast<uint8_t*>(&v), 4));
  EXPECT_EQ(v, 0xffffffffu);
}

TEST_F(PciBusTest, ConfigAddressNeedsDwordAccessAndEnableBit) {
  const uint32_t addr = 0x8000'0000u;
  io_->write(0, std::span(reinterpret_cast<const uint8_t*>(&addr), 4));
  uint32_t back = 0;
  io_->read(0, std::span(reinterpret_cast<uint8_t*>(&back), 4));
  EXPECT_EQ(back, addr);
  const uint8_t b = 0x01;
  io_->write(3, std::span(&b, 1));  // type-2 probe byte: ignored
  io_->read(0, std::span(reinterpret_cast<uint8_t*>(&back), 4));
  EXPECT_EQ(back, addr);
  // Byte read of CONFIG_DATA + 2 gives the device id's low byte.
  uint8_t byte = 0;
  io_->read(4 + 2, std::span(&byte, 1));
  EXPECT_EQ(byte, 0x08);
  const uint32_t disabled = 0;
  io_->write(0, std::span(reinterpret_cast<const uint8_t*>(&disabled), 4));
  io_->read(4, std::span(reinterpret_cast<uint8_t*>(&back), 4));
  EXPECT_EQ(back, 0xffffffffu);
}

TEST_F(PciBusTest, BarAllocationIsNaturallyAlignedAndBounded) {
  const uint64_t a = bus_.allocate_bar(0x1000);
  const uint64_t b = bus_.allocate_bar(0x10000);
  EXPECT_EQ(a % 0x1000, 0u);
  EXPECT_EQ(b % 0x10000, 0u);
  EXPECT_GE(b, a + 0x1000);
  Bus tiny(0xc0000000, 0xc0002000);
  tiny.allocate_bar(0x1000);
  tiny.allocate_bar(0x1000);
  EXPECT_THROW(tiny.allocate_bar(0x1000), Error);
}

}  // namespace
}  // namespace pier::pci
