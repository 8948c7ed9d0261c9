#include "vmm/event_loop.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <thread>

#include "vmm/fd.hpp"

namespace pier {
namespace {

using namespace std::chrono_literals;

TEST(EventLoop, RunUntilDispatchesAfterStopUntilDoneOrTheDeadline) {
  EventLoop loop;
  UniqueFd fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  ASSERT_TRUE(fd);
  int fired = 0;
  loop.add(fd.get(), EPOLLIN, [&](uint32_t) {
    uint64_t v;
    [[maybe_unused]] ssize_t n = ::read(fd.get(), &v, sizeof v);
    ++fired;
  });
  loop.post([&] { loop.stop(); });
  loop.run();  // returns at once: stopped
  EXPECT_TRUE(loop.stopped());
  EXPECT_EQ(fired, 0);

  // Stopped, and still dispatching: the event and a posted function both run.
  const uint64_t one = 1;
  ASSERT_EQ(::write(fd.get(), &one, sizeof one), 8);
  bool posted_ran = false;
  loop.post([&] { posted_ran = true; });
  EXPECT_TRUE(loop.run_until([&] { return fired == 1 && posted_ran; },
                             std::chrono::steady_clock::now() + 5s));

  // Nothing more comes: false once the deadline passes, not earlier and not much later.
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(loop.run_until([&] { return fired == 2; }, t0 + 200ms));
  const auto waited = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(waited, 200ms);
  EXPECT_LT(waited, 5s);
  loop.remove(fd.get());
}

TEST(EventLoop, CallRunsOnTheLoopThreadAndReturnsWhenDone) {
  EventLoop loop;
  std::thread::id loop_id;
  std::atomic<bool> dispatching{false};
  loop.post([&] { dispatching = true; });
  std::thread io([&] {
    loop_id = std::this_thread::get_id();
    loop.run();
  });
  while (!dispatching) std::this_thread::yield();
  std::thread::id ran_on;
  bool nested_ran = false;
  loop.call([&] {
    ran_on = std::this_thread::get_id();
    EXPECT_TRUE(loop.on_loop_thread());
    // call() from the loop thread itself runs inline instead of waiting for itself.
    loop.call([&] { nested_ran = true; });
  });
  EXPECT_EQ(ran_on, loop_id);
  EXPECT_TRUE(nested_ran);
  EXPECT_FALSE(loop.on_loop_thread());
  EXPECT_THROW(loop.call([] { throw std::runtime_error("boom"); }), std::runtime_error);
  loop.stop();
  io.join();
}

TEST(EventLoop, CallWithNobodyDispatchingRunsOnTheCaller) {
  EventLoop loop;
  std::thread::id ran_on;
  loop.call([&] { ran_on = std::this_thread::get_id(); });
  EXPECT_EQ(ran_on, std::this_thread::get_id());
  // The queued entry it left behind does nothing when the loop runs later.
  int runs = 0;
  loop.call([&] { ++runs; });
  loop.post([&] { loop.stop(); });
  loop.run();
  EXPECT_EQ(runs, 1);
}

// A caller waiting for the loop when the loop stops before getting to it: the caller runs the
// function itself instead of waiting forever (a vCPU writing a register at shutdown).
TEST(EventLoop, CallDoesNotWaitForAStoppedLoop) {
  EventLoop loop;
  std::atomic<bool> loop_busy{false}, caller_waiting{false};
  std::thread io([&] { loop.run(); });
  loop.post([&] {
    loop_busy = true;
    while (!caller_waiting) std::this_thread::yield();
    std::this_thread::sleep_for(50ms);  // the caller is in call() by now
    loop.stop();
  });
  std::thread::id ran_on;
  std::atomic<int> runs{0};
  std::thread caller([&] {
    // Only once the loop runs the function above: a call posted before the loop took that one
    // from the queue would run right after it, on the loop's thread (seen under ASan on a
    // loaded machine, where the loop thread starts late).
    while (!loop_busy) std::this_thread::yield();
    caller_waiting = true;
    loop.call([&] {
      ran_on = std::this_thread::get_id();
      ++runs;
    });
  });
  const auto caller_id = caller.get_id();
  const auto io_id = io.get_id();
  caller.join();  // returns: call() did not wait for the stopped loop
  io.join();
  // Usually the caller is inside call() when the loop stops and runs the work itself; on a loaded
  // machine it may reach call() before the stop and the loop runs it. Once, either way.
  EXPECT_EQ(runs, 1);
  EXPECT_TRUE(ran_on == caller_id || ran_on == io_id);
  // After the loop has stopped for good, call() runs the work on the caller, at once.
  std::thread::id after;
  std::thread late([&] { loop.call([&] { after = std::this_thread::get_id(); }); });
  const auto late_id = late.get_id();
  late.join();
  EXPECT_EQ(after, late_id);
}

// run() does not start dispatching while a call() runs inline on another thread.
TEST(EventLoop, RunWaitsForAnInlineCall) {
  EventLoop loop;
  std::atomic<bool> inline_started{false}, inline_done{false};
  std::thread caller([&] {
    loop.call([&] {
      inline_started = true;
      std::this_thread::sleep_for(100ms);
      inline_done = true;
    });
  });
  while (!inline_started) std::this_thread::yield();
  bool done_when_dispatching = false;
  loop.post([&] {
    done_when_dispatching = inline_done;
    loop.stop();
  });
  loop.run();
  caller.join();
  EXPECT_TRUE(done_when_dispatching);
}

}  // namespace
}  // namespace pier
