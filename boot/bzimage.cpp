#include "boot/bzimage.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "vmm/error.hpp"

namespace pier::boot {
namespace {

// Offsets of the fields pier reads (struct setup_header, boot.rst "THE REAL-MODE KERNEL HEADER").
constexpr uint64_t kSetupSects = 0x1f1;
constexpr uint64_t kSyssize = 0x1f4;
constexpr uint64_t kJump = 0x200;  // 0xEB, then the jump offset that marks the header's end
constexpr uint64_t kVersion = 0x206;
constexpr uint64_t kLoadflags = 0x211;
constexpr uint64_t kInitrdAddrMax = 0x22c;
constexpr uint64_t kKernelAlignment = 0x230;
constexpr uint64_t kRelocatableKernel = 0x234;
constexpr uint64_t kXloadflags = 0x236;
constexpr uint64_t kCmdlineSize = 0x238;
constexpr uint64_t kPayloadOffset = 0x248;
constexpr uint64_t kPayloadLength = 0x24c;
constexpr uint64_t kPrefAddress = 0x258;
constexpr uint64_t kInitSize = 0x260;
// Every field above exists from protocol 2.10 on; init_size is the last one pier needs.
constexpr uint64_t kMinHeaderEnd = kInitSize + 4;
constexpr uint32_t kDefaultSetupSects = 4;
constexpr uint64_t kSectorSize = 512;
constexpr uint64_t kMaxPhysicalAddress = uint64_t{1} << 52;

template <class T>
T read_le(std::span<const uint8_t> file, uint64_t offset) {
  // Callers check bounds against kMinHeaderEnd first; this is the host's (little-endian) layout.
  T value;
  std::memcpy(&value, file.data() + offset, sizeof(T));
  return value;
}

std::string version_string(uint16_t version) {
  return fmt::format("{}.{:02}", version >> 8, version & 0xff);
}

}  // namespace

bool is_bzimage(std::span<const uint8_t> file) noexcept {
  return file.size() >= kSetupMagicOffset + 4 &&
         read_le<uint32_t>(file, kSetupMagicOffset) == kSetupMagic;
}

SetupHeader parse_setup_header(std::span<const uint8_t> file) {
  if (!is_bzimage(file)) {
    throw Error(
        "kernel image has no Linux boot protocol signature (\"HdrS\" at offset 0x202); pass a "
        "bzImage such as /boot/vmlinuz-*");
  }
  if (file.size() < kMinHeaderEnd) {
    throw Error(fmt::format(
        "bzImage is truncated: {} bytes is too short for its setup header; re-copy the kernel",
        file.size()));
  }
  SetupHeader h;
  h.version = read_le<uint16_t>(file, kVersion);
  if (h.version < kMinBootProtocol) {
    throw Error(fmt::format(
        "bzImage uses boot protocol {}, pier needs 2.12 or newer (Linux 3.8+) for the 64-bit "
        "entry point; use a newer kernel",
        version_string(h.version)));
  }
  h.xloadflags = read_le<uint16_t>(file, kXloadflags);
  if ((h.xloadflags & kXlfKernel64) == 0) {
    throw Error(
        "bzImage has no 64-bit entry point (XLF_KERNEL_64 not set in xloadflags); use a "
        "64-bit (x86_64) kernel");
  }
  h.setup_sects = file[kSetupSects] == 0 ? kDefaultSetupSects : file[kSetupSects];
  h.setup_size = (uint64_t{h.setup_sects} + 1) * kSectorSize;
  if (h.setup_size >= file.size()) {
    throw Error(fmt::format(
        "bzImage is truncated: its {} setup sectors end at byte {} but the file has {} bytes; "
        "re-copy the kernel",
        h.setup_sects, h.setup_size, file.size()));
  }

  // The header ends where the jump at 0x200 lands (boot.rst). Clamp to what boot_params.hdr can
  // hold: anything after that offset is not part of struct setup_header.
  const uint64_t header_end =
      std::min<uint64_t>(kSetupMagicOffset + file[kJump + 1], kSetupHeaderMaxEnd);
  if (header_end < kMinHeaderEnd) {
    throw Error(fmt::format(
        "bzImage setup header ends at {:#x}, before the fields of protocol {} (init_size at "
        "{:#x}); the image is corrupt",
        header_end, version_string(h.version), kInitSize));
  }
  h.header_bytes = file.subspan(kSetupHeaderOffset, header_end - kSetupHeaderOffset);

  h.loadflags = file[kLoadflags];
  h.initrd_addr_max = read_le<uint32_t>(file, kInitrdAddrMax);
  h.kernel_alignment = read_le<uint32_t>(file, kKernelAlignment);
  h.relocatable = file[kRelocatableKernel] != 0;
  h.cmdline_size = read_le<uint32_t>(file, kCmdlineSize);
  h.payload_offset = read_le<uint32_t>(file, kPayloadOffset);
  h.payload_length = read_le<uint32_t>(file, kPayloadLength);
  h.pref_address = read_le<uint64_t>(file, kPrefAddress);
  h.init_size = read_le<uint32_t>(file, kInitSize);

  if (h.relocatable &&
      (h.kernel_alignment == 0 || (h.kernel_alignment & (h.kernel_alignment - 1)) != 0)) {
    throw Error(
        fmt::format("bzImage kernel_alignment {:#x} is not a power of two; the image is corrupt",
                    h.kernel_alignment));
  }
  // x86-64 physical addresses have at most 52 bits; this also keeps the runtime start arithmetic
  // in bzimage_runtime_start far from overflow.
  if (h.pref_address >= kMaxPhysicalAddress) {
    throw Error(
        fmt::format("bzImage pref_address {:#x} is not a physical address; the image is "
                    "corrupt",
                    h.pref_address));
  }
  if (h.init_size == 0) {
    throw Error("bzImage setup header has init_size 0; the image is corrupt");
  }

  h.protected_mode = file.subspan(h.setup_size);
  // The in-guest decompressor's code and data follow the payload, so a copy cut short after the
  // payload would still parse but crash when booted by the protocol; syssize catches that.
  h.syssize = uint64_t{read_le<uint32_t>(file, kSyssize)} * 16;
  if (h.syssize > h.protected_mode.size()) {
    throw Error(fmt::format(
        "bzImage is truncated: its protected-mode kernel is {} bytes (syssize) but the file holds "
        "{}; re-copy the kernel",
        h.syssize, h.protected_mode.size()));
  }
  // 64-bit arithmetic: offset and length are 32-bit, so their sum cannot overflow.
  const uint64_t payload_end = uint64_t{h.payload_offset} + h.payload_length;
  if (h.payload_length == 0 || payload_end > h.protected_mode.size()) {
    throw Error(fmt::format(
        "bzImage compressed payload ({} bytes at offset {:#x}) lies outside the {}-byte "
        "protected-mode kernel; the file is truncated or corrupt, re-copy the kernel",
        h.payload_length, h.setup_size + h.payload_offset, h.protected_mode.size()));
  }
  h.payload = h.protected_mode.subspan(h.payload_offset, h.payload_length);
  return h;
}

uint64_t bzimage_runtime_start(const SetupHeader& header, uint64_t load_address) noexcept {
  if (!header.relocatable) return header.pref_address;
  const uint64_t start = std::max(load_address, header.pref_address);
  const uint64_t align = header.kernel_alignment;  // a power of two, checked when parsed
  return (start + align - 1) & ~(align - 1);
}

}  // namespace pier::boot
