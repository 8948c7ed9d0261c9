// parse_port_backend, and the always-connected backends (file, null, stdio).
#include "devices/chardev/port_backend.hpp"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <fstream>
#include <random>
#include <sstream>

#include "port_test_util.hpp"
#include "vmm/error.hpp"

namespace pier::chardev {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using Kind = PortBackendSpec::Kind;
using pier::chardev::port_test::Harness;
using pier::chardev::port_test::TempDir;

TEST(PortBackendParse, UnixListen) {
  const auto spec = parse_port_backend("socket=/tmp/a.sock");
  EXPECT_EQ(spec.kind, Kind::kUnixListen);
  EXPECT_EQ(spec.path, "/tmp/a.sock");
  EXPECT_EQ(spec.reconnect.count(), 0);
  EXPECT_EQ(spec.text, "socket=/tmp/a.sock");
}

TEST(PortBackendParse, UnixClientWithReconnect) {
  auto spec = parse_port_backend("socket=/tmp/a.sock,client");
  EXPECT_EQ(spec.kind, Kind::kUnixConnect);
  EXPECT_EQ(spec.reconnect.count(), 0);
  spec = parse_port_backend("socket=/tmp/a.sock,client,reconnect=2");
  EXPECT_EQ(spec.kind, Kind::kUnixConnect);
  EXPECT_EQ(spec.reconnect.count(), 2000);
  spec = parse_port_backend("socket=/tmp/a.sock,reconnect=0.25,client");
  EXPECT_EQ(spec.reconnect.count(), 250);
  spec = parse_port_backend("socket=/tmp/a.sock,client,reconnect=1.5");
  EXPECT_EQ(spec.reconnect.count(), 1500);
}

TEST(PortBackendParse, DoubledCommaIsALiteralComma) {
  const auto spec = parse_port_backend("socket=/tmp/a,,b.sock,client");
  EXPECT_EQ(spec.path, "/tmp/a,b.sock");
  EXPECT_EQ(spec.kind, Kind::kUnixConnect);
  EXPECT_EQ(parse_port_backend("file=/tmp/x,,y").path, "/tmp/x,y");
}

TEST(PortBackendParse, Tcp) {
  auto spec = parse_port_backend("tcp=5000");
  EXPECT_EQ(spec.kind, Kind::kTcpListen);
  EXPECT_EQ(spec.host, "127.0.0.1");
  EXPECT_EQ(spec.port, 5000);
  spec = parse_port_backend("tcp=127.0.0.1:0");
  EXPECT_EQ(spec.host, "127.0.0.1");
  EXPECT_EQ(spec.port, 0);
  spec = parse_port_backend("tcp=[::1]:65535");
  EXPECT_EQ(spec.host, "::1");
  EXPECT_EQ(spec.port, 65535);
  spec = parse_port_backend("tcp=localhost:22");
  EXPECT_EQ(spec.host, "localhost");
}

TEST(PortBackendParse, SimpleKinds) {
  EXPECT_EQ(parse_port_backend("pty").kind, Kind::kPty);
  EXPECT_EQ(parse_port_backend("stdio").kind, Kind::kStdio);
  EXPECT_EQ(parse_port_backend("null").kind, Kind::kNull);
  const auto spec = parse_port_backend("file=/var/log/x.log");
  EXPECT_EQ(spec.kind, Kind::kFile);
  EXPECT_EQ(spec.path, "/var/log/x.log");
}

struct BadSpec {
  const char* spec;
  const char* message;  // a part of the one-line error
};

class PortBackendParseError : public ::testing::TestWithParam<BadSpec> {};

TEST_P(PortBackendParseError, IsOneActionableLine) {
  const BadSpec& bad = GetParam();
  try {
    parse_port_backend(bad.spec);
    FAIL() << "accepted '" << bad.spec << "'";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_THAT(what, HasSubstr(bad.message)) << bad.spec;
    EXPECT_THAT(what, HasSubstr(std::string("'") + bad.spec + "'")) << "names the spec";
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Malformed, PortBackendParseError,
    ::testing::Values(
        BadSpec{"", "empty backend"}, BadSpec{"bogus", "unknown backend 'bogus'"},
        BadSpec{"sockets=/x", "unknown backend 'sockets'"},
        BadSpec{"socket", "missing PATH (socket=PATH)"},
        BadSpec{"socket=", "missing PATH (socket=PATH)"},
        BadSpec{"socket=/x,server", "unknown option 'server' (socket takes: client"},
        BadSpec{"socket=/x,client,client", "'client' given twice"},
        BadSpec{"socket=/x,reconnect=2", "reconnect= only applies to client mode"},
        BadSpec{"socket=/x,client,reconnect=", "bad reconnect value ''"},
        BadSpec{"socket=/x,client,reconnect=abc", "bad reconnect value 'abc'"},
        BadSpec{"socket=/x,client,reconnect=0", "bad reconnect value '0'"},
        BadSpec{"socket=/x,client,reconnect=-1", "bad reconnect value '-1'"},
        BadSpec{"socket=/x,client,reconnect=1.2345", "bad reconnect value '1.2345'"},
        BadSpec{"socket=/x,client,reconnect=1.", "bad reconnect value '1.'"},
        BadSpec{"socket=/x,client,reconnect=90000", "at most 86400"},
        BadSpec{"socket=/x,client,reconnect=1,reconnect=2", "'reconnect' given twice"},
        BadSpec{"socket=/tmp/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock",
                "unix sockets allow at most 107"},
        BadSpec{"tcp", "missing PORT (tcp=[HOST:]PORT)"},
        BadSpec{"tcp=", "missing PORT (tcp=[HOST:]PORT)"}, BadSpec{"tcp=abc", "bad port 'abc'"},
        BadSpec{"tcp=70000", "bad port '70000'"}, BadSpec{"tcp=-1", "bad port '-1'"},
        BadSpec{"tcp=123456", "bad port '123456'"}, BadSpec{"tcp=127.0.0.1:", "bad port ''"},
        BadSpec{"tcp=:5000", "empty HOST before ':'"},
        BadSpec{"tcp=::1:5000", "put an IPv6 address in brackets"},
        BadSpec{"tcp=[::1", "missing ']'"}, BadSpec{"tcp=[::1]5000", "expected ':PORT'"},
        BadSpec{"tcp=[]:5000", "empty IPv6 address"},
        BadSpec{"tcp=5000,client", "tcp only listens"},
        BadSpec{"tcp=5000,nodelay", "unknown option 'nodelay' (tcp takes no options)"},
        BadSpec{"pty=/dev/pts/1", "'pty' takes no value"},
        BadSpec{"pty,raw", "unknown option 'raw' (pty takes no options)"},
        BadSpec{"stdio=1", "'stdio' takes no value"},
        BadSpec{"null,x", "unknown option 'x' (null takes no options)"},
        BadSpec{"file", "missing PATH (file=PATH)"}, BadSpec{"file=", "missing PATH"},
        BadSpec{"file=/x,append", "unknown option 'append' (file takes no options)"}));

// Writes a spec back as text (",," for commas in paths), for the round trip below.
std::string unparse(const PortBackendSpec& spec) {
  auto escape = [](const std::string& path) {
    std::string out;
    for (char c : path) out += c == ',' ? std::string(",,") : std::string(1, c);
    return out;
  };
  switch (spec.kind) {
    case Kind::kUnixListen:
      return "socket=" + escape(spec.path);
    case Kind::kUnixConnect: {
      std::string text = "socket=" + escape(spec.path) + ",client";
      if (spec.reconnect.count() > 0) {
        text += fmt::format(",reconnect={}.{:03}", spec.reconnect.count() / 1000,
                            spec.reconnect.count() % 1000);
      }
      return text;
    }
    case Kind::kTcpListen:
      return spec.host.find(':') != std::string::npos
                 ? fmt::format("tcp=[{}]:{}", spec.host, spec.port)
                 : fmt::format("tcp={}:{}", spec.host, spec.port);
    case Kind::kPty:
      return "pty";
    case Kind::kFile:
      return "file=" + escape(spec.path);
    case Kind::kStdio:
      return "stdio";
    case Kind::kNull:
      return "null";
  }
  return "?";
}

// Random token soup (a fuzzer in miniature, no clang needed): every input is either accepted
// with a consistent spec that survives a round trip, or refused with one line naming it.
TEST(PortBackendParse, RandomSpecsAreAcceptedConsistentlyOrRefusedInOneLine) {
  const std::vector<std::string> tokens = {"socket",
                                           "tcp",
                                           "pty",
                                           "file",
                                           "stdio",
                                           "null",
                                           "=",
                                           ",",
                                           ",,",
                                           "client",
                                           "reconnect=",
                                           "0",
                                           "1",
                                           "5",
                                           "9",
                                           "65535",
                                           "65536",
                                           ".",
                                           "..",
                                           "[",
                                           "]",
                                           ":",
                                           "::1",
                                           "/",
                                           "/tmp/a",
                                           "x",
                                           " ",
                                           "-",
                                           "\n",
                                           std::string(1, '\0'),
                                           std::string(60, 'p')};
  std::mt19937 rng(12345);
  int accepted = 0;
  for (int i = 0; i < 30000; ++i) {
    std::string text;
    const int n = 1 + static_cast<int>(rng() % 8);
    for (int t = 0; t < n; ++t) text += tokens[rng() % tokens.size()];
    PortBackendSpec spec;
    try {
      spec = parse_port_backend(text);
    } catch (const Error& e) {
      const std::string what = e.what();
      ASSERT_TRUE(what.starts_with("invalid port backend '")) << what;
      ASSERT_EQ(what.find('\n'), std::string::npos) << what;
      continue;
    }
    ++accepted;
    EXPECT_EQ(spec.text, text);
    switch (spec.kind) {
      case Kind::kUnixListen:
      case Kind::kUnixConnect:
        EXPECT_FALSE(spec.path.empty()) << text;
        EXPECT_LT(spec.path.size(), 108u) << text;
        break;
      case Kind::kFile:
        EXPECT_FALSE(spec.path.empty()) << text;
        break;
      case Kind::kTcpListen:
        EXPECT_FALSE(spec.host.empty()) << text;
        break;
      default:
        break;
    }
    if (spec.kind != Kind::kUnixConnect) {
      EXPECT_EQ(spec.reconnect.count(), 0) << text;
    }
    const PortBackendSpec again = parse_port_backend(unparse(spec));
    EXPECT_EQ(again.kind, spec.kind) << text;
    EXPECT_EQ(again.path, spec.path) << text;
    EXPECT_EQ(again.host, spec.host) << text;
    EXPECT_EQ(again.port, spec.port) << text;
    EXPECT_EQ(again.reconnect, spec.reconnect) << text;
  }
  EXPECT_GT(accepted, 100) << "the soup should hit valid specs too";
}

TEST(PortBackendParse, NulByteIsRefused) {
  using namespace std::string_literals;
  for (const std::string& text : {"socket=\0abstract"s, "file=/tmp/a\0b"s, "tcp=127.0.0.1\0:5"s}) {
    try {
      parse_port_backend(text);
      ADD_FAILURE() << "accepted a NUL byte";
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), HasSubstr("\\x00"));
      EXPECT_THAT(e.what(), HasSubstr("contains a NUL byte"));
    }
  }
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(FilePort, AppendsAndIsAlwaysConnected) {
  TempDir dir;
  const std::string path = dir.file("out.log");
  std::ofstream(path) << "old\n";
  Harness h(make_port_backend(parse_port_backend("file=" + path)));
  h.start();
  EXPECT_TRUE(h.connected());
  EXPECT_EQ(h.write("new"), 3);
  EXPECT_EQ(h.write("er\n"), 3);
  std::string in;
  EXPECT_EQ(h.read(in), 0) << "no input";
  EXPECT_EQ(h.thread.call([&] { return h.backend->address(); }), path);
  // Room for output is always there: a device waiting for it is told at once.
  h.want_output(true);
  EXPECT_TRUE(h.recorder.wait([&] { return h.recorder.writable_unlocked() > 0; }));
  h.want_output(false);
  h.destroy();
  EXPECT_EQ(slurp(path), "old\nnewer\n");
  EXPECT_TRUE(h.recorder.events().empty()) << "no connect events for an always-connected port";
}

TEST(FilePort, ANewFileIsReadableByItsOwnerOnly) {
  TempDir dir;
  const std::string path = dir.file("new.log");
  Harness h(make_port_backend(parse_port_backend("file=" + path)));
  h.start();
  h.destroy();
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "console output can hold a root shell's secrets";
}

TEST(FilePort, AWriteErrorLosesTheBytesCountedAndLoggedOnceWithoutStallingTheGuest) {
  // /dev/full fails every write with ENOSPC: the guest's bytes must not wait forever for room
  // that never comes, and must not count as delivered either.
  Harness h(make_port_backend(parse_port_backend("file=/dev/full")));
  h.start();
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(h.write("abc"), 3);
  EXPECT_EQ(h.write("defgh"), 5);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(h.thread.call([&] { return h.backend->bytes_lost(); }), 8u);
  EXPECT_THAT(err, HasSubstr("file=/dev/full: write failed: No space left on device"));
  EXPECT_EQ(err.find("write failed", err.find("write failed") + 1), std::string::npos)
      << "logged once: " << err;
  h.destroy();
}

TEST(FilePort, UnwritablePathIsASetupError) {
  Harness h(make_port_backend(parse_port_backend("file=/nonexistent-pier-dir/out.log")));
  try {
    h.start();
    FAIL() << "started";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("/nonexistent-pier-dir/out.log"));
  }
}

TEST(NullPort, DiscardsOutputAndHasNoInput) {
  Harness h(make_port_backend(parse_port_backend("null")));
  h.start();
  EXPECT_TRUE(h.connected());
  EXPECT_EQ(h.write(std::string(100000, 'x')), 100000);
  std::string in;
  h.want_input(true);
  EXPECT_EQ(h.read(in), 0);
  h.want_output(true);
  EXPECT_TRUE(h.recorder.wait([&] { return h.recorder.writable_unlocked() > 0; }));
  EXPECT_EQ(h.thread.call([&] { return h.backend->address(); }), "");
  EXPECT_EQ(h.thread.call([&] { return h.backend->describe(); }), "null");
}

// stdin and stdout are swapped for pipes while the backend runs; expectations are checked only
// after they are put back (a failure message must not go into the pipe).
TEST(StdioPort, ReadsStdinWritesStdoutAndSurvivesEndOfInput) {
  int in_pipe[2];
  int out_pipe[2];
  ASSERT_EQ(::pipe2(in_pipe, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(out_pipe, O_CLOEXEC), 0);
  UniqueFd in_read(in_pipe[0]), in_write(in_pipe[1]);
  UniqueFd out_read(out_pipe[0]), out_write(out_pipe[1]);
  std::fflush(stdout);
  UniqueFd saved_in(::dup(STDIN_FILENO)), saved_out(::dup(STDOUT_FILENO));
  ::dup2(in_read.get(), STDIN_FILENO);
  ::dup2(out_write.get(), STDOUT_FILENO);

  bool connected = false;
  bool received_hello = false;
  ssize_t wrote = 0;
  std::string output;
  ssize_t after_eof = -2;
  bool still_connected = false;
  std::string address = "?";
  bool shared_nonblocking = true;
  {
    Harness h(make_port_backend(parse_port_backend("stdio")));
    h.start();
    connected = h.connected();
    h.want_input(true);
    ::write(in_write.get(), "hello", 5);
    received_hello = h.recorder.wait_received("hello");
    wrote = h.write("guest says hi");
    output = port_test::read_n(out_read.get(), 13, 2s);
    in_write.reset();  // end of input
    h.recorder.wait([&] { return h.recorder.events_unlocked() > 0; }, 200ms);
    std::string rest;
    after_eof = h.read(rest);
    still_connected = h.connected();
    address = h.thread.call([&] { return h.backend->address(); });
    // pier's own descriptions are the non-blocking ones: fd 0 and 1 (and so stderr, when it
    // shares them, and the parent's terminal) stay as they were.
    shared_nonblocking =
        ((::fcntl(STDIN_FILENO, F_GETFL) | ::fcntl(STDOUT_FILENO, F_GETFL)) & O_NONBLOCK) != 0;
  }
  ::dup2(saved_in.get(), STDIN_FILENO);
  ::dup2(saved_out.get(), STDOUT_FILENO);

  EXPECT_FALSE(shared_nonblocking);
  EXPECT_TRUE(connected);
  EXPECT_TRUE(received_hello);
  EXPECT_EQ(wrote, 13);
  EXPECT_EQ(output, "guest says hi");
  EXPECT_EQ(after_eof, 0) << "end of stdin is not a disconnect";
  EXPECT_TRUE(still_connected);
  EXPECT_EQ(address, "");
}

// stdin from a regular file (epoll cannot watch it: always readable until end of file) and
// stdout to a pipe nobody reads (writes stop taking bytes; on_writable once it drains).
TEST(StdioPort, RegularFileOnStdinAndAFullStdoutPipe) {
  TempDir dir;
  const std::string input_path = dir.file("input");
  std::string input;
  for (int i = 0; i < 20000; ++i) input += static_cast<char>('a' + i % 26);
  std::ofstream(input_path) << input;
  UniqueFd file(::open(input_path.c_str(), O_RDONLY | O_CLOEXEC));
  int out_pipe[2];
  ASSERT_EQ(::pipe2(out_pipe, O_CLOEXEC), 0);
  UniqueFd out_read(out_pipe[0]), out_write(out_pipe[1]);
  std::fflush(stdout);
  UniqueFd saved_in(::dup(STDIN_FILENO)), saved_out(::dup(STDOUT_FILENO));
  ::dup2(file.get(), STDIN_FILENO);
  ::dup2(out_write.get(), STDOUT_FILENO);

  bool got_input = false;
  std::string received;
  size_t accepted = 0;
  ssize_t when_full = -2;
  bool writable_while_full = true;
  bool writable_after_drain = false;
  size_t drained = 0;
  {
    Harness h(make_port_backend(parse_port_backend("stdio")));
    h.start();
    h.want_input(true);
    got_input = h.recorder.wait_received(input);
    received = h.recorder.received();
    h.want_input(false);
    const std::string chunk(8192, 'o');
    for (int i = 0; i < 1000; ++i) {
      const ssize_t n = h.write(chunk);
      if (n <= 0) break;
      accepted += static_cast<size_t>(n);
      if (n < static_cast<ssize_t>(chunk.size())) break;
    }
    when_full = h.write(chunk);
    h.want_output(true);
    writable_while_full =
        h.recorder.wait([&] { return h.recorder.writable_unlocked() > 0; }, 100ms);
    drained = port_test::read_n(out_read.get(), accepted, 2s).size();
    writable_after_drain = h.recorder.wait([&] { return h.recorder.writable_unlocked() > 0; });
    h.want_output(false);
  }
  ::dup2(saved_in.get(), STDIN_FILENO);
  ::dup2(saved_out.get(), STDOUT_FILENO);

  EXPECT_TRUE(got_input);
  EXPECT_EQ(received.size(), input.size());
  EXPECT_GT(accepted, 0u);
  EXPECT_EQ(when_full, 0);
  EXPECT_FALSE(writable_while_full);
  EXPECT_EQ(drained, accepted);
  EXPECT_TRUE(writable_after_drain);
}

}  // namespace
}  // namespace pier::chardev
