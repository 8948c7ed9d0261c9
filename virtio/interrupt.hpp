#pragma once
// How a device notifies the driver, independent of the transport. virtio-pci implements it with
// one MSI-X vector (KVM MSI route + irqfd) per queue plus one for config changes, or with a
// legacy INTx irqfd and the ISR register; virtio-mmio with an irqfd on a GSI and
// InterruptStatus; unit tests with a counter.
#include <cstdint>

namespace pier::virtio {

class Interrupt {
 public:
  virtual ~Interrupt() = default;

  // A used-buffer notification for queue `queue_index`. Devices call it after
  // Queue::should_interrupt() said yes. Cheap and non-blocking (an eventfd write); safe to call
  // from the device's I/O thread while vCPU threads touch the transport.
  virtual void signal_queue(uint16_t queue_index) = 0;

  // A configuration-change notification: the device changed its config space (the transport
  // bumps config_generation first) or entered NEEDS_RESET.
  virtual void signal_config() = 0;

  // Device -> transport: call queue_notify(queue_index) again on the I/O thread, after the
  // events that are waiting now. For a device that stopped at its per-run work budget with
  // buffers still available: the driver will not kick for those (it already did), and looping
  // until the ring is empty would let a guest that keeps adding buffers hold the I/O thread.
  // virtio-pci signals the queue's notify eventfd, as a guest kick would.
  virtual void notify_again(uint16_t queue_index) = 0;
};

}  // namespace pier::virtio
