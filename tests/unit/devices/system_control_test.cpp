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

TEST(AcpiSystemControl, AGuestAskingForUnsupportedSleepInALoopIsLoggedOnce) {
  AcpiSystemControl acpi([](StopReason) {});
  const uint8_t s3 = (3 << 2) | (1 << 5);
  ::testing::internal::CaptureStderr();
  for (int i = 0; i < 10000; ++i) acpi.write(0, std::span(&s3, 1));
  const std::string err = ::testing::internal::GetCapturedStderr();
  size_t lines = 0;
  for (size_t at = 0; (at = err.find("sleep type 3", at)) != std::string::npos; ++at) ++lines;
  EXPECT_EQ(lines, 1u) << err.substr(0, 400);
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

// Records what reaches the PCI config side of the 0xCF8 window.
struct RecordingConfig final : BusDevice {
  std::vector<std::pair<uint64_t, size_t>> reads, writes;
  void read(uint64_t offset, std::span<uint8_t> data) override {
    reads.emplace_back(offset, data.size());
    std::fill(data.begin(), data.end(), 0xab);
  }
  void write(uint64_t offset, std::span<const uint8_t> data) override {
    writes.emplace_back(offset, data.size());
  }
};

TEST(ResetControlPort, LinuxSequenceResetsOnRstCpuAndOtherAccessesReachPciConfig) {
  std::vector<StopReason> seen;
  auto config = std::make_shared<RecordingConfig>();
  ResetControlPort port([&](StopReason r) { seen.push_back(r); }, config);
  const uint64_t rcr = layout::kResetControl - layout::kPciConfigAddress;
  ASSERT_EQ(rcr, ResetControlPort::kRegisterOffset);
  // Linux reboot=p: 0x02 (SYS_RST, no reset yet), then 0x06 (RST_CPU: reset).
  const uint8_t sys_rst = 0x02, rst_cpu = 0x06;
  port.write(rcr, std::span(&sys_rst, 1));
  EXPECT_TRUE(seen.empty());
  uint8_t value = 0;
  port.read(rcr, std::span(&value, 1));
  EXPECT_EQ(value, 0x02);
  port.write(rcr, std::span(&rst_cpu, 1));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], StopReason::kReset);
  port.read(rcr, std::span(&value, 1));
  EXPECT_EQ(value & ResetControlPort::kResetCpu, 0);  // self-clearing
  EXPECT_TRUE(config->writes.empty());
  // CONFIG_ADDRESS (dword at 0xCF8) and CONFIG_DATA (0xCFC-0xCFF) go to the PCI side, and so
  // does a wider access that covers 0xCF9.
  const uint32_t address = 0x8000'0000u;
  port.write(0, std::span(reinterpret_cast<const uint8_t*>(&address), 4));
  uint16_t word = 0;
  port.read(rcr, std::span(reinterpret_cast<uint8_t*>(&word), 2));
  uint8_t data = 0;
  port.read(4, std::span(&data, 1));
  ASSERT_EQ(config->writes.size(), 1u);
  EXPECT_EQ(config->writes[0], std::make_pair(uint64_t{0}, size_t{4}));
  ASSERT_EQ(config->reads.size(), 2u);
  EXPECT_EQ(config->reads[0], std::make_pair(uint64_t{1}, size_t{2}));
  EXPECT_EQ(config->reads[1], std::make_pair(uint64_t{4}, size_t{1}));
  EXPECT_EQ(seen.size(), 1u);
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
