#include "virtio/console/console_device.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cstring>

#include "virtio/console/port.hpp"
#include "virtio/console/thread_role.hpp"
#include "vmm/error.hpp"

namespace pier::virtio::console {
namespace {

void check_queue_size(uint16_t size, const char* what) {
  if (size < 2 || !std::has_single_bit(size)) {
    throw Error(
        fmt::format("virtio-console: {} {} is not a power of two between 2 and 32768", what, size));
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Internal types.

// Per port id; outlives port incarnations because the guest keeps a port's queues (and the
// buffers in them) across PORT_REMOVE / PORT_ADD.
struct ConsoleDevice::Slot {
  Fifo<Chain> rx_held;  // rx buffers popped and not filled yet, in ring order
  std::unique_ptr<Port> port;
};

// Turns a backend's callbacks into BackendEvents for one port incarnation.
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

// The lock for an I/O-thread entry point, and the I/O role that goes with it (thread_role.hpp).
// Records the owning thread so backend callbacks made from inside our own backend calls are
// queued instead of deadlocking, and handles them before unlocking.
class ConsoleDevice::Dispatch {
 public:
  explicit Dispatch(ConsoleDevice& device)
      : device_(device), lock_(device.mutex_), role_(device.role_owner()) {
    device_.dispatch_owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
  }
  ~Dispatch() {
    device_.drain_backend_events();
    device_.dispatch_owner_.store(std::thread::id{}, std::memory_order_relaxed);
    role_.end();
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
  IoRoleScope role_;
};

// ---------------------------------------------------------------------------------------------
// Construction, ports.

ConsoleDevice::ConsoleDevice(EventLoop& loop, ConsoleOptions options, std::vector<PortConfig> ports)
    : loop_(loop), options_(options), control_(*this, options.max_ports, options.resize_layout) {
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
  port_shared_.scratch_iov.reserve(kMaxIov);
  // Explicit ids first, so an automatic id never takes one that is asked for later.
  std::stable_partition(ports.begin(), ports.end(),
                        [](const PortConfig& c) { return c.id.has_value(); });
  Dispatch d(*this);
  for (auto& config : ports) add_port_locked(std::move(config));
}

ConsoleDevice::~ConsoleDevice() {
  std::lock_guard lock(mutex_);
  IoRoleScope role(role_owner());  // the loop no longer dispatches for the device
  for (auto& slot : slots_) {
    if (slot.port) slot.port->stop_backend();
  }
}

uint32_t ConsoleDevice::add_port(PortConfig config) {
  Dispatch d(*this);
  return add_port_locked(std::move(config));
}

uint32_t ConsoleDevice::pick_port_id(const PortConfig& config) const {
  if (config.id) {
    const uint32_t id = *config.id;
    if (id >= options_.max_ports) {
      throw Error(
          fmt::format("virtio-console: port id {} is out of range: --max-ports is {} "
                      "(ids 0..{})",
                      id, options_.max_ports, options_.max_ports - 1));
    }
    if (slots_[id].port) throw Error(fmt::format("virtio-console: port id {} is in use", id));
    return id;
  }
  uint32_t id = 0;
  while (id < options_.max_ports && slots_[id].port) ++id;
  if (id == options_.max_ports) {
    throw Error(
        fmt::format("virtio-console: all {} port ids are in use: raise --max-ports "
                    "(up to {})",
                    options_.max_ports, kMaxPortsLimit));
  }
  return id;
}

uint32_t ConsoleDevice::add_port_locked(PortConfig config) {
  if (!config.backend) throw Error("virtio-console: a port needs a backend");
  if (!config.name.empty()) {
    if (auto error = port_name_error(config.name)) throw Error("virtio-console: " + *error);
    for (const auto& slot : slots_) {
      if (slot.port && slot.port->name() == config.name) {
        throw Error(fmt::format("virtio-console: duplicate port name '{}' (already port {})",
                                config.name, slot.port->id()));
      }
    }
  }
  const uint32_t id = pick_port_id(config);
  const uint64_t serial = next_serial_++;
  DeviceLink& link = *this;  // the private base, converted where it is accessible
  auto p = std::make_unique<Port>(link, port_shared_, slots_[id].rx_held, id, serial,
                                  std::move(config), options_.console_ring_bytes);
  // Setup errors propagate; nothing was added yet.
  p->start(loop_, std::make_unique<PortListener>(*this, id, serial));

  Port& port = *p;
  slots_[id].port = std::move(p);
  log::debug("virtio-console: port {}{}{} on {}", id, port.console() ? " (console)" : "",
             port.name().empty() ? "" : " '" + port.name() + "'", port.backend_description());

  note(port, PortEvent::Kind::kAdded);
  if (active_ && !multiport_ && id == 0) {
    // A driver without MULTIPORT uses port 0 as its console from the start.
    port.set_guest_ready(true);
    port.set_guest_connected(true);
  }
  control_.port_added(port);
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

void ConsoleDevice::teardown_port(Port& p) {
  p.release_guest_bytes();
  control_.port_removed(p);
  p.stop_backend();
}

void ConsoleDevice::set_observer(PortEventObserver observer) {
  std::lock_guard lock(mutex_);
  observer_ = std::move(observer);
}

// ---------------------------------------------------------------------------------------------
// virtio::Device.

uint64_t ConsoleDevice::device_features() const {
  return kQueueFeatures | kFeatureSize | kFeatureMultiport | kFeatureEmergWrite;
}

bool ConsoleDevice::ack_features(uint64_t driver_features) {
  VcpuRoleScope role;
  std::lock_guard lock(mutex_);
  features_ = driver_features;
  control_.set_features(driver_features);
  return true;
}

uint16_t ConsoleDevice::queue_max_size(size_t index) const {
  return index == kControlRxQueue || index == kControlTxQueue ? options_.control_queue_size
                                                              : options_.queue_size;
}

void ConsoleDevice::read_config(uint64_t offset, std::span<uint8_t> out) {
  VcpuRoleScope role;
  std::array<uint8_t, 12> config{};
  {
    std::lock_guard lock(mutex_);
    if (const Port* p = port(0)) {
      const uint16_t cols = p->cols(), rows = p->rows();
      std::memcpy(&config[0], &cols, 2);
      std::memcpy(&config[2], &rows, 2);
    }
  }
  const uint32_t max = options_.max_ports;
  std::memcpy(&config[4], &max, 4);
  // emerg_wr (8..11) reads as 0.
  read_config_bytes(config, offset, out);
}

void ConsoleDevice::write_config(uint64_t offset, std::span<const uint8_t> in) {
  VcpuRoleScope role;
  // Only emerg_wr is writable; its low byte is the character. cols, rows and max_nr_ports are
  // read-only: writes to them are ignored.
  constexpr uint64_t kEmergWr = 8;
  if (in.empty() || offset > kEmergWr || offset + in.size() <= kEmergWr) return;
  const uint8_t byte = in[kEmergWr - offset];
  std::lock_guard lock(mutex_);
  ++emergency_bytes_;
  Port* p = port(0);
  if (p == nullptr) {
    if (emergency_drop_logged_.first()) {
      log::warn("virtio-console: emergency write with no port 0; dropped");
    }
    return;
  }
  p->buffer_emergency_byte(byte);
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
  if (Port* p = port(0)) p->flush_out();
}

void ConsoleDevice::activate(std::span<Queue> queues, Interrupt& interrupt) {
  std::lock_guard lock(mutex_);
  queues_ = queues;
  interrupt_ = &interrupt;
  active_ = true;
  multiport_ = (features_ & kFeatureMultiport) != 0;
  control_.activate(multiport_);
  for (auto& slot : slots_) {
    if (!slot.port) continue;
    slot.port->forget_guest();
    if (!multiport_ && slot.port->id() == 0) {
      slot.port->set_guest_ready(true);
      slot.port->set_guest_connected(true);
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
  control_.reset();
  for (auto& slot : slots_) {
    slot.rx_held.clear();  // back to the driver with the queue reset
    if (slot.port) slot.port->forget_guest();
  }
}

void ConsoleDevice::queue_notify(uint16_t index) {
  Dispatch d(*this);
  run_queue(index);
}

void ConsoleDevice::run_queue(uint16_t index) {
  if (!active_) return;
  if (index == kControlRxQueue) {
    control_.deliver();  // nothing without MULTIPORT
    return;
  }
  if (index == kControlTxQueue) {
    if (multiport_) control_.receive();
    return;
  }
  const uint32_t id = port_of_queue(index);
  if (id >= options_.max_ports || (!multiport_ && id != 0)) return;
  Port* p = port(id);
  if ((index & 1) == 0) {
    if (p != nullptr) p->pump_rx();  // a port-less rx queue keeps its buffers for a later port
    return;
  }
  Queue* q = usable_queue(index);
  if (q == nullptr) return;
  if (p == nullptr || !p->guest_ready()) {
    // No port, or one the guest has not taken yet (no PORT_READY): the bytes belong to a removed
    // incarnation of this id - possibly an hvc console that spins on them - so they are completed
    // at once and discarded. (Linux cannot write to a port before its PORT_READY: writes wait
    // for our PORT_OPEN(1), which follows it.)
    orphan_tx(*q);
  } else if (console_semantics(*p)) {
    p->console_tx(*q);
  } else {
    p->generic_tx(*q);
  }
}

bool ConsoleDevice::console_semantics(const Port& p) const {
  // Without MULTIPORT, port 0 is the driver's hvc console whatever it was configured as.
  return p.console() || !multiport_;
}

// ---------------------------------------------------------------------------------------------
// DeviceLink.

Queue* ConsoleDevice::usable_queue(uint16_t index) {
  assert_io_role(role_owner());
  if (!active_ || index >= queues_.size()) return nullptr;
  Queue& q = queues_[index];
  return q.ready() && !q.failed() ? &q : nullptr;
}

void ConsoleDevice::signal(Queue& q) {
  if (interrupt_ != nullptr && q.should_interrupt()) interrupt_->signal_queue(q.index());
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

void ConsoleDevice::orphan_tx(Queue& q) {
  // Transmit buffers on the queue of a port that does not exist (removed while the guest was
  // writing, or never configured) or that the guest has not taken yet: completed so the guest
  // can free them (or stop spinning), bytes discarded.
  assert_io_role(role_owner());
  complete_chains(*this, q, [&](Chain&& chain) {
    orphan_tx_bytes_ += chain.readable_length();
    if (orphan_tx_logged_.first()) {
      log::warn(
          "virtio-console: transmit on queue {}, which has no port the guest knows; "
          "discarded",
          q.index());
    }
    return q.push(std::move(chain), 0);
  });
}

void ConsoleDevice::note(const Port& p, PortEvent::Kind kind) {
  if (observer_) port_events_.push_back({kind, p.id(), p.name()});
}

Port* ConsoleDevice::port(uint32_t id) {
  return id < slots_.size() ? slots_[id].port.get() : nullptr;
}
const Port* ConsoleDevice::port(uint32_t id) const {
  return id < slots_.size() ? slots_[id].port.get() : nullptr;
}

void ConsoleDevice::for_each_port(const std::function<void(Port&)>& fn) {
  for (auto& slot : slots_) {
    if (slot.port) fn(*slot.port);
  }
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
  if (p == nullptr || p->serial() != event.serial) return;  // a removed port's late event
  switch (event.kind) {
    case BackendEvent::Kind::kConnected:
      host_changed(*p, true);
      break;
    case BackendEvent::Kind::kDisconnected:
      host_changed(*p, false);
      break;
    case BackendEvent::Kind::kReadable:
      p->pump_rx();
      break;
    case BackendEvent::Kind::kWritable:
      p->flush_out();
      break;
  }
}

void ConsoleDevice::host_changed(Port& p, bool connected) {
  p.host_changed(connected);  // counts, replays held output, restarts input
  control_.host_changed(p);   // PORT_OPEN(0/1) to the guest
}

// ---------------------------------------------------------------------------------------------
// Resize and stats.

void ConsoleDevice::resize(uint32_t id, uint16_t cols, uint16_t rows) {
  Dispatch d(*this);
  Port* p = port(id);
  if (p == nullptr) throw Error(fmt::format("virtio-console: there is no port {}", id));
  if (!p->console()) {
    throw Error(
        fmt::format("virtio-console: port {} is not a console port; only consoles have "
                    "a size",
                    id));
  }
  p->set_size(cols, rows);
  control_.size_changed(*p);
  if (id == 0 && active_ && !multiport_ && (features_ & kFeatureSize) != 0 &&
      interrupt_ != nullptr) {
    interrupt_->signal_config();  // a driver without MULTIPORT reads cols/rows from config
  }
}

std::vector<PortStats> ConsoleDevice::port_stats() const {
  std::lock_guard lock(mutex_);
  std::vector<PortStats> all;
  for (const auto& slot : slots_) {
    if (slot.port) all.push_back(slot.port->stats());
  }
  return all;
}

std::optional<PortStats> ConsoleDevice::port_stats(uint32_t id) const {
  std::lock_guard lock(mutex_);
  const Port* p = port(id);
  if (p == nullptr) return std::nullopt;
  return p->stats();
}

DeviceStats ConsoleDevice::stats() const {
  std::lock_guard lock(mutex_);
  DeviceStats s;
  s.driver_ready = control_.driver_ready();
  s.multiport = multiport_;
  s.control_delivered = control_.delivered();
  s.control_received = control_.received();
  s.control_ignored = control_.ignored();
  s.control_pending = control_.pending();
  s.emergency_bytes = emergency_bytes_;
  s.orphan_tx_bytes = orphan_tx_bytes_;
  return s;
}

}  // namespace pier::virtio::console
