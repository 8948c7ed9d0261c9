#pragma once
// The client subcommands of the pier binary (README "Runtime control"):
//   pier ctl [--api-socket PATH] [--json] COMMAND [ARGS]   drive a running pier over its API
//   pier port SOCKET|HOST:PORT                             attach this terminal (or a pipe) to a
//   port
// Both run in their own process and may block; they never touch a VM directly.
#include <string>
#include <vector>

namespace pier {

// Returns the process exit code; usage errors throw pier::Error.
int ctl_command(const std::vector<std::string>& args);
int port_command(const std::vector<std::string>& args);

}  // namespace pier
