#pragma once
// Helpers for the port backend tests: an EventLoop on its own thread, a recording Listener that
// plays the device, and small blocking-with-timeout socket helpers for the host-side peer.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "devices/chardev/port_backend.hpp"
#include "vmm/event_loop.hpp"
#include "vmm/fd.hpp"

namespace pier::chardev::port_test {

using namespace std::chrono_literals;

// Runs the loop on a thread; call() runs a function on it and waits (backend calls must happen
// on the loop thread, as on the real I/O thread).
class LoopThread {
 public:
  LoopThread() : thread_([this] { loop_.run(); }) {}
  ~LoopThread() {
    loop_.stop();
    thread_.join();
  }
  EventLoop& loop() { return loop_; }

  // An exception is rethrown here. It is handed over as an exception_ptr moved into the future
  // after its catch block ended, so the loop thread keeps no reference to it: the exception's
  // reference count lives in the uninstrumented C++ runtime, and ThreadSanitizer would report
  // the loop thread's release of the last reference as racing this thread's reads.
  template <class F>
  auto call(F&& fn) -> decltype(fn()) {
    using R = decltype(fn());
    struct Outcome {
      std::optional<std::conditional_t<std::is_void_v<R>, bool, R>> value;
      std::exception_ptr error;
    };
    std::promise<Outcome> done;
    auto result = done.get_future();
    loop_.post([&] {
      Outcome outcome;
      try {
        if constexpr (std::is_void_v<R>) {
          fn();
          outcome.value.emplace(true);
        } else {
          outcome.value.emplace(fn());
        }
      } catch (...) {
        outcome.error = std::current_exception();
      }
      done.set_value(std::move(outcome));
    });
    if (result.wait_for(10s) != std::future_status::ready) {
      ADD_FAILURE() << "loop thread did not run the call in 10 s";
      std::abort();
    }
    Outcome outcome = result.get();
    if (outcome.error) std::rethrow_exception(std::move(outcome.error));
    if constexpr (!std::is_void_v<R>) return std::move(*outcome.value);
  }

 private:
  EventLoop loop_;
  std::thread thread_;
};

// Plays the device: records connect events in order and, in auto-read mode, reads everything
// that becomes readable.
class Recorder : public PortBackend::Listener {
 public:
  PortBackend* backend = nullptr;

  void on_host_connected(bool connected) override {
    std::lock_guard lock(mutex_);
    if (inside_call_) reentrant_ = true;
    events_.push_back(connected ? "up" : "down");
    cv_.notify_all();
  }
  void on_readable() override {
    bool read_now;
    {
      std::lock_guard lock(mutex_);
      ++readable_;
      read_now = auto_read_;
    }
    if (read_now) {
      // Outside the lock: a re-entrant on_host_connected from inside readv must be recorded,
      // not deadlock.
      char buf[65536];
      iovec v{buf, sizeof(buf)};
      inside_call_ = true;
      const ssize_t n = backend->readv(std::span(&v, 1));
      inside_call_ = false;
      std::lock_guard lock(mutex_);
      if (n > 0) received_.append(buf, static_cast<size_t>(n));
      if (n < 0) ++read_gone_;
    }
    std::lock_guard lock(mutex_);
    cv_.notify_all();
  }
  void on_writable() override {
    std::lock_guard lock(mutex_);
    ++writable_;
    cv_.notify_all();
  }

  template <class Pred>
  bool wait(Pred pred, std::chrono::milliseconds timeout = 5s) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] { return pred(); });
  }
  bool wait_events(const std::vector<std::string>& expected, std::chrono::milliseconds t = 5s) {
    return wait([&] { return events_.size() >= expected.size(); }, t) && events() == expected;
  }
  bool wait_received(const std::string& expected, std::chrono::milliseconds t = 5s) {
    return wait([&] { return received_.size() >= expected.size(); }, t) && received() == expected;
  }

  std::vector<std::string> events() {
    std::lock_guard lock(mutex_);
    return events_;
  }
  std::string received() {
    std::lock_guard lock(mutex_);
    return received_;
  }
  int writable() {
    std::lock_guard lock(mutex_);
    return writable_;
  }
  int readable() {
    std::lock_guard lock(mutex_);
    return readable_;
  }
  bool reentrant() {
    std::lock_guard lock(mutex_);
    return reentrant_;
  }
  void set_auto_read(bool on) {
    std::lock_guard lock(mutex_);
    auto_read_ = on;
  }

  // Needs the lock held by wait(): only called from predicates.
  size_t events_unlocked() const { return events_.size(); }
  size_t received_unlocked() const { return received_.size(); }
  int writable_unlocked() const { return writable_; }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::string> events_;
  std::string received_;
  int readable_ = 0;
  int writable_ = 0;
  int read_gone_ = 0;
  bool auto_read_ = true;
  std::atomic<bool> inside_call_ = false;
  bool reentrant_ = false;
};

// A started backend on a loop thread, torn down on the loop thread.
struct Harness {
  LoopThread thread;
  Recorder recorder;
  std::unique_ptr<PortBackend> backend;

  explicit Harness(std::unique_ptr<PortBackend> b) : backend(std::move(b)) {
    recorder.backend = backend.get();
  }
  ~Harness() { destroy(); }
  void start() {
    thread.call([&] { backend->start(thread.loop(), recorder); });
  }
  void destroy() {
    if (backend) thread.call([&] { backend.reset(); });
  }
  void want_input(bool on) {
    thread.call([&] { backend->want_input(on); });
  }
  void want_output(bool on) {
    thread.call([&] { backend->want_output(on); });
  }
  bool connected() {
    return thread.call([&] { return backend->host_connected(); });
  }
  ssize_t write(const std::string& data) {
    return thread.call([&] {
      iovec v{const_cast<char*>(data.data()), data.size()};
      return backend->writev(std::span(&v, 1));
    });
  }
  ssize_t read(std::string& out, size_t max = 65536) {
    out.assign(max, '\0');
    const ssize_t n = thread.call([&] {
      iovec v{out.data(), out.size()};
      return backend->readv(std::span(&v, 1));
    });
    out.resize(n > 0 ? static_cast<size_t>(n) : 0);
    return n;
  }
};

inline UniqueFd unix_connect(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return {};
  return fd;
}

// A plain listening unix socket standing in for another process (or a server in client mode).
inline UniqueFd unix_listen(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return {};
  if (::listen(fd.get(), 8) != 0) return {};
  return fd;
}

inline bool readable_within(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1;
}

inline UniqueFd accept_within(int listen_fd, std::chrono::milliseconds timeout = 5s) {
  if (!readable_within(listen_fd, timeout)) return {};
  return UniqueFd(::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
}

inline void send_all(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    ASSERT_GT(n, 0) << std::strerror(errno);
    done += static_cast<size_t>(n);
  }
}

// Reads exactly `n` bytes (or fewer at EOF/timeout).
inline std::string read_n(int fd, size_t n, std::chrono::milliseconds timeout = 5s) {
  std::string out;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (out.size() < n) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0 || !readable_within(fd, left)) break;
    char buf[65536];
    const ssize_t got = ::read(fd, buf, std::min(sizeof(buf), n - out.size()));
    if (got <= 0) break;
    out.append(buf, static_cast<size_t>(got));
  }
  return out;
}

// A fresh directory under /tmp for socket paths (short enough for sun_path), removed after.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/pier-port-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace pier::chardev::port_test
