// triple_fault: loads an empty IDT and faults; the CPU cannot deliver the fault nor the #DF, so
// it shuts down. pier must exit non-zero with a message. cmdline how=ud2 (default) | gp | pf.
#include "bare.h"
TEST_NAME("triple_fault");

int test_main(void) {
  char how[8] = "ud2";
  cmdline_str("how", how, sizeof how);
  printf("PIER-TEST ARMED triple_fault how=%s\n", how);
  static const struct {
    uint16_t limit;
    uint64_t base;
  } PACKED null_idt = {0, 0};
  __asm__ volatile("lidt %0" ::"m"(null_idt));
  if (!strcmp(how, "gp")) __asm__ volatile("movq (%0), %%rax" ::"r"(0x8000000000000000ull) : "rax");  // non-canonical
  else if (!strcmp(how, "pf")) __asm__ volatile("movq (%0), %%rax" ::"r"(0x7fff00000000ull) : "rax");  // unmapped
  else __asm__ volatile("ud2");
  test_fail("still running after a fault with an empty IDT");
}
