#pragma once
// The I/O thread's epoll loop. Handlers run on the loop's thread; add/modify/remove/stop/post/call
// are safe from any thread (epoll_ctl is thread-safe; handler tables are locked).
#include <sys/epoll.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

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
  // Runs `fn` as the loop's thread would, and returns when it has run (rethrowing what it threw):
  //  - on the thread inside run()/run_until(), called from there (a handler, a posted function):
  //    at once, inline;
  //  - from another thread while a thread is inside run()/run_until(): posted, and the caller
  //    waits until the loop ran it;
  //  - when no thread is inside run()/run_until() (not started yet, stopped, torn down, a unit
  //    test with no loop thread), or when the loop leaves run() with `fn` still queued: on the
  //    calling thread, while the loop cannot start dispatching (run()/run_until() wait for it).
  // So `fn` never runs concurrently with a handler, a posted function or another call(), and a
  // caller never waits for a loop that has stopped. `fn` must not wait for the caller.
  void call(const std::function<void()>& fn);
  // True on the thread that is inside run()/run_until(), or inside an inline call().
  bool on_loop_thread() const;

  // Dispatches events until stop(). Returns after the iteration that saw stop().
  void run();
  // After run() returned: dispatches events (stop() or not) until done() is true or `deadline`
  // passes; returns done(). For draining output at exit.
  bool run_until(const std::function<bool()>& done, std::chrono::steady_clock::time_point deadline);
  void stop();
  bool stopped() const;

 private:
  struct Call;
  class Dispatching;

  void wake();
  // One round: posted functions, then one epoll_wait of at most timeout_ms (-1: forever).
  void dispatch_once(int timeout_ms);
  void run_posted_call(Call& call);

  UniqueFd epoll_;
  UniqueFd wake_fd_;
  mutable std::mutex mutex_;
  std::unordered_map<int, std::shared_ptr<Handler>> handlers_;
  std::vector<std::function<void()>> posted_;
  bool stop_ = false;
  // Who dispatches: the thread inside run()/run_until() (depth for nesting), or a thread running
  // call() inline while nobody dispatches. Guarded by mutex_; cv_ announces every change, and
  // every finished call().
  std::condition_variable cv_;
  std::thread::id dispatch_thread_;
  unsigned dispatch_depth_ = 0;
  std::thread::id inline_thread_;
};

}  // namespace pier
