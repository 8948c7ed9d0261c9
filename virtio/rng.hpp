#pragma once
// virtio-rng (entropy device, virtio 1.2 §5.4): one request queue; every writable buffer the
// driver posts is filled from the host's getrandom(2). Linux drives it with virtio_rng, which
// feeds the kernel's hwrng (/dev/hwrng). pier's first virtio device: small, real, and enough to
// exercise the transport end to end.
#include <cstddef>
#include <cstdint>

#include "virtio/device.hpp"
#include "virtio/virtio.hpp"

namespace pier::virtio {

class RngDevice final : public Device {
 public:
  // `requests_per_run`: buffers served per notification before the device asks for another
  // (Interrupt::notify_again), so a guest that re-posts as fast as the device completes cannot
  // keep the I/O thread here.
  explicit RngDevice(size_t requests_per_run = 256) : requests_per_run_(requests_per_run) {}

  std::string_view name() const override { return "virtio-rng"; }
  uint32_t device_id() const override { return kDeviceIdEntropy; }
  uint64_t device_features() const override;
  bool ack_features(uint64_t) override { return true; }
  size_t config_size() const override { return 0; }
  void read_config(uint64_t offset, std::span<uint8_t> out) override;
  void write_config(uint64_t, std::span<const uint8_t>) override {}
  size_t num_queues() const override { return 1; }
  uint16_t queue_max_size(size_t) const override { return 256; }
  void activate(std::span<Queue> queues, Interrupt& interrupt) override;
  void reset() override;
  void queue_notify(uint16_t index) override;

  uint64_t bytes_served() const { return bytes_served_; }

 private:
  Queue* queue_ = nullptr;
  Interrupt* interrupt_ = nullptr;
  uint64_t bytes_served_ = 0;
  const size_t requests_per_run_;
};

}  // namespace pier::virtio
