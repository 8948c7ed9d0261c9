#include "boot/fdt.hpp"

#include <fmt/format.h>

extern "C" {
#include <libfdt.h>
}

#include "boot/layout.hpp"
#include "vmm/error.hpp"

namespace pier::boot {
namespace {

// libfdt's sequential-write calls return negative FDT_ERR_* codes; any failure is a bug or an
// oversized tree, reported with the call that failed.
void ok(int rc, const char* what) {
  if (rc < 0) throw Error(fmt::format("device tree: {} failed: {}", what, fdt_strerror(rc)));
}

void prop_u64_pairs(void* fdt, const char* name, const std::vector<uint64_t>& cells) {
  std::vector<fdt64_t> be;
  for (uint64_t c : cells) be.push_back(cpu_to_fdt64(c));
  ok(fdt_property(fdt, name, be.data(), static_cast<int>(be.size() * sizeof(fdt64_t))), name);
}

}  // namespace

std::vector<uint8_t> build_fdt(const MachineDescription& m) {
  std::vector<uint8_t> buf(64 * 1024 + 256 * m.console_ports.size());
  void* fdt = buf.data();
  ok(fdt_create(fdt, static_cast<int>(buf.size())), "fdt_create");
  ok(fdt_finish_reservemap(fdt), "fdt_finish_reservemap");
  ok(fdt_begin_node(fdt, ""), "root");
  ok(fdt_property_string(fdt, "compatible", "pier,x86-64"), "compatible");
  ok(fdt_property_string(fdt, "model", "pier virtual machine"), "model");
  ok(fdt_property_u32(fdt, "#address-cells", 2), "#address-cells");
  ok(fdt_property_u32(fdt, "#size-cells", 2), "#size-cells");

  ok(fdt_begin_node(fdt, "chosen"), "chosen");
  ok(fdt_property_string(fdt, "bootargs", m.cmdline.c_str()), "bootargs");
  ok(fdt_end_node(fdt), "chosen end");

  for (const auto& r : m.memory) {
    ok(fdt_begin_node(fdt, fmt::format("memory@{:x}", r.gpa).c_str()), "memory");
    ok(fdt_property_string(fdt, "device_type", "memory"), "device_type");
    prop_u64_pairs(fdt, "reg", {r.gpa, r.size});
    ok(fdt_end_node(fdt), "memory end");
  }

  ok(fdt_begin_node(fdt, "cpus"), "cpus");
  ok(fdt_property_u32(fdt, "#address-cells", 1), "cpus #address-cells");
  ok(fdt_property_u32(fdt, "#size-cells", 0), "cpus #size-cells");
  for (unsigned i = 0; i < m.cpus; ++i) {
    ok(fdt_begin_node(fdt, fmt::format("cpu@{}", i).c_str()), "cpu");
    ok(fdt_property_string(fdt, "device_type", "cpu"), "cpu device_type");
    ok(fdt_property_u32(fdt, "reg", i), "cpu reg");  // the LAPIC id
    ok(fdt_end_node(fdt), "cpu end");
  }
  ok(fdt_end_node(fdt), "cpus end");

  // Not a standard "pci" bus node (no ranges/#address-cells=3): the guest reaches functions
  // through the type-1 ports, and the BARs are listed per device.
  ok(fdt_begin_node(fdt, "pci"), "pci");
  ok(fdt_property_string(fdt, "compatible", "pier,pci-type1"), "pci compatible");
  ok(fdt_property_u32(fdt, "#address-cells", 1), "pci #address-cells");
  ok(fdt_property_u32(fdt, "#size-cells", 0), "pci #size-cells");
  ok(fdt_property_u32(fdt, "pier,config-port", layout::kPciConfigAddress), "config-port");
  prop_u64_pairs(fdt, "pier,bar-window",
                 {layout::kPciMmioStart, layout::kPciMmioEnd - layout::kPciMmioStart});
  for (const auto& d : m.pci) {
    ok(fdt_begin_node(fdt, fmt::format("device@{:x}", d.slot).c_str()), "pci device");
    ok(fdt_property_string(fdt, "pier,name", d.name.c_str()), "name");
    ok(fdt_property_u32(fdt, "reg", d.slot), "slot");
    ok(fdt_property_u32(fdt, "vendor-id", d.vendor), "vendor-id");
    ok(fdt_property_u32(fdt, "device-id", d.device), "device-id");
    prop_u64_pairs(fdt, "pier,bar0", {d.bar0, d.bar0_size});
    prop_u64_pairs(fdt, "pier,msix-bar", {d.msix_bar, d.msix_bar_size});
    ok(fdt_property_u32(fdt, "pier,msix-vectors", d.msix_vectors), "msix-vectors");
    ok(fdt_property_u32(fdt, "pier,intx-gsi", d.intx_gsi), "intx-gsi");
    if (d.device == 0x1043 && !m.console_ports.empty()) {
      ok(fdt_property_u32(fdt, "pier,max-ports", m.console_max_ports), "max-ports");
      ok(fdt_property_u32(fdt, "#address-cells", 1), "ports #address-cells");
      ok(fdt_property_u32(fdt, "#size-cells", 0), "ports #size-cells");
      for (const auto& p : m.console_ports) {
        ok(fdt_begin_node(fdt, fmt::format("port@{}", p.id).c_str()), "port");
        ok(fdt_property_u32(fdt, "reg", p.id), "port id");
        if (!p.name.empty()) ok(fdt_property_string(fdt, "pier,name", p.name.c_str()), "port name");
        if (p.console) ok(fdt_property(fdt, "pier,console", nullptr, 0), "console");
        ok(fdt_property_string(fdt, "pier,backend", p.backend.c_str()), "backend");
        ok(fdt_end_node(fdt), "port end");
      }
    }
    ok(fdt_end_node(fdt), "pci device end");
  }
  ok(fdt_end_node(fdt), "pci end");

  ok(fdt_end_node(fdt), "root end");
  ok(fdt_finish(fdt), "fdt_finish");
  buf.resize(fdt_totalsize(fdt));
  return buf;
}

uint64_t write_setup_dtb(const GuestMemory& memory, uint64_t address, uint64_t max_bytes,
                         const std::vector<uint8_t>& dtb) {
  struct SetupDataHeader {
    uint64_t next;
    uint32_t type;
    uint32_t len;
  } header{0, kSetupDtb, static_cast<uint32_t>(dtb.size())};
  static_assert(sizeof(SetupDataHeader) == 16);
  if (sizeof(header) + dtb.size() > max_bytes) {
    throw Error(fmt::format("device tree of {} bytes does not fit the {} KiB setup_data area",
                            dtb.size(), max_bytes >> 10));
  }
  memory.load(address, std::span(reinterpret_cast<const uint8_t*>(&header), sizeof(header)),
              "setup_data header");
  memory.load(address + sizeof(header), dtb, "device tree");
  return address;
}

}  // namespace pier::boot
