#include "virtio/console/console_device.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cstring>

#include "vmm/error.hpp"

namespace pier::virtio::console {
namespace {

// Rx buffers gathered into one readv (Linux posts 4 KiB buffers: 64 KiB per syscall).
constexpr size_t kRxBatch = 16;
// Segments per readv/writev (well under IOV_MAX).
constexpr size_t kMaxIov = 64;
// Work per queue per run (one notification, one backend event or one continuation): at most
// this many chains, and on the receive path this many bytes. A guest that keeps advancing
// avail.idx, or a host peer that never stops sending, would otherwise keep the single I/O
// thread in one loop while the API, the other ports, the serial console and SIGTERM wait. The
// rest runs in a continuation posted behind the events waiting meanwhile (continue_later).
constexpr size_t kChainsPerRun = 256;
constexpr size_t kRxBytesPerRun = 1 << 20;

void check_queue_size(uint16_t size, const char* what) {
  if (size < 2 || !std::has_single_bit(size)) {
    throw Error(
        fmt::format("virtio-console: {} {} is not a power of two between 2 and 32768", what, size));
  }
}

ControlMessage message(uint32_t id, ControlEvent event, uint16_t value, uint64_t serial) {
  ControlMessage m;
  m.id = id;
  m.event = event;
  m.value = value;
  m.serial = serial;
  return m;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Internal types.

struct ConsoleDevice::Port {
  explicit Port(size_t ring_bytes) : ring(ring_bytes) {}

  struct HeldTx {
    Chain chain;
    size_t offset = 0;  // bytes of the chain's readable part already written to the backend
  };

  uint32_t id = 0;
  uint64_t serial = 0;  // this incarnation of the id (ids are reused after remove_port)
  std::string name;
  bool console = false;
  // The listener outlives the backend (members die in reverse order): the backend's destructor
  // stops it while the listener it was given still exists.
  std::unique_ptr<PortListener> listener;
  std::unique_ptr<chardev::PortBackend> backend;
  std::string backend_description;

  bool host_connected = false;
  // Guest-side state, reset with the driver.
  bool add_sent = false;         // PORT_ADD queued for this incarnation since activation
  bool ready = false;            // PORT_READY(1) received
  bool guest_connected = false;  // the guest has the port open (PORT_OPEN(1) from the guest)
  bool announced_host = false;   // host_connected as last queued to the guest
  // Backend interest as last requested; a false *_known forces the next request through
  // (at start, and after a connect event, when the backend may have reset its own).
  bool want_in = false, want_out = false, in_known = false, out_known = false;
  // What each direction waits for since the device's last pass over it (stats; see FlowWait).
  FlowWait rx_wait = FlowWait::kNoDriver, tx_wait = FlowWait::kNoDriver;
  uint16_t cols = 0, rows = 0;

  Fifo<HeldTx> tx_held;
  uint64_t tx_held_bytes = 0;  // unwritten bytes in tx_held
  OutputRing ring;

  uint64_t bytes_to_guest = 0, bytes_from_guest = 0, bytes_to_host = 0, bytes_discarded = 0,
           host_connects = 0;
};

// Per port id; outlives port incarnations because the guest keeps a port's queues (and the
// buffers in them) across PORT_REMOVE / PORT_ADD.
struct ConsoleDevice::Slot {
  Fifo<Chain> rx_held;  // rx buffers popped and not filled yet, in ring order
  std::unique_ptr<Port> port;
  // The incarnation whose PORT_READY was last taken: the port the guest driver has (0: none
  // known). Kept across resets, since a driver restored from hibernation keeps its ports.
  uint64_t guest_serial = 0;
};

class ConsoleDevice::PortListener final : public chardev::PortBackend::Listener {
 public:
  PortListener(ConsoleDevice& device, uint32_t id, uint64_t serial)
      : device_(device), id_(id), serial_(serial) {}
  void on_host_connected(bool connected) override {
    device_.backend_event(
        {id_, serial_,
         connected ? BackendEvent::Kind::kConnected : BackendEvent::Kind::kDisconnected});
  }
  void on_readable() override {
    device_.backend_event({id_, serial_, BackendEvent::Kind::kReadable});
  }
  void on_writable() override {
    device_.backend_event({id_, serial_, BackendEvent::Kind::kWritable});
  }

 private:
  ConsoleDevice& device_;
  uint32_t id_;
  uint64_t serial_;
};

// The lock for an I/O-thread entry point. Records the owning thread so backend callbacks made
// from inside our own backend calls are queued instead of deadlocking, and handles them before
// unlocking.
class ConsoleDevice::Dispatch {
 public:
  explicit Dispatch(ConsoleDevice& device) : device_(device), lock_(device.mutex_) {
    device_.dispatch_owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
  }
  ~Dispatch() {
    device_.drain_backend_events();
    device_.dispatch_owner_.store(std::thread::id{}, std::memory_order_relaxed);
    if (device_.port_events_.empty()) return;
    // Port events go to the observer unlocked (it may call back into the device).
    std::vector<PortEvent> events;
    events.swap(device_.port_events_);
    PortEventObserver observer = device_.observer_;
    lock_.unlock();
    if (observer) {
      for (const auto& e : events) observer(e);
    }
  }
  Dispatch(const Dispatch&) = delete;
  Dispatch& operator=(const Dispatch&) = delete;

 private:
  ConsoleDevice& device_;
  std::unique_lock<std::mutex> lock_;
};

// ---------------------------------------------------------------------------------------------
// Construction.

ConsoleDevice::ConsoleDevice(EventLoop& loop, ConsoleOptions options, std::vector<PortConfig> ports)
    : loop_(loop), options_(options) {
  if (options_.max_ports < 1 || options_.max_ports > kMaxPortsLimit) {
    throw Error(fmt::format("virtio-console: --max-ports {} is out of range (1..{})",
                            options_.max_ports, kMaxPortsLimit));
  }
  check_queue_size(options_.queue_size, "queue size");
  check_queue_size(options_.control_queue_size, "control queue size");
  if (ports.size() > options_.max_ports) {
    throw Error(
        fmt::format("virtio-console: {} ports configured but --max-ports is {}: raise "
                    "--max-ports (up to {})",
                    ports.size(), options_.max_ports, kMaxPortsLimit));
  }
  slots_.resize(options_.max_ports);
  continuation_posted_.assign(num_queues(), 0);
  scratch_iov_.reserve(kMaxIov);
  // Explicit ids first, so an automatic id never takes one that is asked for later.
  std::stable_partition(ports.begin(), ports.end(),
                        [](const PortConfig& c) { return c.id.has_value(); });
  Dispatch d(*this);
  for (auto& config : ports) add_port_locked(std::move(config));
}

ConsoleDevice::~ConsoleDevice() {
  std::lock_guard lock(mutex_);
  for (auto& slot : slots_) {
    if (slot.port) slot.port->backend->stop();
  }
}

uint32_t ConsoleDevice::add_port(PortConfig config) {
  Dispatch d(*this);
  return add_port_locked(std::move(config));
}

uint32_t ConsoleDevice::add_port_locked(PortConfig config) {
  if (!config.backend) throw Error("virtio-console: a port needs a backend");
  if (!config.name.empty()) {
    if (auto error = port_name_error(config.name)) throw Error("virtio-console: " + *error);
    for (const auto& slot : slots_) {
      if (slot.port && slot.port->name == config.name) {
        throw Error(fmt::format("virtio-console: duplicate port name '{}' (already port {})",
                                config.name, slot.port->id));
      }
    }
  }
  uint32_t id = 0;
  if (config.id) {
    id = *config.id;
    if (id >= options_.max_ports) {
      throw Error(
          fmt::format("virtio-console: port id {} is out of range: --max-ports is {} "
                      "(ids 0..{})",
                      id, options_.max_ports, options_.max_ports - 1));
    }
    if (slots_[id].port) throw Error(fmt::format("virtio-console: port id {} is in use", id));
  } else {
    while (id < options_.max_ports && slots_[id].port) ++id;
    if (id == options_.max_ports) {
      throw Error(
          fmt::format("virtio-console: all {} port ids are in use: raise --max-ports "
                      "(up to {})",
                      options_.max_ports, kMaxPortsLimit));
    }
  }

  auto p = std::make_unique<Port>(options_.console_ring_bytes);
  p->id = id;
  p->serial = next_serial_++;
  p->name = std::move(config.name);
  p->console = config.console;
  p->backend = std::move(config.backend);
  p->listener = std::make_unique<PortListener>(*this, id, p->serial);
  p->backend->start(loop_, *p->listener);  // setup errors propagate; nothing was added yet
  p->host_connected = p->backend->host_connected();
  p->backend_description = p->backend->describe();

  Port& port = *p;
  slots_[id].port = std::move(p);
  log::debug("virtio-console: port {}{}{} on {}", id, port.console ? " (console)" : "",
             port.name.empty() ? "" : " '" + port.name + "'", port.backend_description);

  note(port, PortEvent::Kind::kAdded);
  if (active_ && !multiport_ && id == 0) {
    // A driver without MULTIPORT uses port 0 as its console from the start.
    port.ready = true;
    set_guest_connected(port, true);
  }
  if (active_ && multiport_ && driver_ready_) {
    queue_port_add(port);
    deliver_control();
  }
  return id;
}

void ConsoleDevice::remove_port(uint32_t id) {
  Dispatch d(*this);
  Port* p = port(id);
  if (p == nullptr) throw Error(fmt::format("virtio-console: there is no port {}", id));
  teardown_port(*p);
  note(*p, PortEvent::Kind::kRemoved);
  slots_[id].port.reset();  // queued backend events for it are ignored (serial check)
}

// ---------------------------------------------------------------------------------------------
// Port events for the observer.

std::string_view to_string(PortEvent::Kind kind) {
  switch (kind) {
    case PortEvent::Kind::kAdded:
      return "port-added";
    case PortEvent::Kind::kRemoved:
      return "port-removed";
    case PortEvent::Kind::kGuestOpened:
      return "guest-opened";
    case PortEvent::Kind::kGuestClosed:
      return "guest-closed";
    case PortEvent::Kind::kHostConnected:
      return "host-connected";
    case PortEvent::Kind::kHostDisconnected:
      return "host-disconnected";
  }
  return "?";
}

std::string_view to_string(FlowWait wait) {
  switch (wait) {
    case FlowWait::kMoving:
      return "moving";
    case FlowWait::kBackendNotReadable:
      return "backend_not_readable";
    case FlowWait::kNoGuestBuffers:
      return "no_guest_buffers";
    case FlowWait::kBackendNotWritable:
      return "backend_not_writable";
    case FlowWait::kGuestClosed:
      return "guest_closed";
    case FlowWait::kHostDisconnected:
      return "host_disconnected";
    case FlowWait::kNoDriver:
      return "no_driver";
    case FlowWait::kYielded:
      return "yielded";
  }
  return "?";
}

void ConsoleDevice::set_observer(PortEventObserver observer) {
  std::lock_guard lock(mutex_);
  observer_ = std::move(observer);
}

void ConsoleDevice::note(const Port& p, PortEvent::Kind kind) {
  if (observer_) port_events_.push_back({kind, p.id, p.name});
}

void ConsoleDevice::set_guest_connected(Port& p, bool open) {
  if (p.guest_connected == open) return;
  p.guest_connected = open;
  note(p, open ? PortEvent::Kind::kGuestOpened : PortEvent::Kind::kGuestClosed);
}

void ConsoleDevice::teardown_port(Port& p) {
  flush_out(p);  // one last non-blocking attempt for what the guest already handed over
  const uint64_t lost = p.ring.size() + p.tx_held_bytes;
  if (lost > 0) {
    p.bytes_discarded += lost;
    if (discard_logged_.first()) {
      log::warn(
          "virtio-console: port {} removed with {} bytes from the guest not yet written "
          "to {}; they are discarded",
          p.id, lost, p.backend_description);
    }
  }
  p.ring.clear();
  // Complete the held tx chains so the guest gets its buffers back (Linux frees buffers of an
  // unplugged port as they come back).
  Queue* q = active_ ? ready_queue(tx_queue(p.id)) : nullptr;
  bool pushed = false;
  while (!p.tx_held.empty()) {
    auto held = p.tx_held.pop_front();
    if (q != nullptr) pushed |= q->push(std::move(held.chain), 0);
  }
  p.tx_held_bytes = 0;
  if (pushed) signal(*q);
  // The queues go back to kick-driven work (orphan transmit, rx buffers kept for a later port).
  if (q != nullptr && !q->notification_enabled() && q->enable_notification()) orphan_tx(*q);
  if (Queue* rq = active_ ? ready_queue(rx_queue(p.id)) : nullptr;
      rq != nullptr && !rq->notification_enabled()) {
    (void)rq->enable_notification();
  }

  const bool add_was_pending = withdraw_messages(p.serial);
  if (active_ && multiport_ && p.add_sent && !add_was_pending) {
    queue_control(message(p.id, ControlEvent::kPortRemove, 1, p.serial));
  }
  deliver_control();
  p.backend->stop();
}

// ---------------------------------------------------------------------------------------------
// virtio::Device.

uint64_t ConsoleDevice::device_features() const {
  return kQueueFeatures | kFeatureSize | kFeatureMultiport | kFeatureEmergWrite;
}

bool ConsoleDevice::ack_features(uint64_t driver_features) {
  std::lock_guard lock(mutex_);
  features_ = driver_features;
  return true;
}

uint16_t ConsoleDevice::queue_max_size(size_t index) const {
  return index == kControlRxQueue || index == kControlTxQueue ? options_.control_queue_size
                                                              : options_.queue_size;
}

void ConsoleDevice::read_config(uint64_t offset, std::span<uint8_t> out) {
  std::array<uint8_t, 12> config{};
  {
    std::lock_guard lock(mutex_);
    if (const Port* p = port(0)) {
      std::memcpy(&config[0], &p->cols, 2);
      std::memcpy(&config[2], &p->rows, 2);
    }
  }
  const uint32_t max = options_.max_ports;
  std::memcpy(&config[4], &max, 4);
  // emerg_wr (8..11) reads as 0.
  read_config_bytes(config, offset, out);
}

void ConsoleDevice::write_config(uint64_t offset, std::span<const uint8_t> in) {
  // Only emerg_wr is writable; its low byte is the character. cols, rows and max_nr_ports are
  // read-only: writes to them are ignored.
  constexpr uint64_t kEmergWr = 8;
  if (in.empty() || offset > kEmergWr || offset + in.size() <= kEmergWr) return;
  const uint8_t byte = in[kEmergWr - offset];
  std::lock_guard lock(mutex_);
  ++stats_.emergency_bytes;
  Port* p = port(0);
  if (p == nullptr) {
    if (emergency_drop_logged_.first()) {
      log::warn("virtio-console: emergency write with no port 0; dropped");
    }
    return;
  }
  ring_push(*p, std::span(&byte, 1));
  // vCPU thread: backends belong to the I/O thread, which flushes the ring.
  if (!emergency_flush_posted_) {
    emergency_flush_posted_ = true;
    loop_.post([this, alive = std::weak_ptr<int>(alive_)] {
      if (!alive.expired()) flush_emergency();
    });
  }
}

void ConsoleDevice::flush_emergency() {
  Dispatch d(*this);
  emergency_flush_posted_ = false;
  if (Port* p = port(0)) flush_out(*p);
}

void ConsoleDevice::activate(std::span<Queue> queues, Interrupt& interrupt) {
  std::lock_guard lock(mutex_);
  queues_ = queues;
  interrupt_ = &interrupt;
  active_ = true;
  multiport_ = (features_ & kFeatureMultiport) != 0;
  driver_ready_ = false;
  stats_.driver_ready = false;
  control_pending_.clear();
  for (auto& slot : slots_) {
    if (!slot.port) continue;
    drop_guest_state(*slot.port);
    if (!multiport_ && slot.port->id == 0) {
      slot.port->ready = true;
      set_guest_connected(*slot.port, true);
    }
  }
  // Backend interest is brought in line by the next I/O-thread event (rx buffers arriving).
}

void ConsoleDevice::reset() {
  std::lock_guard lock(mutex_);
  active_ = false;
  queues_ = {};
  interrupt_ = nullptr;
  multiport_ = false;
  driver_ready_ = false;
  stats_.driver_ready = false;
  control_pending_.clear();
  control_rx_unusable_.clear();
  for (auto& slot : slots_) {
    slot.rx_held.clear();  // back to the driver with the queue reset
    if (slot.port) drop_guest_state(*slot.port);
  }
}

void ConsoleDevice::drop_guest_state(Port& p) {
  set_guest_connected(p, false);
  p.add_sent = p.ready = p.announced_host = false;
  // Both directions restart from the driver's kicks after its next DRIVER_OK.
  p.rx_wait = p.tx_wait = FlowWait::kNoDriver;
  if (p.tx_held_bytes > 0) {
    // The driver went away (reset) with bytes of a write() still held: its buffers are gone.
    p.bytes_discarded += p.tx_held_bytes;
    if (discard_logged_.first()) {
      log::warn(
          "virtio-console: device reset with {} bytes of port {} not yet written; "
          "discarded",
          p.tx_held_bytes, p.id);
    }
  }
  p.tx_held.clear();
  p.tx_held_bytes = 0;
}

void ConsoleDevice::queue_notify(uint16_t index) {
  Dispatch d(*this);
  run_queue(index);
}

void ConsoleDevice::continue_later(uint16_t index) {
  if (index >= continuation_posted_.size() || continuation_posted_[index]) return;
  continuation_posted_[index] = 1;
  loop_.post([this, index, alive = std::weak_ptr<int>(alive_)] {
    if (alive.expired()) return;
    Dispatch d(*this);
    continuation_posted_[index] = 0;
    run_queue(index);  // after a reset in between: a spurious notification, which is harmless
  });
}

void ConsoleDevice::run_queue(uint16_t index) {
  if (!active_) return;
  if (index == kControlRxQueue) {
    if (multiport_) deliver_control();
    return;
  }
  if (index == kControlTxQueue) {
    if (multiport_) control_tx();
    return;
  }
  const uint32_t id = index < 2 ? 0 : index / 2 - 1;
  if (id >= options_.max_ports || (!multiport_ && id != 0)) return;
  Port* p = port(id);
  if ((index & 1) == 0) {
    if (p != nullptr) pump_rx(*p);  // a port-less rx queue keeps its buffers for a later port
    return;
  }
  Queue* q = ready_queue(index);
  if (q == nullptr) return;
  if (p == nullptr || !p->ready) {
    // No port, or one the guest has not taken yet (no PORT_READY): the bytes belong to a removed
    // incarnation of this id - possibly an hvc console that spins on them - so they are completed
    // at once and discarded. (Linux cannot write to a port before its PORT_READY: writes wait
    // for our PORT_OPEN(1), which follows it.)
    orphan_tx(*q);
  } else if (console_semantics(*p)) {
    console_tx(*p, *q);
  } else {
    generic_tx(*p, *q);
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

ConsoleDevice::Port* ConsoleDevice::port(uint32_t id) {
  return id < slots_.size() ? slots_[id].port.get() : nullptr;
}
const ConsoleDevice::Port* ConsoleDevice::port(uint32_t id) const {
  return id < slots_.size() ? slots_[id].port.get() : nullptr;
}

Queue* ConsoleDevice::ready_queue(uint16_t index) {
  if (index >= queues_.size()) return nullptr;
  Queue& q = queues_[index];
  return q.ready() && !q.failed() ? &q : nullptr;
}

bool ConsoleDevice::console_semantics(const Port& p) const {
  // Without MULTIPORT, port 0 is the driver's hvc console whatever it was configured as.
  return p.console || !multiport_;
}

void ConsoleDevice::signal(Queue& q) {
  if (interrupt_ != nullptr && q.should_interrupt()) interrupt_->signal_queue(q.index());
}

void ConsoleDevice::set_want_input(Port& p, bool on) {
  if (p.in_known && p.want_in == on) return;
  p.want_in = on;
  p.in_known = true;
  p.backend->want_input(on);
}

void ConsoleDevice::set_want_output(Port& p, bool on) {
  if (p.out_known && p.want_out == on) return;
  p.want_out = on;
  p.out_known = true;
  p.backend->want_output(on);
}

// ---------------------------------------------------------------------------------------------
// Backend events.

void ConsoleDevice::backend_event(const BackendEvent& event) {
  if (dispatch_owner_.load(std::memory_order_relaxed) == std::this_thread::get_id()) {
    backend_events_.push_back(event);  // from inside one of our own backend calls
    return;
  }
  Dispatch d(*this);
  backend_events_.push_back(event);
}

void ConsoleDevice::drain_backend_events() {
  // Handling an event may queue more (re-entrant callbacks): index, don't iterate.
  for (size_t i = 0; i < backend_events_.size(); ++i) {
    const BackendEvent event = backend_events_[i];
    handle_backend_event(event);
  }
  backend_events_.clear();
}

void ConsoleDevice::handle_backend_event(const BackendEvent& event) {
  Port* p = port(event.id);
  if (p == nullptr || p->serial != event.serial) return;  // a removed port's late event
  switch (event.kind) {
    case BackendEvent::Kind::kConnected:
      host_changed(*p, true);
      break;
    case BackendEvent::Kind::kDisconnected:
      host_changed(*p, false);
      break;
    case BackendEvent::Kind::kReadable:
      pump_rx(*p);
      break;
    case BackendEvent::Kind::kWritable:
      flush_out(*p);
      break;
  }
}

void ConsoleDevice::host_changed(Port& p, bool connected) {
  if (connected && !p.host_connected) ++p.host_connects;
  if (connected != p.host_connected) {
    note(p, connected ? PortEvent::Kind::kHostConnected : PortEvent::Kind::kHostDisconnected);
  }
  p.host_connected = connected;
  p.backend_description = p.backend->describe();
  log::debug("virtio-console: port {}: host {}", p.id, connected ? "connected" : "disconnected");
  p.in_known = p.out_known = false;  // a new peer starts with the backend's default interest
  flush_out(p);                      // ring replay, then held chains, in order
  pump_rx(p);
  sync_host_open(p);
  deliver_control();
}

// ---------------------------------------------------------------------------------------------
// Host -> guest.

// Every return below stops this direction and records (rx_wait) the one event that calls
// pump_rx again: no stop relies on a timer or on another direction's traffic.
void ConsoleDevice::pump_rx(Port& p) {
  Slot& slot = slots_[p.id];
  Queue* q = active_ ? ready_queue(rx_queue(p.id)) : nullptr;
  // Linux discards data for a port the guest has not opened (console ports count as open once
  // the hvc is up), so nothing is read from the backend until then. Restarted by the missing
  // piece: the driver's kick on this queue after DRIVER_OK (queue_notify), the guest's
  // PORT_OPEN(1) (handle_driver_message), the peer's on_host_connected(true) (host_changed).
  if (q == nullptr || !p.guest_connected || !p.host_connected) {
    p.rx_wait = q == nullptr         ? FlowWait::kNoDriver
                : !p.guest_connected ? FlowWait::kGuestClosed
                                     : FlowWait::kHostDisconnected;
    set_want_input(p, false);
    return;
  }
  bool pushed = false;
  size_t moved = 0;  // this run's bytes, for kRxBytesPerRun
  for (;;) {
    if (moved >= kRxBytesPerRun) {
      // Budget spent with the backend still readable: the continuation restarts it.
      p.rx_wait = FlowWait::kYielded;
      set_want_input(p, false);
      continue_later(rx_queue(p.id));
      break;
    }
    while (slot.rx_held.size() < kRxBatch) {
      // While it holds buffers the device is woken by the backend (EPOLLIN) and tops up from
      // the ring then, so the driver need not kick: each kick is an exit (on kvm_pvm it costs
      // the vCPU 0.1-1 ms). Only a device left without buffers asks for one (below).
      if (!slot.rx_held.empty() && q->notification_enabled()) q->disable_notification();
      auto chain = q->pop();
      if (!chain) break;
      if (chain->writable_length() == 0) {
        if (empty_rx_logged_.first()) {
          log::warn(
              "virtio-console: port {}: receive buffer with no writable bytes; returned "
              "empty",
              p.id);
        }
        pushed |= q->push(std::move(*chain), 0);
        continue;
      }
      slot.rx_held.emplace_back() = std::move(*chain);
    }
    if (slot.rx_held.empty()) {
      // Out of buffers: ask for a kick, re-checking the ring for buffers that came meanwhile.
      if (!q->notification_enabled() && q->enable_notification()) continue;
      // Stop popping and reading: no guest buffers, backpressure on the host writer.
      // Notifications are on and armed at the ring's end (the empty pop or enable_notification
      // re-checked the ring after arming), so the driver's next buffer kicks: queue_notify.
      p.rx_wait = FlowWait::kNoGuestBuffers;
      set_want_input(p, false);
      break;
    }
    scratch_iov_.clear();
    size_t room = 0;
    for (size_t i = 0; i < slot.rx_held.size() && scratch_iov_.size() < kMaxIov; ++i) {
      for (const iovec& v : slot.rx_held.at(i).writable()) {
        if (scratch_iov_.size() == kMaxIov) break;
        scratch_iov_.push_back(v);
        room += v.iov_len;
      }
    }
    const ssize_t n = p.backend->readv(scratch_iov_);
    if (n <= 0) {
      // 0: the backend has nothing now. Stop with buffers held and rx notifications off:
      //    on_readable (want_input(true), level-triggered) restarts it and tops the buffers up
      //    from the ring then, so the driver need not kick.
      // -1: the peer left; its on_host_connected(false) follows, and the next peer's
      //    on_host_connected(true) restarts it (host_changed).
      p.rx_wait = n == 0 ? FlowWait::kBackendNotReadable : FlowWait::kHostDisconnected;
      set_want_input(p, n == 0);
      break;
    }
    size_t left = static_cast<size_t>(n);
    p.bytes_to_guest += left;
    moved += left;
    while (left > 0) {
      Chain& front = slot.rx_held.front();
      const size_t take = std::min(left, front.writable_length());
      pushed |= q->push(std::move(front), static_cast<uint32_t>(take));
      slot.rx_held.discard_front();
      left -= take;
    }
    if (static_cast<size_t>(n) < room) {
      // Drained the backend for now: as for readv() == 0, on_readable restarts it.
      p.rx_wait = FlowWait::kBackendNotReadable;
      set_want_input(p, true);
      break;
    }
  }
  if (pushed) signal(*q);
}

// ---------------------------------------------------------------------------------------------
// Guest -> host.

void ConsoleDevice::console_tx(Port& p, Queue& q) {
  bool pushed = false;
  size_t chains = 0;
  while (chains < kChainsPerRun) {
    auto chain = q.pop();
    if (!chain) break;
    ++chains;
    const size_t len = chain->readable_length();
    p.bytes_from_guest += len;
    size_t done = 0;
    if (p.ring.empty() && p.host_connected && len > 0) {
      const ssize_t n = p.backend->writev(chain->readable());
      if (n > 0) {
        done = static_cast<size_t>(n);
        p.bytes_to_host += done;
      }
    }
    // What the backend did not take goes to the ring; only its last `capacity` bytes can
    // survive, so a huge chain is not copied in full.
    if (len - done > p.ring.capacity()) {
      const size_t skip = len - done - p.ring.capacity();
      p.ring.count_dropped(skip);
      log_ring_drop(p);
      done += skip;
    }
    std::array<uint8_t, 4096> buf;
    while (done < len) {
      const size_t k = chain->copy_from(done, buf);
      if (k == 0) break;
      ring_push(p, std::span(buf.data(), k));
      done += k;
    }
    // At once: hvc's put_chars() spins until the buffer is used.
    pushed |= q.push(std::move(*chain), 0);
  }
  if (pushed) signal(q);
  // Console tx never holds the guest; output the backend did not take waits in the ring for
  // on_writable (or for the next peer's on_host_connected(true)), which call flush_out.
  if (!p.ring.empty()) {
    p.tx_wait = p.host_connected ? FlowWait::kBackendNotWritable : FlowWait::kHostDisconnected;
    set_want_output(p, p.host_connected);
  } else {
    p.tx_wait = FlowWait::kMoving;
  }
  if (chains == kChainsPerRun) {
    // The rest after the events that waited meanwhile.
    continue_later(q.index());
    if (p.ring.empty()) p.tx_wait = FlowWait::kYielded;
  }
}

void ConsoleDevice::ring_push(Port& p, std::span<const uint8_t> bytes) {
  if (p.ring.push(bytes) > 0) log_ring_drop(p);
}

void ConsoleDevice::log_ring_drop(const Port& p) {
  if (ring_drop_logged_.first()) {
    log::warn(
        "virtio-console: port {}: console output ring ({} bytes) full with nobody reading "
        "{}; dropping the oldest output (counted in the port's console_bytes_dropped)",
        p.id, p.ring.capacity(), p.backend_description);
  }
}

void ConsoleDevice::generic_tx(Port& p, Queue& q) {
  take_tx(p, q);
  flush_out(p);
}

void ConsoleDevice::take_tx(Port& p, Queue& q) {
  bool pushed = false;
  while (auto chain = q.pop()) {
    const size_t len = chain->readable_length();
    if (len == 0) {
      pushed |= q.push(std::move(*chain), 0);  // nothing to write (Linux never sends these)
      continue;
    }
    p.bytes_from_guest += len;
    p.tx_held_bytes += len;
    Port::HeldTx& held = p.tx_held.emplace_back();
    held.chain = std::move(*chain);
    held.offset = 0;
  }
  if (pushed) signal(q);
}

void ConsoleDevice::orphan_tx(Queue& q) {
  // Transmit buffers on the queue of a port that does not exist (removed while the guest was
  // writing, or never configured) or that the guest has not taken yet: completed so the guest
  // can free them (or stop spinning), bytes discarded.
  bool pushed = false;
  size_t chains = 0;
  while (chains < kChainsPerRun) {
    auto chain = q.pop();
    if (!chain) break;
    ++chains;
    stats_.orphan_tx_bytes += chain->readable_length();
    if (orphan_tx_logged_.first()) {
      log::warn(
          "virtio-console: transmit on queue {}, which has no port the guest knows; "
          "discarded",
          q.index());
    }
    pushed |= q.push(std::move(*chain), 0);
  }
  if (pushed) signal(q);
  if (chains == kChainsPerRun) continue_later(q.index());
}

// Every return below records (tx_wait) the one event that calls flush_out again.
void ConsoleDevice::flush_out(Port& p) {
  if (!p.host_connected) {
    // Kept for the next peer: its on_host_connected(true) restarts this (host_changed), and
    // takes the chains the driver added meanwhile if notifications were off.
    p.tx_wait = FlowWait::kHostDisconnected;
    set_want_output(p, false);
    return;
  }
  bool blocked = false;
  // Ring first (console output and emergency writes, older than anything held).
  while (!p.ring.empty()) {
    std::array<iovec, 2> iov;
    const size_t k = p.ring.peek(iov);
    const ssize_t n = p.backend->writev(std::span(iov.data(), k));
    if (n < 0) {
      // The peer left; its disconnect event follows and the next connect restarts this.
      p.tx_wait = FlowWait::kHostDisconnected;
      set_want_output(p, false);
      return;
    }
    if (n == 0) {
      blocked = true;
      break;
    }
    p.ring.consume(static_cast<size_t>(n));
    p.bytes_to_host += static_cast<size_t>(n);
  }
  Queue* q = active_ ? ready_queue(tx_queue(p.id)) : nullptr;
  // Transmit notifications are off while the backend is full (below): the chains the driver
  // added meanwhile are taken here, on the backend's wakeup.
  if (q != nullptr && !q->notification_enabled()) take_tx(p, *q);
  bool pushed = false;
  bool gone = false;
  while (!blocked && q != nullptr && !p.tx_held.empty()) {
    // Gather the held chains (from their offsets) into one writev.
    scratch_iov_.clear();
    size_t offered = 0;
    for (size_t i = 0; i < p.tx_held.size() && scratch_iov_.size() < kMaxIov; ++i) {
      const auto& held = p.tx_held.at(i);
      size_t skip = held.offset;  // bytes of this chain already written
      for (const iovec& v : held.chain.readable()) {
        if (scratch_iov_.size() == kMaxIov) break;
        if (skip >= v.iov_len) {
          skip -= v.iov_len;
          continue;
        }
        scratch_iov_.push_back({static_cast<uint8_t*>(v.iov_base) + skip, v.iov_len - skip});
        offered += v.iov_len - skip;
        skip = 0;
      }
    }
    const ssize_t n = p.backend->writev(scratch_iov_);
    if (n < 0) {
      gone = true;  // the peer left: the chains wait for the next one
      break;
    }
    size_t left = static_cast<size_t>(n);
    p.bytes_to_host += left;
    p.tx_held_bytes -= left;
    while (left > 0) {
      auto& held = p.tx_held.front();
      const size_t rest = held.chain.readable_length() - held.offset;
      if (left < rest) {
        held.offset += left;
        break;
      }
      left -= rest;
      // Every byte of it reached the backend: only now does the guest get the buffer back.
      pushed |= q->push(std::move(held.chain), 0);
      p.tx_held.discard_front();
    }
    if (static_cast<size_t>(n) < offered) blocked = true;  // full: wait for on_writable
  }
  if (pushed) signal(*q);
  // Stop points: backend full -> on_writable (want_output(true), level-triggered); peer gone ->
  // the next peer's on_host_connected(true); no queue -> the driver's kick after DRIVER_OK.
  p.tx_wait = blocked                              ? FlowWait::kBackendNotWritable
              : gone                               ? FlowWait::kHostDisconnected
              : q == nullptr && !p.tx_held.empty() ? FlowWait::kNoDriver
                                                   : FlowWait::kMoving;
  set_want_output(p, blocked);
  if (q == nullptr) return;
  if (blocked && !p.tx_held.empty()) {
    // Stop popping the transmit queue: on_writable wakes the device, which then takes what the
    // driver added (take_tx above): no kick is needed meanwhile (each is an exit; on kvm_pvm
    // it costs the vCPU 0.1-1 ms). With EVENT_IDX avail_event stays where it was.
    if (q->notification_enabled()) q->disable_notification();
  } else if (!blocked && p.tx_held.empty() && !q->notification_enabled() &&
             q->enable_notification()) {
    // All written and kicks asked for again, but chains came while they were off. Once more
    // (notifications are on now, so this recurses at most once).
    generic_tx(p, *q);
  }
}

// ---------------------------------------------------------------------------------------------
// Control queues.

void ConsoleDevice::control_tx() {
  Queue* q = ready_queue(kControlTxQueue);
  if (q == nullptr) return;
  bool pushed = false;
  size_t chains = 0;
  while (chains < kChainsPerRun) {
    auto chain = q->pop();
    if (!chain) break;
    ++chains;
    std::array<uint8_t, kControlHeaderSize> bytes{};
    const size_t n = chain->copy_from(0, bytes);
    // At once, before acting on it: __send_control_msg() spins until the buffer is used.
    pushed |= q->push(std::move(*chain), 0);
    ++stats_.control_received;
    handle_driver_message(std::span(bytes.data(), n));
  }
  if (pushed) signal(*q);
  if (chains == kChainsPerRun) continue_later(kControlTxQueue);
  deliver_control();
}

void ConsoleDevice::handle_driver_message(std::span<const uint8_t> bytes) {
  const ParseResult r = parse_driver_message(bytes, options_.max_ports);
  if (r.error != ControlError::kOk) {
    ++stats_.control_ignored;
    if (parse_logged_[static_cast<size_t>(r.error)].first()) {
      log::warn(
          "virtio-console: ignoring control message (id {}, event {}, value {}, {} "
          "bytes): {}",
          r.header.id, r.header.event, r.header.value, bytes.size(), to_string(r.error));
    }
    return;
  }
  const DriverMessage& m = r.message;
  if (m.event == ControlEvent::kDeviceReady) {
    if (!m.value) {
      ++stats_.control_ignored;
      if (device_ready_fail_logged_.first()) {
        log::warn("virtio-console: the guest driver failed to set up (DEVICE_READY 0)");
      }
      return;
    }
    if (driver_ready_) {
      ++stats_.control_ignored;
      if (device_ready_dup_logged_.first()) {
        log::warn("virtio-console: repeated DEVICE_READY ignored");
      }
      return;
    }
    driver_ready_ = stats_.driver_ready = true;
    // PORT_ADD for every port, port 0 included, in id order.
    for (auto& slot : slots_) {
      if (slot.port) queue_port_add(*slot.port);
    }
    return;
  }

  Port* p = port(m.id);
  if (p == nullptr) {
    // Also a legitimate race: the guest closing a port the host just removed.
    ++stats_.control_ignored;
    if (unknown_port_logged_.first()) {
      log::warn("virtio-console: {} for port {}, which does not exist; ignored", to_string(m.event),
                m.id);
    }
    return;
  }
  if (m.event == ControlEvent::kPortReady) {
    if (!m.value) {
      p->ready = false;
      set_guest_connected(*p, false);
      // Its transmit chains are completed as orphans from now on, which needs kicks.
      Queue* q = ready_queue(tx_queue(p->id));
      if (q != nullptr && !q->notification_enabled() && q->enable_notification()) orphan_tx(*q);
      if (port_ready_fail_logged_.first()) {
        log::warn("virtio-console: the guest failed to add port {} (PORT_READY 0)", m.id);
      }
      return;
    }
    // The guest cannot have this incarnation before its PORT_ADD reached it, nor while the
    // PORT_REMOVE of an earlier incarnation of the id is still on its way: a PORT_READY then
    // answers the old port (or is forged). Taking it would hand the queues to the new port
    // while the guest may still write to them as the old one - as a spinning hvc console.
    for (const auto& pending : control_pending_) {
      if (pending.id == m.id &&
          (pending.event == ControlEvent::kPortAdd || pending.event == ControlEvent::kPortRemove)) {
        ++stats_.control_ignored;
        if (early_ready_logged_.first()) {
          log::warn(
              "virtio-console: PORT_READY for port {} before its PORT_ADD reached the "
              "guest; ignored",
              m.id);
        }
        return;
      }
    }
    Slot& slot = slots_[m.id];
    if (!p->add_sent && slot.guest_serial != 0 && slot.guest_serial != p->serial) {
      // A PORT_READY without our PORT_ADD since the reset: a driver restored from hibernation
      // re-announcing the ports it kept - but it kept an earlier incarnation of this id (the
      // host replaced the port meanwhile, possibly a console by a generic port). Make it drop
      // that one and take the new one; until it answers, this port's tx is completed as
      // orphaned, so an old hvc never waits on the new port.
      log::debug(
          "virtio-console: port {}: the restored driver has an earlier port with this "
          "id; PORT_REMOVE and PORT_ADD",
          m.id);
      queue_control(message(m.id, ControlEvent::kPortRemove, 1, slot.guest_serial));
      queue_port_add(*p);
      deliver_control();
      return;
    }
    answer_port_ready(*p);
    if (p->ready) slot.guest_serial = p->serial;
    return;
  }
  // PORT_OPEN from the guest: it opened (1) or closed (0) the port.
  if (!p->ready) {
    ++stats_.control_ignored;
    if (not_ready_logged_.first()) {
      log::warn("virtio-console: PORT_OPEN for port {} before its PORT_READY; ignored", m.id);
    }
    return;
  }
  if (p->guest_connected == m.value) return;
  set_guest_connected(*p, m.value);
  log::debug("virtio-console: port {}: guest {}", p->id, m.value ? "opened" : "closed");
  pump_rx(*p);  // open: deliver what the host has been holding; close: stop reading
}

void ConsoleDevice::answer_port_ready(Port& p) {
  // The guest (re)created its port: not open, host disconnected until told otherwise. Linux
  // sends PORT_READY once per PORT_ADD, and again for every port after a restore from
  // hibernation; a guest repeating it while an earlier answer is undelivered gets nothing more
  // (that keeps the control queue bounded).
  for (const auto& m : control_pending_) {
    if (m.serial == p.serial && m.event != ControlEvent::kPortAdd &&
        m.event != ControlEvent::kPortRemove) {
      ++stats_.control_ignored;
      return;
    }
  }
  p.ready = true;
  p.add_sent = true;  // the guest has it (after a restore, without a PORT_ADD from us)
  set_guest_connected(p, false);
  // QEMU's order: CONSOLE_PORT, PORT_NAME, PORT_OPEN; then the size, which Linux only applies
  // once the port is a console.
  if (p.console) {
    queue_control(message(p.id, ControlEvent::kConsolePort, 1, p.serial));
  }
  if (!p.name.empty()) {
    ControlMessage m = message(p.id, ControlEvent::kPortName, 1, p.serial);
    m.name = p.name;
    queue_control(std::move(m));
  }
  p.announced_host = p.host_connected;
  if (p.host_connected) {
    queue_control(message(p.id, ControlEvent::kPortOpen, 1, p.serial));
  }
  if (p.console && (p.cols != 0 || p.rows != 0)) queue_resize(p);
  pump_rx(p);  // not open yet: makes sure nothing is read for it
}

void ConsoleDevice::sync_host_open(Port& p) {
  // Before PORT_READY the answer to it carries the state; without MULTIPORT there is no
  // control queue.
  if (!active_ || !multiport_ || !p.ready || p.announced_host == p.host_connected) return;
  // An undelivered PORT_OPEN for this port says the opposite of the new state: withdraw it
  // instead of sending a second one (the guest ends in the same state, the queue stays
  // bounded).
  for (auto it = control_pending_.begin(); it != control_pending_.end(); ++it) {
    if (it->serial == p.serial && it->event == ControlEvent::kPortOpen) {
      control_pending_.erase(it);
      p.announced_host = p.host_connected;
      return;
    }
  }
  queue_control(message(p.id, ControlEvent::kPortOpen,
                        static_cast<uint16_t>(p.host_connected ? 1 : 0), p.serial));
  p.announced_host = p.host_connected;
}

void ConsoleDevice::queue_resize(Port& p) {
  // Linux applies RESIZE only to a console port and only with F_SIZE negotiated.
  if (!active_ || !multiport_ || !p.ready || !p.console || (features_ & kFeatureSize) == 0) {
    return;
  }
  for (auto& m : control_pending_) {
    if (m.serial == p.serial && m.event == ControlEvent::kResize) {
      m.cols = p.cols;  // the newest size replaces an undelivered one
      m.rows = p.rows;
      return;
    }
  }
  ControlMessage m = message(p.id, ControlEvent::kResize, 0, p.serial);
  m.cols = p.cols;
  m.rows = p.rows;
  queue_control(std::move(m));
}

void ConsoleDevice::queue_port_add(Port& p) {
  p.add_sent = true;
  queue_control(message(p.id, ControlEvent::kPortAdd, 1, p.serial));
}

void ConsoleDevice::queue_control(ControlMessage message) {
  control_pending_.push_back(std::move(message));
}

bool ConsoleDevice::withdraw_messages(uint64_t serial) {
  bool add_was_pending = false;
  std::erase_if(control_pending_, [&](const ControlMessage& m) {
    if (m.serial != serial) return false;
    add_was_pending |= m.event == ControlEvent::kPortAdd;
    return true;
  });
  return add_was_pending;
}

void ConsoleDevice::deliver_control() {
  if (control_pending_.empty() || !active_ || !multiport_) return;
  Queue* q = ready_queue(kControlRxQueue);
  if (q == nullptr) return;
  bool pushed = false;
  while (!control_pending_.empty()) {
    auto chain = q->pop();
    if (!chain) break;  // the guest refills control-rx from a workqueue: wait for its kick
    const size_t room = chain->writable_length();
    if (room < kControlHeaderSize) {
      // Useless for any message. Returning it would only have the driver post it again (a
      // livelock with a driver that only posts such buffers), so the device keeps it until the
      // next reset. Bounded by the queue size.
      if (short_control_buffer_logged_.first()) {
        log::warn(
            "virtio-console: control receive buffer of {} bytes cannot hold a message "
            "header; kept unused",
            room);
      }
      control_rx_unusable_.push_back(std::move(*chain));
      continue;
    }
    const ControlMessage& m = control_pending_.front();
    // One message per buffer: Linux parses only the header at the start of each buffer.
    std::array<uint8_t, kControlHeaderSize + kMaxPortNameLength> bytes;
    const size_t want = encoded_size(m);
    const size_t n =
        encode(m, options_.resize_layout, std::span(bytes.data(), std::min(bytes.size(), room)));
    if (n < want && name_cut_logged_.first()) {
      // Linux posts 4 KiB buffers, which hold any message; a smaller one gets what fits.
      log::warn(
          "virtio-console: {} for port {} ({} bytes) does not fit the guest's {}-byte "
          "control buffer; sent cut to {} bytes",
          to_string(m.event), m.id, want, room, n);
    }
    chain->copy_to(0, std::span(bytes.data(), n));
    pushed |= q->push(std::move(*chain), static_cast<uint32_t>(n));
    control_pending_.pop_front();
    ++stats_.control_delivered;
  }
  if (pushed) signal(*q);
}

// ---------------------------------------------------------------------------------------------
// Resize and stats.

void ConsoleDevice::resize(uint32_t id, uint16_t cols, uint16_t rows) {
  Dispatch d(*this);
  Port* p = port(id);
  if (p == nullptr) throw Error(fmt::format("virtio-console: there is no port {}", id));
  if (!p->console) {
    throw Error(
        fmt::format("virtio-console: port {} is not a console port; only consoles have "
                    "a size",
                    id));
  }
  p->cols = cols;
  p->rows = rows;
  queue_resize(*p);
  deliver_control();
  if (id == 0 && active_ && !multiport_ && (features_ & kFeatureSize) != 0 &&
      interrupt_ != nullptr) {
    interrupt_->signal_config();  // a driver without MULTIPORT reads cols/rows from config
  }
}

PortStats ConsoleDevice::make_stats(const Port& p) const {
  PortStats s;
  s.id = p.id;
  s.name = p.name;
  s.console = p.console;
  s.backend = p.backend_description;
  s.host_connected = p.host_connected;
  s.guest_ready = p.ready;
  s.guest_connected = p.guest_connected;
  s.bytes_to_guest = p.bytes_to_guest;
  s.bytes_lost = p.backend->bytes_lost();
  s.bytes_from_guest = p.bytes_from_guest;
  s.bytes_to_host = p.bytes_to_host;
  s.bytes_buffered = p.tx_held_bytes + p.ring.size();
  s.console_bytes_dropped = p.ring.dropped();
  s.bytes_discarded = p.bytes_discarded;
  s.host_connects = p.host_connects;
  s.tx_chains_held = p.tx_held.size();
  s.rx_buffers_held = slots_[p.id].rx_held.size();
  s.to_guest_wait = p.rx_wait;
  s.to_host_wait = p.tx_wait;
  return s;
}

std::vector<PortStats> ConsoleDevice::port_stats() const {
  std::lock_guard lock(mutex_);
  std::vector<PortStats> all;
  for (const auto& slot : slots_) {
    if (slot.port) all.push_back(make_stats(*slot.port));
  }
  return all;
}

std::optional<PortStats> ConsoleDevice::port_stats(uint32_t id) const {
  std::lock_guard lock(mutex_);
  const Port* p = port(id);
  if (p == nullptr) return std::nullopt;
  return make_stats(*p);
}

DeviceStats ConsoleDevice::stats() const {
  std::lock_guard lock(mutex_);
  DeviceStats s = stats_;
  s.multiport = multiport_;
  s.control_pending = control_pending_.size();
  return s;
}

}  // namespace pier::virtio::console
