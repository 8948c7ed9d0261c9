#include "boot/fdt.hpp"

#include <gtest/gtest.h>

extern "C" {
#include <libfdt.h>
}

#include "boot/layout.hpp"
#include "vmm/error.hpp"

namespace pier::boot {
namespace {

MachineDescription sample() {
  MachineDescription m;
  m.memory = {{0, 3ull << 30}, {layout::kHighRamStart, 2ull << 30}};
  m.cpus = 2;
  m.cmdline = "console=ttyS0";
  FdtPciDevice d;
  d.slot = 1;
  d.vendor = 0x1af4;
  d.device = 0x1043;
  d.name = "virtio-console";
  d.bar0 = 0xc0000000;
  d.bar0_size = 0x4000;
  d.msix_vectors = 65;
  m.pci.push_back(d);
  m.console_ports = {{0, "", true, "socket=/tmp/c.sock"}, {1, "org.pier.agent", false, "pty"}};
  m.console_max_ports = 31;
  return m;
}

uint32_t u32(const void* fdt, int node, const char* name) {
  int len = 0;
  const auto* p = static_cast<const fdt32_t*>(fdt_getprop(fdt, node, name, &len));
  return p && len == 4 ? fdt32_to_cpu(*p) : 0xdeadbeef;
}

TEST(Fdt, DescribesMemoryCpusPciDevicesAndPorts) {
  const auto blob = build_fdt(sample());
  const void* fdt = blob.data();
  ASSERT_EQ(fdt_check_header(fdt), 0);
  EXPECT_EQ(fdt_totalsize(fdt), blob.size());
  EXPECT_GE(fdt_path_offset(fdt, "/memory@0"), 0);
  const int high = fdt_path_offset(fdt, "/memory@100000000");
  ASSERT_GE(high, 0);
  int len = 0;
  const auto* reg = static_cast<const fdt64_t*>(fdt_getprop(fdt, high, "reg", &len));
  ASSERT_EQ(len, 16);
  // Property values are only 4-byte aligned: fdt64_ld reads them byte by byte.
  EXPECT_EQ(fdt64_ld(&reg[0]), layout::kHighRamStart);
  EXPECT_EQ(fdt64_ld(&reg[1]), 2ull << 30);
  EXPECT_GE(fdt_path_offset(fdt, "/cpus/cpu@1"), 0);
  EXPECT_LT(fdt_path_offset(fdt, "/cpus/cpu@2"), 0);
  const int dev = fdt_path_offset(fdt, "/pci/device@1");
  ASSERT_GE(dev, 0);
  EXPECT_EQ(u32(fdt, dev, "device-id"), 0x1043u);
  EXPECT_EQ(u32(fdt, dev, "pier,msix-vectors"), 65u);
  const int port = fdt_path_offset(fdt, "/pci/device@1/port@1");
  ASSERT_GE(port, 0);
  EXPECT_STREQ(static_cast<const char*>(fdt_getprop(fdt, port, "pier,name", nullptr)),
               "org.pier.agent");
  EXPECT_NE(fdt_getprop(fdt, fdt_path_offset(fdt, "/pci/device@1/port@0"), "pier,console", nullptr),
            nullptr);
  EXPECT_STREQ(static_cast<const char*>(
                   fdt_getprop(fdt, fdt_path_offset(fdt, "/chosen"), "bootargs", nullptr)),
               "console=ttyS0");
}

TEST(Fdt, SetupDataNodeCarriesTheBlob) {
  auto mem = GuestMemory::create(64 << 20);
  const auto blob = build_fdt(sample());
  EXPECT_EQ(write_setup_dtb(mem, layout::kSetupData, layout::kSetupDataMax, blob),
            layout::kSetupData);
  EXPECT_EQ(mem.read_obj<uint64_t>(layout::kSetupData), 0u);  // next
  EXPECT_EQ(mem.read_obj<uint32_t>(layout::kSetupData + 8), kSetupDtb);
  EXPECT_EQ(mem.read_obj<uint32_t>(layout::kSetupData + 12), blob.size());
  EXPECT_EQ(mem.read_obj<uint32_t>(layout::kSetupData + 16), 0xedfe0dd0u);  // FDT magic, BE
  EXPECT_THROW(write_setup_dtb(mem, layout::kSetupData, 64, blob), Error);
}

TEST(Fdt, ManyPortsStillFit) {
  auto m = sample();
  m.console_ports.clear();
  for (uint32_t i = 0; i < 511; ++i)
    m.console_ports.push_back(
        {i, "org.pier.port" + std::to_string(i), false, "socket=/tmp/a-very-long-path/port.sock"});
  const auto blob = build_fdt(m);
  EXPECT_EQ(fdt_check_header(blob.data()), 0);
  EXPECT_LE(blob.size() + 16, layout::kSetupDataMax);
}

}  // namespace
}  // namespace pier::boot
