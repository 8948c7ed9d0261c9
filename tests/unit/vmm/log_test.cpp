// The logger after never_block_on_stderr(): a stderr nobody reads never stops the thread that
// logs; held lines come out whole and in order, and the ones beyond the limit are counted.
// Each case runs in a forked child whose stderr is a pipe the parent controls.
#include "vmm/log.hpp"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <sstream>
#include <string>

namespace pier::log {
namespace {

constexpr int kLines = 20000;  // ~100 bytes each: 2 MB, far beyond a pipe and the pending limit

void log_numbered_lines() {
  for (int i = 0; i < kLines; ++i) warn("line {:06} {:-<80}", i, "");
}

// Waits up to `seconds` for the child; kills it when it does not exit. Its exit code, or -1.
int wait_child(pid_t pid, int seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    ::usleep(10000);
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string read_all(int fd) {
  std::string out;
  char buf[65536];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  return out;
}

// The numbers of the "line N" lines, checking that every line is whole; the drop count line's
// number in `dropped` (0 if none).
std::vector<int> numbered_lines(const std::string& text, uint64_t& dropped) {
  std::vector<int> numbers;
  std::istringstream in(text);
  dropped = 0;
  for (std::string line; std::getline(in, line);) {
    const size_t at = line.find("warn: line ");
    if (at != std::string::npos) {
      EXPECT_EQ(line.size(), at + 11 + 6 + 1 + 80) << "a line cut short: " << line;
      numbers.push_back(std::stoi(line.substr(at + 11, 6)));
    } else if (const size_t d = line.find("warn: "); d != std::string::npos) {
      EXPECT_NE(line.find("log line(s) dropped"), std::string::npos) << line;
      dropped = std::stoull(line.substr(d + 6));
    } else {
      ADD_FAILURE() << "unexpected line: " << line;
    }
  }
  return numbers;
}

TEST(LogNeverBlocks, AStderrNobodyReadsDoesNotStopTheThreadThatLogs) {
  int err[2];
  ASSERT_EQ(::pipe(err), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::dup2(err[1], STDERR_FILENO);
    ::close(err[0]);
    never_block_on_stderr();
    log_numbered_lines();  // blocked forever at the pipe's 64 KiB with a blocking stderr
    ::_exit(lines_dropped() > 0 ? 0 : 3);
  }
  ::close(err[1]);
  EXPECT_EQ(wait_child(pid, 20), 0) << "the child stopped in a log write (killed after 20 s)";
  uint64_t dropped = 0;
  std::string text = read_all(err[0]);
  ::close(err[0]);
  // The child exits without drain(): the line the full pipe took only part of stays cut.
  text.erase(text.rfind('\n') + 1);
  const auto numbers = numbered_lines(text, dropped);
  ASSERT_FALSE(numbers.empty());
  for (size_t i = 0; i < numbers.size(); ++i) ASSERT_EQ(numbers[i], static_cast<int>(i));
}

TEST(LogNeverBlocks, HeldLinesComeOutInOrderThenHowManyWereDropped) {
  int err[2], ready[2];
  ASSERT_EQ(::pipe(err), 0);
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::dup2(err[1], STDERR_FILENO);
    ::close(err[0]);
    ::close(ready[0]);
    never_block_on_stderr();
    log_numbered_lines();
    const char done = 'x';
    [[maybe_unused]] ssize_t n = ::write(ready[1], &done, 1);
    drain(std::chrono::seconds(10));  // the parent reads now
    ::_exit(0);
  }
  ::close(err[1]);
  ::close(ready[1]);
  pollfd p{ready[0], POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 20000), 1) << "the child stopped in a log write";
  const std::string text = read_all(err[0]);
  EXPECT_EQ(wait_child(pid, 20), 0);
  ::close(err[0]);
  ::close(ready[0]);
  uint64_t dropped = 0;
  const auto numbers = numbered_lines(text, dropped);
  // What the pipe took plus what waited (about 64 KiB + 1 MiB), from line 0 on with no gap; the
  // rest counted, none lost without a count.
  ASSERT_FALSE(numbers.empty());
  for (size_t i = 0; i < numbers.size(); ++i) ASSERT_EQ(numbers[i], static_cast<int>(i));
  EXPECT_GE(text.size(), kPendingLimit);
  EXPECT_GT(dropped, 0u);
  EXPECT_EQ(numbers.size() + dropped, static_cast<uint64_t>(kLines));
}

}  // namespace
}  // namespace pier::log
