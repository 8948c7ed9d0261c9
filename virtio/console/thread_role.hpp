#pragma once
// Checks of the console device's thread rules (console_device.hpp, "Threads").
//
// Two roles call into the device:
//  - The I/O role: the thread inside one of the device's I/O-thread entry points (a queue
//    notification, a backend event, a posted continuation, the runtime API, construction and
//    destruction), holding the device lock. Only it may pop or push a virtqueue or call a
//    backend: queues and backends belong to the I/O thread (virtio/device.hpp), and the lock
//    makes it one thread at a time.
//  - The vCPU role: the register accesses a vCPU thread makes (feature negotiation, config
//    space reads and writes, among them the emergency write). They may change device state
//    under the lock but must never reach a queue or a backend: the vCPU would race the I/O
//    thread on the rings, or wait in a host write while the guest is stopped.
//
// IoRoleScope and VcpuRoleScope mark the current thread for a scope. assert_io_role(owner) is
// called by every function that touches a queue or a backend; it aborts with a message unless
// the thread is in an IoRoleScope of that same owner (the device) and not inside a vCPU-role
// call. On in every build (release included, so the suite and CI exercise it): it costs two
// thread-local loads per call, next to a ring access or a system call. Defining
// PIER_NO_THREAD_ROLE_CHECKS compiles it to nothing. Header-only, so every build that compiles the console sources
// (the fuzzers' too) gets it.
#include <cstdio>
#include <cstdlib>

namespace pier::virtio::console {

#ifndef PIER_NO_THREAD_ROLE_CHECKS
inline constexpr bool kThreadRoleChecks = true;

namespace thread_role_detail {
struct State {
  const void* io_owner = nullptr;  // the device whose I/O role this thread holds
  unsigned vcpu_depth = 0;         // vCPU-role calls this thread is inside
};
inline thread_local State state;

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "pier: virtio-console thread-role check failed: %s\n", what);
  std::abort();
}
}  // namespace thread_role_detail

class IoRoleScope {
 public:
  explicit IoRoleScope(const void* owner) : previous_(thread_role_detail::state.io_owner) {
    thread_role_detail::state.io_owner = owner;
  }
  ~IoRoleScope() { end(); }
  IoRoleScope(const IoRoleScope&) = delete;
  IoRoleScope& operator=(const IoRoleScope&) = delete;
  // Gives the role up before the scope ends (the device lock is about to be released).
  void end() {
    if (!active_) return;
    thread_role_detail::state.io_owner = previous_;
    active_ = false;
  }

 private:
  const void* previous_;
  bool active_ = true;
};

class VcpuRoleScope {
 public:
  VcpuRoleScope() { ++thread_role_detail::state.vcpu_depth; }
  ~VcpuRoleScope() { --thread_role_detail::state.vcpu_depth; }
  VcpuRoleScope(const VcpuRoleScope&) = delete;
  VcpuRoleScope& operator=(const VcpuRoleScope&) = delete;
};

inline void assert_io_role(const void* owner) {
  const auto& s = thread_role_detail::state;
  if (s.vcpu_depth != 0) {
    thread_role_detail::fail(
        "a vCPU-role call (config space, features) reached a virtqueue or a backend; only the "
        "I/O thread may touch them");
  }
  if (s.io_owner != owner) {
    thread_role_detail::fail(
        "a virtqueue or a backend was touched outside the device's I/O-thread dispatch (device "
        "lock not held by this thread)");
  }
}
#else
inline constexpr bool kThreadRoleChecks = false;

class IoRoleScope {
 public:
  explicit IoRoleScope(const void*) {}
  void end() {}
};
class VcpuRoleScope {
 public:
  VcpuRoleScope() {}
};
inline void assert_io_role(const void*) {}
#endif

}  // namespace pier::virtio::console
