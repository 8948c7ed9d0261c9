// CPU set-up (GDT, TSS, IDT, paging), interrupt dispatch, the test framework and power control.
#include "bare.h"

extern uint64_t lib_gdt[];
extern uint8_t lib_tss[];
extern uint64_t lib_pdpt[512];
extern char isr_stubs[];
extern volatile uint64_t fault_fixup_rip;
void gdt_reload(void);
NORETURN void user_return(uint64_t value);
extern char user_exit_int[], user_exit_ud2[];
volatile uint64_t user_return_via_int80, user_return_via_ud2;

struct idt_gate {
  uint16_t off0, sel;
  uint8_t ist, type;
  uint16_t off1;
  uint32_t off2, zero;
} PACKED;
extern struct idt_gate lib_idt[256];  // entry.S: static gates to the stubs
#define idt lib_idt
static struct {
  uint16_t limit;
  uint64_t base;
} PACKED idtr;
static irq_handler handlers[256];

// ---- GDT / TSS / IDT ------------------------------------------------------------------------
#define TSS_LIMIT (104 + 8192)  // TSS + I/O bitmap + terminator byte, minus one
static void gdt_init(void) {
  uint64_t t = (uint64_t)lib_tss;
  *(uint16_t *)(lib_tss + 102) = 104;  // I/O bitmap right after the TSS (zero: all ports allowed)
  lib_tss[104 + 8192] = 0xff;          // terminator
  // 64-bit available TSS, present.
  lib_gdt[6] = (TSS_LIMIT & 0xffff) | ((t & 0xffffff) << 16) | (0x89ull << 40) |
               ((uint64_t)(TSS_LIMIT >> 16) << 48) | (((t >> 24) & 0xff) << 56);
  lib_gdt[7] = t >> 32;
  gdt_reload();
  __asm__ volatile("ltr %w0" ::"r"(TSS_SEL));
}

void gdt_load_on_this_cpu(void) {
  gdt_reload();
  __asm__ volatile("lidt %0" ::"m"(idtr));
}

static void set_gate(int v, uint8_t type) {
  uint64_t h = (uint64_t)isr_stubs + 16 * v;
  idt[v] = (struct idt_gate){(uint16_t)h, KERNEL_CS, 0, type, (uint16_t)(h >> 16), (uint32_t)(h >> 32), 0};
}

static void idt_init(void) {
  idtr.limit = 256 * sizeof(struct idt_gate) - 1;
  idtr.base = (uint64_t)idt;
  __asm__ volatile("lidt %0" ::"m"(idtr));
}

static void paging_init(void) {
  // No SMEP/SMAP (CPL0 runs on U pages), keep PAE/PGE/OSFXSR..., then our tables.
  uint64_t cr4 = read_cr4();
  if (cr4 & ((1u << 20) | (1u << 21))) __asm__ volatile("mov %0, %%cr4" ::"r"(cr4 & ~(uint64_t)((1u << 20) | (1u << 21))));
  __asm__ volatile("mov %0, %%cr3" ::"r"((uint64_t)lib_pml4) : "memory");
}

void lib_init(void) {
  serial_init();
  gdt_init();
  idt_init();
  paging_init();
}

void irq_set_handler(uint8_t vector, irq_handler h) { handlers[vector] = h; }
void idt_set_dpl3(uint8_t vector) { set_gate(vector, 0xee); }

int in_user_mode(void) { return read_cs() & 3; }

// ---- paging above 4 GiB ---------------------------------------------------------------------
#define HIGH_PDS 60  // PDPT entries 4..63: 4 GiB .. 64 GiB
static uint64_t high_pd[HIGH_PDS][512] ALIGNED(4096);

int map_high(uint64_t base, uint64_t size) {
  uint64_t end = (base + size + (2u << 20) - 1) & ~((2ull << 20) - 1);
  for (uint64_t a = base & ~((2ull << 20) - 1); a < end; a += 2u << 20) {
    uint64_t gib = a >> 30;
    if (gib < 4 || gib >= 4 + HIGH_PDS) return -1;
    uint64_t *pd = high_pd[gib - 4];
    if (!lib_pdpt[gib]) lib_pdpt[gib] = (uint64_t)pd | 0x7;
    pd[(a >> 21) & 511] = a | 0x87;
  }
  __asm__ volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" ::: "rax", "memory");
  return 0;
}

// ---- interrupt dispatch ---------------------------------------------------------------------
static const char *const exc_names[32] = {
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS", "#GP", "#PF", "15",
    "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31"};

void isr_dispatch(struct regs *r) {
  unsigned v = (unsigned)r->vector;
  if ((r->cs & 3) == 3) {
    if (v == USER_RETURN_VECTOR) user_return_via_int80++, user_return(r->rdi);
    // kvm_pvm raises #UD for `int $0x80` in CPL3 (RIP at the int): treat that as the return too.
    if (v == 6 && (r->rip == (uint64_t)user_exit_int || r->rip == (uint64_t)user_exit_ud2))
      user_return_via_ud2++, user_return(r->rdi);
  }
  if (handlers[v]) {
    handlers[v](r);
    if (v >= 32 && v != LAPIC_SPURIOUS_VECTOR) lapic_eoi();
    return;
  }
  if (v < 32) {
    if (fault_fixup_rip && (r->cs & 3) == 0) {
      r->rip = fault_fixup_rip;
      fault_fixup_rip = 0;
      return;
    }
    uint64_t cr2 = read_cr2();
    printf("exception %u %s at rip=%lx cs=%lx rflags=%lx rsp=%lx err=%lx cr2=%lx\n", v, exc_names[v], r->rip,
           r->cs, r->rflags, r->rsp, r->error, cr2);
    test_fail("unexpected exception %u %s at rip=0x%lx err=0x%lx cr2=0x%lx (cpl%lu)", v, exc_names[v], r->rip,
              r->error, cr2, r->cs & 3);
  }
  if (v == LAPIC_SPURIOUS_VECTOR) return;
  static unsigned reported;
  if (reported++ < 4) printf("note: unexpected interrupt vector %u (cpl%lu)\n", v, r->cs & 3);
  lapic_eoi();
}

// ---- test framework -------------------------------------------------------------------------
static int failures;
static char first_failure[160];

void check_(int ok, const char *expr, const char *fmt, ...) {
  char what[160];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  printf("check %s: %s\n", what, ok ? "ok" : "FAILED");
  if (!ok) {
    if (!failures++) snprintf(first_failure, sizeof first_failure, "%s (%s)", what, expr);
  }
}

int check_failures(void) { return failures; }
const char *check_first_failure(void) { return first_failure; }

void test_pass(void) {
  printf("PIER-TEST PASS %s\n", test_name);
  power_off();
}

void test_fail(const char *fmt, ...) {
  char reason[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  printf("PIER-TEST FAIL %s: %s\n", test_name, reason);
  power_off();
}

void lib_main(void) {
  int rc = test_main();
  if (in_user_mode()) test_fail("test_main returned in CPL3");
  if (check_failures()) test_fail("%d check(s) failed, first: %s", check_failures(), check_first_failure());
  if (rc) test_fail("test_main returned %d", rc);
  test_pass();
}

// ---- power ----------------------------------------------------------------------------------
void halt_forever(void) {
  for (;;) __asm__ volatile("cli; hlt");
}

void power_off(void) {
  outb(0x600, (5 << 2) | (1 << 5));  // SLP_TYP=5, SLP_EN
  // QEMU's pc/q35 (the PVH images under `pier bench --compare qemu`): SeaBIOS puts the PIIX4 /
  // ICH9 PM block at 0x600, PM1a_CNT at +4, and QEMU's DSDTs give S5 SLP_TYP 0.
  outw(0x604, 1 << 13);  // SLP_TYP=0, SLP_EN
  // Still here: the VMM ignored S5. Say so, then try the other ways out.
  printf("PIER-TEST NOTE power-off via port 0x600 returned; trying i8042 reset\n");
  outb(0x64, 0xfe);
  printf("PIER-TEST NOTE i8042 reset returned; triple-faulting\n");
  if (!in_user_mode()) {
    static const struct {
      uint16_t limit;
      uint64_t base;
    } PACKED null_idt = {0, 0};
    __asm__ volatile("lidt %0; ud2" ::"m"(null_idt));
  }
  halt_forever();
}

void reset_i8042(void) {
  outb(0x64, 0xfe);
  printf("PIER-TEST NOTE i8042 reset returned\n");
  halt_forever();
}
