#include "boot/cpu_setup.hpp"

#include <gtest/gtest.h>

#include "boot/layout.hpp"

namespace pier::boot {
namespace {

TEST(Gdt, EntryEncodingMatchesTheArchitecture) {
  // Known values (Firecracker's gdt.rs tests / the SDM): flat 64-bit code and data.
  EXPECT_EQ(gdt_entry(0xa09b, 0, 0xfffff), 0x00af9b000000ffffull);
  EXPECT_EQ(gdt_entry(0xc093, 0, 0xfffff), 0x00cf93000000ffffull);
  EXPECT_EQ(gdt_entry(0x808b, 0x12345678, 0x67), 0x12808b345678'0067ull);
}

TEST(Gdt, SegmentDecodingGivesKvmFields) {
  const kvm_segment code = segment_from_gdt_entry(gdt_entry(0xa09b, 0, 0xfffff), 0x10);
  EXPECT_EQ(code.selector, 0x10);
  EXPECT_EQ(code.type, 0xb);
  EXPECT_EQ(code.s, 1);
  EXPECT_EQ(code.present, 1);
  EXPECT_EQ(code.l, 1);
  EXPECT_EQ(code.db, 0);
  EXPECT_EQ(code.g, 1);
  EXPECT_EQ(code.limit, 0xffffffffu);
  const kvm_segment data = segment_from_gdt_entry(gdt_entry(0xc093, 0, 0xfffff), 0x18);
  EXPECT_EQ(data.type, 0x3);
  EXPECT_EQ(data.db, 1);
  EXPECT_EQ(data.l, 0);
  const kvm_segment tss = segment_from_gdt_entry(gdt_entry(0x008b, 0, 0x67), 0x20);
  EXPECT_EQ(tss.type, 0xb);
  EXPECT_EQ(tss.s, 0);
  EXPECT_EQ(tss.limit, 0x67u);
  const kvm_segment null = segment_from_gdt_entry(0, 0);
  EXPECT_EQ(null.unusable, 1);
}

TEST(Gdt, BootGdtHasBootSelectorsWhereLinuxExpectsThem) {
  auto mem = GuestMemory::create(64 << 20);
  write_boot_gdt_and_idt(mem);
  EXPECT_EQ(mem.read_obj<uint64_t>(layout::kBootGdt + kBootCodeSelector), 0x00af9b000000ffffull);
  EXPECT_EQ(mem.read_obj<uint64_t>(layout::kBootGdt + kBootDataSelector), 0x00cf93000000ffffull);
  EXPECT_EQ(mem.read_obj<uint64_t>(layout::kBootGdt), 0u);
  EXPECT_EQ(mem.read_obj<uint64_t>(layout::kBootIdt), 0u);
}

TEST(BiosResetStub, AtTheResetVectorItWritesTheAcpiResetRegister) {
  auto mem = GuestMemory::create(64 << 20);
  write_bios_reset_stub(mem);
  const auto stub = bios_reset_stub();
  for (size_t i = 0; i < stub.size(); ++i) {
    EXPECT_EQ(mem.read_obj<uint8_t>(layout::kBiosResetVector + i), stub[i]) << i;
  }
  // mov dx, imm16; mov al, imm8; out dx, al -- with FADT's reset register and value.
  EXPECT_EQ(stub[0], 0xba);
  EXPECT_EQ(stub[1] | (stub[2] << 8), layout::kAcpiReset);
  EXPECT_EQ(stub[3], 0xb0);
  EXPECT_EQ(stub[4], layout::kAcpiResetValue);
  EXPECT_EQ(stub[5], 0xee);
  // F000:FFF0, inside the e820-reserved legacy window, after the ACPI tables' room.
  EXPECT_EQ(layout::kBiosResetVector, (0xf000u << 4) + 0xfff0u);
  EXPECT_GE(layout::kBiosResetVector, layout::kAcpiEnd);
}

TEST(PageTables, IdentityMapOfFourGibWithTwoMibPages) {
  auto mem = GuestMemory::create(64 << 20);
  write_identity_page_tables(mem);
  EXPECT_EQ(mem.read_obj<uint64_t>(layout::kPml4), layout::kPdpt | 0x3);
  EXPECT_EQ(mem.read_obj<uint64_t>(layout::kPml4 + 8), 0u);
  for (uint64_t i = 0; i < 4; ++i) {
    EXPECT_EQ(mem.read_obj<uint64_t>(layout::kPdpt + i * 8), (layout::kPageDirs + i * 4096) | 0x3);
  }
  EXPECT_EQ(mem.read_obj<uint64_t>(layout::kPdpt + 4 * 8), 0u);
  // Walk a few addresses: PD index -> 2 MiB frame, present|writable|PS.
  for (uint64_t addr : {0ull, 0x200000ull, 0x1000000ull, 0xbfe00000ull, 0xfee00000ull}) {
    const uint64_t pd = layout::kPageDirs + (addr >> 30) * 4096;
    const uint64_t pde = *mem.read_obj<uint64_t>(pd + ((addr >> 21) & 511) * 8);
    EXPECT_EQ(pde, addr | 0x83) << std::hex << addr;
  }
}

TEST(LongMode, SregsAndRegsFollowTheBootProtocol) {
  kvm_sregs sregs{};
  set_long_mode_sregs(sregs);
  EXPECT_EQ(sregs.cs.selector, 0x10);
  EXPECT_EQ(sregs.ds.selector, 0x18);
  EXPECT_EQ(sregs.ss.selector, 0x18);
  EXPECT_EQ(sregs.cr3, layout::kPml4);
  EXPECT_TRUE(sregs.cr0 & 1);
  EXPECT_TRUE(sregs.cr0 & (1ull << 31));
  EXPECT_TRUE(sregs.cr4 & (1ull << 5));
  EXPECT_EQ(sregs.efer & 0x500, 0x500u);
  EXPECT_EQ(sregs.gdt.base, layout::kBootGdt);
  EXPECT_EQ(sregs.tr.selector, kBootTssSelector);

  const kvm_regs regs = boot_regs(0x1000000, layout::kZeroPage);
  EXPECT_EQ(regs.rip, 0x1000000u);
  EXPECT_EQ(regs.rsi, layout::kZeroPage);
  EXPECT_EQ(regs.rflags, 2u);
  EXPECT_EQ(boot_fpu().fcw, 0x37f);
  EXPECT_EQ(boot_fpu().mxcsr, 0x1f80u);
}

TEST(Cpuid, ApicIdAndHypervisorBitPerVcpu) {
  std::vector<kvm_cpuid_entry2> entries(2);
  entries[0].function = 1;
  entries[0].ebx = 0xff00'0800;
  entries[1].function = 0xb;
  normalize_cpuid(entries, 3, 4);
  EXPECT_EQ(entries[0].ebx >> 24, 3u);
  EXPECT_EQ((entries[0].ebx >> 16) & 0xff, 4u);
  EXPECT_EQ(entries[0].ebx & 0xffff, 0x0800u);
  EXPECT_TRUE(entries[0].ecx & (1u << 31));
  EXPECT_EQ(entries[1].edx, 3u);
}

TEST(Msrs, BootListSetsMtrrDefaultWriteBack) {
  bool found = false;
  for (const auto& m : boot_msrs()) {
    if (m.index == 0x2ff) {
      found = true;
      EXPECT_EQ(m.data, (1u << 11) | 6u);
    }
  }
  EXPECT_TRUE(found);
}

}  // namespace
}  // namespace pier::boot
