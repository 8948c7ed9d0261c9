#pragma once
// The Linux x86 boot protocol setup header of a bzImage (Documentation/arch/x86/boot.rst,
// shared/reference/design-notes.md §1.2). Parsing only: every field is bounds-checked against the
// file here so that the loader can use the spans without further checks.
#include <cstdint>
#include <span>

namespace pier::boot {

// File offsets of the setup header (struct setup_header in arch/x86/include/uapi/asm/bootparam.h).
constexpr uint64_t kSetupHeaderOffset = 0x1f1;  // setup_sects, the first header byte
constexpr uint64_t kSetupMagicOffset = 0x202;   // "HdrS"
constexpr uint32_t kSetupMagic = 0x53726448;    // "HdrS" read little-endian
// boot_params.hdr ends where boot_params continues with edd_mbr_sig_buffer; a header that claims
// to be longer cannot be copied into the zero page.
constexpr uint64_t kSetupHeaderMaxEnd = 0x290;
// Protocol 2.12 added xloadflags, which is how a kernel says it has the 64-bit entry point.
constexpr uint16_t kMinBootProtocol = 0x020c;
constexpr uint16_t kXlfKernel64 = 1 << 0;  // 64-bit entry at load address + 0x200
constexpr uint16_t kXlfCanBeLoadedAbove4G = 1 << 1;
constexpr uint8_t kLoadedHigh = 1 << 0;  // loadflags: protected-mode code is loaded at 1 MiB

struct SetupHeader {
  uint16_t version = 0;      // e.g. 0x020f for protocol 2.15
  uint32_t setup_sects = 0;  // after the "0 means 4" rule
  uint64_t setup_size = 0;   // (setup_sects + 1) * 512: file offset of the protected-mode code
  uint64_t syssize = 0;      // bytes of protected-mode code the image declares (16 * syssize)
  uint8_t loadflags = 0;
  uint16_t xloadflags = 0;
  uint32_t payload_offset = 0;  // of the compressed payload, relative to the protected-mode code
  uint32_t payload_length = 0;  // including the le32 uncompressed size the build appends
  uint32_t init_size = 0;       // memory the kernel needs from its runtime start while starting
  uint64_t pref_address = 0;    // preferred (and for non-relocatable kernels, the only) address
  uint32_t kernel_alignment = 0;
  bool relocatable = false;
  uint32_t initrd_addr_max = 0;  // highest address the initrd may occupy
  uint32_t cmdline_size = 0;     // longest command line without the terminating NUL

  // Views into the file the header was parsed from (valid while that file's bytes are).
  std::span<const uint8_t> header_bytes;    // [0x1F1, 0x202 + byte[0x201]), for boot_params.hdr
  std::span<const uint8_t> protected_mode;  // [setup_size, EOF): what is loaded at 1 MiB
  std::span<const uint8_t> payload;         // the compressed kernel proper, inside protected_mode
};

// True when `file` carries the "HdrS" signature of the Linux boot protocol (a bzImage).
bool is_bzimage(std::span<const uint8_t> file) noexcept;

// Validates and extracts the setup header. Throws pier::Error with one actionable line for a
// truncated header, a missing "HdrS", protocol < 2.12, no 64-bit entry point (XLF_KERNEL_64), or
// any size/offset field pointing outside the file.
SetupHeader parse_setup_header(std::span<const uint8_t> file);

// Where a bzImage loaded at `load_address` runs while it decompresses itself: Linux boot.rst,
// "runtime start address" (a relocatable kernel moves up to pref_address aligned to
// kernel_alignment; a fixed one runs at pref_address). The kernel uses [start, start + init_size).
uint64_t bzimage_runtime_start(const SetupHeader& header, uint64_t load_address) noexcept;

}  // namespace pier::boot
