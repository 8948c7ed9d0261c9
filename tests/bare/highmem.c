// highmem: run with --memory 5G. Finds the RAM above 4 GiB in the e820 table, maps it with the
// library's page tables, and writes then verifies a pattern over 64 MiB of it from CPL3 (native
// speed; every first touch is a fresh host page). Also: no e820 RAM in the 3-4 GiB hole, and the
// RAM total matches expect_mem when given.
// cmdline: test_mib=N (default 64), expect_mem=SIZE.
#include "bare.h"
TEST_NAME("highmem");

struct job {
  uint64_t base, size, seed;
  uint64_t bad, first_bad, sum;
  uint64_t write_cycles, read_cycles;
};

static uint64_t pattern_job(uint64_t arg) {
  struct job *j = (struct job *)arg;
  volatile uint64_t *p = (volatile uint64_t *)j->base;
  uint64_t n = j->size / 8;
  uint64_t t0 = rdtsc();
  for (uint64_t i = 0; i < n; i++) p[i] = (j->base + 8 * i) ^ j->seed;
  uint64_t t1 = rdtsc();
  uint64_t sum = 0;
  for (uint64_t i = 0; i < n; i++) {
    uint64_t v = p[i];
    sum += v;
    if (v != ((j->base + 8 * i) ^ j->seed)) {
      if (!j->bad++) j->first_bad = j->base + 8 * i;
    }
  }
  j->sum = sum;
  j->write_cycles = t1 - t0;
  j->read_cycles = rdtsc() - t1;
  return 0;
}

int test_main(void) {
  uint64_t test_bytes = cmdline_u64("test_mib", 64) << 20;
  uint64_t ram = 0, high_base = 0, high_size = 0;
  int hole_ram = 0;
  for (int i = 0; i < e820_count(); i++) {
    const struct e820_entry *e = e820_get(i);
    printf("  [%016lx-%016lx) type %u\n", e->addr, e->addr + e->size, e->type);
    if (e->type != E820_RAM) continue;
    ram += e->size;
    if (e->addr < 0x100000000ull && e->addr + e->size > 0xc0000000ull) hole_ram = 1;
    if (e->addr >= 0x100000000ull && !high_size) high_base = e->addr, high_size = e->size;
  }
  printf("e820 RAM: %lu MiB; above 4 GiB: %lu MiB at 0x%lx\n", ram >> 20, high_size >> 20, high_base);
  CHECK(!hole_ram, "no e820 RAM in the 0xC0000000-0xFFFFFFFF hole");
  uint64_t expect = cmdline_u64("expect_mem", 0);
  if (expect) CHECK(ram <= expect && ram + (2u << 20) >= expect, "e820 RAM total ~ %lu MiB", expect >> 20);
  if (!high_size) test_fail("no RAM above 4 GiB in the e820 table (run with --memory 5G)");
  CHECK(high_base == 0x100000000ull, "high RAM starts at 4 GiB (0x%lx)", high_base);

  if (test_bytes > high_size) test_bytes = high_size;
  // Test the first and the last test_bytes/2 of high RAM.
  uint64_t half = test_bytes / 2 & ~0xfffull;
  uint64_t bases[2] = {high_base, (high_base + high_size - half) & ~0xfffull};
  for (int k = 0; k < 2; k++) {
    if (map_high(bases[k], half)) test_fail("map_high(0x%lx, 0x%lx) failed", bases[k], half);
    struct job j = {bases[k], half, 0x9e3779b97f4a7c15ull * (k + 1), 0, 0, 0, 0, 0};
    enter_user(pattern_job, (uint64_t)&j, 0);
    uint64_t khz = tsc_khz() ? tsc_khz() : 3000000;
    printf("[0x%lx, +%lu MiB): write %lu ms, verify %lu ms, %lu bad qwords, checksum %016lx\n", j.base, half >> 20,
           j.write_cycles / khz, j.read_cycles / khz, j.bad, j.sum);
    CHECK(j.bad == 0, "pattern over %lu MiB at 0x%lx reads back (first bad at 0x%lx)", half >> 20, j.base, j.first_bad);
  }

  // Just past the end of RAM and inside the hole nothing is RAM: a write must not reach any
  // memory (and must not upset pier), a read shows what pier returns for unclaimed MMIO.
  uint64_t past = high_base + high_size;
  if (!map_high(past, 4096)) {
    volatile uint32_t *p = (volatile uint32_t *)past;
    *p = 0x12345678;
    uint32_t v = *p;
    printf("past the end of RAM (0x%lx): wrote 0x12345678, read 0x%x\n", past, v);
    CHECK(v != 0x12345678, "0x%lx (just past RAM) is not RAM", past);
  }
  volatile uint32_t *hole = (volatile uint32_t *)0xfebff000ull;
  printf("unclaimed MMIO in the hole (0xfebff000) reads 0x%x\n", *hole);
  return 0;
}
