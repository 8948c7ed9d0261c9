#include "virtio.h"

static void select_reg(unsigned dev, unsigned reg) { outl(0xcf8, 0x80000000u | (dev << 11) | (reg & 0xfc)); }

uint32_t pci_read32(unsigned dev, unsigned reg) {
  select_reg(dev, reg);
  return inl(0xcfc);
}
uint16_t pci_read16(unsigned dev, unsigned reg) {
  select_reg(dev, reg);
  return inw((uint16_t)(0xcfc + (reg & 2)));
}
uint8_t pci_read8(unsigned dev, unsigned reg) {
  select_reg(dev, reg);
  return inb((uint16_t)(0xcfc + (reg & 3)));
}
void pci_write32(unsigned dev, unsigned reg, uint32_t v) {
  select_reg(dev, reg);
  outl(0xcfc, v);
}
void pci_write16(unsigned dev, unsigned reg, uint16_t v) {
  select_reg(dev, reg);
  outw((uint16_t)(0xcfc + (reg & 2)), v);
}

int pci_find(uint16_t vendor, uint16_t device) {
  for (unsigned dev = 0; dev < 32; ++dev) {
    const uint32_t id = pci_read32(dev, 0);
    if ((id & 0xffff) == vendor && (id >> 16) == device) return (int)dev;
  }
  return -1;
}

uint64_t pci_bar(unsigned dev, unsigned bar) {
  const uint32_t low = pci_read32(dev, 0x10 + 4 * bar);
  uint64_t addr = low & ~0xfu;
  if ((low & 0x6) == 0x4) addr |= (uint64_t)pci_read32(dev, 0x14 + 4 * bar) << 32;
  return addr;
}
