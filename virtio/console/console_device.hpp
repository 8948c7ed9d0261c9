#pragma once
// virtio-console with VIRTIO_CONSOLE_F_MULTIPORT (virtio 1.2 §5.3), driven the way Linux's
// drivers/char/virtio_console.c drives it (reference/design-notes.md §4). The product: hvc
// console ports and named ports, each connected to a host-side chardev::PortBackend, with the
// console contract of DESIGN.md. The device is split along the protocol:
//
//  - ConsoleDevice (this file): owns the ports and the control endpoint, validates the
//    configuration, wires each backend's events to its port, negotiates features, answers
//    config space (cols/rows, max_nr_ports, emerg_wr), activates and resets, dispatches queue
//    notifications by index, posts continuations, and reports stats and port events.
//  - Port (port.hpp): one port's backend and data queues - host->guest reads only into posted
//    buffers of an open port, guest->host chains held until the backend took every byte,
//    console output completed at once through a bounded ring - with counters, flow waits and
//    per-run budgets (contract items 2-4).
//  - ControlEndpoint (control_endpoint.hpp): the control message state machine - the
//    handshake, PORT_OPEN both ways, RESIZE, hot-plug, one message per buffer, a host-side
//    queue bounded by construction, every driver message validated (items 1, 5, 6). Its wire
//    format is control.hpp's.
//
// Queues (virtio 1.2 §5.3.2, types.hpp): 0/1 = port 0 receiveq/transmitq, 2/3 = control
// receiveq/transmitq, then port p >= 1 at 2p+2 / 2p+3. All 2 * (max_nr_ports + 1) exist with a
// non-zero size, since Linux creates every one at probe.
//
// Threads and locking. One mutex guards all device state, the ports' and the endpoint's too.
//  - I/O thread: queue_notify(), activate() and reset() (the transport runs them there, see
//    device.hpp), the backends' Listener callbacks, add_port(), remove_port(), resize(), and the
//    posted flush of emergency writes. Only this thread calls into backends and touches queues,
//    inside a dispatch that holds the lock; every build checks each queue and backend access
//    for it (thread_role.hpp).
//  - vCPU threads (transport lock held): ack_features(), read_config(), write_config(),
//    emergency writes. They never call a backend or touch a queue (they only change state under
//    the lock; backend interest is corrected on the next I/O-thread event); every build aborts
//    if one does. activate() and reset() keep that rule too (they only change state), so they
//    are correct on either thread.
//  - Backends may call their Listener synchronously from inside readv/writev/want_*/start (e.g.
//    on_host_connected(false) from a readv that saw the peer go away). Such re-entrant
//    callbacks are queued and handled when the outer call returns, still under the lock.
//  - Nothing blocks: backends are non-blocking, the lock is held only for bounded work: one
//    entry point takes at most 256 chains per queue (1 MiB on a receive path) and posts a
//    continuation for the rest (FlowWait::kYielded), and the chains held per queue never
//    exceed its size (Queue::pop refuses more: a guest re-posting a held head).
//  - stats() and port_stats() may be called from any thread.
//  - The PortEventObserver (set_observer) is called on the I/O thread, never under the device
//    lock: events are queued under the lock (also by activate()/reset()) and
//    delivered, in order, when the I/O-thread entry point that saw them (or the next one)
//    unlocks. It may call port_stats()/stats() and the runtime API.
// Construct and destroy the device while the I/O loop is not dispatching for it (before the
// machine starts, after it stops): the constructor starts the backends and the destructor stops
// them.
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "virtio/console/control.hpp"
#include "virtio/console/control_endpoint.hpp"
#include "virtio/console/device_link.hpp"
#include "virtio/console/types.hpp"
#include "virtio/device.hpp"
#include "virtio/virtio.hpp"
#include "vmm/event_loop.hpp"
#include "vmm/log.hpp"

namespace pier::virtio::console {

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

class ConsoleDevice final : public Device, private DeviceLink {
 public:
  // Validates `options` and every port (throws pier::Error with one actionable line: bad
  // max_ports, duplicate or invalid names, duplicate or out-of-range ids, more ports than
  // max_ports), then starts each backend on `loop` (its setup errors propagate).
  ConsoleDevice(EventLoop& loop, ConsoleOptions options, std::vector<PortConfig> ports);
  ~ConsoleDevice() override;
  ConsoleDevice(const ConsoleDevice&) = delete;
  ConsoleDevice& operator=(const ConsoleDevice&) = delete;

  // Queue numbering.
  static constexpr uint16_t kControlRxQueue = console::kControlRxQueue;
  static constexpr uint16_t kControlTxQueue = console::kControlTxQueue;
  static constexpr uint16_t rx_queue(uint32_t port) { return port_rx_queue(port); }
  static constexpr uint16_t tx_queue(uint32_t port) { return port_tx_queue(port); }

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
  struct Slot;
  class PortListener;
  class Dispatch;
  struct BackendEvent {
    enum class Kind : uint8_t { kConnected, kDisconnected, kReadable, kWritable };
    uint32_t id;
    uint64_t serial;
    Kind kind;
  };

  // ---- DeviceLink: what the ports and the control endpoint use (I/O thread, lock held).
  Queue* usable_queue(uint16_t index) override;
  void signal(Queue& queue) override;
  void continue_later(uint16_t index) override;
  void orphan_tx(Queue& queue) override;
  void note(const Port& port, PortEvent::Kind kind) override;
  Port* port(uint32_t id) override;
  void for_each_port(const std::function<void(Port&)>& fn) override;
  const Port* port(uint32_t id) const;

  // Called by a PortListener (I/O thread).
  void backend_event(const BackendEvent& event);
  void handle_backend_event(const BackendEvent& event);
  void drain_backend_events();

  uint32_t add_port_locked(PortConfig config);
  uint32_t pick_port_id(const PortConfig& config) const;
  bool console_semantics(const Port& p) const;
  // The body of queue_notify (lock held).
  void run_queue(uint16_t index);
  void host_changed(Port& p, bool connected);
  void flush_emergency();
  void teardown_port(Port& p);

  EventLoop& loop_;
  const ConsoleOptions options_;

  mutable std::mutex mutex_;
  // The thread inside a Dispatch (holding mutex_), so re-entrant backend callbacks are queued.
  std::atomic<std::thread::id> dispatch_owner_{};
  std::vector<BackendEvent> backend_events_;
  PortEventObserver observer_;          // set before the loop runs
  std::vector<PortEvent> port_events_;  // under mutex_, delivered unlocked

  PortShared port_shared_;   // before slots_: the ports use it
  std::vector<Slot> slots_;  // indexed by port id, max_ports long
  uint64_t next_serial_ = 1;

  // Transport state (set by activate, cleared by reset).
  std::span<Queue> queues_;
  Interrupt* interrupt_ = nullptr;
  bool active_ = false;
  uint64_t features_ = 0;
  bool multiport_ = false;

  ControlEndpoint control_;

  bool emergency_flush_posted_ = false;
  std::vector<uint8_t> continuation_posted_;  // per queue index: continue_later() is pending
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // for posted closures

  uint64_t emergency_bytes_ = 0;
  uint64_t orphan_tx_bytes_ = 0;

  // Log-once flags: one per kind of trouble, per device (the ports share theirs in
  // port_shared_, the control endpoint keeps its own).
  log::OnceFlag orphan_tx_logged_, emergency_drop_logged_;
};

}  // namespace pier::virtio::console
