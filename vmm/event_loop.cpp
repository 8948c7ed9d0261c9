#include "vmm/event_loop.hpp"

#include <sys/eventfd.h>

#include <array>
#include <exception>

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

struct EventLoop::Call {
  enum class State { kPending, kRunning, kDone, kTaken };
  const std::function<void()>* fn;
  State state = State::kPending;
  std::exception_ptr error;
};

// Marks the calling thread as the one dispatching for the scope of run()/run_until(), after
// any inline call() has finished; wakes callers waiting for the loop when it leaves.
class EventLoop::Dispatching {
 public:
  explicit Dispatching(EventLoop& loop) : loop_(loop) {
    const auto me = std::this_thread::get_id();
    std::unique_lock lock(loop_.mutex_);
    loop_.cv_.wait(lock, [&] {
      return loop_.inline_thread_ == std::thread::id() || loop_.inline_thread_ == me;
    });
    if (loop_.dispatch_depth_++ == 0) loop_.dispatch_thread_ = me;
  }
  ~Dispatching() {
    {
      std::lock_guard lock(loop_.mutex_);
      if (--loop_.dispatch_depth_ == 0) loop_.dispatch_thread_ = std::thread::id();
    }
    loop_.cv_.notify_all();
  }
  Dispatching(const Dispatching&) = delete;
  Dispatching& operator=(const Dispatching&) = delete;

 private:
  EventLoop& loop_;
};

bool EventLoop::on_loop_thread() const {
  const auto me = std::this_thread::get_id();
  std::lock_guard lock(mutex_);
  return (dispatch_depth_ > 0 && dispatch_thread_ == me) || inline_thread_ == me;
}

void EventLoop::call(const std::function<void()>& fn) {
  const auto me = std::this_thread::get_id();
  std::unique_lock lock(mutex_);
  if ((dispatch_depth_ > 0 && dispatch_thread_ == me) || inline_thread_ == me) {
    lock.unlock();
    fn();
    return;
  }
  // Queued even when nobody dispatches now: a loop that starts meanwhile runs it, else this
  // thread takes it back below (the queued entry then finds it taken and does nothing).
  auto call = std::make_shared<Call>();
  call->fn = &fn;
  posted_.push_back([this, call] { run_posted_call(*call); });
  lock.unlock();
  wake();
  lock.lock();
  for (;;) {
    if (call->state == Call::State::kDone) break;
    if (call->state == Call::State::kPending && dispatch_depth_ == 0 &&
        inline_thread_ == std::thread::id()) {
      call->state = Call::State::kTaken;
      inline_thread_ = me;
      lock.unlock();
      try {
        fn();
      } catch (...) {
        call->error = std::current_exception();
      }
      lock.lock();
      inline_thread_ = std::thread::id();
      cv_.notify_all();
      break;
    }
    cv_.wait(lock);
  }
  if (call->error) std::rethrow_exception(call->error);
}

void EventLoop::run_posted_call(Call& call) {
  {
    std::lock_guard lock(mutex_);
    if (call.state != Call::State::kPending) return;  // taken back by its caller
    call.state = Call::State::kRunning;
  }
  try {
    (*call.fn)();
  } catch (...) {
    call.error = std::current_exception();
  }
  {
    std::lock_guard lock(mutex_);
    call.state = Call::State::kDone;
  }
  cv_.notify_all();
}

void EventLoop::run() {
  Dispatching dispatching(*this);
  while (!stopped()) dispatch_once(-1);
}

bool EventLoop::run_until(const std::function<bool()>& done,
                          std::chrono::steady_clock::time_point deadline) {
  Dispatching dispatching(*this);
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
