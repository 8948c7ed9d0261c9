// Unix and TCP socket port backends against real sockets (loopback only), the loop on a thread.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <tuple>

#include "devices/chardev/port_backend.hpp"
#include "port_test_util.hpp"
#include "vmm/error.hpp"

namespace pier::chardev {
namespace {

using namespace std::chrono_literals;
using port_test::accept_within;
using port_test::Harness;
using port_test::read_n;
using port_test::readable_within;
using port_test::send_all;
using port_test::TempDir;
using port_test::unix_connect;
using port_test::unix_listen;
using ::testing::HasSubstr;

std::unique_ptr<PortBackend> backend_for(const std::string& spec) {
  return make_port_backend(parse_port_backend(spec));
}

std::string start_error(Harness& h) {
  try {
    h.start();
  } catch (const Error& e) {
    return e.what();
  }
  return "(started)";
}

// Fills the peer's receive buffer: writes until the backend takes less than offered.
size_t fill(Harness& h, std::string& sent) {
  const std::string chunk(65536, 'z');
  size_t total = 0;
  for (int i = 0; i < 1000; ++i) {
    std::string block = chunk;
    for (size_t j = 0; j < block.size(); j += 997) block[j] = static_cast<char>('a' + (i + j) % 26);
    const ssize_t n = h.write(block);
    EXPECT_GE(n, 0);
    if (n <= 0) break;
    sent.append(block, 0, static_cast<size_t>(n));
    total += static_cast<size_t>(n);
    if (static_cast<size_t>(n) < block.size()) break;
  }
  return total;
}

class UnixListen : public ::testing::Test {
 protected:
  TempDir dir;
  std::string path = dir.file("con.sock");
};

TEST_F(UnixListen, ConnectDisconnectReconnectInOrder) {
  Harness h(backend_for("socket=" + path));
  h.start();
  EXPECT_FALSE(h.connected());
  EXPECT_EQ(h.write("x"), -1) << "no peer";
  std::string in;
  EXPECT_EQ(h.read(in), -1) << "no peer";

  UniqueFd a = unix_connect(path);
  ASSERT_TRUE(a);
  ASSERT_TRUE(h.recorder.wait_events({"up"}));
  EXPECT_TRUE(h.connected());
  a.reset();
  ASSERT_TRUE(h.recorder.wait_events({"up", "down"}));
  EXPECT_FALSE(h.connected());
  UniqueFd b = unix_connect(path);
  ASSERT_TRUE(b);
  ASSERT_TRUE(h.recorder.wait_events({"up", "down", "up"}));
  EXPECT_EQ(h.thread.call([&] { return h.backend->describe(); }),
            "socket=" + path + " (listening)");
  EXPECT_EQ(h.thread.call([&] { return h.backend->address(); }), path);
}

TEST_F(UnixListen, DataBothWays) {
  Harness h(backend_for("socket=" + path));
  h.start();
  h.want_input(true);
  UniqueFd c = unix_connect(path);
  ASSERT_TRUE(h.recorder.wait_events({"up"}));
  send_all(c.get(), "hello guest");
  EXPECT_TRUE(h.recorder.wait_received("hello guest"));
  EXPECT_EQ(h.write("hello host"), 10);
  EXPECT_EQ(read_n(c.get(), 10), "hello host");
  // A scattered write arrives as one stream.
  const std::string a = "abc", b = "defg";
  const ssize_t n = h.thread.call([&] {
    iovec v[2] = {{const_cast<char*>(a.data()), a.size()}, {const_cast<char*>(b.data()), b.size()}};
    return h.backend->writev(std::span(v, 2));
  });
  EXPECT_EQ(n, 7);
  EXPECT_EQ(read_n(c.get(), 7), "abcdefg");
}

TEST_F(UnixListen, SecondClientWaitsItsTurnAndKeepsItsBytes) {
  Harness h(backend_for("socket=" + path));
  h.start();
  h.want_input(true);
  UniqueFd a = unix_connect(path);
  ASSERT_TRUE(h.recorder.wait_events({"up"}));
  // B's connect succeeds (it sits in the backlog) and what it sends is queued, not read.
  UniqueFd b = unix_connect(path);
  ASSERT_TRUE(b);
  send_all(b.get(), "from-b");
  send_all(a.get(), "from-a");
  EXPECT_TRUE(h.recorder.wait_received("from-a"));
  EXPECT_EQ(h.write("to-a"), 4);
  EXPECT_EQ(read_n(a.get(), 4), "to-a");
  EXPECT_FALSE(readable_within(b.get(), 200ms)) << "output goes to the current client only";
  EXPECT_EQ(h.recorder.received(), "from-a");
  EXPECT_EQ(h.recorder.events(), std::vector<std::string>{"up"});

  a.reset();
  ASSERT_TRUE(h.recorder.wait_events({"up", "down", "up"}));
  EXPECT_TRUE(h.recorder.wait_received("from-afrom-b"));
  EXPECT_EQ(h.write("to-b"), 4);
  EXPECT_EQ(read_n(b.get(), 4), "to-b");
  EXPECT_FALSE(h.recorder.reentrant());
}

TEST_F(UnixListen, WaitingClientThatGaveUpIsSkippedSilently) {
  Harness h(backend_for("socket=" + path));
  h.start();
  UniqueFd a = unix_connect(path);
  ASSERT_TRUE(h.recorder.wait_events({"up"}));
  UniqueFd gone = unix_connect(path);
  ASSERT_TRUE(gone);
  gone.reset();
  a.reset();
  ASSERT_TRUE(h.recorder.wait_events({"up", "down"}));
  EXPECT_FALSE(h.recorder.wait([&] { return h.recorder.events_unlocked() > 2; }, 300ms))
      << "no up/down blip for a client that left before its turn";
  UniqueFd c = unix_connect(path);
  EXPECT_TRUE(h.recorder.wait_events({"up", "down", "up"}));
}

TEST_F(UnixListen, PartialWritesThenOnWritableAfterThePeerDrains) {
  Harness h(backend_for("socket=" + path));
  h.start();
  UniqueFd c = unix_connect(path);
  ASSERT_TRUE(h.recorder.wait_events({"up"}));
  std::string sent;
  const size_t total = fill(h, sent);
  ASSERT_GT(total, 0u);
  EXPECT_EQ(h.write("more"), 0) << "full: takes nothing, peer still connected";
  EXPECT_TRUE(h.connected());
  h.want_output(true);
  EXPECT_FALSE(h.recorder.wait([&] { return h.recorder.writable_unlocked() > 0; }, 200ms))
      << "no on_writable while the peer does not read";
  const std::string got = read_n(c.get(), total);
  EXPECT_EQ(got.size(), total);
  EXPECT_TRUE(got == sent) << "bytes arrive intact and in order";
  EXPECT_TRUE(h.recorder.wait([&] { return h.recorder.writable_unlocked() > 0; }));
  h.want_output(false);
  EXPECT_GT(h.write("more"), 0);
}

TEST_F(UnixListen, BytesSentBeforeHangupAreDeliveredThenDisconnect) {
  Harness h(backend_for("socket=" + path));
  h.start();
  UniqueFd c = unix_connect(path);
  ASSERT_TRUE(h.recorder.wait_events({"up"}));
  send_all(c.get(), "last words");
  c.reset();
  // The device is not reading (no guest buffers): the port stays connected with the bytes.
  EXPECT_FALSE(h.recorder.wait([&] { return h.recorder.events_unlocked() > 1; }, 200ms));
  EXPECT_TRUE(h.connected());
  EXPECT_EQ(h.write("x"), -1) << "output waits for the next peer";
  h.want_input(true);
  EXPECT_TRUE(h.recorder.wait_received("last words"));
  EXPECT_TRUE(h.recorder.wait_events({"up", "down"}));
  EXPECT_FALSE(h.connected());
  EXPECT_FALSE(h.recorder.reentrant()) << "readv never calls the listener";
}

TEST_F(UnixListen, HalfCloseEndsInputButKeepsTheReplyPath) {
  Harness h(backend_for("socket=" + path));
  h.start();
  h.want_input(true);
  UniqueFd c = unix_connect(path);
  ASSERT_TRUE(h.recorder.wait_events({"up"}));
  send_all(c.get(), "request");
  ASSERT_EQ(::shutdown(c.get(), SHUT_WR), 0);
  EXPECT_TRUE(h.recorder.wait_received("request"));
  EXPECT_FALSE(h.recorder.wait([&] { return h.recorder.events_unlocked() > 1; }, 200ms));
  std::string in;
  EXPECT_EQ(h.read(in), 0) << "input has ended, but the peer is still there";
  EXPECT_EQ(h.write("reply"), 5);
  EXPECT_EQ(read_n(c.get(), 5), "reply");
  const int readable_before = h.recorder.readable();
  std::this_thread::sleep_for(100ms);
  EXPECT_LE(h.recorder.readable() - readable_before, 1) << "no spinning on end of input";
  c.reset();
  EXPECT_TRUE(h.recorder.wait_events({"up", "down"}));
}

TEST_F(UnixListen, PeerGoneFoundByWriteIsReportedFromTheLoop) {
  Harness h(backend_for("socket=" + path));
  h.start();
  UniqueFd c = unix_connect(path);
  ASSERT_TRUE(h.recorder.wait_events({"up"}));
  // Close and write before the loop has seen the hangup: all inside one loop call.
  const auto [first, second, connected_after] = h.thread.call([&] {
    c.reset();
    const char x = 'x';
    iovec v{const_cast<char*>(&x), 1};
    const ssize_t r1 = h.backend->writev(std::span(&v, 1));
    const ssize_t r2 = h.backend->writev(std::span(&v, 1));
    return std::tuple(r1, r2, h.backend->host_connected());
  });
  EXPECT_EQ(first, -1);
  EXPECT_EQ(second, -1);
  EXPECT_FALSE(connected_after);
  EXPECT_TRUE(h.recorder.wait_events({"up", "down"}));
  EXPECT_FALSE(h.recorder.wait([&] { return h.recorder.events_unlocked() > 2; }, 100ms));
}

TEST_F(UnixListen, StaleSocketFileIsReplaced) {
  {
    // A socket file whose listener died: bound, then closed.
    UniqueFd dead = unix_listen(path);
    ASSERT_TRUE(dead);
  }
  ASSERT_TRUE(std::filesystem::exists(path));
  Harness h(backend_for("socket=" + path));
  h.start();
  UniqueFd c = unix_connect(path);
  ASSERT_TRUE(c);
  EXPECT_TRUE(h.recorder.wait_events({"up"}));
}

TEST_F(UnixListen, LiveListenerPathIsRefusedAndLeftAlone) {
  UniqueFd other = unix_listen(path);
  ASSERT_TRUE(other);
  Harness h(backend_for("socket=" + path));
  EXPECT_EQ(start_error(h), "socket path " + path + " is in use by another process");
  // The other process's socket still works.
  UniqueFd c = unix_connect(path);
  EXPECT_TRUE(c);
}

TEST_F(UnixListen, PathThatIsNotASocketIsRefused) {
  { std::ofstream(path) << "precious"; }
  Harness h(backend_for("socket=" + path));
  EXPECT_THAT(start_error(h), HasSubstr("exists and is not a socket"));
  EXPECT_TRUE(std::filesystem::is_regular_file(path)) << "never deleted";
}

TEST_F(UnixListen, MissingOrUnwritableDirectoryIsASetupError) {
  Harness missing(backend_for("socket=" + dir.file("no-such-dir/con.sock")));
  EXPECT_THAT(start_error(missing), HasSubstr("its directory does not exist"));
  // /proc refuses new files even for root.
  Harness unwritable(backend_for("socket=/proc/pier-port-test.sock"));
  EXPECT_THAT(start_error(unwritable),
              HasSubstr("cannot create socket path /proc/pier-port-test.sock"));
}

TEST_F(UnixListen, SocketIsOwnerOnlyAndRemovedOnStop) {
  Harness h(backend_for("socket=" + path));
  h.start();
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  h.thread.call([&] { h.backend->stop(); });
  EXPECT_FALSE(std::filesystem::exists(path));
  h.thread.call([&] { h.backend->stop(); });  // idempotent
}

TEST_F(UnixListen, StopLeavesAFileThatIsNoLongerOurs) {
  Harness h(backend_for("socket=" + path));
  h.start();
  // Someone removed our file and put their own socket there.
  std::filesystem::remove(path);
  UniqueFd theirs = unix_listen(path);
  ASSERT_TRUE(theirs);
  h.destroy();
  EXPECT_TRUE(std::filesystem::exists(path));
}

TEST_F(UnixListen, DisconnectWhileDeviceWantsNothingIsStillSeen) {
  Harness h(backend_for("socket=" + path));
  h.start();
  UniqueFd c = unix_connect(path);
  ASSERT_TRUE(h.recorder.wait_events({"up"}));
  c.reset();
  EXPECT_TRUE(h.recorder.wait_events({"up", "down"}));
}

TEST_F(UnixListen, ClientsThatSendAndHangUpAreServedInOrderWithNothingLost) {
  Harness h(backend_for("socket=" + path));
  h.start();
  h.want_input(true);
  // Each client connects, sends and hangs up at once, most of them while still waiting in the
  // backlog: every one still gets its turn, in connect order, and all its bytes get through.
  constexpr int kClients = 40;
  std::string expected;
  std::vector<std::string> events;
  for (int i = 0; i < kClients; ++i) {
    const std::string msg = "<client " + std::to_string(i) + ">";
    expected += msg;
    events.push_back("up");
    events.push_back("down");
    UniqueFd c = unix_connect(path);  // blocks while the backlog is full: bounded by the test
    ASSERT_TRUE(c) << i;
    send_all(c.get(), msg);
  }
  EXPECT_TRUE(h.recorder.wait_received(expected, 10s)) << h.recorder.received();
  EXPECT_TRUE(h.recorder.wait_events(events, 10s));
  EXPECT_FALSE(h.recorder.reentrant());
}

// ---- TCP ----

int port_of(const std::string& address) {
  return std::stoi(address.substr(address.rfind(':') + 1));
}

UniqueFd tcp_connect(const std::string& host, int port) {
  const bool v6 = host.find(':') != std::string::npos;
  UniqueFd fd(::socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_storage ss{};
  socklen_t len;
  if (v6) {
    auto& a = reinterpret_cast<sockaddr_in6&>(ss);
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(static_cast<uint16_t>(port));
    ::inet_pton(AF_INET6, host.c_str(), &a.sin6_addr);
    len = sizeof(a);
  } else {
    auto& a = reinterpret_cast<sockaddr_in&>(ss);
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    ::inet_pton(AF_INET, host.c_str(), &a.sin_addr);
    len = sizeof(a);
  }
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) return {};
  return fd;
}

TEST(TcpListen, EphemeralPortOnLoopbackDataAndEof) {
  Harness h(backend_for("tcp=127.0.0.1:0"));
  h.start();
  const std::string address = h.thread.call([&] { return h.backend->address(); });
  ASSERT_TRUE(address.starts_with("127.0.0.1:")) << address;
  const int port = port_of(address);
  ASSERT_GT(port, 0);
  EXPECT_EQ(h.thread.call([&] { return h.backend->describe(); }),
            "tcp=" + address + " (listening)");
  h.want_input(true);
  UniqueFd c = tcp_connect("127.0.0.1", port);
  ASSERT_TRUE(c);
  ASSERT_TRUE(h.recorder.wait_events({"up"}));
  send_all(c.get(), "over tcp");
  EXPECT_TRUE(h.recorder.wait_received("over tcp"));
  EXPECT_EQ(h.write("back"), 4);
  EXPECT_EQ(read_n(c.get(), 4), "back");
  // TCP cannot tell a half-close from a close: end of input is a disconnect, after the data.
  send_all(c.get(), "+bye");
  ::shutdown(c.get(), SHUT_WR);
  EXPECT_TRUE(h.recorder.wait_events({"up", "down"}));
  EXPECT_EQ(h.recorder.received(), "over tcp+bye");
  EXPECT_FALSE(h.recorder.reentrant());
}

TEST(TcpListen, OneClientAtATime) {
  Harness h(backend_for("tcp=0"));
  h.start();
  const int port = port_of(h.thread.call([&] { return h.backend->address(); }));
  h.want_input(true);
  UniqueFd a = tcp_connect("127.0.0.1", port);
  ASSERT_TRUE(h.recorder.wait_events({"up"}));
  UniqueFd b = tcp_connect("127.0.0.1", port);
  ASSERT_TRUE(b);
  send_all(b.get(), "b");
  EXPECT_FALSE(h.recorder.wait([&] { return h.recorder.received_unlocked() > 0; }, 200ms));
  a.reset();
  EXPECT_TRUE(h.recorder.wait_events({"up", "down", "up"}));
  EXPECT_TRUE(h.recorder.wait_received("b"));
}

TEST(TcpListen, PartialWritesThenOnWritable) {
  Harness h(backend_for("tcp=0"));
  h.start();
  const int port = port_of(h.thread.call([&] { return h.backend->address(); }));
  UniqueFd c = tcp_connect("127.0.0.1", port);
  ASSERT_TRUE(h.recorder.wait_events({"up"}));
  std::string sent;
  const size_t total = fill(h, sent);
  h.want_output(true);
  EXPECT_FALSE(h.recorder.wait([&] { return h.recorder.writable_unlocked() > 0; }, 200ms));
  EXPECT_TRUE(read_n(c.get(), total) == sent);
  EXPECT_TRUE(h.recorder.wait([&] { return h.recorder.writable_unlocked() > 0; }));
}

TEST(TcpListen, PortInUseIsASetupError) {
  Harness first(backend_for("tcp=0"));
  first.start();
  const std::string address = first.thread.call([&] { return first.backend->address(); });
  Harness second(backend_for("tcp=" + address));
  EXPECT_EQ(start_error(second),
            "cannot listen on " + address + ": the port is in use by another process");
}

TEST(TcpListen, HostNamesAreNotResolvedButLocalhostIsLoopback) {
  // A DNS lookup on the I/O thread (port-add) would stall every port and the API.
  Harness named(backend_for("tcp=pier-test-host.invalid:0"));
  EXPECT_THAT(start_error(named), HasSubstr("'pier-test-host.invalid' is not a numeric address"));
  Harness local(backend_for("tcp=localhost:0"));
  local.start();
  EXPECT_THAT(local.thread.call([&] { return local.backend->address(); }),
              ::testing::StartsWith("127.0.0.1:"));
}

TEST(TcpListen, NonLoopbackAddressIsWarnedAbout) {
  ::testing::internal::CaptureStderr();
  Harness any(backend_for("tcp=0.0.0.0:0"));
  any.start();
  Harness loop(backend_for("tcp=0"));
  loop.start();
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(err, HasSubstr("listening on a non-loopback address"));
  EXPECT_EQ(err.find("non-loopback", err.find("non-loopback") + 1), std::string::npos)
      << "only the 0.0.0.0 port: " << err;
}

TEST(TcpListen, Ipv6Loopback) {
  UniqueFd probe(::socket(AF_INET6, SOCK_STREAM, 0));
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  if (!probe || ::bind(probe.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    GTEST_SKIP() << "no IPv6 loopback here";
  }
  Harness h(backend_for("tcp=[::1]:0"));
  h.start();
  const std::string address = h.thread.call([&] { return h.backend->address(); });
  ASSERT_TRUE(address.starts_with("[::1]:")) << address;
  UniqueFd c = tcp_connect("::1", port_of(address));
  ASSERT_TRUE(c);
  EXPECT_TRUE(h.recorder.wait_events({"up"}));
}

// ---- unix client mode ----

class UnixClient : public ::testing::Test {
 protected:
  TempDir dir;
  std::string path = dir.file("server.sock");
};

TEST_F(UnixClient, RefusedAtStartWithoutReconnectIsASetupError) {
  Harness h(backend_for("socket=" + path + ",client"));
  EXPECT_THAT(start_error(h), HasSubstr("cannot connect to socket " + path));
  EXPECT_THAT(start_error(h), HasSubstr("add ,reconnect=SECONDS"));
}

TEST_F(UnixClient, ConnectedAtStartAndStaysDownWithoutReconnect) {
  UniqueFd server = unix_listen(path);
  Harness h(backend_for("socket=" + path + ",client"));
  h.start();
  EXPECT_TRUE(h.connected()) << "initial state, no event";
  EXPECT_TRUE(h.recorder.events().empty());
  UniqueFd peer = accept_within(server.get());
  ASSERT_TRUE(peer);
  h.want_input(true);
  send_all(peer.get(), "from server");
  EXPECT_TRUE(h.recorder.wait_received("from server"));
  EXPECT_EQ(h.write("from guest"), 10);
  EXPECT_EQ(read_n(peer.get(), 10), "from guest");
  peer.reset();
  EXPECT_TRUE(h.recorder.wait_events({"down"}));
  EXPECT_FALSE(readable_within(server.get(), 300ms)) << "no reconnect attempt";
  EXPECT_EQ(h.recorder.events(), std::vector<std::string>{"down"});
}

TEST_F(UnixClient, ReconnectsToAServerThatComesAndGoes) {
  Harness h(backend_for("socket=" + path + ",client,reconnect=0.05"));
  h.start();  // nobody listening yet: not an error with reconnect
  EXPECT_FALSE(h.connected());
  std::this_thread::sleep_for(120ms);  // a few failed attempts

  UniqueFd server = unix_listen(path);
  UniqueFd peer = accept_within(server.get(), 2s);
  ASSERT_TRUE(peer);
  ASSERT_TRUE(h.recorder.wait_events({"up"}));
  EXPECT_EQ(h.write("1"), 1);
  EXPECT_EQ(read_n(peer.get(), 1), "1");

  // The server drops us but keeps listening: we come back.
  peer.reset();
  ASSERT_TRUE(h.recorder.wait_events({"up", "down"}));
  peer = accept_within(server.get(), 2s);
  ASSERT_TRUE(peer);
  ASSERT_TRUE(h.recorder.wait_events({"up", "down", "up"}));

  // The server goes away entirely, then returns at the same path.
  peer.reset();
  server.reset();
  std::filesystem::remove(path);
  ASSERT_TRUE(h.recorder.wait_events({"up", "down", "up", "down"}));
  std::this_thread::sleep_for(150ms);
  EXPECT_EQ(h.recorder.events().size(), 4u);
  server = unix_listen(path);
  peer = accept_within(server.get(), 2s);
  ASSERT_TRUE(peer);
  EXPECT_TRUE(h.recorder.wait_events({"up", "down", "up", "down", "up"}));
  EXPECT_EQ(h.write("2"), 1);
  EXPECT_EQ(read_n(peer.get(), 1), "2");
}

TEST_F(UnixClient, DescribeAndAddress) {
  UniqueFd server = unix_listen(path);
  Harness h(backend_for("socket=" + path + ",client,reconnect=2"));
  h.start();
  EXPECT_EQ(h.thread.call([&] { return h.backend->describe(); }),
            "socket=" + path + " (client, reconnect 2000 ms)");
  EXPECT_EQ(h.thread.call([&] { return h.backend->address(); }), path);
}

}  // namespace
}  // namespace pier::chardev
