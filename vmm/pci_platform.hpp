#pragma once
// The machine's side of virtio::PciPlatform: MMIO handlers on the machine's bus, ioeventfds,
// irqfds and MSI routes on the VM, notify eventfds on the I/O thread's loop.
#include "devices/io_bus.hpp"
#include "virtio/pci_transport.hpp"
#include "vmm/event_loop.hpp"
#include "vmm/irq_routing.hpp"
#include "vmm/kvm.hpp"

namespace pier {

class KvmPciPlatform final : public virtio::PciPlatform {
 public:
  KvmPciPlatform(Vm& vm, IrqRouting& routing, IoBus& mmio, EventLoop& loop)
      : vm_(vm), routing_(routing), mmio_(mmio), loop_(loop) {}

  void add_mmio(uint64_t base, uint64_t size, std::shared_ptr<BusDevice> device) override {
    mmio_.add(base, size, std::move(device), "virtio-pci BAR");
  }
  void remove_mmio(uint64_t base, const BusDevice* device) override { mmio_.remove(base, device); }
  void add_ioeventfd(int fd, uint64_t address) override {
    // Length 0 matches a write of any width: Linux kicks with 16-bit writes, others use 32.
    vm_.assign_ioeventfd(fd, address, 0);
  }
  void remove_ioeventfd(int fd, uint64_t address) override {
    vm_.deassign_ioeventfd(fd, address, 0);
  }
  void watch(int fd, std::function<void()> on_ready) override {
    loop_.add(fd, EPOLLIN, [fn = std::move(on_ready)](uint32_t) { fn(); });
  }
  void unwatch(int fd) override { loop_.remove(fd); }
  uint32_t allocate_msi_gsi() override { return routing_.allocate_msi_gsi(); }
  void release_msi_gsi(uint32_t gsi) override { routing_.release_msi_gsi(gsi); }
  void set_msi_route(uint32_t gsi, uint64_t address, uint32_t data) override {
    routing_.set_msi(gsi, address, data);
  }
  void add_irqfd(int fd, uint32_t gsi) override { vm_.assign_irqfd(fd, gsi); }
  void remove_irqfd(int fd, uint32_t gsi) override { vm_.deassign_irqfd(fd, gsi); }
  void set_intx(uint32_t gsi, bool level) override { vm_.set_irq_line(gsi, level); }
  // The I/O thread is the loop's: device lifecycle changes wait for it (or run here when it no
  // longer dispatches, at shutdown).
  void run_on_io_thread(const std::function<void()>& fn) override { loop_.call(fn); }

 private:
  Vm& vm_;
  IrqRouting& routing_;
  IoBus& mmio_;
  EventLoop& loop_;
};

}  // namespace pier
