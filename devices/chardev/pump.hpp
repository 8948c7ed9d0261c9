#pragma once
// Connects a chardev Backend to the I/O thread's event loop: buffered, non-blocking output with
// backpressure, and input with flow control. The device side calls write()/resume_input() from
// vCPU threads; the backend is only touched under the pump's lock or on the I/O thread.
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "devices/chardev/backend.hpp"
#include "vmm/event_loop.hpp"

namespace pier::chardev {

class Pump {
 public:
  // `soft_limit`: buffered output above which has_space() turns false (the device should then
  // throttle the guest); `hard_limit`: above it bytes are dropped and counted, never blocked on.
  Pump(std::unique_ptr<Backend> backend, EventLoop& loop, size_t soft_limit = 64 * 1024,
       size_t hard_limit = 4 * 1024 * 1024);
  ~Pump();
  Pump(const Pump&) = delete;
  Pump& operator=(const Pump&) = delete;

  // Queues or writes `data`. Never blocks.
  void write(std::span<const uint8_t> data);
  bool has_space() const;
  uint64_t dropped_bytes() const;
  // Bytes the backend accepted and then lost to a write error (Backend::bytes_lost()).
  uint64_t bytes_lost() const;
  // Output taken but not yet written to the backend.
  size_t pending_bytes() const;
  // Called on the I/O thread when buffered output drains below the soft limit.
  void set_on_space(std::function<void()> fn);

  // `consume` gets host input on the I/O thread and returns how many bytes it took; the rest is
  // held and input is paused until resume_input().
  void set_input_handler(std::function<size_t(std::span<const uint8_t>)> consume);
  void resume_input();

  Backend& backend() { return *backend_; }

 private:
  void flush_locked();
  void on_output_ready();
  void on_input_ready();
  void deliver_held_input();
  void schedule_file_input();

  std::unique_ptr<Backend> backend_;
  EventLoop& loop_;
  const size_t soft_limit_;
  const size_t hard_limit_;

  mutable std::mutex mutex_;
  std::deque<uint8_t> out_;
  bool watching_output_ = false;
  bool was_full_ = false;
  uint64_t dropped_ = 0;
  std::function<void()> on_space_;

  std::function<size_t(std::span<const uint8_t>)> consume_;
  std::vector<uint8_t> held_input_;
  bool input_paused_ = false;
  bool input_registered_ = false;
  // Input from a regular file or /dev/null: epoll cannot watch it and it is always readable, so
  // reads are scheduled on the loop until end of file or until the device pushes back.
  bool input_always_ready_ = false;
  bool input_done_ = false;
  bool output_registered_ = false;
};

}  // namespace pier::chardev
