#include "boot/elf.hpp"

#include <elf.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "boot/layout.hpp"
#include "vmm/error.hpp"

namespace pier::boot {
namespace {

// Reads a header struct from `offset`; callers have checked that it lies inside the file.
template <class T>
T read_struct(std::span<const uint8_t> file, uint64_t offset) {
  static_assert(std::is_trivially_copyable_v<T>);
  T value;
  std::memcpy(&value, file.data() + offset, sizeof(T));
  return value;
}

std::string range(uint64_t start, uint64_t end) {
  return fmt::format("[{:#x}, {:#x})", start, end);
}

uint64_t round_up_mib(uint64_t bytes) {
  return (bytes + layout::MiB - 1) / layout::MiB;
}

// Why [start, end) is not in guest RAM, with what the user can do about it.
[[noreturn]] void throw_outside_ram(const GuestMemory& memory, size_t index, uint64_t start,
                                    uint64_t end) {
  const std::string where = fmt::format("kernel ELF segment {} at {}", index, range(start, end));
  if (start < layout::kMmioHoleEnd && end > layout::kMmioHoleStart) {
    throw Error(fmt::format(
        "{} overlaps the 32-bit MMIO hole {}, which is never RAM; link the kernel below {:#x}",
        where, range(layout::kMmioHoleStart, layout::kMmioHoleEnd), layout::kMmioHoleStart));
  }
  // RAM is laid out below the hole first, then from 4 GiB; this is what covers `end`.
  const uint64_t needed =
      end <= layout::kMmioHoleStart ? end : layout::kMmioHoleStart + (end - layout::kHighRamStart);
  throw Error(fmt::format("{} lies beyond guest RAM ({} MiB); use --memory of at least {} MiB",
                          where, memory.ram_size() >> 20, round_up_mib(needed)));
}

}  // namespace

bool is_elf(std::span<const uint8_t> file) noexcept {
  return file.size() >= SELFMAG && std::memcmp(file.data(), ELFMAG, SELFMAG) == 0;
}

ElfImage parse_elf64(std::span<const uint8_t> file) {
  if (!is_elf(file)) {
    throw Error("kernel image is not an ELF file (no \\x7fELF magic); pass an x86-64 vmlinux");
  }
  if (file.size() < sizeof(Elf64_Ehdr)) {
    throw Error(fmt::format(
        "ELF kernel is truncated: {} bytes is shorter than the 64-byte ELF header; re-copy it",
        file.size()));
  }
  const auto eh = read_struct<Elf64_Ehdr>(file, 0);
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB) {
    throw Error(
        "ELF kernel is not a 64-bit little-endian ELF (ELFCLASS64/ELFDATA2LSB); pass an x86-64 "
        "vmlinux");
  }
  if (eh.e_machine != EM_X86_64) {
    throw Error(fmt::format(
        "ELF kernel is built for machine {} (e_machine), not x86-64 ({}); pass an x86-64 vmlinux",
        eh.e_machine, EM_X86_64));
  }
  if (eh.e_ident[EI_VERSION] != EV_CURRENT || eh.e_version != EV_CURRENT) {
    throw Error("ELF kernel has an unknown ELF version; the file is corrupt");
  }
  if (eh.e_type != ET_EXEC) {
    throw Error(fmt::format(
        "ELF kernel is not an executable (e_type {}, expected ET_EXEC {}); pass a linked vmlinux, "
        "not an object file or shared library",
        eh.e_type, ET_EXEC));
  }
  if (eh.e_phnum == 0) {
    throw Error("ELF kernel has no program headers, so nothing to load; pass a linked vmlinux");
  }
  if (eh.e_phnum == PN_XNUM) {
    throw Error("ELF kernel uses extended program header numbering (PN_XNUM); not supported");
  }
  if (eh.e_phentsize < sizeof(Elf64_Phdr)) {
    throw Error(
        fmt::format("ELF kernel program header size {} is smaller than {}; the file is "
                    "corrupt",
                    eh.e_phentsize, sizeof(Elf64_Phdr)));
  }
  // phnum and phentsize are 16-bit, so the table size cannot overflow; compare without adding.
  const uint64_t table_size = uint64_t{eh.e_phnum} * eh.e_phentsize;
  if (eh.e_phoff > file.size() || table_size > file.size() - eh.e_phoff) {
    throw Error(fmt::format(
        "ELF kernel is truncated: program headers at offset {:#x} ({} bytes) end past the "
        "{}-byte file; re-copy it",
        eh.e_phoff, table_size, file.size()));
  }

  ElfImage image;
  for (uint64_t i = 0; i < eh.e_phnum; ++i) {
    const auto ph = read_struct<Elf64_Phdr>(file, eh.e_phoff + i * eh.e_phentsize);
    if (ph.p_type != PT_LOAD || ph.p_memsz == 0) continue;
    if (ph.p_filesz > ph.p_memsz) {
      throw Error(fmt::format(
          "ELF kernel segment {} has p_filesz {:#x} > p_memsz {:#x}; the file is corrupt", i,
          ph.p_filesz, ph.p_memsz));
    }
    if (ph.p_offset > file.size() || ph.p_filesz > file.size() - ph.p_offset) {
      throw Error(fmt::format(
          "ELF kernel segment {} (file offset {:#x}, {} bytes) extends past the {}-byte file; "
          "the file is truncated, re-copy it",
          i, ph.p_offset, ph.p_filesz, file.size()));
    }
    if (ph.p_memsz > UINT64_MAX - ph.p_paddr) {
      throw Error(fmt::format(
          "ELF kernel segment {} (paddr {:#x}, memsz {:#x}) wraps around the address space; the "
          "file is corrupt",
          i, ph.p_paddr, ph.p_memsz));
    }
    image.segments.push_back({.offset = ph.p_offset,
                              .paddr = ph.p_paddr,
                              .vaddr = ph.p_vaddr,
                              .filesz = ph.p_filesz,
                              .memsz = ph.p_memsz,
                              .flags = ph.p_flags});
  }
  if (image.segments.empty()) {
    throw Error("ELF kernel has no PT_LOAD segments, so nothing to load; pass a linked vmlinux");
  }

  std::sort(image.segments.begin(), image.segments.end(),
            [](const ElfSegment& a, const ElfSegment& b) { return a.paddr < b.paddr; });
  for (size_t i = 1; i < image.segments.size(); ++i) {
    const auto& prev = image.segments[i - 1];
    const auto& next = image.segments[i];
    if (next.paddr < prev.paddr + prev.memsz) {
      throw Error(fmt::format(
          "ELF kernel segments {} and {} overlap in physical memory; the file is corrupt",
          range(prev.paddr, prev.paddr + prev.memsz), range(next.paddr, next.paddr + next.memsz)));
    }
  }
  image.lowest_paddr = image.segments.front().paddr;
  image.highest_end = image.segments.back().paddr + image.segments.back().memsz;

  const auto in_physical = [&](const ElfSegment& s) {
    return eh.e_entry >= s.paddr && eh.e_entry - s.paddr < s.memsz;
  };
  const auto in_virtual = [&](const ElfSegment& s) {
    return eh.e_entry >= s.vaddr && eh.e_entry - s.vaddr < s.memsz;
  };
  if (auto it = std::find_if(image.segments.begin(), image.segments.end(), in_physical);
      it != image.segments.end()) {
    image.entry = eh.e_entry;
  } else if (it = std::find_if(image.segments.begin(), image.segments.end(), in_virtual);
             it != image.segments.end()) {
    image.entry = it->paddr + (eh.e_entry - it->vaddr);
  } else {
    throw Error(fmt::format(
        "ELF kernel entry point {:#x} is outside every loadable segment; the file is corrupt",
        eh.e_entry));
  }
  return image;
}

void load_elf(const GuestMemory& memory, std::span<const uint8_t> file, const ElfImage& image) {
  // Validate everything first so that a bad segment leaves guest memory untouched.
  for (size_t i = 0; i < image.segments.size(); ++i) {
    const auto& s = image.segments[i];
    const uint64_t end = s.paddr + s.memsz;  // no overflow: checked by parse_elf64
    if (s.paddr < layout::kLowRamEnd) {
      throw Error(fmt::format(
          "kernel ELF segment {} at {} overlaps pier's boot area below 1 MiB (zero page, page "
          "tables, ACPI tables); link the kernel at or above {:#x}",
          i, range(s.paddr, end), layout::kLowRamEnd));
    }
    if (!memory.contains(s.paddr, s.memsz)) throw_outside_ram(memory, i, s.paddr, end);
    if (s.offset > file.size() || s.filesz > file.size() - s.offset) {
      throw Error("internal: ELF segment outside the file it was parsed from");
    }
  }
  for (size_t i = 0; i < image.segments.size(); ++i) {
    const auto& s = image.segments[i];
    memory.load(s.paddr, file.subspan(s.offset, s.filesz), "kernel ELF segment");
    memory.fill(s.paddr + s.filesz, s.memsz - s.filesz, 0, "kernel ELF bss");
  }
}

}  // namespace pier::boot
