#include "vmm/api/server.hpp"

#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <vector>

#include "vmm/error.hpp"
#include "vmm/log.hpp"

namespace pier::api {
namespace {

constexpr size_t kReadChunk = 64 * 1024;
constexpr int kReadsPerEvent = 4;  // then back to the loop, for fairness between clients

bool blank(std::string_view line) {
  return line.find_first_not_of(" \t\r") == std::string_view::npos;
}

}  // namespace

Server::Server(EventLoop& loop, std::string path, Target& target, ServerLimits limits)
    : loop_(loop), path_(std::move(path)), handler_(target), limits_(limits) {}

Server::~Server() {
  accept_backoff_.stop();
  for (auto& [fd, client] : clients_) loop_.remove(fd);
  clients_.clear();
  if (listen_fd_) loop_.remove(listen_fd_.get());
  listen_fd_.reset();
  remove_file();
}

void Server::start() {
  socket_file_ = chardev::UnixListener::listen(path_, fmt::format("--api-socket {}", path_), 64);
  listen_fd_ = std::move(socket_file_.fd());
  // Created now: once accept() fails with EMFILE, a new timerfd could not be made either.
  accept_backoff_.start(loop_, [this] { loop_.modify(listen_fd_.get(), EPOLLIN); });
  loop_.add(listen_fd_.get(), EPOLLIN, [this](uint32_t) { on_accept(); });
  log::info("api: listening on {}", path_);
}

void Server::remove_file() {
  socket_file_.remove();
}

void Server::on_accept() {
  for (;;) {
    UniqueFd fd(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection stays pending. Try again in a second,
      // logging once, instead of spinning on a listener that stays readable.
      static log::OnceFlag once;
      if (once.first()) {
        log::warn("api: accept: {} (new API clients wait; retrying every second)",
                  std::strerror(errno));
      }
      loop_.modify(listen_fd_.get(), 0);
      accept_backoff_.arm(std::chrono::seconds(1));
      return;
    }
    if (clients_.size() >= limits_.max_clients) {
      const std::string line =
          dump_line(error_json(fmt::format("too many API clients (limit {}); try again later",
                                           limits_.max_clients))) +
          "\n";
      [[maybe_unused]] auto n = ::send(fd.get(), line.data(), line.size(), MSG_NOSIGNAL);
      continue;  // closed
    }
    auto client = std::make_unique<Client>();
    const int raw = fd.get();
    client->fd = std::move(fd);
    client->serial = next_serial_++;
    client->events = EPOLLIN;
    log::debug("api: client {} connected", client->serial);
    clients_[raw] = std::move(client);
    loop_.add(raw, EPOLLIN, [this, raw](uint32_t events) { on_client(raw, events); });
  }
}

void Server::on_client(int fd, uint32_t events) {
  auto it = clients_.find(fd);
  if (it == clients_.end()) return;
  Client& c = *it->second;
  // While this client is served, a drop (also one from a broadcast that a request of its own
  // triggered, e.g. port-add -> port-added) only marks it; it is erased on the way out.
  serving_fd_ = fd;
  struct Sweep {
    Server& server;
    int fd;
    ~Sweep() {
      server.serving_fd_ = -1;
      auto it = server.clients_.find(fd);
      if (it != server.clients_.end() && it->second->dead) server.clients_.erase(it);
    }
  } sweep{*this, fd};
  if ((events & EPOLLOUT) != 0 && !flush(c)) return;
  if (c.input_paused && pending(c) <= limits_.pause_input_at / 2) {
    c.input_paused = false;
    if (!process_input(c)) return;
  }
  if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0) {
    for (int i = 0; i < kReadsPerEvent && !c.input_paused && !c.input_eof; ++i) {
      std::array<char, kReadChunk> buf;
      const ssize_t n = ::recv(fd, buf.data(), buf.size(), MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        drop(fd, fmt::format("read error: {}", std::strerror(errno)));
        return;
      }
      if (n == 0) {
        c.input_eof = true;
      } else {
        std::string_view data(buf.data(), static_cast<size_t>(n));
        if (c.discarding) {
          const size_t nl = data.find('\n');
          data = nl == std::string_view::npos ? std::string_view() : data.substr(nl + 1);
          c.discarding = nl == std::string_view::npos;
        }
        c.in.append(data);
      }
      if (!process_input(c)) return;
    }
  }
  if (c.input_eof && c.in.empty() && pending(c) == 0) {
    drop(fd, "");  // done: everything it asked was answered
    return;
  }
  if ((events & EPOLLERR) != 0 && pending(c) > 0 && !flush(c)) return;
  update_interest(c);
}

bool Server::process_input(Client& c) {
  size_t start = 0;
  while (pending(c) < limits_.pause_input_at) {
    const size_t nl = c.in.find('\n', start);
    if (nl == std::string::npos) break;
    const std::string_view line(c.in.data() + start, nl - start);
    start = nl + 1;
    if (blank(line)) continue;
    const json response =
        line.size() > limits_.max_line
            ? error_json(fmt::format("request line of {} bytes is longer than the limit of {}; "
                                     "discarded",
                                     line.size(), limits_.max_line))
            : handler_.handle_line(line);
    if (!respond(c, response)) return false;  // dropped while answering
  }
  c.in.erase(0, start);
  if (pending(c) >= limits_.pause_input_at) {
    c.input_paused = true;  // read no more until the client reads its responses
    return true;
  }
  if (c.in.size() > limits_.max_line) {
    // No newline within the limit: answer once, drop what came and the rest of the line.
    if (!respond(c, error_json(fmt::format("request line longer than the limit of {} bytes; "
                                           "discarded up to its newline",
                                           limits_.max_line)))) {
      return false;
    }
    c.in.clear();
    c.in.shrink_to_fit();
    c.discarding = true;
  }
  if (c.input_eof && !c.in.empty()) {
    // The last line had no newline: still a request (echo -n '...' | nc -U works).
    std::string last = std::move(c.in);
    c.in.clear();
    if (!c.discarding && !blank(last)) {
      if (!respond(c, handler_.handle_line(last))) return false;
    }
  }
  return true;
}

bool Server::respond(Client& c, const json& response) {
  return send(c, dump_line(response));
}

bool Server::send(Client& c, std::string_view line) {
  if (c.dead) return false;
  if (pending(c) + line.size() + 1 > limits_.max_output) {
    drop(c.fd.get(), fmt::format("not reading its output ({} bytes queued, limit {}); dropped",
                                 pending(c) + line.size() + 1, limits_.max_output));
    return false;
  }
  c.out.append(line);
  c.out.push_back('\n');
  return flush(c);
}

bool Server::flush(Client& c) {
  if (c.dead) return false;
  while (pending(c) > 0) {
    const ssize_t n =
        ::send(c.fd.get(), c.out.data() + c.out_off, pending(c), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      drop(c.fd.get(), errno == EPIPE || errno == ECONNRESET
                           ? std::string()
                           : fmt::format("write error: {}", std::strerror(errno)));
      return false;
    }
    c.out_off += static_cast<size_t>(n);
  }
  if (c.out_off == c.out.size()) {
    c.out.clear();
    c.out_off = 0;
    if (c.out.capacity() > limits_.pause_input_at) c.out.shrink_to_fit();
  } else if (c.out_off > kReadChunk && c.out_off > c.out.size() / 2) {
    c.out.erase(0, c.out_off);
    c.out_off = 0;
  }
  return true;
}

void Server::update_interest(Client& c) {
  if (c.dead) return;
  uint32_t want = 0;
  if (!c.input_paused && !c.input_eof) want |= EPOLLIN;
  if (pending(c) > 0) want |= EPOLLOUT;
  if (want != c.events) {
    c.events = want;
    loop_.modify(c.fd.get(), want);
  }
}

void Server::drop(int fd, std::string_view why) {
  auto it = clients_.find(fd);
  if (it == clients_.end() || it->second->dead) return;
  if (why.empty()) {
    log::debug("api: client {} disconnected", it->second->serial);
  } else {
    log::warn("api: client {}: {}", it->second->serial, why);
  }
  loop_.remove(fd);
  if (fd == serving_fd_) {
    it->second->dead = true;  // erased when its handler returns (it still holds a reference)
    return;
  }
  clients_.erase(it);
}

void Server::broadcast(const json& message) {
  if (clients_.empty()) return;
  const std::string line = dump_line(message);
  std::vector<int> fds;
  fds.reserve(clients_.size());
  for (const auto& [fd, client] : clients_) fds.push_back(fd);
  for (const int fd : fds) {
    auto it = clients_.find(fd);
    if (it == clients_.end()) continue;
    Client& c = *it->second;
    if (c.input_eof || c.dead) continue;  // it is leaving; only its answers go out
    if (send(c, line)) update_interest(c);
  }
}

void Server::shutdown(const json& final_event, int grace_ms) {
  broadcast(final_event);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(grace_ms);
  for (;;) {
    std::vector<pollfd> waiting;
    for (const auto& [fd, c] : clients_) {
      if (pending(*c) > 0) waiting.push_back({fd, POLLOUT, 0});
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
    if (waiting.empty() || left <= 0) break;
    if (::poll(waiting.data(), waiting.size(), static_cast<int>(left)) < 0 && errno != EINTR) {
      break;
    }
    for (const auto& p : waiting) {
      if (p.revents == 0) continue;
      auto it = clients_.find(p.fd);
      if (it != clients_.end()) flush(*it->second);
    }
  }
  for (auto& [fd, client] : clients_) loop_.remove(fd);
  clients_.clear();
  if (listen_fd_) loop_.remove(listen_fd_.get());
  listen_fd_.reset();
  remove_file();
}

}  // namespace pier::api
