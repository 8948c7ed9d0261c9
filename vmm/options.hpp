#pragma once
// Command-line parsing for `pier run` (Boost.Program_options), kept apart from main() so it is
// unit-tested. Every user mistake becomes a pier::Error with one actionable line.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "vmm/jail.hpp"
#include "vmm/machine.hpp"

namespace pier {

// "512M", "2G", "64MiB", "1048576K", "1T"; a bare number means MiB (as QEMU's -m does).
// Throws pier::Error on anything else or on overflow.
uint64_t parse_size(std::string_view text);

struct RunOptions {
  MachineConfig machine;
  // --jail DIR with --jail-uid/--jail-gid/--jail-fsize (vmm/jail.hpp); empty: no jail.
  std::optional<jail::Config> jail;
  std::string log_level = "warn";
  bool show_help = false;
  std::string help_text;
};

// "name=NAME,BACKEND[,console]" (BACKEND may itself contain commas, e.g.
// "socket=/tmp/a.sock,client,reconnect=2", and ",," for a comma in a path, passed on as
// written). Throws pier::Error on a malformed option or name.
PortOption parse_port_option(std::string_view text);
// Port names become /dev/virtio-ports/<name> and a sysfs attribute: 1-200 characters of
// [A-Za-z0-9._-+:@], as reverse-DNS names like org.pier.agent use.
bool valid_port_name(std::string_view name);

// Default kernel command line for a Linux guest on pier's machine.
std::string default_linux_cmdline();
// Where the default guest (tools/guest-image) lives: <directory of the pier binary>/guest.
std::string default_guest_dir();

// Parses the arguments after `run`. Words after `--` are the command the default guest's /init
// runs; they are appended to the kernel command line after " -- ".
RunOptions parse_run_options(const std::vector<std::string>& args);

}  // namespace pier
