#pragma once
// Always-connected port backends (stdio, file, null) built on the serial port's chardev
// Backends, so the terminal handling (raw mode, Ctrl-A x, restoring the terminal on every exit
// path) exists once.
#include <memory>
#include <string>

#include "devices/chardev/port_backend.hpp"

namespace pier::chardev {

std::unique_ptr<PortBackend> make_stdio_port(QuitHandler quit);
std::unique_ptr<PortBackend> make_file_port(std::string path);
std::unique_ptr<PortBackend> make_null_port();

}  // namespace pier::chardev
