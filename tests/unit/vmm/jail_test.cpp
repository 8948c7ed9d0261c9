// The --jail module (vmm/jail.hpp): the path rule and backend rewriting, the checks on the
// configuration, and the jail itself, entered in a forked child that then checks from inside
// that its root is DIR, its credentials and limits are the jail's, no_new_privs is set, its
// network namespace is empty, host paths are out of reach, and sockets made before the jail
// still work. Entering needs root; without it those tests skip.
#include "vmm/jail.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/capability.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "devices/chardev/port_backend.hpp"
#include "vmm/error.hpp"
#include "vmm/fd.hpp"
#include "vmm/machine.hpp"

namespace pier::jail {
namespace {

namespace fs = std::filesystem;

constexpr uid_t kUid = 43210;
constexpr gid_t kGid = 43211;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(JailPaths, BareNamesAndAbsolutePathsDirectlyInTheJailAreAccepted) {
  EXPECT_EQ(confine_path("/srv/j", "api.sock", "x"), "api.sock");
  EXPECT_EQ(confine_path("/srv/j", "/srv/j/api.sock", "x"), "api.sock");
  EXPECT_EQ(confine_path("/srv/j", "/srv/j/./api.sock", "x"), "api.sock");
  EXPECT_EQ(confine_path("/srv/j", "/srv/j/sub/../a,b.sock", "x"), "a,b.sock");
  EXPECT_EQ(confine_path("/srv/j", "//srv//j//api.sock", "x"), "api.sock");
}

TEST(JailPaths, EverythingElseIsRefusedWithTheRule) {
  for (const char* path : {"/tmp/api.sock", "/srv/j/sub/api.sock", "/srv/j/../api.sock",
                           "/srv/jx/api.sock", "sub/api.sock", "./api.sock", "../api.sock", ".",
                           "..", "", "/srv/j/", "/srv/j", "/srv/j/.."}) {
    const std::string e = error_of([&] { confine_path("/srv/j", path, "--api-socket"); });
    EXPECT_NE(e.find("under --jail"), std::string::npos) << path << ": " << e;
    EXPECT_NE(e.find("--api-socket"), std::string::npos) << path << ": " << e;
  }
}

TEST(JailPaths, BackendsAreRewrittenToNamesInTheJail) {
  using Kind = chardev::PortBackendSpec::Kind;
  EXPECT_EQ(confine_backend("/srv/j", "socket=/srv/j/a.sock", false), "socket=a.sock");
  EXPECT_EQ(confine_backend("/srv/j", "socket=a.sock", true), "socket=a.sock");
  // Client mode and its reconnect interval survive; a comma in a name stays escaped.
  const std::string client =
      confine_backend("/srv/j", "socket=/srv/j/a,,b,client,reconnect=0.5", false);
  const auto spec = chardev::parse_port_backend(client);
  EXPECT_EQ(spec.kind, Kind::kUnixConnect) << client;
  EXPECT_EQ(spec.path, "a,b") << client;
  EXPECT_EQ(spec.reconnect, std::chrono::milliseconds(500)) << client;
  EXPECT_NE(error_of([] {
              confine_backend("/srv/j", "socket=/tmp/a.sock", false);
            }).find("outside the jail directory"),
            std::string::npos);
  EXPECT_NE(error_of([] { confine_backend("/srv/j", "socket=/tmp/a.sock,client", true); }), "");
  // tcp= and pty: fine on the command line (made before the jail), refused at run time.
  EXPECT_EQ(confine_backend("/srv/j", "tcp=127.0.0.1:0", false), "tcp=127.0.0.1:0");
  EXPECT_EQ(confine_backend("/srv/j", "pty", false), "pty");
  EXPECT_NE(error_of([] { confine_backend("/srv/j", "tcp=5000", true); }).find("network namespace"),
            std::string::npos);
  EXPECT_NE(error_of([] { confine_backend("/srv/j", "pty", true); }).find("/dev/pts"),
            std::string::npos);
  // file=: opened before the jail on the command line (any path, made absolute), confined at
  // run time.
  const std::string cwd = fs::current_path().string();
  EXPECT_EQ(confine_backend("/srv/j", "file=out.log", false), "file=" + cwd + "/out.log");
  EXPECT_EQ(confine_backend("/srv/j", "file=/var/log/x", false), "file=/var/log/x");
  EXPECT_EQ(confine_backend("/srv/j", "file=/srv/j/out.log", true), "file=out.log");
  EXPECT_NE(error_of([] { confine_backend("/srv/j", "file=/var/log/x", true); }), "");
  EXPECT_EQ(confine_backend("/srv/j", "null", true), "null");
  EXPECT_EQ(confine_backend("/srv/j", "stdio", false), "stdio");
  // A malformed spec is the backend parser's error.
  EXPECT_NE(
      error_of([] { confine_backend("/srv/j", "socket=", true); }).find("invalid port backend"),
      std::string::npos);
}

TEST(JailLimits, NofileCoversEveryPortAndApiClient) {
  // A port can hold a listening socket, its timer and a client; 256 API clients; slack.
  EXPECT_EQ(nofile_limit(40, 31, false), 40u + 4 * 31 + 64);
  EXPECT_EQ(nofile_limit(40, 31, true), 40u + 4 * 31 + 257 + 64);
  EXPECT_GT(nofile_limit(2100, 511, true), 2100u + 511 * 3 + 256);
  EXPECT_GE(open_fd_count(), 3u);
}

class JailDir : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("pier-jail-unit-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    fs::permissions(dir_, fs::perms::owner_all);
  }
  void TearDown() override { fs::remove_all(dir_); }
  bool own_dir() { return ::chown(dir_.c_str(), kUid, kGid) == 0; }
  Config config() const {
    Config c;
    c.dir = dir_.string();
    c.uid = kUid;
    c.gid = kGid;
    c.file_size_limit = 1 << 20;
    return c;
  }
  fs::path dir_;
};

TEST_F(JailDir, ConfigurationMistakesAreSetupErrors) {
  if (::geteuid() != 0) {
    EXPECT_NE(error_of([&] { Jail j(config()); }).find("needs root"), std::string::npos);
    GTEST_SKIP() << "the rest needs root";
  }
  Config c = config();
  c.uid = 0;
  EXPECT_NE(error_of([&] { Jail j(c); }).find("--jail-uid"), std::string::npos);
  c = config();
  c.gid = 0;
  EXPECT_NE(error_of([&] { Jail j(c); }).find("--jail-gid"), std::string::npos);
  c = config();
  c.dir = (dir_ / "missing").string();
  EXPECT_NE(error_of([&] { Jail j(c); }).find("missing"), std::string::npos);
  c.dir = "/";
  EXPECT_NE(error_of([&] { Jail j(c); }), "");
  std::ofstream(dir_ / "file") << "x";
  c.dir = (dir_ / "file").string();
  EXPECT_NE(error_of([&] { Jail j(c); }).find("not a directory"), std::string::npos);
  // Owned by root, not by the jail's uid: the message says how to fix it.
  const std::string e = error_of([&] { Jail j(config()); });
  EXPECT_NE(e.find("install -d -o 43210 -g 43211 -m 0700"), std::string::npos) << e;
  ASSERT_TRUE(own_dir());
  EXPECT_EQ(error_of([&] { Jail j(config()); }), "");
  // The canonical directory: a symlink to it is resolved.
  fs::create_directory_symlink(dir_, dir_.string() + "-link");
  c = config();
  c.dir = dir_.string() + "-link";
  Jail j(c);
  EXPECT_EQ(j.dir(), fs::canonical(dir_).string());
  // port-add through the link's spelling is accepted too.
  EXPECT_EQ(j.confine_run_time_backend("socket=" + c.dir + "/x.sock"), "socket=x.sock");
  EXPECT_EQ(j.host_address("x.sock"), j.dir() + "/x.sock");
  EXPECT_EQ(j.host_address("127.0.0.1:5000"), "127.0.0.1:5000");
  EXPECT_EQ(j.host_address("/dev/pts/3"), "/dev/pts/3");
  fs::remove(dir_.string() + "-link");
}

struct ChildResult {
  int status = 0;
  std::string out;  // what the child wrote to its report pipe (its stderr)
  bool ok() const { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }
};

// Both ends of a pipe (close-on-exec).
struct Pipe {
  UniqueFd read, write;
  Pipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2");
    read.reset(fds[0]);
    write.reset(fds[1]);
  }
};

// Runs `body` in a forked child whose stderr is captured; `parent` runs meanwhile with the
// child's pid and two pipes: the child signals on `to_parent` (one byte per ready()), the
// parent answers on `to_child`. The child is killed by SIGALRM after 30 s.
struct Sync {
  Pipe to_parent, to_child;
};
void ready(Sync& s) {
  char b = 'r';
  [[maybe_unused]] ssize_t n = ::write(s.to_parent.write.get(), &b, 1);
}
bool wait_byte(const UniqueFd& fd) {
  pollfd p{fd.get(), POLLIN, 0};
  char b;
  return ::poll(&p, 1, 20000) == 1 && ::read(fd.get(), &b, 1) == 1;
}

ChildResult run_child(const std::function<int(Sync&)>& body,
                      const std::function<void(pid_t, Sync&)>& parent = {}) {
  Pipe err;
  Sync s;
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork");
  if (pid == 0) {
    ::dup2(err.write.get(), STDERR_FILENO);
    ::alarm(30);
    int code = 1;
    try {
      code = body(s);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: exception: %s\n", e.what());
      code = 2;
    }
    std::fflush(nullptr);
    ::_exit(code);
  }
  err.write.reset();
  s.to_parent.write.reset();
  s.to_child.read.reset();
  if (parent) parent(pid, s);
  s.to_child.write.reset();
  ChildResult r;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(err.read.get(), buf, sizeof(buf))) > 0) {
    r.out.append(buf, static_cast<size_t>(n));
  }
  ::waitpid(pid, &r.status, 0);
  return r;
}

// In the child: a failed check is a line on stderr and a non-zero exit in the end.
struct Checks {
  int failures = 0;
  void operator()(bool ok, const std::string& what) {
    if (ok) return;
    ++failures;
    std::fprintf(stderr, "FAILED: %s (errno %s)\n", what.c_str(), std::strerror(errno));
  }
};

std::string ns_link(const std::string& proc, const char* ns) {
  std::error_code ec;
  return fs::read_symlink(proc + "/ns/" + ns, ec).string();
}

std::string status_field(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
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

TEST_F(JailDir, EnteredInAChildEverythingIsConfined) {
  if (::geteuid() != 0) GTEST_SKIP() << "entering the jail needs root";
  ASSERT_TRUE(own_dir());
  struct stat dir_st {};
  ASSERT_EQ(::stat(dir_.c_str(), &dir_st), 0);
  const std::string host_file =
      (dir_.parent_path() / ("pier-jail-host-" + std::to_string(::getpid()))).string();
  std::ofstream(host_file) << "host";

  // A TCP listener bound before the jail (as a tcp= port is): its port, for the parent.
  const UniqueFd tcp_fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(tcp_fd);
  const int tcp = tcp_fd.get();
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(tcp, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(tcp, 4), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::getsockname(tcp, reinterpret_cast<sockaddr*>(&addr), &len), 0);

  const Config cfg = config();
  const ChildResult r = run_child(
      [&](Sync& s) {
        Checks check;
        Jail jail(cfg);
        MachineConfig machine;
        machine.api_socket = dir_.string() + "/api.sock";
        jail.prepare(machine);
        check(machine.api_socket == "api.sock", "api socket rewritten: " + machine.api_socket);
        check(fs::current_path() == fs::canonical(dir_), "working directory is DIR");
        // A socket made by name before the jail, as pier's listeners are.
        const UniqueFd unix_sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        const int unix_fd = unix_sock.get();
        sockaddr_un un{};
        un.sun_family = AF_UNIX;
        std::strcpy(un.sun_path, "pre.sock");
        check(::bind(unix_fd, reinterpret_cast<sockaddr*>(&un), sizeof(un)) == 0, "bind pre.sock");
        check(::listen(unix_fd, 4) == 0, "listen pre.sock");

        jail.enter(300);

        // Credentials.
        uid_t ru, eu, su;
        gid_t rg, eg, sg;
        ::getresuid(&ru, &eu, &su);
        ::getresgid(&rg, &eg, &sg);
        check(ru == kUid && eu == kUid && su == kUid, "uids dropped");
        check(rg == kGid && eg == kGid && sg == kGid, "gids dropped");
        check(::getgroups(0, nullptr) == 0, "no supplementary groups");
        check(::setresuid(0, 0, 0) != 0 && errno == EPERM, "root cannot be regained");
        __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
        __user_cap_data_struct caps[2]{};
        check(::syscall(SYS_capget, &hdr, caps) == 0, "capget");
        check(caps[0].effective == 0 && caps[0].permitted == 0 && caps[1].effective == 0 &&
                  caps[1].permitted == 0,
              "no capabilities");
        check(::prctl(PR_CAPBSET_READ, 0, 0, 0, 0) == 0, "empty bounding set");
        check(::prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "no_new_privs");
        check(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0, "not dumpable");

        // Limits.
        rlimit lim{};
        ::getrlimit(RLIMIT_NOFILE, &lim);
        check(lim.rlim_cur == 300 && lim.rlim_max == 300, "RLIMIT_NOFILE 300");
        ::getrlimit(RLIMIT_FSIZE, &lim);
        check(lim.rlim_cur == (1 << 20) && lim.rlim_max == (1 << 20), "RLIMIT_FSIZE 1 MiB");
        ::getrlimit(RLIMIT_CORE, &lim);
        check(lim.rlim_cur == 0 && lim.rlim_max == 0, "RLIMIT_CORE 0");
        lim = {1000, 1000};
        check(::setrlimit(RLIMIT_NOFILE, &lim) != 0, "RLIMIT_NOFILE cannot be raised");

        // The root is DIR: same directory, our socket in it, nothing of the host.
        struct stat root_st {};
        check(::stat("/", &root_st) == 0 && root_st.st_ino == dir_st.st_ino &&
                  root_st.st_dev == dir_st.st_dev,
              "/ is DIR");
        struct stat sock_st {};
        check(::lstat("/pre.sock", &sock_st) == 0 && S_ISSOCK(sock_st.st_mode), "/pre.sock");
        check(::open("/etc/passwd", O_RDONLY) < 0 && errno == ENOENT, "/etc/passwd is gone");
        check(::open(host_file.c_str(), O_RDONLY) < 0, "a host file is out of reach");
        check(::open("/proc/self/status", O_RDONLY) < 0, "no /proc");
        check(::open("../../etc/passwd", O_RDONLY) < 0, "no way up");
        check(::mkdir("/mnt", 0700) == 0 && ::mount("none", "/mnt", "tmpfs", 0, nullptr) != 0,
              "mount refused");
        check(::chroot("/mnt") != 0, "chroot refused");

        // RLIMIT_FSIZE: writing past 1 MiB fails with EFBIG (SIGXFSZ ignored), no signal.
        const UniqueFd big(::open("/big", O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
        const int f = big.get();
        std::vector<char> mib(1 << 20, 'x');
        check(f >= 0 && ::write(f, mib.data(), mib.size()) == static_cast<ssize_t>(mib.size()),
              "write 1 MiB");
        check(::write(f, "y", 1) < 0 && errno == EFBIG, "the next byte fails with EFBIG");

        // The network namespace has only its (down) loopback: nothing of the host's.
        struct if_nameindex* ifs = ::if_nameindex();
        int count = 0;
        bool lo = false;
        for (struct if_nameindex* i = ifs; i != nullptr && i->if_index != 0; ++i) {
          ++count;
          lo |= std::strcmp(i->if_name, "lo") == 0;
        }
        if (ifs) ::if_freenameindex(ifs);
        check(count == 1 && lo, "only lo in the network namespace");
        const UniqueFd out(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        check(::connect(out.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0,
              "the host's loopback is unreachable");

        // A socket made before the jail still serves: the parent connects to both.
        ready(s);
        const UniqueFd a(::accept4(tcp, nullptr, nullptr, SOCK_CLOEXEC));
        check(a.valid(), "accept on the tcp listener made before the jail");
        const UniqueFd b(::accept4(unix_fd, nullptr, nullptr, SOCK_CLOEXEC));
        check(b.valid(), "accept on the unix listener made before the jail");
        // Sockets made now go into DIR, and names in it can be removed.
        const UniqueFd late_sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        const int late = late_sock.get();
        std::strcpy(un.sun_path, "late.sock");
        check(::bind(late, reinterpret_cast<sockaddr*>(&un), sizeof(un)) == 0, "bind late.sock");
        check(::unlink("pre.sock") == 0, "unlink pre.sock by its name");

        // seal(): no thread or process any more.
        jail.seal();
        ::getrlimit(RLIMIT_NPROC, &lim);
        check(lim.rlim_cur == 0 && lim.rlim_max == 0, "RLIMIT_NPROC 0");
        const pid_t child = ::fork();
        if (child == 0) ::_exit(0);
        check(child < 0 && errno == EAGAIN, "fork refused");
        bool thread_refused = false;
        try {
          std::thread t([] {});
          t.join();
        } catch (const std::system_error&) {
          thread_refused = true;
        }
        check(thread_refused, "thread creation refused");
        ready(s);  // the parent looks at /proc/PID now
        wait_byte(s.to_child.read);
        return check.failures == 0 ? 0 : 1;
      },
      [&](pid_t pid, Sync& s) {
        ASSERT_TRUE(wait_byte(s.to_parent.read)) << "the child never got into the jail";
        const UniqueFd c(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        EXPECT_EQ(::connect(c.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0)
            << std::strerror(errno);
        const UniqueFd u(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_un un{};
        un.sun_family = AF_UNIX;
        const std::string path = (dir_ / "pre.sock").string();
        std::strcpy(un.sun_path, path.c_str());
        EXPECT_EQ(::connect(u.get(), reinterpret_cast<const sockaddr*>(&un), sizeof(un)), 0)
            << std::strerror(errno);
        EXPECT_TRUE(wait_byte(s.to_parent.read));
        // From outside: the child's credentials, namespaces and root.
        const std::string proc = "/proc/" + std::to_string(pid);
        EXPECT_EQ(status_field(pid, "Uid"), "43210\t43210\t43210\t43210");
        EXPECT_EQ(status_field(pid, "Gid"), "43211\t43211\t43211\t43211");
        EXPECT_EQ(status_field(pid, "NoNewPrivs"), "1");
        EXPECT_EQ(status_field(pid, "CapEff"), "0000000000000000");
        EXPECT_EQ(status_field(pid, "CapBnd"), "0000000000000000");
        for (const char* ns : {"mnt", "net", "ipc", "uts", "cgroup"}) {
          EXPECT_NE(ns_link(proc, ns), ns_link("/proc/self", ns)) << ns;
          EXPECT_NE(ns_link(proc, ns), "") << ns;
        }
        EXPECT_EQ(ns_link(proc, "pid"), ns_link("/proc/self", "pid"));  // no PID namespace
        struct stat root_st {};
        EXPECT_EQ(::stat((proc + "/root/").c_str(), &root_st), 0);
        EXPECT_EQ(root_st.st_ino, dir_st.st_ino);
        EXPECT_FALSE(fs::exists(proc + "/root/etc"));
        char b = 'g';
        [[maybe_unused]] ssize_t n = ::write(s.to_child.write.get(), &b, 1);
      });
  EXPECT_TRUE(r.ok()) << r.out;
  EXPECT_EQ(r.out.find("FAILED"), std::string::npos) << r.out;
  // What the child did in DIR is visible here, and nothing was mounted on the host.
  EXPECT_FALSE(fs::exists(dir_ / "pre.sock"));
  EXPECT_TRUE(fs::exists(dir_ / "late.sock"));
  EXPECT_EQ(fs::file_size(dir_ / "big"), 1u << 20);
  std::ifstream mountinfo("/proc/self/mountinfo");
  std::stringstream all;
  all << mountinfo.rdbuf();
  EXPECT_EQ(all.str().find(fs::canonical(dir_).string()), std::string::npos) << all.str();
  fs::remove(host_file);
}

TEST_F(JailDir, PrepareRewritesPathsAndMovesIntoTheJailDirectory) {
  if (::geteuid() != 0) GTEST_SKIP() << "a Jail needs root";
  ASSERT_TRUE(own_dir());
  const Config cfg = config();
  const std::string cwd = fs::current_path().string();
  const std::string dir = fs::canonical(dir_).string();
  const ChildResult r = run_child([&](Sync&) {
    Checks check;
    Jail jail(cfg);
    MachineConfig m;
    m.kernel_path = "guest/vmlinuz";
    m.initrd_path = "/boot/initrd";
    m.kvm_device = "/dev/kvm";
    m.dump_dtb = "out.dtb";
    m.serial = "file=serial.log";
    m.api_socket = "api.sock";
    m.ports = {{"", "socket=" + dir + "/console.sock", true},
               {"org.pier.a", "socket=a.sock,client,reconnect=2", false},
               {"org.pier.f", "file=port.log", false},
               {"org.pier.t", "tcp=0", false},
               {"org.pier.p", "pty", false}};
    jail.prepare(m);
    check(m.kernel_path == cwd + "/guest/vmlinuz", "kernel: " + m.kernel_path);
    check(m.initrd_path == "/boot/initrd", "initrd: " + m.initrd_path);
    check(m.kvm_device == "/dev/kvm", "kvm: " + m.kvm_device);
    check(m.dump_dtb == cwd + "/out.dtb", "dtb: " + m.dump_dtb);
    check(m.serial == "file=" + cwd + "/serial.log", "serial: " + m.serial);
    check(m.api_socket == "api.sock", "api: " + m.api_socket);
    check(m.ports[0].backend == "socket=console.sock", "console: " + m.ports[0].backend);
    check(m.ports[1].backend == "socket=a.sock,client,reconnect=2.000", "a: " + m.ports[1].backend);
    check(m.ports[2].backend == "file=" + cwd + "/port.log", "f: " + m.ports[2].backend);
    check(m.ports[3].backend == "tcp=0", "t: " + m.ports[3].backend);
    check(m.ports[4].backend == "pty", "p: " + m.ports[4].backend);
    check(fs::current_path().string() == dir, "cwd: " + fs::current_path().string());
    // A socket outside DIR stops it before anything is opened.
    MachineConfig bad;
    bad.ports = {{"", "socket=/tmp/elsewhere.sock", true}};
    bool refused = false;
    try {
      jail.prepare(bad);
    } catch (const Error& e) {
      refused = std::string(e.what()).find("outside the jail directory") != std::string::npos;
    }
    check(refused, "a console socket outside DIR is refused");
    return check.failures == 0 ? 0 : 1;
  });
  EXPECT_TRUE(r.ok()) << r.out;
}

TEST_F(JailDir, RefusedOnceTheProcessHasASecondThread) {
  if (::geteuid() != 0) GTEST_SKIP() << "entering the jail needs root";
  ASSERT_TRUE(own_dir());
  const Config cfg = config();
  const ChildResult r = run_child([&](Sync&) {
    Jail jail(cfg);
    std::thread t([] { std::this_thread::sleep_for(std::chrono::seconds(2)); });
    t.detach();
    try {
      jail.enter(300);
    } catch (const Error& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return std::string(e.what()).find("2 threads") != std::string::npos ? 0 : 3;
    }
    return 4;
  });
  EXPECT_TRUE(r.ok()) << r.out;
}

}  // namespace
}  // namespace pier::jail
