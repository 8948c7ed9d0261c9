// seccomp filters (vmm/seccomp.hpp): each test forks a child that loads a thread class's filter
// and then does what that class does at run time (allowed: the child exits 0 after reporting each
// step) or one thing it must not (the child dies by SIGSYS and the trap handler's message names
// the call). A child that gets past a forbidden call exits with kGotPast, so a filter that allows
// too much fails the test instead of passing it.
#include "vmm/seccomp.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/kvm.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "devices/chardev/port_backend.hpp"
#include "unit/api/fake_target.hpp"
#include "unit/devices/port_test_util.hpp"
#include "vmm/api/server.hpp"
#include "vmm/error.hpp"
#include "vmm/event_loop.hpp"
#include "vmm/fd.hpp"
#include "vmm/log.hpp"

namespace pier::seccomp {
namespace {

using namespace std::chrono_literals;
using chardev::port_test::unix_connect;

constexpr int kGotPast = 42;  // a child that survived a call its filter must forbid

struct ChildResult {
  int status = 0;
  std::string err;  // the child's stderr
  bool killed_by(int sig) const { return WIFSIGNALED(status) && WTERMSIG(status) == sig; }
  bool exited_ok() const { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }
  std::string describe() const {
    std::string s = WIFEXITED(status)     ? "exit " + std::to_string(WEXITSTATUS(status))
                    : WIFSIGNALED(status) ? "signal " + std::to_string(WTERMSIG(status))
                                          : "status " + std::to_string(status);
    return s + "; stderr:\n" + err;
  }
};

// Runs `body` in a forked child with stderr captured; its return value is the exit code. The
// child is killed by SIGALRM after 30 s (a hang is a failure, not a stuck suite).
ChildResult run_child(const std::function<int()>& body) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2");
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork");
  if (pid == 0) {
    ::dup2(pipe_fds[1], STDERR_FILENO);
    ::close(pipe_fds[0]);
    ::alarm(30);
    int code = 1;
    try {
      code = body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: exception: %s\n", e.what());
      code = 2;
    }
    ::_exit(code);
  }
  ::close(pipe_fds[1]);
  ChildResult r;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(pipe_fds[0], buf, sizeof(buf))) > 0) r.err.append(buf, static_cast<size_t>(n));
  ::close(pipe_fds[0]);
  ::waitpid(pid, &r.status, 0);
  return r;
}

// Reported on stderr so a failure shows how far the child got.
void step(const char* what) {
  std::string line = std::string("step: ") + what + "\n";
  [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
}

void load(ThreadClass c, Mode mode = Mode::kOn) {
  Filter filter(c, mode);
  if (mode == Mode::kOn) install_trap_handler();
  filter.install();
  step("filter loaded");
}

// The calling thread's seccomp state from /proc (read while it is unfiltered or io).
std::string status_field(const std::string& status_path, const std::string& key) {
  std::ifstream in(status_path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      std::string value = line.substr(key.size() + 1);
      value.erase(0, value.find_first_not_of(" \t"));
      return value;
    }
  }
  return "";
}

// A forbidden call must kill the child by SIGSYS, after the filter was loaded, with a message
// naming the call.
void expect_killed_for(const ChildResult& r, const std::string& thread_class,
                       const std::string& syscall_name) {
  EXPECT_TRUE(r.killed_by(SIGSYS)) << r.describe();
  EXPECT_NE(r.err.find("step: filter loaded"), std::string::npos) << r.describe();
  const std::string message = "pier: seccomp: thread " + thread_class +
                              " made forbidden system call " + syscall_name + " (";
  EXPECT_NE(r.err.find(message), std::string::npos) << "expected '" << message << "' in\n"
                                                    << r.describe();
  EXPECT_NE(r.err.find("--seccomp off"), std::string::npos) << r.describe();
}

// ---------------------------------------------------------------------------------------------
// Modes and the lists themselves.

TEST(Seccomp, ParseMode) {
  EXPECT_EQ(parse_mode("on"), Mode::kOn);
  EXPECT_EQ(parse_mode("off"), Mode::kOff);
  EXPECT_EQ(parse_mode("log"), Mode::kLog);
  EXPECT_THROW(parse_mode("yes"), Error);
  EXPECT_THROW(parse_mode(""), Error);
  EXPECT_EQ(to_string(Mode::kLog), "log");
  EXPECT_EQ(to_string(ThreadClass::kVcpu), "vcpu");
}

TEST(Seccomp, ClassesDifferWhereTheyShould) {
  auto has = [](ThreadClass c, const std::string& name) {
    const auto names = allowed_syscalls(c);
    return std::find(names.begin(), names.end(), name) != names.end();
  };
  for (const char* both : {"ioctl", "write", "futex", "exit", "exit_group", "rt_sigreturn"}) {
    EXPECT_TRUE(has(ThreadClass::kVcpu, both)) << both;
    EXPECT_TRUE(has(ThreadClass::kIo, both)) << both;
  }
  for (const char* io_only : {"epoll_wait", "read", "accept4", "socket", "openat", "unlink"}) {
    EXPECT_FALSE(has(ThreadClass::kVcpu, io_only)) << io_only;
    EXPECT_TRUE(has(ThreadClass::kIo, io_only)) << io_only;
  }
  for (const char* never : {"execve", "execveat", "clone", "clone3", "fork", "ptrace", "kill",
                            "process_vm_writev", "open_by_handle_at", "init_module", "bpf", "prctl",
                            "seccomp", "setuid", "mount", "chmod"}) {
    EXPECT_FALSE(has(ThreadClass::kVcpu, never)) << never;
    EXPECT_FALSE(has(ThreadClass::kIo, never)) << never;
  }
}

TEST(Seccomp, OffBuildsNothing) {
  Filter filter(ThreadClass::kVcpu, Mode::kOff);
  EXPECT_TRUE(filter.empty());
  const ChildResult r = run_child([] {
    Filter(ThreadClass::kVcpu, Mode::kOff).install();
    step("filter loaded");
    // Without a filter, the calls the forbidden-call tests use work.
    UniqueFd fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!fd) return 3;
    return status_field("/proc/thread-self/status", "Seccomp") == "0" ? 0 : 4;
  });
  EXPECT_TRUE(r.exited_ok()) << r.describe();
}

// ---------------------------------------------------------------------------------------------
// vCPU threads. The filter is loaded by a thread the child starts, as Machine does, so that the
// thread's own exit (stack release, exit) runs under it.

// Runs `work` on a thread that loads the vcpu filter first; returns work's result, or 99 when
// the thread could not be joined.
int on_vcpu_thread(const std::function<int()>& work, Mode mode = Mode::kOn) {
  Filter filter(ThreadClass::kVcpu, mode);
  if (mode == Mode::kOn) install_trap_handler();
  int result = 99;
  std::thread t([&, f = std::move(filter)]() mutable {
    f.install();
    step("filter loaded");
    result = work();
  });
  t.join();
  return result;
}

TEST(SeccompVcpu, WhatAVcpuThreadDoesIsAllowed) {
  const ChildResult r = run_child([] {
    // Made before the filter, as the machine makes them at set-up.
    UniqueFd eventfd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
    UniqueFd watched(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    struct sigaction kick {};
    kick.sa_handler = [](int) {};
    ::sigaction(SIGUSR1, &kick, nullptr);
    std::mutex m;
    std::condition_variable cv;
    bool checked = false, filtered = false;
    pid_t tid = 0;
    std::string seccomp_state;

    std::thread checker([&] {
      // Unfiltered: reads the vCPU thread's seccomp state while it waits (a futex wait).
      std::unique_lock lock(m);
      cv.wait(lock, [&] { return filtered; });
      const std::string path = "/proc/self/task/" + std::to_string(tid) + "/status";
      seccomp_state = status_field(path, "Seccomp") + "/" + status_field(path, "NoNewPrivs");
      checked = true;
      cv.notify_all();
    });
    const int result = on_vcpu_thread([&]() -> int {
      {
        std::unique_lock lock(m);
        tid = static_cast<pid_t>(::syscall(SYS_gettid));
        filtered = true;
        cv.notify_all();
        cv.wait(lock, [&] { return checked; });
      }
      step("futex wait and wake");
      // KVM_RUN and the run-time KVM ioctls pass the filter (a bad fd: EBADF, not SIGSYS).
      for (unsigned long request :
           {static_cast<unsigned long>(KVM_RUN), static_cast<unsigned long>(KVM_IRQ_LINE),
            static_cast<unsigned long>(KVM_IOEVENTFD), static_cast<unsigned long>(KVM_IRQFD),
            static_cast<unsigned long>(KVM_GET_REGS), static_cast<unsigned long>(KVM_GET_SREGS),
            static_cast<unsigned long>(KVM_GET_MP_STATE), 0x4008ae6aul /* SET_GSI_ROUTING */}) {
        errno = 0;
        if (::ioctl(-1, request, nullptr) != -1 || errno != EBADF) return 10;
      }
      step("KVM ioctls");
      const uint64_t one = 1;
      if (::write(eventfd.get(), &one, sizeof(one)) != sizeof(one)) return 11;  // irqfd, wake-up
      step("eventfd write");
      epoll_event ev{};
      ev.events = EPOLLOUT;
      if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, watched.get(), &ev) != 0) return 12;
      if (::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, watched.get(), nullptr) != 0) return 12;
      step("epoll_ctl");
      // A kick: pthread_kill of a thread of this process with the kick signal.
      if (::pthread_kill(::pthread_self(), SIGUSR1) != 0) return 13;
      step("kick signal");
      // Logging (stderr, clocks) and allocation, small and large (mmap, munmap).
      log::warn("a log line from a filtered vCPU thread");
      std::vector<char> big(8 << 20, 'x');
      std::string s(1000, 'y');
      if (big[12345] != 'x' || s.size() != 1000) return 14;
      big.clear();
      big.shrink_to_fit();
      void* anon =
          ::mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (anon == MAP_FAILED || ::munmap(anon, 1 << 20) != 0) return 15;
      step("memory");
      // An exception thrown and caught (the exit handlers' error paths).
      try {
        throw Error("thrown under the filter");
      } catch (const Error&) {
      }
      step("exception");
      const auto t0 = std::chrono::steady_clock::now();
      std::this_thread::sleep_for(1ms);
      if (std::chrono::steady_clock::now() - t0 < 1ms) return 16;
      step("clock and sleep");
      return 0;
    });
    checker.join();
    step("vcpu thread exited and was joined");
    if (seccomp_state != "2/1") {
      std::fprintf(stderr, "vCPU thread's Seccomp/NoNewPrivs: '%s'\n", seccomp_state.c_str());
      return 20;
    }
    // The filter was the thread's own: this thread is unfiltered.
    if (status_field("/proc/thread-self/status", "Seccomp") != "0") return 21;
    return result;
  });
  EXPECT_TRUE(r.exited_ok()) << r.describe();
  EXPECT_NE(r.err.find("a log line from a filtered vCPU thread"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("step: vcpu thread exited and was joined"), std::string::npos) << r.err;
}

TEST(SeccompVcpu, OpenatKills) {
  const ChildResult r = run_child([] {
    return on_vcpu_thread([] {
      UniqueFd fd(::open("/etc/shadow", O_RDONLY | O_CLOEXEC));
      return kGotPast;
    });
  });
  expect_killed_for(r, "vcpu", "openat");
}

TEST(SeccompVcpu, AnIoctlThatIsNotAVcpuOneKills) {
  // KVM_SET_USER_MEMORY_REGION would let a vCPU thread remap guest memory.
  const ChildResult r = run_child([] {
    return on_vcpu_thread([] {
      errno = 0;
      if (::ioctl(-1, KVM_RUN, 0) != -1 || errno != EBADF) return 10;
      step("KVM_RUN passed");
      ::ioctl(-1, KVM_SET_USER_MEMORY_REGION, nullptr);
      return kGotPast;
    });
  });
  expect_killed_for(r, "vcpu", "ioctl");
  EXPECT_NE(r.err.find("step: KVM_RUN passed"), std::string::npos) << r.describe();
  EXPECT_NE(r.err.find("0x4020ae46"), std::string::npos) << "the request number is named\n"
                                                         << r.describe();
}

TEST(SeccompVcpu, TerminalIoctlKills) {
  const ChildResult r = run_child([] {
    return on_vcpu_thread([] {
      termios t{};
      ::ioctl(STDERR_FILENO, TCGETS, &t);
      return kGotPast;
    });
  });
  expect_killed_for(r, "vcpu", "ioctl");
}

TEST(SeccompVcpu, ExecutableMemoryKills) {
  const ChildResult r = run_child([] {
    return on_vcpu_thread([] {
      ::mmap(nullptr, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      return kGotPast;
    });
  });
  expect_killed_for(r, "vcpu", "mmap");
}

TEST(SeccompVcpu, SignalsOnlyToItsOwnProcessAndOnlyTheOnesPierUses) {
  const ChildResult r = run_child([] {
    return on_vcpu_thread([] {
      ::syscall(SYS_tgkill, ::getpid(), ::syscall(SYS_gettid), SIGUSR2);
      return kGotPast;
    });
  });
  expect_killed_for(r, "vcpu", "tgkill");
  const ChildResult other = run_child([] {
    const pid_t parent = ::getppid();
    return on_vcpu_thread([parent] {
      // The kick signal, but to another process (tid -1: were it allowed, the kernel would
      // refuse it with EINVAL and signal nobody).
      ::syscall(SYS_tgkill, parent, -1, SIGUSR1);
      return kGotPast;
    });
  });
  expect_killed_for(other, "vcpu", "tgkill");
}

TEST(SeccompVcpu, LogModeAllowsAndOnlyLogs) {
  const ChildResult r = run_child([] {
    return on_vcpu_thread(
        [] {
          UniqueFd fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
          return fd ? 0 : 3;
        },
        Mode::kLog);
  });
  EXPECT_TRUE(r.exited_ok()) << r.describe();
  EXPECT_NE(r.err.find("step: filter loaded"), std::string::npos) << r.describe();
}

// ---------------------------------------------------------------------------------------------
// The I/O thread: the loop, port backends started at run time (as port-add does), the API
// server, and the process's exit, all under the io filter.

class Recorder : public chardev::PortBackend::Listener {
 public:
  void on_host_connected(bool connected) override { connected_ = connected; }
  void on_readable() override { readable_ = true; }
  void on_writable() override {}
  bool connected_ = false;
  bool readable_ = false;
};

std::string temp_dir() {
  std::string dir = "/tmp/pier-seccomp-XXXXXX";
  if (::mkdtemp(dir.data()) == nullptr) throw std::runtime_error("mkdtemp");
  return dir;
}

TEST(SeccompIo, WhatTheIoThreadDoesIsAllowed) {
  const std::string dir = temp_dir();
  const ChildResult r = run_child([&]() -> int {
    EventLoop loop;  // made at set-up, before the filter
    load(ThreadClass::kIo);
    // Filtered, with no_new_privs.
    if (status_field("/proc/thread-self/status", "Seccomp") != "2") return 3;
    if (status_field("/proc/thread-self/status", "NoNewPrivs") != "1") return 3;
    auto run_until = [&](const std::function<bool()>& done) {
      return loop.run_until(done, std::chrono::steady_clock::now() + 5s);
    };
    auto start = [&](const std::string& spec, Recorder& rec) {
      auto backend = chardev::make_port_backend(chardev::parse_port_backend(spec), {"t", {}});
      backend->start(loop, rec);
      step(("started " + spec + " at " + backend->address()).c_str());
      return backend;
    };

    // A listening unix socket port with a client: bytes both ways.
    Recorder unix_rec;
    auto unix_port = start("socket=" + dir + "/port.sock", unix_rec);
    UniqueFd client = unix_connect(dir + "/port.sock");
    if (!client) return 10;
    if (!run_until([&] { return unix_rec.connected_; })) return 11;
    unix_port->want_input(true);
    if (::write(client.get(), "ping", 4) != 4) return 12;
    if (!run_until([&] { return unix_rec.readable_; })) return 13;
    char buf[16];
    iovec in{buf, sizeof(buf)};
    if (unix_port->readv(std::span(&in, 1)) != 4) return 14;
    iovec out{const_cast<char*>("pong"), 4};
    if (unix_port->writev(std::span(&out, 1)) != 4) return 15;
    if (::read(client.get(), buf, sizeof(buf)) != 4) return 16;
    step("unix socket port: connected, read, written");

    // A client port connecting out to it (socket=PATH,client), after the first client left.
    client.reset();
    if (!run_until([&] { return !unix_rec.connected_; })) return 17;
    Recorder client_rec;
    auto client_port = start("socket=" + dir + "/port.sock,client", client_rec);
    // (A client port connected at start reports it through host_connected(), not the listener.)
    if (!run_until([&] { return unix_rec.connected_ && client_port->host_connected(); })) {
      return 18;
    }
    step("unix client port connected");

    // TCP ports: an IPv4 loopback listener and one resolved by name (getaddrinfo).
    Recorder tcp_rec, named_rec;
    auto tcp_port = start("tcp=0", tcp_rec);
    auto named_port = start("tcp=localhost:0", named_rec);
    {
      UniqueFd tcp_client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      const std::string address = tcp_port->address();
      a.sin_port = htons(static_cast<uint16_t>(std::stoi(address.substr(address.rfind(':') + 1))));
      if (::connect(tcp_client.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return 20;
      if (!run_until([&] { return tcp_rec.connected_; })) return 21;
    }
    step("tcp port connected");

    // A pty port: the slave opened by someone, made raw, its size read.
    Recorder pty_rec;
    auto pty_port = start("pty", pty_rec);
    {
      UniqueFd slave(::open(pty_port->address().c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC));
      if (!slave) return 30;
      if (!::isatty(slave.get())) return 31;
      winsize ws{};
      if (::ioctl(slave.get(), TIOCGWINSZ, &ws) != 0) return 32;
      pty_port->terminal_size();
    }
    step("pty port");
    pty_port->stop();
    named_port->stop();
    tcp_port->stop();
    client_port->stop();
    unix_port->stop();
    if (std::filesystem::exists(dir + "/port.sock")) return 40;  // removed at stop
    step("ports stopped");
    return 0;
  });
  EXPECT_TRUE(r.exited_ok()) << r.describe();
  for (const char* s :
       {"step: unix socket port: connected, read, written", "step: unix client port connected",
        "step: tcp port connected", "step: pty port", "step: ports stopped"}) {
    EXPECT_NE(r.err.find(s), std::string::npos) << s << "\n" << r.describe();
  }
  std::filesystem::remove_all(dir);
}

TEST(SeccompIo, PortsApiServerAndExitRunUnderTheFilter) {
  const std::string dir = temp_dir();
  const ChildResult r = run_child([&]() -> int {
    EventLoop loop;
    leak_check_before_filters();  // as pier does: ASan's exit-time check cannot run filtered
    load(ThreadClass::kIo);
    auto run_until = [&](const std::function<bool()>& done) {
      return loop.run_until(done, std::chrono::steady_clock::now() + 5s);
    };
    // pty and file ports, a stdio-like terminal query, rng bytes, /proc at exit.
    Recorder pty_rec, file_rec;
    auto pty_port = chardev::make_port_backend(chardev::parse_port_backend("pty"), {"t", {}});
    pty_port->start(loop, pty_rec);
    {
      UniqueFd slave(::open(pty_port->address().c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC));
      if (!slave) return 10;
      if (!run_until([&] { return pty_rec.connected_; })) return 11;
      termios t{};
      if (::tcgetattr(slave.get(), &t) != 0 || ::tcsetattr(slave.get(), TCSANOW, &t) != 0) {
        return 12;
      }
      pty_port->terminal_size();
    }
    step("pty port");
    auto file_port = chardev::make_port_backend(
        chardev::parse_port_backend("file=" + dir + "/out.log"), {"t", {}});
    file_port->start(loop, file_rec);
    iovec out{const_cast<char*>("guest output\n"), 13};
    if (file_port->writev(std::span(&out, 1)) != 13) return 13;
    step("file port");
    uint8_t random[16];
    if (::getrandom(random, sizeof(random), GRND_NONBLOCK) != sizeof(random)) return 14;
    std::ifstream status("/proc/self/status");
    std::string first;
    if (!std::getline(status, first)) return 15;
    step("getrandom, /proc/self/status");

    // The API server: started, a client's request answered, shut down with a final event.
    api::testing::FakeTarget target;
    api::Server server(loop, dir + "/api.sock", target);
    server.start();
    UniqueFd api = unix_connect(dir + "/api.sock");
    if (!api) return 20;
    const std::string request = "{\"cmd\":\"ports\"}\n";
    if (::write(api.get(), request.data(), request.size()) !=
        static_cast<ssize_t>(request.size())) {
      return 21;
    }
    std::string response;
    run_until([&] {
      pollfd p{api.get(), POLLIN, 0};
      if (::poll(&p, 1, 0) == 1) {
        char buf[512];
        const ssize_t n = ::read(api.get(), buf, sizeof(buf));
        if (n > 0) response.append(buf, static_cast<size_t>(n));
      }
      return response.find('\n') != std::string::npos;
    });
    if (response.find("\"ok\":true") == std::string::npos) return 22;
    server.shutdown({{"event", "vm-stopped"}}, 100);
    step("api server");
    pty_port->stop();
    file_port->stop();
    step("stopped; exiting through exit()");
    // The process's own exit: atexit handlers, stdio flush, exit_group.
    std::exit(0);
  });
  EXPECT_TRUE(r.exited_ok()) << r.describe();
  EXPECT_NE(r.err.find("step: stopped; exiting through exit()"), std::string::npos) << r.describe();
  std::ifstream log(dir + "/out.log");
  std::string line;
  EXPECT_TRUE(std::getline(log, line) && line == "guest output") << line;
  std::filesystem::remove_all(dir);
}

TEST(SeccompIo, ExecveKills) {
  const ChildResult r = run_child([] {
    load(ThreadClass::kIo);
    char* argv[] = {const_cast<char*>("/bin/true"), nullptr};
    ::execve("/bin/true", argv, environ);
    return kGotPast;
  });
  expect_killed_for(r, "io", "execve");
}

TEST(SeccompIo, ThreadCreationKills) {
  // A thread started after the filter would run without its class's filter: forbidden. (One
  // thread is started first, as pier starts its vCPU threads before the I/O thread's filter, so
  // the C library's one-time set-up for threads is done.)
  const ChildResult r = run_child([] {
    std::thread([] {}).join();
    load(ThreadClass::kIo);
    std::thread([] {}).join();
    return kGotPast;
  });
  EXPECT_TRUE(r.killed_by(SIGSYS)) << r.describe();
  EXPECT_NE(r.err.find("step: filter loaded"), std::string::npos) << r.describe();
  // glibc blocks every signal around clone, so the kernel kills without running the handler
  // (no message); if a message comes, it names clone/clone3.
  const size_t message = r.err.find("pier: seccomp:");
  if (message != std::string::npos) {
    EXPECT_NE(r.err.find("forbidden system call clone", message), std::string::npos)
        << r.describe();
  }
}

TEST(SeccompIo, OnlyUnixAndTcpSocketsAreAllowed) {
  const ChildResult r = run_child([] {
    load(ThreadClass::kIo);
    UniqueFd ok(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    UniqueFd ok6(::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!ok) return 3;
    step("AF_UNIX and AF_INET6 sockets");
    ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, 0);
    return kGotPast;
  });
  expect_killed_for(r, "io", "socket");
  EXPECT_NE(r.err.find("step: AF_UNIX and AF_INET6 sockets"), std::string::npos) << r.describe();
}

TEST(SeccompIo, VcpuIoctlsAreNotTheIoThreads) {
  const ChildResult r = run_child([] {
    load(ThreadClass::kIo);
    errno = 0;
    if (::ioctl(-1, KVM_IRQ_LINE, nullptr) != -1 || errno != EBADF) return 3;
    if (::ioctl(-1, FIONREAD, nullptr) != -1 || errno != EBADF) return 3;
    step("KVM_IRQ_LINE and FIONREAD passed");
    ::ioctl(-1, KVM_RUN, 0);
    return kGotPast;
  });
  expect_killed_for(r, "io", "ioctl");
  EXPECT_NE(r.err.find("step: KVM_IRQ_LINE and FIONREAD passed"), std::string::npos)
      << r.describe();
  EXPECT_NE(r.err.find("0xae80"), std::string::npos) << r.describe();
}

TEST(SeccompIo, PtraceKills) {
  const ChildResult r = run_child([] {
    load(ThreadClass::kIo);
    ::syscall(SYS_ptrace, 0 /* PTRACE_TRACEME */, 0, 0, 0);
    return kGotPast;
  });
  expect_killed_for(r, "io", "ptrace");
}

}  // namespace
}  // namespace pier::seccomp
