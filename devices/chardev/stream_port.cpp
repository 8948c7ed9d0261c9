#include "devices/chardev/stream_port.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>

#include <algorithm>
#include <cerrno>
#include <climits>

#include "vmm/error.hpp"

namespace pier::chardev {
namespace {

int iov_count(std::span<const iovec> iov) {
  // Longer lists are legal input; the kernel takes IOV_MAX at most and a short count is fine.
  return static_cast<int>(std::min<size_t>(iov.size(), IOV_MAX));
}

bool empty_iov(std::span<const iovec> iov) {
  return std::all_of(iov.begin(), iov.end(), [](const iovec& v) { return v.iov_len == 0; });
}

}  // namespace

void PortTimer::start(EventLoop& loop, std::function<void()> on_fire) {
  loop_ = &loop;
  on_fire_ = std::move(on_fire);
  fd_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!fd_) throw system_error("timerfd_create");
  loop_->add(fd_.get(), EPOLLIN, [this](uint32_t) {
    uint64_t expirations;
    if (::read(fd_.get(), &expirations, sizeof(expirations)) != sizeof(expirations)) return;
    on_fire_();
  });
}

void PortTimer::arm(std::chrono::milliseconds delay, bool periodic) {
  if (!fd_) return;
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(delay).count();
  itimerspec spec{};
  spec.it_value.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
  spec.it_value.tv_nsec = static_cast<long>(ns % 1'000'000'000);
  if (spec.it_value.tv_sec == 0 && spec.it_value.tv_nsec == 0) spec.it_value.tv_nsec = 1;
  if (periodic) spec.it_interval = spec.it_value;
  ::timerfd_settime(fd_.get(), 0, &spec, nullptr);
}

void PortTimer::disarm() {
  if (!fd_) return;
  itimerspec spec{};
  ::timerfd_settime(fd_.get(), 0, &spec, nullptr);
}

void PortTimer::stop() {
  if (!fd_) return;
  loop_->remove(fd_.get());
  fd_.reset();
}

void StreamPort::bind_loop(EventLoop& loop, Listener& listener) {
  loop_ = &loop;
  listener_ = &listener;
}

void StreamPort::post(std::function<void()> fn) {
  loop_->post([alive = std::weak_ptr<char>(alive_), fn = std::move(fn)] {
    if (!alive.expired()) fn();
  });
}

void StreamPort::attach(UniqueFd owned, int fd, bool notify) {
  owned_ = std::move(owned);
  fd_ = fd;
  state_ = State::kOpen;
  ++generation_;
  rdhup_seen_ = false;
  input_ended_ = false;
  update_registration();
  if (notify) listener_->on_host_connected(true);
}

void StreamPort::stop_stream() {
  if (registered_) loop_->remove(fd_);
  registered_ = false;
  owned_.reset();
  fd_ = -1;
  state_ = State::kNone;
  ++generation_;
  // Posted teardowns and retries of this backend must not run any more.
  alive_ = std::make_shared<char>();
}

void StreamPort::update_registration() {
  bool want_registered = false;
  uint32_t events = 0;
  switch (state_) {
    case State::kOpen:
      // Registered for as long as the peer is attached, whatever the device wants: hangups
      // must be seen even while the device reads and writes nothing.
      want_registered = true;
      if (flavor_ != Flavor::kPtyMaster && !rdhup_seen_) events |= EPOLLRDHUP;
      if (want_in_ && !input_ended_) events |= EPOLLIN;
      if (want_out_) events |= EPOLLOUT;
      break;
    case State::kDraining:
      // The fd reports EPOLLHUP for good (it cannot be masked): stay out of epoll while the
      // device is not reading, or the loop would spin on it.
      want_registered = want_in_;
      events = EPOLLIN;
      break;
    case State::kNone:
    case State::kGone:
      break;
  }
  if (want_registered && !registered_) {
    const uint64_t generation = generation_;
    registered_ =
        loop_->add(fd_, events, [this, generation](uint32_t ev) { on_fd_event(generation, ev); });
    registered_events_ = events;
  } else if (want_registered && events != registered_events_) {
    loop_->modify(fd_, events);
    registered_events_ = events;
  } else if (!want_registered && registered_) {
    loop_->remove(fd_);
    registered_ = false;
  }
}

void StreamPort::on_fd_event(uint64_t generation, uint32_t events) {
  if (generation != generation_) return;
  const std::weak_ptr<char> alive = alive_;
  if (state_ == State::kOpen) {
    if (events & EPOLLERR) {
      // A unix client that closes with our bytes still unread in its own queue leaves
      // ECONNRESET on this socket, but what it sent before closing is still queued here and the
      // kernel hands it out before the error: drain it, exactly as for a hangup.
      peer_gone(true);
      return;
    }
    if (events & EPOLLHUP) {
      peer_gone(true);
    } else if (events & EPOLLRDHUP) {
      if (flavor_ == Flavor::kTcpSocket) {
        peer_gone(true);
      } else {
        // Half-close: the rest of its bytes and then end of input come through readv.
        rdhup_seen_ = true;
        update_registration();
      }
    }
    // A detach notifies the device and may attach the next peer at once (a waiting pty
    // opener): these event bits were for the old one.
    if (alive.expired() || generation != generation_) return;
  }
  if (state_ == State::kDraining) {
    if (want_in_) listener_->on_readable();
    return;
  }
  if (state_ != State::kOpen) return;
  if ((events & EPOLLIN) && want_in_ && !input_ended_) {
    listener_->on_readable();
    if (alive.expired() || generation != generation_ || state_ != State::kOpen) return;
  }
  if ((events & EPOLLOUT) && want_out_) listener_->on_writable();
}

size_t StreamPort::pending_input() const {
  int n = 0;
  if (::ioctl(fd_, FIONREAD, &n) != 0) return 0;
  return n > 0 ? static_cast<size_t>(n) : 0;
}

bool StreamPort::hangup_now() const {
  pollfd p{fd_, 0, 0};
  if (::poll(&p, 1, 0) < 0) return true;
  return (p.revents & (POLLHUP | POLLERR)) != 0;
}

void StreamPort::peer_gone(bool from_loop) {
  if (!input_ended_ && pending_input() > 0) {
    state_ = State::kDraining;
    update_registration();
    return;
  }
  detach(from_loop);
}

void StreamPort::detach(bool from_loop) {
  if (registered_) loop_->remove(fd_);
  registered_ = false;
  state_ = State::kGone;
  if (from_loop) {
    finish_detach();
    return;
  }
  const uint64_t generation = generation_;
  post([this, generation] {
    if (generation == generation_ && state_ == State::kGone) finish_detach();
  });
}

void StreamPort::finish_detach() {
  owned_.reset();
  fd_ = -1;
  state_ = State::kNone;
  ++generation_;
  const std::weak_ptr<char> alive = alive_;
  listener_->on_host_connected(false);
  if (!alive.expired()) on_detached();
}

ssize_t StreamPort::readv(std::span<const iovec> iov) {
  if (state_ != State::kOpen && state_ != State::kDraining) return -1;
  if (state_ == State::kOpen && input_ended_) return 0;
  if (empty_iov(iov)) return 0;
  while (true) {
    const ssize_t n = ::readv(fd_, iov.data(), iov_count(iov));
    if (n > 0) return n;
    if (n < 0 && errno == EINTR) continue;
    const bool would_block = (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) ||
                             (n == 0 && flavor_ == Flavor::kPtyMaster);
    if (would_block) {
      if (state_ == State::kOpen) return 0;
      // Draining a pty and nothing left: either the slave is still closed (done) or someone
      // opened it again meanwhile, and then the peer simply never left.
      if (flavor_ == Flavor::kPtyMaster && !hangup_now()) {
        state_ = State::kOpen;
        update_registration();
        return 0;
      }
      detach(false);
      return -1;
    }
    if (n == 0 && flavor_ == Flavor::kUnixSocket && state_ == State::kOpen && !hangup_now()) {
      // Half-close: no more input, but the client is still there to read the guest's reply.
      input_ended_ = true;
      rdhup_seen_ = true;
      update_registration();
      return 0;
    }
    // End of input from a closed peer, EIO from a pty whose slave closed, ECONNRESET, ...
    detach(false);
    return -1;
  }
}

ssize_t StreamPort::writev(std::span<const iovec> iov) {
  if (state_ != State::kOpen) return -1;
  if (empty_iov(iov)) return 0;
  while (true) {
    ssize_t n;
    if (flavor_ == Flavor::kPtyMaster) {
      n = ::writev(fd_, iov.data(), iov_count(iov));
    } else {
      // sendmsg for MSG_NOSIGNAL: a peer that went away must not SIGPIPE the VMM.
      msghdr msg{};
      msg.msg_iov = const_cast<iovec*>(iov.data());
      msg.msg_iovlen = static_cast<size_t>(iov_count(iov));
      n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    // EPIPE/ECONNRESET: the peer is gone for output; what it sent before is still delivered.
    peer_gone(false);
    return -1;
  }
}

void StreamPort::want_input(bool on) {
  want_in_ = on;
  if (state_ == State::kOpen || state_ == State::kDraining) update_registration();
}

void StreamPort::want_output(bool on) {
  want_out_ = on;
  if (state_ == State::kOpen) update_registration();
}

}  // namespace pier::chardev
