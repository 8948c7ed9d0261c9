#include "pier_process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <regex>
#include <sstream>
#include <thread>

namespace pier::test {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void set_nonblock(int fd) {
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

}  // namespace

std::string kvm_unavailable_reason() {
  int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0) return std::string("cannot open /dev/kvm: ") + std::strerror(errno);
  close(fd);
  return "";
}

std::string guest_kernel_crash(const std::string& log) {
  static const std::regex crash(
      R"((BUG: [^\r\n]*|Oops[^\r\n]*|general protection fault[^\r\n]*|Kernel panic[^\r\n]*)"
      R"(|triple fault: the guest reset itself))");
  std::smatch m;
  return std::regex_search(log, m, crash) ? m[1].str() : "";
}

std::string nested_host_fault(const std::string& log) {
  if (std::string crash = guest_kernel_crash(log); !crash.empty()) return crash;
  if (log.find("Linux version") == std::string::npos) {
    return "the guest kernel never printed its first line";
  }
  return "";
}

bool in_nested_tcg_host() {
  const char* host = std::getenv("PIER_KVM_HOST");
  return host && std::string(host) == "nested-tcg";
}

bool kvm_required() {
  const char* e = std::getenv("PIER_KVM_REQUIRED");
  return e && std::string(e) == "1";
}

std::string pier_binary() {
  // PIER_TEST_BINARY runs the same tests against another build (or a stand-in).
  if (const char* e = std::getenv("PIER_TEST_BINARY"); e && *e) return e;
  return PIER_BINARY;
}

std::string bare_guest(const std::string& name) {
  return std::string(PIER_BARE_DIR) + "/" + name + ".elf";
}

std::string PierResult::describe() const {
  std::ostringstream s;
  s << "exit_code=" << exit_code << " signal=" << term_signal << (timed_out ? " TIMED OUT" : "")
    << (cancelled ? " CANCELLED" : "") << " first_output=" << first_output_s
    << "s total=" << total_s << "s\n--- stdout ---\n"
    << out << "\n--- stderr ---\n"
    << err << "\n---";
  return s.str();
}

PierResult run_pier(const PierRun& run) {
  PierResult r;
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
    r.err = std::string("pipe: ") + std::strerror(errno);
    return r;
  }
  std::vector<std::string> argv_s{pier_binary()};
  argv_s.insert(argv_s.end(), run.args.begin(), run.args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);

  // The child must not die of SIGPIPE's default in the parent either.
  signal(SIGPIPE, SIG_IGN);
  const auto t0 = std::chrono::steady_clock::now();
  pid_t pid = fork();
  if (pid < 0) {
    r.err = std::string("fork: ") + std::strerror(errno);
    return r;
  }
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    execv(argv[0], argv.data());
    dprintf(2, "exec %s: %s\n", argv[0], std::strerror(errno));
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);
  int stdin_fd = in[1];
  set_nonblock(out[0]);
  set_nonblock(err[0]);
  set_nonblock(stdin_fd);

  std::string pending = run.stdin_after.empty() ? run.stdin_data : "";
  bool stdin_armed = run.stdin_after.empty();
  bool out_open = true, err_open = true;
  auto deadline = t0 + run.timeout;
  int status = 0;
  bool reaped = false;
  while (out_open || err_open) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      if (r.timed_out) {
        kill(pid, SIGKILL);
        break;
      }
      // SIGTERM first: pier stops cleanly and logs what each vCPU last did, which is what a
      // failure message needs to tell a hung guest from a hung pier. SIGKILL 5 s later.
      r.timed_out = true;
      kill(pid, SIGTERM);
      deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      continue;
    }
    if (run.cancel && run.cancel->load()) {
      r.cancelled = true;
      kill(pid, SIGKILL);
      break;
    }
    pollfd fds[3] = {{out_open ? out[0] : -1, POLLIN, 0},
                     {err_open ? err[0] : -1, POLLIN, 0},
                     {!pending.empty() ? stdin_fd : -1, POLLOUT, 0}};
    int n = poll(fds, 3, static_cast<int>(std::min<int64_t>(left.count(), 100)));
    if (n < 0 && errno != EINTR) break;
    char buf[4096];
    for (int i = 0; i < 2; i++) {
      if (!fds[i].revents) continue;
      ssize_t k = read(fds[i].fd, buf, sizeof buf);
      if (k > 0) {
        if (i == 0 && r.first_output_s < 0) r.first_output_s = seconds_since(t0);
        (i == 0 ? r.out : r.err).append(buf, static_cast<size_t>(k));
        if (i == 0 && run.on_stdout) run.on_stdout(std::string_view(buf, static_cast<size_t>(k)));
      } else if (k == 0 || (errno != EAGAIN && errno != EINTR)) {
        (i == 0 ? out_open : err_open) = false;
      }
    }
    if (!stdin_armed && r.out.find(run.stdin_after) != std::string::npos) {
      stdin_armed = true;
      pending = run.stdin_data;
    }
    if (!pending.empty() && (fds[2].revents & POLLOUT)) {
      ssize_t k = write(stdin_fd, pending.data(), pending.size());
      if (k > 0)
        pending.erase(0, static_cast<size_t>(k));
      else if (k < 0 && errno != EAGAIN)
        pending.clear();
    }
    // pier may leave a child holding the pipes open; stop once pier itself is gone.
    if (!reaped && waitpid(pid, &status, WNOHANG) == pid) {
      reaped = true;
      // Drain what is left without blocking for long.
      for (int i = 0; i < 20 && (out_open || err_open); i++) {
        pollfd d[2] = {{out_open ? out[0] : -1, POLLIN, 0}, {err_open ? err[0] : -1, POLLIN, 0}};
        if (poll(d, 2, 10) <= 0) break;
        for (int j = 0; j < 2; j++) {
          if (!d[j].revents) continue;
          ssize_t k = read(d[j].fd, buf, sizeof buf);
          if (k > 0) {
            if (j == 0 && r.first_output_s < 0) r.first_output_s = seconds_since(t0);
            (j == 0 ? r.out : r.err).append(buf, static_cast<size_t>(k));
            if (j == 0 && run.on_stdout) {
              run.on_stdout(std::string_view(buf, static_cast<size_t>(k)));
            }
          } else {
            (j == 0 ? out_open : err_open) = false;
          }
        }
      }
      break;
    }
  }
  if (!reaped) waitpid(pid, &status, 0);
  r.total_s = seconds_since(t0);
  close(stdin_fd);
  close(out[0]);
  close(err[0]);
  if (WIFEXITED(status))
    r.exit_code = WEXITSTATUS(status);
  else if (WIFSIGNALED(status))
    r.term_signal = WTERMSIG(status);
  return r;
}

PierResult run_bare(const std::string& guest, const std::vector<std::string>& extra,
                    std::chrono::milliseconds timeout) {
  PierRun run;
  run.args = {"run", "--kernel", bare_guest(guest)};
  run.args.insert(run.args.end(), extra.begin(), extra.end());
  run.timeout = timeout;
  return run_pier(run);
}

bool has_line_starting(const std::string& out, const std::string& prefix) {
  size_t pos = 0;
  while (pos <= out.size()) {
    if (out.compare(pos, prefix.size(), prefix) == 0) return true;
    pos = out.find('\n', pos);
    if (pos == std::string::npos) break;
    pos++;
  }
  return false;
}

std::string line_after(const std::string& out, const std::string& prefix) {
  size_t pos = 0;
  while (pos <= out.size()) {
    if (out.compare(pos, prefix.size(), prefix) == 0) {
      size_t end = out.find('\n', pos);
      std::string line =
          out.substr(pos + prefix.size(),
                     end == std::string::npos ? std::string::npos : end - pos - prefix.size());
      while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.pop_back();
      return line;
    }
    pos = out.find('\n', pos);
    if (pos == std::string::npos) break;
    pos++;
  }
  return "";
}

::testing::AssertionResult guest_passed(const PierResult& r, const std::string& name) {
  const std::string pass = "PIER-TEST PASS " + name;
  if (r.timed_out) return ::testing::AssertionFailure() << "pier timed out\n" << r.describe();
  if (r.cancelled) {
    return ::testing::AssertionFailure() << "pier was stopped by the test\n" << r.describe();
  }
  if (has_line_starting(r.out, "PIER-TEST FAIL"))
    return ::testing::AssertionFailure()
           << "guest reported: " << line_after(r.out, "PIER-TEST FAIL") << "\n"
           << r.describe();
  if (!has_line_starting(r.out, pass))
    return ::testing::AssertionFailure() << "no \"" << pass << "\" line\n" << r.describe();
  if (r.exit_code != 0)
    return ::testing::AssertionFailure() << "pier exit code " << r.exit_code << "\n"
                                         << r.describe();
  if (has_line_starting(r.out, "PIER-TEST NOTE"))
    return ::testing::AssertionFailure()
           << "guest noted: " << line_after(r.out, "PIER-TEST NOTE") << "\n"
           << r.describe();
  return ::testing::AssertionSuccess();
}

int connect_unix(const std::string& path, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  do {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) return fd;
    ::close(fd);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  } while (std::chrono::steady_clock::now() < deadline);
  return -1;
}

}  // namespace pier::test
