#pragma once
// One small leveled logger to stderr (never to the guest console). Thread-safe: each message is
// formatted first and written with a single write(2), or, after never_block_on_stderr(), queued
// whole behind the lines stderr has not taken yet.
#include <fmt/format.h>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace pier::log {

enum class Level { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3, kTrace = 4 };

void set_level(Level level);
Level level();
// Parses "error|warn|info|debug|trace"; throws pier::Error on anything else.
Level parse_level(std::string_view name);
void write(Level level, std::string_view message);

// From now on a thread that logs never waits for stderr: a terminal or pipe nobody reads (or a
// slow one) would otherwise stop the vCPU or I/O thread that logs, and the guest with it. Lines
// stderr does not take at once wait in a buffer of kPendingLimit bytes, in order; lines beyond
// it are dropped, and once stderr takes lines again a line says how many. Regular files are
// written as before (they do not block). Call before any thread starts logging.
void never_block_on_stderr();
inline constexpr size_t kPendingLimit = 1 << 20;
// Writes what stderr takes now of the waiting lines, without blocking (the I/O thread calls it
// every second; every new line calls it first).
void flush_pending();
// At exit: waits up to `budget` for stderr to take the waiting lines, then gives up on them.
void drain(std::chrono::milliseconds budget);
// Lines dropped since never_block_on_stderr() (for tests).
uint64_t lines_dropped();

inline bool enabled(Level l) {
  return static_cast<int>(l) <= static_cast<int>(level());
}

template <class... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::kError)) write(Level::kError, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::kWarn)) write(Level::kWarn, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::kInfo)) write(Level::kInfo, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::kDebug)) write(Level::kDebug, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void trace(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::kTrace)) write(Level::kTrace, fmt::format(f, std::forward<Args>(args)...));
}

// Logs a guest-caused problem once per call site (the flag lives at the call site), so a guest
// that repeats a bad access cannot flood the host log.
class OnceFlag {
 public:
  bool first() { return !done_.exchange(true, std::memory_order_relaxed); }

 private:
  std::atomic<bool> done_{false};
};

}  // namespace pier::log
