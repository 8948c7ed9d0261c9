// PVH start info (xen/include/public/arch-x86/hvm/start_info.h) -> the zero page the rest of
// the library reads (boot.c: e820 at 0x1e8/0x2d0, cmd_line_ptr at 0x228, acpi_rsdp_addr at 0x70).
#include "bare.h"

#define HVM_START_MAGIC 0x336ec578u

struct hvm_start_info {
  uint32_t magic, version, flags, nr_modules;
  uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr;
  uint64_t memmap_paddr;  // version >= 1
  uint32_t memmap_entries, reserved;
};
struct hvm_memmap_entry {
  uint64_t addr, size;
  uint32_t type, reserved;
};

uint32_t pvh_start_info;  // EBX at the PVH entry (pvh.S)
static uint8_t zero_page[4096] ALIGNED(4096);

uint8_t* pvh_boot_params(void) {
  // Firmware (SeaBIOS under QEMU) leaves the 8259s at vector base 8 with the PIT's IRQ 0
  // unmasked: a timer tick would arrive as a bogus #DF once interrupts are on.
  pic_disable();
  const struct hvm_start_info* si = (const struct hvm_start_info*)(uint64_t)pvh_start_info;
  if (!si || si->magic != HVM_START_MAGIC) return zero_page;  // no cmdline, no e820
  const uint64_t cmd = si->cmdline_paddr;
  *(uint32_t*)(zero_page + 0x228) = (uint32_t)cmd;
  *(uint32_t*)(zero_page + 0xc8) = (uint32_t)(cmd >> 32);
  *(uint64_t*)(zero_page + 0x70) = si->rsdp_paddr;
  if (si->version >= 1 && si->memmap_paddr) {
    const struct hvm_memmap_entry* m = (const struct hvm_memmap_entry*)si->memmap_paddr;
    uint32_t n = si->memmap_entries > 128 ? 128 : si->memmap_entries;
    struct e820_entry* e = (struct e820_entry*)(zero_page + 0x2d0);
    for (uint32_t i = 0; i < n; ++i) {
      e[i].addr = m[i].addr;
      e[i].size = m[i].size;
      e[i].type = m[i].type;
    }
    zero_page[0x1e8] = (uint8_t)n;
  }
  return zero_page;
}
