#pragma once
// The VM's GSI routing table. KVM_SET_GSI_ROUTING replaces the whole table, so every update sends
// the irqchip routes (GSI 0-15 to the 8259s, 0-23 to the IOAPIC with ISA IRQ0 on pin 2, as the
// MADT's interrupt source override says) together with the MSI routes added since.
#include <linux/kvm.h>

#include <cstdint>
#include <mutex>
#include <vector>

namespace pier {

class Vm;

// The irqchip routes a PC has; exposed for tests.
std::vector<kvm_irq_routing_entry> pc_irqchip_routes();

class IrqRouting {
 public:
  explicit IrqRouting(Vm& vm) : vm_(vm) {}
  // Sends the table to KVM. Throws pier::Error on failure.
  void commit();

 private:
  Vm& vm_;
  std::mutex mutex_;
};

}  // namespace pier
