#include "vmm/bench_command.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "vmm/error.hpp"

#ifndef PIER_SOURCE_DIR
#define PIER_SOURCE_DIR ""
#endif

namespace pier {

std::optional<std::string> find_bench_script(const std::string& exe,
                                             const std::string& env_override,
                                             const std::string& source_dir) {
  namespace fs = std::filesystem;
  std::vector<fs::path> candidates;
  if (!env_override.empty()) candidates.emplace_back(env_override);
  const fs::path dir = fs::path(exe).parent_path();
  candidates.push_back(dir / ".." / "benches" / "pier_bench.py");
  candidates.push_back(dir / ".." / "share" / "pier" / "pier_bench.py");
  if (!source_dir.empty()) candidates.push_back(fs::path(source_dir) / "benches" / "pier_bench.py");
  for (const auto& c : candidates) {
    std::error_code ec;
    if (fs::is_regular_file(c, ec)) return fs::weakly_canonical(c, ec).string();
  }
  return std::nullopt;
}

void bench_command(const std::vector<std::string>& args) {
  std::error_code ec;
  const std::string exe = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  if (ec) throw system_error("cannot read /proc/self/exe", ec.value());
  const char* env = std::getenv("PIER_BENCH_SCRIPT");
  const auto script = find_bench_script(exe, env ? env : "", PIER_SOURCE_DIR);
  if (!script) {
    throw Error(fmt::format(
        "pier bench needs its driver benches/pier_bench.py, which is not next to {} nor in the "
        "source tree {}; set PIER_BENCH_SCRIPT=/path/to/pier_bench.py",
        exe, PIER_SOURCE_DIR[0] ? PIER_SOURCE_DIR : "(unknown)"));
  }
  std::vector<std::string> argv = {"python3", *script, "--pier", exe};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  ::execvp("python3", cargv.data());
  throw system_error("pier bench: cannot run python3 (apt-get install python3)");
}

}  // namespace pier
