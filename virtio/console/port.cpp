#include "virtio/console/port.hpp"

#include <algorithm>
#include <array>

#include "virtio/console/thread_role.hpp"
#include "vmm/log.hpp"

namespace pier::virtio::console {

Port::Port(DeviceLink& link, PortShared& shared, Fifo<Chain>& rx_held, uint32_t id, uint64_t serial,
           PortConfig config, size_t console_ring_bytes)
    : link_(link),
      shared_(shared),
      rx_held_(rx_held),
      id_(id),
      serial_(serial),
      name_(std::move(config.name)),
      console_(config.console),
      backend_(std::move(config.backend)),
      ring_(console_ring_bytes) {}

Port::~Port() = default;

void Port::start(EventLoop& loop, std::unique_ptr<chardev::PortBackend::Listener> listener) {
  assert_io_role(link_.role_owner());
  listener_ = std::move(listener);
  backend_->start(loop, *listener_);
  host_connected_ = backend_->host_connected();
  backend_description_ = backend_->describe();
}

void Port::stop_backend() {
  assert_io_role(link_.role_owner());
  backend_->stop();
}

void Port::set_guest_connected(bool open) {
  if (guest_connected_ == open) return;
  guest_connected_ = open;
  link_.note(*this, open ? PortEvent::Kind::kGuestOpened : PortEvent::Kind::kGuestClosed);
}

void Port::set_want_input(bool on) {
  assert_io_role(link_.role_owner());
  if (input_interest_.change(on)) backend_->want_input(on);
}

void Port::set_want_output(bool on) {
  assert_io_role(link_.role_owner());
  if (output_interest_.change(on)) backend_->want_output(on);
}

void Port::host_changed(bool connected) {
  assert_io_role(link_.role_owner());
  if (connected && !host_connected_) ++host_connects_;
  if (connected != host_connected_) {
    link_.note(*this,
               connected ? PortEvent::Kind::kHostConnected : PortEvent::Kind::kHostDisconnected);
  }
  host_connected_ = connected;
  backend_description_ = backend_->describe();
  log::debug("virtio-console: port {}: host {}", id_, connected ? "connected" : "disconnected");
  // A new peer starts with the backend's default interest.
  input_interest_.known = output_interest_.known = false;
  flush_out();  // ring replay, then held chains, in order
  pump_rx();
}

// ---------------------------------------------------------------------------------------------
// Host -> guest.

// Every return below stops this direction and records (rx_wait_) the one event that calls
// pump_rx again: no stop relies on a timer or on another direction's traffic.
void Port::pump_rx() {
  assert_io_role(link_.role_owner());
  Queue* q = link_.usable_queue(port_rx_queue(id_));
  // Linux discards data for a port the guest has not opened (console ports count as open once
  // the hvc is up), so nothing is read from the backend until then. Restarted by the missing
  // piece: the driver's kick on this queue after DRIVER_OK (queue_notify), the guest's
  // PORT_OPEN(1) (the control endpoint), the peer's on_host_connected(true) (host_changed).
  if (q == nullptr || !guest_connected_ || !host_connected_) {
    rx_wait_ = q == nullptr        ? FlowWait::kNoDriver
               : !guest_connected_ ? FlowWait::kGuestClosed
                                   : FlowWait::kHostDisconnected;
    set_want_input(false);
    return;
  }
  std::vector<iovec>& iov = shared_.scratch_iov;
  bool pushed = false;
  size_t moved = 0;  // this run's bytes, for kRxBytesPerRun
  for (;;) {
    if (moved >= kRxBytesPerRun) {
      // Budget spent with the backend still readable: the continuation restarts it.
      rx_wait_ = FlowWait::kYielded;
      set_want_input(false);
      link_.continue_later(port_rx_queue(id_));
      break;
    }
    while (rx_held_.size() < kRxBatch) {
      // While it holds buffers the device is woken by the backend (EPOLLIN) and tops up from
      // the ring then, so the driver need not kick: each kick is an exit (on kvm_pvm it costs
      // the vCPU 0.1-1 ms). Only a device left without buffers asks for one (below).
      if (!rx_held_.empty() && q->notification_enabled()) q->disable_notification();
      auto chain = q->pop();
      if (!chain) break;
      if (chain->writable_length() == 0) {
        if (shared_.empty_rx_logged.first()) {
          log::warn(
              "virtio-console: port {}: receive buffer with no writable bytes; returned "
              "empty",
              id_);
        }
        pushed |= q->push(std::move(*chain), 0);
        continue;
      }
      rx_held_.emplace_back() = std::move(*chain);
    }
    if (rx_held_.empty()) {
      // Out of buffers: ask for a kick, re-checking the ring for buffers that came meanwhile.
      if (!q->notification_enabled() && q->enable_notification()) continue;
      // Stop popping and reading: no guest buffers, backpressure on the host writer.
      // Notifications are on and armed at the ring's end (the empty pop or enable_notification
      // re-checked the ring after arming), so the driver's next buffer kicks: queue_notify.
      rx_wait_ = FlowWait::kNoGuestBuffers;
      set_want_input(false);
      break;
    }
    iov.clear();
    size_t room = 0;
    for (size_t i = 0; i < rx_held_.size() && iov.size() < kMaxIov; ++i) {
      for (const iovec& v : rx_held_.at(i).writable()) {
        if (iov.size() == kMaxIov) break;
        iov.push_back(v);
        room += v.iov_len;
      }
    }
    const ssize_t n = backend_->readv(iov);
    if (n <= 0) {
      // 0: the backend has nothing now. Stop with buffers held and rx notifications off:
      //    on_readable (want_input(true), level-triggered) restarts it and tops the buffers up
      //    from the ring then, so the driver need not kick.
      // -1: the peer left; its on_host_connected(false) follows, and the next peer's
      //    on_host_connected(true) restarts it (host_changed).
      rx_wait_ = n == 0 ? FlowWait::kBackendNotReadable : FlowWait::kHostDisconnected;
      set_want_input(n == 0);
      break;
    }
    size_t left = static_cast<size_t>(n);
    bytes_to_guest_ += left;
    moved += left;
    while (left > 0) {
      Chain& front = rx_held_.front();
      const size_t take = std::min(left, front.writable_length());
      pushed |= q->push(std::move(front), static_cast<uint32_t>(take));
      rx_held_.discard_front();
      left -= take;
    }
    if (static_cast<size_t>(n) < room) {
      // Drained the backend for now: as for readv() == 0, on_readable restarts it.
      rx_wait_ = FlowWait::kBackendNotReadable;
      set_want_input(true);
      break;
    }
  }
  if (pushed) link_.signal(*q);
}

// ---------------------------------------------------------------------------------------------
// Guest -> host.

void Port::console_tx(Queue& q) {
  assert_io_role(link_.role_owner());
  const bool yielded = complete_chains(link_, q, [&](Chain&& chain) {
    const size_t len = chain.readable_length();
    bytes_from_guest_ += len;
    size_t done = 0;
    if (ring_.empty() && host_connected_ && len > 0) {
      const ssize_t n = backend_->writev(chain.readable());
      if (n > 0) {
        done = static_cast<size_t>(n);
        bytes_to_host_ += done;
      }
    }
    // What the backend did not take goes to the ring; only its last `capacity` bytes can
    // survive, so a huge chain is not copied in full.
    if (len - done > ring_.capacity()) {
      const size_t skip = len - done - ring_.capacity();
      ring_.count_dropped(skip);
      log_ring_drop();
      done += skip;
    }
    std::array<uint8_t, 4096> buf;
    while (done < len) {
      const size_t k = chain.copy_from(done, buf);
      if (k == 0) break;
      ring_push(std::span(buf.data(), k));
      done += k;
    }
    // At once: hvc's put_chars() spins until the buffer is used.
    return q.push(std::move(chain), 0);
  });
  // Console tx never holds the guest; output the backend did not take waits in the ring for
  // on_writable (or for the next peer's on_host_connected(true)), which call flush_out.
  if (!ring_.empty()) {
    tx_wait_ = host_connected_ ? FlowWait::kBackendNotWritable : FlowWait::kHostDisconnected;
    set_want_output(host_connected_);
  } else {
    tx_wait_ = yielded ? FlowWait::kYielded : FlowWait::kMoving;
  }
}

void Port::buffer_emergency_byte(uint8_t byte) {
  // No role check: a vCPU's config write, which only buffers (the I/O thread flushes).
  ring_push(std::span(&byte, 1));
}

void Port::ring_push(std::span<const uint8_t> bytes) {
  if (ring_.push(bytes) > 0) log_ring_drop();
}

void Port::log_ring_drop() const {
  if (shared_.ring_drop_logged.first()) {
    log::warn(
        "virtio-console: port {}: console output ring ({} bytes) full with nobody reading "
        "{}; dropping the oldest output (counted in the port's console_bytes_dropped)",
        id_, ring_.capacity(), backend_description_);
  }
}

void Port::generic_tx(Queue& q) {
  take_tx(q);
  flush_out();
}

void Port::take_tx(Queue& q) {
  assert_io_role(link_.role_owner());
  bool pushed = false;
  while (auto chain = q.pop()) {
    const size_t len = chain->readable_length();
    if (len == 0) {
      pushed |= q.push(std::move(*chain), 0);  // nothing to write (Linux never sends these)
      continue;
    }
    bytes_from_guest_ += len;
    tx_held_bytes_ += len;
    HeldTx& held = tx_held_.emplace_back();
    held.chain = std::move(*chain);
    held.offset = 0;
  }
  if (pushed) link_.signal(q);
}

// Every return below records (tx_wait_) the one event that calls flush_out again.
void Port::flush_out() {
  assert_io_role(link_.role_owner());
  if (!host_connected_) {
    // Kept for the next peer: its on_host_connected(true) restarts this (host_changed), and
    // takes the chains the driver added meanwhile if notifications were off.
    tx_wait_ = FlowWait::kHostDisconnected;
    set_want_output(false);
    return;
  }
  bool blocked = false;
  // Ring first (console output and emergency writes, older than anything held).
  while (!ring_.empty()) {
    std::array<iovec, 2> ring_iov;
    const size_t k = ring_.peek(ring_iov);
    const ssize_t n = backend_->writev(std::span(ring_iov.data(), k));
    if (n < 0) {
      // The peer left; its disconnect event follows and the next connect restarts this.
      tx_wait_ = FlowWait::kHostDisconnected;
      set_want_output(false);
      return;
    }
    if (n == 0) {
      blocked = true;
      break;
    }
    ring_.consume(static_cast<size_t>(n));
    bytes_to_host_ += static_cast<size_t>(n);
  }
  Queue* q = link_.usable_queue(port_tx_queue(id_));
  // Transmit notifications are off while the backend is full (below): the chains the driver
  // added meanwhile are taken here, on the backend's wakeup.
  if (q != nullptr && !q->notification_enabled()) take_tx(*q);
  std::vector<iovec>& iov = shared_.scratch_iov;
  bool pushed = false;
  bool gone = false;
  while (!blocked && q != nullptr && !tx_held_.empty()) {
    // Gather the held chains (from their offsets) into one writev.
    iov.clear();
    size_t offered = 0;
    for (size_t i = 0; i < tx_held_.size() && iov.size() < kMaxIov; ++i) {
      const auto& held = tx_held_.at(i);
      size_t skip = held.offset;  // bytes of this chain already written
      for (const iovec& v : held.chain.readable()) {
        if (iov.size() == kMaxIov) break;
        if (skip >= v.iov_len) {
          skip -= v.iov_len;
          continue;
        }
        iov.push_back({static_cast<uint8_t*>(v.iov_base) + skip, v.iov_len - skip});
        offered += v.iov_len - skip;
        skip = 0;
      }
    }
    const ssize_t n = backend_->writev(iov);
    if (n < 0) {
      gone = true;  // the peer left: the chains wait for the next one
      break;
    }
    size_t left = static_cast<size_t>(n);
    bytes_to_host_ += left;
    tx_held_bytes_ -= left;
    while (left > 0) {
      auto& held = tx_held_.front();
      const size_t rest = held.chain.readable_length() - held.offset;
      if (left < rest) {
        held.offset += left;
        break;
      }
      left -= rest;
      // Every byte of it reached the backend: only now does the guest get the buffer back.
      pushed |= q->push(std::move(held.chain), 0);
      tx_held_.discard_front();
    }
    if (static_cast<size_t>(n) < offered) blocked = true;  // full: wait for on_writable
  }
  if (pushed) link_.signal(*q);
  // Stop points: backend full -> on_writable (want_output(true), level-triggered); peer gone ->
  // the next peer's on_host_connected(true); no queue -> the driver's kick after DRIVER_OK.
  tx_wait_ = blocked                             ? FlowWait::kBackendNotWritable
             : gone                              ? FlowWait::kHostDisconnected
             : q == nullptr && !tx_held_.empty() ? FlowWait::kNoDriver
                                                 : FlowWait::kMoving;
  set_want_output(blocked);
  if (q == nullptr) return;
  if (blocked && !tx_held_.empty()) {
    // Stop popping the transmit queue: on_writable wakes the device, which then takes what the
    // driver added (take_tx above): no kick is needed meanwhile (each is an exit; on kvm_pvm
    // it costs the vCPU 0.1-1 ms). With EVENT_IDX avail_event stays where it was.
    if (q->notification_enabled()) q->disable_notification();
  } else if (!blocked && tx_held_.empty() && !q->notification_enabled() &&
             q->enable_notification()) {
    // All written and kicks asked for again, but chains came while they were off. Once more
    // (notifications are on now, so this recurses at most once).
    generic_tx(*q);
  }
}

// ---------------------------------------------------------------------------------------------
// Removal, reset, stats.

void Port::release_guest_bytes() {
  assert_io_role(link_.role_owner());
  flush_out();  // one last non-blocking attempt for what the guest already handed over
  const uint64_t lost = ring_.size() + tx_held_bytes_;
  if (lost > 0) {
    bytes_discarded_ += lost;
    if (shared_.discard_logged.first()) {
      log::warn(
          "virtio-console: port {} removed with {} bytes from the guest not yet written "
          "to {}; they are discarded",
          id_, lost, backend_description_);
    }
  }
  ring_.clear();
  // Complete the held tx chains so the guest gets its buffers back (Linux frees buffers of an
  // unplugged port as they come back).
  Queue* q = link_.usable_queue(port_tx_queue(id_));
  bool pushed = false;
  while (!tx_held_.empty()) {
    auto held = tx_held_.pop_front();
    if (q != nullptr) pushed |= q->push(std::move(held.chain), 0);
  }
  tx_held_bytes_ = 0;
  if (pushed) link_.signal(*q);
  // The queues go back to kick-driven work (orphan transmit, rx buffers kept for a later port).
  if (q != nullptr && !q->notification_enabled() && q->enable_notification()) link_.orphan_tx(*q);
  if (Queue* rq = link_.usable_queue(port_rx_queue(id_));
      rq != nullptr && !rq->notification_enabled()) {
    (void)rq->enable_notification();
  }
}

void Port::forget_guest() {
  set_guest_connected(false);
  add_sent_ = ready_ = announced_host_ = false;
  // Both directions restart from the driver's kicks after its next DRIVER_OK.
  rx_wait_ = tx_wait_ = FlowWait::kNoDriver;
  if (tx_held_bytes_ > 0) {
    // The driver went away (reset) with bytes of a write() still held: its buffers are gone.
    bytes_discarded_ += tx_held_bytes_;
    if (shared_.discard_logged.first()) {
      log::warn(
          "virtio-console: device reset with {} bytes of port {} not yet written; "
          "discarded",
          tx_held_bytes_, id_);
    }
  }
  tx_held_.clear();
  tx_held_bytes_ = 0;
}

PortStats Port::stats() const {
  PortStats s;
  s.id = id_;
  s.name = name_;
  s.console = console_;
  s.backend = backend_description_;
  s.host_connected = host_connected_;
  s.guest_ready = ready_;
  s.guest_connected = guest_connected_;
  s.bytes_to_guest = bytes_to_guest_;
  s.bytes_lost = backend_->bytes_lost();  // atomic in the backends: safe from any thread
  s.bytes_from_guest = bytes_from_guest_;
  s.bytes_to_host = bytes_to_host_;
  s.bytes_buffered = tx_held_bytes_ + ring_.size();
  s.console_bytes_dropped = ring_.dropped();
  s.bytes_discarded = bytes_discarded_;
  s.host_connects = host_connects_;
  s.tx_chains_held = tx_held_.size();
  s.rx_buffers_held = rx_held_.size();
  s.to_guest_wait = rx_wait_;
  s.to_host_wait = tx_wait_;
  return s;
}

// ---------------------------------------------------------------------------------------------
// Names for logs and the API.

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

}  // namespace pier::virtio::console
