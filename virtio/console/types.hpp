#pragma once
// The console device's vocabulary, shared by its parts (the device, its ports, the control
// endpoint) and by its users (the machine, the runtime API, tests, fuzzers): how a port is
// configured, how queues are numbered, why a direction waits, and what the device reports.
// Plain data; no threads involved. console_device.hpp includes it, so users need not.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "devices/chardev/port_backend.hpp"

namespace pier::virtio::console {

// One port as configured on the host.
struct PortConfig {
  // Sent to the guest as PORT_NAME (-> /dev/virtio-ports/<name>); empty = unnamed. See
  // port_name_error() for what is accepted. Unique among the device's ports.
  std::string name;
  // An hvc console port (CONSOLE_PORT): the first one is the guest's hvc0.
  bool console = false;
  // Where the port's bytes go on the host. Required. The device starts it and owns it.
  std::unique_ptr<chardev::PortBackend> backend;
  // The port id (< max_ports). Default: the lowest free id, so the first port configured
  // becomes port 0 (make that the console: Linux's hvc0 is port 0 by convention).
  std::optional<uint32_t> id;
};

// Queue numbering (virtio 1.2 §5.3.2): 0/1 = port 0 receiveq/transmitq, 2/3 = control
// receiveq/transmitq, then port p >= 1 at 2p+2 / 2p+3.
inline constexpr uint16_t kControlRxQueue = 2;
inline constexpr uint16_t kControlTxQueue = 3;
inline constexpr uint16_t port_rx_queue(uint32_t port) {
  return static_cast<uint16_t>(port == 0 ? 0 : 2 * port + 2);
}
inline constexpr uint16_t port_tx_queue(uint32_t port) {
  return static_cast<uint16_t>(port_rx_queue(port) + 1);
}
// The port whose data queue `index` is (not meaningful for the control queues 2 and 3).
inline constexpr uint32_t port_of_queue(uint16_t index) {
  return index < 2 ? 0 : uint32_t{index} / 2 - 1;
}

// Why one direction of a port is not moving bytes right now. Each value names the one event
// that restarts that direction (DESIGN: every place the device stops reading a backend or
// popping a queue has exactly one wakeup), so a stalled stream reports what it waits for.
enum class FlowWait : uint8_t {
  // Guest->host: nothing held; the next guest write kicks the device (notifications on).
  kMoving,
  // Host->guest: rx buffers held, the backend has no bytes now: on_readable restarts it.
  kBackendNotReadable,
  // Host->guest: no rx buffers; the host writer is throttled. Notifications are armed at the
  // ring's end: the driver's kick for its next buffer restarts it.
  kNoGuestBuffers,
  // Guest->host: bytes held that the backend did not take; the guest writer is throttled. The
  // backend's on_writable restarts it (and takes the chains the driver added without kicking).
  kBackendNotWritable,
  // Host->guest: the guest has not opened the port (Linux drops data for closed ports): its
  // PORT_OPEN(1) restarts it.
  kGuestClosed,
  // Either way: no host peer; on_host_connected(true) restarts it.
  kHostDisconnected,
  // Either way: no usable queue (driver not started, reset, queue failed): DRIVER_OK and the
  // driver's first kick restart it.
  kNoDriver,
  // Either way: this run's work budget was spent with more to do; a continuation posted to the
  // I/O loop restarts it after the events that were waiting meanwhile (other ports, the API,
  // signals), so one busy queue cannot hold the I/O thread.
  kYielded,
};
std::string_view to_string(FlowWait wait);

struct PortStats {
  uint32_t id = 0;
  std::string name;
  bool console = false;
  std::string backend;                 // PortBackend::describe()
  bool host_connected = false;         // a peer is attached on the host side
  bool guest_ready = false;            // the guest driver has the port (PORT_READY 1)
  bool guest_connected = false;        // the guest has it open (console: hvc up)
  uint64_t bytes_to_guest = 0;         // host -> guest, placed in guest rx buffers
  uint64_t bytes_from_guest = 0;       // guest -> host, taken from guest tx buffers
  uint64_t bytes_to_host = 0;          // guest -> host, accepted by the backend
  uint64_t bytes_lost = 0;             // of bytes_to_host, lost to a backend write error
  uint64_t bytes_buffered = 0;         // taken from the guest, not yet written (held chains + ring)
  uint64_t console_bytes_dropped = 0;  // console ring overflow: oldest bytes dropped
  uint64_t bytes_discarded = 0;        // taken from the guest but lost: port removed, device reset
  uint64_t host_connects = 0;          // host connect events seen
  size_t tx_chains_held = 0;
  size_t rx_buffers_held = 0;  // guest rx buffers popped and waiting for host data
  // What each direction waits for, as of the device's last pass over it.
  FlowWait to_guest_wait = FlowWait::kNoDriver;
  FlowWait to_host_wait = FlowWait::kNoDriver;
};

struct DeviceStats {
  bool driver_ready = false;       // DEVICE_READY(1) seen since the last reset
  bool multiport = false;          // negotiated
  uint64_t control_delivered = 0;  // messages placed in control-rx buffers
  uint64_t control_received = 0;   // messages read from control-tx
  uint64_t control_ignored = 0;    // invalid or out-of-place driver messages
  size_t control_pending = 0;      // waiting for a control-rx buffer
  uint64_t emergency_bytes = 0;    // emerg_wr writes
  uint64_t orphan_tx_bytes = 0;    // tx on a queue with no port (discarded)
};

// A change of a port's state, for the runtime API (events to its clients).
struct PortEvent {
  enum class Kind : uint8_t {
    kAdded,             // add_port() (not the ports given to the constructor)
    kRemoved,           // remove_port()
    kGuestOpened,       // the guest opened the port (PORT_OPEN 1; console ports: hvc up)
    kGuestClosed,       // the guest closed it, re-created it, or its driver went away
    kHostConnected,     // the backend's peer attached
    kHostDisconnected,  // ... went away
  };
  Kind kind = Kind::kAdded;
  uint32_t id = 0;
  std::string name;
};
std::string_view to_string(PortEvent::Kind kind);
using PortEventObserver = std::function<void(const PortEvent&)>;

}  // namespace pier::virtio::console
