#include "virtio/rng.hpp"

#include <sys/random.h>

#include <array>

#include "virtio/virtio.hpp"

namespace pier::virtio {

uint64_t RngDevice::device_features() const {
  return kQueueFeatures;
}

void RngDevice::read_config(uint64_t offset, std::span<uint8_t> out) {
  read_config_bytes({}, offset, out);
}

void RngDevice::activate(std::span<Queue> queues, Interrupt& interrupt) {
  queue_ = queues.empty() ? nullptr : &queues[0];
  interrupt_ = &interrupt;
}

void RngDevice::reset() {
  queue_ = nullptr;
  interrupt_ = nullptr;
}

void RngDevice::queue_notify(uint16_t index) {
  if (index != 0 || queue_ == nullptr || !queue_->ready()) return;
  bool pushed = false;
  size_t served = 0;
  while (true) {
    if (served == requests_per_run_) {
      // The rest after the I/O thread's other events (Interrupt::notify_again).
      if (queue_->has_available()) interrupt_->notify_again(0);
      break;
    }
    auto chain = queue_->pop();
    if (!chain) break;
    ++served;
    // At most 64 KiB per request: Linux asks for small amounts; a huge buffer gets a part.
    size_t want = std::min<size_t>(chain->writable_length(), 64 * 1024);
    size_t written = 0;
    std::array<uint8_t, 4096> buf;
    while (written < want) {
      const size_t n = std::min(buf.size(), want - written);
      const ssize_t got = ::getrandom(buf.data(), n, GRND_NONBLOCK);
      if (got <= 0) break;
      written += chain->copy_to(written, std::span(buf.data(), static_cast<size_t>(got)));
    }
    bytes_served_ += written;
    queue_->push(std::move(*chain), static_cast<uint32_t>(written));
    pushed = true;
  }
  if (pushed && queue_->should_interrupt()) interrupt_->signal_queue(0);
}

}  // namespace pier::virtio
