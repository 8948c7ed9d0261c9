#pragma once
// virtio-console with VIRTIO_CONSOLE_F_MULTIPORT (virtio 1.2 §5.3), driven the way Linux's
// drivers/char/virtio_console.c drives it (reference/design-notes.md §4). The product: hvc
// console ports and named ports, each connected to a host-side chardev::PortBackend, with the
// console contract of DESIGN.md:
//
//  1. Host connect is a real event: every change of the backend's host_connected() becomes
//     PORT_OPEN(id, 0/1) once the guest has the port (after its PORT_READY).
//  2. Host->guest: bytes are read from the backend only into rx buffers the guest posted, and
//     only while the guest has the port open (console ports: once the hvc is up; Linux discards
//     data for closed ports). No buffer -> want_input(false): the host writer feels it.
//     readv goes straight into the chains' writable iovecs.
//  3. Guest->host on generic ports: a tx chain is held (with its offset) until all its bytes
//     reached the backend and only then marked used; a full backend throttles the guest's
//     writes, never the VMM (want_output + on_writable). While no client is connected, held
//     chains wait for the next client, who gets them in order (the guest's writers meanwhile
//     block, since they saw PORT_OPEN(0)). writev goes straight from the chains' iovecs.
//  4. Console-port tx and control tx are completed at once (Linux busy-waits on both). Console
//     output nobody takes goes to a bounded OutputRing per port, replayed to the next client;
//     when full, the oldest bytes are dropped and counted (stats, and one log line).
//  5. Control messages to the guest are queued on the host and delivered one per control-rx
//     buffer, never dropped. The queue is bounded by construction: at most one pending message
//     per (port incarnation, kind) plus one PORT_REMOVE per id; a newer state (RESIZE, a
//     PORT_OPEN undoing an undelivered PORT_OPEN) replaces or cancels the undelivered one, and
//     PORT_READY is answered only when no earlier answer is still waiting. So at most
//     ~6 * max_nr_ports messages (about 3000 for 511 ports), whatever the guest or clients do.
//  6. Every id, event, value and length from the guest is validated; nonsense is logged once
//     per kind and ignored (counted in DeviceStats::control_ignored). Queue errors go to the
//     transport's NEEDS_RESET path through the Queue.
//
// Queues (virtio 1.2 §5.3.2): 0/1 = port 0 receiveq/transmitq, 2/3 = control receiveq/transmitq,
// then port p >= 1 at 2p+2 / 2p+3. All 2 * (max_nr_ports + 1) exist with a non-zero size, since
// Linux creates every one at probe.
//
// Threads and locking. One mutex guards all device state.
//  - I/O thread: queue_notify(), activate() and reset() (the transport runs them there, see
//    device.hpp), the backends' Listener callbacks, add_port(), remove_port(), resize(), and the
//    posted flush of emergency writes. Only this thread calls into backends and touches queues.
//  - vCPU threads (transport lock held): ack_features(), read_config(), write_config(),
//    emergency writes. They never call a backend or touch a queue (they only change state under
//    the lock; backend interest is corrected on the next I/O-thread event). activate() and
//    reset() keep that rule too (they only change state), so they are correct on either thread.
//  - Backends may call their Listener synchronously from inside readv/writev/want_*/start (e.g.
//    on_host_connected(false) from a readv that saw the peer go away). Such re-entrant
//    callbacks are queued and handled when the outer call returns, still under the lock.
//  - Nothing blocks: backends are non-blocking, the lock is held only for bounded work: one
//    entry point takes at most 256 chains per queue (1 MiB on a receive path) and posts a
//    continuation for the rest (FlowWait::kYielded), and the chains held per queue never
//    exceed its size (Queue::pop refuses more: a guest re-posting a held head).
//  - stats() may be called from any thread.
//  - The PortEventObserver (set_observer) is called on the I/O thread, never under the device
//    lock: events are queued under the lock (also by activate()/reset()) and
//    delivered, in order, when the I/O-thread entry point that saw them (or the next one)
//    unlocks. It may call port_stats()/stats() and the runtime API.
// Construct and destroy the device while the I/O loop is not dispatching for it (before the
// machine starts, after it stops): the constructor starts the backends and the destructor stops
// them.
#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "devices/chardev/port_backend.hpp"
#include "virtio/console/control.hpp"
#include "virtio/console/fifo.hpp"
#include "virtio/console/output_ring.hpp"
#include "virtio/device.hpp"
#include "virtio/virtio.hpp"
#include "vmm/event_loop.hpp"
#include "vmm/log.hpp"

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

struct ConsoleOptions {
  // max_nr_ports in config space (--max-ports): 1..kMaxPortsLimit (511).
  uint32_t max_ports = kDefaultMaxPorts;
  // Size of every port queue (power of two, 2..32768). Linux posts that many 4 KiB rx
  // buffers per port, so 128 = 512 KiB of guest memory per port in flight each way.
  uint16_t queue_size = 128;
  // Size of the control queues (power of two, 2..32768).
  uint16_t control_queue_size = 64;
  // Per-port bound for console output nobody took (replayed to the next client).
  size_t console_ring_bytes = 64 * 1024;
  // RESIZE payload order: kRowsCols for Linux before commit 5326ab737a47 (Debian 12's 6.1),
  // kColsRows for the spec order newer kernels read. See control.hpp.
  ResizeLayout resize_layout = ResizeLayout::kRowsCols;
};

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

class ConsoleDevice final : public Device {
 public:
  // Validates `options` and every port (throws pier::Error with one actionable line: bad
  // max_ports, duplicate or invalid names, duplicate or out-of-range ids, more ports than
  // max_ports), then starts each backend on `loop` (its setup errors propagate).
  ConsoleDevice(EventLoop& loop, ConsoleOptions options, std::vector<PortConfig> ports);
  ~ConsoleDevice() override;
  ConsoleDevice(const ConsoleDevice&) = delete;
  ConsoleDevice& operator=(const ConsoleDevice&) = delete;

  // Queue numbering.
  static constexpr uint16_t kControlRxQueue = 2;
  static constexpr uint16_t kControlTxQueue = 3;
  static constexpr uint16_t rx_queue(uint32_t port) {
    return static_cast<uint16_t>(port == 0 ? 0 : 2 * port + 2);
  }
  static constexpr uint16_t tx_queue(uint32_t port) {
    return static_cast<uint16_t>(rx_queue(port) + 1);
  }

  // ---- virtio::Device
  std::string_view name() const override { return "virtio-console"; }
  uint32_t device_id() const override { return kDeviceIdConsole; }
  uint64_t device_features() const override;
  bool ack_features(uint64_t driver_features) override;
  // struct virtio_console_config { le16 cols; le16 rows; le32 max_nr_ports; le32 emerg_wr; }.
  // cols/rows are port 0's console size (used by drivers without MULTIPORT). A write to
  // emerg_wr sends its low byte to port 0's backend (through port 0's ring, flushed on the I/O
  // thread), negotiated or not, as the spec asks.
  size_t config_size() const override { return 12; }
  void read_config(uint64_t offset, std::span<uint8_t> out) override;
  void write_config(uint64_t offset, std::span<const uint8_t> in) override;
  size_t num_queues() const override { return 2 * (size_t{options_.max_ports} + 1); }
  uint16_t queue_max_size(size_t index) const override;
  void activate(std::span<Queue> queues, Interrupt& interrupt) override;
  void reset() override;
  void queue_notify(uint16_t index) override;

  // ---- Runtime API (I/O thread).
  // Adds a port (validated like the constructor's; the backend is started). When the driver is
  // up, PORT_ADD goes out at once and the guest answers with PORT_READY. Ids of removed ports
  // are reusable. Returns the id. Throws pier::Error.
  uint32_t add_port(PortConfig config);
  // Removes port `id` with full teardown: guest-bound control messages of the port that were
  // not delivered are withdrawn, PORT_REMOVE is sent if the guest knew the port, buffered
  // guest->host bytes get one last non-blocking write attempt and are otherwise discarded
  // (counted; the held tx chains are completed so the guest reclaims its buffers), and the
  // backend is stopped and destroyed. Throws pier::Error when there is no such port.
  void remove_port(uint32_t id);
  // A console port's terminal size: RESIZE to the guest (when it negotiated F_SIZE and has the
  // port), and config space cols/rows for port 0 (with a config interrupt when MULTIPORT was
  // not negotiated). Throws pier::Error when `id` is not a console port.
  void resize(uint32_t id, uint16_t cols, uint16_t rows);

  // Where port events go (I/O thread; see the threading notes above). Set it before the loop
  // dispatches for the device; an empty function turns events off.
  void set_observer(PortEventObserver observer);

  // ---- Observability (any thread).
  std::vector<PortStats> port_stats() const;
  std::optional<PortStats> port_stats(uint32_t id) const;
  DeviceStats stats() const;
  const ConsoleOptions& options() const { return options_; }

 private:
  struct Port;
  struct Slot;
  class PortListener;
  class Dispatch;
  struct BackendEvent {
    enum class Kind : uint8_t { kConnected, kDisconnected, kReadable, kWritable };
    uint32_t id;
    uint64_t serial;
    Kind kind;
  };

  // Called by a PortListener (I/O thread).
  void backend_event(const BackendEvent& event);
  void handle_backend_event(const BackendEvent& event);
  void drain_backend_events();

  uint32_t add_port_locked(PortConfig config);
  Port* port(uint32_t id);
  const Port* port(uint32_t id) const;
  Queue* ready_queue(uint16_t index);
  bool console_semantics(const Port& p) const;
  PortStats make_stats(const Port& p) const;

  // Data paths.
  void pump_rx(Port& p);
  void console_tx(Port& p, Queue& q);
  void generic_tx(Port& p, Queue& q);
  // Pops every available transmit chain into the port's held list (no writing).
  void take_tx(Port& p, Queue& q);
  void orphan_tx(Queue& q);
  void flush_out(Port& p);
  void ring_push(Port& p, std::span<const uint8_t> bytes);
  void log_ring_drop(const Port& p);
  void set_want_input(Port& p, bool on);
  void set_want_output(Port& p, bool on);
  void host_changed(Port& p, bool connected);
  void signal(Queue& q);
  // The body of queue_notify (lock held).
  void run_queue(uint16_t index);
  // Posts one continuation of run_queue(index) to the I/O loop (at most one per queue).
  void continue_later(uint16_t index);

  // Control path.
  void control_tx();
  void handle_driver_message(std::span<const uint8_t> bytes);
  void deliver_control();
  void queue_control(ControlMessage message);
  void queue_port_add(Port& p);
  void answer_port_ready(Port& p);
  void sync_host_open(Port& p);
  void queue_resize(Port& p);
  // Withdraws undelivered messages of port incarnation `serial`; returns whether a PORT_ADD
  // was among them.
  bool withdraw_messages(uint64_t serial);
  bool has_pending(uint64_t serial, ControlEvent event) const;

  void flush_emergency();
  void note(const Port& p, PortEvent::Kind kind);
  void set_guest_connected(Port& p, bool open);
  void deliver_port_events();
  void teardown_port(Port& p);
  void drop_guest_state(Port& p);

  EventLoop& loop_;
  const ConsoleOptions options_;

  mutable std::mutex mutex_;
  // The thread inside a Dispatch (holding mutex_), so re-entrant backend callbacks are queued.
  std::atomic<std::thread::id> dispatch_owner_{};
  std::vector<BackendEvent> backend_events_;
  PortEventObserver observer_;          // set before the loop runs
  std::vector<PortEvent> port_events_;  // under mutex_, delivered unlocked

  std::vector<Slot> slots_;  // indexed by port id, max_ports long
  uint64_t next_serial_ = 1;

  // Transport state (set by activate, cleared by reset).
  std::span<Queue> queues_;
  Interrupt* interrupt_ = nullptr;
  bool active_ = false;
  uint64_t features_ = 0;
  bool multiport_ = false;
  bool driver_ready_ = false;

  std::deque<ControlMessage> control_pending_;
  std::vector<Chain> control_rx_unusable_;  // control-rx buffers < 8 bytes (until reset)
  bool emergency_flush_posted_ = false;
  std::vector<uint8_t> continuation_posted_;  // per queue index: continue_later() is pending
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // for posted closures

  std::vector<iovec> scratch_iov_;  // gather list for readv/writev

  DeviceStats stats_;

  // Log-once flags: one per kind of guest nonsense, per device.
  std::array<log::OnceFlag, 8> parse_logged_;
  log::OnceFlag unknown_port_logged_, not_ready_logged_, device_ready_fail_logged_,
      device_ready_dup_logged_, port_ready_fail_logged_, early_ready_logged_,
      short_control_buffer_logged_, name_cut_logged_, empty_rx_logged_, orphan_tx_logged_,
      ring_drop_logged_, emergency_drop_logged_, discard_logged_;
};

}  // namespace pier::virtio::console
