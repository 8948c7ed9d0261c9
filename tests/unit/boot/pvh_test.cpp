// PVH boot: the ELF note parser, the start info builder, the 32-bit entry state, and the loader
// choosing the PVH entry for an ELF that carries the note.
#include "boot/pvh.hpp"

#include <elf.h>
#include <gtest/gtest.h>

#include <cstring>

#include "boot/cpu_setup.hpp"
#include "boot/elf.hpp"
#include "boot/kernel_loader.hpp"
#include "boot/layout.hpp"
#include "vmm/error.hpp"

namespace pier::boot {

namespace test_images {  // elf_test.cpp
struct SegmentSpec {
  uint64_t paddr = 0;
  uint64_t vaddr = 0;
  std::vector<uint8_t> data;
  uint64_t memsz = 0;
  uint32_t type = PT_LOAD;
};
std::vector<uint8_t> build_elf(uint64_t entry, const std::vector<SegmentSpec>& segments,
                               size_t tail = 0);
}  // namespace test_images

namespace {

using layout::MiB;

void put32(std::vector<uint8_t>& v, uint32_t x) {
  for (int i = 0; i < 4; ++i) v.push_back(static_cast<uint8_t>(x >> (8 * i)));
}

// One ELF note: header, name padded to 4, descriptor padded to 4.
std::vector<uint8_t> note(const std::string& name, uint32_t type, std::vector<uint8_t> desc) {
  std::vector<uint8_t> v;
  put32(v, static_cast<uint32_t>(name.size() + 1));
  put32(v, static_cast<uint32_t>(desc.size()));
  put32(v, type);
  v.insert(v.end(), name.begin(), name.end());
  v.push_back(0);
  while (v.size() % 4) v.push_back(0);
  v.insert(v.end(), desc.begin(), desc.end());
  while (v.size() % 4) v.push_back(0);
  return v;
}

std::vector<uint8_t> le32(uint32_t x) {
  std::vector<uint8_t> v;
  put32(v, x);
  return v;
}

std::vector<uint8_t> cat(std::vector<uint8_t> a, const std::vector<uint8_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

template <class T>
T get(const PvhStartInfo& p, size_t off) {
  T v;
  std::memcpy(&v, p.data() + off, sizeof(T));
  return v;
}

TEST(PvhNote, FindsTheXenPhys32EntryAmongOtherNotes) {
  const auto notes = cat(cat(note("GNU", 3, {1, 2, 3, 4, 5, 6, 7, 8}), note("Xen", 5, le32(7))),
                         note("Xen", kXenElfNotePhys32Entry, le32(0x1000123)));
  EXPECT_EQ(parse_pvh_note(notes), 0x1000123u);
}

TEST(PvhNote, AcceptsAnEightByteDescriptor) {
  std::vector<uint8_t> d = le32(0x200000);
  d.resize(8, 0);
  EXPECT_EQ(parse_pvh_note(note("Xen", kXenElfNotePhys32Entry, d)), 0x200000u);
}

TEST(PvhNote, NoneWithoutTheNoteOrWithAnotherName) {
  EXPECT_FALSE(parse_pvh_note({}).has_value());
  EXPECT_FALSE(parse_pvh_note(note("Xe", kXenElfNotePhys32Entry, le32(1))).has_value());
  EXPECT_FALSE(parse_pvh_note(note("XenX", kXenElfNotePhys32Entry, le32(1))).has_value());
  EXPECT_FALSE(parse_pvh_note(note("Xen", 17, le32(1))).has_value());
}

TEST(PvhNote, TruncatedRecordsStopTheWalkQuietly) {
  auto n = note("Xen", kXenElfNotePhys32Entry, le32(0x1234));
  for (size_t cut = 0; cut < n.size(); ++cut) {
    EXPECT_FALSE(parse_pvh_note(std::span(n).first(cut)).has_value()) << cut;
  }
  // A huge namesz must not overflow the bounds check.
  std::vector<uint8_t> huge;
  put32(huge, 0xfffffffe);
  put32(huge, 4);
  put32(huge, kXenElfNotePhys32Entry);
  EXPECT_FALSE(parse_pvh_note(huge).has_value());
}

TEST(PvhNote, BadDescriptorSizeOrEntryAbove4GiBIsAnError) {
  EXPECT_THROW(parse_pvh_note(note("Xen", kXenElfNotePhys32Entry, {1, 2})), Error);
  std::vector<uint8_t> high = le32(0);
  put32(high, 1);  // 0x1'0000'0000
  EXPECT_THROW(parse_pvh_note(note("Xen", kXenElfNotePhys32Entry, high)), Error);
}

std::vector<uint8_t> pvh_elf(uint32_t pvh_entry, bool with_note = true) {
  std::vector<test_images::SegmentSpec> segs;
  segs.push_back({.paddr = 2 * MiB,
                  .vaddr = 2 * MiB,
                  .data = std::vector<uint8_t>(4096, 0x90),
                  .memsz = 8192});
  if (with_note) {
    segs.push_back({.paddr = 0,
                    .vaddr = 0,
                    .data = note("Xen", kXenElfNotePhys32Entry, le32(pvh_entry)),
                    .memsz = 0,
                    .type = PT_NOTE});
  }
  return test_images::build_elf(2 * MiB + 0x10, segs);
}

TEST(PvhElf, FindPvhEntryReadsTheNoteSegment) {
  EXPECT_EQ(find_pvh_entry(pvh_elf(2 * MiB + 0x40)), 2 * MiB + 0x40);
  EXPECT_FALSE(find_pvh_entry(pvh_elf(0, false)).has_value());
}

TEST(PvhElf, LoaderEntersAtTheNoteInsteadOfTheElfEntry) {
  auto memory = GuestMemory::create(64 * MiB);
  const LoadedKernel k = load_kernel(memory, pvh_elf(2 * MiB + 0x40), BootMethod::kDirect);
  EXPECT_TRUE(k.pvh);
  EXPECT_EQ(k.entry, 2 * MiB + 0x40);
  const LoadedKernel plain = load_kernel(memory, pvh_elf(0, false), BootMethod::kDirect);
  EXPECT_FALSE(plain.pvh);
  EXPECT_EQ(plain.entry, 2 * MiB + 0x10);
}

TEST(PvhElf, EntryOutsideTheSegmentsIsRejected) {
  auto memory = GuestMemory::create(64 * MiB);
  EXPECT_THROW(load_kernel(memory, pvh_elf(16 * MiB), BootMethod::kDirect), Error);
}

TEST(PvhStartInfo, HeaderCmdlineRsdpModulesAndMemmap) {
  PvhStartInfoConfig c;
  c.address = layout::kPvhStartInfo;
  c.cmdline_address = layout::kCmdline;
  c.rsdp = 0xe0000;
  c.initrd_address = 32 * MiB;
  c.initrd_size = 12345;
  c.memmap = {{0, 0x9fc00, E820Type::kRam},
              {0x9fc00, 0x100000 - 0x9fc00, E820Type::kReserved},
              {MiB, 63 * MiB, E820Type::kRam}};
  const PvhStartInfo p = build_pvh_start_info(c);
  EXPECT_EQ(get<uint32_t>(p, 0), 0x336ec578u);
  EXPECT_EQ(get<uint32_t>(p, 4), 1u);
  EXPECT_EQ(get<uint32_t>(p, 8), 0u);
  EXPECT_EQ(get<uint32_t>(p, 12), 1u);
  EXPECT_EQ(get<uint64_t>(p, 16), layout::kPvhStartInfo + pvh::kModlistOffset);
  EXPECT_EQ(get<uint64_t>(p, 24), layout::kCmdline);
  EXPECT_EQ(get<uint64_t>(p, 32), 0xe0000u);
  EXPECT_EQ(get<uint64_t>(p, 40), layout::kPvhStartInfo + pvh::kMemmapOffset);
  EXPECT_EQ(get<uint32_t>(p, 48), 3u);
  EXPECT_EQ(get<uint64_t>(p, pvh::kModlistOffset), 32 * MiB);
  EXPECT_EQ(get<uint64_t>(p, pvh::kModlistOffset + 8), 12345u);
  const size_t e2 = pvh::kMemmapOffset + 2 * pvh::kMemmapEntrySize;
  EXPECT_EQ(get<uint64_t>(p, e2), MiB);
  EXPECT_EQ(get<uint64_t>(p, e2 + 8), 63 * MiB);
  EXPECT_EQ(get<uint32_t>(p, e2 + 16), 1u);
  EXPECT_EQ(get<uint32_t>(p, pvh::kMemmapOffset + pvh::kMemmapEntrySize + 16), 2u);
  static_assert(pvh::kStartInfoSize <= pvh::kModlistOffset);
  static_assert(pvh::kModlistOffset + pvh::kModlistEntrySize <= pvh::kMemmapOffset);
}

TEST(PvhStartInfo, NoInitrdMeansNoModules) {
  PvhStartInfoConfig c;
  c.address = layout::kPvhStartInfo;
  const PvhStartInfo p = build_pvh_start_info(c);
  EXPECT_EQ(get<uint32_t>(p, 12), 0u);
  EXPECT_EQ(get<uint64_t>(p, 16), 0u);
}

TEST(PvhStartInfo, TooManyMemmapEntriesIsAnError) {
  PvhStartInfoConfig c;
  c.memmap.resize(pvh::kMaxMemmapEntries + 1, {0, 4096, E820Type::kRam});
  EXPECT_THROW(build_pvh_start_info(c), Error);
  c.memmap.resize(pvh::kMaxMemmapEntries);
  EXPECT_NO_THROW(build_pvh_start_info(c));
}

TEST(PvhCpu, ProtectedModePagingOffFlatSegmentsEbxStartInfo) {
  kvm_sregs s{};
  set_pvh_sregs(s);
  EXPECT_EQ(s.cr0 & 0x80000001u, 1u);  // PE, not PG
  EXPECT_EQ(s.efer, 0u);
  EXPECT_EQ(s.cr4, 0u);
  EXPECT_EQ(s.cs.selector, kBootCode32Selector);
  EXPECT_EQ(s.cs.db, 1);
  EXPECT_EQ(s.cs.l, 0);
  EXPECT_EQ(s.cs.base, 0u);
  EXPECT_EQ(s.cs.limit, 0xffffffffu);
  EXPECT_EQ(s.ds.db, 1);
  EXPECT_EQ(s.ds.limit, 0xffffffffu);
  EXPECT_EQ(s.tr.type, 11);
  const kvm_regs r = pvh_regs(0x204000, layout::kPvhStartInfo);
  EXPECT_EQ(r.rip, 0x204000u);
  EXPECT_EQ(r.rbx, layout::kPvhStartInfo);
  EXPECT_EQ(r.rflags & 0x200, 0u);
}

}  // namespace
}  // namespace pier::boot
