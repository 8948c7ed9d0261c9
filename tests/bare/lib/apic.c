// LAPIC, IOAPIC, 8259, AP start-up, TSC.
#include "bare.h"

void lapic_enable(void) {
  lapic_write(LAPIC_TPR, 0);
  lapic_write(LAPIC_SVR, 0x100 | LAPIC_SPURIOUS_VECTOR);
}

uint32_t ioapic_read(uint32_t reg) {
  mmio_write32(IOAPIC_BASE, reg);
  return mmio_read32(IOAPIC_BASE + 0x10);
}

void ioapic_write(uint32_t reg, uint32_t v) {
  mmio_write32(IOAPIC_BASE, reg);
  mmio_write32(IOAPIC_BASE + 0x10, v);
}

void ioapic_route(unsigned pin, uint8_t vector, uint8_t dest, int level) {
  ioapic_write(0x10 + 2 * pin + 1, (uint32_t)dest << 24);
  ioapic_write(0x10 + 2 * pin, vector | (level ? (1u << 15) : 0));
}

void ioapic_mask(unsigned pin) { ioapic_write(0x10 + 2 * pin, 1u << 16); }

void pic_disable(void) {
  outb(0x21, 0xff);
  outb(0xa1, 0xff);
}

static void icr_wait(void) {
  for (int i = 0; i < 1000 && (lapic_read(LAPIC_ICR_LO) & (1u << 12)); i++) pause();
}

static void icr_send(int all_but_self, uint8_t dest, uint32_t lo) {
  lapic_write(LAPIC_ICR_HI, (uint32_t)dest << 24);
  lapic_write(LAPIC_ICR_LO, lo | (all_but_self ? (3u << 18) : 0));
  icr_wait();
}

void lapic_send_init_sipi(int all_but_self, uint8_t dest, uint32_t trampoline) {
  uint64_t khz = tsc_khz();
  if (!khz) khz = 3000000;  // unknown: assume 3 GHz (waits only get longer/shorter, harmless)
  icr_send(all_but_self, dest, 0x4500);  // INIT, assert, edge
  delay_tsc(khz * 10);                   // 10 ms
  for (int i = 0; i < 2; i++) {
    icr_send(all_but_self, dest, 0x4600 | (trampoline >> 12));  // STARTUP
    delay_tsc(khz / 5);                                         // 200 µs
  }
}

// ---- SMP ------------------------------------------------------------------------------------
extern const char smp_trampoline_start[], smp_trampoline_end[];
volatile uint32_t smp_ap_arrived;
static volatile ap_fn ap_function;

void ap_main(int index) {
  gdt_load_on_this_cpu();
  if (ap_function) ap_function(index);
}

void smp_start_aps(ap_fn fn) {
  ap_function = fn;
  memcpy((void *)(uint64_t)SMP_TRAMPOLINE, smp_trampoline_start, smp_trampoline_end - smp_trampoline_start);
  lapic_send_init_sipi(1, 0, SMP_TRAMPOLINE);
}

// ---- time -----------------------------------------------------------------------------------
// PIT channel 2 one-shot (mode 0) for 50 ms, gated through port 0x61, timed with the TSC.
uint64_t tsc_khz_pit(void) {
  const unsigned count = 59659;  // 1193182 Hz / 20
  outb(0x61, (inb(0x61) & ~0x02) | 0x01);
  outb(0x43, 0xb0);
  outb(0x42, count & 0xff);
  outb(0x42, count >> 8);
  if (inb(0x61) & 0x20) return 0;  // OUT2 must be low while counting: no usable PIT/port 0x61
  uint64_t t0 = rdtsc(), t1 = t0;
  for (unsigned i = 0; i < 1000000; i++) {
    t1 = rdtsc();
    if (inb(0x61) & 0x20) break;
  }
  return (t1 - t0) / 50;
}

struct pvclock {
  uint32_t version, pad0;
  uint64_t tsc_timestamp, system_time;
  uint32_t mul;
  int8_t shift;
  uint8_t flags, pad[2];
} PACKED;
static struct pvclock pvclock ALIGNED(64);

uint64_t tsc_khz_kvmclock(void) {
  if (in_user_mode() || wrmsr_safe(0x4b564d01, (uint64_t)&pvclock | 1)) return 0;
  wrmsr_safe(0x4b564d01, 0);
  if (!pvclock.mul) return 0;
  uint64_t khz = (1000000ull << 32) / pvclock.mul;
  return pvclock.shift >= 0 ? khz >> pvclock.shift : khz << -pvclock.shift;
}

static uint64_t tsc_khz_cached;
static const char *tsc_khz_how = "unknown";
const char *tsc_khz_source(void) { return tsc_khz_how; }

uint64_t tsc_khz(void) {
  if (tsc_khz_cached) return tsc_khz_cached;
  uint32_t r[4];
  cpuid(0, 0, r);
  uint32_t max = r[0];
  uint64_t khz = 0;
  if (max >= 0x15) {
    cpuid(0x15, 0, r);  // eax denominator, ebx numerator, ecx crystal Hz
    if (r[0] && r[1] && r[2]) khz = (uint64_t)r[2] * r[1] / r[0] / 1000, tsc_khz_how = "cpuid 0x15";
  }
  if (!khz) {
    cpuid(0x40000000, 0, r);
    if (r[0] >= 0x40000010 && r[0] < 0x40000100) {
      cpuid(0x40000010, 0, r);
      if (r[0]) khz = r[0], tsc_khz_how = "cpuid 0x40000010";
    }
  }
  if (!khz && (khz = tsc_khz_kvmclock())) tsc_khz_how = "kvmclock";
  if (!khz && (khz = tsc_khz_pit())) tsc_khz_how = "PIT";
  return tsc_khz_cached = khz;
}

void delay_tsc(uint64_t cycles) {
  uint64_t t0 = rdtsc();
  while (rdtsc() - t0 < cycles) pause();
}
