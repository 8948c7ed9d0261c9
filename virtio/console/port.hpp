#pragma once
// One virtio-console port: its host-side backend and its two data queues - receiveq (host ->
// guest) and transmitq (guest -> host) - with their flow control, the console output ring, the
// byte counters and the per-run work budgets. The console contract's data items (DESIGN.md):
//
//  2. Host->guest (pump_rx): bytes are read from the backend only into rx buffers the guest
//     posted, and only while the guest has the port open; no buffer -> want_input(false), so
//     the host writer feels it. readv goes straight into the chains' writable iovecs.
//  3. Guest->host on generic ports (generic_tx, flush_out): a tx chain is held (with its offset)
//     until all its bytes reached the backend and only then marked used; a full backend
//     throttles the guest's writes, never the VMM. Held chains wait for the next client, in
//     order. writev goes straight from the chains' iovecs.
//  4. Console ports (console_tx) complete tx at once (hvc busy-waits); what the backend does
//     not take goes to the bounded OutputRing, replayed to the next client, oldest bytes
//     dropped and counted when full.
//
// Every stop of a direction records (FlowWait) the one event that restarts it. One run (a kick,
// a backend event, a continuation) does at most kChainsPerRun chains per queue and, receiving,
// kRxBytesPerRun bytes, then asks the device for a continuation (DeviceLink::continue_later).
//
// Ownership and threads. The ConsoleDevice owns its ports (one object per incarnation of a port
// id: remove_port + add_port makes a new one, told apart by serial()) and each port owns its
// backend and the backend's listener. The receive buffers the port holds belong to the id
// (they outlive incarnations: the guest keeps its queues across PORT_REMOVE/PORT_ADD), so the
// device lends them (rx_held). Everything here runs on the I/O thread inside the device's
// dispatch, with the device lock held; the functions that touch a queue or the backend check
// that (thread_role.hpp, every build). The exceptions, which only change state under the
// lock: forget_guest() (activate/reset), buffer_emergency_byte() (a vCPU's config write),
// stats() (any thread).
//
// The control protocol's view of the port (guest_ready, add_sent, announced_host) is kept here
// because it lives and dies with the incarnation; the ControlEndpoint is what changes it.
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "devices/chardev/port_backend.hpp"
#include "virtio/chain.hpp"
#include "virtio/console/device_link.hpp"
#include "virtio/console/fifo.hpp"
#include "virtio/console/output_ring.hpp"
#include "virtio/console/types.hpp"
#include "virtio/queue.hpp"
#include "vmm/event_loop.hpp"

namespace pier::virtio::console {

// Work per queue per run (one notification, one backend event or one continuation): at most
// this many chains, and on the receive path this many bytes. A guest that keeps advancing
// avail.idx, or a host peer that never stops sending, would otherwise keep the single I/O
// thread in one loop while the API, the other ports, the serial console and SIGTERM wait. The
// rest runs in a continuation posted behind the events waiting meanwhile.
inline constexpr size_t kChainsPerRun = 256;
inline constexpr size_t kRxBytesPerRun = 1 << 20;
// Rx buffers gathered into one readv (Linux posts 4 KiB buffers: 64 KiB per syscall).
inline constexpr size_t kRxBatch = 16;
// Segments per readv/writev (well under IOV_MAX).
inline constexpr size_t kMaxIov = 64;

// One run over a queue whose chains are completed at once (console transmit, control
// transmit, orphaned transmit): pops at most kChainsPerRun chains and hands each to `complete`,
// which pushes it back to `queue` and returns what Queue::push returned; then signals the queue
// once, and asks the device for a continuation when the budget ran out. Returns whether it did.
template <class Complete>
bool complete_chains(DeviceLink& link, Queue& queue, Complete&& complete) {
  bool pushed = false;
  size_t chains = 0;
  while (chains < kChainsPerRun) {
    auto chain = queue.pop();
    if (!chain) break;
    ++chains;
    pushed |= complete(std::move(*chain));
  }
  if (pushed) link.signal(queue);
  const bool yielded = chains == kChainsPerRun;
  if (yielded) link.continue_later(queue.index());  // the rest after the events waiting
  return yielded;
}

class Port {
 public:
  // `config` was validated by the device (it has a backend). `rx_held` is the id's store of
  // popped receive buffers, which outlives the port; `link` and `shared` outlive it too.
  Port(DeviceLink& link, PortShared& shared, Fifo<Chain>& rx_held, uint32_t id, uint64_t serial,
       PortConfig config, size_t console_ring_bytes);
  ~Port();
  Port(const Port&) = delete;
  Port& operator=(const Port&) = delete;

  // Starts the backend on `loop`, reporting to `listener` (which the port keeps alive for as
  // long as the backend exists), and takes its initial state. Setup errors propagate.
  void start(EventLoop& loop, std::unique_ptr<chardev::PortBackend::Listener> listener);
  // Stops the backend (it calls the listener no more). Idempotent.
  void stop_backend();

  uint32_t id() const { return id_; }
  uint64_t serial() const { return serial_; }
  const std::string& name() const { return name_; }
  bool console() const { return console_; }
  const std::string& backend_description() const { return backend_description_; }
  bool host_connected() const { return host_connected_; }
  uint16_t cols() const { return cols_; }
  uint16_t rows() const { return rows_; }
  void set_size(uint16_t cols, uint16_t rows) {
    cols_ = cols;
    rows_ = rows;
  }

  // ---- The guest's side, as the control protocol left it (reset with the driver).
  // PORT_READY(1) received: the guest driver has this port. Until then its tx is orphaned.
  bool guest_ready() const { return ready_; }
  void set_guest_ready(bool ready) { ready_ = ready; }
  // The guest has the port open (PORT_OPEN(1) from the guest; console ports: hvc up). Changes
  // are port events.
  bool guest_connected() const { return guest_connected_; }
  void set_guest_connected(bool open);
  // PORT_ADD queued for this incarnation since activation (or implied by a restored driver).
  bool add_sent() const { return add_sent_; }
  void set_add_sent(bool sent) { add_sent_ = sent; }
  // host_connected() as last queued to the guest in a PORT_OPEN.
  bool announced_host() const { return announced_host_; }
  void set_announced_host(bool connected) { announced_host_ = connected; }

  // ---- Data path (I/O thread, device dispatch).
  // Host -> guest: moves backend bytes into the guest's receive buffers, as far as buffers,
  // bytes and this run's budget go, and sets the backend's input interest accordingly.
  void pump_rx();
  // Guest -> host on a console port: takes every chain (up to the budget), writes what the
  // backend takes, rings the rest, and completes each chain at once.
  void console_tx(Queue& queue);
  // Guest -> host on a generic port: takes every chain into the held list, then flush_out().
  void generic_tx(Queue& queue);
  // Writes what the port holds (ring first, then held chains from their offsets) as far as the
  // backend takes it, completing chains whose bytes all went out.
  void flush_out();
  // The backend's peer attached or left: counts it, replays held output, restarts input. (The
  // device then tells the guest through the control endpoint.)
  void host_changed(bool connected);
  // The port is being removed: one last non-blocking write of what the guest handed over, the
  // rest discarded (counted, logged once), held tx chains completed so the guest gets its
  // buffers back, and both queues back to kick-driven work.
  void release_guest_bytes();

  // ---- State changes only, no queue or backend (any role, device lock held).
  // The driver went away (reset) or came back (activate): the guest-side state is forgotten,
  // bytes of held writes are discarded (their buffers are gone with the driver).
  void forget_guest();
  // An emergency write's byte (vCPU thread): into the ring, flushed later on the I/O thread.
  void buffer_emergency_byte(uint8_t byte);

  // Any thread, device lock held.
  PortStats stats() const;
  FlowWait rx_wait() const { return rx_wait_; }
  FlowWait tx_wait() const { return tx_wait_; }

 private:
  struct HeldTx {
    Chain chain;
    size_t offset = 0;  // bytes of the chain's readable part already written to the backend
  };

  void take_tx(Queue& queue);
  void ring_push(std::span<const uint8_t> bytes);
  void log_ring_drop() const;
  void set_want_input(bool on);
  void set_want_output(bool on);

  DeviceLink& link_;
  PortShared& shared_;
  Fifo<Chain>& rx_held_;  // rx buffers popped and not filled yet, in ring order (the id's)

  const uint32_t id_;
  const uint64_t serial_;  // this incarnation of the id (ids are reused after remove_port)
  const std::string name_;
  const bool console_;
  // The listener outlives the backend (members die in reverse order): the backend's destructor
  // stops it while the listener it was given still exists.
  std::unique_ptr<chardev::PortBackend::Listener> listener_;
  std::unique_ptr<chardev::PortBackend> backend_;
  std::string backend_description_;

  bool host_connected_ = false;
  // Guest-side state, reset with the driver.
  bool add_sent_ = false;
  bool ready_ = false;
  bool guest_connected_ = false;
  bool announced_host_ = false;
  // Backend interest (want_input / want_output) as last requested; !known forces the next
  // request through (at start, and after a connect event, when the backend may have reset its
  // own).
  struct Interest {
    bool on = false;
    bool known = false;
    // Records `want`; returns whether the backend must be told.
    bool change(bool want) {
      if (known && on == want) return false;
      on = want;
      known = true;
      return true;
    }
  };
  Interest input_interest_, output_interest_;
  // What each direction waits for since the last pass over it (stats; see FlowWait).
  FlowWait rx_wait_ = FlowWait::kNoDriver, tx_wait_ = FlowWait::kNoDriver;
  uint16_t cols_ = 0, rows_ = 0;

  Fifo<HeldTx> tx_held_;
  uint64_t tx_held_bytes_ = 0;  // unwritten bytes in tx_held_
  OutputRing ring_;

  uint64_t bytes_to_guest_ = 0, bytes_from_guest_ = 0, bytes_to_host_ = 0, bytes_discarded_ = 0,
           host_connects_ = 0;
};

}  // namespace pier::virtio::console
