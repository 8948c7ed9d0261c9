#include "boot/cpu_setup.hpp"

#include <array>

#include "boot/layout.hpp"

namespace pier::boot {
namespace {

constexpr uint64_t kCr0Pe = 1ull << 0;
constexpr uint64_t kCr0Mp = 1ull << 1;
constexpr uint64_t kCr0Et = 1ull << 4;
constexpr uint64_t kCr0Ne = 1ull << 5;
constexpr uint64_t kCr0Wp = 1ull << 16;
constexpr uint64_t kCr0Pg = 1ull << 31;
constexpr uint64_t kCr4Pae = 1ull << 5;
constexpr uint64_t kEferLme = 1ull << 8;
constexpr uint64_t kEferLma = 1ull << 10;

constexpr uint64_t kPresent = 1ull << 0;
constexpr uint64_t kWritable = 1ull << 1;
constexpr uint64_t kHugePage = 1ull << 7;

// GDT: null, unused, 64-bit code (L=1), flat data, 64-bit busy TSS (two slots).
constexpr std::array<uint64_t, layout::kBootGdtEntries> kBootGdt = {
    0,
    gdt_entry(0xc09b, 0, 0xfffff),  // 0x08: flat 32-bit code (PVH entry)
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0x67),  // present, busy 64-bit TSS, byte granular
    0,
};

}  // namespace

kvm_segment segment_from_gdt_entry(uint64_t entry, uint16_t selector) {
  kvm_segment seg{};
  seg.base = ((entry >> 16) & 0xffffff) | (((entry >> 56) & 0xff) << 24);
  uint32_t limit = static_cast<uint32_t>((entry & 0xffff) | (((entry >> 48) & 0xf) << 16));
  seg.g = (entry >> 55) & 1;
  // With G=1 the CPU scales the limit to 4 KiB granularity; KVM wants the byte limit.
  seg.limit = seg.g ? (limit << 12) | 0xfff : limit;
  seg.selector = selector;
  seg.type = (entry >> 40) & 0xf;
  seg.s = (entry >> 44) & 1;
  seg.dpl = (entry >> 45) & 3;
  seg.present = (entry >> 47) & 1;
  seg.avl = (entry >> 52) & 1;
  seg.l = (entry >> 53) & 1;
  seg.db = (entry >> 54) & 1;
  seg.unusable = seg.present ? 0 : 1;
  return seg;
}

void write_boot_gdt_and_idt(const GuestMemory& memory) {
  for (size_t i = 0; i < kBootGdt.size(); ++i) {
    if (!memory.write_obj(layout::kBootGdt + i * 8, kBootGdt[i])) {
      memory.checked_slice(layout::kBootGdt, sizeof(kBootGdt), "boot GDT");
    }
  }
  memory.fill(layout::kBootIdt, layout::kBootIdtSize, 0, "boot IDT");
}

std::array<uint8_t, 16> bios_reset_stub() {
  static_assert(layout::kAcpiReset > 0xff, "port above 0xff: out dx, al");
  const uint8_t port_low = layout::kAcpiReset & 0xff, port_high = layout::kAcpiReset >> 8;
  return {
      0xba,      port_low,
      port_high,                           // mov dx, kAcpiReset
      0xb0,      layout::kAcpiResetValue,  // mov al, kAcpiResetValue
      0xee,                                // out dx, al   (pier ends the run here)
      0xfa,                                // cli
      0xf4,                                // hlt          (not reached)
      0xeb,      0xfd,                     // jmp hlt
      0,         0,
      0,         0,
      0,         0,
  };
}

void write_bios_reset_stub(const GuestMemory& memory) {
  const auto stub = bios_reset_stub();
  memory.load(layout::kBiosResetVector, stub, "BIOS reset vector stub");
}

void write_identity_page_tables(const GuestMemory& memory) {
  memory.fill(layout::kPml4, layout::kPageTablesEnd - layout::kPml4, 0, "boot page tables");
  auto pml4 = memory.checked_slice(layout::kPml4, 4096, "PML4");
  auto pdpt = memory.checked_slice(layout::kPdpt, 4096, "PDPT");
  const uint64_t pml4e = layout::kPdpt | kPresent | kWritable;
  std::memcpy(pml4.data(), &pml4e, 8);
  for (uint64_t i = 0; i < layout::kPageDirCount; ++i) {
    const uint64_t pd_addr = layout::kPageDirs + i * 4096;
    const uint64_t pdpte = pd_addr | kPresent | kWritable;
    std::memcpy(pdpt.data() + i * 8, &pdpte, 8);
    auto pd = memory.checked_slice(pd_addr, 4096, "page directory");
    for (uint64_t j = 0; j < 512; ++j) {
      const uint64_t pde = ((i * 512 + j) << 21) | kPresent | kWritable | kHugePage;
      std::memcpy(pd.data() + j * 8, &pde, 8);
    }
  }
}

namespace {

// The boot GDT, IDT, flat data segments and TSS, with `code_index` (a kBootGdt entry) in CS:
// what both entry states (64-bit Linux boot protocol, 32-bit PVH) share.
void set_boot_descriptor_tables(kvm_sregs& sregs, size_t code_index, uint16_t code_selector) {
  sregs.gdt.base = layout::kBootGdt;
  sregs.gdt.limit = static_cast<uint16_t>(layout::kBootGdtEntries * 8 - 1);
  sregs.idt.base = layout::kBootIdt;
  sregs.idt.limit = static_cast<uint16_t>(layout::kBootIdtSize - 1);
  sregs.cs = segment_from_gdt_entry(kBootGdt[code_index], code_selector);
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss =
      segment_from_gdt_entry(kBootGdt[3], kBootDataSelector);
  sregs.tr = segment_from_gdt_entry(kBootGdt[4], kBootTssSelector);
}

}  // namespace

void set_long_mode_sregs(kvm_sregs& sregs) {
  set_boot_descriptor_tables(sregs, 2, kBootCodeSelector);
  sregs.cr0 = kCr0Pe | kCr0Mp | kCr0Et | kCr0Ne | kCr0Wp | kCr0Pg;
  sregs.cr3 = layout::kPml4;
  sregs.cr4 = kCr4Pae;
  sregs.efer = kEferLme | kEferLma;
}

kvm_regs boot_regs(uint64_t entry, uint64_t zero_page) {
  kvm_regs regs{};
  regs.rip = entry;
  regs.rsi = zero_page;
  regs.rsp = layout::kBootStackTop;
  regs.rbp = layout::kBootStackTop;
  regs.rflags = 0x2;  // reserved bit 1; IF clear as the boot protocol requires
  return regs;
}

void set_pvh_sregs(kvm_sregs& sregs) {
  set_boot_descriptor_tables(sregs, 1, kBootCode32Selector);
  sregs.cr0 = kCr0Pe | kCr0Et;
  sregs.cr3 = 0;
  sregs.cr4 = 0;
  sregs.efer = 0;
}

kvm_regs pvh_regs(uint64_t entry, uint64_t start_info) {
  kvm_regs regs{};
  regs.rip = entry;
  regs.rbx = start_info;
  regs.rflags = 0x2;
  return regs;
}

kvm_fpu boot_fpu() {
  kvm_fpu fpu{};
  fpu.fcw = 0x37f;
  fpu.mxcsr = 0x1f80;
  return fpu;
}

std::vector<kvm_msr_entry> boot_msrs() {
  auto msr = [](uint32_t index, uint64_t data) {
    kvm_msr_entry e{};
    e.index = index;
    e.data = data;
    return e;
  };
  return {
      msr(0x174, 0),               // IA32_SYSENTER_CS
      msr(0x175, 0),               // IA32_SYSENTER_ESP
      msr(0x176, 0),               // IA32_SYSENTER_EIP
      msr(0xc0000081, 0),          // STAR
      msr(0xc0000082, 0),          // LSTAR
      msr(0xc0000083, 0),          // CSTAR
      msr(0xc0000084, 0),          // SYSCALL_MASK
      msr(0xc0000102, 0),          // KERNEL_GS_BASE
      msr(0x1a0, 1),               // IA32_MISC_ENABLE: fast strings
      msr(0x2ff, (1u << 11) | 6),  // MTRRdefType: enabled, default write-back
  };
}

void normalize_cpuid(std::vector<kvm_cpuid_entry2>& entries, unsigned vcpu_index,
                     unsigned vcpu_count) {
  for (auto& e : entries) {
    switch (e.function) {
      case 1:
        // EBX[31:24] initial APIC id, EBX[23:16] logical processors; ECX[31] hypervisor.
        e.ebx = (e.ebx & 0x0000ffffu) | (vcpu_index << 24) | ((vcpu_count & 0xff) << 16);
        e.ecx |= 1u << 31;
        if (vcpu_count > 1) e.edx |= 1u << 28;  // HTT: the count above is meaningful
        break;
      case 0xb:
      case 0x1f:
        e.edx = vcpu_index;  // x2APIC id
        break;
      default:
        break;
    }
  }
}

}  // namespace pier::boot
