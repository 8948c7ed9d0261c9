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

std::optional<uint64_t> parse_pvh_note(std::span<const uint8_t> notes) {
  const auto align4 = [](uint64_t n) { return (n + 3) & ~uint64_t{3}; };
  uint64_t pos = 0;
  while (notes.size() - pos >= sizeof(Elf64_Nhdr)) {
    // Elf64_Nhdr has 32-bit fields (same layout as Elf32_Nhdr).
    const auto nh = read_struct<Elf64_Nhdr>(notes, pos);
    pos += sizeof(Elf64_Nhdr);
    const uint64_t name_len = align4(nh.n_namesz), desc_len = align4(nh.n_descsz);
    if (name_len > notes.size() - pos || desc_len > notes.size() - pos - name_len) break;
    const auto name = notes.subspan(pos, nh.n_namesz);
    const auto desc = notes.subspan(pos + name_len, nh.n_descsz);
    pos += name_len + desc_len;
    static constexpr uint8_t kXen[] = {'X', 'e', 'n', 0};
    if (nh.n_type != kXenElfNotePhys32Entry || name.size() != sizeof(kXen) ||
        std::memcmp(name.data(), kXen, sizeof(kXen)) != 0) {
      continue;
    }
    uint64_t entry = 0;
    if (desc.size() == 4) {
      entry = read_struct<uint32_t>(desc, 0);
    } else if (desc.size() == 8) {
      entry = read_struct<uint64_t>(desc, 0);
    } else {
      throw Error(fmt::format(
          "ELF kernel's PVH entry note (Xen, PHYS32_ENTRY) has a {}-byte descriptor, expected 4 "
          "or 8; the file is corrupt",
          desc.size()));
    }
    if (entry > UINT32_MAX) {
      throw Error(fmt::format(
          "ELF kernel's PVH entry {:#x} is above 4 GiB; the 32-bit entry cannot reach it", entry));
    }
    return entry;
  }
  return std::nullopt;
}

std::optional<uint64_t> find_pvh_entry(std::span<const uint8_t> file) {
  (void)parse_elf64(file);  // validates the header and the program header table
  const auto eh = read_struct<Elf64_Ehdr>(file, 0);
  for (uint64_t i = 0; i < eh.e_phnum; ++i) {
    const auto ph = read_struct<Elf64_Phdr>(file, eh.e_phoff + i * eh.e_phentsize);
    if (ph.p_type != PT_NOTE || ph.p_filesz == 0) continue;
    if (ph.p_offset > file.size() || ph.p_filesz > file.size() - ph.p_offset) {
      throw Error(fmt::format(
          "ELF kernel note segment {} (file offset {:#x}, {} bytes) extends past the {}-byte "
          "file; the file is truncated, re-copy it",
          i, ph.p_offset, ph.p_filesz, file.size()));
    }
    if (auto entry = parse_pvh_note(file.subspan(ph.p_offset, ph.p_filesz))) return entry;
  }
  return std::nullopt;
}

ElfImage parse_elf64(std::span<const uint8_t> file) {
  return parse_elf64_headers(file, file.size());
}

ElfImage parse_elf64_headers(std::span<const uint8_t> head, uint64_t file_size) {
  if (!is_elf(head)) {
    throw Error("kernel image is not an ELF file (no \\x7fELF magic); pass an x86-64 vmlinux");
  }
  if (head.size() < sizeof(Elf64_Ehdr)) {
    throw Error(fmt::format(
        "ELF kernel is truncated: {} bytes is shorter than the 64-byte ELF header; re-copy it",
        head.size()));
  }
  const auto eh = read_struct<Elf64_Ehdr>(head, 0);
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
  if (eh.e_phoff > file_size || table_size > file_size - eh.e_phoff) {
    throw Error(fmt::format(
        "ELF kernel is truncated: program headers at offset {:#x} ({} bytes) end past the "
        "{}-byte file; re-copy it",
        eh.e_phoff, table_size, file_size));
  }
  if (eh.e_phoff + table_size > head.size()) {
    throw Error(fmt::format("internal: ELF headers parsed from {} bytes, program headers end at {}",
                            head.size(), eh.e_phoff + table_size));
  }

  ElfImage image;
  for (uint64_t i = 0; i < eh.e_phnum; ++i) {
    const auto ph = read_struct<Elf64_Phdr>(head, eh.e_phoff + i * eh.e_phentsize);
    if (ph.p_type != PT_LOAD || ph.p_memsz == 0) continue;
    if (ph.p_filesz > ph.p_memsz) {
      throw Error(fmt::format(
          "ELF kernel segment {} has p_filesz {:#x} > p_memsz {:#x}; the file is corrupt", i,
          ph.p_filesz, ph.p_memsz));
    }
    if (ph.p_offset > file_size || ph.p_filesz > file_size - ph.p_offset) {
      throw Error(fmt::format(
          "ELF kernel segment {} (file offset {:#x}, {} bytes) extends past the {}-byte file; "
          "the file is truncated, re-copy it",
          i, ph.p_offset, ph.p_filesz, file_size));
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

namespace {

// Everything that could make loading fail, checked before the first byte is written.
void check_placement(const GuestMemory& memory, const ElfImage& image) {
  for (size_t i = 0; i < image.segments.size(); ++i) {
    const auto& s = image.segments[i];
    const uint64_t end = s.paddr + s.memsz;  // no overflow: checked by parse_elf64_headers
    if (s.paddr < layout::kLowRamEnd) {
      throw Error(fmt::format(
          "kernel ELF segment {} at {} overlaps pier's boot area below 1 MiB (zero page, page "
          "tables, ACPI tables); link the kernel at or above {:#x}",
          i, range(s.paddr, end), layout::kLowRamEnd));
    }
    if (!memory.contains(s.paddr, s.memsz)) throw_outside_ram(memory, i, s.paddr, end);
  }
}

// Copies the part of [offset, offset + bytes.size()) of the file that lies in segments' file
// ranges to their guest addresses (a byte in two segments goes to both).
void copy_to_segments(const GuestMemory& memory, const ElfImage& image, uint64_t offset,
                      std::span<const uint8_t> bytes) {
  const uint64_t end = offset + bytes.size();
  for (const auto& s : image.segments) {
    const uint64_t lo = std::max(offset, s.offset);
    const uint64_t hi = std::min(end, s.offset + s.filesz);  // offset + filesz <= file size
    if (lo >= hi) continue;
    memory.load(s.paddr + (lo - s.offset), bytes.subspan(lo - offset, hi - lo),
                "kernel ELF segment");
  }
}

void zero_bss(const GuestMemory& memory, const ElfImage& image) {
  for (const auto& s : image.segments) {
    memory.fill(s.paddr + s.filesz, s.memsz - s.filesz, 0, "kernel ELF bss");
  }
}

// Program headers further into a file than this are not worth buffering a stream for; linkers
// put them right after the ELF header.
constexpr uint64_t kMaxStreamHeaderBytes = uint64_t{1} << 20;

}  // namespace

void load_elf(const GuestMemory& memory, std::span<const uint8_t> file, const ElfImage& image) {
  check_placement(memory, image);
  for (const auto& s : image.segments) {
    if (s.offset > file.size() || s.filesz > file.size() - s.offset) {
      throw Error("internal: ELF segment outside the file it was parsed from");
    }
  }
  copy_to_segments(memory, image, 0, file);
  zero_bss(memory, image);
}

ElfStreamLoader::ElfStreamLoader(const GuestMemory& memory, uint64_t file_size, std::string what)
    : memory_(memory), file_size_(file_size), what_(std::move(what)) {}

void ElfStreamLoader::write(std::span<const uint8_t> chunk) {
  if (chunk.size() > file_size_ - received_) {
    throw Error(fmt::format("internal: {} stream is longer than {} bytes", what_, file_size_));
  }
  const uint64_t offset = received_;
  received_ += chunk.size();
  if (image_) {
    copy_to_segments(memory_, *image_, offset, chunk);
    return;
  }
  head_.insert(head_.end(), chunk.begin(), chunk.end());
  if (head_.size() >= SELFMAG && !is_elf(head_)) parse_headers();  // throws: fail early
  if (head_.size() < sizeof(Elf64_Ehdr)) return;
  const auto eh = read_struct<Elf64_Ehdr>(head_, 0);
  const uint64_t table_size = uint64_t{eh.e_phnum} * eh.e_phentsize;
  // Past the end of the file: let the parser say why. Otherwise wait for the whole table.
  const bool impossible = eh.e_phoff > file_size_ || table_size > file_size_ - eh.e_phoff;
  const uint64_t needed = impossible ? 0 : eh.e_phoff + table_size;
  if (!impossible && needed > head_.size()) {
    if (needed > kMaxStreamHeaderBytes) {
      throw Error(
          fmt::format("{}: ELF program headers end at offset {:#x}, beyond the first "
                      "{} bytes pier reads them from; relink the kernel",
                      what_, needed, kMaxStreamHeaderBytes));
    }
    return;
  }
  parse_headers();
}

void ElfStreamLoader::parse_headers() {
  try {
    image_ = parse_elf64_headers(head_, file_size_);
  } catch (const Error& e) {
    throw Error(fmt::format("{} does not hold a usable kernel: {}", what_, e.what()));
  }
  check_placement(memory_, *image_);
  copy_to_segments(memory_, *image_, 0, head_);
  head_ = {};
}

ElfImage ElfStreamLoader::finish() {
  if (received_ != file_size_) {
    throw Error(fmt::format("internal: {} stream ended after {} of {} bytes", what_, received_,
                            file_size_));
  }
  if (!image_) parse_headers();  // throws: the whole file is shorter than its headers
  zero_bss(memory_, *image_);
  return *image_;
}

}  // namespace pier::boot
