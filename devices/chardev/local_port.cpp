#include "devices/chardev/local_port.hpp"

#include <sys/ioctl.h>
#include <unistd.h>

#include <functional>

namespace pier::chardev {
namespace {

// Adapts a chardev::Backend to the PortBackend interface. The Backend is created in start(),
// not before: stdio puts the terminal in raw mode when it is made.
class LocalPort final : public PortBackend {
 public:
  using Factory = std::function<std::unique_ptr<Backend>()>;

  LocalPort(Factory factory, std::string name, std::string address, bool stdio)
      : factory_(std::move(factory)),
        name_(std::move(name)),
        address_(std::move(address)),
        stdio_(stdio) {}
  ~LocalPort() override { stop(); }

  void start(EventLoop& loop, Listener& listener) override {
    loop_ = &loop;
    listener_ = &listener;
    backend_ = factory_();
    input_ended_ = backend_->input_fd() < 0;
  }

  bool host_connected() const override { return true; }

  ssize_t readv(std::span<const iovec> iov) override {
    if (!backend_ || input_ended_) return 0;
    size_t total = 0;
    for (const iovec& v : iov) {
      if (v.iov_len == 0) continue;
      const ssize_t n = backend_->read(std::span(static_cast<uint8_t*>(v.iov_base), v.iov_len));
      if (n < 0) {
        // End of input (stdin closed): output goes on, the port stays connected.
        end_input();
        break;
      }
      total += static_cast<size_t>(n);
      if (static_cast<size_t>(n) < v.iov_len) break;
    }
    return static_cast<ssize_t>(total);
  }

  ssize_t writev(std::span<const iovec> iov) override {
    if (!backend_) return -1;
    size_t total = 0;
    for (const iovec& v : iov) {
      const size_t n =
          backend_->write(std::span(static_cast<const uint8_t*>(v.iov_base), v.iov_len));
      total += n;
      if (n < v.iov_len) break;
    }
    return static_cast<ssize_t>(total);
  }

  void want_input(bool on) override {
    want_in_ = on;
    if (!backend_ || input_ended_) return;
    const int fd = backend_->input_fd();
    if (!in_registered_ && !in_always_ready_ && on) {
      in_registered_ = loop_->add(fd, EPOLLIN, [this](uint32_t ev) { on_input_event(ev); });
      // A regular file or /dev/null on stdin: epoll cannot watch it and it is always readable.
      in_always_ready_ = !in_registered_;
    } else if (in_registered_) {
      loop_->modify(fd, on ? uint32_t{EPOLLIN} : 0u);
    }
    if (in_always_ready_ && on)
      schedule(
          input_posted_, [this] { return want_in_ && !input_ended_; },
          [this] { listener_->on_readable(); });
  }

  void want_output(bool on) override {
    want_out_ = on;
    if (!backend_) return;
    const int fd = backend_->output_fd();
    if (fd >= 0 && !out_registered_ && !out_always_ready_ && on) {
      out_registered_ = loop_->add(fd, EPOLLOUT, [this](uint32_t ev) { on_output_event(ev); });
      out_always_ready_ = !out_registered_;
    } else if (out_registered_) {
      loop_->modify(fd, on ? uint32_t{EPOLLOUT} : 0u);
    }
    // null, a regular file: never full, so a device waiting for room gets it at once.
    if ((fd < 0 || out_always_ready_) && on) {
      schedule(
          output_posted_, [this] { return want_out_; }, [this] { listener_->on_writable(); });
    }
  }

  std::string describe() const override { return backend_ ? backend_->describe() : name_; }
  uint64_t bytes_lost() const override { return backend_ ? backend_->bytes_lost() : 0; }
  std::string address() const override { return address_; }

  std::optional<TerminalSize> terminal_size() const override {
    if (!stdio_) return std::nullopt;
    for (int fd : {STDOUT_FILENO, STDIN_FILENO}) {
      winsize ws{};
      if (::isatty(fd) && ::ioctl(fd, TIOCGWINSZ, &ws) == 0 && (ws.ws_col || ws.ws_row)) {
        return TerminalSize{ws.ws_col, ws.ws_row};
      }
    }
    return std::nullopt;
  }

  void stop() override {
    if (!backend_) return;
    if (in_registered_) loop_->remove(backend_->input_fd());
    if (out_registered_) loop_->remove(backend_->output_fd());
    in_registered_ = out_registered_ = false;
    alive_ = std::make_shared<char>();
    // Destroying a stdio Backend puts the terminal back.
    backend_.reset();
  }

 private:
  // Level-triggered readiness for descriptors epoll cannot watch: repeat on the loop while the
  // device still wants it (it says stop with want_*(false)).
  void schedule(bool& posted, std::function<bool()> still_wanted, std::function<void()> fire) {
    if (posted) return;
    posted = true;
    loop_->post([this, alive = std::weak_ptr<char>(alive_), &posted, still_wanted, fire] {
      if (alive.expired()) return;
      posted = false;
      if (!still_wanted()) return;
      fire();
      if (!alive.expired() && still_wanted()) schedule(posted, still_wanted, fire);
    });
  }

  void on_input_event(uint32_t events) {
    if (want_in_) {
      listener_->on_readable();
      return;
    }
    // A hung-up pipe reports EPOLLHUP even with no events asked for: leave epoll until the
    // device wants input again (it will then read the end of input).
    if (events & (EPOLLHUP | EPOLLERR)) {
      loop_->remove(backend_->input_fd());
      in_registered_ = false;
    }
  }

  void on_output_event(uint32_t events) {
    if (want_out_) {
      listener_->on_writable();
      return;
    }
    if (events & (EPOLLHUP | EPOLLERR)) {
      loop_->remove(backend_->output_fd());
      out_registered_ = false;
    }
  }

  void end_input() {
    input_ended_ = true;
    if (in_registered_) loop_->remove(backend_->input_fd());
    in_registered_ = false;
  }

  Factory factory_;
  const std::string name_;
  const std::string address_;
  const bool stdio_;
  std::unique_ptr<Backend> backend_;
  EventLoop* loop_ = nullptr;
  Listener* listener_ = nullptr;
  bool want_in_ = false;
  bool want_out_ = false;
  bool input_ended_ = true;
  bool in_registered_ = false;
  bool in_always_ready_ = false;
  bool out_registered_ = false;
  bool out_always_ready_ = false;
  bool input_posted_ = false;
  bool output_posted_ = false;
  std::shared_ptr<char> alive_ = std::make_shared<char>();
};

}  // namespace

std::unique_ptr<PortBackend> make_stdio_port(QuitHandler quit) {
  return std::make_unique<LocalPort>(
      [quit = std::move(quit)] { return make_backend("stdio", quit); }, "stdio", "", true);
}

std::unique_ptr<PortBackend> make_file_port(std::string path) {
  return std::make_unique<LocalPort>([path] { return make_backend("file=" + path, {}); },
                                     "file=" + path, path, false);
}

std::unique_ptr<PortBackend> make_null_port() {
  return std::make_unique<LocalPort>([] { return make_backend("null", {}); }, "null", "", false);
}

}  // namespace pier::chardev
