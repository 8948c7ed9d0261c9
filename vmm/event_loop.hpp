#pragma once
// The I/O thread's epoll loop. Handlers run on the loop's thread; add/modify/remove/stop are safe
// from any thread (epoll_ctl is thread-safe; handler tables are locked).
#include <sys/epoll.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "vmm/fd.hpp"

namespace pier {

class EventLoop {
 public:
  using Handler = std::function<void(uint32_t events)>;

  EventLoop();

  // Watches `fd` for `events` (EPOLLIN/EPOLLOUT/...). The handler may call modify/remove.
  // Returns false for descriptors epoll cannot watch (regular files, /dev/null: always ready).
  bool add(int fd, uint32_t events, Handler handler);
  void modify(int fd, uint32_t events);
  void remove(int fd);
  // Runs `fn` on the loop thread at the next iteration.
  void post(std::function<void()> fn);

  // Dispatches events until stop(). Returns after the iteration that saw stop().
  void run();
  // After run() returned: dispatches events (stop() or not) until done() is true or `deadline`
  // passes; returns done(). For draining output at exit.
  bool run_until(const std::function<bool()>& done, std::chrono::steady_clock::time_point deadline);
  void stop();
  bool stopped() const;

 private:
  void wake();
  // One round: posted functions, then one epoll_wait of at most timeout_ms (-1: forever).
  void dispatch_once(int timeout_ms);

  UniqueFd epoll_;
  UniqueFd wake_fd_;
  mutable std::mutex mutex_;
  std::unordered_map<int, std::shared_ptr<Handler>> handlers_;
  std::vector<std::function<void()>> posted_;
  bool stop_ = false;
};

}  // namespace pier
