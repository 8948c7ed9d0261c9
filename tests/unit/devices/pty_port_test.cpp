// The pty port backend: QEMU's message, connect/disconnect detection when a test opens and
// closes the slave (inotify and polling), raw bytes both ways, draining, backpressure.
#include "devices/chardev/pty_port.hpp"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/ioctl.h>

#include <regex>

#include "port_test_util.hpp"

namespace pier::chardev {
namespace {

using namespace std::chrono_literals;
using port_test::Harness;
using port_test::read_n;
using port_test::readable_within;

UniqueFd open_slave(const std::string& path) {
  return UniqueFd(::open(path.c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC));
}

void write_slave(int fd, const std::string& data) {
  ASSERT_EQ(::write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
}

class PtyPort : public ::testing::TestWithParam<PtyDetect> {
 protected:
  // Starts the backend and returns the slave path parsed from the stderr line.
  std::string start(Harness& h) {
    ::testing::internal::CaptureStderr();
    h.start();
    const std::string printed = ::testing::internal::GetCapturedStderr();
    std::smatch m;
    EXPECT_TRUE(std::regex_match(printed, m,
                                 std::regex("char device redirected to (/dev/pts/[0-9]+) "
                                            "\\(label con0\\)\n")))
        << printed;
    const std::string path = m.size() > 1 ? m[1].str() : std::string();
    EXPECT_EQ(h.thread.call([&] { return h.backend->address(); }), path);
    EXPECT_EQ(h.thread.call([&] { return h.backend->describe(); }), "pty " + path);
    return path;
  }
  // Time from the slave's open to on_host_connected(true).
  std::chrono::milliseconds connect_latency(Harness& h, const std::string& path, UniqueFd& slave,
                                            const std::vector<std::string>& expected) {
    const auto t0 = std::chrono::steady_clock::now();
    slave = open_slave(path);
    EXPECT_TRUE(slave);
    EXPECT_TRUE(h.recorder.wait_events(expected));
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                 t0);
  }
};

TEST_P(PtyPort, PrintsThePathAndFollowsTheSlaveOpeningAndClosing) {
  Harness h(make_pty_port("con0", GetParam()));
  const std::string path = start(h);
  ASSERT_FALSE(path.empty());
  EXPECT_FALSE(h.connected()) << "nobody has the slave open";
  EXPECT_EQ(h.write("x"), -1);
  EXPECT_FALSE(h.recorder.wait([&] { return h.recorder.events_unlocked() > 0; }, 150ms));

  UniqueFd slave;
  const auto first = connect_latency(h, path, slave, {"up"});
  const auto t0 = std::chrono::steady_clock::now();
  slave.reset();
  ASSERT_TRUE(h.recorder.wait_events({"up", "down"}));
  const auto close_latency =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  const auto second = connect_latency(h, path, slave, {"up", "down", "up"});
  std::printf("[ latency  ] %s: open -> up %lld ms and %lld ms, close -> down %lld ms\n",
              GetParam() == PtyDetect::kInotify ? "inotify" : "poll",
              static_cast<long long>(first.count()), static_cast<long long>(second.count()),
              static_cast<long long>(close_latency.count()));
  // Generous bounds for a loaded machine; the printed figures are the measurement.
  const auto bound = GetParam() == PtyDetect::kInotify ? 90ms : kPtyPollInterval + 400ms;
  EXPECT_LE(first, bound);
  EXPECT_LE(second, bound);
  EXPECT_LE(close_latency, 90ms) << "close is an epoll event in both modes";
}

TEST_P(PtyPort, BytesPassUnchangedBothWays) {
  Harness h(make_pty_port("con0", GetParam()));
  const std::string path = start(h);
  h.want_input(true);
  UniqueFd slave;
  connect_latency(h, path, slave, {"up"});
  const std::string to_guest = "a\r\nb\x03\x1a\x7f";
  write_slave(slave.get(), to_guest);
  EXPECT_TRUE(h.recorder.wait_received(to_guest)) << "no CR/LF mapping, no signals";
  const std::string to_host = "x\ny\r\x04";
  EXPECT_EQ(h.write(to_host), static_cast<ssize_t>(to_host.size()));
  EXPECT_EQ(read_n(slave.get(), to_host.size()), to_host) << "no ONLCR";
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(h.recorder.received(), to_guest) << "no echo of the guest's own bytes";
}

TEST_P(PtyPort, WhatTheSlaveTypedBeforeClosingIsDeliveredFirst) {
  Harness h(make_pty_port("con0", GetParam()));
  const std::string path = start(h);
  UniqueFd slave;
  connect_latency(h, path, slave, {"up"});
  write_slave(slave.get(), "typed then gone");
  slave.reset();
  EXPECT_FALSE(h.recorder.wait([&] { return h.recorder.events_unlocked() > 1; }, 200ms))
      << "connected until the device has read the bytes";
  EXPECT_EQ(h.write("x"), -1) << "output waits for the next opener";
  h.want_input(true);
  EXPECT_TRUE(h.recorder.wait_received("typed then gone"));
  EXPECT_TRUE(h.recorder.wait_events({"up", "down"}));
  EXPECT_FALSE(h.recorder.reentrant());
  // And the next opener is seen.
  connect_latency(h, path, slave, {"up", "down", "up"});
}

TEST_P(PtyPort, BackpressureWhenTheSlaveDoesNotRead) {
  Harness h(make_pty_port("con0", GetParam()));
  const std::string path = start(h);
  UniqueFd slave;
  connect_latency(h, path, slave, {"up"});
  std::string sent;
  const std::string chunk(4096, 'q');
  // A pty has two buffers: after a short write the kernel's flip-buffer worker still moves
  // bytes on to the slave's line discipline, and the master takes a little more. Full means
  // nothing is taken for a while.
  int zero_in_a_row = 0;
  for (int i = 0; i < 2000 && zero_in_a_row < 5; ++i) {
    const ssize_t n = h.write(chunk);
    ASSERT_GE(n, 0);
    sent.append(chunk, 0, static_cast<size_t>(n));
    zero_in_a_row = n == 0 ? zero_in_a_row + 1 : 0;
    if (n < static_cast<ssize_t>(chunk.size())) std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(zero_in_a_row, 5) << "the pty never filled up";
  h.want_output(true);
  EXPECT_FALSE(h.recorder.wait([&] { return h.recorder.writable_unlocked() > 0; }, 200ms));
  EXPECT_EQ(read_n(slave.get(), sent.size()).size(), sent.size());
  EXPECT_TRUE(h.recorder.wait([&] { return h.recorder.writable_unlocked() > 0; }));
}

TEST_P(PtyPort, OutputUnreadAtCloseReachesTheNextOpener) {
  Harness h(make_pty_port("con0", GetParam()));
  const std::string path = start(h);
  UniqueFd slave;
  connect_latency(h, path, slave, {"up"});
  EXPECT_EQ(h.write("kept for later"), 14);
  slave.reset();
  ASSERT_TRUE(h.recorder.wait_events({"up", "down"}));
  connect_latency(h, path, slave, {"up", "down", "up"});
  EXPECT_EQ(read_n(slave.get(), 14), "kept for later");
}

TEST_P(PtyPort, TerminalSizeIsWhatTheSlaveSet) {
  Harness h(make_pty_port("con0", GetParam()));
  const std::string path = start(h);
  EXPECT_FALSE(h.thread.call([&] { return h.backend->terminal_size(); }).has_value());
  UniqueFd slave = open_slave(path);
  winsize ws{};
  ws.ws_col = 132;
  ws.ws_row = 43;
  ASSERT_EQ(::ioctl(slave.get(), TIOCSWINSZ, &ws), 0);
  const auto size = h.thread.call([&] { return h.backend->terminal_size(); });
  ASSERT_TRUE(size.has_value());
  EXPECT_EQ(size->cols, 132);
  EXPECT_EQ(size->rows, 43);
}

TEST_P(PtyPort, ShortOpenAndCloseGivesOrderedEvents) {
  Harness h(make_pty_port("con0", GetParam()));
  const std::string path = start(h);
  for (int i = 0; i < 5; ++i) {
    UniqueFd slave;
    std::vector<std::string> expected = h.recorder.events();
    expected.push_back("up");
    connect_latency(h, path, slave, expected);
    slave.reset();
    expected.push_back("down");
    ASSERT_TRUE(h.recorder.wait_events(expected));
  }
}

INSTANTIATE_TEST_SUITE_P(Detect, PtyPort, ::testing::Values(PtyDetect::kInotify, PtyDetect::kPoll),
                         [](const auto& info) {
                           return info.param == PtyDetect::kInotify ? "Inotify" : "Poll";
                         });

TEST(PtyPortLabel, WithoutALabelTheMessageHasNone) {
  Harness h(make_pty_port(""));
  ::testing::internal::CaptureStderr();
  h.start();
  const std::string printed = ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(std::regex_match(printed, std::regex("char device redirected to /dev/pts/[0-9]+\n")))
      << printed;
}

TEST(PtyPortLabel, FactoryPassesTheLabel) {
  Harness h(make_port_backend(parse_port_backend("pty"), {"org.pier.log", {}}));
  ::testing::internal::CaptureStderr();
  h.start();
  const std::string printed = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(printed, ::testing::EndsWith(" (label org.pier.log)\n"));
}

}  // namespace
}  // namespace pier::chardev
