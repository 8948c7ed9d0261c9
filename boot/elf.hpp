#pragma once
// ELF64 x86-64 executables (the kernel proper, vmlinux, or a bare-metal test guest), loaded by
// physical address the way the kernel's own decompressor (arch/x86/boot/compressed/misc.c
// parse_elf) and Firecracker place vmlinux: each PT_LOAD segment at p_paddr, bss zeroed.
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "vmm/guest_memory.hpp"

namespace pier::boot {

struct ElfSegment {
  uint64_t offset = 0;  // in the file
  uint64_t paddr = 0;
  uint64_t vaddr = 0;
  uint64_t filesz = 0;
  uint64_t memsz = 0;  // >= filesz; the rest is bss, zero-filled on load
  uint32_t flags = 0;  // PF_X | PF_W | PF_R
};

struct ElfImage {
  // Guest-physical entry point. e_entry when it lies in a segment's physical range (vmlinux links
  // ENTRY(phys_startup_64)); an e_entry that is a virtual address inside a segment is translated
  // to the matching physical address.
  uint64_t entry = 0;
  std::vector<ElfSegment> segments;  // PT_LOAD with memsz > 0, sorted by paddr, non-overlapping
  uint64_t lowest_paddr = 0;         // of the segments
  uint64_t highest_end = 0;          // max paddr + memsz
};

// True when `file` starts with the ELF magic (any class or machine).
bool is_elf(std::span<const uint8_t> file) noexcept;

// Validates an ELF64 little-endian x86-64 ET_EXEC file. Every header, offset and size is checked
// against the file length without overflow; segments need memsz >= filesz, must not overlap, and
// the entry must lie in one of them. Throws pier::Error with one actionable line otherwise.
ElfImage parse_elf64(std::span<const uint8_t> file);

// The same from the first bytes of a file of `file_size` bytes: `head` must reach past the
// program header table (segment bytes are not read, only checked against `file_size`).
ElfImage parse_elf64_headers(std::span<const uint8_t> head, uint64_t file_size);

// XEN_ELFNOTE_PHYS32_ENTRY (xen/include/public/elfnote.h): the PVH entry point, a 32-bit
// guest-physical address entered in 32-bit protected mode with paging off and EBX = the
// hvm_start_info (boot/pvh.hpp). Linux vmlinux, QEMU's -kernel and Firecracker use the same note.
constexpr uint32_t kXenElfNotePhys32Entry = 18;

// Walks ELF note records (Elf64_Nhdr: namesz, descsz, type; name and desc each padded to 4
// bytes) in `notes` and returns the PVH entry of the first note named "Xen" with type 18 and a
// 4- or 8-byte descriptor. Stops quietly at a truncated record; a "Xen" PHYS32_ENTRY note whose
// descriptor has another size, or an entry that does not fit in 32 bits, throws pier::Error.
std::optional<uint64_t> parse_pvh_note(std::span<const uint8_t> notes);

// The PVH entry from the PT_NOTE segments of a file parse_elf64 accepted (segments outside the
// file are an error), or nullopt when there is none.
std::optional<uint64_t> find_pvh_entry(std::span<const uint8_t> file);

// Checks every segment against guest RAM (inside one RAM region, not below 1 MiB where pier keeps
// the zero page, page tables and ACPI tables) before writing anything, then copies each segment
// to its paddr through GuestMemory and zero-fills its bss. `file` must be the bytes `image` was
// parsed from.
void load_elf(const GuestMemory& memory, std::span<const uint8_t> file, const ElfImage& image);

// Loads an ELF file that arrives as a stream (the decompressed bzImage payload) without holding
// it: the headers are buffered until complete, then parsed and every segment checked against
// guest RAM before anything is written; from then on each byte goes straight to the guest address
// of the segment(s) holding it, and finish() zero-fills the bss. A stream that turns out bad
// later may have written part of the kernel already; the caller abandons the guest on any error.
class ElfStreamLoader {
 public:
  // `file_size`: the stream's total length. `what` prefixes header errors ("bzImage payload").
  ElfStreamLoader(const GuestMemory& memory, uint64_t file_size, std::string what);

  // The next bytes of the file, in order.
  void write(std::span<const uint8_t> chunk);
  // After the whole file was written: zero-fills the bss and returns the parsed image. Throws
  // pier::Error when the stream was short or never held complete headers.
  ElfImage finish();

 private:
  void parse_headers();
  void route(uint64_t offset, std::span<const uint8_t> bytes) const;

  const GuestMemory& memory_;
  uint64_t file_size_;
  std::string what_;
  uint64_t received_ = 0;
  std::vector<uint8_t> head_;  // bytes before the headers were complete
  std::optional<ElfImage> image_;
};

}  // namespace pier::boot
