// pci_scan: enumerates PCI bus 0 the way Linux's type-1 probe does (CONFIG_ADDRESS must read back
// a dword write, byte writes to 0xCFB must not disturb it), checks the host bridge at 00:00.0 and
// that absent functions read all-ones, and that the DSDT describes the host bridge (PCI0 with
// _CRS and _PRT), which Linux needs once ACPI is on.
#include "bare.h"
TEST_NAME("pci_scan");

static uint32_t cfg_read(unsigned dev, unsigned fn, unsigned reg) {
  outl(0xcf8, 0x80000000u | (dev << 11) | (fn << 8) | (reg & 0xfc));
  return inl(0xcfc);
}

static int contains(const uint8_t *p, uint32_t len, const char *needle) {
  const size_t n = strlen(needle);
  for (uint32_t i = 0; i + n <= len; ++i) {
    if (memcmp(p + i, needle, n) == 0) return 1;
  }
  return 0;
}

int test_main(void) {
  outl(0xcf8, 0x80000000u);
  CHECK(inl(0xcf8) == 0x80000000u, "CONFIG_ADDRESS reads back %#x", inl(0xcf8));
  outb(0xcfb, 0x01);  // the mechanism-2 probe Linux does first
  CHECK(inl(0xcf8) == 0x80000000u, "byte write to 0xCFB left CONFIG_ADDRESS %#x", inl(0xcf8));

  const uint32_t id = cfg_read(0, 0, 0);
  CHECK(id == 0x00081b36u, "host bridge id %#x (want 1b36:0008)", id);
  CHECK((cfg_read(0, 0, 8) >> 16) == 0x0600, "host bridge class %#x", cfg_read(0, 0, 8) >> 16);
  int present = 0;
  for (unsigned dev = 0; dev < 32; ++dev) {
    const uint32_t v = cfg_read(dev, 0, 0);
    if (v != 0xffffffffu) {
      ++present;
      printf("00:%02x.0 %04x:%04x\n", dev, v & 0xffff, v >> 16);
    }
  }
  CHECK(present >= 1, "%d functions on bus 0", present);
  CHECK(cfg_read(0, 1, 0) == 0xffffffffu, "absent function 00:00.1 reads %#x", cfg_read(0, 1, 0));
  CHECK(cfg_read(31, 7, 0) == 0xffffffffu, "absent 00:1f.7 reads %#x", cfg_read(31, 7, 0));
  outl(0xcf8, 0);  // enable bit off: data port reads all-ones
  CHECK(inl(0xcfc) == 0xffffffffu, "CONFIG_DATA with enable off reads %#x", inl(0xcfc));

  const uint8_t *fadt = acpi_find_table("FACP");
  CHECK(fadt != 0, "FADT present");
  if (fadt) {
    uint64_t dsdt_addr;
    memcpy(&dsdt_addr, fadt + 140, 8);  // X_DSDT
    const uint8_t *dsdt = (const uint8_t *)dsdt_addr;
    uint32_t len;
    memcpy(&len, dsdt + 4, 4);
    CHECK(memcmp(dsdt, "DSDT", 4) == 0, "X_DSDT points at a DSDT");
    CHECK(contains(dsdt, len, "PCI0"), "DSDT has PCI0");
    CHECK(contains(dsdt, len, "_PRT"), "DSDT has _PRT");
    CHECK(contains(dsdt, len, "_CRS"), "DSDT has _CRS");
  }
  return 0;
}
