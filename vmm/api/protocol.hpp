#pragma once
// The runtime API's protocol (README "Runtime control"): one JSON object per line each way.
//
//   request   {"cmd": "port-add", "name": "org.pier.agent", "backend": "socket=/tmp/a.sock",
//              "console": false, "tag": <anything, echoed>}
//   response  {"ok": true, "result": {...}, "tag": ...}  or  {"ok": false, "error": "..."}
//   event     {"event": "guest-opened", "port": {"id": 3, "name": "org.pier.agent"},
//              "timestamp": {"seconds": S, "microseconds": US}}
//
// Commands: port-add (name, backend, [console]), port-remove (name or id), ports, vm-status,
// quit. Unknown commands and fields, missing or mistyped fields are errors; every request line
// gets exactly one response line. Parsing and dispatch live here, apart from the socket
// (server.hpp) and the machine (Target), so they are unit-tested without KVM.
#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "virtio/console/console_device.hpp"

namespace pier::api {

using json = nlohmann::json;

// What the API controls: the running machine (vmm/machine.cpp), or a fake in unit tests.
// Called on the I/O thread. Errors are pier::Error with one line, sent back as the error.
class Target {
 public:
  struct AddedPort {
    uint32_t id = 0;
    std::string backend;  // PortBackend::describe()
    std::string address;  // PortBackend::address(): socket path, host:port, /dev/pts/N
  };
  virtual ~Target() = default;
  // `backend` is a spec as on the command line (socket=PATH, tcp=PORT, pty, ...).
  virtual AddedPort add_port(const std::string& name, const std::string& backend, bool console) = 0;
  virtual void remove_port(uint32_t id) = 0;
  virtual std::vector<virtio::console::PortStats> ports() const = 0;
  // A JSON object: state, uptime, cpus, memory, ports, ...
  virtual json status() const = 0;
  // Ends the run cleanly after the current loop iteration (the response still goes out).
  virtual void quit() = 0;
};

// Compact, one line, invalid UTF-8 replaced (garbage input must never throw on the way out).
std::string dump_line(const json& value);

json port_json(const virtio::console::PortStats& port);
// `when`: wall-clock time of the event.
json event_json(const virtio::console::PortEvent& event,
                std::chrono::system_clock::time_point when);
// {"event": "vm-stopped", "reason": ...}
json vm_stopped_json(std::string_view reason, std::chrono::system_clock::time_point when);
// {"event": "guest-halted", "vcpus": "vCPU 0 rip=0x...": the guest can never run again.
json guest_halted_json(std::string_view where, std::chrono::system_clock::time_point when);
json error_json(std::string_view message);

class RequestHandler {
 public:
  explicit RequestHandler(Target& target) : target_(target) {}
  // One request line (without its newline) -> one response (an object).
  json handle_line(std::string_view line);
  json handle(const json& request);

 private:
  json dispatch(const std::string& cmd, const json& request);
  Target& target_;
};

// Human-readable renderings for `pier ctl` (without --json).
std::string format_result(std::string_view cmd, const json& result);
std::string format_event(const json& event);

}  // namespace pier::api
