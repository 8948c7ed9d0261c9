#include "boot/zero_page.hpp"

#include <gtest/gtest.h>

#include <cstring>

#include "vmm/error.hpp"

namespace pier::boot {
namespace {

template <class T>
T get(const ZeroPage& page, size_t offset) {
  T value;
  std::memcpy(&value, page.data() + offset, sizeof(T));
  return value;
}

TEST(ZeroPage, CopiesTheSetupHeaderAndSetsLoaderFields) {
  std::vector<uint8_t> header(0x202 + 0x6a - 0x1f1, 0);
  // setup_sects, then "HdrS" at 0x202 and version 2.15 at 0x206 (offsets relative to 0x1F1).
  header[0] = 27;
  std::memcpy(header.data() + (0x202 - 0x1f1), "HdrS", 4);
  header[0x206 - 0x1f1] = 0x0f;
  header[0x206 - 0x1f1 + 1] = 0x02;
  header[0x238 - 0x1f1] = 0xff;  // kernel's cmdline_size, must be preserved
  ZeroPageConfig config;
  config.setup_header = header;
  config.cmdline_address = 0x20000;
  config.cmdline_length = 42;
  config.initrd_address = 0x1'2345'6000;
  config.initrd_size = 0x1'0000'1000;
  config.acpi_rsdp = 0xe0000;
  config.e820 = {{0, 0x9fc00, E820Type::kRam}, {0x100000, 0x1000000, E820Type::kRam}};
  const ZeroPage page = build_zero_page(config);

  EXPECT_EQ(page[0x1f1], 27);
  EXPECT_EQ(std::memcmp(page.data() + 0x202, "HdrS", 4), 0);
  EXPECT_EQ(get<uint16_t>(page, 0x206), 0x020f);
  EXPECT_EQ(page[zp::kTypeOfLoader], 0xff);
  EXPECT_EQ(page[zp::kLoadFlags] & 1, 1);
  EXPECT_EQ(get<uint32_t>(page, zp::kCmdLinePtr), 0x20000u);
  EXPECT_EQ(get<uint32_t>(page, zp::kExtCmdLinePtr), 0u);
  EXPECT_EQ(get<uint32_t>(page, zp::kCmdlineSize), 0xffu);
  EXPECT_EQ(get<uint32_t>(page, zp::kRamdiskImage), 0x2345'6000u);
  EXPECT_EQ(get<uint32_t>(page, zp::kExtRamdiskImage), 1u);
  EXPECT_EQ(get<uint32_t>(page, zp::kRamdiskSize), 0x1000u);
  EXPECT_EQ(get<uint32_t>(page, zp::kExtRamdiskSize), 1u);
  EXPECT_EQ(get<uint64_t>(page, zp::kAcpiRsdpAddr), 0xe0000u);
  EXPECT_EQ(page[zp::kE820Entries], 2);
  EXPECT_EQ(get<uint64_t>(page, zp::kE820Table + 20), 0x100000u);
  EXPECT_EQ(get<uint64_t>(page, zp::kE820Table + 28), 0x1000000u);
  EXPECT_EQ(get<uint32_t>(page, zp::kE820Table + 36), 1u);
}

TEST(ZeroPage, PlainElfGetsAMinimalHeader) {
  ZeroPageConfig config;
  config.cmdline_address = 0x20000;
  config.cmdline_length = 5;
  const ZeroPage page = build_zero_page(config);
  EXPECT_EQ(get<uint16_t>(page, zp::kBootFlag), 0xaa55);
  EXPECT_EQ(std::memcmp(page.data() + zp::kHeaderMagic, "HdrS", 4), 0);
  EXPECT_GE(get<uint16_t>(page, zp::kVersion), 0x020c);
  EXPECT_EQ(get<uint32_t>(page, zp::kCmdlineSize), 5u);
}

TEST(ZeroPage, TooManyE820EntriesThrow) {
  ZeroPageConfig config;
  config.e820.resize(zp::kE820MaxEntries + 1, {0, 4096, E820Type::kRam});
  EXPECT_THROW(build_zero_page(config), Error);
}

}  // namespace
}  // namespace pier::boot
