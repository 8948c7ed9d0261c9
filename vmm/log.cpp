#include "vmm/log.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <mutex>

#include "vmm/error.hpp"
#include "vmm/fd.hpp"

namespace pier::log {
namespace {
std::atomic<Level> g_level{Level::kWarn};
constexpr std::array<std::string_view, 5> kNames = {"error", "warn", "info", "debug", "trace"};
const auto g_start = std::chrono::steady_clock::now();
}  // namespace

void set_level(Level l) {
  g_level.store(l, std::memory_order_relaxed);
}
Level level() {
  return g_level.load(std::memory_order_relaxed);
}

Level parse_level(std::string_view name) {
  for (size_t i = 0; i < kNames.size(); ++i) {
    if (kNames[i] == name) return static_cast<Level>(i);
  }
  throw Error(fmt::format("unknown log level '{}' (use error, warn, info, debug or trace)", name));
}

namespace {
// stderr as never_block_on_stderr() left it: a private non-blocking description of a terminal or
// pipe, or fd 2 itself for a socket (sent with MSG_DONTWAIT); invalid before, or for a regular
// file: then write() blocks as it always did.
struct Stderr {
  std::mutex mutex;
  UniqueFd own;
  bool socket = false;
  std::string pending;   // whole lines (the first maybe partly written), in order
  uint64_t dropped = 0;  // since the last "dropped" line
  uint64_t dropped_total = 0;
  std::atomic<bool> nonblocking{false};
};
Stderr& err() {
  static Stderr s;
  return s;
}

std::string format_line(Level l, std::string_view message) {
  const double t =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - g_start).count();
  return fmt::format("pier[{:.6f}] {}: {}\n", t, kNames[static_cast<size_t>(l)], message);
}

// Writes the front of `rest` that stderr takes now. False when it would block.
bool write_nonblocking(Stderr& e, std::string_view& rest) {
  while (!rest.empty()) {
    const ssize_t n =
        e.socket ? ::send(STDERR_FILENO, rest.data(), rest.size(), MSG_DONTWAIT | MSG_NOSIGNAL)
                 : ::write(e.own.get(), rest.data(), rest.size());
    if (n > 0) {
      rest.remove_prefix(static_cast<size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return false;
    } else {
      rest = {};  // stderr is gone (EPIPE, EIO): nowhere left to report anything
    }
  }
  return true;
}

void flush_locked(Stderr& e) {
  std::string_view rest = e.pending;
  write_nonblocking(e, rest);
  e.pending.erase(0, e.pending.size() - rest.size());
  if (e.pending.empty() && e.dropped) {
    e.pending = format_line(Level::kWarn, fmt::format("{} log line(s) dropped: stderr did not take "
                                                      "them (nothing read it for a while)",
                                                      e.dropped));
    e.dropped = 0;
    rest = e.pending;
    write_nonblocking(e, rest);
    e.pending.erase(0, e.pending.size() - rest.size());
  }
}
}  // namespace

void write(Level l, std::string_view message) {
  const std::string line = format_line(l, message);
  Stderr& e = err();
  if (e.nonblocking.load(std::memory_order_acquire)) {
    std::lock_guard lock(e.mutex);
    if (!e.pending.empty()) flush_locked(e);
    std::string_view rest = line;
    if (e.pending.empty() && write_nonblocking(e, rest)) return;
    if (e.pending.size() + rest.size() > kPendingLimit) {
      ++e.dropped;
      ++e.dropped_total;
      return;
    }
    e.pending.append(rest);
    return;
  }
  // One write(2) per line so lines from different threads never interleave; a short write to a
  // terminal is retried, a failure is ignored (there is nowhere left to report it).
  std::string_view rest = line;
  while (!rest.empty()) {
    ssize_t n = ::write(STDERR_FILENO, rest.data(), rest.size());
    if (n <= 0) break;
    rest.remove_prefix(static_cast<size_t>(n));
  }
}

void never_block_on_stderr() {
  Stderr& e = err();
  std::lock_guard lock(e.mutex);
  if (e.nonblocking.load()) return;
  struct stat st {};
  if (::fstat(STDERR_FILENO, &st) != 0) return;
  if (S_ISSOCK(st.st_mode)) {
    e.socket = true;
  } else {
    e.own = reopen_private_nonblocking(STDERR_FILENO, O_WRONLY);
    if (!e.own) return;  // a regular file (or nothing we can reopen): blocking as before
  }
  e.nonblocking.store(true, std::memory_order_release);
}

void flush_pending() {
  Stderr& e = err();
  if (!e.nonblocking.load(std::memory_order_acquire)) return;
  std::lock_guard lock(e.mutex);
  if (!e.pending.empty() || e.dropped) flush_locked(e);
}

void drain(std::chrono::milliseconds budget) {
  Stderr& e = err();
  if (!e.nonblocking.load(std::memory_order_acquire)) return;
  const auto deadline = std::chrono::steady_clock::now() + budget;
  std::unique_lock lock(e.mutex);
  while (true) {
    flush_locked(e);
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (e.pending.empty() || left.count() <= 0) break;
    pollfd p{e.socket ? STDERR_FILENO : e.own.get(), POLLOUT, 0};
    lock.unlock();
    ::poll(&p, 1, static_cast<int>(left.count()));
    lock.lock();
  }
  e.pending.clear();
}

uint64_t lines_dropped() {
  Stderr& e = err();
  std::lock_guard lock(e.mutex);
  return e.dropped_total;
}

}  // namespace pier::log
