#pragma once
// Puts a kernel image into guest RAM: a bzImage by the 64-bit boot protocol (the kernel
// decompresses itself) or directly (pier decompresses the payload and loads the ELF kernel
// proper), or a plain ELF64 executable (vmlinux, bare-metal test guests). The machine builder
// then fills the zero page from `setup_header` and places the initrd outside
// [image_start, image_end).
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "vmm/guest_memory.hpp"

namespace pier::boot {

enum class BootMethod {
  kBzImage,  // 64-bit boot protocol: protected-mode code at 1 MiB, entry +0x200, kernel
             // decompresses itself
  kDirect,   // pier decompresses the bzImage payload in the host, loads the ELF kernel proper's
             // PT_LOAD segments at their physical addresses, entry = ELF entry
};

struct LoadedKernel {
  uint64_t entry = 0;  // 64-bit entry RIP (guest-physical; identity mapped)
  // bzImage bytes [0x1F1, 0x202 + byte[0x201]) to copy into boot_params.hdr at offset 0x1F1;
  // empty for a plain ELF.
  std::vector<uint8_t> setup_header;
  // Guest-physical range the kernel occupies or may use while starting; the initrd must not
  // overlap it. bzImage: 1 MiB up to the end of what was loaded or of the runtime range
  // [runtime start, + init_size) the kernel decompresses into (boot.rst), whichever is higher.
  // ELF (and direct boot): lowest paddr .. highest paddr + memsz, page aligned outwards.
  uint64_t image_start = 0;
  uint64_t image_end = 0;
  uint32_t initrd_addr_max = 0x7fffffff;  // from the header, or 0x7fffffff for a plain ELF
  uint32_t cmdline_size = 2047;           // from the header, or 2047 for a plain ELF
  BootMethod method = BootMethod::kBzImage;
  // A plain ELF with a PVH note (XEN_ELFNOTE_PHYS32_ENTRY): `entry` is the note's 32-bit entry,
  // entered in protected mode with EBX = the PVH start info (boot/pvh.hpp), not the 64-bit
  // protocol's e_entry with RSI = zero page.
  bool pvh = false;
  // One line for logs, e.g. "bzImage protocol 2.15, lz4 payload 13.4 MiB -> ELF 50.8 MiB in
  // 61 ms, entry 0x1000000".
  std::string description;
};

// Detects bzImage vs ELF64 by content. A plain ELF is always loaded directly (method is
// ignored). Writes guest RAM only through GuestMemory, and only after the image has been fully
// validated. Throws pier::Error with one actionable line for: a file that is neither bzImage nor
// ELF, a bzImage with protocol < 2.12 or without XLF_KERNEL_64, truncated headers, a corrupt or
// unsupported compressed payload, an ELF that is not x86-64 / not executable / has segments
// outside guest RAM or overlapping the low boot area below 1 MiB, a kernel that does not fit in
// guest RAM.
LoadedKernel load_kernel(const GuestMemory& memory, std::span<const uint8_t> file,
                         BootMethod method);

}  // namespace pier::boot
