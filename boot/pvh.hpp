#pragma once
// PVH boot (Xen's direct-boot ABI, xen/include/public/arch-x86/hvm/start_info.h; what QEMU's
// -kernel, Firecracker and Cloud Hypervisor do for an ELF with XEN_ELFNOTE_PHYS32_ENTRY): the
// guest starts at the note's 32-bit entry in protected mode, paging off, EBX = guest-physical
// address of struct hvm_start_info (version 1: command line, RSDP, memory map, modules).
// Built as bytes at known offsets, like the zero page, so it is testable without KVM.
#include <array>
#include <cstdint>
#include <vector>

#include "boot/e820.hpp"

namespace pier::boot {

namespace pvh {                          // offsets and constants of the start info
constexpr uint32_t kMagic = 0x336ec578;  // "xEn3" with the 0x80 bit of the "E" set
constexpr uint32_t kVersion = 1;
constexpr size_t kMagicOffset = 0;
constexpr size_t kVersionOffset = 4;
constexpr size_t kFlags = 8;
constexpr size_t kNrModules = 12;
constexpr size_t kModlistPaddr = 16;
constexpr size_t kCmdlinePaddr = 24;
constexpr size_t kRsdpPaddr = 32;
constexpr size_t kMemmapPaddr = 40;
constexpr size_t kMemmapEntries = 48;
constexpr size_t kStartInfoSize = 56;
constexpr size_t kModlistOffset = 64;  // one hvm_modlist_entry (32 bytes): the initrd
constexpr size_t kModlistEntrySize = 32;
constexpr size_t kMemmapOffset = 96;  // hvm_memmap_table_entry array (24 bytes each)
constexpr size_t kMemmapEntrySize = 24;
constexpr size_t kPageSize = 4096;
constexpr size_t kMaxMemmapEntries = (kPageSize - kMemmapOffset) / kMemmapEntrySize;
}  // namespace pvh

struct PvhStartInfoConfig {
  uint64_t address = 0;          // guest-physical address the page is written to
  uint64_t cmdline_address = 0;  // NUL-terminated; 0 for none
  uint64_t rsdp = 0;
  uint64_t initrd_address = 0;  // module 0 when initrd_size > 0
  uint64_t initrd_size = 0;
  std::vector<E820Entry> memmap;
};

using PvhStartInfo = std::array<uint8_t, pvh::kPageSize>;

// The start info page: hvm_start_info at offset 0, the module list and the memory map after it
// in the same page (their addresses are `address` + offset). Throws pier::Error when the memory
// map has more than pvh::kMaxMemmapEntries entries.
PvhStartInfo build_pvh_start_info(const PvhStartInfoConfig& config);

}  // namespace pier::boot
