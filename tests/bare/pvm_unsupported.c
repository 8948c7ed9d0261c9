// pvm_unsupported: executes in CPL0 an instruction kvm_pvm's emulator fails on and pier's pvm
// assist does not complete (popcnt; Linux is kept off it with clearcpuid=popcnt). On kvm_pvm pier
// must stop with an error naming the instruction, the kernel option that avoids it and a register
// dump (tests/integration/pvm_bare_test.cpp checks that); on hardware KVM the guest passes.
#include "bare.h"
TEST_NAME("pvm_unsupported");

int test_main(void) {
  uint32_t r[4];
  cpuid(1, 0, r);
  if (!(r[2] & (1u << 23))) {
    printf("no POPCNT in CPUID: nothing to try\n");
    return 0;
  }
  uint64_t in = 0xf0f0, out = 0;
  __asm__ volatile("popcnt %1, %0" : "=r"(out) : "r"(in));
  CHECK(out == 8, "popcnt in CPL0 (%lu)", out);
  return 0;
}
