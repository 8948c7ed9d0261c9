#include "vmm/log.hpp"

#include <unistd.h>

#include <array>
#include <chrono>

#include "vmm/error.hpp"

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

void write(Level l, std::string_view message) {
  const double t =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - g_start).count();
  std::string line =
      fmt::format("pier[{:.6f}] {}: {}\n", t, kNames[static_cast<size_t>(l)], message);
  // One write(2) per line so lines from different threads never interleave; a short write to a
  // terminal is retried, a failure is ignored (there is nowhere left to report it).
  std::string_view rest = line;
  while (!rest.empty()) {
    ssize_t n = ::write(STDERR_FILENO, rest.data(), rest.size());
    if (n <= 0) break;
    rest.remove_prefix(static_cast<size_t>(n));
  }
}

}  // namespace pier::log
