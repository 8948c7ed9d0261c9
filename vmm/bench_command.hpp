#pragma once
// `pier bench`: the host<->guest throughput benchmark (README "Performance"). The driver is the
// Python program benches/pier_bench.py (process, socket and plot orchestration, beside pier and
// QEMU); `pier bench ARGS` finds it and execs `python3 pier_bench.py --pier <this binary> ARGS`.
#include <optional>
#include <string>
#include <vector>

namespace pier {

// The first existing file among: $PIER_BENCH_SCRIPT (`env_override`, if non-empty),
// <dir of exe>/../benches/pier_bench.py (a build directory inside the source tree),
// <dir of exe>/../share/pier/pier_bench.py (installed), <source_dir>/benches/pier_bench.py.
std::optional<std::string> find_bench_script(const std::string& exe,
                                             const std::string& env_override,
                                             const std::string& source_dir);

// Execs the driver (does not return on success). Throws pier::Error when the script or python3
// cannot be found.
[[noreturn]] void bench_command(const std::vector<std::string>& args);

}  // namespace pier
