#include "boot/acpi.hpp"

#include <fmt/format.h>

#include <cstddef>
#include <cstring>
#include <span>
#include <string_view>
#include <type_traits>

#include "vmm/error.hpp"
#include "vmm/log.hpp"

// Generated from boot/dsdt.asl by boot/compile_asl.cmake (the name follows the file name).
namespace pier::acpi::aml {
extern const unsigned char kdsdt[];
extern const unsigned int kdsdtSize;
}  // namespace pier::acpi::aml

namespace pier::acpi {
namespace {

// Field layouts are ACPI 6.3 (the revision the installed iasl knows), section numbers from it.
// Linux reads every table here through ACPICA, which only needs the revisions to be at least the
// ones whose fields we use (FADT 6 for SLEEP_*_REG, MADT 1 for the entries below).
constexpr uint8_t kRsdpRevision = 2;  // ACPI 2.0+: has the XSDT address
constexpr uint8_t kXsdtRevision = 1;
constexpr uint8_t kFadtRevision = 6;  // 276 bytes, with the hypervisor vendor id
constexpr uint8_t kFadtMinorVersion = 3;
constexpr uint8_t kMadtRevision = 5;

constexpr std::string_view kOemId = "PIER  ";
constexpr uint32_t kOemRevision = 1;
constexpr std::string_view kCreatorId = "PIER";
constexpr uint32_t kCreatorRevision = 1;
constexpr std::string_view kHypervisorVendorId = "PIERVMM ";

// Linux scans for the RSDP on 16-byte boundaries; the other tables only need natural alignment,
// 16 keeps them all easy to read in a hex dump.
constexpr uint64_t kTableAlign = 16;

#pragma pack(push, 1)
// 5.2.5.3 Root System Description Pointer.
struct Rsdp {
  char signature[8];
  uint8_t checksum;  // over the first 20 bytes (the ACPI 1.0 structure)
  char oem_id[6];
  uint8_t revision;
  uint32_t rsdt_address;  // 0: no RSDT, ACPICA uses the XSDT when revision >= 2
  uint32_t length;
  uint64_t xsdt_address;
  uint8_t extended_checksum;  // over all 36 bytes
  uint8_t reserved[3];
};
static_assert(sizeof(Rsdp) == 36);

// 5.2.6 System Description Table Header.
struct SdtHeader {
  char signature[4];
  uint32_t length;
  uint8_t revision;
  uint8_t checksum;
  char oem_id[6];
  char oem_table_id[8];
  uint32_t oem_revision;
  char creator_id[4];
  uint32_t creator_revision;
};
static_assert(sizeof(SdtHeader) == 36);

// 5.2.3.2 Generic Address Structure.
struct Gas {
  uint8_t address_space_id;
  uint8_t register_bit_width;
  uint8_t register_bit_offset;
  uint8_t access_size;
  uint64_t address;
};
static_assert(sizeof(Gas) == 12);

// 5.2.9 Fixed ACPI Description Table, revision 6. In hardware-reduced mode everything from
// SCI_INT through CENTURY and the X_PM*/X_GPE* blocks is ignored and left zero.
struct Fadt {
  SdtHeader header;
  uint32_t firmware_ctrl;
  uint32_t dsdt;
  uint8_t reserved0;
  uint8_t preferred_pm_profile;
  uint16_t sci_int;
  uint32_t smi_cmd;
  uint8_t acpi_enable;
  uint8_t acpi_disable;
  uint8_t s4bios_req;
  uint8_t pstate_cnt;
  uint32_t pm1a_evt_blk;
  uint32_t pm1b_evt_blk;
  uint32_t pm1a_cnt_blk;
  uint32_t pm1b_cnt_blk;
  uint32_t pm2_cnt_blk;
  uint32_t pm_tmr_blk;
  uint32_t gpe0_blk;
  uint32_t gpe1_blk;
  uint8_t pm1_evt_len;
  uint8_t pm1_cnt_len;
  uint8_t pm2_cnt_len;
  uint8_t pm_tmr_len;
  uint8_t gpe0_blk_len;
  uint8_t gpe1_blk_len;
  uint8_t gpe1_base;
  uint8_t cst_cnt;
  uint16_t p_lvl2_lat;
  uint16_t p_lvl3_lat;
  uint16_t flush_size;
  uint16_t flush_stride;
  uint8_t duty_offset;
  uint8_t duty_width;
  uint8_t day_alrm;
  uint8_t mon_alrm;
  uint8_t century;
  uint16_t iapc_boot_arch;
  uint8_t reserved1;
  uint32_t flags;
  Gas reset_reg;
  uint8_t reset_value;
  uint16_t arm_boot_arch;
  uint8_t minor_version;
  uint64_t x_firmware_ctrl;
  uint64_t x_dsdt;
  Gas x_pm1a_evt_blk;
  Gas x_pm1b_evt_blk;
  Gas x_pm1a_cnt_blk;
  Gas x_pm1b_cnt_blk;
  Gas x_pm2_cnt_blk;
  Gas x_pm_tmr_blk;
  Gas x_gpe0_blk;
  Gas x_gpe1_blk;
  Gas sleep_control_reg;
  Gas sleep_status_reg;
  char hypervisor_vendor_id[8];
};
static_assert(sizeof(Fadt) == 276);
static_assert(offsetof(Fadt, iapc_boot_arch) == 109 && offsetof(Fadt, flags) == 112);
static_assert(offsetof(Fadt, reset_reg) == 116 && offsetof(Fadt, x_dsdt) == 140);
static_assert(offsetof(Fadt, sleep_control_reg) == 244 && offsetof(Fadt, sleep_status_reg) == 256);

// 5.2.12 Multiple APIC Description Table and the entries pier uses.
struct MadtHeader {
  SdtHeader header;
  uint32_t local_apic_address;
  uint32_t flags;
};
static_assert(sizeof(MadtHeader) == 44);

struct MadtLocalApic {  // 5.2.12.2
  uint8_t type = 0;
  uint8_t length = 8;
  uint8_t processor_uid;
  uint8_t apic_id;
  uint32_t flags;
};
static_assert(sizeof(MadtLocalApic) == 8);

struct MadtIoApic {  // 5.2.12.3
  uint8_t type = 1;
  uint8_t length = 12;
  uint8_t io_apic_id;
  uint8_t reserved = 0;
  uint32_t address;
  uint32_t gsi_base;
};
static_assert(sizeof(MadtIoApic) == 12);

struct MadtInterruptOverride {  // 5.2.12.5
  uint8_t type = 2;
  uint8_t length = 10;
  uint8_t bus = 0;  // ISA
  uint8_t source;   // ISA IRQ
  uint32_t gsi;
  uint16_t flags;  // MPS INTI flags
};
static_assert(sizeof(MadtInterruptOverride) == 10);

struct MadtLocalApicNmi {  // 5.2.12.7
  uint8_t type = 4;
  uint8_t length = 6;
  uint8_t processor_uid;
  uint16_t flags;  // MPS INTI flags
  uint8_t lint;
};
static_assert(sizeof(MadtLocalApicNmi) == 6);
#pragma pack(pop)

// GAS address space ids and access sizes.
constexpr uint8_t kGasSystemIo = 1;
constexpr uint8_t kGasAccessByte = 1;

// FADT flags (5.2.9, table 5-35).
constexpr uint32_t kFadtPwrButton = 1u << 4;  // no fixed-feature power button
constexpr uint32_t kFadtSlpButton = 1u << 5;  // no fixed-feature sleep button
constexpr uint32_t kFadtResetRegSup = 1u << 10;
constexpr uint32_t kFadtHwReducedAcpi = 1u << 20;

// IA-PC boot architecture flags (5.2.9.3).
constexpr uint16_t kIapcVgaNotPresent = 1u << 2;
constexpr uint16_t kIapcPcieAspmControls = 1u << 4;
constexpr uint16_t kIapcCmosRtcNotPresent = 1u << 5;

// MADT flags and entry values.
constexpr uint32_t kMadtPcatCompat = 1u << 0;
constexpr uint32_t kMadtLocalApicEnabled = 1u << 0;
constexpr uint16_t kMpsIntiEdgeActiveHigh = 0b01 << 2 | 0b01;  // trigger edge, polarity high
constexpr uint8_t kAllProcessors = 0xff;
constexpr uint8_t kIsaTimerIrq = 0;
constexpr uint32_t kIoapicTimerGsi = 2;

static_assert(layout::kAcpiEnd <= layout::kMmioHoleEnd, "the 32-bit DSDT pointer must reach it");
static_assert(layout::kLapic < layout::kMmioHoleEnd && layout::kIoapic < layout::kMmioHoleEnd);

template <size_t N>
void set_chars(char (&field)[N], std::string_view value) {
  // Every id we write is exactly its field's width (no NUL): a short one is a bug here.
  if (value.size() != N)
    throw Error(fmt::format("internal: ACPI id \"{}\" is not {} chars", value, N));
  std::memcpy(field, value.data(), N);
}

template <class T>
void append(std::vector<uint8_t>& out, const T& value) {
  static_assert(std::is_trivially_copyable_v<T>);
  const auto* bytes = reinterpret_cast<const uint8_t*>(&value);
  out.insert(out.end(), bytes, bytes + sizeof(T));
}

// The byte that makes `bytes` (with that byte still zero) sum to 0 mod 256.
uint8_t checksum(std::span<const uint8_t> bytes) {
  uint8_t sum = 0;
  for (uint8_t b : bytes) sum = static_cast<uint8_t>(sum + b);
  return static_cast<uint8_t>(-sum);
}

SdtHeader sdt_header(std::string_view signature, uint8_t revision) {
  SdtHeader header{};
  set_chars(header.signature, signature);
  header.revision = revision;
  set_chars(header.oem_id, kOemId);
  // "PIER" + the signature tells the tables apart in a dump ("PIERFACP", "PIERAPIC", ...).
  set_chars(header.oem_table_id, fmt::format("PIER{}", signature));
  header.oem_revision = kOemRevision;
  set_chars(header.creator_id, kCreatorId);
  header.creator_revision = kCreatorRevision;
  return header;
}

// Sets a complete table's length and checksum fields from its bytes.
void finish_sdt(std::vector<uint8_t>& table) {
  const auto length = static_cast<uint32_t>(table.size());
  std::memcpy(table.data() + offsetof(SdtHeader, length), &length, sizeof(length));
  table[offsetof(SdtHeader, checksum)] = 0;
  table[offsetof(SdtHeader, checksum)] = checksum(table);
}

Gas io_port_byte(uint16_t port) {
  return Gas{.address_space_id = kGasSystemIo,
             .register_bit_width = 8,
             .register_bit_offset = 0,
             .access_size = kGasAccessByte,
             .address = port};
}

std::vector<uint8_t> build_fadt(uint64_t dsdt_address) {
  Fadt fadt{};
  fadt.header = sdt_header("FACP", kFadtRevision);
  // Both DSDT pointers, equal: ACPICA prefers X_DSDT and accepts a matching 32-bit copy, and a
  // simple ACPI 1.0-style parser (a bare-metal test guest) finds it too.
  fadt.dsdt = static_cast<uint32_t>(dsdt_address);
  fadt.x_dsdt = dsdt_address;
  // Ignored in hardware-reduced mode (there is no SCI); kept truthful for tools that print it.
  fadt.sci_int = static_cast<uint16_t>(layout::kAcpiSciIrq);
  // Hardware-reduced (like Firecracker and Cloud Hypervisor): no PM1/GPE blocks, no PM timer, no
  // FACS; sleep and reset go through the three one-byte I/O registers below. Power and sleep
  // buttons are not fixed features, so Linux does not create LNXPWRBN/LNXSLPBN devices for them.
  fadt.flags = kFadtHwReducedAcpi | kFadtResetRegSup | kFadtPwrButton | kFadtSlpButton;
  fadt.reset_reg = io_port_byte(layout::kAcpiReset);
  fadt.reset_value = layout::kAcpiResetValue;
  fadt.sleep_control_reg = io_port_byte(layout::kAcpiSleepControl);
  fadt.sleep_status_reg = io_port_byte(layout::kAcpiSleepStatus);
  // No VGA; don't touch ASPM (there are no PCIe links); no CMOS RTC (pier emulates none: without
  // this Linux registers rtc_cmos and reads all-ones from ports 0x70/0x71; kvmclock gives the
  // wall clock). "MSI not supported" stays clear: virtio-pci uses MSI-X.
  // 8042 stays clear: pier's i8042 only catches the 0xFE reset command, so Linux's i8042 driver
  // must not probe it (it then skips it unless i8042.nopnp forces a probe). Reboot still works:
  // ACPI reset first (RESET_REG), then Linux's keyboard-controller reset writes 0xFE to port 0x64
  // without asking the driver.
  fadt.iapc_boot_arch = kIapcVgaNotPresent | kIapcPcieAspmControls | kIapcCmosRtcNotPresent;
  fadt.minor_version = kFadtMinorVersion;
  set_chars(fadt.hypervisor_vendor_id, kHypervisorVendorId);

  std::vector<uint8_t> table;
  append(table, fadt);
  finish_sdt(table);
  return table;
}

std::vector<uint8_t> build_madt(const AcpiConfig& config) {
  MadtHeader header{};
  header.header = sdt_header("APIC", kMadtRevision);
  header.local_apic_address = static_cast<uint32_t>(layout::kLapic);
  // PCAT_COMPAT: the machine does have the dual 8259 (KVM_CREATE_IRQCHIP always creates it, wired
  // to LINT0 as ExtINT), and an OS switching to APIC mode must mask it or the PIT would also
  // arrive through it. Linux 6.1 in hardware-reduced mode uses a null legacy PIC whatever this
  // says, so for it the flag changes nothing; for any other guest it is the true answer.
  header.flags = kMadtPcatCompat;

  std::vector<uint8_t> table;
  append(table, header);
  for (uint32_t cpu = 0; cpu < config.cpus; ++cpu) {
    append(table, MadtLocalApic{.processor_uid = static_cast<uint8_t>(cpu),
                                .apic_id = static_cast<uint8_t>(cpu),
                                .flags = kMadtLocalApicEnabled});
  }
  // The IOAPIC's id is the first one after the vCPUs' so no APIC id is used twice.
  append(table, MadtIoApic{.io_apic_id = static_cast<uint8_t>(config.cpus),
                           .address = static_cast<uint32_t>(layout::kIoapic),
                           .gsi_base = 0});
  // ISA IRQ 0 (the PIT) is wired to IOAPIC pin 2, as on real PCs and as kvmtool's and QEMU's KVM
  // GSI routing has it (GSI 0 -> pin 2); the VMM's routing table must agree. Every other ISA IRQ is
  // identity-mapped with the ISA default, edge/high. (Linux 6.1 in hardware-reduced mode starts no
  // PIT, but other guests may.)
  append(table,
         MadtInterruptOverride{
             .source = kIsaTimerIrq, .gsi = kIoapicTimerGsi, .flags = kMpsIntiEdgeActiveHigh});
  // NMI arrives on LINT1 of every processor (the VMM programs LINT1 as NMI).
  append(table, MadtLocalApicNmi{
                    .processor_uid = kAllProcessors, .flags = kMpsIntiEdgeActiveHigh, .lint = 1});
  finish_sdt(table);
  return table;
}

std::vector<uint8_t> build_xsdt(std::span<const uint64_t> entries) {
  std::vector<uint8_t> table;
  append(table, sdt_header("XSDT", kXsdtRevision));
  for (uint64_t address : entries) append(table, address);
  finish_sdt(table);
  return table;
}

std::vector<uint8_t> build_rsdp(uint64_t xsdt_address) {
  Rsdp rsdp{};
  set_chars(rsdp.signature, "RSD PTR ");
  set_chars(rsdp.oem_id, kOemId);
  rsdp.revision = kRsdpRevision;
  rsdp.length = sizeof(Rsdp);
  rsdp.xsdt_address = xsdt_address;
  std::vector<uint8_t> bytes;
  append(bytes, rsdp);
  bytes[offsetof(Rsdp, checksum)] = checksum(std::span(bytes).first(offsetof(Rsdp, length)));
  bytes[offsetof(Rsdp, extended_checksum)] = checksum(bytes);
  return bytes;
}

uint64_t align_up(uint64_t value, uint64_t align) {
  return (value + align - 1) / align * align;
}

}  // namespace

AcpiTables build_acpi_tables(const AcpiConfig& config, uint64_t base) {
  if (config.cpus == 0 || config.cpus > kMaxCpus) {
    throw Error(fmt::format("cannot describe {} vCPUs in the ACPI MADT: use 1 to {} vCPUs",
                            config.cpus, kMaxCpus));
  }
  if (base % kTableAlign != 0 || base < layout::kAcpiStart || base >= layout::kAcpiEnd) {
    throw Error(fmt::format("ACPI tables base {:#x} must be 16-byte aligned in [{:#x}, {:#x})",
                            base, layout::kAcpiStart, layout::kAcpiEnd));
  }

  struct Table {
    std::string signature;
    std::vector<uint8_t> bytes;  // complete for the position-independent tables
    uint64_t offset = 0;
  };
  // Tables whose bytes do not depend on where anything lands.
  Table dsdt{"DSDT", {aml::kdsdt, aml::kdsdt + aml::kdsdtSize}};
  finish_sdt(dsdt.bytes);  // iasl already did; cheap insurance if AML is ever appended here
  // Tables the XSDT lists after the FADT, in order. Add MCFG, run-time SSDTs, ... here.
  std::vector<Table> listed;
  listed.push_back({"APIC", build_madt(config)});

  // Lay out RSDP, XSDT, FADT, DSDT, then the listed tables; sizes are all known up front.
  uint64_t end = 0;
  auto place = [&end](uint64_t size) {
    const uint64_t at = align_up(end, kTableAlign);
    end = at + size;
    return at;
  };
  const uint64_t rsdp_offset = place(sizeof(Rsdp));
  const uint64_t xsdt_offset = place(sizeof(SdtHeader) + sizeof(uint64_t) * (1 + listed.size()));
  const uint64_t fadt_offset = place(sizeof(Fadt));
  dsdt.offset = place(dsdt.bytes.size());
  for (auto& table : listed) table.offset = place(table.bytes.size());
  if (end > layout::kAcpiEnd - base) {
    throw Error(
        fmt::format("ACPI tables need {} bytes at {:#x}, past the end of the ACPI window at {:#x}",
                    end, base, layout::kAcpiEnd));
  }

  // Now the tables that point at others.
  std::vector<uint64_t> xsdt_entries = {base + fadt_offset};
  for (const auto& table : listed) xsdt_entries.push_back(base + table.offset);
  std::vector<Table> ordered;
  ordered.push_back({"RSD PTR ", build_rsdp(base + xsdt_offset), rsdp_offset});
  ordered.push_back({"XSDT", build_xsdt(xsdt_entries), xsdt_offset});
  ordered.push_back({"FACP", build_fadt(base + dsdt.offset), fadt_offset});
  ordered.push_back(std::move(dsdt));
  for (auto& table : listed) ordered.push_back(std::move(table));

  AcpiTables out;
  out.rsdp_address = base + rsdp_offset;
  out.image.assign(end, 0);
  for (const auto& table : ordered) {
    std::memcpy(out.image.data() + table.offset, table.bytes.data(), table.bytes.size());
    out.tables.push_back(
        {table.signature, base + table.offset, static_cast<uint32_t>(table.bytes.size())});
  }
  return out;
}

uint64_t write_acpi_tables(const GuestMemory& memory, const AcpiConfig& config) {
  const AcpiTables tables = build_acpi_tables(config);
  memory.load(tables.rsdp_address, tables.image, "ACPI tables");
  for (const auto& table : tables.tables) {
    log::debug("acpi: {} at {:#x}, {} bytes", table.signature, table.address, table.length);
  }
  return tables.rsdp_address;
}

}  // namespace pier::acpi
