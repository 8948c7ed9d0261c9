// triple_fault: loads an empty IDT and faults; the CPU cannot deliver the fault nor the #DF, so
// it shuts down. pier must exit non-zero with a message. cmdline how=ud2 (default) | gp | pf;
// cpu=ap: the fault happens on an AP (run with --cpus 2) while the BSP halts.
#include "bare.h"
TEST_NAME("triple_fault");

static char how[8] = "ud2";

static void fault_now(void) {
  static const struct {
    uint16_t limit;
    uint64_t base;
  } PACKED null_idt = {0, 0};
  __asm__ volatile("lidt %0" ::"m"(null_idt));
  if (!strcmp(how, "gp")) __asm__ volatile("movq (%0), %%rax" ::"r"(0x8000000000000000ull) : "rax");  // non-canonical
  else if (!strcmp(how, "pf")) __asm__ volatile("movq (%0), %%rax" ::"r"(0x7fff00000000ull) : "rax");  // unmapped
  else __asm__ volatile("ud2");
}

static void ap(int index) {
  if (index == 1) fault_now();
}

int test_main(void) {
  cmdline_str("how", how, sizeof how);
  int on_ap = cmdline_has("cpu=ap");
  printf("PIER-TEST ARMED triple_fault how=%s on the %s\n", how, on_ap ? "AP" : "BSP");
  if (on_ap) {
    lapic_enable();
    smp_start_aps(ap);
    delay_tsc((tsc_khz() ? tsc_khz() : 3000000) * 5000);
    test_fail("still running 5 s after an AP faulted with an empty IDT");
  }
  fault_now();
  test_fail("still running after a fault with an empty IDT");
}
