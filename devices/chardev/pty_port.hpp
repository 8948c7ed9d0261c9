#pragma once
// A pty port backend: the guest's bytes appear on /dev/pts/N; "host connected" while some
// program has the slave open. See pty_port.cpp for how that is detected.
#include <chrono>
#include <memory>
#include <string>

#include "devices/chardev/port_backend.hpp"

namespace pier::chardev {

enum class PtyDetect {
  kInotify,  // IN_OPEN on /dev/pts/N: no latency, no wake-ups (falls back to kPoll if missing)
  kPoll,     // check the master every kPtyPollInterval while nobody has the slave open
};

constexpr std::chrono::milliseconds kPtyPollInterval{100};

std::unique_ptr<PortBackend> make_pty_port(std::string label,
                                           PtyDetect detect = PtyDetect::kInotify);

}  // namespace pier::chardev
