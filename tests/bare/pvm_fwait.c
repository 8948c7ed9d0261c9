// pvm_fwait: instructions kvm_pvm's emulator fails on in CPL0 and pier's pvm assist completes:
// fwait (Linux's fpu__drop at every kthread exit), and where the CPU has them clac/stac (SMAP)
// and ldmxcsr/stmxcsr (kernel_fpu_begin). On hardware KVM the CPU runs them; the checks are the
// same.
#include "bare.h"
TEST_NAME("pvm_fwait");

#define RFLAGS_AC (1ull << 18)
#define CR4_OSFXSR (1ull << 9)

int test_main(void) {
  // fwait: a no-op without pending x87 exceptions.
  uint64_t x = 5;
  __asm__ volatile("fwait\n\tadd $1, %0\n\tfwait\n\twait\n\tadd $1, %0" : "+r"(x));
  CHECK(x == 7, "fwait x3 in CPL0, execution continued (%lu)", x);
  for (int i = 0; i < 50; i++) __asm__ volatile("fwait");
  CHECK(1, "50 more fwaits");

  uint32_t r[4];
  cpuid(7, 0, r);
  if (r[1] & (1u << 20)) {
    __asm__ volatile("stac" ::: "memory", "cc");
    uint64_t with = read_rflags();
    __asm__ volatile("clac" ::: "memory", "cc");
    uint64_t without = read_rflags();
    CHECK((with & RFLAGS_AC) && !(without & RFLAGS_AC), "stac sets and clac clears RFLAGS.AC (0x%lx, 0x%lx)",
          with, without);
  } else {
    printf("clac/stac: no SMAP in CPUID, not tried\n");
  }

  // ldmxcsr/stmxcsr need CR4.OSFXSR.
  uint64_t cr4 = read_cr4();
  __asm__ volatile("mov %0, %%cr4" ::"r"(cr4 | CR4_OSFXSR));
  uint32_t want = 0x1f80 | (1u << 13) | (1u << 14);  // round toward zero
  uint32_t got = 0;
  __asm__ volatile("ldmxcsr %1\n\tstmxcsr %0" : "=m"(got) : "m"(want) : "memory");
  CHECK(got == want, "ldmxcsr then stmxcsr round-trips MXCSR (0x%x, want 0x%x)", got, want);
  want = 0x1f80;
  __asm__ volatile("ldmxcsr %1\n\tstmxcsr %0" : "=m"(got) : "m"(want) : "memory");
  CHECK(got == want, "MXCSR back to the default (0x%x)", got);
  __asm__ volatile("mov %0, %%cr4" ::"r"(cr4));
  return 0;
}
