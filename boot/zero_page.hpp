#pragma once
// struct boot_params ("zero page", Linux Documentation/arch/x86/zero-page.rst): the one structure
// a 64-bit kernel reads at entry. Built as bytes at known offsets so it is testable and does not
// depend on kernel headers.
#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "boot/e820.hpp"

namespace pier::boot {

namespace zp {  // offsets into boot_params
constexpr size_t kAcpiRsdpAddr = 0x070;
constexpr size_t kExtRamdiskImage = 0x0c0;
constexpr size_t kExtRamdiskSize = 0x0c4;
constexpr size_t kExtCmdLinePtr = 0x0c8;
constexpr size_t kE820Entries = 0x1e8;
constexpr size_t kSetupHeader = 0x1f1;
constexpr size_t kBootFlag = 0x1fe;
constexpr size_t kHeaderMagic = 0x202;
constexpr size_t kVersion = 0x206;
constexpr size_t kTypeOfLoader = 0x210;
constexpr size_t kLoadFlags = 0x211;
constexpr size_t kRamdiskImage = 0x218;
constexpr size_t kRamdiskSize = 0x21c;
constexpr size_t kCmdLinePtr = 0x228;
constexpr size_t kKernelAlignment = 0x230;
constexpr size_t kCmdlineSize = 0x238;
constexpr size_t kSetupData = 0x250;
constexpr size_t kE820Table = 0x2d0;
constexpr size_t kE820MaxEntries = 128;
}  // namespace zp

struct ZeroPageConfig {
  std::span<const uint8_t> setup_header;  // bzImage bytes from 0x1F1; empty for a plain ELF
  uint64_t cmdline_address = 0;
  uint32_t cmdline_length = 0;  // without the NUL
  uint64_t initrd_address = 0;
  uint64_t initrd_size = 0;
  std::vector<E820Entry> e820;
  uint64_t acpi_rsdp = 0;
  uint64_t setup_data = 0;  // guest-physical head of the setup_data list, 0 for none
};

using ZeroPage = std::array<uint8_t, 4096>;

// Throws pier::Error when the e820 map has more entries than boot_params holds.
ZeroPage build_zero_page(const ZeroPageConfig& config);

}  // namespace pier::boot
