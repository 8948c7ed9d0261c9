#pragma once
// The ACPI tables pier gives the guest: RSDP -> XSDT -> FADT (hardware-reduced) -> DSDT, and the
// MADT. Debian's cloud kernel has no MP-table parser (CONFIG_X86_MPPARSE is off), so the MADT is
// the only way it learns about the CPUs, the IOAPIC and the LAPIC timer; the FADT's sleep control
// register plus the DSDT's \_S5 is how it powers off (DESIGN.md "Target hardware").
//
// The tables are built as one contiguous image (RSDP first, every table 16-byte aligned) laid out
// for a given base address, then copied into the reserved window layout::kAcpiStart..kAcpiEnd.
#include <cstdint>
#include <string>
#include <vector>

#include "boot/layout.hpp"
#include "vmm/guest_memory.hpp"

namespace pier::acpi {

// MADT Processor Local APIC entries carry an 8-bit APIC id and 0xFF is the xAPIC broadcast id, so
// ids 0..253 go to vCPUs and 254 to the IOAPIC. More vCPUs would need x2APIC entries and an
// x2APIC-mode guest; the 128 KiB window is not the limit (254 vCPUs make a ~2 KiB MADT).
constexpr uint32_t kMaxCpus = 254;

struct AcpiConfig {
  uint32_t cpus = 1;  // LAPIC ids 0..cpus-1, all enabled
  // Later issues add: PCI host bridge window/bus range, virtio-mmio devices. Keep it easy to
  // extend.
};

// Each table's complete bytes with correct length and checksum, laid out at `rsdp_address`.
struct AcpiTables {
  uint64_t rsdp_address = 0;  // == base
  // RSDP, then XSDT, FADT, DSDT, MADT, ... contiguous (each 16-byte aligned), to be copied at base.
  std::vector<uint8_t> image;
  // Where each table landed, in image order ("RSD PTR ", "XSDT", "FACP", "DSDT", "APIC").
  struct Entry {
    std::string signature;
    uint64_t address;
    uint32_t length;
  };
  std::vector<Entry> tables;
};

// Builds the tables for a guest with `config`, laid out at `base` (16-byte aligned). Throws
// pier::Error when the configuration cannot be described (0 or more than kMaxCpus vCPUs) or the
// tables do not fit in [base, layout::kAcpiEnd).
AcpiTables build_acpi_tables(const AcpiConfig& config, uint64_t base = layout::kAcpiStart);

// Builds the tables at layout::kAcpiStart and copies them into guest RAM. Returns the RSDP address
// (for the zero page's acpi_rsdp_addr).
uint64_t write_acpi_tables(const GuestMemory& memory, const AcpiConfig& config);

}  // namespace pier::acpi
