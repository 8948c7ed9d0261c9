#include "vmm/event_loop.hpp"

#include <sys/eventfd.h>

#include <array>

#include "vmm/error.hpp"

namespace pier {

EventLoop::EventLoop() {
  epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_) throw system_error("epoll_create1");
  wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_fd_) throw system_error("eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = wake_fd_.get();
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_fd_.get(), &ev) != 0) {
    throw system_error("epoll_ctl(eventfd)");
  }
}

bool EventLoop::add(int fd, uint32_t events, Handler handler) {
  {
    std::lock_guard lock(mutex_);
    handlers_[fd] = std::make_shared<Handler>(std::move(handler));
  }
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
    const int err = errno;
    std::lock_guard lock(mutex_);
    handlers_.erase(fd);
    if (err == EPERM) return false;
    throw system_error("epoll_ctl(ADD)", err);
  }
  return true;
}

void EventLoop::modify(int fd, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev);
}

void EventLoop::remove(int fd) {
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  std::lock_guard lock(mutex_);
  handlers_.erase(fd);
}

void EventLoop::post(std::function<void()> fn) {
  {
    std::lock_guard lock(mutex_);
    posted_.push_back(std::move(fn));
  }
  wake();
}

void EventLoop::wake() {
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_fd_.get(), &one, sizeof(one));
}

void EventLoop::stop() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake();
}

bool EventLoop::stopped() const {
  std::lock_guard lock(mutex_);
  return stop_;
}

void EventLoop::run() {
  while (!stopped()) dispatch_once(-1);
}

bool EventLoop::run_until(const std::function<bool()>& done,
                          std::chrono::steady_clock::time_point deadline) {
  while (!done()) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return false;
    // Rounded up: epoll_wait's millisecond must not wake it just before the deadline.
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now);
    dispatch_once(static_cast<int>(std::min<int64_t>(left.count(), 50)));
  }
  return true;
}

void EventLoop::dispatch_once(int timeout_ms) {
  std::array<epoll_event, 32> events;
  std::vector<std::function<void()>> posted;
  {
    std::lock_guard lock(mutex_);
    posted.swap(posted_);
  }
  for (auto& fn : posted) fn();

  const int n =
      ::epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()), timeout_ms);
  if (n < 0) {
    if (errno == EINTR) return;
    throw system_error("epoll_wait");
  }
  for (int i = 0; i < n; ++i) {
    const int fd = events[i].data.fd;
    if (fd == wake_fd_.get()) {
      uint64_t value;
      [[maybe_unused]] ssize_t r = ::read(fd, &value, sizeof(value));
      continue;
    }
    std::shared_ptr<Handler> handler;
    {
      std::lock_guard lock(mutex_);
      auto it = handlers_.find(fd);
      if (it != handlers_.end()) handler = it->second;
    }
    if (handler) (*handler)(events[i].events);
  }
}

}  // namespace pier
