#pragma once
// One small leveled logger to stderr (never to the guest console). Thread-safe: each message is
// formatted first and written with a single write(2).
#include <fmt/format.h>
#include <atomic>
#include <string>
#include <string_view>

namespace pier::log {

enum class Level { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3, kTrace = 4 };

void set_level(Level level);
Level level();
// Parses "error|warn|info|debug|trace"; throws pier::Error on anything else.
Level parse_level(std::string_view name);
void write(Level level, std::string_view message);

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
