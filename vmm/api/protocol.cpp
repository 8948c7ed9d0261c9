#include "vmm/api/protocol.hpp"

#include <fmt/format.h>

#include <ctime>
#include <initializer_list>

#include "vmm/error.hpp"

namespace pier::api {
namespace {

constexpr std::string_view kCommands = "port-add, port-remove, ports, vm-status, quit";

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "an integer";
    case json::value_t::number_float:
      return "a number";
    case json::value_t::string:
      return "a string";
    case json::value_t::array:
      return "an array";
    case json::value_t::object:
      return "an object";
    default:
      return "a value";
  }
}

// A request's fields, checked against what its command takes.
class Fields {
 public:
  Fields(const json& request, const std::string& cmd, std::initializer_list<std::string_view> known)
      : request_(request), cmd_(cmd) {
    for (const auto& [key, value] : request.items()) {
      if (key == "cmd" || key == "tag") continue;
      bool ok = false;
      for (auto k : known) ok |= key == k;
      if (!ok) {
        std::string list;
        for (auto k : known) list += fmt::format("{}{}", list.empty() ? "" : ", ", k);
        throw Error(fmt::format("unknown field '{}' for {} (it takes: {})", key, cmd_,
                                list.empty() ? "no fields" : list));
      }
    }
  }

  const json* get(std::string_view name) const {
    auto it = request_.find(name);
    return it == request_.end() ? nullptr : &*it;
  }
  std::string string(std::string_view name) const {
    const json* v = get(name);
    if (v == nullptr) throw Error(fmt::format("{} needs the field '{}' (a string)", cmd_, name));
    if (!v->is_string()) {
      throw Error(
          fmt::format("field '{}' of {} must be a string, not {}", name, cmd_, type_name(*v)));
    }
    return v->get<std::string>();
  }
  bool boolean(std::string_view name, bool fallback) const {
    const json* v = get(name);
    if (v == nullptr) return fallback;
    if (!v->is_boolean()) {
      throw Error(
          fmt::format("field '{}' of {} must be true or false, not {}", name, cmd_, type_name(*v)));
    }
    return v->get<bool>();
  }
  uint32_t port_id(std::string_view name) const {
    const json* v = get(name);
    if (v == nullptr || !(v->is_number_integer() || v->is_number_unsigned())) {
      throw Error(fmt::format("field '{}' of {} must be a port id (an integer), not {}", name, cmd_,
                              v ? type_name(*v) : "missing"));
    }
    if (v->is_number_unsigned()) {
      if (const auto u = v->get<uint64_t>(); u <= UINT32_MAX) return static_cast<uint32_t>(u);
    } else if (const auto i = v->get<int64_t>(); i >= 0 && i <= int64_t{UINT32_MAX}) {
      return static_cast<uint32_t>(i);
    }
    throw Error(fmt::format("there is no port {}", v->dump()));
  }

 private:
  const json& request_;
  const std::string& cmd_;
};

std::string printable(std::string_view text, size_t max = 80) {
  std::string out;
  for (const char c : text.substr(0, max)) {
    const auto byte = static_cast<unsigned char>(c);
    out += byte < 0x20 || byte >= 0x7f ? fmt::format("\\x{:02x}", byte) : std::string(1, c);
  }
  if (text.size() > max) out += "...";
  return out;
}

json timestamp_json(std::chrono::system_clock::time_point when) {
  const auto us =
      std::chrono::duration_cast<std::chrono::microseconds>(when.time_since_epoch()).count();
  return {{"seconds", us / 1000000}, {"microseconds", us % 1000000}};
}

}  // namespace

std::string dump_line(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

json error_json(std::string_view message) {
  return {{"ok", false}, {"error", std::string(message)}};
}

json port_json(const virtio::console::PortStats& p) {
  return {{"id", p.id},
          {"name", p.name},
          {"backend", p.backend},
          {"console", p.console},
          {"host_connected", p.host_connected},
          {"guest_ready", p.guest_ready},
          {"guest_connected", p.guest_connected},
          {"bytes_to_guest", p.bytes_to_guest},
          {"bytes_from_guest", p.bytes_from_guest},
          {"bytes_to_host", p.bytes_to_host},
          {"bytes_lost", p.bytes_lost},
          {"bytes_buffered", p.bytes_buffered},
          {"console_bytes_dropped", p.console_bytes_dropped},
          {"bytes_discarded", p.bytes_discarded},
          {"host_connects", p.host_connects},
          // What each direction waits for (FlowWait): names the stop of a stalled stream.
          {"to_guest_wait", std::string(virtio::console::to_string(p.to_guest_wait))},
          {"to_host_wait", std::string(virtio::console::to_string(p.to_host_wait))}};
}

json event_json(const virtio::console::PortEvent& event,
                std::chrono::system_clock::time_point when) {
  return {{"event", std::string(virtio::console::to_string(event.kind))},
          {"port", {{"id", event.id}, {"name", event.name}}},
          {"timestamp", timestamp_json(when)}};
}

json vm_stopped_json(std::string_view reason, std::chrono::system_clock::time_point when) {
  return {{"event", "vm-stopped"},
          {"reason", std::string(reason)},
          {"timestamp", timestamp_json(when)}};
}

json guest_halted_json(std::string_view where, std::chrono::system_clock::time_point when) {
  return {{"event", "guest-halted"},
          {"vcpus", std::string(where)},
          {"timestamp", timestamp_json(when)}};
}

json RequestHandler::handle_line(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  json request;
  try {
    request = json::parse(line);
  } catch (const json::exception& e) {
    // nlohmann's message quotes the offending text; keep it short and printable.
    std::string what = e.what();
    if (auto pos = what.find("parse error"); pos != std::string::npos) what = what.substr(pos);
    return error_json(fmt::format("malformed JSON: {}", printable(what, 200)));
  }
  return handle(request);
}

json RequestHandler::handle(const json& request) {
  if (!request.is_object()) {
    return error_json(fmt::format("a request is a JSON object like {{\"cmd\": \"ports\"}}, not {}",
                                  type_name(request)));
  }
  json response;
  const auto cmd_it = request.find("cmd");
  if (cmd_it == request.end()) {
    response = error_json(fmt::format("the request has no \"cmd\" (one of: {})", kCommands));
  } else if (!cmd_it->is_string()) {
    response = error_json(fmt::format("\"cmd\" must be a string, not {}", type_name(*cmd_it)));
  } else {
    const std::string cmd = cmd_it->get<std::string>();
    try {
      response = {{"ok", true}, {"result", dispatch(cmd, request)}};
    } catch (const Error& e) {
      response = error_json(e.what());
    } catch (const std::exception& e) {
      response = error_json(fmt::format("internal error: {}", e.what()));
    }
  }
  if (auto tag = request.find("tag"); tag != request.end()) response["tag"] = *tag;
  return response;
}

json RequestHandler::dispatch(const std::string& cmd, const json& request) {
  if (cmd == "port-add") {
    Fields f(request, cmd, {"name", "backend", "console"});
    const std::string name = f.string("name");
    const std::string backend = f.string("backend");
    const bool console = f.boolean("console", false);
    if (name.empty()) throw Error("port-add: the name is empty");
    const Target::AddedPort added = target_.add_port(name, backend, console);
    return {{"id", added.id},
            {"name", name},
            {"console", console},
            {"backend", added.backend},
            {"address", added.address}};
  }
  if (cmd == "port-remove") {
    Fields f(request, cmd, {"name", "id"});
    const bool by_name = f.get("name") != nullptr;
    const bool by_id = f.get("id") != nullptr;
    if (by_name == by_id) throw Error("port-remove takes either \"name\" or \"id\" (one of them)");
    uint32_t id = 0;
    std::string name;
    const auto ports = target_.ports();
    if (by_name) {
      name = f.string("name");
      bool found = false;
      for (const auto& p : ports) {
        if (!p.name.empty() && p.name == name) {
          id = p.id;
          found = true;
        }
      }
      if (!found) throw Error(fmt::format("there is no port named '{}'", printable(name)));
    } else {
      id = f.port_id("id");
      bool found = false;
      for (const auto& p : ports) {
        if (p.id == id) {
          name = p.name;
          found = true;
        }
      }
      if (!found) throw Error(fmt::format("there is no port {}", id));
    }
    target_.remove_port(id);
    return {{"id", id}, {"name", name}};
  }
  if (cmd == "ports") {
    Fields f(request, cmd, {});
    json list = json::array();
    for (const auto& p : target_.ports()) list.push_back(port_json(p));
    return {{"ports", std::move(list)}};
  }
  if (cmd == "vm-status") {
    Fields f(request, cmd, {});
    return target_.status();
  }
  if (cmd == "quit") {
    Fields f(request, cmd, {});
    target_.quit();
    return json::object();
  }
  throw Error(fmt::format("unknown command '{}' (commands: {})", printable(cmd), kCommands));
}

// ---------------------------------------------------------------------------------------------
// Human-readable output.

namespace {

std::string iso_time(const json& ts) {
  if (!ts.is_object()) return "-";
  const auto seconds = static_cast<std::time_t>(ts.value("seconds", int64_t{0}));
  const auto us = ts.value("microseconds", int64_t{0});
  std::tm tm{};
  ::localtime_r(&seconds, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%H:%M:%S", &tm);
  return fmt::format("{}.{:06}", buf, us);
}

std::string port_label(const json& port) {
  const std::string name = port.value("name", "");
  return name.empty() ? fmt::format("port {}", port.value("id", 0u))
                      : fmt::format("port {} '{}'", port.value("id", 0u), name);
}

std::string yes_no(const json& v, const char* key) {
  return v.value(key, false) ? "yes" : "no";
}

}  // namespace

std::string format_result(std::string_view cmd, const json& result) {
  if (cmd == "port-add") {
    std::string s = fmt::format("{} added on {}", port_label(result), result.value("backend", ""));
    if (result.value("console", false)) s += " (console)";
    return s + "\n";
  }
  if (cmd == "port-remove") return port_label(result) + " removed\n";
  if (cmd == "quit") return "the VM is stopping\n";
  if (cmd == "ports") {
    std::string s =
        fmt::format("{:>3}  {:<24} {:<7} {:<5} {:<5} {:>12} {:>12} {:>9}  {}\n", "ID", "NAME",
                    "CONSOLE", "HOST", "GUEST", "TO-GUEST", "FROM-GUEST", "DROPPED", "BACKEND");
    for (const auto& p : result.value("ports", json::array())) {
      s += fmt::format("{:>3}  {:<24} {:<7} {:<5} {:<5} {:>12} {:>12} {:>9}  {}\n",
                       p.value("id", 0u), p.value("name", ""), yes_no(p, "console"),
                       yes_no(p, "host_connected"), yes_no(p, "guest_connected"),
                       p.value("bytes_to_guest", uint64_t{0}),
                       p.value("bytes_from_guest", uint64_t{0}),
                       p.value("console_bytes_dropped", uint64_t{0}), p.value("backend", ""));
    }
    return s;
  }
  // vm-status and anything else: key: value lines.
  std::string s;
  if (result.is_object()) {
    for (const auto& [key, value] : result.items()) {
      s += fmt::format("{}: {}\n", key,
                       value.is_string() ? value.get<std::string>() : dump_line(value));
    }
  } else {
    s = dump_line(result) + "\n";
  }
  return s;
}

std::string format_event(const json& event) {
  const std::string kind = event.value("event", "?");
  const std::string when = iso_time(event.value("timestamp", json()));
  if (kind == "vm-stopped") {
    return fmt::format("{} vm-stopped ({})\n", when, event.value("reason", ""));
  }
  if (kind == "guest-halted") {
    return fmt::format("{} guest-halted: every vCPU halted with interrupts off ({})\n", when,
                       event.value("vcpus", ""));
  }
  return fmt::format("{} {} {}\n", when, kind, port_label(event.value("port", json::object())));
}

}  // namespace pier::api
