// The runtime API (--api-socket) against a running guest: the console_hotplug bare-metal guest
// (tests/bare/console_hotplug.c) opens every port that appears and echoes what it receives, and
// takes "close NAME"/"open NAME" commands on its console. Hot-plug of 20 ports with data on
// each, remove and re-add, events in order, bad input on the live socket, pier ctl and pier port.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "integration/line_client.hpp"
#include "integration/pier_process.hpp"

namespace pier::test {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace std::chrono_literals;


// Sends `data` on a port socket and reads the guest's echo of it.
std::string echo_through(int fd, const std::string& data, std::chrono::milliseconds timeout) {
  std::string got;
  size_t sent = 0;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (got.size() < data.size() && std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, static_cast<short>(POLLIN | (sent < data.size() ? POLLOUT : 0)), 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    if ((p.revents & POLLOUT) && sent < data.size()) {
      const ssize_t n =
          ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) sent += static_cast<size_t>(n);
    }
    if (p.revents & (POLLIN | POLLHUP)) {
      char buf[65536];
      const ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
      if (n == 0) break;
      if (n > 0) got.append(buf, static_cast<size_t>(n));
    }
  }
  return got;
}

std::string pattern(unsigned port, size_t size) {
  std::string s(size, '\0');
  uint32_t x = 2463534242u + port;
  for (auto& c : s) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    c = static_cast<char>(x);
  }
  return s;
}

class Api : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("pier-api-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (pier_.valid()) {
      // A failed test: make sure pier goes away.
      LineClient c(sock("api"));
      if (c.ok()) c.call({{"cmd", "quit"}}, 2000ms);
      pier_.wait_for(30s);
    }
    fs::remove_all(dir_);
  }
  std::string sock(const std::string& name) { return (dir_ / (name + ".sock")).string(); }

  // Boots console_hotplug with the console on a socket and the API on another; returns once
  // the guest said it is ready on its console.
  void boot(unsigned max_ports = 24) {
    PierRun run;
    run.args = {"run",
                "--kernel",
                bare_guest("console_hotplug"),
                "--console",
                "socket=" + sock("console"),
                "--api-socket",
                sock("api"),
                "--max-ports",
                std::to_string(max_ports),
                "--log-level",
                "info"};
    run.timeout = 600s;
    pier_ = std::async(std::launch::async, [run] { return run_pier(run); });
    console_ = std::make_unique<LineClient>(sock("console"));
    ASSERT_TRUE(console_->ok());
    ASSERT_NE(console_->until("PIER-HOTPLUG ready", 30000ms), "");
  }
  PierResult quit(LineClient& api) {
    const json r = api.call({{"cmd", "quit"}});
    EXPECT_TRUE(r.value("ok", false)) << r.dump();
    PierResult result = pier_.get();
    return result;
  }
  std::string guest_command(const std::string& command) {
    console_->send(command + "\n");
    return console_->until("ok " + command.substr(0, command.find(' ')), 10000ms);
  }

  fs::path dir_;
  std::future<PierResult> pier_;
  std::unique_ptr<LineClient> console_;
};

json add(LineClient& api, const std::string& name, const std::string& backend, bool console = false) {
  return api.call(
      {{"cmd", "port-add"}, {"name", name}, {"backend", backend}, {"console", console}});
}

// Waits for an event of `kind` about port `name` on `events`, keeping the ones passed over.
json wait_event(LineClient& events, const std::string& kind, const std::string& name,
                std::vector<json>* seen = nullptr, std::chrono::milliseconds timeout = 10000ms) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    json e = events.event(std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now()));
    if (e.is_null()) break;
    if (seen) seen->push_back(e);
    const std::string port_name = e.contains("port") ? e["port"].value("name", "") : "";
    if (e.value("event", "") == kind && port_name == name) return e;
  }
  return json();
}

TEST_F(Api, HotAddTwentyPortsMoveDataOnEachRemoveAndReAdd) {
  PIER_REQUIRE_KVM();
  boot();
  LineClient api(sock("api"));
  LineClient watcher(sock("api"));  // a second client that only watches events
  ASSERT_TRUE(api.ok() && watcher.ok());

  constexpr unsigned kPorts = 20;
  for (unsigned i = 1; i <= kPorts; ++i) {
    const std::string name = "org.pier.hp" + std::to_string(i);
    const json r = add(api, name, "socket=" + sock("p" + std::to_string(i)));
    ASSERT_TRUE(r.value("ok", false)) << r.dump();
    EXPECT_EQ(r["result"]["id"], i);
    EXPECT_EQ(r["result"]["address"], sock("p" + std::to_string(i)));
  }
  // The guest opens each port it is given.
  std::vector<json> seen;
  for (unsigned i = 1; i <= kPorts; ++i) {
    ASSERT_FALSE(
        wait_event(watcher, "guest-opened", "org.pier.hp" + std::to_string(i), &seen).is_null())
        << "the guest never opened port " << i;
  }
  // Connect to every port and move 256 KiB through each (the guest echoes), all at once.
  std::vector<int> fds;
  for (unsigned i = 1; i <= kPorts; ++i) {
    fds.push_back(connect_unix(sock("p" + std::to_string(i))));
    ASSERT_GE(fds.back(), 0);
  }
  constexpr size_t kBytes = 256 * 1024;
  std::vector<std::future<bool>> echoes;
  for (unsigned i = 1; i <= kPorts; ++i) {
    echoes.push_back(std::async(std::launch::async, [&, i] {
      const std::string data = pattern(i, kBytes);
      return echo_through(fds[i - 1], data, 60s) == data;
    }));
  }
  for (unsigned i = 1; i <= kPorts; ++i) EXPECT_TRUE(echoes[i - 1].get()) << "port " << i;

  // ports: every one connected both ways with its byte counts.
  const json ports = api.call({{"cmd", "ports"}});
  ASSERT_TRUE(ports.value("ok", false)) << ports.dump();
  ASSERT_EQ(ports["result"]["ports"].size(), kPorts + 1);
  for (const auto& p : ports["result"]["ports"]) {
    if (p["id"] == 0) continue;
    EXPECT_TRUE(p["host_connected"].get<bool>()) << p.dump();
    EXPECT_TRUE(p["guest_connected"].get<bool>()) << p.dump();
    EXPECT_EQ(p["bytes_to_guest"], kBytes) << p.dump();
    EXPECT_EQ(p["bytes_from_guest"], kBytes) << p.dump();
    EXPECT_EQ(p["console_bytes_dropped"], 0);
  }

  // Events for port 1 so far, in order: added, then (guest opened / host connected).
  {
    std::vector<std::string> kinds;
    int64_t last_us = 0;
    for (const auto& e : seen) {
      const int64_t us = e["timestamp"]["seconds"].get<int64_t>() * 1000000 +
                         e["timestamp"]["microseconds"].get<int64_t>();
      EXPECT_GE(us, last_us) << "timestamps go backwards";
      last_us = us;
      if (e["port"]["name"] == "org.pier.hp1") kinds.push_back(e["event"]);
    }
    ASSERT_GE(kinds.size(), 2u);
    EXPECT_EQ(kinds[0], "port-added");
    EXPECT_EQ(kinds[1], "guest-opened");
  }

  // Beyond --max-ports: ids 21..23 are free, the 24th port is an error response.
  // One of them is a console port (hvcN in a Linux guest): the guest's console comes up.
  for (unsigned i = 21; i <= 23; ++i) {
    const json r = add(api, "org.pier.extra" + std::to_string(i), "null", i == 21);
    EXPECT_TRUE(r.value("ok", false)) << r.dump();
  }
  EXPECT_FALSE(wait_event(watcher, "guest-opened", "org.pier.extra21").is_null());
  {
    const json p = api.call({{"cmd", "ports"}});
    bool found = false;
    for (const auto& port : p["result"]["ports"]) {
      if (port["name"] != "org.pier.extra21") continue;
      found = true;
      EXPECT_TRUE(port["console"].get<bool>()) << port.dump();
      EXPECT_TRUE(port["guest_connected"].get<bool>()) << port.dump();
    }
    EXPECT_TRUE(found) << p.dump();
  }
  const json full = add(api, "org.pier.toomany", "null");
  EXPECT_FALSE(full.value("ok", true));
  EXPECT_NE(full.value("error", "").find("max-ports"), std::string::npos) << full.dump();

  // The guest closes and reopens a port: events.
  ASSERT_NE(guest_command("close org.pier.hp3"), "");
  EXPECT_FALSE(wait_event(watcher, "guest-closed", "org.pier.hp3").is_null());
  ASSERT_NE(guest_command("open org.pier.hp3"), "");
  EXPECT_FALSE(wait_event(watcher, "guest-opened", "org.pier.hp3").is_null());

  // Remove port 5 with its client attached: the client sees the end, the guest gets
  // PORT_REMOVE, events say so, the id is free again.
  {
    const json r = api.call({{"cmd", "port-remove"}, {"name", "org.pier.hp5"}});
    ASSERT_TRUE(r.value("ok", false)) << r.dump();
    EXPECT_EQ(r["result"]["id"], 5);
    char b;
    pollfd p{fds[4], POLLIN, 0};
    ASSERT_EQ(::poll(&p, 1, 5000), 1);
    EXPECT_EQ(::recv(fds[4], &b, 1, 0), 0);  // the backend is closed
    EXPECT_FALSE(wait_event(watcher, "port-removed", "org.pier.hp5").is_null());
    EXPECT_FALSE(fs::exists(sock("p5")));  // the listening socket file is gone
    // Removing it again, or one that never existed, is an error.
    EXPECT_FALSE(api.call({{"cmd", "port-remove"}, {"name", "org.pier.hp5"}}).value("ok", true));
    EXPECT_FALSE(api.call({{"cmd", "port-remove"}, {"id", 5}}).value("ok", true));
  }
  // Re-add the same name: it gets the free id 5 and works again.
  {
    const json r = add(api, "org.pier.hp5", "socket=" + sock("p5b"));
    ASSERT_TRUE(r.value("ok", false)) << r.dump();
    EXPECT_EQ(r["result"]["id"], 5);
    EXPECT_FALSE(wait_event(watcher, "guest-opened", "org.pier.hp5").is_null());
    const int fd = connect_unix(sock("p5b"));
    ASSERT_GE(fd, 0);
    const std::string data = pattern(55, 100000);
    EXPECT_EQ(echo_through(fd, data, 30s), data);
    EXPECT_FALSE(wait_event(watcher, "host-connected", "org.pier.hp5").is_null());
    ::close(fd);
    EXPECT_FALSE(wait_event(watcher, "host-disconnected", "org.pier.hp5").is_null());
  }
  // The other ports were not disturbed.
  {
    const std::string data = pattern(77, 50000);
    EXPECT_EQ(echo_through(fds[0], data, 30s), data);
  }
  for (int fd : fds) ::close(fd);

  const PierResult r = quit(api);
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_FALSE(wait_event(watcher, "vm-stopped", "").is_null());  // reached every client
  EXPECT_FALSE(fs::exists(sock("api")));
}

TEST_F(Api, VmStoppedEventAndEventOrderForOnePort) {
  PIER_REQUIRE_KVM();
  boot();
  LineClient api(sock("api"));
  ASSERT_TRUE(api.ok());
  LineClient watcher(sock("api"));
  ASSERT_TRUE(watcher.ok());
  // The watcher is registered once the server answered it.
  ASSERT_TRUE(watcher.call({{"cmd", "vm-status"}}).value("ok", false));
  ASSERT_TRUE(add(api, "org.pier.one", "socket=" + sock("one")).value("ok", false));
  // Wait until the guest has opened it, then connect, disconnect, remove.
  for (int i = 0; i < 200; ++i) {
    const json p = api.call({{"cmd", "ports"}});
    if (p["result"]["ports"].size() == 2 && p["result"]["ports"][1]["guest_connected"] == true) {
      break;
    }
    std::this_thread::sleep_for(20ms);
  }
  int fd = connect_unix(sock("one"));
  ASSERT_GE(fd, 0);
  EXPECT_EQ(echo_through(fd, "ping\n", 10s), "ping\n");
  ::close(fd);
  // Wait for the disconnect before removing, so the order below is deterministic.
  std::vector<json> seen;
  ASSERT_FALSE(wait_event(watcher, "host-disconnected", "org.pier.one", &seen).is_null());
  ASSERT_TRUE(api.call({{"cmd", "port-remove"}, {"id", 1}}).value("ok", false));
  ASSERT_FALSE(wait_event(watcher, "port-removed", "org.pier.one", &seen).is_null());
  std::vector<std::string> kinds;
  for (const auto& e : seen) kinds.push_back(e["event"]);
  // The guest opened the port before we connected (we waited for guest_connected above).
  EXPECT_EQ(kinds, (std::vector<std::string>{"port-added", "guest-opened", "host-connected",
                                             "host-disconnected", "port-removed"}));
  const json stop = api.call({{"cmd", "quit"}});
  EXPECT_TRUE(stop.value("ok", false));
  json last;
  for (int i = 0; i < 10 && !watcher.eof(); ++i) {
    json e = watcher.event(5000ms);
    if (e.is_null()) break;
    last = e;
  }
  EXPECT_EQ(last.value("event", ""), "vm-stopped") << last.dump();
  EXPECT_EQ(last.value("reason", ""), "quit from the API");
  const PierResult r = pier_.get();
  EXPECT_EQ(r.exit_code, 0) << r.describe();
}

TEST_F(Api, BadInputGetsErrorsAndLeavesTheGuestAndOtherClientsAlone) {
  PIER_REQUIRE_KVM();
  boot();
  LineClient api(sock("api"));
  ASSERT_TRUE(api.ok());
  ASSERT_TRUE(add(api, "org.pier.live", "socket=" + sock("live")).value("ok", false));
  const int live = connect_unix(sock("live"));
  ASSERT_GE(live, 0);
  EXPECT_EQ(echo_through(live, "before\n", 10s), "before\n");

  const std::vector<std::string> bad = {
      "{not json",
      R"({"cmd":"fly"})",
      R"({"cmd":"port-add","name":"x"})",
      R"({"cmd":"port-add","name":["x"],"backend":"null"})",
      R"({"cmd":"port-add","name":"x","backend":"warp=9"})",
      R"({"cmd":"port-add","name":"bad name!","backend":"null"})",
      R"({"cmd":"port-add","name":"x","backend":"stdio"})",
      R"({"cmd":"port-add","name":"org.pier.live","backend":"null"})",
      R"({"cmd":"port-add","name":"y","backend":"socket=)" + sock("live") + R"("})",
      R"({"cmd":"port-remove","name":"nothing"})",
      R"({"cmd":"port-remove","id":300})",
  };
  for (const auto& line : bad) {
    ASSERT_TRUE(api.send(line + "\n"));
    const json r = api.response();
    ASSERT_TRUE(r.is_object()) << "no response to " << line;
    EXPECT_FALSE(r.value("ok", true)) << line << " -> " << r.dump();
    EXPECT_FALSE(r.value("error", "").empty());
  }

  // 10 000 garbage lines from one client while others keep working.
  LineClient flood(sock("api"));
  std::thread writer([&] {
    std::string chunk;
    for (int i = 0; i < 10000; ++i) chunk += "garbage " + std::to_string(i) + "\n";
    flood.send(chunk);
  });
  std::vector<std::unique_ptr<LineClient>> many;
  for (int i = 0; i < 40; ++i) many.push_back(std::make_unique<LineClient>(sock("api")));
  int errors = 0;
  while (errors < 10000) {
    const json r = flood.response(20000ms);
    if (!r.is_object()) break;
    if (!r.value("ok", true)) ++errors;
  }
  writer.join();
  EXPECT_EQ(errors, 10000);
  for (auto& c : many) {
    const json r = c->call({{"cmd", "vm-status"}});
    EXPECT_EQ(r["result"].value("state", ""), "running") << r.dump();
  }
  // A client that disconnects mid-request, and one that sends 10 MB without a newline.
  {
    LineClient half(sock("api"));
    half.send(R"({"cmd":"port-add","name":"org.pier.half","back)");
  }
  {
    LineClient big(sock("api"));
    std::thread w([&] {
      const std::string junk(1 << 20, 'j');
      for (int i = 0; i < 10; ++i) big.send(junk);
      big.send("\n");
    });
    const json r = big.response(20000ms);
    w.join();
    EXPECT_FALSE(r.value("ok", true));
    EXPECT_NE(r.value("error", "").find("longer than"), std::string::npos) << r.dump();
    EXPECT_TRUE(big.call({{"cmd", "ports"}}).value("ok", false));
  }
  // Nothing was added by any of it; the guest still echoes on the live port.
  const json ports = api.call({{"cmd", "ports"}});
  EXPECT_EQ(ports["result"]["ports"].size(), 2u) << ports.dump();
  EXPECT_EQ(echo_through(live, "after\n", 10s), "after\n");
  ::close(live);
  const PierResult r = quit(api);
  EXPECT_EQ(r.exit_code, 0) << r.describe();
}

// pier ctl and pier port, the way the README walks through them.
std::string run_capture(const std::vector<std::string>& args, const std::string& input = "",
                        int* status = nullptr) {
  int in_pipe[2], out_pipe[2];
  if (::pipe(in_pipe) != 0 || ::pipe(out_pipe) != 0) return "";
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(in_pipe[0], 0);
    ::dup2(out_pipe[1], 1);
    ::close(in_pipe[1]);
    ::close(out_pipe[0]);
    std::vector<char*> argv;
    std::string bin = pier_binary();
    argv.push_back(bin.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(bin.c_str(), argv.data());
    ::_exit(127);
  }
  ::close(in_pipe[0]);
  ::close(out_pipe[1]);
  std::thread feeder([fd = in_pipe[1], input] {
    size_t off = 0;
    while (off < input.size()) {
      const ssize_t n = ::write(fd, input.data() + off, input.size() - off);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    ::close(fd);
  });
  std::string out;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(out_pipe[0], buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(out_pipe[0]);
  feeder.join();
  int st = 0;
  ::waitpid(pid, &st, 0);
  if (status) *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

TEST_F(Api, PierCtlAndPierPortFromAShell) {
  PIER_REQUIRE_KVM();
  boot();
  const std::string api = sock("api");
  // pier ctl events in the background, for 3 events.
  auto events = std::async(std::launch::async, [&] {
    return run_capture({"ctl", "--api-socket", api, "events", "--count", "3"});
  });
  {
    // Until it is connected (a second API client beside this one): a pier ctl built with ASan
    // took longer than the 300 ms this used to sleep in the nested KVM host, and missed the
    // port-added event.
    LineClient watcher(api);
    ASSERT_TRUE(watcher.ok());
    auto clients = [&] {
      const json r = watcher.call({{"cmd", "vm-status"}});
      const bool answered = r.is_object() && r.contains("result") && r["result"].is_object();
      return answered ? r["result"].value("api_clients", 0) : 0;
    };
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (clients() < 2 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(20ms);
    }
  }
  int status = -1;
  std::string out = run_capture(
      {"ctl", "--api-socket", api, "port-add", "org.pier.shell", "socket=" + sock("shell")}, "",
      &status);
  EXPECT_EQ(status, 0);
  EXPECT_NE(out.find("port 1 'org.pier.shell' added"), std::string::npos) << out;
  // pier port with stdin from a "file": the guest echoes it to stdout.
  std::string data;
  for (int i = 0; i < 2000; ++i) data += "line " + std::to_string(i) + " of the file\n";
  out = run_capture({"port", sock("shell")}, data, &status);
  EXPECT_EQ(status, 0);
  EXPECT_EQ(out, data);
  // A tcp= port the same way (pier picks the port: the address is in the port-add result).
  out = run_capture({"ctl", "--api-socket", api, "--json", "port-add", "org.pier.tcp", "tcp=0"}, "",
                    &status);
  ASSERT_EQ(status, 0) << out;
  const std::string tcp_address = json::parse(out)["result"]["address"];
  EXPECT_EQ(tcp_address.rfind("127.0.0.1:", 0), 0u) << tcp_address;
  EXPECT_EQ(run_capture({"port", tcp_address}, "over tcp\n", &status), "over tcp\n");
  EXPECT_EQ(status, 0);
  const std::string ev = events.get();  // port-added, guest-opened, host-connected
  EXPECT_NE(ev.find("port-added port 1 'org.pier.shell'"), std::string::npos) << ev;
  EXPECT_NE(ev.find("guest-opened port 1 'org.pier.shell'"), std::string::npos) << ev;
  out = run_capture({"ctl", "--api-socket", api, "--json", "ports"}, "", &status);
  EXPECT_EQ(status, 0);
  const json ports = json::parse(out);
  EXPECT_EQ(ports["result"]["ports"][1]["bytes_to_guest"], data.size()) << out;
  out = run_capture({"ctl", "--api-socket", api, "ports"}, "", &status);
  EXPECT_NE(out.find("org.pier.shell"), std::string::npos) << out;
  out = run_capture({"ctl", "--api-socket", api, "port-remove", "org.pier.nope"}, "", &status);
  EXPECT_EQ(status, 1);
  out = run_capture({"ctl", "--api-socket", api, "port-remove", "org.pier.shell"}, "", &status);
  EXPECT_EQ(status, 0);
  EXPECT_NE(out.find("removed"), std::string::npos) << out;
  out = run_capture({"ctl", "--api-socket", api, "vm-status"}, "", &status);
  EXPECT_NE(out.find("state: running"), std::string::npos) << out;
  out = run_capture({"ctl", "--api-socket", api, "quit"}, "", &status);
  EXPECT_EQ(status, 0);
  const PierResult r = pier_.get();
  EXPECT_EQ(r.exit_code, 0) << r.describe();
}

TEST_F(Api, ConfigFileIsEquivalentToFlagsAndFlagsOverrideIt) {
  PIER_REQUIRE_KVM();
  const std::string conf = (dir_ / "vm.conf").string();
  {
    FILE* f = std::fopen(conf.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fprintf(f,
                 "# a pier config file\n"
                 "kernel = %s\n"
                 "memory = 96M\n"
                 "console = socket=%s\n"
                 "api-socket = %s\n"
                 "max-ports = 3\n"
                 "port = name=org.pier.fromfile,socket=%s\n",
                 bare_guest("console_hotplug").c_str(), sock("console").c_str(),
                 sock("api").c_str(), sock("ff").c_str());
    std::fclose(f);
  }
  PierRun run;
  run.args = {"run", "--config", conf, "--max-ports", "5"};  // the flag wins over the file's 3
  run.timeout = 120s;
  pier_ = std::async(std::launch::async, [run] { return run_pier(run); });
  LineClient api(sock("api"));
  ASSERT_TRUE(api.ok());
  const json st = api.call({{"cmd", "vm-status"}});
  EXPECT_EQ(st["result"]["max_ports"], 5) << st.dump();
  EXPECT_EQ(st["result"]["memory_bytes"], 96u << 20);
  // One entry per vCPU with its exit count (what a hung guest's report is read from).
  ASSERT_EQ(st["result"]["vcpus"].size(), st["result"]["cpus"].get<size_t>()) << st.dump();
  EXPECT_EQ(st["result"]["vcpus"][0]["index"], 0) << st.dump();
  EXPECT_TRUE(st["result"]["vcpus"][0]["exits"].is_number_unsigned()) << st.dump();
  const json ports = api.call({{"cmd", "ports"}});
  ASSERT_EQ(ports["result"]["ports"].size(), 2u) << ports.dump();
  EXPECT_EQ(ports["result"]["ports"][1]["name"], "org.pier.fromfile");
  const PierResult r = quit(api);
  EXPECT_EQ(r.exit_code, 0) << r.describe();
}

// pier port on a terminal: raw while attached, Ctrl-] quits, the terminal is restored both when
// the user quits and when pier port is killed by SIGTERM.
struct PtySession {
  int master = -1;
  pid_t pid = -1;
  std::string slave;
};

PtySession start_on_pty(const std::vector<std::string>& args) {
  PtySession s;
  s.master = ::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (s.master < 0 || ::grantpt(s.master) != 0 || ::unlockpt(s.master) != 0) return s;
  s.slave = ::ptsname(s.master);
  s.pid = ::fork();
  if (s.pid == 0) {
    ::setsid();
    const int fd = ::open(s.slave.c_str(), O_RDWR);  // the controlling terminal
    ::dup2(fd, 0);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    std::string bin = pier_binary();
    std::vector<char*> argv{bin.data()};
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(bin.c_str(), argv.data());
    ::_exit(127);
  }
  return s;
}

std::string read_pty_until(int master, const std::string& needle, std::chrono::milliseconds t) {
  std::string got;
  const auto deadline = std::chrono::steady_clock::now() + t;
  while (got.find(needle) == std::string::npos && std::chrono::steady_clock::now() < deadline) {
    pollfd p{master, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char buf[4096];
    const ssize_t n = ::read(master, buf, sizeof(buf));
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  return got;
}

int wait_child(pid_t pid, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int st = 0;
    if (::waitpid(pid, &st, WNOHANG) == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    std::this_thread::sleep_for(20ms);
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  return -2;
}

TEST_F(Api, PierPortOnATerminalIsRawAndRestoresTheTerminal) {
  PIER_REQUIRE_KVM();
  boot();
  LineClient api(sock("api"));
  ASSERT_TRUE(add(api, "org.pier.tty", "socket=" + sock("tty")).value("ok", false));
  for (int round = 0; round < 2; ++round) {
    PtySession s = start_on_pty({"port", sock("tty")});
    ASSERT_GE(s.master, 0);
    ASSERT_GT(s.pid, 0);
    ASSERT_NE(read_pty_until(s.master, "Ctrl-] to quit", 10000ms).find("Ctrl-]"),
              std::string::npos);
    // Raw: no line discipline between the user and the port (no echo, no line buffering).
    const int slave = ::open(s.slave.c_str(), O_RDWR | O_NOCTTY);
    ASSERT_GE(slave, 0);
    termios t{};
    ASSERT_EQ(::tcgetattr(slave, &t), 0);
    EXPECT_EQ(t.c_lflag & (ICANON | ECHO), 0u);
    // Bytes typed go to the guest, which echoes them back to the screen (no newline needed).
    ASSERT_EQ(::write(s.master, "xyz", 3), 3);
    EXPECT_NE(read_pty_until(s.master, "xyz", 10000ms).find("xyz"), std::string::npos);
    if (round == 0) {
      ASSERT_EQ(::write(s.master, "", 1), 1);  // Ctrl-]
      EXPECT_EQ(wait_child(s.pid, 10000ms), 0);
    } else {
      ::kill(s.pid, SIGTERM);
      EXPECT_EQ(wait_child(s.pid, 10000ms), 128 + SIGTERM);
    }
    ASSERT_EQ(::tcgetattr(slave, &t), 0);
    EXPECT_NE(t.c_lflag & ICANON, 0u) << "terminal not restored (round " << round << ")";
    EXPECT_NE(t.c_lflag & ECHO, 0u) << "terminal not restored (round " << round << ")";
    ::close(slave);
    ::close(s.master);
  }
  const PierResult r = quit(api);
  EXPECT_EQ(r.exit_code, 0) << r.describe();
}

}  // namespace
}  // namespace pier::test
