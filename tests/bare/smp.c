// smp: run with --cpus N. Counts the CPUs in pier's MADT, starts the APs with INIT-SIPI-SIPI
// (real-mode trampoline at 0x10000 -> protected mode -> long mode), each AP reports its LAPIC id,
// checks it is in long mode and increments a shared counter; the BSP waits (CPL3 spin, timeout)
// and checks the count and the ids.
// cmdline: cpus=N (expected CPU count; default: the MADT's), timeout_ms=N (default 10000),
// poweroff=ap (the last AP powers the VM off while the BSP halts).
#include "bare.h"
TEST_NAME("smp");

static volatile uint32_t ap_done;
static volatile uint32_t ap_ids[SMP_MAX_CPUS], ap_longmode[SMP_MAX_CPUS];

static volatile uint32_t ap_poweroff_index;

static void ap(int index) {
  uint32_t id = lapic_id();
  uint64_t efer = rdmsr(0xc0000080);
  if (index < SMP_MAX_CPUS) {
    ap_ids[index] = id;
    ap_longmode[index] = (efer & 0x400) && (read_cr0() & 0x80000000) && read_cs() == KERNEL_CS;
  }
  __atomic_add_fetch(&ap_done, 1, __ATOMIC_SEQ_CST);
  if (ap_poweroff_index && (uint32_t)index == ap_poweroff_index) {
    // poweroff=ap: wait for the BSP's verdict line, then end the VM from this AP.
    while (ap_poweroff_index != ~0u) pause();
    power_off();
  }
}

int test_main(void) {
  uint8_t madt_ids[SMP_MAX_CPUS];
  int madt = acpi_madt_cpus(madt_ids, SMP_MAX_CPUS);
  printf("MADT: %d enabled CPUs:", madt);
  for (int i = 0; i < madt && i < SMP_MAX_CPUS; i++) printf(" %u", madt_ids[i]);
  printf("\n");
  int cpus = (int)cmdline_u64("cpus", madt > 0 ? (uint64_t)madt : 1);
  if (madt >= 0) CHECK(madt == cpus, "MADT lists %d CPUs", cpus);
  uint32_t bsp = lapic_id();
  printf("BSP LAPIC id %u, expecting %d APs\n", bsp, cpus - 1);
  lapic_enable();
  int poweroff_from_ap = cmdline_has("poweroff=ap") && cpus > 1;
  if (poweroff_from_ap) ap_poweroff_index = (uint32_t)(cpus - 1);
  uint64_t t0 = rdtsc();
  smp_start_aps(ap);
  uint64_t sent = rdtsc();
  int ok = wait_user(&ap_done, (uint32_t)(cpus - 1), cmdline_u64("timeout_ms", 10000));
  uint64_t khz = tsc_khz() ? tsc_khz() : 3000000;
  uint64_t t1 = rdtsc();
  // A late extra AP would show up here.
  delay_tsc(khz * 20);
  printf("APs: %u arrived in the trampoline, %u done; IPIs sent in %lu us, all up after %lu us\n", smp_ap_arrived,
         ap_done, (sent - t0) * 1000 / khz, (t1 - t0) * 1000 / khz);
  CHECK(ok && ap_done == (uint32_t)(cpus - 1), "%d AP(s) started and counted (%u)", cpus - 1, ap_done);
  int unique = 1, longmode = 1;
  for (uint32_t i = 1; i <= ap_done && i < SMP_MAX_CPUS; i++) {
    printf("  AP #%u: LAPIC id %u, long mode %s\n", i, ap_ids[i], ap_longmode[i] ? "yes" : "NO");
    if (ap_ids[i] == bsp) unique = 0;
    for (uint32_t k = 1; k < i; k++)
      if (ap_ids[k] == ap_ids[i]) unique = 0;
    if (!ap_longmode[i]) longmode = 0;
    int in_madt = madt < 0;
    for (int k = 0; k < madt && k < SMP_MAX_CPUS; k++)
      if (madt_ids[k] == ap_ids[i]) in_madt = 1;
    if (!in_madt) unique = 0, printf("  AP #%u: LAPIC id %u is not in the MADT\n", i, ap_ids[i]);
  }
  CHECK(unique, "AP LAPIC ids are distinct, differ from the BSP's and are listed in the MADT");
  CHECK(longmode, "every AP reached 64-bit long mode");
  printf("smp: %u CPUs running\n", ap_done + 1);
  if (poweroff_from_ap && ok && !check_failures()) {
    printf("PIER-TEST PASS smp (AP #%u powers off; the BSP halts)\n", ap_poweroff_index);
    ap_poweroff_index = ~0u;
    halt_forever();
  }
  return 0;
}
