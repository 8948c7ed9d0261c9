#include "vmm/jail.hpp"

#include <dirent.h>
#include <fmt/format.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>

#include "devices/chardev/port_backend.hpp"
#include "vmm/error.hpp"
#include "vmm/log.hpp"
#include "vmm/machine.hpp"

namespace pier::jail {
namespace {

namespace fs = std::filesystem;
using chardev::PortBackendSpec;

// A directory path without a trailing slash (except "/"), "." and ".." resolved lexically.
std::string normal_dir(std::string_view path) {
  std::string s = fs::path(path).lexically_normal().string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

// A path inside a backend spec: ',' is written ",," (port_backend.hpp).
std::string escape_commas(std::string_view path) {
  std::string out;
  for (const char c : path) {
    out += c;
    if (c == ',') out += ',';
  }
  return out;
}

std::string absolute(const std::string& path) {
  return path.empty() ? path : fs::absolute(path).string();
}

// confine_path against the canonical DIR and, when the user spelled it differently (through a
// symlink), the DIR as given.
std::string confine_to(const std::string& dir, const std::string& given, std::string_view path,
                       std::string_view what) {
  const auto refuse = [&](std::string_view why) -> std::string {
    throw Error(fmt::format(
        "{} '{}' {}: under --jail, unix sockets and run-time file= outputs live directly in "
        "the jail directory; give a file name ('name.sock', meaning {}/name.sock) or an "
        "absolute path in {}",
        what, path, why, dir, dir));
  };
  if (path.empty()) return refuse("is empty");
  if (path.find('/') == std::string_view::npos) {
    if (path == "." || path == "..") return refuse("is not a file name");
    return std::string(path);
  }
  if (path.front() != '/') return refuse("is a relative path with a directory");
  const fs::path p = fs::path(path).lexically_normal();
  const std::string name = p.filename().string();
  if (name.empty() || name == "." || name == "..") return refuse("does not name a file");
  const std::string parent = normal_dir(p.parent_path().string());
  if (parent != dir && parent != given) return refuse("is outside the jail directory");
  return name;
}

// Runs one system call of the jail's set-up; a failure throws with `what` and errno. The call
// runs inside, after `what` is built, so nothing clobbers errno in between.
template <class Call>
void step(std::string_view what, Call call) {
  if (call() != 0) {
    throw Error(fmt::format("--jail: {} failed: {}", what, std::strerror(errno)));
  }
}

void set_limit(int resource, uint64_t value, std::string_view name) {
  const rlim_t v = value == UINT64_MAX ? RLIM_INFINITY : static_cast<rlim_t>(value);
  const rlimit limit{v, v};
  if (::setrlimit(resource, &limit) != 0) {
    throw Error(fmt::format("--jail: cannot set {} to {}: {}", name, value, std::strerror(errno)));
  }
}

std::string confine_backend_as(const std::string& dir, const std::string& given,
                               std::string_view text, bool run_time);

}  // namespace

std::string confine_path(const std::string& dir, std::string_view path, std::string_view what) {
  return confine_to(dir, dir, path, what);
}

std::string confine_backend(const std::string& dir, std::string_view text, bool run_time) {
  return confine_backend_as(dir, dir, text, run_time);
}

namespace {

std::string confine_backend_as(const std::string& dir, const std::string& given,
                               std::string_view text, bool run_time) {
  const PortBackendSpec spec = chardev::parse_port_backend(text);
  switch (spec.kind) {
    case PortBackendSpec::Kind::kUnixListen:
    case PortBackendSpec::Kind::kUnixConnect: {
      std::string out = "socket=" + escape_commas(confine_to(dir, given, spec.path, "socket"));
      if (spec.kind == PortBackendSpec::Kind::kUnixConnect) out += ",client";
      if (spec.reconnect.count() > 0) {
        const auto ms = spec.reconnect.count();
        out += fmt::format(",reconnect={}.{:03}", ms / 1000, ms % 1000);
      }
      return out;
    }
    case PortBackendSpec::Kind::kTcpListen:
      if (run_time) {
        throw Error(fmt::format(
            "'{}': tcp= ports cannot be added under --jail: pier runs in a network namespace "
            "of its own, where nothing from the host could reach a new listener. Give tcp= "
            "ports on the command line (bound before the jail), or add a socket= port in {}",
            spec.text, dir));
      }
      return spec.text;
    case PortBackendSpec::Kind::kPty:
      if (run_time) {
        throw Error(
            "pty ports cannot be added under --jail (there is no /dev/pts inside the jail); give "
            "them on the command line, or add a socket= port");
      }
      return spec.text;
    case PortBackendSpec::Kind::kFile:
      if (run_time) return "file=" + escape_commas(confine_to(dir, given, spec.path, "file="));
      return "file=" + escape_commas(absolute(spec.path));
    case PortBackendSpec::Kind::kStdio:
    case PortBackendSpec::Kind::kNull:
      break;
  }
  return spec.text;
}

}  // namespace

uint64_t nofile_limit(uint64_t open_fds, unsigned max_ports, bool api_socket) {
  // Per port at run time: a listening socket, its backoff timer and one client (a pty: master,
  // inotify, timer); the queues' eventfds exist from the start and are in open_fds. The API:
  // its listening socket and up to 256 clients (api::ServerOptions::max_clients). Slack for
  // the loop's signalfd and timers made after the jail and for a client waiting in accept.
  constexpr uint64_t kPerPort = 4, kApi = 1 + 256, kSlack = 64;
  return open_fds + kPerPort * max_ports + (api_socket ? kApi : 0) + kSlack;
}

unsigned thread_count() {
  std::error_code ec;
  unsigned n = 0;
  for (fs::directory_iterator it("/proc/self/task", ec), end; !ec && it != end; it.increment(ec)) {
    ++n;
  }
  if (ec) throw Error(fmt::format("--jail: cannot list /proc/self/task: {}", ec.message()));
  return n;
}

uint64_t open_fd_count() {
  struct Closer {
    void operator()(DIR* d) const { ::closedir(d); }
  };
  const std::unique_ptr<DIR, Closer> d(::opendir("/proc/self/fd"));
  if (!d) throw system_error("--jail: cannot list /proc/self/fd");
  uint64_t count = 0, highest = 0;
  while (const dirent* e = ::readdir(d.get())) {
    if (e->d_name[0] == '.') continue;
    ++count;
    highest = std::max<uint64_t>(highest, std::strtoull(e->d_name, nullptr, 10));
  }
  return std::max(count, highest + 1);
}

Jail::Jail(Config config) : config_(std::move(config)) {
  const std::string& given = config_.dir;
  if (given.empty()) throw Error("--jail needs a directory");
  if (config_.uid == 0 || config_.gid == 0) {
    throw Error(
        "--jail needs --jail-uid and --jail-gid: an unprivileged uid and gid (not 0) for pier "
        "to run as inside the jail, e.g. --jail-uid 10000 --jail-gid 10000");
  }
  if (::geteuid() != 0) {
    throw Error(
        "--jail needs root (it makes namespaces, mounts the jail and changes uid); run pier "
        "as root, or without --jail");
  }
  std::error_code ec;
  const fs::path canonical = fs::canonical(given, ec);
  if (ec) throw Error(fmt::format("--jail {}: {}", given, ec.message()));
  dir_ = canonical.string();
  struct stat st {};
  if (::stat(dir_.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    throw Error(fmt::format("--jail {}: not a directory", given));
  }
  if (dir_ == "/") throw Error("--jail /: the jail directory cannot be the root directory");
  if (st.st_uid != config_.uid || (st.st_mode & (S_IWUSR | S_IXUSR)) != (S_IWUSR | S_IXUSR)) {
    throw Error(fmt::format(
        "--jail {}: the directory must be owned and writable by the jail's uid {} (pier "
        "creates the API and port-add sockets in it and removes its sockets at exit): run "
        "'install -d -o {} -g {} -m 0700 {}'",
        given, config_.uid, config_.uid, config_.gid, dir_));
  }
  if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    log::warn("--jail {}: the directory is writable by its group or others; 0700 is safer", dir_);
  }
}

std::string Jail::confine_run_time_backend(std::string_view spec) const {
  return confine_backend_as(dir_, normal_dir(config_.dir), spec, true);
}

std::string Jail::host_address(const std::string& address) const {
  if (address.empty() || address.find('/') != std::string::npos) return address;
  if (address.find(':') != std::string::npos) return address;  // tcp host:port
  return dir_ + "/" + address;
}

void Jail::prepare(MachineConfig& machine) const {
  const std::string given = normal_dir(config_.dir);
  machine.kernel_path = absolute(machine.kernel_path);
  machine.initrd_path = absolute(machine.initrd_path);
  machine.kvm_device = absolute(machine.kvm_device);
  machine.host.kvm_device = absolute(machine.host.kvm_device);
  machine.dump_dtb = absolute(machine.dump_dtb);
  if (machine.serial.starts_with("file="))
    machine.serial = "file=" + absolute(machine.serial.substr(5));
  for (PortOption& port : machine.ports) {
    port.backend = confine_backend_as(dir_, given, port.backend, false);
  }
  if (!machine.api_socket.empty()) {
    machine.api_socket = confine_to(dir_, given, machine.api_socket, "--api-socket");
  }
  step(fmt::format("chdir({})", dir_), [&] { return ::chdir(dir_.c_str()); });
}

void Jail::enter(uint64_t nofile) const {
  if (const unsigned threads = thread_count(); threads != 1) {
    throw Error(fmt::format(
        "--jail: the process has {} threads; the jail must be entered before pier starts any "
        "(namespaces are per thread)",
        threads));
  }
  // Namespaces: the mount namespace for the new root; the network namespace leaves pier only
  // the sockets it holds (tcp= listeners bound before this keep working); IPC, UTS and cgroup
  // for good measure.
  step("unshare (new mount, network, IPC, UTS and cgroup namespaces)", [] {
    return ::unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP);
  });
  // Nothing done here may reach the host's mount table.
  step("making mounts private",
       [] { return ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr); });
  // DIR on itself: pivot_root needs a mount point. Not recursive: what is mounted below DIR
  // stays out.
  step(fmt::format("bind-mounting {}", dir_),
       [&] { return ::mount(dir_.c_str(), dir_.c_str(), nullptr, MS_BIND, nullptr); });
  step(fmt::format("remounting {} nosuid,nodev,noexec", dir_), [&] {
    return ::mount(nullptr, dir_.c_str(), nullptr,
                   MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
  });
  step("chdir into the jail", [&] { return ::chdir(dir_.c_str()); });
  // pivot_root(".", "."): the old root ends up stacked on the new one and is detached at once.
  step("pivot_root", [] { return static_cast<int>(::syscall(SYS_pivot_root, ".", ".")); });
  step("detaching the old root", [] { return ::umount2(".", MNT_DETACH); });
  step("chdir(/)", [] { return ::chdir("/"); });

  // Limits while still privileged (raising a hard limit needs CAP_SYS_RESOURCE); hard = soft,
  // so the jailed process cannot raise them again.
  set_limit(RLIMIT_NOFILE, nofile, "RLIMIT_NOFILE");
  set_limit(RLIMIT_FSIZE, config_.file_size_limit, "RLIMIT_FSIZE");
  set_limit(RLIMIT_CORE, 0, "RLIMIT_CORE");  // guest RAM is not written to disk
  // A write beyond RLIMIT_FSIZE fails with EFBIG (a file= port counts the bytes lost) instead
  // of killing pier.
  ::signal(SIGXFSZ, SIG_IGN);

  // Credentials: no capability can come back (empty bounding set, no_new_privs), then the
  // jail's gid and uid everywhere (real, effective, saved), which clears every capability.
  for (int cap = 0; ::prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; ++cap) {
    step(fmt::format("dropping capability {}", cap),
         [&] { return ::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0); });
  }
  step("setgroups", [] { return ::setgroups(0, nullptr); });
  const uid_t uid = config_.uid;
  const gid_t gid = config_.gid;
  step(fmt::format("setresgid({})", gid), [&] { return ::setresgid(gid, gid, gid); });
  step(fmt::format("setresuid({})", uid), [&] { return ::setresuid(uid, uid, uid); });
  if (::setresuid(0, 0, 0) == 0 || ::geteuid() != config_.uid || ::getegid() != config_.gid) {
    throw Error("--jail: the uid change did not hold (root could be regained)");
  }
  step("setting no_new_privs", [] { return ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); });
  // Not dumpable whatever fs.suid_dumpable says: no core, no ptrace by the jail's uid, /proc
  // files of the process owned by root.
  step("clearing the dumpable flag", [] { return ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0); });
  log::info("jail: root {}, uid {} gid {}, RLIMIT_NOFILE {}, RLIMIT_FSIZE {}", dir_, config_.uid,
            config_.gid, nofile,
            config_.file_size_limit == UINT64_MAX ? std::string("unlimited")
                                                  : std::to_string(config_.file_size_limit));
}

void Jail::seal() const {
  set_limit(RLIMIT_NPROC, 0, "RLIMIT_NPROC");
}

}  // namespace pier::jail
