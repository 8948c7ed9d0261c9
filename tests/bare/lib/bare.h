// pier bare-metal test guest library: one header for everything a test guest needs.
//
// A test guest is one C file that defines TEST_NAME("name") and `int test_main(void)`.
// The library's entry stub (lib/entry.S) runs first: it keeps the boot_params pointer (RSI),
// switches to the library's stack, and calls lib_init() (serial, GDT + TSS, IDT with exception
// handlers, the library's own page tables with the U bit everywhere), then test_main().
// test_main() returning 0 prints "PIER-TEST PASS <name>", anything else
// "PIER-TEST FAIL <name>: test_main returned N"; either way the guest then powers off (ACPI S5).
//
// On kvm_pvm, CPL0 code is emulated (~1 µs per instruction): keep CPL0 work small and run busy
// loops in CPL3 with enter_user() (native speed, IOPL 3 so port I/O works there too).
// See tests/bare/README.md.
#pragma once

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define NORETURN __attribute__((noreturn))
#define PACKED __attribute__((packed))
#define ALIGNED(n) __attribute__((aligned(n)))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

// ---- test framework -------------------------------------------------------------------------
extern const char test_name[];
#define TEST_NAME(n) const char test_name[] = n
int test_main(void);                              // defined by each test
NORETURN void test_pass(void);                    // prints PASS line, powers off
NORETURN void test_fail(const char *fmt, ...);    // prints FAIL line with reason, powers off
// Checks that print "check <what>: ok|FAILED" and fail the test at the end (test_checks_ok())
// rather than at once, so one run reports every broken property.
#define CHECK(cond, ...) check_((cond), #cond, __VA_ARGS__)
void check_(int ok, const char *expr, const char *fmt, ...);
int check_failures(void);
const char *check_first_failure(void);

// ---- port I/O, MSRs, CPU --------------------------------------------------------------------
static inline void outb(uint16_t p, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(p)); }
static inline void outw(uint16_t p, uint16_t v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(p)); }
static inline void outl(uint16_t p, uint32_t v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(p)); }
static inline uint8_t inb(uint16_t p) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline uint16_t inw(uint16_t p) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline uint32_t inl(uint16_t p) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline uint64_t rdmsr(uint32_t msr) {
  uint32_t lo, hi;
  __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
  return ((uint64_t)hi << 32) | lo;
}
static inline void wrmsr(uint32_t msr, uint64_t v) {
  __asm__ volatile("wrmsr" ::"c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)) : "memory");
}
static inline uint64_t rdtsc(void) {
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((uint64_t)hi << 32) | lo;
}
static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
  __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
// Enable interrupts and halt until one arrives (atomic: STI's interrupt shadow covers HLT), then
// disable them again.
static inline void sti_hlt_cli(void) { __asm__ volatile("sti; hlt; cli" ::: "memory"); }
static inline void pause(void) { __asm__ volatile("pause"); }
static inline uint64_t read_cr0(void) { uint64_t v; __asm__ volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static inline uint64_t read_cr2(void) { uint64_t v; __asm__ volatile("mov %%cr2, %0" : "=r"(v)); return v; }
static inline uint64_t read_cr3(void) { uint64_t v; __asm__ volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static inline uint64_t read_cr4(void) { uint64_t v; __asm__ volatile("mov %%cr4, %0" : "=r"(v)); return v; }
static inline uint64_t read_rflags(void) { uint64_t v; __asm__ volatile("pushfq; popq %0" : "=r"(v)); return v; }
static inline uint16_t read_cs(void) { uint16_t v; __asm__ volatile("mov %%cs, %0" : "=r"(v)); return v; }
static inline void mmio_write32(uint64_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static inline uint32_t mmio_read32(uint64_t a) { return *(volatile uint32_t *)a; }

// rdmsr/wrmsr that survive a #GP: return 0 on success, -1 if the instruction faulted.
int rdmsr_safe(uint32_t msr, uint64_t *val);
int wrmsr_safe(uint32_t msr, uint64_t val);

// ---- memory and strings (freestanding) ------------------------------------------------------
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);

// ---- serial console (COM1 16550, polled) ----------------------------------------------------
#define COM1 0x3f8
void serial_init(void);   // 115200 8N1, FIFO on, interrupts off
void serial_putc(char c); // waits for LSR.THRE
void serial_puts(const char *s);
// printf-lite: %d %i %u %x %X %c %s %p %%, with l/ll/z, width, '0' and '-' flags.
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vprintf(const char *fmt, va_list ap);
int snprintf(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int vsnprintf(char *buf, size_t n, const char *fmt, va_list ap);

// ---- boot_params (zero page), command line, e820 --------------------------------------------
#define E820_RAM 1
#define E820_RESERVED 2
#define E820_ACPI 3
#define E820_NVS 4
struct e820_entry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;
} PACKED;
extern uint8_t *boot_params;              // RSI at entry
int e820_count(void);
const struct e820_entry *e820_get(int i);
const char *cmdline(void);                // "" when none
// Looks up "key=value" (or bare "key") in the command line. cmdline_str copies the value into
// buf (NUL-terminated) and returns 1 when found; cmdline_u64 parses decimal, 0x-hex, K/M/G.
int cmdline_has(const char *key);
int cmdline_str(const char *key, char *buf, size_t n);
uint64_t cmdline_u64(const char *key, uint64_t def);
uint64_t parse_u64(const char *s, const char **end);

// ---- power ----------------------------------------------------------------------------------
NORETURN void power_off(void);     // ACPI S5: port 0x600 <- (5<<2)|(1<<5)
NORETURN void reset_i8042(void);   // port 0x64 <- 0xFE
NORETURN void halt_forever(void);  // cli; hlt loop

// ---- segments, interrupts -------------------------------------------------------------------
#define KERNEL_CS 0x10
#define KERNEL_DS 0x18
#define USER_DS 0x23   // GDT index 4, RPL 3
#define USER_CS 0x2b   // GDT index 5, RPL 3 (STAR-compatible: user DS + 8)
#define TSS_SEL 0x30
#define USER_RETURN_VECTOR 0x80  // DPL 3 gate: `int $0x80` from CPL3 returns to enter_user's caller

struct regs {  // what the interrupt stubs push, lowest address first
  uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
  uint64_t vector, error;
  uint64_t rip, cs, rflags, rsp, ss;  // pushed by the CPU
};
typedef void (*irq_handler)(struct regs *r);
// Installs a handler for a vector (32..255). Exceptions (0..31) without a handler print
// vector/RIP/error/CR2 and fail the test.
void irq_set_handler(uint8_t vector, irq_handler h);
void idt_set_dpl3(uint8_t vector);  // makes `int $vector` legal from CPL3
void gdt_load_on_this_cpu(void);  // loads the library GDT (no TSS) and reloads segments (APs)

// ---- paging ---------------------------------------------------------------------------------
// The library's page tables identity-map 0-4 GiB with 2 MiB pages, all with the U bit (so CPL3
// code can touch everything, including LAPIC/IOAPIC MMIO), the 3-4 GiB hole uncached.
// map_high() adds identity 2 MiB mappings (U, WB) for [base, base+size) above 4 GiB, up to
// 64 GiB. Returns 0 or -1 if out of page-table pages.
int map_high(uint64_t base, uint64_t size);
extern uint64_t lib_pml4[512];

// ---- CPL3 -----------------------------------------------------------------------------------
// Runs fn(arg) in CPL3 (user CS/SS, IOPL 3 so in/out/cli/sti work there) on the user stack and
// returns its return value, through `int $0x80` (DPL 3 gate). With ENTER_USER_IF, interrupts are
// enabled while in CPL3 (handlers run in CPL0 on the TSS.RSP0 stack).
#define ENTER_USER_IF 1u
typedef uint64_t (*user_fn)(uint64_t arg);
uint64_t enter_user(user_fn fn, uint64_t arg, unsigned flags);
int in_user_mode(void);  // CS & 3
// How the CPL3 -> CPL0 returns happened so far (kvm_pvm ignores `int $0x80` from CPL3).
extern volatile uint64_t user_return_via_int80, user_return_via_ud2;

// ---- LAPIC / IOAPIC / PIC -------------------------------------------------------------------
#define LAPIC_BASE 0xfee00000ull
#define IOAPIC_BASE 0xfec00000ull
#define LAPIC_ID 0x20
#define LAPIC_VERSION 0x30
#define LAPIC_TPR 0x80
#define LAPIC_EOI 0xb0
#define LAPIC_SVR 0xf0
#define LAPIC_ESR 0x280
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_LVT_ERROR 0x370
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_CUR 0x390
#define LAPIC_TIMER_DIV 0x3e0
#define LAPIC_SPURIOUS_VECTOR 0xff
static inline uint32_t lapic_read(uint32_t reg) { return mmio_read32(LAPIC_BASE + reg); }
static inline void lapic_write(uint32_t reg, uint32_t v) { mmio_write32(LAPIC_BASE + reg, v); }
static inline void lapic_eoi(void) { lapic_write(LAPIC_EOI, 0); }
static inline uint32_t lapic_id(void) { return lapic_read(LAPIC_ID) >> 24; }
void lapic_enable(void);  // SVR: software enable, spurious vector 0xff; TPR 0
uint32_t ioapic_read(uint32_t reg);
void ioapic_write(uint32_t reg, uint32_t v);
// Routes IOAPIC pin -> vector on the LAPIC with id dest (fixed, physical); edge-triggered,
// active high unless level. Unmasked.
void ioapic_route(unsigned pin, uint8_t vector, uint8_t dest, int level);
void ioapic_mask(unsigned pin);
void pic_disable(void);  // masks both 8259s (so nothing arrives through LINT0/ExtINT)
// Sends INIT, then two SIPIs for the page at `trampoline` (< 1 MiB, 4 KiB aligned) to all other
// CPUs (dest_all_but_self) or to apic id `dest`.
void lapic_send_init_sipi(int all_but_self, uint8_t dest, uint32_t trampoline);

// ---- SMP ------------------------------------------------------------------------------------
// Copies the real-mode trampoline to SMP_TRAMPOLINE and starts every other CPU with
// INIT-SIPI-SIPI; each AP switches to long mode with the library's GDT and page tables, gets a
// stack, and calls fn(index) (index 1, 2, ... in arrival order) in CPL0 with interrupts off;
// when fn returns the AP halts. Returns after SMP_TRAMPOLINE is copied and the IPIs are sent;
// the caller waits for whatever fn signals.
#define SMP_TRAMPOLINE 0x10000u
#define SMP_MAX_CPUS 64
typedef void (*ap_fn)(int index);
void smp_start_aps(ap_fn fn);
extern volatile uint32_t smp_ap_arrived;  // incremented by each AP in the trampoline

// ---- time -----------------------------------------------------------------------------------
// TSC frequency in kHz, cached: CPUID 0x15, the hypervisor timing leaf 0x40000010, kvmclock's
// multiplier (CPL0 only), else a 50 ms PIT channel 2 calibration; 0 if all fail.
uint64_t tsc_khz(void);
const char *tsc_khz_source(void);  // which of the above gave tsc_khz()
uint64_t tsc_khz_kvmclock(void);
uint64_t tsc_khz_pit(void);
// Busy-waits with rdtsc (costly in CPL0 on kvm_pvm: ~2 µs per iteration, so fine for short waits).
void delay_tsc(uint64_t cycles);

// ---- entry state (recorded by entry.S before anything changes it) --------------------------
struct entry_state {
  uint64_t rsp, rflags, rsi, cr0, cr3, cr4, efer;
  uint16_t cs, ds, es, ss, fs, gs, tr;
  uint16_t gdt_limit;
  uint64_t gdt_base;
  uint16_t pad[3];
  uint16_t idt_limit;
  uint64_t idt_base;
  uint64_t tsc;  // at the first instruction
};
_Static_assert(__builtin_offsetof(struct entry_state, tr) == 68, "entry.S offsets");
_Static_assert(__builtin_offsetof(struct entry_state, gdt_limit) == 70, "entry.S offsets");
_Static_assert(__builtin_offsetof(struct entry_state, gdt_base) == 72, "entry.S offsets");
_Static_assert(__builtin_offsetof(struct entry_state, idt_limit) == 86, "entry.S offsets");
_Static_assert(sizeof(struct entry_state) == 104, "entry.S size");
extern struct entry_state entry_state;

// ---- ACPI (read-only walk of pier's tables) -------------------------------------------------
const void *acpi_rsdp(void);                 // boot_params.acpi_rsdp_addr, else scan 0xE0000-0xFFFFF
const void *acpi_find_table(const char *sig);  // via XSDT (or RSDT); checksum-verified; NULL if absent
int acpi_madt_cpus(uint8_t *apic_ids, int max);  // enabled LAPIC entries in the MADT, -1 if no MADT

// ---- waiting --------------------------------------------------------------------------------
// Spins in CPL3 (native speed) with interrupts enabled until *p >= target or timeout_ms passed
// (by the TSC, tsc_khz() or 3 GHz if unknown). Interrupt handlers run in CPL0 meanwhile.
// Returns 1 if reached, 0 on timeout.
int wait_user(volatile uint32_t *p, uint32_t target, uint64_t timeout_ms);

// ---- library internals used by entry.S ------------------------------------------------------
void lib_init(void);
NORETURN void lib_main(void);
