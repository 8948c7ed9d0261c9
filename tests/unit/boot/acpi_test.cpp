#include "boot/acpi.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "boot/layout.hpp"
#include "vmm/error.hpp"
#include "vmm/guest_memory.hpp"

// Fields are read at the offsets the ACPI specification gives (6.3, section 5.2), not through the
// builder's structs, so a wrong struct layout cannot hide behind itself. `iasl -d` checks the same
// tables independently at the end.

namespace pier::acpi {
namespace {

namespace fs = std::filesystem;

using Entry = AcpiTables::Entry;

std::vector<uint8_t> table_bytes(const AcpiTables& tables, const Entry& entry) {
  const uint64_t offset = entry.address - tables.rsdp_address;
  EXPECT_LE(offset + entry.length, tables.image.size());
  return {tables.image.begin() + static_cast<ptrdiff_t>(offset),
          tables.image.begin() + static_cast<ptrdiff_t>(offset + entry.length)};
}

const Entry& find(const AcpiTables& tables, const std::string& signature) {
  auto it = std::find_if(tables.tables.begin(), tables.tables.end(),
                         [&](const Entry& e) { return e.signature == signature; });
  if (it == tables.tables.end()) throw std::runtime_error("no table " + signature);
  return *it;
}

std::vector<uint8_t> bytes_of(const AcpiTables& tables, const std::string& signature) {
  return table_bytes(tables, find(tables, signature));
}

template <class T>
T get(const std::vector<uint8_t>& bytes, size_t offset) {
  T value{};
  EXPECT_LE(offset + sizeof(T), bytes.size());
  if (offset + sizeof(T) <= bytes.size()) std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

std::string chars(const std::vector<uint8_t>& bytes, size_t offset, size_t n) {
  return {bytes.begin() + static_cast<ptrdiff_t>(offset),
          bytes.begin() + static_cast<ptrdiff_t>(offset + n)};
}

uint8_t sum(const std::vector<uint8_t>& bytes, size_t n) {
  uint8_t s = 0;
  for (size_t i = 0; i < n; ++i) s = static_cast<uint8_t>(s + bytes[i]);
  return s;
}

struct GasValue {
  uint8_t space, bit_width, bit_offset, access_size;
  uint64_t address;
};
GasValue gas(const std::vector<uint8_t>& b, size_t offset) {
  return {b[offset], b[offset + 1], b[offset + 2], b[offset + 3], get<uint64_t>(b, offset + 4)};
}

// FADT offsets (ACPI 6.3 table 5-34).
constexpr size_t kFadtDsdt = 40;
constexpr size_t kFadtSciInt = 46;
constexpr size_t kFadtIapcBootArch = 109;
constexpr size_t kFadtFlags = 112;
constexpr size_t kFadtResetReg = 116;
constexpr size_t kFadtResetValue = 128;
constexpr size_t kFadtMinorVersion = 131;
constexpr size_t kFadtXDsdt = 140;
constexpr size_t kFadtSleepControlReg = 244;
constexpr size_t kFadtSleepStatusReg = 256;
constexpr size_t kFadtLength = 276;

TEST(AcpiTables, EverySdtHasItsSignatureLengthRevisionAndChecksum) {
  const AcpiTables tables = build_acpi_tables({.cpus = 2});
  const std::map<std::string, uint8_t> revisions = {
      {"XSDT", 1}, {"FACP", 6}, {"DSDT", 2}, {"APIC", 5}};
  std::vector<std::string> seen;
  for (const auto& entry : tables.tables) {
    seen.push_back(entry.signature);
    if (entry.signature == "RSD PTR ") continue;
    SCOPED_TRACE(entry.signature);
    const auto bytes = table_bytes(tables, entry);
    EXPECT_EQ(chars(bytes, 0, 4), entry.signature);
    EXPECT_EQ(get<uint32_t>(bytes, 4), entry.length);
    EXPECT_EQ(bytes[8], revisions.at(entry.signature));
    EXPECT_EQ(sum(bytes, bytes.size()), 0);
    EXPECT_EQ(chars(bytes, 10, 6), "PIER  ");
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"RSD PTR ", "XSDT", "FACP", "DSDT", "APIC"}));
}

TEST(AcpiTables, RsdpPointsAtTheXsdt) {
  const AcpiTables tables = build_acpi_tables({});
  EXPECT_EQ(tables.rsdp_address, layout::kAcpiStart);
  const Entry& entry = tables.tables.front();
  ASSERT_EQ(entry.signature, "RSD PTR ");
  EXPECT_EQ(entry.address, tables.rsdp_address);
  EXPECT_EQ(entry.length, 36u);
  const auto rsdp = table_bytes(tables, entry);
  EXPECT_EQ(chars(rsdp, 0, 8), "RSD PTR ");
  EXPECT_EQ(sum(rsdp, 20), 0) << "ACPI 1.0 checksum";
  EXPECT_EQ(sum(rsdp, 36), 0) << "extended checksum";
  EXPECT_EQ(chars(rsdp, 9, 6), "PIER  ");
  EXPECT_EQ(rsdp[15], 2) << "revision";
  EXPECT_EQ(get<uint32_t>(rsdp, 16), 0u) << "no RSDT";
  EXPECT_EQ(get<uint32_t>(rsdp, 20), 36u) << "length";
  EXPECT_EQ(get<uint64_t>(rsdp, 24), find(tables, "XSDT").address);
}

TEST(AcpiTables, XsdtListsFadtThenMadt) {
  const AcpiTables tables = build_acpi_tables({});
  const auto xsdt = bytes_of(tables, "XSDT");
  ASSERT_EQ(xsdt.size(), 36u + 2 * 8);
  EXPECT_EQ(get<uint64_t>(xsdt, 36), find(tables, "FACP").address);
  EXPECT_EQ(get<uint64_t>(xsdt, 44), find(tables, "APIC").address);
}

TEST(AcpiTables, FadtPointsAtTheDsdt) {
  const AcpiTables tables = build_acpi_tables({});
  const auto fadt = bytes_of(tables, "FACP");
  ASSERT_EQ(fadt.size(), kFadtLength);
  const uint64_t dsdt = find(tables, "DSDT").address;
  EXPECT_EQ(get<uint64_t>(fadt, kFadtXDsdt), dsdt);
  EXPECT_EQ(get<uint32_t>(fadt, kFadtDsdt), dsdt) << "32-bit copy must agree";
  EXPECT_EQ(get<uint64_t>(fadt, 132), 0u) << "no FACS in hardware-reduced mode";
  EXPECT_EQ(get<uint32_t>(fadt, 36), 0u);
}

TEST(AcpiTables, FadtIsHardwareReducedWithSleepAndResetRegistersAtTheLayoutPorts) {
  const auto fadt = bytes_of(build_acpi_tables({}), "FACP");
  const uint32_t flags = get<uint32_t>(fadt, kFadtFlags);
  EXPECT_TRUE(flags & (1u << 20)) << "HW_REDUCED_ACPI";
  EXPECT_TRUE(flags & (1u << 10)) << "RESET_REG_SUP";
  EXPECT_TRUE(flags & (1u << 4)) << "PWR_BUTTON (none)";
  EXPECT_TRUE(flags & (1u << 5)) << "SLP_BUTTON (none)";
  EXPECT_FALSE(flags & (1u << 8)) << "TMR_VAL_EXT: there is no PM timer";

  const uint16_t iapc = get<uint16_t>(fadt, kFadtIapcBootArch);
  EXPECT_TRUE(iapc & (1u << 2)) << "VGA not present";
  EXPECT_FALSE(iapc & (1u << 3)) << "MSI must stay supported";
  EXPECT_FALSE(iapc & (1u << 1)) << "no 8042: pier's i8042 only handles reset";
  EXPECT_FALSE(iapc & (1u << 0)) << "no legacy (LPC/ISA) devices to enumerate";
  EXPECT_TRUE(iapc & (1u << 5)) << "no CMOS RTC";

  EXPECT_EQ(get<uint16_t>(fadt, kFadtSciInt), layout::kAcpiSciIrq);
  EXPECT_GE(fadt[kFadtMinorVersion], 3);

  auto expect_io_byte = [&](size_t offset, uint16_t port) {
    const GasValue g = gas(fadt, offset);
    EXPECT_EQ(g.space, 1) << "System I/O";
    EXPECT_EQ(g.bit_width, 8);
    EXPECT_EQ(g.bit_offset, 0);
    EXPECT_EQ(g.access_size, 1) << "byte access";
    EXPECT_EQ(g.address, port);
  };
  expect_io_byte(kFadtResetReg, layout::kAcpiReset);
  EXPECT_EQ(fadt[kFadtResetValue], layout::kAcpiResetValue);
  expect_io_byte(kFadtSleepControlReg, layout::kAcpiSleepControl);
  expect_io_byte(kFadtSleepStatusReg, layout::kAcpiSleepStatus);
  // Everything between the fixed blocks the hardware-reduced model ignores stays zero.
  for (size_t offset = 148; offset < kFadtSleepControlReg; ++offset) {
    EXPECT_EQ(fadt[offset], 0) << "X_PM/X_GPE byte " << offset;
  }
}

struct MadtEntries {
  std::vector<std::vector<uint8_t>> by_type[16];
  size_t total = 0;
};

MadtEntries parse_madt(const std::vector<uint8_t>& madt) {
  MadtEntries entries;
  size_t offset = 44;
  while (offset + 2 <= madt.size()) {
    const uint8_t type = madt[offset];
    const uint8_t length = madt[offset + 1];
    EXPECT_GE(length, 2);
    if (length < 2 || offset + length > madt.size()) break;
    EXPECT_LT(type, 16);
    if (type < 16) {
      entries.by_type[type].emplace_back(madt.begin() + static_cast<ptrdiff_t>(offset),
                                         madt.begin() + static_cast<ptrdiff_t>(offset + length));
    }
    ++entries.total;
    offset += length;
  }
  EXPECT_EQ(offset, madt.size()) << "entries must tile the table exactly";
  return entries;
}

class AcpiMadt : public testing::TestWithParam<uint32_t> {};

TEST_P(AcpiMadt, DescribesEveryCpuTheIoapicTheTimerOverrideAndLint1Nmi) {
  const uint32_t cpus = GetParam();
  const auto madt = bytes_of(build_acpi_tables({.cpus = cpus}), "APIC");
  EXPECT_EQ(get<uint32_t>(madt, 36), layout::kLapic);
  EXPECT_EQ(get<uint32_t>(madt, 40), 1u) << "PCAT_COMPAT";
  const MadtEntries entries = parse_madt(madt);
  EXPECT_EQ(entries.total, cpus + 3u);

  const auto& lapics = entries.by_type[0];
  ASSERT_EQ(lapics.size(), cpus);
  std::vector<bool> id_used(256, false);
  for (uint32_t i = 0; i < cpus; ++i) {
    const auto& e = lapics[i];
    ASSERT_EQ(e.size(), 8u);
    EXPECT_EQ(e[2], i) << "processor uid";
    EXPECT_EQ(e[3], i) << "APIC id";
    EXPECT_EQ(get<uint32_t>(e, 4), 1u) << "enabled";
    id_used[e[3]] = true;
  }

  ASSERT_EQ(entries.by_type[1].size(), 1u);
  const auto& ioapic = entries.by_type[1][0];
  ASSERT_EQ(ioapic.size(), 12u);
  EXPECT_FALSE(id_used[ioapic[2]]) << "IOAPIC id " << int(ioapic[2]) << " collides with a LAPIC";
  EXPECT_EQ(get<uint32_t>(ioapic, 4), layout::kIoapic);
  EXPECT_EQ(get<uint32_t>(ioapic, 8), 0u) << "GSI base";

  ASSERT_EQ(entries.by_type[2].size(), 1u);
  const auto& iso = entries.by_type[2][0];
  ASSERT_EQ(iso.size(), 10u);
  EXPECT_EQ(iso[2], 0) << "bus ISA";
  EXPECT_EQ(iso[3], 0) << "ISA IRQ 0";
  EXPECT_EQ(get<uint32_t>(iso, 4), 2u) << "-> GSI 2";
  EXPECT_EQ(get<uint16_t>(iso, 8), 0x5) << "edge, active high";

  ASSERT_EQ(entries.by_type[4].size(), 1u);
  const auto& nmi = entries.by_type[4][0];
  ASSERT_EQ(nmi.size(), 6u);
  EXPECT_EQ(nmi[2], 0xff) << "all processors";
  EXPECT_EQ(nmi[5], 1) << "LINT1";
}

INSTANTIATE_TEST_SUITE_P(Acpi, AcpiMadt, testing::Values(1u, 2u, 64u, kMaxCpus));

TEST(AcpiTables, TablesAreAlignedDoNotOverlapAndFitTheWindow) {
  for (uint32_t cpus : {1u, 2u, 64u, kMaxCpus}) {
    SCOPED_TRACE(cpus);
    const AcpiTables tables = build_acpi_tables({.cpus = cpus});
    ASSERT_FALSE(tables.tables.empty());
    EXPECT_EQ(tables.tables.front().address, layout::kAcpiStart);
    uint64_t end = layout::kAcpiStart;
    for (const auto& entry : tables.tables) {  // image order is address order
      SCOPED_TRACE(entry.signature);
      EXPECT_EQ(entry.address % 16, 0u);
      EXPECT_GE(entry.address, end);
      end = entry.address + entry.length;
    }
    EXPECT_LE(end, layout::kAcpiEnd);
    EXPECT_EQ(tables.image.size(), end - layout::kAcpiStart);
  }
}

TEST(AcpiTables, LaysOutAtAnotherBase) {
  const uint64_t base = layout::kAcpiStart + 0x1000;
  const AcpiTables tables = build_acpi_tables({.cpus = 2}, base);
  EXPECT_EQ(tables.rsdp_address, base);
  const auto rsdp = bytes_of(tables, "RSD PTR ");
  EXPECT_EQ(get<uint64_t>(rsdp, 24), find(tables, "XSDT").address);
  EXPECT_EQ(get<uint64_t>(bytes_of(tables, "FACP"), kFadtXDsdt), find(tables, "DSDT").address);
  EXPECT_GE(find(tables, "XSDT").address, base);
}

TEST(AcpiTables, RejectsCpuCountsItCannotDescribe) {
  EXPECT_THROW(build_acpi_tables({.cpus = 0}), Error);
  EXPECT_THROW(build_acpi_tables({.cpus = kMaxCpus + 1}), Error);
  EXPECT_THROW(build_acpi_tables({.cpus = 1024}), Error);
  EXPECT_NO_THROW(build_acpi_tables({.cpus = kMaxCpus}));
}

TEST(AcpiTables, RejectsABaseWhereTheyDoNotFit) {
  EXPECT_THROW(build_acpi_tables({}, layout::kAcpiEnd - 0x100), Error);
  EXPECT_THROW(build_acpi_tables({}, layout::kAcpiStart + 8), Error) << "unaligned";
  EXPECT_THROW(build_acpi_tables({}, layout::kAcpiStart - 0x1000), Error) << "below the window";
}

// Returns the byte offset of `needle` in `haystack`, or nullopt.
std::optional<size_t> search(const std::vector<uint8_t>& haystack,
                             const std::vector<uint8_t>& needle) {
  auto it = std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end());
  if (it == haystack.end()) return std::nullopt;
  return static_cast<size_t>(it - haystack.begin());
}

TEST(AcpiTables, DsdtS5GivesSleepType5SoPowerOffWrites0x34) {
  const auto dsdt = bytes_of(build_acpi_tables({}), "DSDT");
  // NameOp "_S5_" PackageOp PkgLength NumElements, then element 0 as BytePrefix 5.
  const auto at = search(dsdt, {0x08, '_', 'S', '5', '_', 0x12});
  ASSERT_TRUE(at.has_value()) << "no Name(_S5_, Package)";
  const size_t element0 = *at + 6 + 1 + 1;
  ASSERT_LT(element0 + 1, dsdt.size());
  uint8_t slp_typ = 0;
  if (dsdt[element0] == 0x0a) {
    slp_typ = dsdt[element0 + 1];  // BytePrefix
  } else {
    FAIL() << "unexpected AML encoding for SLP_TYPa: " << int(dsdt[element0]);
  }
  EXPECT_EQ(slp_typ, 5);
  EXPECT_EQ((slp_typ << 2) | (1 << 5), 0x34) << "the value the sleep control device must expect";
}

TEST(AcpiTables, DsdtDescribesCom1AtTheLayoutPortAndIrq) {
  const auto dsdt = bytes_of(build_acpi_tables({}), "DSDT");
  // DWordConst EisaId("PNP0501").
  EXPECT_TRUE(search(dsdt, {0x0c, 0x41, 0xd0, 0x05, 0x01})) << "no EisaId(PNP0501)";
  const uint8_t lo = layout::kCom1 & 0xff, hi = layout::kCom1 >> 8;
  // IO(Decode16, min, max, align 1, length) small resource descriptor.
  EXPECT_TRUE(search(dsdt, {0x47, 0x01, lo, hi, lo, hi, 0x01, uint8_t(layout::kCom1Size)}))
      << "COM1 I/O range does not match layout::kCom1";
  // IRQNoFlags: descriptor 0x22, 16-bit IRQ mask.
  const uint16_t mask = uint16_t(1u << layout::kCom1Irq);
  EXPECT_TRUE(search(dsdt, {0x22, uint8_t(mask & 0xff), uint8_t(mask >> 8)}))
      << "COM1 IRQ does not match layout::kCom1Irq";
}

TEST(AcpiTables, WriteCopiesTheImageIntoGuestMemory) {
  auto memory = GuestMemory::create(layout::kMinRam);
  const AcpiConfig config{.cpus = 4};
  const uint64_t rsdp = write_acpi_tables(memory, config);
  EXPECT_EQ(rsdp, layout::kAcpiStart);
  const AcpiTables expected = build_acpi_tables(config);
  std::vector<uint8_t> got(expected.image.size());
  ASSERT_TRUE(memory.read(rsdp, got));
  EXPECT_EQ(got, expected.image);
}

// ---- iasl -d: an independent decoder (and lint) for the tables ----

std::optional<fs::path> find_iasl() {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return std::nullopt;
  std::stringstream dirs(path);
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (dir.empty()) continue;
    const fs::path candidate = fs::path(dir) / "iasl";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return std::nullopt;
}

class TempDir {
 public:
  TempDir() {
    std::string templ = (fs::temp_directory_path() / "pier-acpi-XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = templ;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// How iasl prints a 64-bit address.
std::string fmt_hex(uint64_t value) {
  return fmt::format("{:016X}", value);
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(AcpiIasl, DisassemblesEveryTableWithoutComplaint) {
  const auto iasl = find_iasl();
  if (!iasl) GTEST_SKIP() << "iasl not on PATH (Debian: apt-get install acpica-tools)";
  const AcpiTables tables = build_acpi_tables({.cpus = 2});
  TempDir dir;

  std::map<std::string, std::string> dsl;
  for (const std::string signature : {"XSDT", "FACP", "DSDT", "APIC"}) {
    SCOPED_TRACE(signature);
    const fs::path dat = dir.path() / (signature + ".dat");
    const auto bytes = bytes_of(tables, signature);
    std::ofstream(dat, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
    const fs::path log = dir.path() / (signature + ".log");
    const std::string command =
        "'" + iasl->string() + "' -d '" + dat.string() + "' > '" + log.string() + "' 2>&1";
    const int status = std::system(command.c_str());
    const std::string output = read_text(log);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << output;
    // iasl flags bad checksums, lengths and reserved bits as warnings/errors.
    EXPECT_EQ(output.find("Warning"), std::string::npos) << output;
    EXPECT_EQ(output.find("Error  "), std::string::npos) << output;
    const fs::path disassembly = dir.path() / (signature + ".dsl");
    dsl[signature] = read_text(disassembly);
    EXPECT_EQ(dsl[signature].find("Incorrect"), std::string::npos) << dsl[signature];
    EXPECT_EQ(dsl[signature].find("Invalid"), std::string::npos) << dsl[signature];

    // Round trip: compiling the disassembly must give back our bytes, except the checksum and
    // the creator id/revision, which iasl replaces with its own. A wrong length or subtable layout
    // decodes to something that does not re-encode to the same table.
    const fs::path prefix = dir.path() / ("rt_" + signature);
    const fs::path compile_log = dir.path() / ("rt_" + signature + ".log");
    const std::string compile = "'" + iasl->string() + "' -p '" + prefix.string() + "' '" +
                                disassembly.string() + "' > '" + compile_log.string() + "' 2>&1";
    const int compile_status = std::system(compile.c_str());
    const std::string compile_output = read_text(compile_log);
    ASSERT_TRUE(WIFEXITED(compile_status) && WEXITSTATUS(compile_status) == 0) << compile_output;
    EXPECT_NE(compile_output.find("0 Errors, 0 Warnings, 0 Remarks"), std::string::npos)
        << compile_output;
    const std::string recompiled = read_text(prefix.string() + ".aml");
    ASSERT_EQ(recompiled.size(), bytes.size());
    for (size_t i = 0; i < bytes.size(); ++i) {
      if (i == 9 || (i >= 28 && i < 36)) continue;  // checksum, creator id and revision
      EXPECT_EQ(uint8_t(recompiled[i]), bytes[i]) << "byte " << i;
    }
  }

  EXPECT_NE(dsl["DSDT"].find("_S5_"), std::string::npos) << dsl["DSDT"];
  EXPECT_NE(dsl["DSDT"].find("PNP0501"), std::string::npos) << dsl["DSDT"];
  EXPECT_NE(dsl["DSDT"].find("0x03F8"), std::string::npos) << dsl["DSDT"];

  const std::string& fadt = dsl["FACP"];
  for (const char* field : {"Hardware Reduced (V5) : 1", "Reset Register Supported (V2) : 1",
                            "VGA Not Present (V4) : 1", "MSI Not Supported (V4) : 0",
                            "8042 Present on ports 60/64 (V2) : 0", "Revision : 06"}) {
    EXPECT_NE(fadt.find(field), std::string::npos) << field << "\n" << fadt;
  }
  EXPECT_NE(fadt.find("0000000000000600"), std::string::npos) << "sleep control\n" << fadt;
  EXPECT_NE(fadt.find("0000000000000601"), std::string::npos) << "sleep status\n" << fadt;
  EXPECT_NE(fadt.find("0000000000000602"), std::string::npos) << "reset\n" << fadt;
  EXPECT_NE(fadt.find(fmt_hex(find(tables, "DSDT").address)), std::string::npos) << fadt;

  const std::string& madt = dsl["APIC"];
  EXPECT_NE(madt.find("FEC00000"), std::string::npos) << madt;
  EXPECT_NE(madt.find("FEE00000"), std::string::npos) << madt;
  EXPECT_NE(madt.find("Interrupt Source Override"), std::string::npos) << madt;
  EXPECT_NE(madt.find("Local APIC NMI"), std::string::npos) << madt;

  const std::string& xsdt = dsl["XSDT"];
  EXPECT_NE(xsdt.find(fmt_hex(find(tables, "FACP").address)), std::string::npos) << xsdt;
  EXPECT_NE(xsdt.find(fmt_hex(find(tables, "APIC").address)), std::string::npos) << xsdt;
}

}  // namespace
}  // namespace pier::acpi
