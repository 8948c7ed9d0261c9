// pier: a KVM virtual machine monitor. `pier run ...` boots a guest; see README.md.
#include <fmt/format.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "vmm/bench_command.hpp"
#include "vmm/ctl.hpp"
#include "vmm/error.hpp"
#include "vmm/jail.hpp"
#include "vmm/log.hpp"
#include "vmm/machine.hpp"
#include "vmm/options.hpp"
#include "vmm/version.hpp"

namespace {

constexpr const char* kUsage =
    "Usage: pier <command> [options]\n"
    "\n"
    "Commands:\n"
    "  run        boot a guest (pier run --help for its options)\n"
    "  ctl        drive a running pier through its --api-socket (pier ctl --help)\n"
    "  port       attach this terminal or a pipe to a port's socket (pier port --help)\n"
    "  bench      host<->guest throughput/latency benchmark, optionally beside QEMU\n"
    "             (pier bench --help)\n"
    "\n"
    "Options:\n"
    "  --version  print the version\n"
    "  --help     show this help\n";

int run_command(const std::vector<std::string>& args) {
  pier::RunOptions options = pier::parse_run_options(args);
  if (options.show_help) {
    std::fputs(options.help_text.c_str(), stdout);
    return 0;
  }
  pier::log::set_level(pier::log::parse_level(options.log_level));
  // From here no thread waits for stderr (a vCPU logging into a full pipe would stop the
  // guest). Destroyed after the machine: its last lines get up to 2 s to get out.
  pier::log::never_block_on_stderr();
  struct DrainLogAtExit {
    ~DrainLogAtExit() { pier::log::drain(std::chrono::seconds(2)); }
  } drain_log_at_exit;
  pier::log::info("host profile: {}", options.machine.host.name());
  // --jail: paths are checked and rewritten and the working directory becomes the jail's before
  // anything is opened; the jail is entered once the machine holds everything it needs from the
  // host, and before any thread exists (vmm/jail.hpp).
  std::optional<pier::jail::Jail> jail;
  if (options.jail) {
    jail.emplace(*options.jail);
    jail->prepare(options.machine);
    options.machine.jail = &*jail;
  }
  pier::Machine machine(options.machine);
  if (!options.machine.dump_dtb.empty()) {
    const auto& dtb = machine.device_tree();
    FILE* f = std::fopen(options.machine.dump_dtb.c_str(), "wb");
    if (f == nullptr || std::fwrite(dtb.data(), 1, dtb.size(), f) != dtb.size()) {
      if (f) std::fclose(f);
      throw pier::Error(
          fmt::format("cannot write the device tree to '{}'", options.machine.dump_dtb));
    }
    std::fclose(f);
    return 0;
  }
  if (jail) {
    jail->enter(pier::jail::nofile_limit(pier::jail::open_fd_count(), options.machine.max_ports,
                                         !options.machine.api_socket.empty()));
  }
  return machine.run();
}

}  // namespace

int main(int argc, char** argv) {
  // A reader that goes away (a closed stdout pipe, a socket peer) must be an error return, not a
  // signal that kills the VMM and its guest.
  std::signal(SIGPIPE, SIG_IGN);
  std::vector<std::string> args(argv + 1, argv + argc);
  try {
    if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
      std::fputs(kUsage, args.empty() ? stderr : stdout);
      return args.empty() ? 1 : 0;
    }
    if (args[0] == "--version" || args[0] == "-V") {
      std::printf("pier %s\n", pier::version());
      return 0;
    }
    if (args[0] == "run") return run_command({args.begin() + 1, args.end()});
    if (args[0] == "ctl") return pier::ctl_command({args.begin() + 1, args.end()});
    if (args[0] == "port") return pier::port_command({args.begin() + 1, args.end()});
    if (args[0] == "bench") pier::bench_command({args.begin() + 1, args.end()});
    throw pier::Error(fmt::format("unknown command '{}' (try pier --help)", args[0]));
  } catch (const pier::Error& e) {
    std::fprintf(stderr, "pier: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pier: internal error: %s\n", e.what());
    return 1;
  }
}
