// libFuzzer target for `pier run --config FILE` as pier reads it: parse_run_options() with the
// fuzzed bytes as the file (a memfd, reached as /proc/self/fd/N, a regular file like the user's)
// and a few command-line flags chosen by the input beside it, so the precedence rules run too
// (flags win, any --port replaces the file's port lines).
//
// Invariants (abort = finding):
//  - a bad file is a pier::Error with one line of text; nothing else escapes (no
//    boost::program_options error, no std::exception of another kind, no crash);
//  - what is accepted is a machine pier can build: memory a multiple of 4 KiB between 64M and
//    the layout's maximum; 1+ vCPUs; max_ports in 1..511 and no more ports than that; port names
//    valid and unique, every port backend a valid spec; a console ring of at most 64M; the
//    serial backend stdio, null or file=PATH and not stdio together with a stdio console;
//  - flags given on the command line win over the file.
#include <fuzzer/FuzzedDataProvider.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "boot/layout.hpp"
#include "devices/chardev/port_backend.hpp"
#include "vmm/error.hpp"
#include "vmm/log.hpp"
#include "vmm/options.hpp"

using namespace pier;

namespace {

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "config_file_fuzz: invariant broken: %s\n", what.c_str());
  std::abort();
}

int config_fd() {
  static const int fd = [] {
    const int f = ::memfd_create("pier-fuzz.conf", MFD_CLOEXEC);
    if (f < 0) fail("memfd_create");
    return f;
  }();
  return fd;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  log::set_level(log::Level::kError);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const uint8_t flags = in.ConsumeIntegral<uint8_t>();
  const std::string file = in.ConsumeRemainingBytesAsString();
  const int fd = config_fd();
  if (::ftruncate(fd, 0) != 0 ||
      ::pwrite(fd, file.data(), file.size(), 0) != static_cast<ssize_t>(file.size()))
    fail("cannot write the memfd");

  // A kernel is given so the default guest's files are not looked up; the rest by the input.
  std::vector<std::string> args = {"--config", "/proc/self/fd/" + std::to_string(fd), "--kernel",
                                   "/nonexistent/vmlinuz"};
  if (flags & 1) args.insert(args.end(), {"--memory", "128M"});
  if (flags & 2) args.insert(args.end(), {"--port", "name=cli.port,null"});
  if (flags & 4) args.insert(args.end(), {"--console", "stdio"});
  if (flags & 8) args.insert(args.end(), {"--serial", "null"});
  if (flags & 16) args.insert(args.end(), {"--max-ports", "4"});
  if (flags & 32) args.insert(args.end(), {"--", "echo", "hi"});

  RunOptions options;
  try {
    options = parse_run_options(args);
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.empty() || what.find('\n') != std::string::npos)
      fail("error message not one line: " + what);
    return 0;
  } catch (const std::exception& e) {
    fail(std::string("escaped as something other than pier::Error: ") + e.what());
  }
  if (options.show_help) return 0;
  const MachineConfig& m = options.machine;
  if (m.memory_bytes < layout::kMinRam || m.memory_bytes > layout::kMaxRam ||
      m.memory_bytes % 4096 != 0)
    fail("memory " + std::to_string(m.memory_bytes) + " accepted");
  if ((flags & 1) && m.memory_bytes != (128ull << 20)) fail("--memory on the command line lost");
  if (m.cpus == 0) fail("0 vCPUs accepted");
  if (m.max_ports == 0 || m.max_ports > 511) fail("max_ports " + std::to_string(m.max_ports));
  if ((flags & 16) && m.max_ports != 4) fail("--max-ports on the command line lost");
  if (m.ports.size() > m.max_ports) fail("more ports than max_ports");
  if (m.console_ring_bytes > (64ull << 20)) fail("console ring above 64M accepted");
  std::set<std::string> names;
  for (size_t i = 0; i < m.ports.size(); ++i) {
    const PortOption& p = m.ports[i];
    if (i > 0) {
      if (!valid_port_name(p.name)) fail("port name '" + p.name + "' accepted");
      if (!names.insert(p.name).second) fail("duplicate port name '" + p.name + "' accepted");
    }
    try {
      (void)chardev::parse_port_backend(p.backend);
    } catch (const Error& e) {
      fail("port backend '" + p.backend + "' accepted but does not parse: " + e.what());
    }
  }
  if (flags & 2) {
    // Any --port on the command line replaces the file's port lines.
    if (m.ports.size() != 2 || m.ports[1].name != "cli.port")
      fail("--port on the command line did not replace the file's ports");
  }
  if (m.serial != "stdio" && m.serial != "null" &&
      !(m.serial.starts_with("file=") && m.serial.size() > 5))
    fail("serial backend '" + m.serial + "' accepted");
  if (!m.ports.empty() && m.ports[0].backend == "stdio" && m.serial == "stdio")
    fail("stdio for both the console and the serial port");
  if ((flags & 32) && m.cmdline.find(" -- echo hi") == std::string::npos)
    fail("the guest command was lost");
  return 0;
}
