// Read-only walk of the ACPI tables pier builds (RSDP -> XSDT/RSDT -> tables), and waiting helpers.
#include "bare.h"

static int sum8(const void *p, size_t n) {
  uint8_t s = 0;
  for (size_t i = 0; i < n; i++) s += ((const uint8_t *)p)[i];
  return s;
}

const void *acpi_rsdp(void) {
  uint64_t a = *(uint64_t *)(boot_params + 0x070);
  if (a && !memcmp((const void *)a, "RSD PTR ", 8)) return (const void *)a;
  for (a = 0xe0000; a < 0x100000; a += 16)
    if (!memcmp((const void *)a, "RSD PTR ", 8) && !sum8((const void *)a, 20)) return (const void *)a;
  return 0;
}

const void *acpi_find_table(const char *sig) {
  const uint8_t *rsdp = acpi_rsdp();
  if (!rsdp) return 0;
  int xsdt = rsdp[15] >= 2 && *(uint64_t *)(rsdp + 24);
  const uint8_t *root = xsdt ? (const uint8_t *)*(uint64_t *)(rsdp + 24) : (const uint8_t *)(uint64_t) * (uint32_t *)(rsdp + 16);
  uint32_t len = *(uint32_t *)(root + 4);
  int esz = xsdt ? 8 : 4;
  for (uint32_t off = 36; off + esz <= len; off += esz) {
    uint64_t t = xsdt ? *(uint64_t *)(root + off) : *(uint32_t *)(root + off);
    const uint8_t *tab = (const uint8_t *)t;
    if (!memcmp(tab, sig, 4) && !sum8(tab, *(uint32_t *)(tab + 4))) return tab;
  }
  return 0;
}

int acpi_madt_cpus(uint8_t *ids, int max) {
  const uint8_t *madt = acpi_find_table("APIC");
  if (!madt) return -1;
  uint32_t len = *(uint32_t *)(madt + 4);
  int n = 0;
  for (uint32_t off = 44; off + 2 <= len && madt[off + 1]; off += madt[off + 1]) {
    if (madt[off] == 0 && (*(uint32_t *)(madt + off + 4) & 1)) {  // processor LAPIC, enabled
      if (n < max) ids[n] = madt[off + 3];
      n++;
    }
  }
  return n;
}

struct wait_args {
  volatile uint32_t *p;
  uint32_t target;
  uint64_t cycles;
};

static uint64_t wait_fn(uint64_t a) {
  struct wait_args *w = (struct wait_args *)a;
  uint64_t t0 = rdtsc();
  while (*w->p < w->target)
    if (rdtsc() - t0 > w->cycles) return 0;
  return 1;
}

int wait_user(volatile uint32_t *p, uint32_t target, uint64_t timeout_ms) {
  if (*p >= target) return 1;
  uint64_t khz = tsc_khz();
  struct wait_args w = {p, target, (khz ? khz : 3000000) * timeout_ms};
  return (int)enter_user(wait_fn, (uint64_t)&w, ENTER_USER_IF);
}
