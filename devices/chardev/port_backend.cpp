#include "devices/chardev/port_backend.hpp"

#include <fmt/format.h>
#include <sys/un.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "devices/chardev/local_port.hpp"
#include "devices/chardev/pty_port.hpp"
#include "devices/chardev/socket_port.hpp"
#include "vmm/error.hpp"

namespace pier::chardev {
namespace {

constexpr std::string_view kForms =
    "socket=PATH[,client[,reconnect=SECONDS]], tcp=[HOST:]PORT, pty, file=PATH, stdio or null";
constexpr std::string_view kDefaultTcpHost = "127.0.0.1";
constexpr uint64_t kMaxReconnectMs = 24ull * 3600 * 1000;

// Splits on ',' with ",," standing for a literal comma (QEMU's escape), so any path works.
std::vector<std::string> split_fields(std::string_view text) {
  std::vector<std::string> fields(1);
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != ',') {
      fields.back() += text[i];
    } else if (i + 1 < text.size() && text[i + 1] == ',') {
      fields.back() += ',';
      ++i;
    } else {
      fields.emplace_back();
    }
  }
  return fields;
}

std::optional<uint64_t> parse_digits(std::string_view s, size_t max_len) {
  if (s.empty() || s.size() > max_len) return std::nullopt;
  uint64_t value = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + static_cast<uint64_t>(c - '0');
  }
  return value;
}

// "2", "0.5", "1.25": seconds with up to millisecond precision.
std::optional<uint64_t> parse_seconds_as_ms(std::string_view s) {
  const size_t dot = s.find('.');
  const auto whole = parse_digits(s.substr(0, dot), 6);
  if (!whole) return std::nullopt;
  uint64_t ms = *whole * 1000;
  if (dot != std::string_view::npos) {
    const std::string_view frac = s.substr(dot + 1);
    const auto digits = parse_digits(frac, 3);
    if (!digits) return std::nullopt;
    uint64_t scaled = *digits;
    for (size_t i = frac.size(); i < 3; ++i) scaled *= 10;
    ms += scaled;
  }
  return ms;
}

class SpecParser {
 public:
  explicit SpecParser(std::string_view text) : text_(text) { spec_.text = std::string(text); }

  PortBackendSpec parse() {
    if (text_.empty()) fail(fmt::format("empty backend (use {})", kForms));
    // A path would end early at it (or, first in a socket path, mean the abstract namespace).
    if (text_.find('\0') != std::string_view::npos) fail("contains a NUL byte");
    fields_ = split_fields(text_);
    const std::string& head = fields_[0];
    const size_t eq = head.find('=');
    kind_ = head.substr(0, eq);
    has_value_ = eq != std::string::npos;
    value_ = has_value_ ? head.substr(eq + 1) : std::string();

    if (kind_ == "socket") {
      parse_socket();
    } else if (kind_ == "tcp") {
      parse_tcp();
    } else if (kind_ == "file") {
      spec_.kind = PortBackendSpec::Kind::kFile;
      spec_.path = require_value("PATH", "file=PATH");
      no_options("");
    } else if (kind_ == "pty" || kind_ == "stdio" || kind_ == "null") {
      if (has_value_) fail(fmt::format("'{}' takes no value", kind_));
      spec_.kind = kind_ == "pty"     ? PortBackendSpec::Kind::kPty
                   : kind_ == "stdio" ? PortBackendSpec::Kind::kStdio
                                      : PortBackendSpec::Kind::kNull;
      no_options("");
    } else {
      fail(fmt::format("unknown backend '{}' (use {})", kind_, kForms));
    }
    return spec_;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw Error(fmt::format("invalid port backend '{}': {}", printable(text_), printable(why)));
  }

  std::string require_value(std::string_view what, std::string_view form) const {
    if (value_.empty()) fail(fmt::format("missing {} ({})", what, form));
    return value_;
  }

  void no_options(std::string_view allowed) const {
    if (fields_.size() < 2) return;
    if (allowed.empty()) {
      fail(fmt::format("unknown option '{}' ({} takes no options)", fields_[1], kind_));
    }
    fail(fmt::format("unknown option '{}' ({} takes: {})", fields_[1], kind_, allowed));
  }

  void parse_socket() {
    spec_.path = require_value("PATH", "socket=PATH");
    if (spec_.path.size() >= sizeof(sockaddr_un::sun_path)) {
      fail(fmt::format("the socket path is {} bytes; unix sockets allow at most {}",
                       spec_.path.size(), sizeof(sockaddr_un::sun_path) - 1));
    }
    bool client = false;
    std::optional<std::string> reconnect;
    for (size_t i = 1; i < fields_.size(); ++i) {
      const std::string& f = fields_[i];
      if (f == "client") {
        if (client) fail("'client' given twice");
        client = true;
      } else if (f.starts_with("reconnect=")) {
        if (reconnect) fail("'reconnect' given twice");
        reconnect = f.substr(10);
      } else {
        fail(fmt::format("unknown option '{}' (socket takes: client, reconnect=SECONDS)", f));
      }
    }
    spec_.kind = client ? PortBackendSpec::Kind::kUnixConnect : PortBackendSpec::Kind::kUnixListen;
    if (!reconnect) return;
    if (!client)
      fail("reconnect= only applies to client mode (socket=PATH,client,reconnect=SECONDS)");
    const auto ms = parse_seconds_as_ms(*reconnect);
    if (!ms || *ms == 0 || *ms > kMaxReconnectMs) {
      fail(
          fmt::format("bad reconnect value '{}' (seconds, more than 0 and at most 86400, e.g. "
                      "reconnect=2 or reconnect=0.5)",
                      *reconnect));
    }
    spec_.reconnect = std::chrono::milliseconds(*ms);
  }

  void parse_tcp() {
    spec_.kind = PortBackendSpec::Kind::kTcpListen;
    const std::string value = require_value("PORT", "tcp=[HOST:]PORT");
    std::string port;
    if (value.front() == '[') {
      const size_t close = value.find(']');
      if (close == std::string::npos) fail("missing ']' after the IPv6 address (tcp=[::1]:PORT)");
      spec_.host = value.substr(1, close - 1);
      if (spec_.host.empty()) fail("empty IPv6 address in brackets");
      if (close + 1 >= value.size() || value[close + 1] != ':') {
        fail("expected ':PORT' after the IPv6 address (tcp=[::1]:PORT)");
      }
      port = value.substr(close + 2);
    } else if (const size_t colon = value.rfind(':'); colon != std::string::npos) {
      spec_.host = value.substr(0, colon);
      port = value.substr(colon + 1);
      if (spec_.host.empty()) {
        fail(
            fmt::format("empty HOST before ':' (tcp={} listens on {}; give a host to listen "
                        "elsewhere)",
                        port, kDefaultTcpHost));
      }
      if (spec_.host.find(':') != std::string::npos) {
        fail("put an IPv6 address in brackets (tcp=[::1]:PORT)");
      }
    } else {
      spec_.host = std::string(kDefaultTcpHost);
      port = value;
    }
    const auto number = parse_digits(port, 5);
    if (!number || *number > 65535) {
      fail(fmt::format("bad port '{}' (a number from 0 to 65535; 0 picks a free port)", port));
    }
    spec_.port = static_cast<uint16_t>(*number);
    for (size_t i = 1; i < fields_.size(); ++i) {
      if (fields_[i] == "client" || fields_[i].starts_with("reconnect=")) {
        fail("tcp only listens; to connect out use socket=PATH,client");
      }
    }
    no_options("");
  }

  std::string_view text_;
  PortBackendSpec spec_;
  std::vector<std::string> fields_;
  std::string kind_;
  std::string value_;
  bool has_value_ = false;
};

}  // namespace

PortBackendSpec parse_port_backend(std::string_view spec) {
  return SpecParser(spec).parse();
}

std::unique_ptr<PortBackend> make_port_backend(const PortBackendSpec& spec,
                                               PortBackendOptions options) {
  switch (spec.kind) {
    case PortBackendSpec::Kind::kUnixListen:
      return make_unix_listen_port(spec.path);
    case PortBackendSpec::Kind::kUnixConnect:
      return make_unix_connect_port(spec.path, spec.reconnect);
    case PortBackendSpec::Kind::kTcpListen:
      return make_tcp_listen_port(spec.host, spec.port);
    case PortBackendSpec::Kind::kPty:
      return make_pty_port(std::move(options.label));
    case PortBackendSpec::Kind::kFile:
      return make_file_port(spec.path);
    case PortBackendSpec::Kind::kStdio:
      return make_stdio_port(std::move(options.quit));
    case PortBackendSpec::Kind::kNull:
      return make_null_port();
  }
  throw Error("unknown port backend kind");
}

}  // namespace pier::chardev
