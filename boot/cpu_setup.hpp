#pragma once
// The CPU state at the kernel's 64-bit entry (Linux boot.rst "64-bit Boot Protocol"): a boot GDT
// with __BOOT_CS=0x10 and __BOOT_DS=0x18, identity page tables, long mode, RSI = zero page.
// Pure functions over guest memory and KVM structs, so they are unit-tested without /dev/kvm.
#include <linux/kvm.h>

#include <array>
#include <cstdint>
#include <vector>

#include "vmm/guest_memory.hpp"

namespace pier::boot {

constexpr uint16_t kBootCode32Selector = 0x08;  // flat 32-bit code, for the PVH entry
constexpr uint16_t kBootCodeSelector = 0x10;
constexpr uint16_t kBootDataSelector = 0x18;
constexpr uint16_t kBootTssSelector = 0x20;

// x86 segment descriptor from the packed "flags" form used by Linux/Firecracker: bits 0-7 access
// byte, bits 12-15 flags nibble (G, D/B, L, AVL).
constexpr uint64_t gdt_entry(uint16_t flags, uint32_t base, uint32_t limit) {
  return ((uint64_t(base) & 0xff000000u) << 32) | ((uint64_t(flags) & 0x0000f0ffu) << 40) |
         ((uint64_t(limit) & 0x000f0000u) << 32) | ((uint64_t(base) & 0x00ffffffu) << 16) |
         (uint64_t(limit) & 0x0000ffffu);
}

// The KVM view of a descriptor, as the CPU would load it for `selector`.
kvm_segment segment_from_gdt_entry(uint64_t entry, uint16_t selector);

// Writes the boot GDT (layout::kBootGdt) and an empty IDT (layout::kBootIdt).
void write_boot_gdt_and_idt(const GuestMemory& memory);
// The 16-byte real-mode stub at the BIOS reset vector (layout::kBiosResetVector): it writes the
// ACPI reset register and halts, so a guest that "reboots through the BIOS" resets pier's way.
std::array<uint8_t, 16> bios_reset_stub();
void write_bios_reset_stub(const GuestMemory& memory);
// Identity-maps guest-physical 0-4 GiB with 2 MiB pages at layout::kPml4 (supervisor, writable).
void write_identity_page_tables(const GuestMemory& memory);

// Long mode, paging, flat boot segments: applied on top of the vCPU's reset sregs.
void set_long_mode_sregs(kvm_sregs& sregs);
kvm_regs boot_regs(uint64_t entry, uint64_t zero_page);
// PVH entry (boot/pvh.hpp): 32-bit protected mode, paging off, flat CS (0x08) / data (0x18),
// TR the boot TSS, EFER 0; EBX = start info, IF clear.
void set_pvh_sregs(kvm_sregs& sregs);
kvm_regs pvh_regs(uint64_t entry, uint64_t start_info);
kvm_fpu boot_fpu();
// MSRs a firmware would leave in a defined state (Firecracker's list).
std::vector<kvm_msr_entry> boot_msrs();

// Per-vCPU CPUID: initial APIC id, logical processor count, the hypervisor bit.
void normalize_cpuid(std::vector<kvm_cpuid_entry2>& entries, unsigned vcpu_index,
                     unsigned vcpu_count);

}  // namespace pier::boot
