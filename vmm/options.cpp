#include "vmm/options.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "boot/layout.hpp"
#include "devices/chardev/port_backend.hpp"
#include "vmm/error.hpp"

namespace po = boost::program_options;

namespace pier {
namespace {

// Boost.Program_options (1.74) words an error by replacing placeholders such as %value% in a
// loop that searches the whole message again after each replacement, so an option name or value
// that itself contains the placeholder ("cpus = %value%") makes what() spin forever, its string
// growing without bound. When the input has a '%', errors naming an option are worded here
// instead, without what().
std::string po_message(const po::error& e, bool input_has_percent) {
  if (input_has_percent) {
    if (const auto* named = dynamic_cast<const po::error_with_option_name*>(&e)) {
      return fmt::format("invalid option or value: '{}'", printable(named->get_option_name()));
    }
  }
  return e.what();
}

}  // namespace

uint64_t parse_size(std::string_view text) {
  const std::string original = printable(text);
  uint64_t value = 0;
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(begin, end, value);
  if (ec != std::errc() || ptr == begin) {
    throw Error(
        fmt::format("invalid size '{}' (use a number with K, M, G or T, e.g. 512M)", original));
  }
  std::string_view suffix(ptr, static_cast<size_t>(end - ptr));
  if (suffix.ends_with("iB")) {
    suffix.remove_suffix(2);
  } else if (suffix.size() == 2 && (suffix[1] == 'B' || suffix[1] == 'b')) {
    suffix.remove_suffix(1);
  }
  unsigned shift = 20;
  if (suffix.empty()) {
    shift = 20;
  } else if (suffix.size() == 1) {
    switch (suffix[0]) {
      case 'k':
      case 'K':
        shift = 10;
        break;
      case 'm':
      case 'M':
        shift = 20;
        break;
      case 'g':
      case 'G':
        shift = 30;
        break;
      case 't':
      case 'T':
        shift = 40;
        break;
      default:
        throw Error(fmt::format("invalid size '{}': unknown unit '{}' (use K, M, G or T)", original,
                                printable(suffix)));
    }
  } else {
    throw Error(fmt::format("invalid size '{}': unknown unit '{}' (use K, M, G or T)", original,
                            printable(suffix)));
  }
  if (value > (UINT64_MAX >> shift)) throw Error(fmt::format("size '{}' is too large", original));
  return value << shift;
}

bool valid_port_name(std::string_view name) {
  if (name.empty() || name.size() > 200 || name == "." || name == "..") return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-' || c == '+' || c == ':' || c == '@';
    if (!ok) return false;
  }
  return true;
}

PortOption parse_port_option(std::string_view text) {
  PortOption port;
  std::vector<std::string> backend_parts;
  bool have_name = false;
  size_t start = 0;
  while (start <= text.size()) {
    // Fields end at a single comma; ",," is a comma inside a field (the backend spec's escape
    // for a comma in a path, chardev::parse_port_backend), kept as written for the backend.
    size_t comma = start;
    while (comma < text.size()) {
      if (text[comma] != ',') {
        ++comma;
      } else if (comma + 1 < text.size() && text[comma + 1] == ',') {
        comma += 2;
      } else {
        break;
      }
    }
    const std::string_view token = text.substr(start, comma - start);
    if (token.starts_with("name=") && !have_name) {
      port.name = std::string(token.substr(5));
      have_name = true;
    } else if (token == "console") {
      port.console = true;
    } else if (!token.empty()) {
      backend_parts.emplace_back(token);
    }
    start = comma + 1;
  }
  if (!have_name) {
    throw Error(fmt::format("--port '{}' has no name= (use --port name=NAME,BACKEND[,console])",
                            printable(text)));
  }
  if (!valid_port_name(port.name)) {
    throw Error(
        fmt::format("invalid port name '{}': use 1-200 characters of letters, digits and "
                    "._-+:@ (e.g. org.pier.agent)",
                    printable(port.name)));
  }
  if (backend_parts.empty()) {
    throw Error(
        fmt::format("--port name={} has no backend (socket=PATH, tcp=PORT, pty, "
                    "file=PATH, stdio or null)",
                    port.name));
  }
  for (size_t i = 0; i < backend_parts.size(); ++i) {
    port.backend += (i ? "," : "") + backend_parts[i];
  }
  return port;
}

std::string default_linux_cmdline() {
  // ttyS0 is the console until virtio-console brings hvc0; panic=-1 reboots at once on a panic
  // instead of hanging. No reboot=: every method Linux tries ends the run (devices/
  // system_control.hpp), including its default on hardware-reduced ACPI (EFI, then the BIOS
  // reset vector).
  return "console=ttyS0 panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd";
}

std::string default_guest_dir() {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return "guest";
  return (exe.parent_path() / "guest").string();
}

namespace {

uint64_t host_memory_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key, unit;
  uint64_t kib = 0, total = 0;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemTotal:" || key == "SwapTotal:") total += kib << 10;
  }
  return total;
}

}  // namespace

RunOptions parse_run_options(const std::vector<std::string>& args) {
  RunOptions out;
  std::string memory = "512M", boot_method = "auto", host_profile = "auto";
  unsigned time_dilation = 0;
  std::vector<std::string> guest_command;
  std::vector<std::string> port_texts;
  std::string cmdline, console, resize_order, console_ring, config_file, seccomp_mode;
  std::string jail_dir, jail_fsize;
  unsigned jail_uid = 0, jail_gid = 0;
  po::options_description desc(
      "Usage: pier run [options] [-- command for the default guest's init]\n\nOptions");
  // clang-format off
  desc.add_options()
    ("help,h", "show this help")
    ("config", po::value<std::string>(&config_file),
     "read options from FILE: one 'option = value' per line (the long names without --, e.g. "
     "'memory = 1G', 'port = name=org.pier.agent,socket=/tmp/agent.sock'; '#' starts a comment). "
     "Flags given on the command line override the file (any --port replaces the file's ports)")
    ("kernel,k", po::value<std::string>(&out.machine.kernel_path),
     "kernel: a bzImage or an ELF vmlinux (default: the default guest built by tools/guest-image)")
    ("initrd,i", po::value<std::string>(&out.machine.initrd_path), "initial ramdisk")
    ("cmdline,c", po::value<std::string>(&cmdline),
     "kernel command line (replaces pier's default for Linux guests)")
    ("memory,m", po::value<std::string>(&memory)->default_value("512M"),
     "guest RAM: 64M minimum, units K/M/G/T; above 3G part of it lives above 4 GiB")
    ("cpus", po::value<unsigned>(&out.machine.cpus)->default_value(1), "number of vCPUs")
    ("serial", po::value<std::string>(&out.machine.serial),
     "COM1 (ttyS0) backend: stdio, null or file=PATH. Default: stdio, or null when --console "
     "is stdio. On a terminal stdio is raw; press Ctrl-A x to quit")
    ("console", po::value<std::string>(&console),
     "virtio-console port 0 (hvc0) backend: socket=PATH[,client[,reconnect=S]], tcp=[HOST:]PORT, "
     "pty, file=PATH, stdio or null. With stdio, the kernel console moves to hvc0 and "
     "--serial defaults to null")
    ("port", po::value<std::vector<std::string>>(&port_texts)->composing(),
     "a named virtio-console port, repeatable: name=NAME,BACKEND[,console]; the guest sees "
     "/dev/virtio-ports/NAME (console ports become hvcN instead)")
    ("max-ports", po::value<unsigned>(&out.machine.max_ports)->default_value(31),
     "virtio-console ports the guest driver sets up queues for (1-511); ports added at run time "
     "(port-add) count too")
    ("api-socket", po::value<std::string>(&out.machine.api_socket),
     "a unix socket for runtime control (pier ctl, or JSON lines: port-add, port-remove, ports, "
     "vm-status, quit, and events); implies the virtio-console device")
    ("resize-order", po::value<std::string>(&resize_order)->default_value("rows-cols"),
     "field order of the console RESIZE message: rows-cols for Linux 6.1 (Debian 12) and other "
     "kernels without commit 5326ab737a47; cols-rows (the virtio spec) for kernels with it. "
     "Linux merged, reverted and backported that commit, so the version does not tell")
    ("console-ring", po::value<std::string>(&console_ring)->default_value("64K"),
     "console output kept per console port while no client reads it, replayed to the next "
     "(oldest bytes dropped beyond it, counted); 0 to keep none, up to 64M")
    ("boot-method", po::value<std::string>(&boot_method)->default_value("auto"),
     "bzimage: the 64-bit boot protocol, the kernel decompresses itself; direct: pier "
     "decompresses the bzImage payload and enters the kernel proper; auto: direct where guest "
     "kernel code is slow (host profile pvm), else bzimage")
    ("host-profile", po::value<std::string>(&host_profile)->default_value("auto"),
     "auto (detect), pvm (the kvm_pvm software hypervisor) or none (hardware virtualization)")
    ("time-dilation", po::value<unsigned>(&time_dilation),
     "pvm profile: the guest's timer ticks come N times less often while its clock stays right "
     "(default 10; 1: off). See docs/pvm.md")
    ("rng", po::value<bool>(&out.machine.rng)->default_value(true),
     "a virtio-rng entropy device (true/false)")
    ("log-level", po::value<std::string>(&out.log_level)->default_value("warn"),
     "error, warn, info, debug or trace (to stderr)")
    ("kvm-device", po::value<std::string>(&out.machine.kvm_device)->default_value("/dev/kvm"),
     "the KVM device node")
    ("seccomp", po::value<std::string>(&seccomp_mode)->default_value("on"),
     "system call filters on pier's vCPU and I/O threads once the guest runs: on (a forbidden "
     "call ends pier by SIGSYS and names the call), off (for debugging) or log (allowed, logged "
     "by the kernel: for finding what a filter lacks)")
    ("jail", po::value<std::string>(&jail_dir),
     "run confined in DIR (root only): new mount, network, IPC, UTS and cgroup namespaces, DIR "
     "as the root directory, --jail-uid/--jail-gid, no_new_privs, resource limits. Unix sockets "
     "(--api-socket, socket= ports, port-add) must be files directly in DIR: a bare name "
     "means DIR/NAME. Everything else is opened before entering the jail. DIR must exist and "
     "be owned by the jail's uid. See README, Security")
    ("jail-uid", po::value<unsigned>(&jail_uid), "with --jail: the uid pier runs as (not 0)")
    ("jail-gid", po::value<unsigned>(&jail_gid), "with --jail: the gid pier runs as (not 0)")
    ("jail-fsize", po::value<std::string>(&jail_fsize),
     "with --jail: the largest file pier may write (RLIMIT_FSIZE: file= outputs, stderr "
     "redirected to a file); a write beyond it fails and is counted as lost. Default 1G; "
     "K/M/G/T, or unlimited")
    ("dump-dtb", po::value<std::string>(&out.machine.dump_dtb),
     "write the machine's device tree (the one the guest gets) to FILE and exit; "
     "dtc -I dtb FILE shows it");
  // clang-format on
  std::ostringstream help;
  help << desc;
  out.help_text = help.str();

  // Split off the guest command after "--".
  std::vector<std::string> own;
  bool after_dashes = false;
  for (const auto& a : args) {
    if (!after_dashes && a == "--") {
      after_dashes = true;
    } else if (after_dashes) {
      guest_command.push_back(a);
    } else {
      own.push_back(a);
    }
  }

  po::variables_map vm;
  bool input_has_percent = std::any_of(own.begin(), own.end(), [](const std::string& a) {
    return a.find('%') != std::string::npos;
  });
  try {
    po::store(po::command_line_parser(own).options(desc).run(), vm);
    if (vm.count("config")) {
      const std::string path = vm["config"].as<std::string>();
      // A config file is a few lines: refuse what is not a regular file or is too big to be one
      // (--config /dev/zero must not read forever).
      std::error_code ec;
      const auto status = std::filesystem::status(path, ec);
      if (ec || !std::filesystem::exists(status)) {
        throw Error(fmt::format("cannot read --config file '{}': no such file", path));
      }
      if (!std::filesystem::is_regular_file(status)) {
        throw Error(fmt::format("--config '{}' is not a regular file", path));
      }
      constexpr uintmax_t kMaxConfigBytes = 1 << 20;
      if (std::filesystem::file_size(path, ec) > kMaxConfigBytes || ec) {
        throw Error(fmt::format("--config file '{}' is larger than 1 MiB", path));
      }
      std::ifstream file(path);
      if (!file) throw Error(fmt::format("cannot read --config file '{}'", path));
      std::ostringstream text;
      text << file.rdbuf();
      if (text.str().size() > kMaxConfigBytes) {  // it grew since file_size()
        throw Error(fmt::format("--config file '{}' is larger than 1 MiB", path));
      }
      input_has_percent |= text.str().find('%') != std::string::npos;
      std::istringstream lines(text.str());
      po::parsed_options parsed = po::parse_config_file(lines, desc);
      // The command line wins: values stored first are kept, and any --port on the command line
      // replaces the file's port lines instead of adding to them.
      std::erase_if(parsed.options, [&](const po::option& o) {
        return o.string_key == "config" || o.string_key == "help" ||
               (o.string_key == "port" && vm.count("port"));
      });
      try {
        po::store(parsed, vm);
      } catch (const po::error& e) {
        throw Error(
            fmt::format("{} in --config file '{}'", po_message(e, input_has_percent), path));
      }
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw Error(fmt::format("{} (see pier run --help)", po_message(e, input_has_percent)));
  }
  if (vm.count("help")) {
    out.show_help = true;
    return out;
  }

  out.machine.memory_bytes = parse_size(memory);
  if (out.machine.memory_bytes < layout::kMinRam) {
    throw Error(fmt::format("--memory {} is too small: pier needs at least 64M", memory));
  }
  if (out.machine.memory_bytes % 4096 != 0) {
    throw Error(fmt::format("--memory {} is not a multiple of 4K", memory));
  }
  const uint64_t host = host_memory_bytes();
  if (out.machine.memory_bytes > layout::kMaxRam ||
      (host != 0 && out.machine.memory_bytes > host)) {
    throw Error(fmt::format("--memory {} is more than this host can back ({} MiB of RAM and swap)",
                            memory, host >> 20));
  }
  if (out.machine.cpus == 0) throw Error("--cpus must be at least 1");

  // virtio-console ports: port 0 (hvc0) first, then the named ports in order.
  const bool console_on_stdio = console == "stdio";
  if (!console.empty() || !port_texts.empty() || !out.machine.api_socket.empty()) {
    PortOption port0;
    port0.console = true;
    port0.backend = console.empty() ? "null" : console;
    out.machine.ports.push_back(port0);
  }
  std::set<std::string> names;
  for (const auto& text : port_texts) {
    PortOption port = parse_port_option(text);
    if (!names.insert(port.name).second) {
      throw Error(fmt::format("two ports are named '{}'; port names must be unique", port.name));
    }
    if (port.backend == "stdio" &&
        (console_on_stdio || !vm.count("serial") || out.machine.serial == "stdio")) {
      throw Error(
          fmt::format("port {} cannot use stdio: it is already taken by the serial port "
                      "or the console (use --serial null)",
                      port.name));
    }
    chardev::parse_port_backend(port.backend);  // a malformed backend fails here, not at boot
    out.machine.ports.push_back(std::move(port));
  }
  if (!out.machine.ports.empty()) chardev::parse_port_backend(out.machine.ports[0].backend);
  if (resize_order == "cols-rows") {
    out.machine.resize_cols_first = true;
  } else if (resize_order != "rows-cols") {
    throw Error(
        fmt::format("--resize-order {}: expected rows-cols or cols-rows", printable(resize_order)));
  }
  out.machine.console_ring_bytes = parse_size(console_ring);
  if (out.machine.console_ring_bytes > (64ull << 20)) {
    throw Error(fmt::format("--console-ring {} is more than 64M", console_ring));
  }
  if (out.machine.max_ports == 0 || out.machine.max_ports > 511) {
    throw Error(fmt::format("--max-ports {} is out of range (1-511)", out.machine.max_ports));
  }
  if (out.machine.ports.size() > out.machine.max_ports) {
    throw Error(fmt::format("{} ports configured but --max-ports is {}; raise --max-ports",
                            out.machine.ports.size(), out.machine.max_ports));
  }
  if (vm.count("serial")) {
    // The forms chardev::make_backend takes; checked here so a typo is reported as such, not
    // after (or instead of, without /dev/kvm) setting up the VM.
    const std::string& serial = out.machine.serial;
    if (serial != "stdio" && serial != "null" &&
        !(serial.starts_with("file=") && serial.size() > 5)) {
      throw Error(fmt::format("unknown --serial backend '{}' (use stdio, null or file=PATH)",
                              printable(serial)));
    }
    if (console_on_stdio && out.machine.serial == "stdio") {
      throw Error("--serial stdio and --console stdio cannot share the terminal; pick one");
    }
  } else {
    out.machine.serial = console_on_stdio ? "null" : "stdio";
  }

  if (boot_method == "auto") {
    out.machine.boot_method = BootMethodChoice::kAuto;
  } else if (boot_method == "bzimage") {
    out.machine.boot_method = BootMethodChoice::kBzImage;
  } else if (boot_method == "direct") {
    out.machine.boot_method = BootMethodChoice::kDirect;
  } else {
    throw Error(fmt::format("unknown --boot-method '{}' (use auto, bzimage or direct)",
                            printable(boot_method)));
  }
  out.machine.seccomp = seccomp::parse_mode(seccomp_mode);
  out.machine.host = select_host_profile(host_profile);
  out.machine.host.kvm_device = out.machine.kvm_device;
  if (vm.count("time-dilation")) {
    if (time_dilation == 0 || time_dilation > 1000) {
      throw Error(fmt::format("--time-dilation {} is out of range (1 to 1000)", time_dilation));
    }
    if (out.machine.host.kind != HostKind::kPvm) {
      throw Error("--time-dilation only applies to the pvm host profile (kvm_pvm hosts)");
    }
    out.machine.host.time_dilation = time_dilation;
  }

  if (vm.count("jail")) {
    jail::Config jail;
    jail.dir = jail_dir;
    if (!vm.count("jail-uid") || !vm.count("jail-gid")) {
      throw Error(
          "--jail needs --jail-uid and --jail-gid (the unprivileged uid and gid pier runs as "
          "inside the jail)");
    }
    jail.uid = jail_uid;
    jail.gid = jail_gid;
    if (vm.count("jail-fsize")) {
      jail.file_size_limit = jail_fsize == "unlimited" ? UINT64_MAX : parse_size(jail_fsize);
    }
    out.jail = jail;
  } else {
    for (const char* option : {"jail-uid", "jail-gid", "jail-fsize"}) {
      if (vm.count(option)) throw Error(fmt::format("--{} only applies with --jail DIR", option));
    }
  }

  const bool default_guest = out.machine.kernel_path.empty();
  if (default_guest) {
    const std::string dir = default_guest_dir();
    out.machine.kernel_path = dir + "/vmlinuz";
    if (out.machine.initrd_path.empty()) out.machine.initrd_path = dir + "/initramfs.cpio";
    if (!std::filesystem::exists(out.machine.kernel_path)) {
      throw Error(
          fmt::format("no --kernel given and the default guest is not built ({} is "
                      "missing): run tools/guest-image, or pass --kernel",
                      out.machine.kernel_path));
    }
  }
  if (vm.count("cmdline")) {
    out.machine.cmdline = cmdline;
  } else {
    out.machine.cmdline = default_linux_cmdline();
    // The last console= is /dev/console: hvc0 when the user put the console on stdio.
    if (console_on_stdio) out.machine.cmdline += " console=hvc0";
  }
  if (!guest_command.empty()) {
    out.machine.cmdline += " --";
    for (const auto& word : guest_command) out.machine.cmdline += " " + word;
  }
  return out;
}

}  // namespace pier
