#pragma once
// A queue, its fake driver and an error recorder in fake guest RAM, for the queue tests.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "unit/virtio/fake_driver.hpp"

namespace pier::virtio::testing {

inline constexpr uint64_t kAllFeatures = kQueueFeatures;
inline constexpr uint64_t kNoEventIdx = kFeatureVersion1 | kFeatureRingIndirectDesc;

class ErrorRecorder : public QueueErrorHandler {
 public:
  void on_queue_error(const Queue& queue) override {
    errors.push_back(queue.error());
    messages.push_back(queue.describe_fault());
  }
  std::vector<QueueError> errors;
  std::vector<std::string> messages;
};

struct QueueFixture {
  explicit QueueFixture(uint16_t size = 256, uint64_t features = kAllFeatures,
                        uint64_t ram = 64ull << 20, uint16_t max_size = 256)
      : guest(ram), queue(0, max_size), driver(guest, queue, size), features(features) {
    queue.set_error_handler(&recorder);
    driver.set_features(features);
  }

  bool activate() { return queue.activate(guest.memory(), features); }

  // What a transport does on a guest reset followed by a fresh initialization.
  bool reset_and_reactivate() {
    queue.reset();
    driver.reinit();
    return activate();
  }

  FakeGuest guest;
  Queue queue;
  FakeQueueDriver driver;
  uint64_t features;
  ErrorRecorder recorder;
};

}  // namespace pier::virtio::testing
