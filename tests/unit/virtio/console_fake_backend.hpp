#pragma once
// An in-memory chardev::PortBackend for console device tests and benchmarks: the "host peer"
// is a pair of strings, the peer's appetite is a byte budget, and connect / disconnect /
// readiness are driven by the test, which calls the device's Listener the way a real backend
// does on the I/O thread. The device owns the backend, so the test keeps the shared State.
// Header-only and free of GoogleTest.
#include <sys/uio.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "devices/chardev/port_backend.hpp"

namespace pier::virtio::testing {

class FakePortBackend final : public chardev::PortBackend {
 public:
  struct State {
    Listener* listener = nullptr;
    bool started = false;
    bool stopped = false;
    bool connected = true;
    std::string input;   // sent by the host peer, not read by the device yet
    std::string output;  // written by the device to the peer
    // Bytes the peer takes before it is "full" (writev then takes fewer / none).
    size_t write_budget = SIZE_MAX;
    bool want_input = false;
    bool want_output = false;
    size_t readv_calls = 0, writev_calls = 0, want_input_calls = 0, want_output_calls = 0;
    // The next readv finds the peer gone: reports on_host_connected(false) from inside readv
    // (a re-entrant callback) and returns -1.
    bool hang_up_in_next_readv = false;
    // Input is handed out at most this many bytes per readv (a slow producer).
    size_t max_read = SIZE_MAX;
    // Runs at the start of every readv, writev and want_* call: the guest (another thread in
    // a real machine) acting while the device is in the middle of its work. It must not call
    // into the device (its lock is held); kicks it wants to send are the test's to deliver
    // later.
    std::function<void()> during_call;

    // ---- The test acting as the host peer / I/O thread.
    void connect() {
      connected = true;
      if (listener) listener->on_host_connected(true);
    }
    void disconnect() {
      connected = false;
      if (listener) listener->on_host_connected(false);
    }
    // The peer sends bytes; the backend reports readability if the device asked for it.
    void send(std::string_view bytes) {
      input.append(bytes);
      if (want_input && listener) listener->on_readable();
    }
    // The peer reads `n` more bytes' worth: room again, reported if the device asked.
    void make_room(size_t n) {
      write_budget = write_budget == SIZE_MAX ? SIZE_MAX : write_budget + n;
      if (want_output && listener) listener->on_writable();
    }
    std::string take_output() {
      std::string out;
      out.swap(output);
      return out;
    }
  };

  explicit FakePortBackend(std::shared_ptr<State> state, std::string description = "fake")
      : state_(std::move(state)), description_(std::move(description)) {}
  ~FakePortBackend() override { stop(); }

  void start(EventLoop&, Listener& listener) override {
    state_->listener = &listener;
    state_->started = true;
  }
  bool host_connected() const override { return state_->connected; }
  ssize_t readv(std::span<const iovec> iov) override {
    State& s = *state_;
    if (s.during_call) s.during_call();
    ++s.readv_calls;
    if (s.hang_up_in_next_readv) {
      s.hang_up_in_next_readv = false;
      s.disconnect();
      return -1;
    }
    if (!s.connected) return -1;
    size_t left = std::min(s.input.size(), s.max_read), done = 0;
    for (const iovec& v : iov) {
      if (left == 0) break;
      const size_t n = std::min(left, v.iov_len);
      std::memcpy(v.iov_base, s.input.data() + done, n);
      done += n;
      left -= n;
    }
    s.input.erase(0, done);
    return static_cast<ssize_t>(done);
  }
  ssize_t writev(std::span<const iovec> iov) override {
    State& s = *state_;
    if (s.during_call) s.during_call();
    ++s.writev_calls;
    if (!s.connected) return -1;
    size_t done = 0;
    for (const iovec& v : iov) {
      const size_t n = std::min(v.iov_len, s.write_budget);
      s.output.append(static_cast<const char*>(v.iov_base), n);
      done += n;
      if (s.write_budget != SIZE_MAX) s.write_budget -= n;
      if (n < v.iov_len) break;
    }
    return static_cast<ssize_t>(done);
  }
  void want_input(bool on) override {
    if (state_->during_call) state_->during_call();
    ++state_->want_input_calls;
    state_->want_input = on;
  }
  void want_output(bool on) override {
    if (state_->during_call) state_->during_call();
    ++state_->want_output_calls;
    state_->want_output = on;
  }
  std::string describe() const override { return description_; }
  // Overrides PortBackend::address() where the interface has it (no `override`, so this also
  // builds against a revision without it).
#if defined(__clang__)
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Winconsistent-missing-override"
#endif
  std::string address() const {
    return description_;
  }
#if defined(__clang__)
#pragma clang diagnostic pop
#endif
  void stop() override {
    if (state_->started && !state_->stopped) {
      state_->stopped = true;
      state_->listener = nullptr;
    }
  }

 private:
  std::shared_ptr<State> state_;
  std::string description_;
};

// A backend and the State the test keeps.
inline std::pair<std::unique_ptr<chardev::PortBackend>, std::shared_ptr<FakePortBackend::State>>
make_fake_backend(bool connected = true) {
  auto state = std::make_shared<FakePortBackend::State>();
  state->connected = connected;
  return {std::make_unique<FakePortBackend>(state), state};
}

}  // namespace pier::virtio::testing
