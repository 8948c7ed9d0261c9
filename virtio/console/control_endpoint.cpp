#include "virtio/console/control_endpoint.hpp"

#include <algorithm>

#include "virtio/console/port.hpp"
#include "virtio/console/thread_role.hpp"

namespace pier::virtio::console {
namespace {

ControlMessage message(uint32_t id, ControlEvent event, uint16_t value, uint64_t serial) {
  ControlMessage m;
  m.id = id;
  m.event = event;
  m.value = value;
  m.serial = serial;
  return m;
}

}  // namespace

ControlEndpoint::ControlEndpoint(DeviceLink& link, uint32_t max_ports, ResizeLayout resize_layout)
    : link_(link),
      max_ports_(max_ports),
      resize_layout_(resize_layout),
      // The device rejects more than kMaxPortsLimit after constructing this: don't allocate for
      // a bad value first.
      guest_serial_(std::min(max_ports, kMaxPortsLimit)) {}

void ControlEndpoint::activate(bool multiport) {
  enabled_ = multiport;
  driver_ready_ = false;
  pending_.clear();
}

void ControlEndpoint::reset() {
  enabled_ = false;
  driver_ready_ = false;
  pending_.clear();
  unusable_rx_.clear();
}

void ControlEndpoint::ignore() {
  ++ignored_;
}

// ---------------------------------------------------------------------------------------------
// Driver -> device.

void ControlEndpoint::receive() {
  assert_io_role(link_.role_owner());
  Queue* q = link_.usable_queue(kControlTxQueue);
  if (q == nullptr) return;
  complete_chains(link_, *q, [&](Chain&& chain) {
    std::array<uint8_t, kControlHeaderSize> bytes{};
    const size_t n = chain.copy_from(0, bytes);
    // At once, before acting on it: __send_control_msg() spins until the buffer is used.
    const bool pushed = q->push(std::move(chain), 0);
    ++received_;
    handle_driver_message(std::span(bytes.data(), n));
    return pushed;
  });
  deliver();
}

void ControlEndpoint::handle_driver_message(std::span<const uint8_t> bytes) {
  const ParseResult r = parse_driver_message(bytes, max_ports_);
  if (r.error != ControlError::kOk) {
    ignore();
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
      ignore();
      if (device_ready_fail_logged_.first()) {
        log::warn("virtio-console: the guest driver failed to set up (DEVICE_READY 0)");
      }
      return;
    }
    if (driver_ready_) {
      ignore();
      if (device_ready_dup_logged_.first()) {
        log::warn("virtio-console: repeated DEVICE_READY ignored");
      }
      return;
    }
    driver_ready_ = true;
    // PORT_ADD for every port, port 0 included, in id order.
    link_.for_each_port([this](Port& p) { queue_port_add(p); });
    return;
  }

  Port* p = link_.port(m.id);
  if (p == nullptr) {
    // Also a legitimate race: the guest closing a port the host just removed.
    ignore();
    if (unknown_port_logged_.first()) {
      log::warn("virtio-console: {} for port {}, which does not exist; ignored", to_string(m.event),
                m.id);
    }
    return;
  }
  if (m.event == ControlEvent::kPortReady) {
    handle_port_ready(*p, m.value);
  } else {
    handle_port_open(*p, m.value);
  }
}

void ControlEndpoint::handle_port_ready(Port& p, bool ok) {
  const uint32_t id = p.id();
  if (!ok) {
    p.set_guest_ready(false);
    p.set_guest_connected(false);
    // Its transmit chains are completed as orphans from now on, which needs kicks.
    Queue* q = link_.usable_queue(port_tx_queue(id));
    if (q != nullptr && !q->notification_enabled() && q->enable_notification()) link_.orphan_tx(*q);
    if (port_ready_fail_logged_.first()) {
      log::warn("virtio-console: the guest failed to add port {} (PORT_READY 0)", id);
    }
    return;
  }
  // The guest cannot have this incarnation before its PORT_ADD reached it, nor while the
  // PORT_REMOVE of an earlier incarnation of the id is still on its way: a PORT_READY then
  // answers the old port (or is forged). Taking it would hand the queues to the new port
  // while the guest may still write to them as the old one - as a spinning hvc console.
  for (const auto& pending : pending_) {
    if (pending.id == id &&
        (pending.event == ControlEvent::kPortAdd || pending.event == ControlEvent::kPortRemove)) {
      ignore();
      if (early_ready_logged_.first()) {
        log::warn(
            "virtio-console: PORT_READY for port {} before its PORT_ADD reached the "
            "guest; ignored",
            id);
      }
      return;
    }
  }
  uint64_t& guest_serial = guest_serial_[id];
  if (!p.add_sent() && guest_serial != 0 && guest_serial != p.serial()) {
    // A PORT_READY without our PORT_ADD since the reset: a driver restored from hibernation
    // re-announcing the ports it kept - but it kept an earlier incarnation of this id (the
    // host replaced the port meanwhile, possibly a console by a generic port). Make it drop
    // that one and take the new one; until it answers, this port's tx is completed as
    // orphaned, so an old hvc never waits on the new port.
    log::debug(
        "virtio-console: port {}: the restored driver has an earlier port with this "
        "id; PORT_REMOVE and PORT_ADD",
        id);
    queue(message(id, ControlEvent::kPortRemove, 1, guest_serial));
    queue_port_add(p);
    deliver();
    return;
  }
  answer_port_ready(p);
  if (p.guest_ready()) guest_serial = p.serial();
}

void ControlEndpoint::handle_port_open(Port& p, bool open) {
  // PORT_OPEN from the guest: it opened (1) or closed (0) the port.
  if (!p.guest_ready()) {
    ignore();
    if (not_ready_logged_.first()) {
      log::warn("virtio-console: PORT_OPEN for port {} before its PORT_READY; ignored", p.id());
    }
    return;
  }
  if (p.guest_connected() == open) return;
  p.set_guest_connected(open);
  log::debug("virtio-console: port {}: guest {}", p.id(), open ? "opened" : "closed");
  p.pump_rx();  // open: deliver what the host has been holding; close: stop reading
}

void ControlEndpoint::answer_port_ready(Port& p) {
  // The guest (re)created its port: not open, host disconnected until told otherwise. Linux
  // sends PORT_READY once per PORT_ADD, and again for every port after a restore from
  // hibernation; a guest repeating it while an earlier answer is undelivered gets nothing more
  // (that keeps the control queue bounded).
  for (const auto& m : pending_) {
    if (m.serial == p.serial() && m.event != ControlEvent::kPortAdd &&
        m.event != ControlEvent::kPortRemove) {
      ignore();
      return;
    }
  }
  p.set_guest_ready(true);
  p.set_add_sent(true);  // the guest has it (after a restore, without a PORT_ADD from us)
  p.set_guest_connected(false);
  // QEMU's order: CONSOLE_PORT, PORT_NAME, PORT_OPEN; then the size, which Linux only applies
  // once the port is a console.
  if (p.console()) queue(message(p.id(), ControlEvent::kConsolePort, 1, p.serial()));
  if (!p.name().empty()) {
    ControlMessage m = message(p.id(), ControlEvent::kPortName, 1, p.serial());
    m.name = p.name();
    queue(std::move(m));
  }
  p.set_announced_host(p.host_connected());
  if (p.host_connected()) queue(message(p.id(), ControlEvent::kPortOpen, 1, p.serial()));
  if (p.console() && (p.cols() != 0 || p.rows() != 0)) queue_resize(p);
  p.pump_rx();  // not open yet: makes sure nothing is read for it
}

// ---------------------------------------------------------------------------------------------
// Host-side changes.

void ControlEndpoint::port_added(Port& p) {
  if (!enabled_ || !driver_ready_) return;
  queue_port_add(p);
  deliver();
}

void ControlEndpoint::host_changed(Port& p) {
  // Before PORT_READY the answer to it carries the state; without MULTIPORT there is no
  // control queue.
  if (enabled_ && p.guest_ready() && p.announced_host() != p.host_connected()) {
    // An undelivered PORT_OPEN for this port says the opposite of the new state: withdraw it
    // instead of sending a second one (the guest ends in the same state, the queue stays
    // bounded).
    auto it = std::find_if(pending_.begin(), pending_.end(), [&](const ControlMessage& m) {
      return m.serial == p.serial() && m.event == ControlEvent::kPortOpen;
    });
    if (it != pending_.end()) {
      pending_.erase(it);
    } else {
      queue(message(p.id(), ControlEvent::kPortOpen,
                    static_cast<uint16_t>(p.host_connected() ? 1 : 0), p.serial()));
    }
    p.set_announced_host(p.host_connected());
  }
  deliver();
}

void ControlEndpoint::size_changed(Port& p) {
  queue_resize(p);
  deliver();
}

void ControlEndpoint::port_removed(Port& p) {
  const bool add_was_pending = withdraw(p.serial());
  if (enabled_ && p.add_sent() && !add_was_pending) {
    queue(message(p.id(), ControlEvent::kPortRemove, 1, p.serial()));
  }
  deliver();
}

void ControlEndpoint::queue_resize(Port& p) {
  // Linux applies RESIZE only to a console port and only with F_SIZE negotiated.
  if (!enabled_ || !p.guest_ready() || !p.console() || (features_ & kFeatureSize) == 0) return;
  for (auto& m : pending_) {
    if (m.serial == p.serial() && m.event == ControlEvent::kResize) {
      m.cols = p.cols();  // the newest size replaces an undelivered one
      m.rows = p.rows();
      return;
    }
  }
  ControlMessage m = message(p.id(), ControlEvent::kResize, 0, p.serial());
  m.cols = p.cols();
  m.rows = p.rows();
  queue(std::move(m));
}

void ControlEndpoint::queue_port_add(Port& p) {
  p.set_add_sent(true);
  queue(message(p.id(), ControlEvent::kPortAdd, 1, p.serial()));
}

void ControlEndpoint::queue(ControlMessage message) {
  pending_.push_back(std::move(message));
}

bool ControlEndpoint::withdraw(uint64_t serial) {
  bool add_was_pending = false;
  std::erase_if(pending_, [&](const ControlMessage& m) {
    if (m.serial != serial) return false;
    add_was_pending |= m.event == ControlEvent::kPortAdd;
    return true;
  });
  return add_was_pending;
}

// ---------------------------------------------------------------------------------------------
// Device -> driver.

void ControlEndpoint::deliver() {
  if (pending_.empty() || !enabled_) return;
  assert_io_role(link_.role_owner());
  Queue* q = link_.usable_queue(kControlRxQueue);
  if (q == nullptr) return;
  bool pushed = false;
  while (!pending_.empty()) {
    auto chain = q->pop();
    if (!chain) break;  // the guest refills control-rx from a workqueue: wait for its kick
    const size_t room = chain->writable_length();
    if (room < kControlHeaderSize) {
      // Useless for any message. Returning it would only have the driver post it again (a
      // livelock with a driver that only posts such buffers), so the device keeps it until the
      // next reset. Bounded by the queue size.
      if (short_buffer_logged_.first()) {
        log::warn(
            "virtio-console: control receive buffer of {} bytes cannot hold a message "
            "header; kept unused",
            room);
      }
      unusable_rx_.push_back(std::move(*chain));
      continue;
    }
    const ControlMessage& m = pending_.front();
    // One message per buffer: Linux parses only the header at the start of each buffer.
    std::array<uint8_t, kControlHeaderSize + kMaxPortNameLength> bytes;
    const size_t want = encoded_size(m);
    const size_t n =
        encode(m, resize_layout_, std::span(bytes.data(), std::min(bytes.size(), room)));
    if (n < want && name_cut_logged_.first()) {
      // Linux posts 4 KiB buffers, which hold any message; a smaller one gets what fits.
      log::warn(
          "virtio-console: {} for port {} ({} bytes) does not fit the guest's {}-byte "
          "control buffer; sent cut to {} bytes",
          to_string(m.event), m.id, want, room, n);
    }
    chain->copy_to(0, std::span(bytes.data(), n));
    pushed |= q->push(std::move(*chain), static_cast<uint32_t>(n));
    pending_.pop_front();
    ++delivered_;
  }
  if (pushed) link_.signal(*q);
}

}  // namespace pier::virtio::console
