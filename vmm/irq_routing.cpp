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

void IrqRouting::commit() {
  std::lock_guard lock(mutex_);
  const std::vector<kvm_irq_routing_entry> routes = pc_irqchip_routes();
  kvm_abi::ArrayBuffer<kvm_irq_routing_entry> buffer(routes);
  if (::ioctl(vm_.fd(), kvm_abi::kSetGsiRouting, buffer.arg()) < 0) {
    throw system_error("KVM_SET_GSI_ROUTING");
  }
}

}  // namespace pier
