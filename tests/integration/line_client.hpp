#pragma once
// A line-oriented client of a unix socket (pier's runtime API, a guest console), for the
// integration tests: requests and responses as JSON lines, events kept aside, bounded waits.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "integration/pier_process.hpp"

namespace pier::test {

using json = nlohmann::json;
using namespace std::chrono_literals;

class LineClient {
 public:
  explicit LineClient(const std::string& path) : fd_(connect_unix(path)) {}
  ~LineClient() { close(); }
  LineClient(const LineClient&) = delete;
  LineClient& operator=(const LineClient&) = delete;
  bool ok() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  bool send(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  // The next line, "" on timeout or EOF.
  std::string line(std::chrono::milliseconds timeout = 10000ms) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (const size_t nl = buf_.find('\n'); nl != std::string::npos) {
        std::string l = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return l;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return "";
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return "";
      char tmp[65536];
      const ssize_t n = ::recv(fd_, tmp, sizeof(tmp), 0);
      if (n <= 0) {
        eof_ = true;
        return "";
      }
      buf_.append(tmp, static_cast<size_t>(n));
    }
  }
  // Skips lines until one contains `text`; returns it ("" on timeout).
  std::string until(const std::string& text, std::chrono::milliseconds timeout = 10000ms) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      std::string l = line(std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now()));
      if (l.find(text) != std::string::npos) return l;
      if (eof_) break;
    }
    return "";
  }
  // A request and its response (events on the way are kept in `events`).
  json call(const json& request, std::chrono::milliseconds timeout = 10000ms) {
    if (!send(request.dump() + "\n")) return json();
    return response(timeout);
  }
  json response(std::chrono::milliseconds timeout = 10000ms) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      const std::string l = line(std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now()));
      if (l.empty()) break;
      json j = json::parse(l);
      if (j.contains("event")) {
        events.push_back(j);
        continue;
      }
      return j;
    }
    return json();
  }
  // The next event (from `events` first), null on timeout.
  json event(std::chrono::milliseconds timeout = 10000ms) {
    if (!events.empty()) {
      json e = events.front();
      events.erase(events.begin());
      return e;
    }
    const std::string l = line(timeout);
    return l.empty() ? json() : json::parse(l);
  }
  bool eof() const { return eof_; }
  std::vector<json> events;

 private:
  int fd_;
  bool eof_ = false;
  std::string buf_;
};

}  // namespace pier::test
