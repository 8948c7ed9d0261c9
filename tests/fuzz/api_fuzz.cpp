// libFuzzer target for the runtime API (--api-socket), the host-facing side a local client
// talks to. Two parts per input:
//  1. the request handler on one raw line (RequestHandler::handle_line against the FakeTarget of
//     the unit tests): it answers with exactly one JSON object with a boolean "ok", which
//     dump_line() renders as one line of valid JSON, whatever the bytes (invalid UTF-8, deep
//     nesting, huge numbers, NULs);
//  2. the line framing of the real api::Server on a unix socket, with small limits: up to three
//     clients send fuzzed byte streams in fuzzed chunks (over-long lines, CR, blank lines, no
//     final newline, half-closes), read or do not read their output, hang up; the loop runs in
//     between. Every line a client receives is one JSON object; responses carry "ok"; a client
//     that sends only well-formed short lines and reads its output as it comes gets exactly
//     one response per request, in order of its tags; the server keeps no more clients than it
//     accepted and drops none that behaved.
#include <fuzzer/FuzzedDataProvider.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "tests/unit/api/fake_target.hpp"
#include "vmm/api/protocol.hpp"
#include "vmm/api/server.hpp"
#include "vmm/error.hpp"
#include "vmm/event_loop.hpp"
#include "vmm/fd.hpp"
#include "vmm/log.hpp"

using namespace pier;
using namespace pier::api;

namespace {

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "api_fuzz: invariant broken: %s\n", what.c_str());
  std::abort();
}

void check_response(const json& r, std::string_view request) {
  if (!r.is_object() || !r.contains("ok") || !r["ok"].is_boolean())
    fail("response without a boolean \"ok\" for " + std::string(request.substr(0, 80)));
  std::string line;
  try {
    line = dump_line(r);
  } catch (const std::exception& e) {
    fail(std::string("dump_line threw: ") + e.what());
  }
  if (line.find('\n') != std::string::npos) fail("response spans lines");
  try {
    const json back = json::parse(line);
    if (!back.is_object()) fail("response line is not an object");
  } catch (const json::exception& e) {
    fail(std::string("response line is not valid JSON: ") + e.what());
  }
}

std::string socket_dir() {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/pier-api-fuzz-XXXXXX";
    const char* d = ::mkdtemp(tmpl);
    if (d == nullptr) fail("mkdtemp");
    return std::string(d);
  }();
  return dir;
}

class Client {
 public:
  explicit Client(const std::string& path) {
    fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    if (::connect(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
      fail(std::string("connect: ") + std::strerror(errno));
  }
  // Sends what the socket takes now; the rest is kept for later.
  void send(std::string_view data) {
    pending_.append(data);
    flush();
  }
  void flush() {
    while (!pending_.empty() && !write_closed_) {
      const ssize_t n =
          ::send(fd_.get(), pending_.data(), pending_.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n <= 0) break;
      pending_.erase(0, static_cast<size_t>(n));
    }
  }
  bool all_sent() const { return pending_.empty(); }
  void shut_write() {
    if (write_closed_) return;
    ::shutdown(fd_.get(), SHUT_WR);
    write_closed_ = true;
  }
  // Reads what is there; returns false at EOF or error.
  bool receive() {
    char buf[16384];
    for (;;) {
      const ssize_t n = ::recv(fd_.get(), buf, sizeof(buf), MSG_DONTWAIT);
      if (n > 0) {
        in_.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n == 0) {
        eof_ = true;
        return false;
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      eof_ = true;
      return false;
    }
  }
  // Complete lines received so far (each removed).
  std::vector<std::string> lines() {
    std::vector<std::string> out;
    size_t nl;
    while ((nl = in_.find('\n')) != std::string::npos) {
      out.push_back(in_.substr(0, nl));
      in_.erase(0, nl + 1);
    }
    return out;
  }
  bool eof() const { return eof_; }
  bool write_closed() const { return write_closed_; }
  const std::string& partial() const { return in_; }

  bool well_behaved = false;  // sends only short, newline-terminated, tagged requests
  uint64_t next_tag = 0;      // well-behaved: tags sent so far
  uint64_t responses = 0;     // responses received

 private:
  UniqueFd fd_;
  std::string pending_, in_;
  bool write_closed_ = false;
  bool eof_ = false;
};

void run_loop(EventLoop& loop, int rounds) {
  for (int i = 0; i < rounds; ++i) {
    int n = 0;
    loop.post([] {});
    loop.run_until([&] { return n++ > 0; },
                   std::chrono::steady_clock::now() + std::chrono::seconds(5));
  }
}

// Every complete line the client got: a JSON object; responses have "ok". Well-behaved
// clients see their tags come back in order.
void consume(Client& c) {
  for (const auto& line : c.lines()) {
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception&) {
      fail("client got a line that is not JSON: " + line.substr(0, 120));
    }
    if (!j.is_object()) fail("client got a line that is not an object");
    if (j.contains("event")) continue;
    if (!j.contains("ok") || !j["ok"].is_boolean()) fail("response without ok: " + line);
    if (c.well_behaved) {
      if (!j.contains("tag") || j["tag"] != c.responses)
        fail("well-behaved client got an answer out of order: " + line.substr(0, 120));
    }
    ++c.responses;
  }
}

const char* const kRequests[] = {
    R"({"cmd":"ports"})",
    R"({"cmd":"vm-status"})",
    R"({"cmd":"port-add","name":"a","backend":"null"})",
    R"({"cmd":"port-add","name":"b","backend":"socket=/x","console":true})",
    R"({"cmd":"port-remove","name":"a"})",
    R"({"cmd":"port-remove","id":0})",
    R"({"cmd":"quit"})",
    R"({"cmd":"nope"})",
    R"({"cmd":"ports","extra":1})",
    R"([1,2,3])",
    R"({"cmd":7})",
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  log::set_level(std::getenv("API_FUZZ_TRACE") ? log::Level::kDebug : log::Level::kError);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  testing::FakeTarget target(in.ConsumeIntegralInRange<uint32_t>(1, 8));

  // Part 1: one request line, straight to the handler.
  {
    RequestHandler handler(target);
    const std::string line = in.ConsumeRandomLengthString(4096);
    check_response(handler.handle_line(line), line);
  }
  if (in.remaining_bytes() == 0) return 0;

  // Part 2: the server and its framing.
  static int serial = 0;
  const std::string path = socket_dir() + "/api" + std::to_string(serial++ % 4) + ".sock";
  ServerLimits limits;
  limits.max_line = in.ConsumeIntegralInRange<size_t>(64, 512);  // a short request fits
  limits.pause_input_at = in.ConsumeIntegralInRange<size_t>(64, 2048);
  // Room for any single response (a ports listing of 8 ports is ~2 KiB): a response larger
  // than max_output drops its client at once, which the real limits (64 KiB lines, 4 MiB of
  // output) never come near.
  limits.max_output = 8192 + limits.pause_input_at * in.ConsumeIntegralInRange<size_t>(2, 8);
  limits.max_clients = in.ConsumeIntegralInRange<size_t>(1, 3);
  EventLoop loop;
  auto server = std::make_unique<Server>(loop, path, target, limits);
  server->start();
  std::vector<std::unique_ptr<Client>> clients;
  const size_t n = in.ConsumeIntegralInRange<size_t>(1, 3);
  for (size_t i = 0; i < n; ++i) {
    clients.push_back(std::make_unique<Client>(path));
    clients.back()->well_behaved = in.ConsumeBool();
  }
  run_loop(loop, 1);
  // Clients beyond the limit got one error line and a hang-up; they take no further part.
  const size_t accepted = std::min(n, limits.max_clients);
  if (server->client_count() > limits.max_clients) fail("more clients than max_clients");

  for (int ops = 0; ops < 200 && in.remaining_bytes() > 0; ++ops) {
    Client& c = *clients[in.ConsumeIntegralInRange<size_t>(0, accepted - 1)];
    switch (in.ConsumeIntegralInRange<int>(0, 5)) {
      case 0:
      case 1: {
        if (c.write_closed()) break;
        if (c.well_behaved) {
          json request = json::parse(kRequests[in.ConsumeIntegralInRange<size_t>(
              0, sizeof(kRequests) / sizeof(kRequests[0]) - 1)]);
          if (request.is_object()) {
            request["tag"] = c.next_tag;
          } else {
            request = json{{"cmd", "ports"}, {"tag", c.next_tag}};
          }
          const std::string line = request.dump() + (in.ConsumeBool() ? "\n" : "\r\n");
          if (line.size() > limits.max_line) {
            c.send(json{{"cmd", "ports"}, {"tag", c.next_tag}}.dump() + "\n");
          } else {
            c.send(line);
          }
          ++c.next_tag;
        } else {
          std::string chunk = in.ConsumeRandomLengthString(1024);
          if (in.ConsumeBool()) chunk += '\n';
          if (in.ConsumeIntegralInRange<int>(0, 7) == 0)
            chunk += std::string(in.ConsumeIntegralInRange<size_t>(0, 2048), 'x');
          c.send(chunk);
        }
        break;
      }
      case 2:
        c.flush();
        c.receive();
        consume(c);
        break;
      case 3:
        if (!c.well_behaved && in.ConsumeBool()) c.shut_write();
        break;
      case 4:
        run_loop(loop, in.ConsumeIntegralInRange<int>(1, 3));
        break;
      default:
        server->broadcast(json{{"event", "fuzz"}, {"n", ops}});
        break;
    }
    // Well-behaved clients read everything that came (a client that lets its output pile up is
    // dropped by design: ServerLimits::max_output).
    for (size_t i = 0; i < accepted; ++i) {
      Client& w = *clients[i];
      if (!w.well_behaved || w.eof()) continue;
      w.receive();
      consume(w);
    }
  }

  // The end: every client finishes sending, half-closes and reads until the server hangs up.
  for (int round = 0; round < 2000; ++round) {
    bool done = true;
    for (size_t i = 0; i < accepted; ++i) {
      Client& c = *clients[i];
      c.flush();
      if (c.all_sent()) c.shut_write();
      if (!c.eof()) {
        c.receive();
        consume(c);
      }
      done &= c.eof();
    }
    if (done) break;
    run_loop(loop, 1);
  }
  for (size_t i = 0; i < accepted; ++i) {
    Client& c = *clients[i];
    if (!c.eof()) fail("a client never got its end of stream");
    if (c.well_behaved && c.responses != c.next_tag)
      fail("well-behaved client sent " + std::to_string(c.next_tag) + " requests, got " +
           std::to_string(c.responses) + " responses");
  }
  if (server->client_count() != 0) fail("clients left after everyone hung up");
  server->shutdown(json{{"event", "vm-stopped"}}, 0);
  server.reset();
  loop.post([&loop] { loop.stop(); });
  loop.run();
  return 0;
}
