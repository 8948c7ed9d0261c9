#include "boot/zero_page.hpp"

#include <fmt/format.h>

#include <cstring>

#include "vmm/error.hpp"

namespace pier::boot {
namespace {

template <class T>
void put(ZeroPage& page, size_t offset, T value) {
  std::memcpy(page.data() + offset, &value, sizeof(T));
}

constexpr uint8_t kLoaderUndefined = 0xff;
constexpr uint8_t kLoadedHigh = 0x01;

}  // namespace

ZeroPage build_zero_page(const ZeroPageConfig& config) {
  ZeroPage page{};
  if (!config.setup_header.empty()) {
    const size_t n = std::min(config.setup_header.size(), page.size() - zp::kSetupHeader);
    std::memcpy(page.data() + zp::kSetupHeader, config.setup_header.data(), n);
  } else {
    // A plain ELF kernel has no setup header; write the fields a kernel checks at entry.
    put<uint16_t>(page, zp::kBootFlag, 0xaa55);
    std::memcpy(page.data() + zp::kHeaderMagic, "HdrS", 4);
    put<uint16_t>(page, zp::kVersion, 0x020f);
    put<uint32_t>(page, zp::kKernelAlignment, 0x200000);
    put<uint32_t>(page, zp::kCmdlineSize, config.cmdline_length);
  }
  put<uint8_t>(page, zp::kTypeOfLoader, kLoaderUndefined);
  page[zp::kLoadFlags] |= kLoadedHigh;

  put<uint32_t>(page, zp::kCmdLinePtr, static_cast<uint32_t>(config.cmdline_address));
  put<uint32_t>(page, zp::kExtCmdLinePtr, static_cast<uint32_t>(config.cmdline_address >> 32));

  put<uint32_t>(page, zp::kRamdiskImage, static_cast<uint32_t>(config.initrd_address));
  put<uint32_t>(page, zp::kExtRamdiskImage, static_cast<uint32_t>(config.initrd_address >> 32));
  put<uint32_t>(page, zp::kRamdiskSize, static_cast<uint32_t>(config.initrd_size));
  put<uint32_t>(page, zp::kExtRamdiskSize, static_cast<uint32_t>(config.initrd_size >> 32));

  put<uint64_t>(page, zp::kAcpiRsdpAddr, config.acpi_rsdp);
  put<uint64_t>(page, zp::kSetupData, config.setup_data);

  if (config.e820.size() > zp::kE820MaxEntries) {
    throw Error(fmt::format("e820 map has {} entries; boot_params holds {}", config.e820.size(),
                            zp::kE820MaxEntries));
  }
  put<uint8_t>(page, zp::kE820Entries, static_cast<uint8_t>(config.e820.size()));
  for (size_t i = 0; i < config.e820.size(); ++i) {
    const size_t at = zp::kE820Table + i * 20;
    put<uint64_t>(page, at, config.e820[i].addr);
    put<uint64_t>(page, at + 8, config.e820[i].size);
    put<uint32_t>(page, at + 16, static_cast<uint32_t>(config.e820[i].type));
  }
  return page;
}

}  // namespace pier::boot
