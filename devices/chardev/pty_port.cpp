// What the kernel does with a pty master (measured on 6.x, see the pty tests):
// - Before the slave was ever opened, the master does NOT report EPOLLHUP. start() therefore
//   opens the slave once (to make its termios raw) and closes it; from then on the master
//   reports EPOLLHUP exactly while no one has the slave open.
// - Closing the last slave fd wakes the master (EPOLLHUP): disconnect is event-driven.
// - Opening the slave wakes nothing on the master: epoll cannot see a connect. inotify can:
//   IN_OPEN on /dev/pts/N fires for every open (also TIOCGPTPEER), so connect is event-driven
//   too. Without inotify (no instances left) the master is polled every kPtyPollInterval while
//   disconnected (CH polls at 500 ms); connected ports are never polled.
// - The master stays out of epoll while disconnected (EPOLLHUP is level-triggered and cannot be
//   masked). Nothing is written to it then; bytes written before a close stay in the pty and
//   reach the next opener; bytes the slave wrote before closing are still read (draining).
#include "devices/chardev/pty_port.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <termios.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "devices/chardev/stream_port.hpp"
#include "vmm/error.hpp"
#include "vmm/log.hpp"

namespace pier::chardev {
namespace {

class PtyPort final : public StreamPort {
 public:
  PtyPort(std::string label, PtyDetect detect)
      : StreamPort(Flavor::kPtyMaster), label_(std::move(label)), detect_(detect) {}
  ~PtyPort() override { stop(); }

  void start(EventLoop& loop, Listener& listener) override {
    bind_loop(loop, listener);
    master_.reset(::posix_openpt(O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC));
    if (!master_) throw system_error("cannot open a pty (posix_openpt)");
    if (::grantpt(master_.get()) != 0 || ::unlockpt(master_.get()) != 0) {
      throw system_error("cannot set up a pty (grantpt/unlockpt)");
    }
    std::array<char, 128> name{};
    if (::ptsname_r(master_.get(), name.data(), name.size()) != 0) {
      throw system_error("cannot name the pty (ptsname_r)");
    }
    path_ = name.data();
    make_raw();
    start_detection();
    // Exactly QEMU's line, so tools that scrape it work unchanged.
    if (label_.empty()) {
      fmt::print(stderr, "char device redirected to {}\n", path_);
    } else {
      fmt::print(stderr, "char device redirected to {} (label {})\n", path_, label_);
    }
    std::fflush(stderr);
    if (slave_open()) attach(UniqueFd(), master_.get(), false);
  }

  std::string describe() const override { return "pty " + path_; }
  std::string address() const override { return path_; }

  std::optional<TerminalSize> terminal_size() const override {
    winsize ws{};
    if (!master_ || ::ioctl(master_.get(), TIOCGWINSZ, &ws) != 0) return std::nullopt;
    if (ws.ws_col == 0 && ws.ws_row == 0) return std::nullopt;  // nobody set a size
    return TerminalSize{ws.ws_col, ws.ws_row};
  }

  void stop() override {
    stop_stream();
    timer_.stop();
    if (inotify_registered_) loop_->remove(inotify_.get());
    inotify_registered_ = false;
    inotify_.reset();
    master_.reset();
  }

 private:
  // Raw on the slave side so the guest's bytes pass unchanged both ways (no echo, no CR/LF
  // mapping, no signals). Opening and closing the slave here also makes the master report
  // EPOLLHUP until the first real opener (see the top of the file).
  void make_raw() {
    UniqueFd slave(::open(path_.c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!slave) throw system_error(fmt::format("cannot open {}", path_));
    termios t{};
    if (::tcgetattr(slave.get(), &t) != 0) throw system_error("tcgetattr(pty)");
    ::cfmakeraw(&t);
    if (::tcsetattr(slave.get(), TCSANOW, &t) != 0) throw system_error("tcsetattr(pty)");
  }

  void start_detection() {
    if (detect_ == PtyDetect::kInotify) {
      inotify_.reset(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
      if (inotify_ && ::inotify_add_watch(inotify_.get(), path_.c_str(), IN_OPEN) >= 0) {
        inotify_registered_ =
            loop_->add(inotify_.get(), EPOLLIN, [this](uint32_t) { on_inotify(); });
        return;
      }
      log::debug("{}: inotify unavailable ({}); polling for the slave every {} ms", path_,
                 std::strerror(errno), kPtyPollInterval.count());
      inotify_.reset();
    }
    polling_ = true;
    timer_.start(*loop_, [this] { check_slave(); });
    timer_.arm(kPtyPollInterval, true);
  }

  bool slave_open() const {
    pollfd p{master_.get(), 0, 0};
    return ::poll(&p, 1, 0) == 0 || (p.revents & POLLHUP) == 0;
  }

  void on_inotify() {
    // The events only say "someone opened it"; the master's HUP state says whether it still is.
    alignas(inotify_event) std::array<char, 4096> buf;
    while (::read(inotify_.get(), buf.data(), buf.size()) > 0) {
    }
    check_slave();
  }

  void check_slave() {
    if (attached() || !slave_open()) return;
    if (polling_) timer_.disarm();
    log::debug("{}: slave opened", path_);
    attach(UniqueFd(), master_.get(), true);
  }

  void on_detached() override {
    log::debug("{}: slave closed", path_);
    if (polling_) timer_.arm(kPtyPollInterval, true);
    // An IN_OPEN that arrived while the last peer was still being torn down was ignored.
    check_slave();
  }

  const std::string label_;
  const PtyDetect detect_;
  std::string path_;
  UniqueFd master_;
  UniqueFd inotify_;
  bool inotify_registered_ = false;
  bool polling_ = false;
  PortTimer timer_;
};

}  // namespace

std::unique_ptr<PortBackend> make_pty_port(std::string label, PtyDetect detect) {
  return std::make_unique<PtyPort>(std::move(label), detect);
}

}  // namespace pier::chardev
