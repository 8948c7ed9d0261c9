// The API socket server against real unix-socket clients, on a real EventLoop thread, with a
// fake Target (no KVM): bad input, floods, over-long lines, slow and vanishing clients.
#include "vmm/api/server.hpp"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <thread>

#include "unit/api/fake_target.hpp"

namespace pier::api {
namespace {

using testing::FakeTarget;
using namespace std::chrono_literals;

std::string temp_socket_path() {
  static std::atomic<int> n{0};
  return fmt::format("/tmp/pier-api-test-{}-{}.sock", ::getpid(), n++);
}

class Client {
 public:
  explicit Client(const std::string& path) {
    fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    connected_ = ::connect(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  bool connected() const { return connected_; }
  int fd() const { return fd_.get(); }
  bool send(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  // The next line (without newline); "" on timeout or EOF (eof() tells which).
  std::string line(std::chrono::milliseconds timeout = 5000ms) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (auto nl = buf_.find('\n'); nl != std::string::npos) {
        std::string l = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return l;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return "";
      pollfd p{fd_.get(), POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return "";
      char tmp[65536];
      const ssize_t n = ::recv(fd_.get(), tmp, sizeof(tmp), 0);
      if (n <= 0) {
        eof_ = true;
        return "";
      }
      buf_.append(tmp, static_cast<size_t>(n));
    }
  }
  json json_line(std::chrono::milliseconds timeout = 5000ms) {
    const std::string l = line(timeout);
    if (l.empty()) return json();
    return json::parse(l);
  }
  // The next line that is a response (skips events).
  json response(std::chrono::milliseconds timeout = 5000ms) {
    for (;;) {
      json j = json_line(timeout);
      if (!j.is_object() || j.contains("ok")) return j;
    }
  }
  bool eof() const { return eof_; }
  void shutdown_write() { ::shutdown(fd_.get(), SHUT_WR); }

 private:
  UniqueFd fd_;
  bool connected_ = false;
  bool eof_ = false;
  std::string buf_;
};

struct ServerFixture : ::testing::Test {
  ServerFixture() : ServerFixture(ServerLimits{}) {}
  explicit ServerFixture(ServerLimits limits)
      : path(temp_socket_path()), server(loop, path, target, limits) {
    server.start();
    thread = std::thread([this] { loop.run(); });
  }
  ~ServerFixture() override {
    loop.stop();
    thread.join();
    server.shutdown(vm_stopped_json("test over", std::chrono::system_clock::now()), 0);
  }
  template <class F>
  auto on_loop(F fn) {
    std::promise<decltype(fn())> done;
    auto result = done.get_future();
    loop.post([&] { done.set_value(fn()); });
    return result.get();
  }
  size_t clients() {
    return on_loop([this] { return server.client_count(); });
  }
  void broadcast(const json& event) {
    on_loop([&] {
      server.broadcast(event);
      return 0;
    });
  }

  EventLoop loop;
  FakeTarget target{64};
  std::string path;
  Server server;
  std::thread thread;
};

TEST_F(ServerFixture, RequestResponseAndSocketMode) {
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  Client c(path);
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.send("{\"cmd\":\"port-add\",\"name\":\"a\",\"backend\":\"null\"}\n"));
  json r = c.response();
  ASSERT_TRUE(r.value("ok", false)) << r.dump();
  EXPECT_EQ(r["result"]["id"], 0);
  ASSERT_TRUE(c.send("{\"cmd\":\"ports\"}\r\n\n   \n{\"cmd\":\"vm-status\"}\n"));
  r = c.response();
  EXPECT_EQ(r["result"]["ports"].size(), 1u);
  r = c.response();
  EXPECT_EQ(r["result"]["state"], "running");
}

TEST_F(ServerFixture, EveryBadInputGetsOneErrorAndTheConnectionStaysUsable) {
  Client c(path);
  const std::vector<std::string> bad = {
      "{",
      "garbage",
      R"({"cmd":"explode"})",
      R"({"cmd":"port-add","name":"a"})",
      R"({"cmd":"port-add","name":7,"backend":"null"})",
      R"({"cmd":"port-remove","name":"ghost"})",
      std::string("\xff\xfe\x00\x01", 4),
  };
  for (const auto& line : bad) ASSERT_TRUE(c.send(line + "\n"));
  for (size_t i = 0; i < bad.size(); ++i) {
    const json r = c.response();
    ASSERT_TRUE(r.is_object()) << "no response to bad line " << i;
    EXPECT_FALSE(r.value("ok", true)) << r.dump();
  }
  // Duplicate name.
  ASSERT_TRUE(
      c.send("{\"cmd\":\"port-add\",\"name\":\"a\",\"backend\":\"null\"}\n"
             "{\"cmd\":\"port-add\",\"name\":\"a\",\"backend\":\"null\"}\n"));
  EXPECT_TRUE(c.response().value("ok", false));
  EXPECT_FALSE(c.response().value("ok", true));
  ASSERT_TRUE(c.send("{\"cmd\":\"ports\"}\n"));
  EXPECT_TRUE(c.response().value("ok", false));
  EXPECT_EQ(c.line(200ms), "");  // nothing more: one response per request
}

TEST_F(ServerFixture, FloodOfTenThousandGarbageLines) {
  Client c(path);
  Client other(path);
  std::thread writer([&] {
    std::string chunk;
    for (int i = 0; i < 10000; ++i) chunk += fmt::format("garbage line {} {{{{\n", i);
    c.send(chunk);
    c.send("{\"cmd\":\"ports\",\"tag\":\"last\"}\n");
  });
  int errors = 0;
  json last;
  for (;;) {
    json r = c.response(10000ms);
    if (!r.is_object()) break;
    if (r.contains("tag")) {
      last = r;
      break;
    }
    if (!r.value("ok", true)) ++errors;
    if (errors % 2500 == 0) {
      // Meanwhile another client is served.
      ASSERT_TRUE(other.send("{\"cmd\":\"vm-status\"}\n"));
      EXPECT_TRUE(other.response().value("ok", false));
    }
  }
  writer.join();
  EXPECT_EQ(errors, 10000);
  EXPECT_TRUE(last.value("ok", false)) << last.dump();
}

TEST_F(ServerFixture, TenMegabyteLineWithoutNewlineGetsOneErrorAndIsDropped) {
  Client c(path);
  std::thread writer([&] {
    const std::string junk(1 << 20, 'x');
    for (int i = 0; i < 10; ++i) c.send(junk);
    c.send("\n{\"cmd\":\"vm-status\"}\n");
  });
  const json first = c.response(10000ms);
  EXPECT_FALSE(first.value("ok", true));
  EXPECT_NE(first.value("error", "").find("longer than the limit"), std::string::npos);
  const json second = c.response(10000ms);
  writer.join();
  EXPECT_TRUE(second.value("ok", false)) << second.dump();
  EXPECT_EQ(c.line(200ms), "");
}

TEST_F(ServerFixture, ClientThatDisconnectsMidRequestLeavesOthersAlone) {
  {
    Client gone(path);
    ASSERT_TRUE(gone.send("{\"cmd\":\"port-add\",\"na"));
  }
  {
    // And one that leaves without reading a big answer.
    Client rude(path);
    for (int i = 0; i < 200; ++i) rude.send("{\"cmd\":\"ports\"}\n");
  }
  Client c(path);
  ASSERT_TRUE(c.send("{\"cmd\":\"ports\"}\n"));
  EXPECT_TRUE(c.response().value("ok", false));
  EXPECT_EQ(target.add_calls, 0);
  for (int i = 0; i < 100 && clients() != 1; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(clients(), 1u);
}

TEST_F(ServerFixture, HalfClosedClientGetsTheAnswerToItsLastUnterminatedLine) {
  Client c(path);
  ASSERT_TRUE(c.send("{\"cmd\":\"vm-status\"}"));
  c.shutdown_write();
  EXPECT_TRUE(c.response().value("ok", false));
  EXPECT_EQ(c.line(2000ms), "");
  EXPECT_TRUE(c.eof());  // then the server closes
  Client d(path);
  ASSERT_TRUE(d.send("{\"cmd\":\"port-add\",\"na"));
  d.shutdown_write();
  const json r = d.response();
  EXPECT_FALSE(r.value("ok", true));
  EXPECT_NE(r.value("error", "").find("malformed"), std::string::npos);
}

TEST_F(ServerFixture, ManyClientsAtOnceAndEventsReachEveryOne) {
  constexpr int kClients = 64;
  std::vector<std::unique_ptr<Client>> cs;
  for (int i = 0; i < kClients; ++i) {
    cs.push_back(std::make_unique<Client>(path));
    ASSERT_TRUE(cs.back()->connected());
  }
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      Client& c = *cs[static_cast<size_t>(i)];
      for (int k = 0; k < 20; ++k) {
        c.send(fmt::format("{{\"cmd\":\"vm-status\",\"tag\":{}}}\n", k));
        const json r = c.response();
        if (r.value("ok", false) && r["tag"] == k) ++ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kClients * 20);
  for (int e = 0; e < 3; ++e) broadcast({{"event", "test"}, {"n", e}});
  for (auto& c : cs) {
    for (int e = 0; e < 3; ++e) {
      const json j = c->json_line();
      EXPECT_EQ(j.value("event", ""), "test");
      EXPECT_EQ(j.value("n", -1), e);  // in order
    }
  }
}

TEST_F(ServerFixture, AClientThatNeverReadsIsDroppedNotWaitedFor) {
  Client slow(path);
  Client good(path);
  ASSERT_TRUE(slow.connected());
  for (int i = 0; i < 100 && clients() != 2; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(clients(), 2u);
  const std::string padding(4096, 'p');
  // 2000 events of 4 KiB (8 MB): far beyond the socket buffers and the 4 MiB output limit for
  // `slow`; `good` reads along (the producer waits for it to stay within 200 events).
  std::atomic<int> read_by_good{0};
  std::thread reader([&] {
    for (int i = 0; i < 2000; ++i) {
      const json e = good.json_line();
      if (!e.is_object() || e.value("event", "") != "big") break;
      ++read_by_good;
    }
  });
  for (int i = 0; i < 2000; ++i) {
    while (i - read_by_good.load() > 200) std::this_thread::sleep_for(1ms);
    on_loop([&] {
      server.broadcast({{"event", "big"}, {"pad", padding}});
      return 0;
    });
  }
  reader.join();
  EXPECT_EQ(read_by_good.load(), 2000);
  EXPECT_EQ(clients(), 1u);  // slow was dropped, good remains
  ASSERT_TRUE(good.send("{\"cmd\":\"vm-status\"}\n"));
  EXPECT_TRUE(good.response().value("ok", false));
}

TEST_F(ServerFixture, ABroadcastFromInsideARequestMayDropTheRequester) {
  // port-add broadcasts port-added while the requester's request is being handled; an event too
  // big for any client's output limit drops every client, the requester included, mid-request.
  const std::string huge(ServerLimits{}.max_output + 1, 'h');
  target.on_add = [&] { server.broadcast({{"event", "huge"}, {"pad", huge}}); };
  Client requester(path);
  Client bystander(path);
  for (int i = 0; i < 100 && clients() != 2; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_TRUE(
      requester.send("{\"cmd\":\"port-add\",\"name\":\"a\",\"backend\":\"null\"}\n"
                     "{\"cmd\":\"ports\"}\n"));
  // Building the 4 MiB event takes seconds under ThreadSanitizer: wait for the end of file.
  EXPECT_EQ(requester.line(20s), "");
  EXPECT_TRUE(requester.eof());
  EXPECT_EQ(bystander.line(20s), "");
  EXPECT_TRUE(bystander.eof());
  // The target belongs to the loop thread (a closed socket orders nothing for TSan).
  EXPECT_EQ(on_loop([&] { return target.add_calls; }), 1);
  on_loop([&] {
    target.on_add = nullptr;
    return 0;
  });
  Client next(path);  // the server carries on
  ASSERT_TRUE(next.send("{\"cmd\":\"ports\"}\n"));
  EXPECT_EQ(next.response()["result"]["ports"].size(), 1u);
  EXPECT_EQ(clients(), 1u);
}

TEST(ApiServer, StaleSocketIsReplacedLiveOneIsAnError) {
  EventLoop loop;
  FakeTarget target;
  const std::string path = temp_socket_path();
  {
    // A stale socket file: bound, never listened (like one left by a killed pier).
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    ASSERT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  }
  Server a(loop, path, target);
  EXPECT_NO_THROW(a.start());
  Server b(loop, path, target);
  EXPECT_THROW(b.start(), Error);
  a.shutdown(json::object(), 0);
  struct stat st {};
  EXPECT_NE(::stat(path.c_str(), &st), 0);  // removed
  Server c(loop, "/nonexistent-dir/x.sock", target);
  EXPECT_THROW(c.start(), Error);
}

}  // namespace
}  // namespace pier::api

namespace pier::api {
namespace {

double process_cpu_seconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// Out of descriptors, accept() fails and the connection stays pending: the server must back off
// (not spin on the readable listener), and serve the client once descriptors are back.
TEST_F(ServerFixture, AcceptOutOfDescriptorsBacksOffAndRecovers) {
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  Client c(path);  // connected (pending in the backlog) before the limit drops
  ASSERT_TRUE(c.connected());
  const int lowest_free = ::dup(0);
  ASSERT_GE(lowest_free, 0);
  ::close(lowest_free);
  rlimit low = saved;
  low.rlim_cur = static_cast<rlim_t>(lowest_free);  // no new descriptor at all
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  const double cpu0 = process_cpu_seconds();
  std::this_thread::sleep_for(1500ms);
  const double cpu = process_cpu_seconds() - cpu0;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &saved), 0);
  EXPECT_LT(cpu, 0.3) << "the loop spun on the readable listener";
  ASSERT_TRUE(c.send("{\"cmd\":\"vm-status\"}\n"));
  const json r = c.response(5000ms);
  EXPECT_TRUE(r.value("ok", false)) << r.dump();
}

}  // namespace
}  // namespace pier::api
