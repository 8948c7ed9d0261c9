#pragma once
// The device's end of the virtio-console control queues (virtio 1.2 §5.3.6.2): the control
// message state machine of a multiport device, as Linux's drivers/char/virtio_console.c drives
// it. The wire format (encode/parse) is control.hpp's; this is what the messages mean:
//
//  - driver -> device (control transmitq, receive()): DEVICE_READY(1) -> PORT_ADD for every
//    port in id order; PORT_READY(1) -> the answer for that port in QEMU's order (CONSOLE_PORT,
//    PORT_NAME, PORT_OPEN if a host peer is attached, RESIZE if known); PORT_READY(0) -> the
//    port's tx is orphaned; PORT_OPEN(0/1) -> the guest closed/opened the port. Every id, event,
//    value and length is validated; nonsense is counted (control_ignored) and logged once per
//    kind. Each buffer is completed at once (Linux's __send_control_msg() spins on it).
//  - device -> driver (control receiveq, deliver()): messages wait on the host until the guest
//    posts a buffer, one message per buffer (Linux parses one header per buffer), never dropped.
//    Buffers too small for a header are kept unused until the next reset.
//  - bounded by construction: at most one pending message per (port incarnation, kind) plus one
//    PORT_REMOVE per id. A newer state replaces or cancels an undelivered one (RESIZE carries
//    the newest size; a PORT_OPEN that undoes an undelivered one withdraws it), a PORT_READY is
//    answered only when no earlier answer is still waiting, and removing a port withdraws its
//    messages. So at most ~6 * max_nr_ports messages (about 3000 for 511 ports).
//  - the guest's view of each id: the incarnation whose PORT_READY was last taken, kept across
//    resets (a driver restored from hibernation keeps its ports) so a restored driver that
//    still has a replaced port is told PORT_REMOVE + PORT_ADD before its queues change hands.
//
// Owned by ConsoleDevice; reaches the ports and the queues through its DeviceLink. Threads:
// everything runs on the I/O thread inside the device's dispatch (device lock held) and checks
// it (thread_role.hpp, every build), except activate()/reset()/set_features(), which only
// change state (the device calls them under its lock), and the stats getters (any thread,
// device lock held).
#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <span>
#include <vector>

#include "virtio/chain.hpp"
#include "virtio/console/control.hpp"
#include "virtio/console/device_link.hpp"
#include "vmm/log.hpp"

namespace pier::virtio::console {

class Port;

class ControlEndpoint {
 public:
  ControlEndpoint(DeviceLink& link, uint32_t max_ports, ResizeLayout resize_layout);

  // ---- Driver lifecycle (state only).
  // The driver's features (VIRTIO_CONSOLE_F_SIZE decides whether RESIZE is sent).
  void set_features(uint64_t features) { features_ = features; }
  // DRIVER_OK: the control queues are in use iff MULTIPORT was negotiated. Undelivered
  // messages are dropped (they belonged to the previous driver).
  void activate(bool multiport);
  // Device reset: no control queues; buffers kept unused are given up too.
  void reset();
  // The control queues are in use (activated with MULTIPORT).
  bool enabled() const { return enabled_; }
  // DEVICE_READY(1) seen since activation: ports are announced as they are added.
  bool driver_ready() const { return driver_ready_; }

  // ---- Queue work (I/O thread).
  // The control transmitq: reads and acts on the driver's messages (up to kChainsPerRun), then
  // delivers what they caused.
  void receive();
  // The control receiveq: places pending messages in the buffers the guest posted.
  void deliver();

  // ---- Host-side changes the guest hears about (I/O thread). Each delivers what it queued.
  // A port was added while the driver is up: PORT_ADD.
  void port_added(Port& port);
  // The port's host_connected() changed: PORT_OPEN with the new state, or the withdrawal of an
  // undelivered PORT_OPEN that said the opposite.
  void host_changed(Port& port);
  // A console port's size changed: RESIZE (coalesced), if the guest has the port and F_SIZE.
  void size_changed(Port& port);
  // The port is being removed: its undelivered messages are withdrawn, and PORT_REMOVE goes out
  // if the guest may know it.
  void port_removed(Port& port);

  // ---- Stats (device lock held).
  size_t pending() const { return pending_.size(); }
  uint64_t delivered() const { return delivered_; }
  uint64_t received() const { return received_; }
  uint64_t ignored() const { return ignored_; }

 private:
  void handle_driver_message(std::span<const uint8_t> bytes);
  void handle_port_ready(Port& port, bool ok);
  void handle_port_open(Port& port, bool open);
  void answer_port_ready(Port& port);
  void queue(ControlMessage message);
  void queue_port_add(Port& port);
  void queue_resize(Port& port);
  // Withdraws undelivered messages of port incarnation `serial`; returns whether a PORT_ADD
  // was among them.
  bool withdraw(uint64_t serial);
  void ignore();

  DeviceLink& link_;
  const uint32_t max_ports_;
  const ResizeLayout resize_layout_;

  uint64_t features_ = 0;
  bool enabled_ = false;
  bool driver_ready_ = false;
  std::deque<ControlMessage> pending_;
  std::vector<Chain> unusable_rx_;  // control-rx buffers < 8 bytes (until reset)
  // Per port id: the incarnation whose PORT_READY was last taken, the port the guest driver has
  // (0: none known). Kept across resets, since a driver restored from hibernation keeps its
  // ports.
  std::vector<uint64_t> guest_serial_;

  uint64_t delivered_ = 0, received_ = 0, ignored_ = 0;

  // Log-once flags: one per kind of guest nonsense, per device.
  std::array<log::OnceFlag, 8> parse_logged_;
  log::OnceFlag unknown_port_logged_, not_ready_logged_, device_ready_fail_logged_,
      device_ready_dup_logged_, port_ready_fail_logged_, early_ready_logged_, short_buffer_logged_,
      name_cut_logged_;
};

}  // namespace pier::virtio::console
