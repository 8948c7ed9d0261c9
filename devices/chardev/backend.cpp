#include "devices/chardev/backend.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <mutex>
#include <string>

#include "vmm/error.hpp"
#include "vmm/fd.hpp"
#include "vmm/log.hpp"

namespace pier::chardev {
namespace {

// The terminal state to put back on every exit path: the destructor on normal stops, and an
// atexit hook for paths that skip destructors (std::exit from a fatal error).
struct SavedTerminal {
  std::mutex mutex;
  bool saved = false;
  termios original{};
  int stdin_flags = -1;
  int stdout_flags = -1;

  void restore() {
    std::lock_guard lock(mutex);
    if (saved) ::tcsetattr(STDIN_FILENO, TCSANOW, &original);
    if (stdin_flags >= 0) ::fcntl(STDIN_FILENO, F_SETFL, stdin_flags);
    if (stdout_flags >= 0) ::fcntl(STDOUT_FILENO, F_SETFL, stdout_flags);
    saved = false;
    stdin_flags = stdout_flags = -1;
  }
};

SavedTerminal& saved_terminal() {
  static SavedTerminal state;
  return state;
}

void restore_terminal_at_exit() {
  saved_terminal().restore();
}

ssize_t read_nonblocking(int fd, std::span<uint8_t> out) {
  while (true) {
    const ssize_t n = ::read(fd, out.data(), out.size());
    if (n > 0) return n;
    if (n == 0) return -1;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    return -1;
  }
}

class StdioBackend final : public Backend {
 public:
  explicit StdioBackend(QuitHandler quit) : quit_(std::move(quit)) {
    auto& saved = saved_terminal();
    {
      std::lock_guard lock(saved.mutex);
      saved.stdin_flags = ::fcntl(STDIN_FILENO, F_GETFL);
      saved.stdout_flags = ::fcntl(STDOUT_FILENO, F_GETFL);
      interactive_ = ::isatty(STDIN_FILENO) && ::tcgetattr(STDIN_FILENO, &saved.original) == 0;
      if (interactive_) {
        // Raw: the guest gets every key (Ctrl-C included); output post-processing stays with
        // the guest too. The quit key is Ctrl-A x.
        termios raw = saved.original;
        ::cfmakeraw(&raw);
        raw.c_oflag |= OPOST | ONLCR;
        ::tcsetattr(STDIN_FILENO, TCSANOW, &raw);
        saved.saved = true;
      }
    }
    static std::once_flag registered;
    std::call_once(registered, [] { std::atexit(restore_terminal_at_exit); });
    if (saved.stdin_flags >= 0) {
      in_ = reopen_private_nonblocking(STDIN_FILENO, O_RDONLY);
      // Fallback (a socket on stdin): the shared description, restored at exit.
      if (!in_) ::fcntl(STDIN_FILENO, F_SETFL, saved.stdin_flags | O_NONBLOCK);
    }
    if (saved.stdout_flags >= 0) {
      out_ = reopen_private_nonblocking(STDOUT_FILENO, O_WRONLY);
      if (!out_) ::fcntl(STDOUT_FILENO, F_SETFL, saved.stdout_flags | O_NONBLOCK);
    }
    // stdin may be closed or /dev/null (CI): then there is simply no input.
    has_input_ = saved.stdin_flags >= 0;
  }
  ~StdioBackend() override { saved_terminal().restore(); }

  size_t write(std::span<const uint8_t> data) override { return write_fd(output_fd(), data); }
  ssize_t read(std::span<uint8_t> out) override {
    ssize_t n = read_nonblocking(in_ ? in_.get() : STDIN_FILENO, out);
    if (n > 0 && interactive_) {
      bool quit = false;
      n = static_cast<ssize_t>(escape_.filter(out.first(static_cast<size_t>(n)), quit));
      if (quit && quit_) quit_();
    }
    return n;
  }
  int output_fd() const override { return out_ ? out_.get() : STDOUT_FILENO; }
  int input_fd() const override {
    if (!has_input_) return -1;
    return in_ ? in_.get() : STDIN_FILENO;
  }
  std::string describe() const override { return interactive_ ? "stdio (terminal)" : "stdio"; }

 private:
  QuitHandler quit_;
  EscapeFilter escape_;
  UniqueFd in_, out_;  // private non-blocking descriptions of stdin/stdout
                       // (reopen_private_nonblocking in vmm/fd.hpp)
  bool interactive_ = false;
  bool has_input_ = false;
};

class NullBackend final : public Backend {
 public:
  size_t write(std::span<const uint8_t> data) override { return data.size(); }
  ssize_t read(std::span<uint8_t>) override { return 0; }
  int output_fd() const override { return -1; }
  int input_fd() const override { return -1; }
  std::string describe() const override { return "null"; }
};

class FileBackend final : public Backend {
 public:
  explicit FileBackend(std::string path) : path_(std::move(path)) {
    // 0600: console output often holds what a root shell printed; widen it with chmod if wanted.
    fd_.reset(::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NONBLOCK, 0600));
    if (!fd_) throw system_error(fmt::format("cannot open output file {}", path_));
  }
  size_t write(std::span<const uint8_t> data) override { return write_fd(fd_.get(), data); }
  ssize_t read(std::span<uint8_t>) override { return 0; }
  int output_fd() const override { return fd_.get(); }
  int input_fd() const override { return -1; }
  std::string describe() const override { return "file=" + path_; }

 private:
  std::string path_;
  UniqueFd fd_;
};

}  // namespace

size_t Backend::write_fd(int fd, std::span<const uint8_t> data) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n > 0) {
      done += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      break;
    } else {
      // The reader went away (EPIPE), the device failed (EIO) or the disk is full (ENOSPC): the
      // bytes are lost, but the guest must not stall on them. Counted, and said once.
      const int err = n < 0 ? errno : EIO;
      bytes_lost_.fetch_add(data.size() - done, std::memory_order_relaxed);
      if (!loss_logged_) {
        loss_logged_ = true;
        log::warn("{}: write failed: {}; guest output to it is lost from now on (counted)",
                  describe(), std::strerror(err));
      }
      return data.size();
    }
  }
  return done;
}

size_t EscapeFilter::filter(std::span<uint8_t> data, bool& quit) {
  size_t out = 0;
  for (uint8_t byte : data) {
    if (pending_escape_) {
      pending_escape_ = false;
      if (byte == kQuitKey || byte == (kQuitKey & 0x1f)) {
        quit = true;
        continue;
      }
      if (byte == kEscapeKey) {
        data[out++] = kEscapeKey;
        continue;
      }
      // Not a command: the key goes to the guest and the escape is dropped (Ctrl-A Ctrl-A is
      // how to send a Ctrl-A). Output never grows, so filtering in place is safe.
      data[out++] = byte;
      continue;
    }
    if (byte == kEscapeKey) {
      pending_escape_ = true;
      continue;
    }
    data[out++] = byte;
  }
  return out;
}

std::unique_ptr<Backend> make_backend(std::string_view spec, QuitHandler quit) {
  if (spec == "stdio") return std::make_unique<StdioBackend>(std::move(quit));
  if (spec == "null") return std::make_unique<NullBackend>();
  if (spec.starts_with("file=") && spec.size() > 5) {
    return std::make_unique<FileBackend>(std::string(spec.substr(5)));
  }
  throw Error(fmt::format("unknown serial backend '{}' (use stdio, null or file=PATH)", spec));
}

}  // namespace pier::chardev
