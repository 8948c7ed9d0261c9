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

// Thread-safe: MSI-X programming arrives on vCPU threads.
class IrqRouting {
 public:
  // GSIs above the IOAPIC's pins are free for MSI routes.
  static constexpr uint32_t kFirstMsiGsi = 24;

  // `vm` may be null (tests): then commit() only builds the table.
  explicit IrqRouting(Vm* vm) : vm_(vm) {}

  // Reserves a GSI for an MSI route (initially address 0/data 0, i.e. not programmed).
  uint32_t allocate_msi_gsi();
  void release_msi_gsi(uint32_t gsi);
  // Points `gsi` at an MSI message and sends the table to KVM.
  void set_msi(uint32_t gsi, uint64_t address, uint32_t data);
  // Sends the table to KVM. Throws pier::Error on failure.
  void commit();

  // The table commit() would send (for tests).
  std::vector<kvm_irq_routing_entry> table() const;

 private:
  struct MsiRoute {
    uint32_t gsi;
    uint64_t address;
    uint32_t data;
    bool in_use;
  };
  void commit_locked();
  std::vector<kvm_irq_routing_entry> table_locked() const;

  Vm* vm_;
  mutable std::mutex mutex_;
  std::vector<MsiRoute> msi_;  // index i is GSI kFirstMsiGsi + i
};

}  // namespace pier
