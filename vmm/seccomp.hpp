#pragma once
// seccomp-bpf filters for `pier run`'s threads (libseccomp), one allowlist per thread class, as
// Firecracker and Cloud Hypervisor do:
//   vcpu - a vCPU thread: KVM_RUN and the few KVM ioctls the exit handlers issue, eventfd and
//          serial writes, futexes, the kick signal, memory allocation, logging;
//   io   - the I/O thread (pier's main thread): the epoll loop, backends (sockets, ptys, files,
//          stdio), the runtime API and port-add, and pier's exit.
// Each thread builds nothing itself: the main thread builds every filter during set-up (a bad
// rule is a set-up error) and each thread installs its own when it starts running VM work, after
// everything that needs more (creating vCPUs, mapping guest RAM, opening backends). Filters are
// per thread (no TSYNC): the classes differ. Anything else is default-deny: with Mode::kOn the
// thread traps (SIGSYS), pier prints which thread class made which system call, and the process
// dies by SIGSYS; with Mode::kLog the call is allowed and the kernel logs it (audit/dmesg), for
// building allowlists.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace pier::seccomp {

enum class Mode { kOff, kOn, kLog };
enum class ThreadClass { kVcpu, kIo };

// "on", "off" or "log"; throws pier::Error otherwise.
Mode parse_mode(std::string_view text);
std::string_view to_string(Mode mode);
std::string_view to_string(ThreadClass thread_class);

// One thread's filter, built (not yet loaded). Move-only; an empty Filter (Mode::kOff) installs
// nothing.
class Filter {
 public:
  Filter() = default;
  // Throws pier::Error when libseccomp or the kernel cannot provide the filter.
  Filter(ThreadClass thread_class, Mode mode);
  ~Filter();
  Filter(Filter&& other) noexcept;
  Filter& operator=(Filter&& other) noexcept;
  Filter(const Filter&) = delete;
  Filter& operator=(const Filter&) = delete;

  bool empty() const { return ctx_ == nullptr; }
  ThreadClass thread_class() const { return class_; }
  // Loads the filter on the calling thread only (sets no_new_privs first), once. Throws
  // pier::Error if the kernel refuses it. With Mode::kOn, call install_trap_handler() first.
  void install();

 private:
  void* ctx_ = nullptr;  // scmp_filter_ctx
  ThreadClass class_ = ThreadClass::kIo;
};

// Process-wide, once, before any filter with Mode::kOn is installed: the SIGSYS handler that
// reports a forbidden call on stderr ("pier: seccomp: thread vcpu made forbidden system call
// execve ...; run with --seccomp off to debug") and then ends the process by SIGSYS.
void install_trap_handler();

// AddressSanitizer builds (docs/sanitizers.md): runs LeakSanitizer's check now, in place of the
// one at exit, which stops the world with a ptrace-ing thread that no filter allows. Call it on
// the main thread before it loads its filter; a no-op in other builds and with detect_leaks=0.
void leak_check_before_filters();

// The system calls a class allows (names), for tests and documentation.
std::vector<std::string> allowed_syscalls(ThreadClass thread_class);

}  // namespace pier::seccomp
