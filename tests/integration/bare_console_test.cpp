// KVM-level virtio-console tests with the console_stream bare-metal guest: lossless streams both
// ways on several ports at once, a host reader that stalls, a client that disconnects and
// reconnects mid-stream, and console output kept while no one is connected. The guest's driver
// loop runs in CPL3 (native speed on kvm_pvm), so the VMM's device path is what is exercised.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <future>
#include <thread>
#include <vector>

#include "integration/pier_process.hpp"
#include "support/xorshift_stream.hpp"

namespace pier::test {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

using Stream = ::pier::test::XorshiftStream;

struct PortTraffic {
  uint64_t sent = 0, received = 0, bad = 0;
  // Guest->host bytes the VMM wrote into a connection that its client closed before reading
  // them: they die in the kernel with the socket (no VMM can see or resend them). Every other
  // byte must arrive exactly once and in order; a gap may only sit at a reconnect.
  uint64_t lost_at_reconnect = 0;
  bool ok = false;
  std::string error;
};

// After a reconnect the guest stream continues at the first byte the VMM had not yet written
// into the old connection. Finds that position: advances `guest` over at most `max_gap` bytes
// until the next 32 stream bytes equal `head`. Returns the bytes skipped, or -1.
int64_t resync(Stream& guest, const uint8_t* head, size_t n, uint64_t max_gap) {
  n = std::min<size_t>(n, 32);
  for (uint64_t skip = 0; skip <= max_gap; ++skip) {
    Stream probe = guest;
    bool match = true;
    for (size_t i = 0; i < n && match; ++i) match = probe.next() == head[i];
    if (match) return static_cast<int64_t>(skip);
    guest.next();
  }
  return -1;
}

// Writes `bytes` of the host stream and reads/verifies `bytes` of the guest stream over one
// connection (or several: `reconnects` times the reader drops the connection mid-stream and
// connects again; `stall` pauses reading once).
PortTraffic drive_port(const std::string& path, unsigned port, uint64_t bytes, int reconnects,
                       std::chrono::milliseconds stall) {
  PortTraffic t;
  Stream host(1000 + port), guest(port);
  int fd = connect_unix(path);
  if (fd < 0) {
    t.error = "cannot connect to " + path;
    return t;
  }
  std::vector<uint8_t> out(65536), in(65536);
  size_t out_len = 0, out_off = 0;
  const uint64_t reconnect_every = reconnects > 0 ? bytes / (reconnects + 1) : UINT64_MAX;
  uint64_t next_reconnect = reconnect_every;
  bool stalled = stall.count() == 0;
  bool fresh_connection = false;  // the first bytes of a new connection may follow a gap
  const auto deadline = std::chrono::steady_clock::now() + 600s;
  while ((t.sent < bytes || t.received + t.lost_at_reconnect < bytes) &&
         std::chrono::steady_clock::now() < deadline) {
    if (!stalled && t.received >= bytes / 3) {
      std::this_thread::sleep_for(stall);  // the guest's writes must stall, not be lost
      stalled = true;
    }
    // Not in the last MiB: bytes the VMM wrote into a connection die with it, so a reconnect
    // after the guest's last bytes were all in the old socket would leave nothing to resync on
    // (the test then waited forever). A socket holds far less than 1 MiB.
    if (t.received >= next_reconnect && t.received + t.lost_at_reconnect + (1 << 20) < bytes) {
      ::close(fd);
      fd = connect_unix(path);
      if (fd < 0) {
        t.error = "reconnect failed";
        return t;
      }
      fresh_connection = true;
      next_reconnect += reconnect_every;
    }
    if (out_off == out_len && t.sent < bytes) {
      out_len = static_cast<size_t>(std::min<uint64_t>(out.size(), bytes - t.sent));
      for (size_t i = 0; i < out_len; ++i) out[i] = host.next();
      out_off = 0;
    }
    pollfd p{fd, POLLIN, 0};
    if (out_off < out_len) p.events |= POLLOUT;
    if (::poll(&p, 1, 1000) <= 0) continue;
    if (p.revents & POLLIN) {
      ssize_t n = ::recv(fd, in.data(), in.size(), MSG_DONTWAIT);
      if (n > 0 && fresh_connection && static_cast<size_t>(n) < 32) {
        // Wait for enough bytes to find our place in the stream.
        const ssize_t more = ::recv(fd, in.data() + n, 32 - static_cast<size_t>(n), MSG_WAITALL);
        if (more > 0) n += more;
      }
      if (n > 0) {
        if (fresh_connection) {
          fresh_connection = false;
          // The old socket's receive buffer is the only place bytes can vanish: a few hundred KiB.
          const int64_t gap = resync(guest, in.data(), static_cast<size_t>(n), 8 << 20);
          if (gap < 0) {
            t.error = "after a reconnect the data is not the continuation of the guest stream";
            break;
          }
          t.lost_at_reconnect += static_cast<uint64_t>(gap);
        }
        for (ssize_t i = 0; i < n; ++i) t.bad += in[static_cast<size_t>(i)] != guest.next();
        t.received += static_cast<uint64_t>(n);
      }
    }
    if ((p.revents & POLLOUT) && out_off < out_len) {
      // Host bytes go out only on the connection that is up; a write the kernel took is the
      // VMM's to deliver.
      const ssize_t n =
          ::send(fd, out.data() + out_off, out_len - out_off, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) {
        out_off += static_cast<size_t>(n);
        t.sent += static_cast<uint64_t>(n);
      }
    }
  }
  ::close(fd);
  t.ok = t.sent == bytes && t.received + t.lost_at_reconnect == bytes && t.bad == 0 &&
         (reconnects > 0 || t.lost_at_reconnect == 0);
  if (reconnects > 0) {
    std::printf(
        "[   INFO   ] port %u: %d reconnects, %llu guest bytes died unread in closed client "
        "sockets, %llu delivered in order\n",
        port, reconnects, static_cast<unsigned long long>(t.lost_at_reconnect),
        static_cast<unsigned long long>(t.received));
  }
  if (!t.ok && t.error.empty()) {
    t.error = "sent " + std::to_string(t.sent) + ", received " + std::to_string(t.received) + ", " +
              std::to_string(t.bad) + " bad bytes";
  }
  return t;
}

class BareConsole : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("pier-con-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string sock(const std::string& name) { return (dir_ / (name + ".sock")).string(); }

  // Boots console_stream with `ports` named ports on unix sockets and drives them.
  void stream(unsigned ports, uint64_t bytes, int reconnects, std::chrono::milliseconds stall) {
    std::vector<std::string> args = {
        "run",
        "--kernel",
        bare_guest("console_stream"),
        "--console",
        "socket=" + sock("console"),
        "--cmdline",
        "ports=" + std::to_string(ports) + " bytes=" + std::to_string(bytes),
        "--log-level",
        "info"};
    for (unsigned p = 1; p <= ports; ++p) {
      args.push_back("--port");
      args.push_back("name=org.pier.test" + std::to_string(p) +
                     ",socket=" + sock("p" + std::to_string(p)));
    }
    PierRun run;
    run.args = args;
    run.timeout = 900s;
    auto pier = std::async(std::launch::async, [run] { return run_pier(run); });
    std::vector<std::future<PortTraffic>> traffic;
    for (unsigned p = 1; p <= ports; ++p) {
      traffic.push_back(std::async(std::launch::async, drive_port, sock("p" + std::to_string(p)), p,
                                   bytes, p == 1 ? reconnects : 0, p == 1 ? stall : 0ms));
    }
    const auto t0 = std::chrono::steady_clock::now();
    for (unsigned p = 1; p <= ports; ++p) {
      const PortTraffic t = traffic[p - 1].get();
      EXPECT_TRUE(t.ok) << "port " << p << ": " << t.error;
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const PierResult r = pier.get();
    EXPECT_TRUE(guest_passed(r, "console_stream")) << r.describe();
    std::printf(
        "[   INFO   ] %u port(s) x %llu bytes each way in %.2f s: %.1f MB/s per direction\n", ports,
        static_cast<unsigned long long>(bytes), s, static_cast<double>(bytes) * ports / s / 1e6);
  }

  fs::path dir_;
};

TEST_F(BareConsole, FourPortsBothWaysLossless) {
  PIER_REQUIRE_KVM();
  const uint64_t mib = std::getenv("PIER_CONSOLE_TEST_MIB")
                           ? std::stoull(std::getenv("PIER_CONSOLE_TEST_MIB"))
                           : 256;
  stream(4, mib << 20, 0, 0ms);
}

TEST_F(BareConsole, HostReaderStallsFiveSecondsNothingLost) {
  PIER_REQUIRE_KVM();
  stream(2, 16 << 20, 0, 5000ms);
}

TEST_F(BareConsole, ClientReconnects50TimesMidStream) {
  PIER_REQUIRE_KVM();
  stream(1, 32 << 20, 50, 0ms);
}

TEST_F(BareConsole, ConsoleOutputWithoutClientIsReplayedFromTheRing) {
  PIER_REQUIRE_KVM();
  // Nobody connects to the console socket until the guest has written its greeting and
  // finished; then a client connects and must get the greeting.
  PierRun run;
  run.args = {"run",
              "--kernel",
              bare_guest("console_stream"),
              "--console",
              "socket=" + sock("console"),
              "--port",
              "name=org.pier.test1,socket=" + sock("p1"),
              "--cmdline",
              "ports=1 bytes=4096 linger_ms=3000"};
  run.timeout = 60s;
  auto pier = std::async(std::launch::async, [run] { return run_pier(run); });
  const PortTraffic t = drive_port(sock("p1"), 1, 4096, 0, 0ms);
  EXPECT_TRUE(t.ok) << t.error;
  // The guest wrote its greeting before any console client existed.
  int fd = connect_unix(sock("console"), 5000ms);
  ASSERT_GE(fd, 0);
  std::string got;
  char buf[256];
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (got.find("hello from hvc0") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 200) > 0) {
      const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) break;
      got.append(buf, static_cast<size_t>(n));
    }
  }
  ::close(fd);
  EXPECT_NE(got.find("PIER-CONSOLE hello from hvc0"), std::string::npos) << got;
  const PierResult r = pier.get();
  EXPECT_TRUE(guest_passed(r, "console_stream")) << r.describe();
}

}  // namespace
}  // namespace pier::test
