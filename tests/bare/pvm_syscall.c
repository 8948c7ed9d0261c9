// pvm_syscall: SYSCALL from CPL3 with STAR/LSTAR/SFMASK set up enters the guest's entry point in
// CPL0 with RCX/R11 as the CPU defines them, and SYSRET returns to CPL3. On kvm_pvm the CPU stays
// in CPL3 at LSTAR and faults on the supervisor page; pier's pvm assist catches that fault with a
// hardware breakpoint on the #PF handler it found in this guest's IDT and completes the SYSCALL.
// pier arms that breakpoint at an exit it handles after the IDT is set up: the CPL0 int3 below is
// one on kvm_pvm (Linux has its int3 self-test at the same point of its boot).
#include "bare.h"
TEST_NAME("pvm_syscall");

#define MSR_EFER 0xc0000080u
#define MSR_STAR 0xc0000081u
#define MSR_LSTAR 0xc0000082u
#define MSR_SFMASK 0xc0000084u

extern char syscall_entry[];

// The entry must sit on a supervisor-only page, as a kernel's does: the library maps everything
// with the U bit, so the image is mapped a second time at 0xffffffff80000000 without it (PML4
// slot 511, PDPT slot 510, one 2 MiB page) and LSTAR points into that alias.
#define ALIAS_BASE 0xffffffff80000000ull
#define IMAGE_BASE 0x200000ull
static uint64_t alias_pdpt[512] ALIGNED(4096), alias_pd[512] ALIGNED(4096);
static uint64_t alias_of(const void *p) { return ALIAS_BASE + ((uint64_t)p - IMAGE_BASE); }
volatile uint64_t sc_count, sc_cs, sc_ss, sc_rcx, sc_r11, sc_rflags, sc_rsp;
static volatile uint32_t bp_hits, pf_hits;

// The entry: CPL0 on the user's stack (SYSCALL does not switch stacks). Records what it sees and
// returns rdi + 1 through SYSRET.
__asm__(
    ".text\n"
    ".globl syscall_entry\n"
    "syscall_entry:\n\t"
    "incq sc_count(%rip)\n\t"
    "movq %rcx, sc_rcx(%rip)\n\t"
    "movq %r11, sc_r11(%rip)\n\t"
    "movq %rsp, sc_rsp(%rip)\n\t"
    "movq $0, %rax\n\t"
    "movw %cs, %ax\n\t"
    "movq %rax, sc_cs(%rip)\n\t"
    "movw %ss, %ax\n\t"
    "movq %rax, sc_ss(%rip)\n\t"
    "pushfq\n\t"
    "popq sc_rflags(%rip)\n\t"
    "leaq 1(%rdi), %rax\n\t"
    "sysretq\n");

static uint64_t do_syscall(uint64_t arg) {
  uint64_t ret;
  __asm__ volatile("syscall" : "=a"(ret) : "a"(0), "D"(arg) : "rcx", "r11", "memory");
  return ret;
}

static uint64_t user_once(uint64_t arg) { return do_syscall(arg); }

static uint64_t user_many(uint64_t n) {
  uint64_t good = 0;
  for (uint64_t i = 0; i < n; i++) good += do_syscall(i * 3) == i * 3 + 1;
  return good;
}

static void bp_handler(struct regs *r) { bp_hits++; }
static void pf_handler(struct regs *r) {
  pf_hits++;
  test_fail("#PF in the guest (rip 0x%lx cs 0x%lx cr2 0x%lx err 0x%lx): the SYSCALL was not completed", r->rip,
            r->cs, read_cr2(), r->error);
}

int test_main(void) {
  irq_set_handler(3, bp_handler);
  irq_set_handler(14, pf_handler);
  wrmsr(MSR_EFER, rdmsr(MSR_EFER) | 1);  // SCE
  // SYSCALL: CS = 0x10, SS = 0x18. SYSRET (64-bit): CS = 0x18 + 16 | 3 = 0x2b, SS = 0x18 + 8 | 3.
  wrmsr(MSR_STAR, (0x18ull << 48) | ((uint64_t)KERNEL_CS << 32));
  alias_pd[0] = IMAGE_BASE | 0x83;  // P RW PS, no U
  alias_pdpt[510] = (uint64_t)alias_pd | 0x3;
  lib_pml4[511] = (uint64_t)alias_pdpt | 0x3;
  __asm__ volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" ::: "rax", "memory");
  wrmsr(MSR_LSTAR, alias_of(syscall_entry));
  wrmsr(MSR_SFMASK, 0x47700);  // TF DF IF IOPL AC NT
  __asm__ volatile("int3" ::: "memory");  // see the header comment
  CHECK(bp_hits == 1, "CPL0 int3 before the SYSCALL test (%u)", bp_hits);

  uint64_t r = enter_user(user_once, 41, 0);
  CHECK(r == 42, "user SYSCALL returned through SYSRET with the entry's result (%lu)", r);
  CHECK(sc_count == 1, "entry ran once (%lu)", sc_count);
  CHECK((sc_cs & 3) == 0, "entry ran in CPL0 (cs 0x%lx)", sc_cs);
  CHECK(sc_cs == KERNEL_CS, "entry CS from STAR[47:32] (0x%lx)", sc_cs);
  CHECK(sc_ss == KERNEL_DS, "entry SS from STAR[47:32] + 8 (0x%lx)", sc_ss);
  CHECK(!(sc_rflags & (1u << 9)) && !(sc_rflags & (1u << 10)), "SFMASK cleared IF and DF (0x%lx)", sc_rflags);
  CHECK(sc_r11 & 2, "R11 holds the user RFLAGS (0x%lx)", sc_r11);
  CHECK(sc_rcx > (uint64_t)user_once && sc_rcx < (uint64_t)user_once + 64,
        "RCX is the user return address (0x%lx, in user_once at 0x%lx)", sc_rcx, (uint64_t)user_once);
  extern char user_stack_top[];
  CHECK(sc_rsp < (uint64_t)user_stack_top && sc_rsp > (uint64_t)user_stack_top - 65536,
        "entry runs on the user stack (0x%lx)", sc_rsp);

  uint64_t n = cmdline_u64("syscalls", 1000);
  uint64_t t0 = rdtsc();
  uint64_t good = enter_user(user_many, n, 0);
  uint64_t cycles = rdtsc() - t0;
  CHECK(good == n, "%lu SYSCALL/SYSRET round trips with the right results (%lu)", n, good);
  CHECK(sc_count == n + 1, "entry count (%lu)", sc_count);
  CHECK(pf_hits == 0, "no #PF reached the guest (%u)", pf_hits);
  uint64_t khz = tsc_khz();
  if (khz) printf("syscall: %lu round trips, %lu ns each\n", n, cycles * 1000000 / khz / (n ? n : 1));
  return 0;
}
