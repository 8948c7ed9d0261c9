#pragma once
// A model of the guest side of virtio-console as Linux 6.1's drivers/char/virtio_console.c
// drives it, on top of FakeTransport / FakeQueueDriver, for device tests without KVM.
//
// What it reproduces (reference/design-notes.md §4):
//  - probe: features {F_SIZE, F_MULTIPORT} (+ ring features), every queue created, DRIVER_OK,
//    control-rx filled with 4 KiB buffers, then DEVICE_READY(BAD_ID, 1);
//  - control_work_handler: one message per used control-rx buffer, parsed from the header at
//    the start of the buffer and sized by the used length; each buffer re-added after handling;
//  - handle_control_message: PORT_ADD (out-of-range id warns; a known id re-sends PORT_READY),
//    PORT_REMOVE (unplug), CONSOLE_PORT (hvc up, guest_connected, PORT_OPEN(1) back), RESIZE
//    ({rows, cols} like 6.1, or {cols, rows}; applied only to consoles and only with F_SIZE),
//    PORT_OPEN (host_connected), PORT_NAME (first one only, len - 8 bytes, strscpy);
//    a message for an unknown port is dropped ("Invalid index") - recorded as a problem;
//  - __send_control_msg and hvc put_chars: add the buffer, kick, and spin until it is used; a
//    device that does not complete it at once is recorded as a problem (the real guest would
//    spin with a spinlock held);
//  - port_fops_open/release/write, in_intr (data for a port the guest has not opened is
//    discarded - recorded), out_intr / reclaim_consumed_buffers.
// Everything the real driver would do wrong because of the device lands in problems(); tests
// assert it stays empty.
//
// Header-only, free of GoogleTest (benchmarks use it too).
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tests/unit/virtio/fake_driver.hpp"

namespace pier::virtio::testing {

namespace linux_console {
inline constexpr uint64_t kFSize = 1ull << 0;
inline constexpr uint64_t kFMultiport = 1ull << 1;
inline constexpr uint32_t kBadId = 0xffffffffu;
enum : uint16_t {
  kDeviceReady = 0,
  kPortAdd = 1,
  kPortRemove = 2,
  kPortReady = 3,
  kConsolePort = 4,
  kResize = 5,
  kPortOpen = 6,
  kPortName = 7,
};
inline uint16_t rx_queue(uint32_t id) {
  return static_cast<uint16_t>(id == 0 ? 0 : 2 * id + 2);
}
inline uint16_t tx_queue(uint32_t id) {
  return static_cast<uint16_t>(rx_queue(id) + 1);
}
}  // namespace linux_console

struct LinuxConsoleOptions {
  bool multiport = true;
  bool f_size = true;
  uint64_t ring_features = kQueueFeatures;  // EVENT_IDX and INDIRECT_DESC by default
  uint16_t queue_size = 0;                  // 0: the device's maximum
  size_t control_rx_buffers = 0;            // 0: fill control-rx (Linux's fill_queue)
  uint32_t control_buffer_size = 4096;
  size_t port_rx_buffers = 0;               // 0: fill each port's receiveq
  bool fill_port_rx = true;  // false: post no port rx buffers (a benchmark drives those queues)
  uint32_t rx_buffer_size = 4096;
  bool refill_control = true;       // re-add each control buffer after handling it (Linux)
  bool resize_cols_first = false;   // a kernel with commit 5326ab737a47
  uint32_t max_write = 32 * 1024;   // port_fops_write's per-call cap
};

class LinuxConsoleModel {
 public:
  struct Port {
    uint32_t id = 0;
    std::string name;
    bool console = false;
    bool host_connected = false;
    bool guest_connected = false;  // open (generic) or hvc up (console)
    bool outvq_full = false;
    uint16_t rows = 0, cols = 0;
    int resizes = 0;
    int host_events = 0;  // PORT_OPEN messages seen (each one a SIGIO for an O_ASYNC opener)
    std::string received;  // bytes delivered to the reader / hvc
    uint64_t discarded = 0;
  };
  struct Received {
    uint32_t id = 0;
    uint16_t event = 0;
    uint16_t value = 0;
    uint32_t len = 0;
    std::string payload;  // bytes after the header
  };

  LinuxConsoleModel(FakeGuest& guest, Device& device, LinuxConsoleOptions options = {})
      : guest_(guest), device_(device), options_(options), transport_(guest, device) {}

  FakeTransport& transport() { return transport_; }
  FakeQueueDriver& driver(uint16_t q) { return transport_.driver(q); }
  const LinuxConsoleOptions& options() const { return options_; }
  uint32_t max_nr_ports() const { return max_nr_ports_; }

  // virtcons_probe(). Returns false when feature negotiation fails.
  bool probe() {
    uint64_t want = options_.ring_features;
    if (options_.multiport) want |= linux_console::kFMultiport;
    if (options_.f_size) want |= linux_console::kFSize;
    if (!transport_.negotiate(want)) return false;
    multiport_ = (transport_.features() & linux_console::kFMultiport) != 0;
    f_size_ = (transport_.features() & linux_console::kFSize) != 0;
    std::array<uint8_t, 12> config{};
    device_.read_config(0, config);
    std::memcpy(&max_nr_ports_, &config[4], 4);
    if (multiport_ && (max_nr_ports_ == 0 || max_nr_ports_ > 0x8000)) {
      problem("probe: max_nr_ports " + std::to_string(max_nr_ports_) + " rejected (-EINVAL)");
      return false;
    }
    // init_vqs: every queue, whether or not its port exists; each must have a size.
    const size_t nr_queues = multiport_ ? 2 * (size_t{max_nr_ports_} + 1) : 2;
    if (device_.num_queues() < nr_queues) problem("probe: too few queues");
    for (size_t q = 0; q < nr_queues && q < device_.num_queues(); ++q) {
      if (device_.queue_max_size(q) == 0) problem("probe: queue " + std::to_string(q) + " size 0");
    }
    transport_.start(options_.queue_size);  // DRIVER_OK (virtio_device_ready)
    if (!multiport_) {
      add_port(0);  // non-multiport: port 0 is created by the driver and is the console
      Port& p = ports_.at(0);
      p.console = true;
      p.guest_connected = true;
      p.host_connected = true;
      return true;
    }
    const size_t n = options_.control_rx_buffers ? options_.control_rx_buffers
                                                 : driver(2).size();
    refill_control(n);
    send_control(linux_console::kBadId, linux_console::kDeviceReady, 1);
    return true;
  }

  // virtcons_freeze() + virtcons_restore() (hibernation): the device is reset, then the driver
  // sets the queues up again, refills control-rx and every port's rx queue, and sends
  // PORT_READY for each port it has - no DEVICE_READY - plus PORT_OPEN(1) for open ones.
  bool freeze_and_restore() {
    transport_.reset();
    control_out_.clear();
    control_free_.clear();
    for (auto& [id, q] : queues_) {
      q.rx_out.clear();
      q.tx_out.clear();
      q.tx_free.clear();
    }
    uint64_t want = options_.ring_features | linux_console::kFMultiport;
    if (options_.f_size) want |= linux_console::kFSize;
    if (!transport_.negotiate(want)) return false;
    transport_.start(options_.queue_size);
    refill_control(options_.control_rx_buffers ? options_.control_rx_buffers : driver(2).size());
    for (auto& [id, p] : ports_) {
      fill_rx(id);
      send_control(id, linux_console::kPortReady, 1);
      if (p.guest_connected) send_control(id, linux_console::kPortOpen, 1);
    }
    return true;
  }

  // Adds `n` control-rx buffers (recycling handled ones first) and kicks.
  void refill_control(size_t n) {
    FakeQueueDriver& d = driver(2);
    bool added = false;
    for (size_t i = 0; i < n && d.num_free() > 0; ++i) {
      uint64_t gpa;
      if (!control_free_.empty()) {
        gpa = control_free_.back();
        control_free_.pop_back();
      } else {
        gpa = guest_.alloc(options_.control_buffer_size, 8);
      }
      const auto head = d.chain().raw(gpa, options_.control_buffer_size, kDescFlagWrite).build();
      control_out_[*head] = gpa;
      added = true;
    }
    if (added) transport_.kick(2);
  }

  // control_work_handler(): handles every used control-rx buffer, one message each, re-adding
  // each buffer after handling it when refill_control is on. Returns how many it handled.
  size_t control_work() {
    if (!multiport_) return 0;
    size_t handled = 0;
    while (auto used = driver(2).get_used()) {
      ++handled;
      const uint64_t gpa = control_out_.at(used->id);
      control_out_.erase(used->id);
      handle_control_message(*used, gpa);
      control_free_.push_back(gpa);
      if (options_.refill_control) refill_control(1);
    }
    return handled;
  }

  // Runs the driver's work until nothing changes: control work, in_intr and out_intr (buffer
  // reclaim) for every port.
  void settle() {
    for (int round = 0; round < 10000; ++round) {
      size_t progress = control_work();
      for (auto& [id, p] : ports_) {
        progress += in_intr(id);
        reclaim(id);
      }
      for (uint32_t id : removed_) progress += flush_removed(id);
      if (progress == 0) return;
    }
    problem("settle: no quiescence after 10000 rounds");
  }

  // ---- Ports, as user space and the hvc layer see them.
  Port* port(uint32_t id) {
    auto it = ports_.find(id);
    return it == ports_.end() ? nullptr : &it->second;
  }
  const std::map<uint32_t, Port>& ports() const { return ports_; }
  // port_fops_open(). 0, -ENXIO (console or gone), -EBUSY (already open).
  int open(uint32_t id) {
    Port* p = port(id);
    if (p == nullptr) return -ENXIO;
    if (p->console) return -ENXIO;
    if (p->guest_connected) return -EBUSY;
    p->guest_connected = true;
    reclaim(id);
    send_control(id, linux_console::kPortOpen, 1);
    return 0;
  }
  // port_fops_release(): PORT_OPEN(0), unread data discarded, consumed buffers reclaimed.
  int close(uint32_t id) {
    Port* p = port(id);
    if (p == nullptr) return 0;  // unplugged: nothing is sent
    send_control(id, linux_console::kPortOpen, 0);
    p->guest_connected = false;
    p->received.clear();
    reclaim(id);
    return 0;
  }
  // port_fops_write() with O_NONBLOCK: -EAGAIN while the host is not connected or the
  // transmitq is full; otherwise queues min(32 KiB, len) bytes in one buffer and kicks.
  ssize_t write(uint32_t id, std::string_view data) {
    Port* p = port(id);
    if (p == nullptr) return -ENODEV;
    if (!p->guest_connected) return -EBADF;
    if (data.empty()) return 0;
    reclaim(id);
    if (!p->host_connected || p->outvq_full) return -EAGAIN;
    data = data.substr(0, options_.max_write);
    FakeQueueDriver& d = driver(linux_console::tx_queue(id));
    const uint64_t gpa = tx_buffer(id);
    guest_.write(gpa, std::span(reinterpret_cast<const uint8_t*>(data.data()), data.size()));
    const auto head = d.chain().raw(gpa, static_cast<uint32_t>(data.size()), 0).build();
    if (!head) return -ENOSPC;
    qstate(id).tx_out[*head] = gpa;
    transport_.kick(linux_console::tx_queue(id));
    if (d.num_free() == 0) p->outvq_full = true;
    return static_cast<ssize_t>(data.size());
  }
  // hvc put_chars() -> __send_to_port(nonblock = false): spins until the device used the buffer.
  int put_chars(uint32_t id, std::string_view data) {
    Port* p = port(id);
    if (p == nullptr || !p->console) return -EPIPE;
    if (data.empty()) return 0;  // hvc never sends nothing (a 0-length buffer is invalid)
    data = data.substr(0, options_.max_write);
    FakeQueueDriver& d = driver(linux_console::tx_queue(id));
    reclaim(id);
    const uint64_t gpa = tx_buffer(id);
    guest_.write(gpa, std::span(reinterpret_cast<const uint8_t*>(data.data()), data.size()));
    const auto head = d.chain().raw(gpa, static_cast<uint32_t>(data.size()), 0).build();
    if (!head) return 0;
    qstate(id).tx_out[*head] = gpa;
    transport_.kick(linux_console::tx_queue(id));
    bool done = false;
    while (auto used = d.get_used()) {
      release_tx(id, used->id);
      if (used->id == *head) done = true;
    }
    if (!done) problem("console tx on port " + std::to_string(id) + " not completed at once");
    return static_cast<int>(data.size());
  }
  // Bytes the port's reader got so far (consumed).
  std::string read(uint32_t id) {
    Port* p = port(id);
    if (p == nullptr) return {};
    std::string out;
    out.swap(p->received);
    return out;
  }
  // in_intr(): takes the used rx buffers of the port; discards their data when the guest has
  // not opened the port (recorded as a problem: the host fed a closed port); re-adds each
  // buffer. Returns the number of buffers taken.
  size_t in_intr(uint32_t id) {
    Port* p = port(id);
    if (p == nullptr) return 0;
    FakeQueueDriver& d = driver(linux_console::rx_queue(id));
    size_t buffers = 0;
    while (auto used = d.get_used()) {
      ++buffers;
      const uint64_t gpa = qstate(id).rx_out.at(used->id);
      qstate(id).rx_out.erase(used->id);
      if (used->len > options_.rx_buffer_size) problem("rx used length beyond the buffer");
      if (!p->guest_connected) {
        p->discarded += used->len;
        if (used->len > 0) {
          problem("port " + std::to_string(id) + ": " + std::to_string(used->len) +
                  " bytes for a port the guest has not opened, discarded");
        }
      } else {
        p->received += used->text();
      }
      add_rx_buffer(id, gpa);
      // A 0-byte buffer would read as EOF in the guest; count it (the device should not).
      if (used->len == 0) ++empty_rx_buffers_;
    }
    if (buffers > 0) transport_.kick(linux_console::rx_queue(id));
    return buffers;
  }
  // reclaim_consumed_buffers().
  void reclaim(uint32_t id) {
    Port* p = port(id);
    if (p == nullptr) return;
    FakeQueueDriver& d = driver(linux_console::tx_queue(id));
    while (auto used = d.get_used()) {
      release_tx(id, used->id);
      p->outvq_full = false;
    }
  }
  // Transmit buffers the device holds for port `id`.
  size_t tx_outstanding(uint32_t id) { return qstate(id).tx_out.size(); }
  size_t rx_posted(uint32_t id) { return qstate(id).rx_out.size(); }

  const std::vector<Received>& control_log() const { return control_log_; }
  void clear_control_log() { control_log_.clear(); }
  const std::vector<std::string>& problems() const { return problems_; }
  void clear_problems() { problems_.clear(); }
  std::string problems_text() const {
    std::string all;
    for (const auto& p : problems_) all += p + "\n";
    return all;
  }
  const std::vector<uint32_t>& removed() const { return removed_; }
  size_t empty_rx_buffers() const { return empty_rx_buffers_; }

  // Sends a raw control message the way __send_control_msg does (for hostile-driver tests any
  // bytes can be sent with send_raw_control()).
  void send_control(uint32_t id, uint16_t event, uint16_t value) {
    std::array<uint8_t, 8> bytes;
    std::memcpy(&bytes[0], &id, 4);
    std::memcpy(&bytes[4], &event, 2);
    std::memcpy(&bytes[6], &value, 2);
    send_raw_control(bytes);
  }
  void send_raw_control(std::span<const uint8_t> bytes) {
    if (!multiport_) return;
    FakeQueueDriver& d = driver(3);
    const uint64_t gpa = guest_.alloc(std::max<size_t>(bytes.size(), 1), 8);
    guest_.write(gpa, bytes);
    const auto head = d.chain().raw(gpa, static_cast<uint32_t>(bytes.size()), 0).build();
    if (!head) {
      problem("control tx queue full");
      return;
    }
    transport_.kick(3);
    bool done = false;
    while (auto used = d.get_used()) {
      if (used->id == *head) done = true;
    }
    if (!done) problem("control tx not completed at once (the guest would spin)");
  }

 private:
  struct QueueState {
    std::map<uint16_t, uint64_t> rx_out;  // head -> buffer
    std::map<uint16_t, uint64_t> tx_out;
    std::vector<uint64_t> tx_free;        // recycled max_write-sized buffers
  };
  QueueState& qstate(uint32_t id) { return queues_[id]; }

  void problem(std::string what) { problems_.push_back(std::move(what)); }

  uint64_t tx_buffer(uint32_t id) {
    auto& free = qstate(id).tx_free;
    if (!free.empty()) {
      const uint64_t gpa = free.back();
      free.pop_back();
      return gpa;
    }
    return guest_.alloc(options_.max_write, 8);
  }
  void release_tx(uint32_t id, uint16_t head) {
    auto& q = qstate(id);
    auto it = q.tx_out.find(head);
    if (it == q.tx_out.end()) return;
    q.tx_free.push_back(it->second);
    q.tx_out.erase(it);
  }

  void add_rx_buffer(uint32_t id, uint64_t gpa) {
    FakeQueueDriver& d = driver(linux_console::rx_queue(id));
    const auto head = d.chain().raw(gpa, options_.rx_buffer_size, kDescFlagWrite).build();
    if (head) qstate(id).rx_out[*head] = gpa;
  }

  // fill_queue(): buffers until the queue is full (ENOSPC is fine: a re-added port finds the
  // buffers of its previous incarnation still there).
  void fill_rx(uint32_t id) {
    if (!options_.fill_port_rx) return;
    FakeQueueDriver& d = driver(linux_console::rx_queue(id));
    const size_t want = options_.port_rx_buffers ? options_.port_rx_buffers : d.size();
    bool added = false;
    while (qstate(id).rx_out.size() < want && d.num_free() > 0) {
      add_rx_buffer(id, guest_.alloc(options_.rx_buffer_size, 8));
      added = true;
    }
    if (added) transport_.kick(linux_console::rx_queue(id));
  }

  void add_port(uint32_t id) {
    Port p;
    p.id = id;
    ports_[id] = p;
    std::erase(removed_, id);
    fill_rx(id);
  }

  // in_intr / out_intr for a port that is gone: flush_bufs() frees whatever comes back.
  size_t flush_removed(uint32_t id) {
    if (ports_.count(id)) return 0;
    size_t n = 0;
    while (auto used = driver(linux_console::rx_queue(id)).get_used()) {
      qstate(id).rx_out.erase(used->id);
      ++n;
    }
    while (auto used = driver(linux_console::tx_queue(id)).get_used()) {
      release_tx(id, used->id);
      ++n;
    }
    return n;
  }

  void handle_control_message(const UsedBuffer& used, uint64_t gpa) {
    Received r;
    r.len = used.len;
    if (used.len < 8) problem("control buffer with " + std::to_string(used.len) + " bytes");
    // Linux reads the header from the buffer whatever len says.
    const auto header = guest_.read(gpa, 8);
    std::memcpy(&r.id, &header[0], 4);
    std::memcpy(&r.event, &header[4], 2);
    std::memcpy(&r.value, &header[6], 2);
    if (used.len > 8) r.payload = used.text().substr(8);
    control_log_.push_back(r);
    // A message fills its own length; in a buffer smaller than that (never Linux's 4 KiB) a
    // device may cut PORT_NAME and RESIZE to the buffer.
    const size_t expected = r.event == linux_console::kPortName ? used.len
                            : r.event == linux_console::kResize
                                ? std::min<size_t>(12, options_.control_buffer_size)
                                : 8;
    if (used.len != expected) {
      problem("control message " + std::to_string(r.event) + " with " +
              std::to_string(used.len) + " bytes (one message per buffer)");
    }

    Port* p = port(r.id);
    if (p == nullptr && r.event != linux_console::kPortAdd) {
      problem("Invalid index " + std::to_string(r.id) + " in control packet (event " +
              std::to_string(r.event) + ")");
      return;
    }
    switch (r.event) {
      case linux_console::kPortAdd:
        if (p != nullptr) {
          send_control(r.id, linux_console::kPortReady, 1);
          break;
        }
        if (r.id >= max_nr_ports_) {
          problem("Request for adding port with out-of-bound id " + std::to_string(r.id));
          break;
        }
        add_port(r.id);
        send_control(r.id, linux_console::kPortReady, 1);
        break;
      case linux_console::kPortRemove:
        // unplug_port(): waiters woken with -ENODEV; buffers of the port are discarded.
        if (p->guest_connected) ++p->host_events;
        ports_.erase(r.id);
        removed_.push_back(r.id);
        break;
      case linux_console::kConsolePort:
        if (r.value == 0 || p->console) break;
        p->console = true;  // init_port_console(): hvc_alloc()
        p->guest_connected = true;
        send_control(r.id, linux_console::kPortOpen, 1);
        break;
      case linux_console::kResize: {
        if (!p->console) break;
        uint16_t a, b;
        const auto size = guest_.read(gpa + 8, 4);
        std::memcpy(&a, &size[0], 2);
        std::memcpy(&b, &size[2], 2);
        if (f_size_) {  // resize_console(): hvc_resize only with F_SIZE
          p->rows = options_.resize_cols_first ? b : a;
          p->cols = options_.resize_cols_first ? a : b;
          ++p->resizes;
        }
        break;
      }
      case linux_console::kPortOpen:
        p->host_connected = r.value != 0;
        ++p->host_events;
        reclaim(r.id);
        break;
      case linux_console::kPortName: {
        if (!p->name.empty()) break;
        // name_size = len - 8 + 1; strscpy(): stops at a NUL.
        std::string name = r.payload;
        name = name.substr(0, std::strlen(name.c_str()));
        p->name = name;
        break;
      }
      default:
        break;
    }
  }

  FakeGuest& guest_;
  Device& device_;
  LinuxConsoleOptions options_;
  FakeTransport transport_;
  bool multiport_ = false;
  bool f_size_ = false;
  uint32_t max_nr_ports_ = 1;
  std::map<uint32_t, Port> ports_;
  std::map<uint32_t, QueueState> queues_;
  std::vector<uint32_t> removed_;
  std::map<uint16_t, uint64_t> control_out_;
  std::vector<uint64_t> control_free_;
  std::vector<Received> control_log_;
  std::vector<std::string> problems_;
  size_t empty_rx_buffers_ = 0;
};

}  // namespace pier::virtio::testing
