#include "devices/system_control.hpp"

#include <gtest/gtest.h>

#include "boot/layout.hpp"
#include "devices/chardev/backend.hpp"

namespace pier {
namespace {

TEST(AcpiSystemControl, S5PowersOffAndResetRegisterResets) {
  std::vector<StopReason> seen;
  AcpiSystemControl acpi([&](StopReason r) { seen.push_back(r); });
  const uint8_t s5 = (5 << 2) | (1 << 5);
  acpi.write(0, std::span(&s5, 1));
  const uint8_t s3 = (3 << 2) | (1 << 5);  // not implemented: ignored, not a stop
  acpi.write(0, std::span(&s3, 1));
  const uint8_t no_enable = 5 << 2;
  acpi.write(0, std::span(&no_enable, 1));
  const uint8_t reset = layout::kAcpiResetValue;
  acpi.write(layout::kAcpiReset - layout::kAcpiSleepControl, std::span(&reset, 1));
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0], StopReason::kPowerOff);
  EXPECT_EQ(seen[1], StopReason::kReset);
}

TEST(I8042, ResetCommandStopsAndStatusReadsIdle) {
  std::vector<StopReason> seen;
  I8042 kbd([&](StopReason r) { seen.push_back(r); });
  uint8_t status = 0xff;
  kbd.read(I8042::kCommandOffset, std::span(&status, 1));
  EXPECT_EQ(status & 0x3, 0);  // output and input buffers empty: Linux does not wait forever
  const uint8_t other = 0xad;
  kbd.write(I8042::kCommandOffset, std::span(&other, 1));
  EXPECT_TRUE(seen.empty());
  const uint8_t reset = I8042::kResetCommand;
  kbd.write(I8042::kDataOffset, std::span(&reset, 1));  // the data port is not the command port
  EXPECT_TRUE(seen.empty());
  kbd.write(I8042::kCommandOffset, std::span(&reset, 1));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], StopReason::kReset);
}

TEST(EscapeFilter, QuitSequenceAndLiteralEscape) {
  chardev::EscapeFilter f;
  bool quit = false;
  std::vector<uint8_t> a = {'a', 0x01, 0x01, 'b', 0x01, 'c'};
  const size_t n = f.filter(a, quit);
  EXPECT_FALSE(quit);
  EXPECT_EQ(std::vector<uint8_t>(a.begin(), a.begin() + static_cast<long>(n)),
            (std::vector<uint8_t>{'a', 0x01, 'b', 'c'}));
  // The sequence may be split across reads.
  std::vector<uint8_t> b = {'z', 0x01};
  EXPECT_EQ(f.filter(b, quit), 1u);
  std::vector<uint8_t> c = {'x', 'y'};
  EXPECT_EQ(f.filter(c, quit), 1u);
  EXPECT_TRUE(quit);
  EXPECT_EQ(c[0], 'y');
}

}  // namespace
}  // namespace pier
