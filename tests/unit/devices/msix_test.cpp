#include "devices/pci/msix.hpp"

#include <gtest/gtest.h>

namespace pier::pci {
namespace {

void write32(Msix& m, uint64_t off, uint32_t v) {
  m.table_write(off, std::span(reinterpret_cast<const uint8_t*>(&v), 4));
}
uint32_t read32(Msix& m, uint64_t off) {
  uint32_t v = 0;
  m.table_read(off, std::span(reinterpret_cast<uint8_t*>(&v), 4));
  return v;
}

class MsixTest : public ::testing::Test {
 protected:
  MsixTest() {
    msix.fire = [this](unsigned v) { fired.push_back(v); };
    msix.on_message_changed = [this](unsigned v, const Msix::Message& m) {
      changed.push_back(v);
      last = m;
    };
  }
  Msix msix{4};
  std::vector<unsigned> fired, changed;
  Msix::Message last;
};

TEST_F(MsixTest, EntriesStartMaskedAndControlEncodesSizeMinusOne) {
  EXPECT_EQ(read32(msix, 12), 1u);
  EXPECT_EQ(msix.message_control() & 0x7ff, 3);
  EXPECT_EQ(msix.table_size(), 64u);
  EXPECT_EQ(msix.pba_size(), 8u);
}

TEST_F(MsixTest, MessageProgrammingIsReported) {
  write32(msix, 16 + 0, 0xfee01000);
  write32(msix, 16 + 4, 0);
  write32(msix, 16 + 8, 0x4041);
  ASSERT_FALSE(changed.empty());
  EXPECT_EQ(changed.back(), 1u);
  EXPECT_EQ(msix.message(1).address, 0xfee01000u);
  EXPECT_EQ(msix.message(1).data, 0x4041u);
  EXPECT_EQ(read32(msix, 16 + 8), 0x4041u);
}

TEST_F(MsixTest, DisabledOrMaskedVectorsDoNotFireAndPendingIsDeliveredOnUnmask) {
  EXPECT_FALSE(msix.signal(0));  // MSI-X disabled: nothing, not even pending
  EXPECT_FALSE(msix.pending(0));
  msix.set_message_control(Msix::kControlEnable);
  EXPECT_FALSE(msix.signal(0));  // entry masked
  EXPECT_TRUE(msix.pending(0));
  uint8_t pba = 0;
  msix.pba_read(0, std::span(&pba, 1));
  EXPECT_EQ(pba, 1);
  write32(msix, 12, 0);  // unmask: the pending vector fires at once
  ASSERT_EQ(fired.size(), 1u);
  EXPECT_EQ(fired[0], 0u);
  EXPECT_FALSE(msix.pending(0));
  EXPECT_TRUE(msix.signal(0));
  EXPECT_EQ(fired.size(), 2u);
}

TEST_F(MsixTest, FunctionMaskHoldsEveryVector) {
  write32(msix, 12, 0);
  write32(msix, 16 + 12, 0);
  msix.set_message_control(Msix::kControlEnable | Msix::kControlFunctionMask);
  EXPECT_FALSE(msix.signal(0));
  EXPECT_FALSE(msix.signal(1));
  EXPECT_TRUE(fired.empty());
  msix.set_message_control(Msix::kControlEnable);
  EXPECT_EQ(fired.size(), 2u);
}

TEST_F(MsixTest, OutOfRangeAccessesAreHarmless) {
  write32(msix, 4096, 0x12345678);
  EXPECT_EQ(read32(msix, 4096), 0xffffffffu);
  EXPECT_FALSE(msix.signal(99));
  uint8_t pba[16];
  msix.pba_read(0, pba);
  EXPECT_EQ(pba[15], 0);
}

}  // namespace
}  // namespace pier::pci
