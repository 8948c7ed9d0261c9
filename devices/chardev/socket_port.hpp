#pragma once
// Socket port backends: listening unix and TCP sockets (one client at a time) and an outgoing
// unix connection with optional reconnect. See socket_port.cpp for the exact rules.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "devices/chardev/port_backend.hpp"

namespace pier::chardev {

std::unique_ptr<PortBackend> make_unix_listen_port(std::string path);
std::unique_ptr<PortBackend> make_unix_connect_port(std::string path,
                                                    std::chrono::milliseconds reconnect);
std::unique_ptr<PortBackend> make_tcp_listen_port(std::string host, uint16_t port);

}  // namespace pier::chardev
