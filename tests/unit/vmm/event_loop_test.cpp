#include "vmm/event_loop.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace pier
