// pier run --jail (vmm/jail.hpp) end to end: the console_hotplug bare guest (it opens every port
// it is given and echoes what it receives) under --jail DIR --jail-uid/--jail-gid, with the
// console and the API as sockets in DIR, a tcp= port bound before the jail and a client port
// to a peer socket in DIR. From outside, the test checks that pier runs as the jail's uid and gid
// in every thread, in namespaces of its own, with DIR as its root and the jail's limits, seccomp
// on; that data moves on the console, the tcp= port, the client port (also after reconnecting
// from inside the jail) and ports added through the API; that port-add cannot leave DIR (nor
// add tcp= or pty); and that pier removes its socket files from DIR at exit.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <string>

#include "integration/line_client.hpp"
#include "integration/pier_process.hpp"
#include "vmm/fd.hpp"

namespace pier::test {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace std::chrono_literals;

constexpr unsigned kUid = 4242, kGid = 4343;

// Sends `data` and reads the guest's echo of it.
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

UniqueFd connect_tcp(uint16_t port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return UniqueFd();
  }
  return fd;
}

std::string status_field(const std::string& status_path, const std::string& key) {
  std::ifstream in(status_path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      std::string v = line.substr(key.size() + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  }
  return "";
}

// A "Max ..." row of /proc/PID/limits: "soft hard".
std::string limit_row(const std::string& proc, const std::string& name) {
  std::ifstream in(proc + "/limits");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name, 0) == 0) {
      std::istringstream words(line.substr(name.size()));
      std::string soft, hard;
      words >> soft >> hard;
      return soft + " " + hard;
    }
  }
  return "";
}

std::string ns_link(const std::string& proc, const char* ns) {
  std::error_code ec;
  return fs::read_symlink(proc + "/ns/" + ns, ec).string();
}

class Jail : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("pier-jail-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    fs::permissions(dir_, fs::perms::owner_all);
  }
  void TearDown() override {
    if (pier_.valid()) {
      LineClient c(sock("api"));
      if (c.ok()) c.call({{"cmd", "quit"}}, 2000ms);
      pier_.wait_for(30s);
    }
    fs::remove_all(dir_);
  }
  std::string sock(const std::string& name) const { return (dir_ / (name + ".sock")).string(); }

  fs::path dir_;
  std::future<PierResult> pier_;
};

TEST_F(Jail, BareGuestRunsConfinedAsTheJailUserAndPortsWorkInsideTheJailDirectory) {
  PIER_REQUIRE_KVM();
  if (::geteuid() != 0) GTEST_SKIP() << "--jail needs root";
  ASSERT_EQ(::chown(dir_.c_str(), kUid, kGid), 0);
  // A peer pier connects out to (socket=...,client): first before the jail, then again from
  // inside it after the peer hangs up. The jailed uid needs write access to connect.
  UniqueFd peer_fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(peer_fd);
  const int peer = peer_fd.get();
  {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string path = sock("peer");
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
    ASSERT_EQ(::bind(peer, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
    ASSERT_EQ(::listen(peer, 4), 0);
    ASSERT_EQ(::chown(path.c_str(), kUid, kGid), 0);
  }
  PierRun run;
  // The console by a bare name, the API by its full path in DIR, a tcp= port on any free port.
  run.args = {"run",
              "--kernel",
              bare_guest("console_hotplug"),
              "--jail",
              dir_.string(),
              "--jail-uid",
              std::to_string(kUid),
              "--jail-gid",
              std::to_string(kGid),
              "--console",
              "socket=console.sock",
              "--api-socket",
              sock("api"),
              "--port",
              "name=org.pier.peer,socket=peer.sock,client,reconnect=0.2",
              "--port",
              "name=org.pier.tcp,tcp=0",
              "--max-ports",
              "8",
              "--cpus",
              "2",
              "--log-level",
              "info"};
  run.timeout = 300s;
  const auto started = std::chrono::steady_clock::now();
  pier_ = std::async(std::launch::async, [run] { return run_pier(run); });
  LineClient console(sock("console"));
  ASSERT_TRUE(console.ok());
  ASSERT_NE(console.until("PIER-HOTPLUG ready", 60000ms), "");
  const double ready_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  LineClient api(sock("api"));
  ASSERT_TRUE(api.ok());

  // pier as seen from the host.
  const json status = api.call({{"cmd", "vm-status"}});
  ASSERT_TRUE(status.value("ok", false)) << status.dump();
  const int pid = status["result"]["pid"];
  const std::string proc = "/proc/" + std::to_string(pid);
  EXPECT_EQ(status_field(proc + "/status", "Uid"), "4242\t4242\t4242\t4242");
  EXPECT_EQ(status_field(proc + "/status", "Gid"), "4343\t4343\t4343\t4343");
  EXPECT_EQ(status_field(proc + "/status", "Groups"), "");
  EXPECT_EQ(status_field(proc + "/status", "NoNewPrivs"), "1");
  EXPECT_EQ(status_field(proc + "/status", "CapEff"), "0000000000000000");
  EXPECT_EQ(status_field(proc + "/status", "CapPrm"), "0000000000000000");
  EXPECT_EQ(status_field(proc + "/status", "CapBnd"), "0000000000000000");
  EXPECT_EQ(status_field(proc + "/status", "Seccomp"), "2");  // the I/O thread's filter
  // Every thread (the I/O thread and 2 vCPUs) has the jail's uid and a filter.
  unsigned threads = 0;
  for (const auto& task : fs::directory_iterator(proc + "/task")) {
    ++threads;
    const std::string s = task.path().string() + "/status";
    EXPECT_EQ(status_field(s, "Uid"), "4242\t4242\t4242\t4242") << s;
    EXPECT_EQ(status_field(s, "Seccomp"), "2") << s;
    for (const char* ns : {"mnt", "net", "ipc", "uts", "cgroup"}) {
      std::error_code ec;
      EXPECT_EQ(fs::read_symlink(task.path() / "ns" / ns, ec),
                fs::read_symlink(proc + "/ns/" + ns, ec))
          << s << " " << ns;
    }
  }
  EXPECT_EQ(threads, 3u);
  for (const char* ns : {"mnt", "net", "ipc", "uts", "cgroup"}) {
    EXPECT_NE(ns_link(proc, ns), "") << ns;
    EXPECT_NE(ns_link(proc, ns), ns_link("/proc/self", ns)) << ns;
  }
  EXPECT_EQ(ns_link(proc, "pid"), ns_link("/proc/self", "pid"));  // no PID namespace (jail.hpp)
  struct stat root_st {
  }, dir_st{};
  ASSERT_EQ(::stat((proc + "/root/").c_str(), &root_st), 0);
  ASSERT_EQ(::stat(dir_.c_str(), &dir_st), 0);
  EXPECT_EQ(root_st.st_ino, dir_st.st_ino);
  EXPECT_EQ(root_st.st_dev, dir_st.st_dev);
  EXPECT_FALSE(fs::exists(proc + "/root/dev/kvm"));
  EXPECT_EQ(limit_row(proc, "Max processes"), "0 0");
  EXPECT_EQ(limit_row(proc, "Max core file size"), "0 0");
  EXPECT_EQ(limit_row(proc, "Max file size"), "1073741824 1073741824");
  const std::string nofile = limit_row(proc, "Max open files");
  const unsigned long open_files = std::stoul(nofile);
  EXPECT_GE(open_files, 4u * 8 + 257);
  EXPECT_LE(open_files, 1024u) << nofile;

  // The tcp= port was bound before the jail: it keeps working from the host's network.
  const json ports = api.call({{"cmd", "ports"}});
  ASSERT_TRUE(ports.value("ok", false)) << ports.dump();
  std::string tcp_backend;
  for (const auto& port : ports["result"]["ports"]) {
    if (port["name"] == "org.pier.tcp") tcp_backend = port["backend"];
  }
  const size_t colon = tcp_backend.rfind(':');
  ASSERT_NE(colon, std::string::npos) << tcp_backend;
  {
    const UniqueFd tcp =
        connect_tcp(static_cast<uint16_t>(std::stoi(tcp_backend.substr(colon + 1))));
    ASSERT_TRUE(tcp) << tcp_backend;
    EXPECT_EQ(echo_through(tcp.get(), "over tcp\n", 20s), "over tcp\n");
  }

  // The client port: connected before the jail; after a hang-up, reconnected from inside.
  for (int round = 1; round <= 2; ++round) {
    pollfd p{peer, POLLIN, 0};
    ASSERT_EQ(::poll(&p, 1, 20000), 1) << "pier did not connect to the peer, round " << round;
    const UniqueFd fd(::accept4(peer, nullptr, nullptr, SOCK_CLOEXEC));
    ASSERT_TRUE(fd);
    const std::string data = "peer round " + std::to_string(round) + "\n";
    EXPECT_EQ(echo_through(fd.get(), data, 20s), data);
  }
  peer_fd.reset();

  // port-add: a bare name and a full path in DIR are sockets in DIR, made by the jail's uid.
  for (const auto& [name, spec, file] :
       {std::tuple{"org.pier.a", std::string("socket=a.sock"), sock("a")},
        std::tuple{"org.pier.b", "socket=" + sock("b"), sock("b")}}) {
    const json r =
        api.call({{"cmd", "port-add"}, {"name", name}, {"backend", spec}, {"console", false}});
    ASSERT_TRUE(r.value("ok", false)) << r.dump();
    EXPECT_EQ(r["result"]["address"], file) << r.dump();
    struct stat st {};
    ASSERT_EQ(::lstat(file.c_str(), &st), 0) << file;
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_uid, kUid);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    const UniqueFd fd(connect_unix(file));
    ASSERT_TRUE(fd) << file;
    const std::string data = std::string("through ") + name + "\n";
    EXPECT_EQ(echo_through(fd.get(), data, 20s), data) << name;
  }
  // Nothing outside DIR, no tcp=, no pty at run time: error responses, and no file appears.
  const fs::path outside = dir_.parent_path() / (dir_.filename().string() + "-outside.sock");
  for (const auto& [spec, why] :
       {std::pair{"socket=" + outside.string(), std::string("outside the jail directory")},
        std::pair{std::string("socket=../escape.sock"), std::string("under --jail")},
        std::pair{std::string("socket=sub/x.sock"), std::string("under --jail")},
        std::pair{"file=" + outside.string(), std::string("outside the jail directory")},
        std::pair{std::string("tcp=0"), std::string("network namespace")},
        std::pair{std::string("pty"), std::string("/dev/pts")}}) {
    const json r = api.call(
        {{"cmd", "port-add"}, {"name", "org.pier.bad"}, {"backend", spec}, {"console", false}});
    EXPECT_FALSE(r.value("ok", true)) << spec << ": " << r.dump();
    EXPECT_NE(r.value("error", "").find(why), std::string::npos) << spec << ": " << r.dump();
  }
  EXPECT_FALSE(fs::exists(outside));
  EXPECT_FALSE(fs::exists(dir_.parent_path() / "escape.sock"));
  // A removed port's socket file goes away inside DIR.
  ASSERT_TRUE(api.call({{"cmd", "port-remove"}, {"name", "org.pier.a"}}).value("ok", false));
  EXPECT_FALSE(fs::exists(sock("a")));

  // The console still answers, then a clean stop: every socket file pier made is gone.
  console.send("status\n");
  EXPECT_NE(console.until("ok status", 10000ms), "");
  const json stop = api.call({{"cmd", "quit"}});
  EXPECT_TRUE(stop.value("ok", false)) << stop.dump();
  const PierResult r = pier_.get();
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_NE(r.err.find("jail: root " + fs::canonical(dir_).string() + ", uid 4242 gid 4343"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(r.err.find("seccomp: thread"), std::string::npos) << r.err;
  std::vector<std::string> left;
  fs::remove(sock("peer"));  // the test's own
  for (const auto& e : fs::directory_iterator(dir_)) left.push_back(e.path().filename());
  EXPECT_TRUE(left.empty()) << "left in the jail directory: " << ::testing::PrintToString(left);
  std::printf(
      "[ JAIL     ] pier pid %d: console ready %.2f s after start, RLIMIT_NOFILE %s, %u threads\n",
      pid, ready_s, nofile.c_str(), threads);
}

// The jail does not lean on the seccomp filters: with --seccomp off pier is still confined, and
// RLIMIT_NPROC 0 still stops it from creating a process or thread.
TEST_F(Jail, HoldsWithSeccompOff) {
  PIER_REQUIRE_KVM();
  if (::geteuid() != 0) GTEST_SKIP() << "--jail needs root";
  ASSERT_EQ(::chown(dir_.c_str(), kUid, kGid), 0);
  PierRun run;
  run.args = {"run",
              "--kernel",
              bare_guest("console_hotplug"),
              "--jail",
              dir_.string(),
              "--jail-uid",
              std::to_string(kUid),
              "--jail-gid",
              std::to_string(kGid),
              "--console",
              "socket=console.sock",
              "--api-socket",
              "api.sock",
              "--seccomp",
              "off",
              "--jail-fsize",
              "unlimited"};
  run.timeout = 300s;
  pier_ = std::async(std::launch::async, [run] { return run_pier(run); });
  LineClient console(sock("console"));
  ASSERT_TRUE(console.ok());
  ASSERT_NE(console.until("PIER-HOTPLUG ready", 60000ms), "");
  LineClient api(sock("api"));
  ASSERT_TRUE(api.ok());
  const json status = api.call({{"cmd", "vm-status"}});
  ASSERT_TRUE(status.value("ok", false)) << status.dump();
  const std::string proc = "/proc/" + std::to_string(status["result"]["pid"].get<int>());
  EXPECT_EQ(status_field(proc + "/status", "Seccomp"), "0");
  EXPECT_EQ(status_field(proc + "/status", "Uid"), "4242\t4242\t4242\t4242");
  EXPECT_EQ(status_field(proc + "/status", "NoNewPrivs"), "1");
  EXPECT_EQ(status_field(proc + "/status", "CapEff"), "0000000000000000");
  EXPECT_EQ(limit_row(proc, "Max processes"), "0 0");
  EXPECT_EQ(limit_row(proc, "Max file size"), "unlimited unlimited");
  EXPECT_NE(ns_link(proc, "mnt"), ns_link("/proc/self", "mnt"));
  EXPECT_NE(ns_link(proc, "net"), ns_link("/proc/self", "net"));
  EXPECT_FALSE(api.call({{"cmd", "port-add"},
                         {"name", "org.pier.out"},
                         {"backend", "socket=/tmp/pier-jail-out.sock"},
                         {"console", false}})
                   .value("ok", true));
  EXPECT_TRUE(api.call({{"cmd", "quit"}}).value("ok", false));
  const PierResult r = pier_.get();
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_TRUE(fs::is_empty(dir_));
}

TEST_F(Jail, SetupMistakesAreOneLineErrors) {
  if (::geteuid() != 0) GTEST_SKIP() << "--jail needs root";
  // No KVM is needed: these fail before pier opens /dev/kvm.
  const std::string guest = bare_guest("console_hotplug");
  auto run_with = [&](std::vector<std::string> extra) {
    PierRun run;
    run.args = {"run", "--kernel", guest};
    run.args.insert(run.args.end(), extra.begin(), extra.end());
    run.timeout = 30s;
    return run_pier(run);
  };
  const std::string uid = std::to_string(kUid), gid = std::to_string(kGid);
  // Not owned by the jail's uid.
  PierResult r = run_with({"--jail", dir_.string(), "--jail-uid", uid, "--jail-gid", gid});
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_NE(r.err.find("pier: --jail"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("install -d -o 4242 -g 4343 -m 0700"), std::string::npos) << r.err;
  ASSERT_EQ(::chown(dir_.c_str(), kUid, kGid), 0);
  r = run_with({"--jail", dir_.string(), "--jail-uid", uid});
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_NE(r.err.find("--jail-gid"), std::string::npos) << r.err;
  r = run_with({"--jail-uid", uid});
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_NE(r.err.find("only applies with --jail"), std::string::npos) << r.err;
  r = run_with({"--jail", dir_.string(), "--jail-uid", uid, "--jail-gid", gid, "--api-socket",
                "/tmp/pier-jail-elsewhere.sock"});
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_NE(r.err.find("--api-socket '/tmp/pier-jail-elsewhere.sock' is outside the jail"),
            std::string::npos)
      << r.err;
  EXPECT_FALSE(fs::exists("/tmp/pier-jail-elsewhere.sock"));
}

}  // namespace
}  // namespace pier::test
