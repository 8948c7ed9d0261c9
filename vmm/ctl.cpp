#include "vmm/ctl.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "vmm/api/protocol.hpp"
#include "vmm/error.hpp"
#include "vmm/fd.hpp"
#include "vmm/options.hpp"

namespace pier {
namespace {

using api::json;

constexpr const char* kCtlUsage =
    "Usage: pier ctl [--api-socket PATH] [--json] COMMAND [ARGS]\n"
    "\n"
    "Drives a pier started with --api-socket PATH (or $PIER_API_SOCKET).\n"
    "\n"
    "Commands:\n"
    "  port-add NAME BACKEND [--console]   add a port; BACKEND as on the command line\n"
    "  port-add name=NAME,BACKEND[,console]  (the same, in --port syntax)\n"
    "  port-remove NAME|ID                 remove a port (the guest's open fds get ENODEV)\n"
    "  ports                               every port with its state and byte counts\n"
    "  vm-status                           the VM's state\n"
    "  quit                                stop the VM cleanly\n"
    "  events [--count N]                  print events as they come (until the VM stops)\n"
    "\n"
    "Options:\n"
    "  -s, --api-socket PATH   the API socket\n"
    "  --json                  print the JSON response/events as they are (for scripts)\n"
    "  --timeout SECONDS       how long to wait for a response (default 30)\n";

constexpr const char* kPortUsage =
    "Usage: pier port [--wait SECONDS] SOCKET|HOST:PORT\n"
    "\n"
    "Attaches to a port's host side: a unix socket path (socket=PATH) or a TCP address\n"
    "(tcp=[HOST:]PORT). On a terminal it is raw; press Ctrl-] to quit. Otherwise stdin and stdout\n"
    "are copied both ways: `pier port SOCK < file` sends a file, `pier port SOCK > out` saves\n"
    "what the guest writes. After stdin ends, output is copied until the port is quiet for\n"
    "--wait seconds (default 1; 0: stop at once; -1: until the other side closes).\n";

constexpr unsigned char kEscapeKey = 0x1d;  // Ctrl-]

UniqueFd connect_unix(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    throw Error(fmt::format("'{}' is not a usable unix socket path", path));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw system_error("socket");
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    throw Error(fmt::format("cannot connect to {}: {}", path, std::strerror(errno)));
  }
  return fd;
}

UniqueFd connect_tcp(const std::string& target) {
  const size_t colon = target.rfind(':');
  std::string host = target.substr(0, colon);
  const std::string port = target.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) host = "127.0.0.1";
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (const int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    throw Error(fmt::format("cannot resolve {}: {}", target, ::gai_strerror(rc)));
  }
  std::string why = "no address";
  UniqueFd fd;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    fd.reset(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    if (fd && ::connect(fd.get(), a->ai_addr, a->ai_addrlen) == 0) break;
    why = std::strerror(errno);
    fd.reset();
  }
  ::freeaddrinfo(found);
  if (!fd) throw Error(fmt::format("cannot connect to {}: {}", target, why));
  return fd;
}

void write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw system_error("write");
    data.remove_prefix(static_cast<size_t>(n));
  }
}

// Reads lines from a blocking socket, with an optional timeout per line.
class LineReader {
 public:
  explicit LineReader(int fd) : fd_(fd) {}
  // nullopt at end of input; throws on timeout.
  std::optional<std::string> next(int timeout_ms) {
    for (;;) {
      if (const size_t nl = buf_.find('\n'); nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      pollfd p{fd_, POLLIN, 0};
      const int r = ::poll(&p, 1, timeout_ms);
      if (r < 0 && errno == EINTR) continue;
      if (r == 0) throw Error("no response from pier (timed out)");
      char tmp[65536];
      const ssize_t n = ::read(fd_, tmp, sizeof(tmp));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return std::nullopt;
      buf_.append(tmp, static_cast<size_t>(n));
    }
  }

 private:
  int fd_;
  std::string buf_;
};

double number(const std::string& text, const char* what) {
  try {
    size_t used = 0;
    const double v = std::stod(text, &used);
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  throw Error(fmt::format("{} '{}' is not a number", what, text));
}

bool all_digits(std::string_view s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string_view::npos;
}

json build_request(const std::string& cmd, const std::vector<std::string>& rest) {
  json request = {{"cmd", cmd}};
  if (cmd == "port-add") {
    std::vector<std::string> words;
    bool console = false;
    for (const auto& w : rest) {
      if (w == "--console" || w == "console") {
        console = true;
      } else {
        words.push_back(w);
      }
    }
    if (words.size() == 1 && words[0].starts_with("name=")) {
      const PortOption port = parse_port_option(words[0]);
      request["name"] = port.name;
      request["backend"] = port.backend;
      request["console"] = port.console || console;
    } else if (words.size() == 2) {
      request["name"] = words[0];
      request["backend"] = words[1];
      request["console"] = console;
    } else {
      throw Error("usage: pier ctl port-add NAME BACKEND [--console]");
    }
  } else if (cmd == "port-remove") {
    if (rest.size() != 1) throw Error("usage: pier ctl port-remove NAME|ID");
    if (all_digits(rest[0]) && rest[0].size() < 10) {
      request["id"] = std::stoul(rest[0]);
    } else {
      request["name"] = rest[0];
    }
  } else if (cmd == "ports" || cmd == "vm-status" || cmd == "quit") {
    if (!rest.empty()) throw Error(fmt::format("{} takes no arguments", cmd));
  } else {
    throw Error(fmt::format("unknown command '{}' (see pier ctl --help)", cmd));
  }
  return request;
}

}  // namespace

int ctl_command(const std::vector<std::string>& args) {
  std::string socket_path;
  if (const char* env = std::getenv("PIER_API_SOCKET")) socket_path = env;
  bool as_json = false;
  int timeout_ms = 30000;
  std::vector<std::string> words;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) throw Error(fmt::format("{} needs a value", a));
      return args[++i];
    };
    if (words.empty() && (a == "--help" || a == "-h")) {
      std::fputs(kCtlUsage, stdout);
      return 0;
    } else if (words.empty() && (a == "--api-socket" || a == "-s")) {
      socket_path = value();
    } else if (words.empty() && a.starts_with("--api-socket=")) {
      socket_path = a.substr(13);
    } else if (a == "--json") {
      as_json = true;
    } else if (words.empty() && a == "--timeout") {
      timeout_ms = static_cast<int>(number(value(), "--timeout") * 1000);
    } else {
      words.push_back(a);
    }
  }
  if (words.empty()) {
    std::fputs(kCtlUsage, stderr);
    return 1;
  }
  if (socket_path.empty()) {
    throw Error(
        "pier ctl needs --api-socket PATH (the path pier run was given) or "
        "$PIER_API_SOCKET");
  }
  const std::string cmd = words[0];
  const std::vector<std::string> rest(words.begin() + 1, words.end());

  UniqueFd fd;
  try {
    fd = connect_unix(socket_path);
  } catch (const Error& e) {
    throw Error(fmt::format("{} (is pier running with --api-socket {}?)", e.what(), socket_path));
  }
  LineReader reader(fd.get());

  if (cmd == "events") {
    long count = -1;
    for (size_t i = 0; i < rest.size(); ++i) {
      if (rest[i] == "--count" && i + 1 < rest.size()) {
        count = static_cast<long>(number(rest[++i], "--count"));
      } else {
        throw Error("usage: pier ctl events [--count N]");
      }
    }
    ::setvbuf(stdout, nullptr, _IOLBF, 0);
    long seen = 0;
    while (count < 0 || seen < count) {
      const auto line = reader.next(-1);
      if (!line) break;  // pier went away (the VM stopped)
      json j = json::parse(*line, nullptr, false);
      if (!j.is_object() || !j.contains("event")) continue;
      if (as_json) {
        std::printf("%s\n", line->c_str());
      } else {
        std::fputs(api::format_event(j).c_str(), stdout);
      }
      ++seen;
    }
    return 0;
  }

  json request = build_request(cmd, rest);
  request["tag"] = "pier-ctl";
  write_all(fd.get(), api::dump_line(request) + "\n");
  for (;;) {
    const auto line = reader.next(timeout_ms);
    if (!line) throw Error("pier closed the API connection without answering");
    json response = json::parse(*line, nullptr, false);
    if (!response.is_object() || !response.contains("ok")) continue;  // an event
    if (as_json) {
      std::printf("%s\n", line->c_str());
      return response.value("ok", false) ? 0 : 1;
    }
    if (!response.value("ok", false)) {
      std::fprintf(stderr, "pier: %s\n", response.value("error", "request failed").c_str());
      return 1;
    }
    std::fputs(api::format_result(cmd, response.value("result", json::object())).c_str(), stdout);
    return 0;
  }
}

// ---------------------------------------------------------------------------------------------
// pier port

namespace {

// Raw mode on the terminal for the object's lifetime (restored by the destructor on every
// path: normal exit, errors, signals arriving through the signalfd).
class RawTerminal {
 public:
  explicit RawTerminal(int fd) : fd_(fd) {
    if (::tcgetattr(fd_, &saved_) != 0) throw system_error("tcgetattr");
    termios raw = saved_;
    ::cfmakeraw(&raw);
    if (::tcsetattr(fd_, TCSADRAIN, &raw) != 0) throw system_error("tcsetattr");
  }
  ~RawTerminal() { ::tcsetattr(fd_, TCSADRAIN, &saved_); }
  RawTerminal(const RawTerminal&) = delete;
  RawTerminal& operator=(const RawTerminal&) = delete;

 private:
  int fd_;
  termios saved_{};
};

}  // namespace

int port_command(const std::vector<std::string>& args) {
  std::string target;
  double wait_s = 1.0;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--help" || args[i] == "-h") {
      std::fputs(kPortUsage, stdout);
      return 0;
    }
    if (args[i] == "--wait" && i + 1 < args.size()) {
      wait_s = number(args[++i], "--wait");
    } else if (target.empty() && !args[i].starts_with("-")) {
      target = args[i];
    } else {
      throw Error(fmt::format("unexpected argument '{}' (see pier port --help)", args[i]));
    }
  }
  if (target.empty()) {
    std::fputs(kPortUsage, stderr);
    return 1;
  }
  struct stat st {};
  const bool is_path = target.find('/') != std::string::npos || ::stat(target.c_str(), &st) == 0 ||
                       target.find(':') == std::string::npos;
  UniqueFd sock = is_path ? connect_unix(target) : connect_tcp(target);

  // SIGINT/SIGTERM/SIGHUP end the session through the loop, so the terminal is restored.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  ::sigprocmask(SIG_BLOCK, &signals, nullptr);
  UniqueFd sigfd(::signalfd(-1, &signals, SFD_CLOEXEC));

  const bool terminal = ::isatty(STDIN_FILENO) && ::isatty(STDOUT_FILENO);
  std::optional<RawTerminal> raw;
  if (terminal) {
    raw.emplace(STDIN_FILENO);  // first: whatever is typed after the banner goes out raw
    std::fprintf(stderr, "pier port: connected to %s; press Ctrl-] to quit\r\n", target.c_str());
  }
  // Full duplex without blocking on the socket: a guest that echoes while we send must never
  // find both directions stuck (we would stop reading while blocked in a write).
  const int sock_flags = ::fcntl(sock.get(), F_GETFL);
  ::fcntl(sock.get(), F_SETFL, sock_flags | O_NONBLOCK);
  bool stdin_open = true;
  bool write_shut = false;
  std::string to_sock;
  int exit_code = 0;
  std::string why;
  char buf[65536];
  for (;;) {
    if (!stdin_open && to_sock.empty() && !write_shut) {
      // A unix socket port sees the end of our input and stays connected for the guest's
      // reply; pier treats a TCP half-close as the client leaving, so there we only stop
      // sending.
      if (is_path) ::shutdown(sock.get(), SHUT_WR);
      write_shut = true;
      if (wait_s == 0) break;
    }
    pollfd fds[3] = {{sock.get(), static_cast<short>(POLLIN | (to_sock.empty() ? 0 : POLLOUT)), 0},
                     {stdin_open && to_sock.empty() ? STDIN_FILENO : -1, POLLIN, 0},
                     {sigfd.get(), POLLIN, 0}};
    int timeout = -1;
    if (write_shut && wait_s >= 0) timeout = static_cast<int>(wait_s * 1000);
    const int r = ::poll(fds, 3, timeout);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw system_error("poll");
    if (r == 0) break;  // stdin ended and the port was quiet for --wait seconds
    if (fds[2].revents) {
      signalfd_siginfo info{};
      [[maybe_unused]] auto n = ::read(sigfd.get(), &info, sizeof(info));
      why = fmt::format("signal {}", info.ssi_signo);
      exit_code = 128 + static_cast<int>(info.ssi_signo);
      break;
    }
    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      const ssize_t n = ::read(sock.get(), buf, sizeof(buf));
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        why = "the port closed the connection";
        break;
      }
      write_all(STDOUT_FILENO, std::string_view(buf, static_cast<size_t>(n)));
    }
    if (!to_sock.empty() && (fds[0].revents & POLLOUT)) {
      const ssize_t n = ::send(sock.get(), to_sock.data(), to_sock.size(), MSG_NOSIGNAL);
      if (n < 0 && errno != EAGAIN && errno != EINTR) {
        why = fmt::format("write to the port failed: {}", std::strerror(errno));
        exit_code = 1;
        break;
      }
      if (n > 0) to_sock.erase(0, static_cast<size_t>(n));
    }
    if (fds[1].revents) {
      const ssize_t n = ::read(STDIN_FILENO, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        stdin_open = false;
        continue;
      }
      std::string_view data(buf, static_cast<size_t>(n));
      if (terminal) {
        if (const size_t esc = data.find(static_cast<char>(kEscapeKey));
            esc != std::string_view::npos) {
          to_sock.assign(data.substr(0, esc));
          if (!to_sock.empty()) {
            ::fcntl(sock.get(), F_SETFL, sock_flags);  // the last bytes before quitting
            write_all(sock.get(), to_sock);
          }
          why = "quit";
          break;
        }
      }
      to_sock.assign(data);
    }
  }
  raw.reset();
  if (terminal && !why.empty()) std::fprintf(stderr, "\npier port: %s\n", why.c_str());
  return exit_code;
}

}  // namespace pier
