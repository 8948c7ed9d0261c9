// pvm_int3: `int3` executed in CPL0 reaches the guest's #BP handler with RIP after the int3, and
// execution resumes after it. On kvm_pvm the emulator cannot run int3 in CPL0 (emulation failure):
// pier's pvm assist advances RIP and injects #BP; on hardware KVM the CPU does it. Linux's
// alternatives self-test and text_poke_bp() depend on exactly this.
#include "bare.h"
TEST_NAME("pvm_int3");

extern char after_int3_a[], after_int3_b[];
static volatile uint32_t hits;
static volatile uint64_t last_rip, last_cs, last_rflags;

static void bp_handler(struct regs *r) {
  hits++;
  last_rip = r->rip;
  last_cs = r->cs;
  last_rflags = r->rflags;
}

// int3 between two register writes: the values around it must survive.
static uint64_t int3_in_the_middle(uint64_t x) {
  uint64_t out;
  __asm__ volatile(
      "lea 1(%1), %0\n\t"
      "int3\n\t"
      ".globl after_int3_a\n"
      "after_int3_a:\n\t"
      "add $2, %0\n\t"
      : "=&r"(out)
      : "r"(x)
      : "memory");
  return out;
}

int test_main(void) {
  irq_set_handler(3, bp_handler);
  uint64_t v = int3_in_the_middle(40);
  CHECK(hits == 1, "int3 in CPL0 ran the #BP handler once (%u)", hits);
  CHECK(last_rip == (uint64_t)after_int3_a, "#BP frame RIP is the byte after int3 (0x%lx, want 0x%lx)", last_rip,
        (uint64_t)after_int3_a);
  CHECK((last_cs & 3) == 0, "#BP came from CPL0 (cs 0x%lx)", last_cs);
  CHECK(v == 43, "execution resumed after int3 with registers intact (%lu)", v);

  // Many in a row (text_poke_bp patches with an int3 per site).
  for (int i = 0; i < 100; i++) __asm__ volatile("int3" ::: "memory");
  CHECK(hits == 101, "100 more int3s, 100 more #BPs (%u)", hits);

  // RFLAGS as pushed keeps what was set (DF here), and the handler's iretq restores it.
  __asm__ volatile("std\n\tint3\n\t.globl after_int3_b\nafter_int3_b:\n\tcld" ::: "memory");
  CHECK(last_rip == (uint64_t)after_int3_b, "second site RIP (0x%lx)", last_rip);
  CHECK(last_rflags & (1u << 10), "RFLAGS.DF in the #BP frame (0x%lx)", last_rflags);
  return 0;
}
