#include "vmm/irq_routing.hpp"

#include <sys/ioctl.h>

#include "boot/layout.hpp"
#include "vmm/error.hpp"
#include "vmm/kvm.hpp"
#include "vmm/kvm_abi.hpp"

namespace pier {

std::vector<kvm_irq_routing_entry> pc_irqchip_routes() {
  std::vector<kvm_irq_routing_entry> routes;
  auto add = [&](uint32_t gsi, uint32_t chip, uint32_t pin) {
    kvm_irq_routing_entry e{};
    e.gsi = gsi;
    e.type = KVM_IRQ_ROUTING_IRQCHIP;
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    routes.push_back(e);
  };
  for (uint32_t gsi = 0; gsi < 16; ++gsi) {
    if (gsi == 2) continue;  // the cascade
    add(gsi, gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE, gsi % 8);
  }
  for (uint32_t gsi = 0; gsi < layout::kIoapicPins; ++gsi) {
    if (gsi == 2) continue;
    // ISA IRQ0 (the PIT) is wired to IOAPIC pin 2 on PCs; the MADT says so with an override.
    add(gsi, KVM_IRQCHIP_IOAPIC, gsi == 0 ? 2 : gsi);
  }
  return routes;
}

uint32_t IrqRouting::allocate_msi_gsi() {
  std::lock_guard lock(mutex_);
  for (auto& r : msi_) {
    if (!r.in_use) {
      r = {r.gsi, 0, 0, true};
      return r.gsi;
    }
  }
  const uint32_t gsi = kFirstMsiGsi + static_cast<uint32_t>(msi_.size());
  msi_.push_back({gsi, 0, 0, true});
  return gsi;
}

void IrqRouting::release_msi_gsi(uint32_t gsi) {
  std::lock_guard lock(mutex_);
  if (gsi >= kFirstMsiGsi && gsi - kFirstMsiGsi < msi_.size())
    msi_[gsi - kFirstMsiGsi].in_use = false;
}

void IrqRouting::set_msi(uint32_t gsi, uint64_t address, uint32_t data) {
  std::lock_guard lock(mutex_);
  if (gsi < kFirstMsiGsi || gsi - kFirstMsiGsi >= msi_.size()) return;
  MsiRoute& r = msi_[gsi - kFirstMsiGsi];
  r.address = address;
  r.data = data;
  commit_locked();
}

std::vector<kvm_irq_routing_entry> IrqRouting::table() const {
  std::lock_guard lock(mutex_);
  return table_locked();
}

std::vector<kvm_irq_routing_entry> IrqRouting::table_locked() const {
  // KVM_SET_GSI_ROUTING replaces the whole table: the irqchip routes always go with the MSIs.
  std::vector<kvm_irq_routing_entry> routes = pc_irqchip_routes();
  for (const auto& r : msi_) {
    if (!r.in_use) continue;
    kvm_irq_routing_entry e{};
    e.gsi = r.gsi;
    e.type = KVM_IRQ_ROUTING_MSI;
    e.u.msi.address_lo = static_cast<uint32_t>(r.address);
    e.u.msi.address_hi = static_cast<uint32_t>(r.address >> 32);
    e.u.msi.data = r.data;
    routes.push_back(e);
  }
  return routes;
}

void IrqRouting::commit() {
  std::lock_guard lock(mutex_);
  commit_locked();
}

void IrqRouting::commit_locked() {
  const std::vector<kvm_irq_routing_entry> routes = table_locked();
  if (vm_ == nullptr) return;
  kvm_abi::ArrayBuffer<kvm_irq_routing_entry> buffer(routes);
  if (::ioctl(vm_->fd(), kvm_abi::kSetGsiRouting, buffer.arg()) < 0) {
    throw system_error("KVM_SET_GSI_ROUTING");
  }
}

}  // namespace pier
