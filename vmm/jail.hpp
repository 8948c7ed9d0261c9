#pragma once
// `pier run --jail DIR`: an opt-in jail for the VMM process, in the spirit of Firecracker's
// jailer and Cloud Hypervisor's landlock + seccomp. In the order `pier run` applies it:
//
//  1. prepare() (options parsed, nothing opened yet): DIR must be an existing directory owned by
//     the jail's uid; every unix-socket path (--api-socket, socket= of --console/--port) must
//     name a file directly in DIR ("api.sock" or "DIR/api.sock") and is rewritten to that bare
//     name; every other path (kernel, initrd, file= outputs, --kvm-device, --dump-dtb) is made
//     absolute; then the working directory becomes DIR.
//  2. The machine is built as usual, with the host's view: /dev/kvm, the kernel and initrd,
//     ptys, file= outputs, tcp= listeners and the socket files (bound by their names in DIR).
//  3. enter() (still one thread): new mount, network, IPC, UTS and cgroup namespaces; DIR is
//     bind-mounted on itself (nosuid, nodev, noexec) and becomes the root (pivot_root; the old
//     root is detached, nothing else is mounted: no /proc, /dev or /tmp); RLIMIT_NOFILE sized
//     for --max-ports, RLIMIT_FSIZE (--jail-fsize; SIGXFSZ ignored so an oversized write fails
//     with EFBIG), RLIMIT_CORE 0, hard = soft; the capability bounding set emptied,
//     supplementary groups cleared, then gid and uid set to the jail's (real, effective, saved),
//     which drops every capability; no_new_privs; not dumpable. The working directory (DIR
//     before) is the new root, so the socket names bound in step 2 still name the same files:
//     they are removed at exit as usual.
//  4. seal(), once pier's threads exist and before the I/O thread's seccomp filter: RLIMIT_NPROC
//     0, so even with --seccomp off the jailed process cannot create a process or thread.
//
// Threads: namespaces and credentials set by unshare/setresuid belong to the calling thread in
// the kernel's model (glibc broadcasts setresuid, but unshare is per thread), so enter() refuses
// to run once the process has a second thread. The system calls used here (unshare, mount,
// pivot_root, setresuid, setgroups, prlimit, prctl) are not in any seccomp allowlist.
//
// No PID namespace: unshare(CLONE_NEWPID) only moves the children of the caller, and pier does
// not fork; re-executing pier as PID 1 of a new namespace would change its signal semantics (the
// kernel ignores default-action signals that PID 1 sends itself, such as the seccomp trap
// handler's SIGSYS) and add a supervisor process. What a PID namespace would hide is already out
// of reach: no /proc in the jail, a uid of its own, and the filters refuse kill, ptrace and
// process_vm_*.
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace pier {
struct MachineConfig;
}

namespace pier::jail {

struct Config {
  std::string dir;  // as given on the command line
  uid_t uid = 0;
  gid_t gid = 0;
  // RLIMIT_FSIZE: the largest file the jailed pier can write (file= outputs, a stderr
  // redirected to a file). UINT64_MAX: unlimited.
  uint64_t file_size_limit = uint64_t{1} << 30;
};

// The path rule under --jail for a unix socket (and a file= output added at run time) at
// `path`: a bare file name (no '/') names DIR/NAME; an absolute path is taken lexically (".."
// and "." resolved) and must name a file directly in `dir` (a canonical absolute directory).
// Returns the bare name; throws pier::Error naming `what` otherwise.
std::string confine_path(const std::string& dir, std::string_view path, std::string_view what);

// A port backend spec under --jail, on the command line (run_time false) or from port-add
// (run_time true): socket paths confined (confine_path) and written as bare names; tcp= and
// pty refused at run time (pier is in its own network namespace, with no /dev/pts); file=
// confined at run time, made absolute on the command line. Returns the spec to use.
std::string confine_backend(const std::string& dir, std::string_view spec, bool run_time);

// RLIMIT_NOFILE for a jailed pier: what is open when it enters the jail, plus what run time can
// open: per port (up to max_ports, including ports added later) a listening socket, its client
// and a timer (a pty's master, inotify and timer), per API client one, and slack.
uint64_t nofile_limit(uint64_t open_fds, unsigned max_ports, bool api_socket);

class Jail {
 public:
  // Checks the configuration: DIR exists, is a directory other than "/", owned by `uid` and
  // writable by it (port-add makes sockets there, and socket files are removed at exit); uid
  // and gid are not 0; pier runs as root (the jail needs CAP_SYS_ADMIN and CAP_SETUID). Throws
  // pier::Error with what to do.
  explicit Jail(Config config);

  const std::string& dir() const { return dir_; }  // canonical
  const Config& config() const { return config_; }

  // Step 1: rewrites `machine`'s paths (see the top of this file) and changes the working
  // directory to DIR.
  void prepare(MachineConfig& machine) const;
  // Step 3: enters the jail. `nofile` is the RLIMIT_NOFILE to set (nofile_limit). Throws
  // pier::Error if any step fails, or if the process has more than one thread.
  void enter(uint64_t nofile) const;
  // Step 4: RLIMIT_NPROC 0. Throws pier::Error if the kernel refuses.
  void seal() const;

  // A port-add backend in the jail (confine_backend with run_time true).
  std::string confine_run_time_backend(std::string_view spec) const;
  // The host's view of a backend address reported from inside the jail: a bare socket or file
  // name becomes DIR/NAME; anything else is returned unchanged.
  std::string host_address(const std::string& address) const;

 private:
  Config config_;
  std::string dir_;
};

// The number of threads of the calling process (from /proc/self/task).
unsigned thread_count();
// The number of open file descriptors and the highest one plus one, whichever is larger.
uint64_t open_fd_count();

}  // namespace pier::jail
