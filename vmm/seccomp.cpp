#include "vmm/seccomp.hpp"

#include <asm/unistd.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/kvm.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <termios.h>
#include <ucontext.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <mutex>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

#include "vmm/error.hpp"
#include "vmm/kvm_abi.hpp"

namespace pier::seccomp {
namespace {

// The signal Machine kicks vCPU threads with (machine.cpp's kKickSignal).
constexpr int kKickSignal = SIGUSR1;

// KVM ioctl numbers, checked against the kernel's values (Firecracker's list has the same).
constexpr unsigned long kGetXsave = 0x9000aea4;  // _IOR(KVMIO, 0xa4, struct kvm_xsave)
constexpr unsigned long kSetXsave = 0x5000aea5;  // _IOW(KVMIO, 0xa5, struct kvm_xsave)
static_assert(KVM_RUN == 0xae80);
static_assert(KVM_GET_REGS == 0x8090ae81 && KVM_GET_SREGS == 0x8138ae83);
static_assert(KVM_GET_MP_STATE == 0x8004ae98 && KVM_GET_VCPU_EVENTS == 0x8040ae9f);
static_assert(KVM_IRQFD == 0x4020ae76 && KVM_IOEVENTFD == 0x4040ae79);
static_assert(kvm_abi::kGetMsrs == 0xc008ae88 && kvm_abi::kSetGsiRouting == 0x4008ae6a);

// One allow rule: the system call, and argument conditions that must all hold. Several rules
// for one call are alternatives.
struct Rule {
  int nr;
  std::vector<scmp_arg_cmp> conds;
};

// ioctl(fd, request): the kernel takes the request as a 32-bit unsigned int, so compare those
// bits only.
Rule ioctl_rule(unsigned long request) {
  return {SCMP_SYS(ioctl), {SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffu, request & 0xffffffffu)}};
}

std::vector<Rule> common_rules() {
  const auto pid = static_cast<scmp_datum_t>(::getpid());
  std::vector<Rule> r = {
      // Logging (stderr), eventfd signalling (irqfds, the loop's wake-up), serial output.
      {SCMP_SYS(write), {}},
      // Log lines to a stderr that is a socket (a journal stream): send(MSG_DONTWAIT), fd 2 only.
      {SCMP_SYS(sendto), {SCMP_A0(SCMP_CMP_EQ, STDERR_FILENO)}},
      // Locks, condition variables, thread joins.
      {SCMP_SYS(futex), {}},
      {SCMP_SYS(sched_yield), {}},
      // Clocks: the vDSO usually answers, but falls back to the system call on clock sources
      // it cannot read (the nested host's, for one).
      {SCMP_SYS(clock_gettime), {}},
      {SCMP_SYS(clock_getres), {}},
      {SCMP_SYS(gettimeofday), {}},
      {SCMP_SYS(time), {}},
      {SCMP_SYS(nanosleep), {}},
      {SCMP_SYS(clock_nanosleep), {}},
      // Signals: pthread_kill (vCPU kicks) is getpid + tgkill with all signals blocked around
      // it; abort() raises SIGABRT; the trap handler re-raises SIGSYS. Only to this process.
      {SCMP_SYS(getpid), {}},
      {SCMP_SYS(gettid), {}},
      {SCMP_SYS(tgkill), {SCMP_A0(SCMP_CMP_EQ, pid), SCMP_A2(SCMP_CMP_EQ, kKickSignal)}},
      {SCMP_SYS(tgkill), {SCMP_A0(SCMP_CMP_EQ, pid), SCMP_A2(SCMP_CMP_EQ, SIGABRT)}},
      {SCMP_SYS(tgkill), {SCMP_A0(SCMP_CMP_EQ, pid), SCMP_A2(SCMP_CMP_EQ, SIGSYS)}},
      {SCMP_SYS(rt_sigprocmask), {}},
      {SCMP_SYS(rt_sigreturn), {}},
      {SCMP_SYS(restart_syscall), {}},
      {SCMP_SYS(exit), {}},
      {SCMP_SYS(exit_group), {}},
      // malloc and thread stacks; never executable memory.
      {SCMP_SYS(brk), {}},
      {SCMP_SYS(mmap), {SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0)}},
      {SCMP_SYS(mprotect), {SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0)}},
      {SCMP_SYS(munmap), {}},
      {SCMP_SYS(mremap), {}},
      {SCMP_SYS(madvise), {SCMP_A2(SCMP_CMP_EQ, MADV_DONTNEED)}},
      {SCMP_SYS(madvise), {SCMP_A2(SCMP_CMP_EQ, MADV_FREE)}},
      // EventLoop::add/modify/remove are called from any thread (a vCPU thread's UART write
      // asks for EPOLLOUT on a full output).
      {SCMP_SYS(epoll_ctl), {}},
      {SCMP_SYS(close), {}},
  };
#ifdef PIER_SANITIZER_BUILD
  // Sanitizer builds only (CMake's PIER_SANITIZE, docs/sanitizers.md): what GCC's ASan runtime
  // does on any thread. Release builds never get these rules.
  const std::vector<Rule> sanitizer = {
      // ASan clears a thread's stack shadow as the thread exits: a fresh mapping marked so.
      {SCMP_SYS(madvise), {SCMP_A2(SCMP_CMP_EQ, MADV_NOHUGEPAGE)}},
      {SCMP_SYS(madvise), {SCMP_A2(SCMP_CMP_EQ, MADV_DONTDUMP)}},
      // ASan's per-thread alternate signal stack (for its SEGV report), taken down at exit.
      {SCMP_SYS(sigaltstack), {}},
  };
  r.insert(r.end(), sanitizer.begin(), sanitizer.end());
#endif
  return r;
}

std::vector<Rule> vcpu_rules() {
  std::vector<Rule> r = common_rules();
  for (unsigned long request : {
           static_cast<unsigned long>(KVM_RUN),
           // Exit handlers: UART/INTx lines, MSI-X routes and irqfds, BAR moves (ioeventfds).
           static_cast<unsigned long>(KVM_IRQ_LINE),
           kvm_abi::kSetGsiRouting,
           static_cast<unsigned long>(KVM_IRQFD),
           static_cast<unsigned long>(KVM_IOEVENTFD),
           // Register dumps on errors, the hang probe, the pvm host profile's completions.
           static_cast<unsigned long>(KVM_GET_REGS),
           static_cast<unsigned long>(KVM_SET_REGS),
           static_cast<unsigned long>(KVM_GET_SREGS),
           static_cast<unsigned long>(KVM_SET_SREGS),
           static_cast<unsigned long>(KVM_GET_MP_STATE),
           static_cast<unsigned long>(KVM_GET_VCPU_EVENTS),
           static_cast<unsigned long>(KVM_SET_VCPU_EVENTS),
           static_cast<unsigned long>(KVM_SET_GUEST_DEBUG),
           kvm_abi::kGetMsrs,
           kGetXsave,
           kSetXsave,
       }) {
    r.push_back(ioctl_rule(request));
  }
  return r;
}

std::vector<Rule> io_rules() {
  std::vector<Rule> r = common_rules();
  const std::vector<Rule> io = {
      // The epoll loop, eventfds, timerfds, signalfd, backends and API clients.
      {SCMP_SYS(epoll_wait), {}},
      {SCMP_SYS(epoll_pwait), {}},
      {SCMP_SYS(poll), {}},
      {SCMP_SYS(ppoll), {}},
      {SCMP_SYS(read), {}},
      {SCMP_SYS(readv), {}},
      {SCMP_SYS(writev), {}},
      {SCMP_SYS(lseek), {}},
      {SCMP_SYS(recvfrom), {}},
      {SCMP_SYS(recvmsg), {}},
      {SCMP_SYS(sendto), {}},
      {SCMP_SYS(sendmsg), {}},
      {SCMP_SYS(sendmmsg), {}},  // getaddrinfo's DNS queries (tcp=HOST:PORT in port-add)
      {SCMP_SYS(eventfd2), {}},
      {SCMP_SYS(timerfd_create), {}},
      {SCMP_SYS(timerfd_settime), {}},
      {SCMP_SYS(timerfd_gettime), {}},
      {SCMP_SYS(fcntl), {}},
      // Sockets for port-add and the API: unix and TCP (v4/v6) only.
      {SCMP_SYS(socket), {SCMP_A0(SCMP_CMP_EQ, AF_UNIX)}},
      {SCMP_SYS(socket), {SCMP_A0(SCMP_CMP_EQ, AF_INET)}},
      {SCMP_SYS(socket), {SCMP_A0(SCMP_CMP_EQ, AF_INET6)}},
      {SCMP_SYS(bind), {}},
      {SCMP_SYS(listen), {}},
      {SCMP_SYS(accept4), {}},
      {SCMP_SYS(connect), {}},
      {SCMP_SYS(getsockname), {}},
      {SCMP_SYS(getpeername), {}},
      {SCMP_SYS(setsockopt), {}},
      {SCMP_SYS(getsockopt), {}},
      {SCMP_SYS(shutdown), {}},
      // Files: pty masters and slaves, file= outputs, socket files (stale-socket checks, removal
      // at exit, 0600 by umask), /etc files for getaddrinfo, /proc/self/status at exit.
      {SCMP_SYS(openat), {}},
      {SCMP_SYS(fstat), {}},
      {SCMP_SYS(newfstatat), {}},
      {SCMP_SYS(stat), {}},
      {SCMP_SYS(lstat), {}},
      {SCMP_SYS(statx), {}},
      {SCMP_SYS(unlink), {}},
      {SCMP_SYS(unlinkat), {}},
      {SCMP_SYS(umask), {}},
      {SCMP_SYS(inotify_init1), {}},  // pty ports: who opens the slave
      {SCMP_SYS(inotify_add_watch), {}},
      {SCMP_SYS(uname), {}},      // getaddrinfo (tcp=localhost:PORT in port-add)
      {SCMP_SYS(mincore), {}},    // resident guest RAM in the exit log
      {SCMP_SYS(getrandom), {}},  // virtio-rng
  };
  r.insert(r.end(), io.begin(), io.end());
  for (unsigned long request : {
           // Terminals: stdio raw mode and its restore at exit, pty set-up and sizes.
           static_cast<unsigned long>(TCGETS),
           static_cast<unsigned long>(TCSETS),
           static_cast<unsigned long>(TCSETSW),
           static_cast<unsigned long>(TCSETSF),
           static_cast<unsigned long>(TIOCGWINSZ),
           static_cast<unsigned long>(TIOCGPTN),
           static_cast<unsigned long>(TIOCSPTLCK),
           static_cast<unsigned long>(FIONREAD),
           static_cast<unsigned long>(FIONBIO),
           // Interrupts from devices served on this thread (UART input, INTx), and irqfds and
           // ioeventfds released when devices go away at exit.
           static_cast<unsigned long>(KVM_IRQ_LINE),
           static_cast<unsigned long>(KVM_IRQFD),
           static_cast<unsigned long>(KVM_IOEVENTFD),
       }) {
    r.push_back(ioctl_rule(request));
  }
  return r;
}

std::vector<Rule> rules_for(ThreadClass c) {
  return c == ThreadClass::kVcpu ? vcpu_rules() : io_rules();
}

// --- The trap handler: everything it uses is prepared before any filter is loaded. ---

constexpr int kMaxSyscall = 512;
std::array<const char*, kMaxSyscall> g_syscall_names{};
std::once_flag g_names_once;
thread_local const char* t_class_name = nullptr;

void prepare_syscall_names() {
  std::call_once(g_names_once, [] {
    for (int nr = 0; nr < kMaxSyscall; ++nr) {
      // Allocated by libseccomp and kept for the process's lifetime.
      g_syscall_names[static_cast<size_t>(nr)] =
          seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
    }
  });
}

// Async-signal-safe formatting into a fixed buffer.
struct Line {
  char buf[512];
  size_t len = 0;
  void add(const char* s) {
    while (*s != '\0' && len < sizeof(buf)) buf[len++] = *s++;
  }
  void add_dec(uint64_t v) {
    char tmp[24];
    int n = 0;
    do {
      tmp[n++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v != 0);
    while (n > 0 && len < sizeof(buf)) buf[len++] = tmp[--n];
  }
  void add_hex(uint64_t v) {
    add("0x");
    char tmp[16];
    int n = 0;
    do {
      tmp[n++] = "0123456789abcdef"[v & 0xf];
      v >>= 4;
    } while (v != 0);
    while (n > 0 && len < sizeof(buf)) buf[len++] = tmp[--n];
  }
};

void on_sigsys(int, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  const int nr = info->si_syscall;
  Line line;
  line.add("pier: seccomp: thread ");
  line.add(t_class_name != nullptr ? t_class_name : "(unfiltered)");
  line.add(" made forbidden system call ");
  const char* name =
      nr >= 0 && nr < kMaxSyscall ? g_syscall_names[static_cast<size_t>(nr)] : nullptr;
  line.add(name != nullptr ? name : "?");
  line.add(" (");
  line.add_dec(static_cast<uint64_t>(nr));
  // x86-64 system call arguments: rdi, rsi, rdx (an ioctl's request is the second).
  const auto* uc = static_cast<const ucontext_t*>(context);
  line.add(", arguments ");
  line.add_hex(static_cast<uint64_t>(uc->uc_mcontext.gregs[REG_RDI]));
  line.add(", ");
  line.add_hex(static_cast<uint64_t>(uc->uc_mcontext.gregs[REG_RSI]));
  line.add(", ");
  line.add_hex(static_cast<uint64_t>(uc->uc_mcontext.gregs[REG_RDX]));
  line.add("); run with --seccomp off to debug, or --seccomp log to list what is missing\n");
  [[maybe_unused]] ssize_t n = ::syscall(__NR_write, STDERR_FILENO, line.buf, line.len);
  // The handler was installed with SA_RESETHAND, so SIGSYS is back to its default action (end
  // the process, dump core); it is blocked while this handler runs, so the one raised here is
  // delivered as the handler returns and the process ends by SIGSYS, like a seccomp kill.
  ::syscall(__NR_tgkill, ::syscall(__NR_getpid), ::syscall(__NR_gettid), SIGSYS);
  errno = saved_errno;
}

[[noreturn]] void fail(std::string_view what, int rc) {
  throw Error(fmt::format("seccomp: {}: {}", what, std::strerror(-rc)));
}

}  // namespace

Mode parse_mode(std::string_view text) {
  if (text == "on") return Mode::kOn;
  if (text == "off") return Mode::kOff;
  if (text == "log") return Mode::kLog;
  throw Error(fmt::format("--seccomp {}: expected on, off or log", text));
}

std::string_view to_string(Mode mode) {
  switch (mode) {
    case Mode::kOn:
      return "on";
    case Mode::kLog:
      return "log";
    case Mode::kOff:
      break;
  }
  return "off";
}

std::string_view to_string(ThreadClass thread_class) {
  return thread_class == ThreadClass::kVcpu ? "vcpu" : "io";
}

Filter::Filter(ThreadClass thread_class, Mode mode) : class_(thread_class) {
  if (mode == Mode::kOff) return;
  prepare_syscall_names();
  const unsigned api = seccomp_api_get();
  // API level 3: SCMP_ACT_LOG and SCMP_ACT_KILL_PROCESS (Linux 4.14).
  if (api < 3) {
    throw Error(fmt::format(
        "seccomp: this kernel or libseccomp does not support the filters pier needs (API level "
        "{}, need 3: Linux 4.14 or later); run with --seccomp off",
        api));
  }
  scmp_filter_ctx ctx = seccomp_init(mode == Mode::kOn ? SCMP_ACT_TRAP : SCMP_ACT_LOG);
  if (ctx == nullptr) throw Error("seccomp: seccomp_init failed");
  ctx_ = ctx;
  int rc = 0;
  // no_new_privs is set by seccomp_load (required for an unprivileged filter; pier never
  // execs). Each thread loads its own filter: no TSYNC.
  if ((rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 1)) != 0) fail("no_new_privs", rc);
  if ((rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 0)) != 0) fail("tsync", rc);
  // Another architecture's system call ABI (int 0x80, x32) is never pier's.
  if ((rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS)) != 0) {
    fail("bad-arch action", rc);
  }
  for (const Rule& rule : rules_for(thread_class)) {
    rc = seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, rule.nr,
                                static_cast<unsigned>(rule.conds.size()), rule.conds.data());
    if (rc != 0) {
      char* name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, rule.nr);
      const std::string text = name != nullptr ? name : std::to_string(rule.nr);
      std::free(name);
      fail(fmt::format("rule for {}", text), rc);
    }
  }
  // KVM_RUN is the vCPU thread's hot call: test ioctl first.
  seccomp_syscall_priority(ctx, SCMP_SYS(ioctl), 255);
}

Filter::~Filter() {
  if (ctx_ != nullptr) seccomp_release(static_cast<scmp_filter_ctx>(ctx_));
}

Filter::Filter(Filter&& other) noexcept : ctx_(other.ctx_), class_(other.class_) {
  other.ctx_ = nullptr;
}

Filter& Filter::operator=(Filter&& other) noexcept {
  if (this != &other) {
    if (ctx_ != nullptr) seccomp_release(static_cast<scmp_filter_ctx>(ctx_));
    ctx_ = other.ctx_;
    class_ = other.class_;
    other.ctx_ = nullptr;
  }
  return *this;
}

void Filter::install() {
  if (ctx_ == nullptr) return;
  auto* ctx = static_cast<scmp_filter_ctx>(ctx_);
  t_class_name = class_ == ThreadClass::kVcpu ? "vcpu" : "io";
  const int rc = seccomp_load(ctx);
  if (rc != 0) {
    t_class_name = nullptr;
    fail(fmt::format("loading the {} thread's filter", to_string(class_)), rc);
  }
  seccomp_release(ctx);
  ctx_ = nullptr;
}

void install_trap_handler() {
  prepare_syscall_names();
  struct sigaction sa {};
  sa.sa_sigaction = on_sigsys;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
  if (::sigaction(SIGSYS, &sa, nullptr) != 0) throw system_error("sigaction(SIGSYS)");
  // A thread that blocks SIGSYS would be killed without the message: keep it deliverable.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGSYS);
  ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
}

void leak_check_before_filters() {
#if defined(__SANITIZE_ADDRESS__)
  // Reports what is unreachable now and exits with ASan's exit code if anything is; later calls
  // and the exit-time check do nothing.
  __lsan_do_leak_check();
#endif
}

std::vector<std::string> allowed_syscalls(ThreadClass thread_class) {
  std::vector<std::string> names;
  for (const Rule& rule : rules_for(thread_class)) {
    char* name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, rule.nr);
    std::string text = name != nullptr ? name : std::to_string(rule.nr);
    std::free(name);
    if (names.empty() || names.back() != text) names.push_back(std::move(text));
  }
  return names;
}

}  // namespace pier::seccomp
