// reset: resets the machine the way Linux's reboot= methods do; pier must end the run (exit 0).
// cmdline method=kbd (default: port 0x64 <- 0xFE) | acpi (the FADT's reset register and value,
// read from the tables as Linux does) | cf9 (0xCF9 <- 0x02 then 0x06, Linux's sequence);
// cpu=ap: an AP resets (run with --cpus 2) while the BSP keeps running. The PASS line is printed
// first; if the reset is ignored the guest prints a FAIL line and powers off.
#include "bare.h"
TEST_NAME("reset");

static char method[8] = "kbd";

// ACPI Generic Address Structure and the FADT fields this guest reads (ACPI 6.x table 5.9).
struct gas {
  uint8_t space, bit_width, bit_offset, access_size;
  uint64_t address;
} PACKED;
#define FADT_FLAGS 112
#define FADT_RESET_REG 116
#define FADT_RESET_VALUE 128
#define FADT_RESET_REG_SUP (1u << 10)

static void acpi_reset(void) {
  const uint8_t *fadt = acpi_find_table("FACP");
  if (!fadt) test_fail("no FADT");
  uint32_t flags;
  struct gas reg;
  memcpy(&flags, fadt + FADT_FLAGS, 4);
  memcpy(&reg, fadt + FADT_RESET_REG, sizeof reg);
  if (!(flags & FADT_RESET_REG_SUP)) test_fail("FADT flags %#x lack RESET_REG_SUP", flags);
  if (reg.space != 1) test_fail("FADT reset register in address space %u, not I/O", reg.space);
  outb((uint16_t)reg.address, fadt[FADT_RESET_VALUE]);
}

static void reset_now(void) {
  if (!strcmp(method, "acpi")) {
    acpi_reset();
  } else if (!strcmp(method, "cf9")) {
    outb(0xcf9, 0x02);  // SYS_RST: choose a hard reset
    outb(0xcf9, 0x06);  // + RST_CPU: reset now
  } else {
    outb(0x64, 0xfe);
  }
}

static void ap(int index) {
  if (index == 1) reset_now();
}

int test_main(void) {
  cmdline_str("method", method, sizeof method);
  const int on_ap = cmdline_has("cpu=ap");
  printf("PIER-TEST PASS reset (method=%s on the %s)\n", method, on_ap ? "AP" : "BSP");
  if (on_ap) {
    lapic_enable();
    smp_start_aps(ap);
    // The BSP keeps running (not halted) while the AP resets.
    const uint64_t khz = tsc_khz() ? tsc_khz() : 3000000;
    for (int i = 0; i < 5000; ++i) delay_tsc(khz);
    test_fail("still running 5 s after the AP reset with method=%s", method);
  }
  reset_now();
  test_fail("reset with method=%s returned", method);
}
