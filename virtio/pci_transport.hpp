#pragma once
// virtio-pci, modern interface only (virtio 1.2 §4.1): a PCI function 1af4:(1040 + device id)
// whose BAR 0 holds the common configuration, ISR, device configuration and notification
// structures, and whose BAR 2 holds the MSI-X table and PBA. Each queue has its own notify
// address (notify_off_multiplier 4) so a KVM ioeventfd per queue catches kicks without an exit;
// each MSI-X vector is a KVM MSI route plus an irqfd. With MSI-X off, interrupts go to INTx.
//
// The transport knows KVM only through PciPlatform, so it is unit-tested with a fake.
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "devices/io_bus.hpp"
#include "devices/pci/bus.hpp"
#include "devices/pci/msix.hpp"
#include "virtio/device.hpp"
#include "virtio/interrupt.hpp"
#include "virtio/queue.hpp"
#include "vmm/fd.hpp"
#include "vmm/guest_memory.hpp"
#include "vmm/log.hpp"

namespace pier::virtio {

// What the transport needs from the machine. Every call may come from a vCPU thread.
class PciPlatform {
 public:
  virtual ~PciPlatform() = default;
  // MMIO dispatch for a BAR (added when the guest enables memory decoding at an address).
  virtual void add_mmio(uint64_t base, uint64_t size, std::shared_ptr<BusDevice> device) = 0;
  virtual void remove_mmio(uint64_t base, const BusDevice* device) = 0;
  // KVM ioeventfd: a guest write at `address` signals `fd` without an exit.
  virtual void add_ioeventfd(int fd, uint64_t address) = 0;
  virtual void remove_ioeventfd(int fd, uint64_t address) = 0;
  // The I/O thread polls `fd` and calls `on_ready` when it is readable.
  virtual void watch(int fd, std::function<void()> on_ready) = 0;
  virtual void unwatch(int fd) = 0;
  // MSI routes: a GSI per vector, pointed at the vector's message, with an irqfd on it.
  virtual uint32_t allocate_msi_gsi() = 0;
  virtual void release_msi_gsi(uint32_t gsi) = 0;
  virtual void set_msi_route(uint32_t gsi, uint64_t address, uint32_t data) = 0;
  virtual void add_irqfd(int fd, uint32_t gsi) = 0;
  virtual void remove_irqfd(int fd, uint32_t gsi) = 0;
  // INTx (level) on an IOAPIC GSI.
  virtual void set_intx(uint32_t gsi, bool level) = 0;
  // Runs `fn` on the I/O thread (the thread that runs the `watch` callbacks) and returns once it
  // has run. Runs it on the calling thread when that is the I/O thread, or when the I/O thread is
  // not dispatching (before it starts, after it stops: never waits for a stopped loop); it never
  // overlaps a `watch` callback. The transport calls it from vCPU threads with its lock held, for
  // every device lifecycle change, so `fn` must not take that lock (EventLoop::call).
  virtual void run_on_io_thread(const std::function<void()>& fn) = 0;
};

class PciTransport final : public pci::Function,
                           private QueueErrorHandler,
                           public std::enable_shared_from_this<PciTransport> {
 public:
  // Register layout in BAR 0.
  static constexpr uint64_t kCommonOffset = 0x0000, kCommonSize = 0x38;
  static constexpr uint64_t kIsrOffset = 0x1000, kIsrSize = 0x1;
  static constexpr uint64_t kDeviceConfigOffset = 0x2000, kDeviceConfigMax = 0x1000;
  static constexpr uint64_t kNotifyOffset = 0x3000;
  static constexpr uint32_t kNotifyMultiplier = 4;
  static constexpr uint16_t kNoVector = 0xffff;
  static constexpr unsigned kMsixBar = 2;

  // `slot` (the PCI device number) decides the INTx GSI, matching the DSDT's _PRT.
  PciTransport(std::unique_ptr<Device> device, const GuestMemory& memory, PciPlatform& platform,
               pci::Bus& bus);
  ~PciTransport() override;

  // Puts the function on `bus` and assigns its BARs; returns the slot.
  unsigned attach();

  std::string name() const override;
  pci::ConfigSpace& config() override { return config_; }
  void config_read(uint16_t offset, std::span<uint8_t> data) override;
  void config_write(uint16_t offset, std::span<const uint8_t> data) override;

  Device& device() { return *device_; }
  uint8_t status() const;
  uint64_t bar0_address() const { return config_.bar_address(0); }
  uint64_t bar0_size() const { return config_.bar(0).size; }
  uint64_t msix_bar_address() const { return config_.bar_address(kMsixBar); }
  uint64_t msix_bar_size() const { return config_.bar(kMsixBar).size; }
  unsigned msix_vectors() const { return msix_.vectors(); }
  unsigned slot() const { return slot_; }
  unsigned intx_gsi_number() const { return intx_gsi(); }
  uint64_t notify_address(uint16_t queue) const {
    return bar0_address() + kNotifyOffset + uint64_t(queue) * kNotifyMultiplier;
  }
  // Exits on the notify path that reached pier instead of an ioeventfd (counted: with the fast
  // path working this stays 0).
  uint64_t slow_notifies() const;

 private:
  class Bar0;
  class MsixBar;
  class InterruptImpl;
  struct QueueState;

  void common_read(uint64_t offset, std::span<uint8_t> data);
  void common_write(uint64_t offset, std::span<const uint8_t> data);
  void isr_read(std::span<uint8_t> data);
  void notify_write(uint64_t offset);
  void set_status(uint8_t status);
  void reset_locked();
  void activate_locked();
  // On the I/O thread (run_on_io_thread, transport lock held by the waiting caller): hands the
  // driver's settings of queue `index` to its Queue and activates it, unless it is ready.
  void start_queue_io(size_t index);
  void map_bars_locked();
  void unmap_bars_locked();
  void on_vector_changed(unsigned vector, const pci::Msix::Message& message);
  void on_queue_error(const Queue& queue) override;
  uint32_t intx_gsi() const;
  uint8_t current_status_locked() const;

  std::unique_ptr<Device> device_;
  const GuestMemory& memory_;
  PciPlatform& platform_;
  pci::Bus& bus_;
  pci::ConfigSpace config_;
  unsigned slot_ = 0;
  uint8_t msix_cap_ = 0;
  uint8_t pci_cfg_cap_ = 0;

  mutable std::mutex mutex_;
  std::shared_ptr<Bar0> bar0_;
  std::shared_ptr<MsixBar> msix_bar_;
  pci::Msix msix_;
  std::unique_ptr<InterruptImpl> interrupt_;
  // The Queue objects belong to the I/O thread: only code run there (notify callbacks, the device,
  // functions passed to run_on_io_thread) touches them. The driver's register values for each
  // queue live in queue_state_ (vCPU side, under mutex_) until activation copies them over.
  std::vector<Queue> queues_;
  std::vector<QueueState> queue_state_;
  std::vector<UniqueFd> vector_fds_;  // one eventfd per MSI-X vector
  std::vector<uint32_t> vector_gsis_;
  uint64_t mapped_bar0_ = 0, mapped_msix_ = 0;
  bool bars_mapped_ = false;

  uint32_t device_feature_select_ = 0, driver_feature_select_ = 0;
  uint64_t driver_features_ = 0;
  uint16_t queue_select_ = 0;
  uint8_t status_ = 0;
  std::atomic<uint8_t> config_generation_{0};
  std::atomic<bool> needs_reset_{false};
  log::OnceFlag queue_error_logged_;         // set without the lock (see on_queue_error)
  bool activated_ = false;                   // vCPU side, under mutex_
  std::atomic<bool> activated_flag_{false};  // I/O side: set and read on the I/O thread
  std::atomic<bool> in_device_call_{false};  // debug builds check that device calls never overlap
  uint64_t slow_notifies_ = 0;
};

}  // namespace pier::virtio
