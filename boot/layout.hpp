#pragma once
// Every guest-physical address, I/O port and interrupt line pier uses, in address order and
// grouped by range. Keep them ordered; the static_asserts below and tests/unit/layout_test.cpp
// check alignment and that nothing overlaps. Sources: DESIGN.md and
// shared/reference/design-notes.md §1.1 (the same numbers Firecracker/Cloud Hypervisor use).
#include <cstdint>

namespace pier::layout {

constexpr uint64_t KiB = 1024;
constexpr uint64_t MiB = 1024 * KiB;
constexpr uint64_t GiB = 1024 * MiB;

// ---- Low memory (below 1 MiB) ----
// Boot GDT: null, (unused), __BOOT_CS at 0x10, __BOOT_DS at 0x18 (Linux boot.rst), and a 16-byte
// 64-bit TSS descriptor at 0x20 (VMX entry wants a usable TR).
constexpr uint64_t kBootGdt = 0x500;
constexpr uint64_t kBootGdtEntries = 6;
// Boot IDT: one empty gate; interrupts stay off until the kernel installs its own.
constexpr uint64_t kBootIdt = 0x540;
constexpr uint64_t kBootIdtSize = 8;
// PVH start info (boot/pvh.hpp) with its module list and memory map, 4 KiB; only for guests
// entered through the PVH note.
constexpr uint64_t kPvhStartInfo = 0x6000;
constexpr uint64_t kPvhStartInfoSize = 4 * KiB;
// Zero page: struct boot_params, 4 KiB.
constexpr uint64_t kZeroPage = 0x7000;
constexpr uint64_t kZeroPageSize = 4 * KiB;
// Initial stack; the 64-bit protocol does not require one, but a bare-metal guest may use it.
constexpr uint64_t kBootStackTop = 0x8ff0;
// Identity page tables: PML4, PDPT, then four page directories of 2 MiB pages mapping 0-4 GiB.
constexpr uint64_t kPml4 = 0x9000;
constexpr uint64_t kPdpt = 0xa000;
constexpr uint64_t kPageDirs = 0xb000;
constexpr uint64_t kPageDirCount = 4;
constexpr uint64_t kPageTablesEnd = kPageDirs + kPageDirCount * 4 * KiB;  // 0xf000
// Kernel command line, up to 64 KiB (the kernel's own limit, hdr.cmdline_size, is smaller).
constexpr uint64_t kCmdline = 0x20000;
constexpr uint64_t kCmdlineMax = 64 * KiB;
// setup_data chain (SETUP_DTB and friends), after the command line.
constexpr uint64_t kSetupData = 0x30000;
constexpr uint64_t kSetupDataMax = 0x60000;
// End of conventional RAM: the EBDA and legacy hole above are reserved in e820.
constexpr uint64_t kEbdaStart = 0x9fc00;
// ACPI tables: the RSDP must be in 0xE0000-0xFFFFF where Linux scans for it; the other tables
// follow it in the same reserved window.
constexpr uint64_t kAcpiStart = 0xe0000;
constexpr uint64_t kAcpiEnd = 0xffff0;
// The real-mode reset vector F000:FFF0, where a PC's BIOS starts. Linux jumps there as its
// reboot=b(ios) method (and falls through to it from reboot=efi when there is no EFI, which is
// its default on hardware-reduced ACPI): pier puts a 16-byte stub there that writes the ACPI
// reset register, so that path ends the run like the others.
constexpr uint64_t kBiosResetVector = 0xffff0;
constexpr uint64_t kLowRamEnd = 0x100000;

// ---- Kernel ----
// Protected-mode kernel (bzImage payload); the 64-bit entry is at +0x200.
constexpr uint64_t kKernelLoad = 0x100000;
constexpr uint64_t kBzImage64BitEntryOffset = 0x200;

// ---- 32-bit MMIO hole: nothing here is RAM ----
constexpr uint64_t kMmioHoleStart = 0xc000'0000;
// PCI BARs and virtio-mmio slots are allocated in [kPciMmioStart, kPciMmioEnd).
constexpr uint64_t kPciMmioStart = 0xc000'0000;
constexpr uint64_t kPciMmioEnd = 0xfec0'0000;
constexpr uint64_t kIoapic = 0xfec0'0000;
constexpr uint64_t kIoapicSize = 0x1000;
constexpr uint64_t kLapic = 0xfee0'0000;
constexpr uint64_t kLapicSize = 0x10'0000;  // also the MSI address window
// KVM's identity-map page and its 3-page TSS (KVM_SET_IDENTITY_MAP_ADDR / KVM_SET_TSS_ADDR).
constexpr uint64_t kKvmIdentityMap = 0xfffb'c000;
constexpr uint64_t kKvmTss = 0xfffb'd000;
constexpr uint64_t kKvmTssSize = 3 * 4 * KiB;
constexpr uint64_t kMmioHoleEnd = 0x1'0000'0000;

// ---- RAM above the hole ----
constexpr uint64_t kHighRamStart = 0x1'0000'0000;

// ---- Guest RAM limits pier accepts ----
constexpr uint64_t kMinRam = 64 * MiB;
// Guest-physical address width pier uses for RAM (1 TiB of RAM above 4 GiB is plenty).
constexpr uint64_t kMaxRam = 1024 * GiB;

// ---- I/O ports ----
constexpr uint16_t kI8042Data = 0x60;
constexpr uint16_t kI8042Command = 0x64;
constexpr uint16_t kCom1 = 0x3f8;
constexpr uint16_t kCom1Size = 8;
// ACPI hardware-reduced sleep control/status and reset registers (FADT), one byte each.
constexpr uint16_t kAcpiSleepControl = 0x600;
constexpr uint16_t kAcpiSleepStatus = 0x601;
constexpr uint16_t kAcpiReset = 0x602;
constexpr uint16_t kAcpiPortsSize = 3;
constexpr uint8_t kAcpiResetValue = 0x0f;
// PCI type-1 configuration mechanism.
constexpr uint16_t kPciConfigAddress = 0xcf8;
// Byte accesses to 0xCF9 are the chipset's reset control register (Linux reboot=p/pci).
constexpr uint16_t kResetControl = 0xcf9;
constexpr uint16_t kPciConfigData = 0xcfc;

// ---- Interrupt lines (GSIs on the IOAPIC; ISA IRQs equal GSIs except IRQ0 -> GSI2) ----
constexpr uint32_t kCom1Irq = 4;
constexpr uint32_t kAcpiSciIrq = 9;
constexpr uint32_t kIoapicPins = 24;

static_assert(kBootGdt + kBootGdtEntries * 8 <= kBootIdt);
static_assert(kBootIdt + kBootIdtSize <= kPvhStartInfo);
static_assert(kPvhStartInfo + kPvhStartInfoSize <= kZeroPage && kPvhStartInfo % 4096 == 0);
static_assert(kZeroPage + kZeroPageSize <= kBootStackTop + 16);
static_assert(kBootStackTop < kPml4);
static_assert(kPml4 + 4 * KiB == kPdpt && kPdpt + 4 * KiB == kPageDirs);
static_assert(kPageTablesEnd <= kCmdline);
static_assert(kCmdline + kCmdlineMax <= kSetupData);
static_assert(kSetupData + kSetupDataMax <= kEbdaStart);
static_assert(kEbdaStart < kAcpiStart && kAcpiEnd <= kBiosResetVector);
static_assert(kBiosResetVector + 16 == kLowRamEnd && kLowRamEnd <= kKernelLoad);
static_assert(kPml4 % 4096 == 0 && kZeroPage % 4096 == 0 && kPageDirs % 4096 == 0);
static_assert(kPciMmioEnd <= kIoapic && kIoapic + kIoapicSize <= kLapic);
static_assert(kLapic + kLapicSize <= kKvmIdentityMap);
static_assert(kKvmIdentityMap + 4 * KiB == kKvmTss && kKvmTss + kKvmTssSize <= kMmioHoleEnd);
static_assert(kMmioHoleEnd == kHighRamStart);
static_assert(kCom1 + kCom1Size <= kAcpiSleepControl && kAcpiReset < kPciConfigAddress);

}  // namespace pier::layout
