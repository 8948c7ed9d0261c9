// user_loop: proves the CPL3 path. enter_user() iretq's into CPL3 (IOPL 3) and comes back through
// `int $0x80` (DPL 3 gate); port I/O from CPL3 (serial output) works; a 100 M-iteration loop in
// CPL3 runs at native speed (on kvm_pvm the same loop in CPL0 would take ~2 minutes).
// cmdline: iterations=N (default 100000000), max_ms=N (fail if slower, default 20000).
#include "bare.h"
TEST_NAME("user_loop");

static uint64_t where_am_i(uint64_t arg) {
  printf("in CPL%u (cs=0x%x), rflags=0x%lx, arg=0x%lx\n", in_user_mode(), read_cs(), read_rflags(), arg);
  return arg + 1;
}

static volatile uint32_t bp_hits;
static void bp_handler(struct regs *r) { bp_hits++; }
static uint64_t user_int3(uint64_t arg) {
  __asm__ volatile("int3");
  return read_rflags();
}

static uint64_t nothing(uint64_t arg) { return arg; }

static uint64_t io_loop(uint64_t n) {
  uint64_t t0 = rdtsc();
  for (uint64_t i = 0; i < n; i++) outb(0x80, 0);
  return rdtsc() - t0;
}

static uint64_t mmio_loop(uint64_t n) {
  uint64_t t0 = rdtsc();
  for (uint64_t i = 0; i < n; i++) (void)lapic_read(LAPIC_VERSION);
  return rdtsc() - t0;
}

static uint64_t spin(uint64_t n) {
  uint64_t t0 = rdtsc();
  __asm__ volatile("1: dec %0; jnz 1b" : "+r"(n));
  return rdtsc() - t0;
}

int test_main(void) {
  uint64_t iters = cmdline_u64("iterations", 100000000);
  uint64_t r = enter_user(where_am_i, 0x1234, 0);
  CHECK(r == 0x1235, "enter_user returns fn's value back in CPL0 (got 0x%lx)", r);
  CHECK(!in_user_mode(), "back in CPL0 (cs=0x%x)", read_cs());
  // Twice: the second enter must reuse the saved state correctly.
  r = enter_user(where_am_i, 41, 0);
  CHECK(r == 42, "second enter_user round trip (got %lu)", r);

  printf("CPL3 returns so far: %lu via int $0x80, %lu via #UD (kvm_pvm turns `int $0x80` in CPL3 into #UD)\n",
         user_return_via_int80, user_return_via_ud2);

  // An exception raised in CPL3 reaches the guest IDT (DPL 3 gate for #BP) and iretq returns.
  irq_set_handler(3, bp_handler);
  idt_set_dpl3(3);
  uint64_t uflags = enter_user(user_int3, 0, 0);
  CHECK(bp_hits == 1, "int3 in CPL3 runs the CPL0 #BP handler and returns (%u)", bp_hits);
  printf("RFLAGS seen in CPL3 (entered with IF=0, IOPL=3): 0x%lx (IOPL %lu, IF %lu)\n", uflags, (uflags >> 12) & 3,
         (uflags >> 9) & 1);

  uint64_t t0 = rdtsc();
  uint64_t cycles = enter_user(spin, iters, 0);
  uint64_t total = rdtsc() - t0;
  uint64_t khz = tsc_khz();
  printf("user loop: %lu iterations in %lu TSC cycles (%lu cycles with the switches)", iters, cycles, total);
  if (khz) printf(" = %lu ms at %lu kHz", cycles / khz, khz);
  printf("\n");

  // Costs the later CPL3 drivers care about (figures, not checks).
  if (khz) {
    const uint64_t n = 200;
    uint64_t c0 = rdtsc();
    for (int i = 0; i < 20; i++) enter_user(nothing, 0, 0);
    uint64_t rt = (rdtsc() - c0) / 20;
    uint64_t io0 = io_loop(n), io3 = enter_user(io_loop, n, 0);
    uint64_t mm0 = mmio_loop(n), mm3 = enter_user(mmio_loop, n, 0);
    printf("costs: enter_user round trip %lu us; port write CPL0 %lu ns, CPL3 %lu ns; LAPIC MMIO read CPL0 %lu ns, "
           "CPL3 %lu ns\n",
           rt * 1000 / khz, io0 * 1000000 / khz / n, io3 * 1000000 / khz / n, mm0 * 1000000 / khz / n,
           mm3 * 1000000 / khz / n);
  }
  uint64_t max_ms = cmdline_u64("max_ms", 20000);
  if (khz) CHECK(cycles / khz <= max_ms, "CPL3 loop within %lu ms", max_ms);
  return 0;
}
