#pragma once
// How a port (port.hpp) and the control endpoint (control_endpoint.hpp) reach the
// ConsoleDevice that owns them: its queues while the driver has it activated, its interrupt,
// the I/O loop for continuations, the other ports, and the event queue for the runtime API.
// ConsoleDevice implements it; the unit tests of a port or of the endpoint implement it over a
// FakeTransport, so each part is tested on its own.
//
// Every call is made on the I/O thread inside the device's dispatch (device lock held):
// implementations check it with assert_io_role(role_owner()) where they touch a queue.
#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "virtio/console/types.hpp"
#include "virtio/queue.hpp"
#include "vmm/log.hpp"

namespace pier::virtio::console {

class Port;

class DeviceLink {
 public:
  // Queue `index` when the driver has activated the device and the queue is ready and not
  // failed; otherwise null (nothing to pop from or push to).
  virtual Queue* usable_queue(uint16_t index) = 0;
  // A used-buffer notification for `queue`, if the driver asked for one.
  virtual void signal(Queue& queue) = 0;
  // Runs queue `index`'s work again once the events that waited meanwhile in the I/O loop have
  // run (the caller's per-run budget is spent). At most one continuation per queue is pending.
  virtual void continue_later(uint16_t index) = 0;
  // Completes and discards the transmit chains on `queue` that no port the guest has owns
  // (removed, not taken yet, never configured), so the guest can free them or stop spinning.
  virtual void orphan_tx(Queue& queue) = 0;
  // Records a port event for the device's observer (delivered after the dispatch).
  virtual void note(const Port& port, PortEvent::Kind kind) = 0;
  // The port with `id`, or null.
  virtual Port* port(uint32_t id) = 0;
  // Every port, in id order.
  virtual void for_each_port(const std::function<void(Port&)>& fn) = 0;

  // The identity the thread-role checks use (thread_role.hpp): the owning device's dispatch
  // marks the thread with it.
  const void* role_owner() const { return this; }

 protected:
  ~DeviceLink() = default;
};

// What every port of one device shares (I/O thread, device lock): one gather list for
// readv/writev, and the log-once flags, so a device logs each kind of trouble once, not once
// per port.
struct PortShared {
  std::vector<iovec> scratch_iov;
  log::OnceFlag empty_rx_logged, ring_drop_logged, discard_logged;
};

}  // namespace pier::virtio::console
