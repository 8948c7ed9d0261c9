// libFuzzer target for the host-side spec strings users type: the port backend spec of
// --console and of every --port (chardev::parse_port_backend: "socket=PATH[,client[,
// reconnect=S]]", "tcp=[HOST:]PORT", "pty", "file=PATH", "stdio", "null", with ",," for a comma
// in a path), the --port option around it (parse_port_option: "name=NAME,BACKEND[,console]"),
// port names, --memory / --console-ring sizes (parse_size) and the --serial backend.
//
// Invariants (abort = finding):
//  - a bad spec is a pier::Error with one printable line; nothing else is thrown;
//  - what parses is sane (a socket path fits sun_path, a tcp port fits 16 bits, reconnect only
//    in client mode and within (0, 24 h]) and survives a round trip: rendered back with ",,"
//    escapes, it parses to the same spec;
//  - --port carries its backend spec unchanged: "name=NAME," + SPEC (+ ",console") gives the
//    name, the console flag and a backend that parses to the same spec as SPEC alone;
//  - parse_size never overflows: it returns value << shift exactly or refuses.
#include <fuzzer/FuzzedDataProvider.h>
#include <sys/un.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "devices/chardev/backend.hpp"
#include "devices/chardev/port_backend.hpp"
#include "vmm/error.hpp"
#include "vmm/log.hpp"
#include "vmm/options.hpp"

using namespace pier;
using chardev::PortBackendSpec;

namespace {

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "backend_spec_fuzz: invariant broken: %s\n", what.c_str());
  std::abort();
}

void check_message(const Error& e, std::string_view input) {
  const std::string what = e.what();
  if (what.empty()) fail("empty error message");
  for (const char c : what) {
    const auto b = static_cast<unsigned char>(c);
    if (b < 0x20 || b == 0x7f)
      fail("error message with control byte " + std::to_string(b) + " for input of " +
           std::to_string(input.size()) + " bytes: " + what);
  }
}

std::string escape(std::string_view s) {
  std::string out;
  for (const char c : s) {
    out += c;
    if (c == ',') out += ',';
  }
  return out;
}

// The spec as a user would write it.
std::string render(const PortBackendSpec& s) {
  switch (s.kind) {
    case PortBackendSpec::Kind::kUnixListen:
      return "socket=" + escape(s.path);
    case PortBackendSpec::Kind::kUnixConnect: {
      std::string out = "socket=" + escape(s.path) + ",client";
      if (s.reconnect.count() > 0) {
        char buf[32];
        std::snprintf(buf, sizeof(buf), ",reconnect=%lld.%03lld",
                      static_cast<long long>(s.reconnect.count() / 1000),
                      static_cast<long long>(s.reconnect.count() % 1000));
        out += buf;
      }
      return out;
    }
    case PortBackendSpec::Kind::kTcpListen: {
      const bool brackets = s.host.find(':') != std::string::npos || s.host.starts_with("[");
      return "tcp=" + (brackets ? "[" + escape(s.host) + "]" : escape(s.host)) + ":" +
             std::to_string(s.port);
    }
    case PortBackendSpec::Kind::kPty:
      return "pty";
    case PortBackendSpec::Kind::kFile:
      return "file=" + escape(s.path);
    case PortBackendSpec::Kind::kStdio:
      return "stdio";
    case PortBackendSpec::Kind::kNull:
      return "null";
  }
  fail("unknown kind");
}

bool same(const PortBackendSpec& a, const PortBackendSpec& b) {
  return a.kind == b.kind && a.path == b.path && a.host == b.host && a.port == b.port &&
         a.reconnect == b.reconnect;
}

std::string describe(const PortBackendSpec& s) {
  return "kind " + std::to_string(static_cast<int>(s.kind)) + " path '" + s.path + "' host '" +
         s.host + "' port " + std::to_string(s.port) + " reconnect " +
         std::to_string(s.reconnect.count()) + "ms";
}

std::optional<PortBackendSpec> parse(std::string_view text) {
  try {
    return chardev::parse_port_backend(text);
  } catch (const Error& e) {
    check_message(e, text);
    return std::nullopt;
  }
}

void check_spec(std::string_view text) {
  const auto spec = parse(text);
  if (!spec) return;
  const auto& s = *spec;
  using Kind = PortBackendSpec::Kind;
  if ((s.kind == Kind::kUnixListen || s.kind == Kind::kUnixConnect) &&
      (s.path.empty() || s.path.size() >= sizeof(sockaddr_un::sun_path)))
    fail("socket path of " + std::to_string(s.path.size()) + " bytes accepted");
  if (s.path.find('\0') != std::string::npos) fail("path with a NUL accepted");
  if (s.reconnect.count() != 0 && (s.kind != Kind::kUnixConnect || s.reconnect.count() < 0 ||
                                   s.reconnect > std::chrono::hours(24)))
    fail("reconnect " + std::to_string(s.reconnect.count()) + " accepted");
  if (s.kind == Kind::kTcpListen && s.host.empty()) fail("tcp with an empty host");
  const std::string again = render(s);
  const auto back = parse(again);
  if (!back) fail("rendered spec '" + again + "' does not parse (from " + describe(s) + ")");
  if (!same(s, *back))
    fail("round trip changed the spec: " + describe(s) + " -> '" + again + "' -> " +
         describe(*back));
}

// --port name=NAME,SPEC[,console]: the backend must arrive as SPEC meant it.
void check_port_option(const std::string& name, std::string_view spec_text, bool console,
                       bool console_first) {
  const auto spec = parse(spec_text);
  std::string text = "name=" + name;
  if (console && console_first) text += ",console";
  text += "," + std::string(spec_text);
  if (console && !console_first) text += ",console";
  PortOption port;
  try {
    port = parse_port_option(text);
  } catch (const Error& e) {
    check_message(e, text);
    if (spec && valid_port_name(name))
      fail("--port '" + text + "' refused (" + e.what() + ") although its backend parses alone");
    return;
  }
  if (!valid_port_name(port.name)) fail("--port accepted the name '" + port.name + "'");
  // A backend that does not parse alone fails later, at the latest at boot; an invalid name
  // (a comma in it, say) splits differently.
  if (!spec || !valid_port_name(name)) return;
  if (port.name != name) fail("--port '" + text + "' gave the name '" + port.name + "'");
  if (port.console != console) fail("--port '" + text + "' got the console flag wrong");
  const auto got = parse(port.backend);
  if (!got || !same(*got, *spec))
    fail("--port '" + text + "' passed the backend on as '" + port.backend + "', which means " +
         (got ? describe(*got) : std::string("nothing valid")) + " instead of " + describe(*spec));
}

void check_size(std::string_view text) {
  uint64_t v = 0;
  try {
    v = parse_size(text);
  } catch (const Error& e) {
    check_message(e, text);
    return;
  }
  // The digits, then a unit: the result is digits << shift without overflow.
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  if (digits == 0) fail("size without digits accepted: " + std::string(text));
  unsigned __int128 n = 0;
  for (size_t i = 0; i < digits; ++i) {
    n = n * 10 + static_cast<unsigned>(text[i] - '0');
    if (n > UINT64_MAX) fail("size with an overflowing number accepted");
  }
  unsigned shift = 20;
  if (digits < text.size()) {
    switch (text[digits]) {
      case 'k':
      case 'K':
        shift = 10;
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
        break;
    }
  }
  if ((n << shift) != v || (n << shift) > UINT64_MAX)
    fail("parse_size('" + std::string(text) + "') = " + std::to_string(v));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  log::set_level(log::Level::kError);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const uint8_t mode = in.ConsumeIntegral<uint8_t>();
  const std::string name = in.ConsumeBool() ? "org.pier.p" : in.ConsumeRandomLengthString(32);
  const std::string text = in.ConsumeRemainingBytesAsString();
  check_spec(text);
  check_port_option(name, text, mode & 1, mode & 2);
  // The whole text as a --port option too (names, ",console" and "name=" anywhere).
  try {
    const PortOption p = parse_port_option(text);
    if (!valid_port_name(p.name)) fail("--port accepted the name '" + p.name + "'");
    if (p.backend.empty()) fail("--port accepted an empty backend");
  } catch (const Error& e) {
    check_message(e, text);
  }
  check_size(text);
  if (valid_port_name(text)) {
    if (text.empty() || text.size() > 200 || text == "." || text == ".." ||
        text.find('/') != std::string::npos)
      fail("valid_port_name accepted '" + text + "'");
  }
  // --serial: stdio, null or file=PATH; a bad one is a pier::Error (its message quotes the spec
  // as given). file= would create the file and stdio take the terminal: not exercised.
  if ((!text.starts_with("file=") || text.size() == 5) && text != "stdio") {
    try {
      (void)chardev::make_backend(text, [] {});
    } catch (const Error&) {
    }
  }
  return 0;
}
