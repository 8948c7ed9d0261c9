#pragma once
// A virtio device as its transports see it. It knows nothing of PCI or MMIO: transports own the
// registers, the notify addresses, ioeventfd/irqfd wiring, the status byte and the Queue
// objects; the device owns its feature bits, its config space and what happens on its queues.
//
// Lifecycle, as the transport drives it (virtio 1.2 3.1.1 "Driver Requirements: Device
// Initialization"):
//   device_features() -> ack_features() at FEATURES_OK -> queues configured by the driver
//   -> activate() at DRIVER_OK -> queue_notify() ... -> reset() when the driver writes status 0
//   (and again activate() after a new initialization).
//
// Threads. A device's queues belong to the I/O thread (the one event loop that also drives the
// device's backends); the transport makes sure nothing else touches them:
//  - activate(), reset() and queue_notify() run on the I/O thread, one at a time, never
//    concurrently with each other or with the device's backend callbacks. The driver's register
//    writes that cause activate()/reset() (DRIVER_OK, status 0) and the activation of a queue
//    enabled after DRIVER_OK happen on a vCPU thread, which hands the work to the I/O thread
//    (PciPlatform::run_on_io_thread) and waits for it with the transport's lock held. When the
//    I/O thread is not dispatching (before the machine runs, after it stops, at teardown, in
//    unit tests without a loop thread) they run on the calling thread instead, still never
//    concurrently with the loop (EventLoop::call). So after the driver's status-0 write returns,
//    the device is out of queue_notify() and never pushes to a queue of the old configuration.
//  - device_features(), ack_features(), read_config(), write_config() run on a vCPU thread with
//    the transport's lock held (possibly while the I/O thread is in queue_notify()); they must
//    not touch the queues or the Interrupt. Devices with host-side state shared between the two
//    (the console) lock it themselves.
//  - A notify write that reaches the transport on the MMIO exit path (no ioeventfd matched)
//    signals that queue's ioeventfd instead of calling the device.
// Debug builds assert that the transport's calls into the device never overlap.
//
// Errors caused by the guest never throw out of these calls (DESIGN.md "Conventions"): queue
// errors reach the transport through the Queue's QueueErrorHandler (NEEDS_RESET), nonsense in
// config writes or in device-specific messages is logged once and ignored.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

#include "virtio/interrupt.hpp"
#include "virtio/queue.hpp"

namespace pier::virtio {

class Device {
 public:
  virtual ~Device() = default;

  // For log lines: "virtio-console".
  virtual std::string_view name() const = 0;
  // The virtio device id (kDeviceIdConsole = 3, ...).
  virtual uint32_t device_id() const = 0;

  // Every feature bit the device offers, including the queue and transport ones it supports
  // (normally kQueueFeatures | device bits).
  virtual uint64_t device_features() const = 0;
  // The driver's features at FEATURES_OK. The transport has already checked that they are a
  // subset of device_features() and include VIRTIO_F_VERSION_1. Returns false to refuse them
  // (the transport then leaves FEATURES_OK clear).
  virtual bool ack_features(uint64_t driver_features) = 0;

  // Device-specific configuration space ("Device Configuration Space"), accessed at any byte
  // offset with any width. Bytes beyond config_size() read as 0 and ignore writes (see
  // read_config_bytes()).
  virtual size_t config_size() const = 0;
  virtual void read_config(uint64_t offset, std::span<uint8_t> out) = 0;
  virtual void write_config(uint64_t offset, std::span<const uint8_t> in) = 0;

  // Number of queues and each one's maximum size (a power of two <= 32768, never 0: Linux's
  // console driver creates every queue at probe and fails on a size-0 one).
  virtual size_t num_queues() const = 0;
  virtual uint16_t queue_max_size(size_t index) const = 0;

  // DRIVER_OK: start using `queues` (indexed like the device's queue numbers, num_queues()
  // long; a queue the driver did not enable has ready() == false, and may become ready later,
  // between two I/O-thread calls) and `interrupt`. Both stay valid until reset() returns. The
  // device may keep popped chains across calls. On the I/O thread.
  virtual void activate(std::span<Queue> queues, Interrupt& interrupt) = 0;

  // Device reset (status 0, or the transport tearing down). When it returns the device no longer
  // touches the queues or the interrupt, and has dropped every chain it held (after the
  // transport resets the queues, pushing such a chain would be ignored anyway). Back to the
  // state after construction, except for host-side backends, which stay connected. On the I/O
  // thread.
  virtual void reset() = 0;

  // The driver made buffers available on queue `index` (an available-buffer notification).
  // Called on the I/O thread. Dispatch should be cheap: index arithmetic, no lookup.
  virtual void queue_notify(uint16_t index) = 0;
};

// Helper for read_config(): copies [offset, offset + out.size()) of `config` into `out`, reading
// zeros beyond its end, with no overflow for any offset.
inline void read_config_bytes(std::span<const uint8_t> config, uint64_t offset,
                              std::span<uint8_t> out) {
  std::fill(out.begin(), out.end(), uint8_t{0});
  if (offset >= config.size()) return;
  const size_t n = std::min<uint64_t>(out.size(), config.size() - offset);
  std::memcpy(out.data(), config.data() + offset, n);
}

// Helper for write_config(): copies `in` into [offset, ...) of `config`, dropping bytes beyond
// its end. Returns the number of bytes written.
inline size_t write_config_bytes(std::span<uint8_t> config, uint64_t offset,
                                 std::span<const uint8_t> in) {
  if (offset >= config.size()) return 0;
  const size_t n = std::min<uint64_t>(in.size(), config.size() - offset);
  std::memcpy(config.data() + offset, in.data(), n);
  return n;
}

}  // namespace pier::virtio
