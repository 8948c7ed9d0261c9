#include "boot/elf.hpp"

#include <elf.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "boot/layout.hpp"
#include "vmm/error.hpp"

namespace pier::boot {

namespace test_images {

struct SegmentSpec {
  uint64_t paddr = 0;
  uint64_t vaddr = 0;
  std::vector<uint8_t> data;  // p_filesz bytes
  uint64_t memsz = 0;
  uint32_t type = PT_LOAD;
};

// An ELF64 x86-64 executable: header, program headers, then each segment's bytes, then `tail`
// (a real vmlinux.bin is followed by its relocation table in the payload).
std::vector<uint8_t> build_elf(uint64_t entry, const std::vector<SegmentSpec>& segments,
                               size_t tail = 0) {
  Elf64_Ehdr eh{};
  std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
  eh.e_ident[EI_CLASS] = ELFCLASS64;
  eh.e_ident[EI_DATA] = ELFDATA2LSB;
  eh.e_ident[EI_VERSION] = EV_CURRENT;
  eh.e_type = ET_EXEC;
  eh.e_machine = EM_X86_64;
  eh.e_version = EV_CURRENT;
  eh.e_entry = entry;
  eh.e_phoff = sizeof(Elf64_Ehdr);
  eh.e_ehsize = sizeof(Elf64_Ehdr);
  eh.e_phentsize = sizeof(Elf64_Phdr);
  eh.e_phnum = static_cast<uint16_t>(segments.size());

  std::vector<uint8_t> out(sizeof(eh) + segments.size() * sizeof(Elf64_Phdr));
  std::memcpy(out.data(), &eh, sizeof(eh));
  for (size_t i = 0; i < segments.size(); ++i) {
    const auto& s = segments[i];
    out.resize((out.size() + 15) & ~size_t{15});
    Elf64_Phdr ph{};
    ph.p_type = s.type;
    ph.p_flags = PF_R | PF_X;
    ph.p_offset = out.size();
    ph.p_vaddr = s.vaddr;
    ph.p_paddr = s.paddr;
    ph.p_filesz = s.data.size();
    ph.p_memsz = s.memsz;
    ph.p_align = 16;
    std::memcpy(out.data() + sizeof(eh) + i * sizeof(ph), &ph, sizeof(ph));
    out.insert(out.end(), s.data.begin(), s.data.end());
  }
  out.resize(out.size() + tail, 0xee);
  return out;
}

std::vector<uint8_t> pattern(size_t size, uint8_t seed) {
  std::vector<uint8_t> v(size);
  for (size_t i = 0; i < size; ++i) v[i] = static_cast<uint8_t>(seed + i * 7 + (i >> 9));
  return v;
}

// A vmlinux-shaped kernel for kernel_loader_test.cpp: text at `paddr` (linked high, like
// vmlinux, with the entry a physical address), a data segment with bss after it, a PT_NOTE, and
// a relocation-table-sized tail.
std::vector<uint8_t> make_kernel_elf(uint64_t paddr, size_t text_size, size_t bss_size) {
  constexpr uint64_t kVirtualBase = 0xffffffff80000000;
  const uint64_t data_paddr = paddr + ((text_size + 0xfff) & ~uint64_t{0xfff});
  return build_elf(paddr,
                   {{.paddr = paddr,
                     .vaddr = kVirtualBase + paddr,
                     .data = pattern(text_size, 1),
                     .memsz = text_size},
                    {.paddr = 0, .vaddr = 0, .data = pattern(32, 9), .memsz = 32, .type = PT_NOTE},
                    {.paddr = data_paddr,
                     .vaddr = kVirtualBase + data_paddr,
                     .data = pattern(4096, 2),
                     .memsz = 4096 + bss_size}},
                   1000);
}

}  // namespace test_images

namespace {

using layout::GiB;
using layout::MiB;
using test_images::build_elf;
using test_images::pattern;
using test_images::SegmentSpec;

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected pier::Error";
  return {};
}

void expect_contains(const std::string& message, std::string_view part) {
  EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
}

template <class T>
void poke(std::vector<uint8_t>& file, uint64_t offset, T value) {
  std::memcpy(file.data() + offset, &value, sizeof(T));
}

// Offset of program header `i`'s field at `field` in a file made by build_elf.
uint64_t phdr(size_t i, size_t field) {
  return sizeof(Elf64_Ehdr) + i * sizeof(Elf64_Phdr) + field;
}

std::vector<uint8_t> two_segment_elf() {
  return build_elf(
      0x200010, {{.paddr = 0x200000, .vaddr = 0x200000, .data = pattern(5000, 3), .memsz = 5000},
                 {.paddr = 0x100000, .vaddr = 0x100000, .data = pattern(100, 4), .memsz = 0x3000}});
}

TEST(Elf, ParsesLoadSegmentsSortedByAddress) {
  const auto file = two_segment_elf();
  ASSERT_TRUE(is_elf(file));
  const ElfImage image = parse_elf64(file);
  EXPECT_EQ(image.entry, 0x200010u);
  ASSERT_EQ(image.segments.size(), 2u);
  EXPECT_EQ(image.segments[0].paddr, 0x100000u);
  EXPECT_EQ(image.segments[0].filesz, 100u);
  EXPECT_EQ(image.segments[0].memsz, 0x3000u);
  EXPECT_EQ(image.segments[1].paddr, 0x200000u);
  EXPECT_EQ(image.lowest_paddr, 0x100000u);
  EXPECT_EQ(image.highest_end, 0x200000u + 5000);
}

TEST(Elf, SkipsNonLoadAndEmptySegmentsAndToleratesTrailingData) {
  const auto file = test_images::make_kernel_elf(16 * MiB, 10000, 50000);
  const ElfImage image = parse_elf64(file);
  ASSERT_EQ(image.segments.size(), 2u);  // the PT_NOTE is not loaded
  EXPECT_EQ(image.entry, 16 * MiB);
  EXPECT_EQ(image.highest_end, 16 * MiB + 0x3000 + 4096 + 50000);
}

TEST(Elf, TranslatesAVirtualEntryPoint) {
  auto file = build_elf(
      0xffffffff81000040,
      {{.paddr = 0x1000000, .vaddr = 0xffffffff81000000, .data = pattern(256, 5), .memsz = 256}});
  EXPECT_EQ(parse_elf64(file).entry, 0x1000040u);
}

TEST(Elf, LoadsSegmentsAndZeroesBss) {
  auto memory = GuestMemory::create(64 * MiB);
  memory.fill(0x100000, 0x4000, 0xaa, "dirt");  // bss must be zeroed, not assumed zero
  const auto file = two_segment_elf();
  load_elf(memory, file, parse_elf64(file));
  std::vector<uint8_t> got(100);
  ASSERT_TRUE(memory.read(0x100000, got));
  EXPECT_EQ(got, pattern(100, 4));
  got.resize(0x3000 - 100);
  ASSERT_TRUE(memory.read(0x100000 + 100, got));
  EXPECT_EQ(got, std::vector<uint8_t>(0x3000 - 100, 0));
  EXPECT_EQ(memory.read_obj<uint8_t>(0x103000), 0xaa);  // past memsz: untouched
  got.resize(5000);
  ASSERT_TRUE(memory.read(0x200000, got));
  EXPECT_EQ(got, pattern(5000, 3));
}

TEST(Elf, RejectsFilesThatAreNotX86_64Executables) {
  EXPECT_FALSE(is_elf(std::vector<uint8_t>{0x7f, 'E', 'L'}));
  expect_contains(error_of([] { parse_elf64(std::vector<uint8_t>(100, 0)); }), "not an ELF");

  auto file = two_segment_elf();
  auto truncated = std::vector<uint8_t>(file.begin(), file.begin() + 40);
  expect_contains(error_of([&] { parse_elf64(truncated); }), "truncated");

  auto bad = file;
  bad[EI_CLASS] = ELFCLASS32;
  expect_contains(error_of([&] { parse_elf64(bad); }), "64-bit little-endian");
  bad = file;
  bad[EI_DATA] = ELFDATA2MSB;
  expect_contains(error_of([&] { parse_elf64(bad); }), "64-bit little-endian");

  bad = file;
  poke<uint16_t>(bad, offsetof(Elf64_Ehdr, e_machine), EM_AARCH64);
  auto msg = error_of([&] { parse_elf64(bad); });
  expect_contains(msg, "machine 183");
  expect_contains(msg, "pass an x86-64 vmlinux");

  for (const uint16_t type : {ET_REL, ET_DYN, ET_CORE}) {
    bad = file;
    poke<uint16_t>(bad, offsetof(Elf64_Ehdr, e_type), type);
    expect_contains(error_of([&] { parse_elf64(bad); }), "not an executable");
  }
  bad = file;
  poke<uint32_t>(bad, offsetof(Elf64_Ehdr, e_version), 7);
  expect_contains(error_of([&] { parse_elf64(bad); }), "ELF version");
}

TEST(Elf, RejectsBadProgramHeaderTables) {
  const auto file = two_segment_elf();
  auto bad = file;
  poke<uint16_t>(bad, offsetof(Elf64_Ehdr, e_phnum), 0);
  expect_contains(error_of([&] { parse_elf64(bad); }), "no program headers");
  bad = file;
  poke<uint16_t>(bad, offsetof(Elf64_Ehdr, e_phnum), PN_XNUM);
  expect_contains(error_of([&] { parse_elf64(bad); }), "PN_XNUM");
  bad = file;
  poke<uint16_t>(bad, offsetof(Elf64_Ehdr, e_phentsize), 32);
  expect_contains(error_of([&] { parse_elf64(bad); }), "program header size 32");
  bad = file;
  poke<uint64_t>(bad, offsetof(Elf64_Ehdr, e_phoff), file.size() - 60);
  expect_contains(error_of([&] { parse_elf64(bad); }), "truncated");
  bad = file;
  poke<uint64_t>(bad, offsetof(Elf64_Ehdr, e_phoff), UINT64_MAX - 8);  // would wrap when added
  expect_contains(error_of([&] { parse_elf64(bad); }), "truncated");
  bad = file;
  poke<uint16_t>(bad, offsetof(Elf64_Ehdr, e_phnum), 1000);
  expect_contains(error_of([&] { parse_elf64(bad); }), "truncated");
}

TEST(Elf, RejectsBadSegments) {
  const auto file = two_segment_elf();
  auto bad = file;
  poke<uint64_t>(bad, phdr(0, offsetof(Elf64_Phdr, p_filesz)), 6000);  // memsz is 5000
  expect_contains(error_of([&] { parse_elf64(bad); }), "p_filesz 0x1770 > p_memsz 0x1388");

  bad = file;
  poke<uint64_t>(bad, phdr(0, offsetof(Elf64_Phdr, p_offset)), file.size() - 10);
  expect_contains(error_of([&] { parse_elf64(bad); }), "extends past the");

  bad = file;  // offset + filesz wraps around 2^64
  poke<uint64_t>(bad, phdr(0, offsetof(Elf64_Phdr, p_offset)), UINT64_MAX - 100);
  expect_contains(error_of([&] { parse_elf64(bad); }), "extends past the");

  bad = file;  // filesz near 2^64 with a small offset
  poke<uint64_t>(bad, phdr(0, offsetof(Elf64_Phdr, p_filesz)), UINT64_MAX - 1);
  poke<uint64_t>(bad, phdr(0, offsetof(Elf64_Phdr, p_memsz)), UINT64_MAX);
  expect_contains(error_of([&] { parse_elf64(bad); }), "extends past the");

  bad = file;  // paddr + memsz wraps
  poke<uint64_t>(bad, phdr(1, offsetof(Elf64_Phdr, p_paddr)), UINT64_MAX - 0x1000);
  expect_contains(error_of([&] { parse_elf64(bad); }), "wraps around");

  bad = file;  // the second segment's bss runs into the first segment
  poke<uint64_t>(bad, phdr(1, offsetof(Elf64_Phdr, p_memsz)), 0x100001);
  expect_contains(error_of([&] { parse_elf64(bad); }), "overlap");

  bad = file;
  poke<uint64_t>(bad, offsetof(Elf64_Ehdr, e_entry), 0x5000000);
  expect_contains(error_of([&] { parse_elf64(bad); }), "entry point 0x5000000 is outside");

  bad = file;  // no PT_LOAD at all
  poke<uint32_t>(bad, phdr(0, offsetof(Elf64_Phdr, p_type)), PT_NOTE);
  poke<uint32_t>(bad, phdr(1, offsetof(Elf64_Phdr, p_type)), PT_DYNAMIC);
  expect_contains(error_of([&] { parse_elf64(bad); }), "no PT_LOAD segments");
}

TEST(Elf, LoadRejectsSegmentsBelow1MiB) {
  auto memory = GuestMemory::create(64 * MiB);
  const auto file =
      build_elf(0x8000, {{.paddr = 0x8000, .vaddr = 0x8000, .data = pattern(64, 1), .memsz = 64}});
  const auto msg = error_of([&] { load_elf(memory, file, parse_elf64(file)); });
  expect_contains(msg, "boot area below 1 MiB");
  expect_contains(msg, "link the kernel at or above 0x100000");
  EXPECT_EQ(memory.read_obj<uint8_t>(0x8000), 0);
}

TEST(Elf, LoadRejectsSegmentsOutsideRamWithoutTouchingMemory) {
  auto memory = GuestMemory::create(64 * MiB);
  // The first segment fits; the second ends 4 MiB past the end of RAM.
  const auto file = build_elf(
      0x100000, {{.paddr = 0x100000, .vaddr = 0x100000, .data = pattern(64, 1), .memsz = 64},
                 {.paddr = 60 * MiB, .vaddr = 60 * MiB, .data = pattern(64, 2), .memsz = 8 * MiB}});
  const auto msg = error_of([&] { load_elf(memory, file, parse_elf64(file)); });
  expect_contains(msg, "beyond guest RAM (64 MiB)");
  expect_contains(msg, "use --memory of at least 68 MiB");
  EXPECT_EQ(memory.read_obj<uint8_t>(0x100000), 0);  // validated before anything was written
}

TEST(Elf, LoadRejectsSegmentsInTheMmioHoleAndAbove4GiB) {
  auto memory = GuestMemory::create(3 * GiB + 64 * MiB);  // 64 MiB above 4 GiB
  auto file = build_elf(layout::kMmioHoleStart - 4096, {{.paddr = layout::kMmioHoleStart - 4096,
                                                         .vaddr = 0,
                                                         .data = pattern(64, 1),
                                                         .memsz = 8192}});
  expect_contains(error_of([&] { load_elf(memory, file, parse_elf64(file)); }),
                  "overlaps the 32-bit MMIO hole");

  file = build_elf(layout::kHighRamStart + 32 * MiB, {{.paddr = layout::kHighRamStart + 32 * MiB,
                                                       .vaddr = 0,
                                                       .data = pattern(64, 1),
                                                       .memsz = 64 * MiB}});
  expect_contains(error_of([&] { load_elf(memory, file, parse_elf64(file)); }),
                  "use --memory of at least 3168 MiB");  // 3 GiB below the hole + 96 MiB

  // Above 4 GiB inside RAM is fine.
  file = build_elf(
      layout::kHighRamStart,
      {{.paddr = layout::kHighRamStart, .vaddr = 0, .data = pattern(64, 1), .memsz = 64}});
  EXPECT_NO_THROW(load_elf(memory, file, parse_elf64(file)));
  EXPECT_EQ(memory.read_obj<uint8_t>(layout::kHighRamStart), pattern(1, 1)[0]);
}

// ---- ElfStreamLoader: the same result from a stream in arbitrary pieces. ----

void stream(ElfStreamLoader& loader, std::span<const uint8_t> file, size_t piece) {
  for (size_t pos = 0; pos < file.size(); pos += piece) {
    loader.write(file.subspan(pos, std::min(piece, file.size() - pos)));
  }
}

TEST(ElfStream, LoadsLikeLoadElfWhateverTheChunking) {
  auto file = test_images::make_kernel_elf(16 * MiB, 10000, 50000);
  auto reference = GuestMemory::create(64 * MiB);
  reference.fill(16 * MiB, 0x20000, 0xcc, "dirt");
  load_elf(reference, file, parse_elf64(file));
  const auto expected = *reference.slice(16 * MiB, 0x20000);
  for (const size_t piece : {size_t{1}, size_t{7}, size_t{63}, size_t{4096}, file.size()}) {
    SCOPED_TRACE(piece);
    auto memory = GuestMemory::create(64 * MiB);
    memory.fill(16 * MiB, 0x20000, 0xcc, "dirt");  // bss must be zeroed by finish()
    ElfStreamLoader loader(memory, file.size(), "test stream");
    stream(loader, file, piece);
    const ElfImage image = loader.finish();
    EXPECT_EQ(image.entry, 16 * MiB);
    EXPECT_EQ(image.segments.size(), 2u);
    const auto got = *memory.slice(16 * MiB, 0x20000);
    EXPECT_TRUE(std::equal(got.begin(), got.end(), expected.begin()));
    EXPECT_EQ(got[image.highest_end - 16 * MiB], 0xcc);  // past the bss: untouched
  }
}

TEST(ElfStream, SegmentsThatIncludeTheHeadersGetThemToo) {
  // Like many linker scripts: the first PT_LOAD starts at file offset 0.
  auto file = two_segment_elf();
  const uint64_t data_offset =
      *reinterpret_cast<const uint64_t*>(file.data() + phdr(0, offsetof(Elf64_Phdr, p_offset)));
  poke<uint64_t>(file, phdr(0, offsetof(Elf64_Phdr, p_offset)), 0);
  poke<uint64_t>(file, phdr(0, offsetof(Elf64_Phdr, p_filesz)), data_offset + 5000);
  poke<uint64_t>(file, phdr(0, offsetof(Elf64_Phdr, p_memsz)), data_offset + 5000);
  auto memory = GuestMemory::create(64 * MiB);
  ElfStreamLoader loader(memory, file.size(), "test stream");
  stream(loader, file, 5);
  loader.finish();
  std::vector<uint8_t> got(data_offset + 5000);
  ASSERT_TRUE(memory.read(0x200000, got));
  EXPECT_TRUE(std::equal(got.begin(), got.end(), file.begin()));
}

TEST(ElfStream, RejectsANonElfStreamAtOnce) {
  auto memory = GuestMemory::create(64 * MiB);
  ElfStreamLoader loader(memory, 1 << 20, "bzImage payload");
  const std::vector<uint8_t> junk(8, 0x42);
  const auto msg = error_of([&] { loader.write(junk); });
  expect_contains(msg, "bzImage payload does not hold a usable kernel: kernel image is not an ELF");
}

TEST(ElfStream, RejectsStreamsThatEndBeforeTheHeaders) {
  auto memory = GuestMemory::create(64 * MiB);
  const auto file = two_segment_elf();
  ElfStreamLoader loader(memory, 40, "bzImage payload");
  loader.write(std::span(file).first(40));
  expect_contains(error_of([&] { loader.finish(); }), "truncated");

  ElfStreamLoader short_stream(memory, file.size(), "bzImage payload");
  short_stream.write(std::span(file).first(100));
  expect_contains(error_of([&] { short_stream.finish(); }), "stream ended after 100");

  ElfStreamLoader long_stream(memory, 10, "bzImage payload");
  EXPECT_THROW(long_stream.write(std::span(file).first(11)), Error);
}

TEST(ElfStream, RejectsProgramHeadersFarIntoTheFile) {
  auto memory = GuestMemory::create(64 * MiB);
  auto file = two_segment_elf();
  poke<uint64_t>(file, offsetof(Elf64_Ehdr, e_phoff), 2 << 20);
  ElfStreamLoader loader(memory, 4 << 20, "bzImage payload");
  expect_contains(error_of([&] { loader.write(file); }), "beyond the first 1048576 bytes");
}

TEST(ElfStream, ChecksPlacementBeforeWritingAnything) {
  auto memory = GuestMemory::create(64 * MiB);
  const auto file = build_elf(
      0x100000, {{.paddr = 0x100000, .vaddr = 0x100000, .data = pattern(64, 1), .memsz = 64},
                 {.paddr = 60 * MiB, .vaddr = 60 * MiB, .data = pattern(64, 2), .memsz = 8 * MiB}});
  ElfStreamLoader loader(memory, file.size(), "bzImage payload");
  expect_contains(error_of([&] { loader.write(file); }), "beyond guest RAM");
  EXPECT_EQ(memory.read_obj<uint8_t>(0x100000), 0);
}

}  // namespace
}  // namespace pier::boot
