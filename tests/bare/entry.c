// entry: the Linux 64-bit boot protocol state pier promises (recorded by entry.S before the
// library touches anything): selectors, control registers, EFER, RFLAGS.IF, RSI/RSP, the boot
// GDT/IDT/TR, the identity page tables at 0x9000, the zero page's e820 table, command line and
// acpi_rsdp_addr, and the LAPIC LINT0/LINT1 set-up.
// cmdline: entry.check=<v> (must read "pier-cmdline-ok" when present), expect_mem=SIZE.
#include "bare.h"
TEST_NAME("entry");

extern char __image_start[], __image_end[];

struct pt_result {
  uint32_t bad, user;
  uint64_t first_bad;
};

// Walks pier's identity map (PML4 0x9000, PDPT 0xA000, PDs 0xB000..0xEFFF) in CPL3 (fast).
static uint64_t check_boot_tables(uint64_t arg) {
  struct pt_result *r = (struct pt_result *)arg;
  const uint64_t *pml4 = (const uint64_t *)0x9000, *pdpt = (const uint64_t *)0xa000;
  if ((pml4[0] & ~0xfffull) != 0xa000 || !(pml4[0] & 1)) r->bad++, r->first_bad = 0x9000;
  for (int i = 0; i < 4; i++) {
    if ((pdpt[i] & 0x000ffffffffff000ull) != 0xb000ull + 0x1000ull * i || !(pdpt[i] & 1)) {
      if (!r->bad++) r->first_bad = 0xa000 + 8 * i;
      continue;
    }
    const uint64_t *pd = (const uint64_t *)(0xb000ull + 0x1000ull * i);
    for (int j = 0; j < 512; j++) {
      uint64_t want = ((uint64_t)(i * 512 + j) << 21);
      uint64_t e = pd[j];
      if ((e & 0x000fffffffe00000ull) != want || (e & 0x83) != 0x83) {
        if (!r->bad++) r->first_bad = (uint64_t)&pd[j];
      }
      if (e & 4) r->user++;
    }
  }
  return 0;
}

static void describe_desc(const char *what, uint64_t d) {
  printf("  %s: %016lx (P=%lu DPL=%lu S=%lu type=%lx L=%lu D=%lu G=%lu)\n", what, d, (d >> 47) & 1, (d >> 45) & 3,
         (d >> 44) & 1, (d >> 40) & 0xf, (d >> 53) & 1, (d >> 54) & 1, (d >> 55) & 1);
}

int test_main(void) {
  const struct entry_state *e = &entry_state;
  printf("entry: cs=%x ds=%x es=%x ss=%x fs=%x gs=%x tr=%x rflags=%lx rsi=%lx rsp=%lx\n", e->cs, e->ds, e->es,
         e->ss, e->fs, e->gs, e->tr, e->rflags, e->rsi, e->rsp);
  printf("entry: cr0=%lx cr3=%lx cr4=%lx efer=%lx gdt=%lx/%x idt=%lx/%x\n", e->cr0, e->cr3, e->cr4, e->efer,
         e->gdt_base, e->gdt_limit, e->idt_base, e->idt_limit);
  CHECK(e->cs == 0x10, "CS is __BOOT_CS 0x10 (got 0x%x)", e->cs);
  CHECK(e->ds == 0x18 && e->es == 0x18 && e->ss == 0x18, "DS/ES/SS are __BOOT_DS 0x18");
  CHECK((e->cr0 & 0x80000001) == 0x80000001, "CR0.PE and CR0.PG set");
  CHECK(e->cr4 & 0x20, "CR4.PAE set");
  CHECK((e->efer & 0x500) == 0x500, "EFER.LME and EFER.LMA set");
  CHECK(!(e->rflags & 0x200), "RFLAGS.IF clear");
  CHECK(e->rsi == 0x7000, "RSI = 0x7000 (zero page)");
  CHECK(e->rsp == 0x8ff0, "RSP = 0x8ff0");
  CHECK((e->cr3 & ~0xfffull) == 0x9000, "CR3 = 0x9000 (PML4)");
  CHECK(e->gdt_base == 0x500, "GDT at 0x500");
  CHECK(e->gdt_limit >= 0x27, "GDT limit covers the TSS descriptor at 0x20 (limit 0x%x)", e->gdt_limit);
  CHECK(e->idt_base == 0x540 && e->idt_limit == 7, "IDT at 0x540, limit 7");

  const uint64_t *gdt = (const uint64_t *)0x500;
  printf("boot GDT:\n");
  describe_desc("0x10 code", gdt[2]);
  describe_desc("0x18 data", gdt[3]);
  if (e->gdt_limit >= 0x27) describe_desc("0x20 tss ", gdt[4]);
  uint64_t cs = gdt[2], ds = gdt[3];
  CHECK(((cs >> 47) & 1) && ((cs >> 53) & 1) && !((cs >> 54) & 1) && ((cs >> 44) & 1) && ((cs >> 43) & 1) &&
            !((cs >> 45) & 3),
        "GDT[0x10]: present 64-bit DPL0 code segment");
  CHECK(((ds >> 47) & 1) && ((ds >> 44) & 1) && !((ds >> 43) & 1) && ((ds >> 41) & 1) && !((ds >> 45) & 3),
        "GDT[0x18]: present writable DPL0 data segment");
  CHECK((ds & 0xffff) == 0xffff && ((ds >> 48) & 0xf) == 0xf && ((ds >> 55) & 1) && !((ds >> 16) & 0xffffff),
        "GDT[0x18]: flat 4 GiB (base 0, limit 0xfffff, G=1)");
  if (e->gdt_limit >= 0x2f) {
    uint64_t t = gdt[4];
    unsigned type = (t >> 40) & 0xf;
    CHECK(((t >> 47) & 1) && !((t >> 44) & 1) && (type == 9 || type == 11), "GDT[0x20]: present 64-bit TSS (type %u)", type);
  }
  CHECK(e->tr == 0x20, "TR = 0x20 (got 0x%x)", e->tr);

  struct pt_result pt = {0, 0, 0};
  enter_user(check_boot_tables, (uint64_t)&pt, 0);
  CHECK(pt.bad == 0, "boot page tables identity-map 0-4 GiB with 2 MiB pages (%u bad, first at 0x%lx)", pt.bad,
        pt.first_bad);
  CHECK(pt.user == 0, "boot page tables are supervisor-only (%u entries with U)", pt.user);

  // Zero page.
  const char *cl = cmdline();
  uint32_t clp = *(uint32_t *)(boot_params + 0x228);
  printf("cmdline at 0x%x: \"%s\"\n", clp, cl);
  char v[64];
  if (cmdline_str("entry.check", v, sizeof v)) CHECK(!strcmp(v, "pier-cmdline-ok"), "cmdline value entry.check=%s", v);
  int n = e820_count();
  uint64_t ram = 0, image = (uint64_t)__image_start, image_end = (uint64_t)__image_end;
  int image_in_ram = 0, hole_ram = 0, low_ram = 0, overlap = 0;
  printf("e820: %d entries\n", n);
  for (int i = 0; i < n; i++) {
    const struct e820_entry *x = e820_get(i);
    printf("  [%016lx-%016lx) type %u\n", x->addr, x->addr + x->size, x->type);
    if (x->type != E820_RAM) continue;
    ram += x->size;
    if (x->addr <= image && x->addr + x->size >= image_end) image_in_ram = 1;
    if (x->addr == 0 && x->size >= 0x9f000) low_ram = 1;
    if (x->addr < 0x100000000ull && x->addr + x->size > 0xc0000000ull) hole_ram = 1;
    for (int j = 0; j < i; j++) {
      const struct e820_entry *y = e820_get(j);
      if (y->type == E820_RAM && x->addr < y->addr + y->size && y->addr < x->addr + x->size) overlap = 1;
    }
  }
  printf("e820: %lu KiB of RAM\n", ram >> 10);
  CHECK(n > 0 && n <= 128, "e820 has 1..128 entries (%d)", n);
  CHECK(low_ram, "e820 RAM at 0 up to ~640 KiB");
  CHECK(image_in_ram, "the loaded image [0x%lx, 0x%lx) is in e820 RAM", image, image_end);
  CHECK(!hole_ram, "no e820 RAM in the MMIO hole 0xC0000000-0xFFFFFFFF");
  CHECK(!overlap, "e820 RAM entries do not overlap");
  uint64_t expect = cmdline_u64("expect_mem", 0);
  if (expect) CHECK(ram <= expect && ram + 2 * 1024 * 1024 >= expect, "e820 RAM total ~ %lu MiB", expect >> 20);

  uint64_t rsdp_addr = *(uint64_t *)(boot_params + 0x070);
  printf("acpi_rsdp_addr = 0x%lx\n", rsdp_addr);
  CHECK(rsdp_addr >= 0xe0000 && rsdp_addr < 0x100000 && !memcmp((const void *)rsdp_addr, "RSD PTR ", 8),
        "acpi_rsdp_addr points at an RSDP in 0xE0000-0xFFFFF");

  // Ports nothing claims read as all-ones: COM2, COM4, LPT2, QEMU's fw_cfg.
  static const uint16_t unclaimed[] = {0x2f8, 0x2fd, 0x2e8, 0x278, 0x510};
  int ones = 1;
  for (unsigned i = 0; i < ARRAY_SIZE(unclaimed); i++) {
    uint8_t b = inb(unclaimed[i]);
    uint16_t w = inw(unclaimed[i]);
    uint32_t l = inl(unclaimed[i]);
    if (b != 0xff || w != 0xffff || l != 0xffffffffu) {
      printf("port 0x%x reads 0x%x/0x%x/0x%x\n", unclaimed[i], b, w, l);
      ones = 0;
    }
  }
  CHECK(ones, "unclaimed ports read all-ones (8/16/32-bit)");

  uint32_t lint0 = lapic_read(LAPIC_LVT_LINT0), lint1 = lapic_read(LAPIC_LVT_LINT1);
  printf("LAPIC id %u version 0x%x LINT0 0x%x LINT1 0x%x SVR 0x%x\n", lapic_id(), lapic_read(LAPIC_VERSION), lint0,
         lint1, lapic_read(LAPIC_SVR));
  CHECK((lint0 & 0x700) == 0x700 && !(lint0 & 0x10000), "LAPIC LINT0 = ExtINT, unmasked");
  CHECK((lint1 & 0x700) == 0x400 && !(lint1 & 0x10000), "LAPIC LINT1 = NMI, unmasked");
  return 0;
}
