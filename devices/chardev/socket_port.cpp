// Listening sockets serve ONE client at a time, as QEMU's server chardev does: while a client is
// attached the listening socket is left out of epoll, so later clients wait in the kernel's
// listen backlog (their connect() succeeds and what they send is queued) and the next one is
// accepted when the current one leaves. A waiting client that gave up before its turn (hung up
// without sending anything) is skipped silently, so the guest sees no connect/disconnect blip.
// Waiting beats "accept and refuse": a reconnecting tool or a second terminal just gets its
// turn, and nothing it typed is lost.
//
// Unix socket files are made by UnixListener (unix_listener.hpp): created 0600 (a console is
// often a root shell), a dead process's socket replaced, stop() removes the file if still ours.
#include "devices/chardev/socket_port.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>

#include "devices/chardev/stream_port.hpp"
#include "devices/chardev/unix_listener.hpp"
#include "vmm/error.hpp"
#include "vmm/log.hpp"

namespace pier::chardev {
namespace {

using namespace std::chrono_literals;

// Room for a few clients waiting their turn; more get ECONNREFUSED/EAGAIN from connect().
constexpr int kBacklog = 16;
// After EMFILE/ENFILE from accept the pending connection stays readable: back off instead of
// spinning on it.
constexpr auto kAcceptBackoff = 1s;

UniqueFd stream_socket(int family) {
  UniqueFd fd(::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) throw system_error("socket");
  return fd;
}

bool is_loopback(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(ss);
    return (ntohl(in.sin_addr.s_addr) >> 24) == 127;
  }
  if (ss.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(ss);
    if (IN6_IS_ADDR_LOOPBACK(&in6.sin6_addr)) return true;
    if (IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr)) return in6.sin6_addr.s6_addr[12] == 127;
  }
  return false;
}

std::string format_address(const sockaddr_storage& ss) {
  char host[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(ss);
    ::inet_ntop(AF_INET6, &a.sin6_addr, host, sizeof(host));
    return fmt::format("[{}]:{}", host, ntohs(a.sin6_port));
  }
  const auto& a = reinterpret_cast<const sockaddr_in&>(ss);
  ::inet_ntop(AF_INET, &a.sin_addr, host, sizeof(host));
  return fmt::format("{}:{}", host, ntohs(a.sin_port));
}

// True when the accepted client already hung up and left nothing to read.
bool already_gone(int fd) {
  pollfd p{fd, POLLRDHUP, 0};
  if (::poll(&p, 1, 0) < 0) return false;
  if ((p.revents & (POLLHUP | POLLRDHUP | POLLERR)) == 0) return false;
  int pending = 0;
  return ::ioctl(fd, FIONREAD, &pending) == 0 && pending == 0;
}

// Accepts one client at a time from a listening socket; the subclass binds it.
class ListenPort : public StreamPort {
 protected:
  using StreamPort::StreamPort;

  void listen_on(UniqueFd fd) {
    listen_fd_ = std::move(fd);
    // Created now: when accept() fails with EMFILE, a new timerfd could not be made either.
    backoff_.start(*loop_, [this] { set_accepting(true); });
    loop_->add(listen_fd_.get(), EPOLLIN, [this](uint32_t) { on_accept(); });
    listen_registered_ = true;
  }

  void stop_listening() {
    backoff_.stop();
    if (listen_registered_) loop_->remove(listen_fd_.get());
    listen_registered_ = false;
    listen_fd_.reset();
  }

  int listen_fd() const { return listen_fd_.get(); }
  virtual void configure_client(int /*fd*/) {}

 private:
  void on_detached() override { set_accepting(true); }

  void set_accepting(bool on) {
    if (listen_registered_) loop_->modify(listen_fd_.get(), on ? uint32_t{EPOLLIN} : 0u);
  }

  void on_accept() {
    while (!attached()) {
      UniqueFd client(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
      if (!client) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        static log::OnceFlag once;
        if (once.first()) log::warn("{}: accept: {}", describe(), std::strerror(errno));
        set_accepting(false);
        backoff_.arm(kAcceptBackoff);
        return;
      }
      if (already_gone(client.get())) {
        log::debug("{}: a waiting client left before its turn", describe());
        continue;
      }
      configure_client(client.get());
      // Later clients wait in the backlog until this one leaves (on_detached).
      set_accepting(false);
      const int fd = client.get();
      log::debug("{}: client connected", describe());
      attach(std::move(client), fd, true);
    }
  }

  UniqueFd listen_fd_;
  bool listen_registered_ = false;
  PortTimer backoff_;
};

class UnixListenPort final : public ListenPort {
 public:
  explicit UnixListenPort(std::string path)
      : ListenPort(Flavor::kUnixSocket), path_(std::move(path)) {}
  ~UnixListenPort() override { stop(); }

  void start(EventLoop& loop, Listener& listener) override {
    bind_loop(loop, listener);
    file_ = UnixListener::listen(path_, fmt::format("socket path {}", path_), kBacklog);
    listen_on(std::move(file_.fd()));
  }

  std::string describe() const override { return fmt::format("socket={} (listening)", path_); }
  std::string address() const override { return path_; }

  void stop() override {
    stop_stream();
    stop_listening();
    remove_file();
  }

 private:
  void remove_file() { file_.remove(); }

  const std::string path_;
  UnixListener file_;
};

class TcpListenPort final : public ListenPort {
 public:
  TcpListenPort(std::string host, uint16_t port)
      : ListenPort(Flavor::kTcpSocket), host_(std::move(host)), port_(port) {}
  ~TcpListenPort() override { stop(); }

  void start(EventLoop& loop, Listener& listener) override {
    bind_loop(loop, listener);
    const std::string wanted = host_.find(':') != std::string::npos
                                   ? fmt::format("[{}]:{}", host_, port_)
                                   : fmt::format("{}:{}", host_, port_);
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    // Numeric addresses only: port-add runs on the I/O thread, where a DNS lookup could stall
    // every port, the API and the serial console for as long as the resolver likes. "localhost"
    // is the one name taken, without asking the resolver.
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV | AI_NUMERICHOST;
    addrinfo* found = nullptr;
    const std::string service = std::to_string(port_);
    const std::string host = host_ == "localhost" ? "127.0.0.1" : host_;
    if (const int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &found); rc != 0) {
      throw Error(fmt::format(
          "tcp={}: '{}' is not a numeric address ({}); give an IP address such as 127.0.0.1, "
          "::1 or 0.0.0.0, or localhost (pier does not resolve host names)",
          wanted, host_, gai_strerror(rc)));
    }
    std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> results(found, ::freeaddrinfo);

    UniqueFd fd = stream_socket(found->ai_family);
    // Restarting pier must not fail on connections of the previous run in TIME_WAIT; this does
    // not let two listeners share the port.
    const int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd.get(), found->ai_addr, found->ai_addrlen) != 0) {
      const int err = errno;
      if (err == EADDRINUSE) {
        throw Error(
            fmt::format("cannot listen on {}: the port is in use by another process", wanted));
      }
      throw Error(fmt::format("cannot listen on {}: {}", wanted, std::strerror(err)));
    }
    if (::listen(fd.get(), kBacklog) != 0) {
      throw system_error(fmt::format("cannot listen on {}", wanted));
    }
    sockaddr_storage bound{};
    socklen_t len = sizeof(bound);
    ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &len);
    address_ = format_address(bound);
    if (!is_loopback(bound)) {
      log::warn(
          "tcp={}: listening on a non-loopback address; TCP ports have no authentication, so "
          "anyone who can reach it can attach to the port (a console is often a root shell)",
          address_);
    }
    listen_on(std::move(fd));
  }

  std::string describe() const override {
    return fmt::format("tcp={} (listening)", address_.empty() ? host_ : address_);
  }
  std::string address() const override { return address_; }

  void stop() override {
    stop_stream();
    stop_listening();
  }

 private:
  void configure_client(int fd) override {
    // Console traffic is keystrokes and short replies: send them now, not after 40 ms.
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }

  const std::string host_;
  const uint16_t port_;
  std::string address_;
};

// Connects out to a unix listener. A unix connect() completes or fails at once (EAGAIN means
// the listener's backlog is full), so there is no in-progress state to wait on. Without
// reconnect the first attempt must succeed (an error at start tells the user now, instead of a
// port that silently never connects); once the server closes, the port stays disconnected.
// With reconnect, failures at start and later disconnects are retried every interval from a
// timerfd, never blocking.
class UnixConnectPort final : public StreamPort {
 public:
  UnixConnectPort(std::string path, std::chrono::milliseconds reconnect)
      : StreamPort(Flavor::kUnixSocket), path_(std::move(path)), reconnect_(reconnect) {}
  ~UnixConnectPort() override { stop(); }

  void start(EventLoop& loop, Listener& listener) override {
    bind_loop(loop, listener);
    addr_ = unix_socket_address(path_, fmt::format("socket path {}", path_));
    if (reconnect_.count() > 0) timer_.start(loop, [this] { retry(); });
    if (try_connect(false)) return;
    if (reconnect_.count() == 0) {
      throw Error(
          fmt::format("cannot connect to socket {}: {} (add ,reconnect=SECONDS to wait "
                      "for it)",
                      path_, std::strerror(last_error_)));
    }
    log::info("{}: {}; retrying every {} ms", describe(), std::strerror(last_error_),
              reconnect_.count());
    timer_.arm(reconnect_);
  }

  std::string describe() const override {
    if (reconnect_.count() == 0) return fmt::format("socket={} (client)", path_);
    return fmt::format("socket={} (client, reconnect {} ms)", path_, reconnect_.count());
  }
  std::string address() const override { return path_; }

  void stop() override {
    stop_stream();
    timer_.stop();
  }

 private:
  bool try_connect(bool notify) {
    UniqueFd fd = stream_socket(AF_UNIX);
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr_), sizeof(addr_)) != 0) {
      last_error_ = errno;
      return false;
    }
    const int raw = fd.get();
    attach(std::move(fd), raw, notify);
    return true;
  }

  void on_detached() override {
    if (reconnect_.count() == 0) {
      log::info("{}: the server closed the connection; not reconnecting", describe());
      return;
    }
    log::info("{}: the server closed the connection; reconnecting", describe());
    timer_.arm(reconnect_);
  }

  void retry() {
    if (attached()) return;
    if (try_connect(true)) {
      log::info("{}: connected", describe());
      return;
    }
    log::debug("{}: {}", describe(), std::strerror(last_error_));
    timer_.arm(reconnect_);
  }

  const std::string path_;
  const std::chrono::milliseconds reconnect_;
  sockaddr_un addr_{};
  int last_error_ = 0;
  PortTimer timer_;
};

}  // namespace

std::unique_ptr<PortBackend> make_unix_listen_port(std::string path) {
  return std::make_unique<UnixListenPort>(std::move(path));
}

std::unique_ptr<PortBackend> make_unix_connect_port(std::string path,
                                                    std::chrono::milliseconds reconnect) {
  return std::make_unique<UnixConnectPort>(std::move(path), reconnect);
}

std::unique_ptr<PortBackend> make_tcp_listen_port(std::string host, uint16_t port) {
  return std::make_unique<TcpListenPort>(std::move(host), port);
}

}  // namespace pier::chardev
