// halt: stops running for good, the way Linux's `halt -f` does (every CPU in cli; hlt), so pier's
// hang watch must report it once (stderr warning, API event guest-halted). cmdline irqs=on halts
// with interrupts on instead (sti; hlt: an interrupt could still wake it, nothing to report);
// cpus=2 (run with --cpus 2) starts the AP first and halts it too; cpus=1 with --cpus 2 leaves the
// AP waiting for a start-up IPI nobody will send.
#include "bare.h"
TEST_NAME("halt");

static volatile uint32_t ap_halting;

static void ap(int index) {
  ap_halting = 1;
  halt_forever();
}

int test_main(void) {
  const int irqs_on = cmdline_has("irqs=on");
  if (cmdline_u64("cpus", 1) >= 2) {
    lapic_enable();
    smp_start_aps(ap);
    while (!ap_halting) __asm__ volatile("pause");
  }
  printf("PIER-TEST ARMED halt (interrupts %s)\n", irqs_on ? "on" : "off");
  if (irqs_on) {
    for (;;) __asm__ volatile("sti; hlt" ::: "memory");
  }
  halt_forever();
}
