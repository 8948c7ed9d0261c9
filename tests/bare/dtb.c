// dtb: finds the machine description pier passes through setup_data (SETUP_DTB), parses it with
// Debian's libfdt (linked into this freestanding image) and checks it against what the guest
// sees: CPUs vs the MADT, memory vs e820, and each PCI device node vs the device itself (type-1
// config space id and BAR0).
#include <libfdt.h>

#include "virtio.h"
TEST_NAME("dtb");

static const void *find_dtb(void) {
  uint64_t node;
  memcpy(&node, boot_params + 0x250, 8);  // hdr.setup_data
  for (int guard = 0; node && guard < 16; ++guard) {
    const uint8_t *sd = (const uint8_t *)node;
    uint32_t type;
    memcpy(&type, sd + 8, 4);
    if (type == 2) return sd + 16;  // SETUP_DTB
    memcpy(&node, sd, 8);
  }
  return 0;
}

static uint64_t be64(const void *p) { return fdt64_to_cpu(*(const fdt64_t *)p); }

int test_main(void) {
  const void *fdt = find_dtb();
  CHECK(fdt != 0, "SETUP_DTB in the setup_data list");
  if (!fdt) return 1;
  CHECK(fdt_check_header(fdt) == 0, "valid device tree (%d)", fdt_check_header(fdt));
  printf("device tree: %u bytes\n", fdt_totalsize(fdt));

  int cpus = 0;
  const int cpus_node = fdt_path_offset(fdt, "/cpus");
  for (int n = fdt_first_subnode(fdt, cpus_node); n >= 0; n = fdt_next_subnode(fdt, n)) cpus++;
  uint8_t ids[64];
  const int madt = acpi_madt_cpus(ids, 64);
  CHECK(cpus == madt && cpus >= 1, "CPUs in the tree (%d) = CPUs in the MADT (%d)", cpus, madt);

  uint64_t tree_ram = 0, e820_ram = 0;
  for (int n = fdt_first_subnode(fdt, 0); n >= 0; n = fdt_next_subnode(fdt, n)) {
    const char *name = fdt_get_name(fdt, n, 0);
    if (strncmp(name, "memory@", 7) != 0) continue;
    int len = 0;
    const uint8_t *reg = fdt_getprop(fdt, n, "reg", &len);
    if (reg && len == 16) tree_ram += be64(reg + 8);
  }
  for (int i = 0; i < e820_count(); ++i) {
    if (e820_get(i)->type == E820_RAM) e820_ram += e820_get(i)->size;
  }
  // e820 leaves the legacy 0x9fc00-0x100000 window out of RAM; the tree lists RAM as mapped.
  CHECK(tree_ram == e820_ram + (0x100000 - 0x9fc00), "memory in the tree (%lu) matches e820 (%lu)",
        tree_ram, e820_ram);

  int devices = 0;
  const int pci = fdt_path_offset(fdt, "/pci");
  for (int n = fdt_first_subnode(fdt, pci); n >= 0; n = fdt_next_subnode(fdt, n)) {
    const fdt32_t *slot = fdt_getprop(fdt, n, "reg", 0);
    const fdt32_t *dev = fdt_getprop(fdt, n, "device-id", 0);
    const uint8_t *bar0 = fdt_getprop(fdt, n, "pier,bar0", 0);
    if (!slot || !dev || !bar0) continue;
    const unsigned s = fdt32_to_cpu(*slot);
    const uint32_t id = pci_read32(s, 0);
    printf("tree: 00:%02x.0 %s 1af4:%04x BAR0 0x%lx; config space: %04x:%04x BAR0 0x%lx\n", s,
           (const char *)fdt_getprop(fdt, n, "pier,name", 0), fdt32_to_cpu(*dev), be64(bar0),
           id & 0xffff, id >> 16, pci_bar(s, 0));
    CHECK((id >> 16) == fdt32_to_cpu(*dev), "device id of slot %u matches the tree", s);
    CHECK(pci_bar(s, 0) == be64(bar0), "BAR0 of slot %u matches the tree", s);
    devices++;
  }
  CHECK(devices >= 1, "PCI devices described: %d", devices);
  return 0;
}
