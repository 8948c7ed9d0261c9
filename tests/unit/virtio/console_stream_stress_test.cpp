// The console device on a real EventLoop thread with real unix-socket backends, a polling
// EVENT_IDX guest driver on another thread (tests/bare/lib/virtio_console.c's scheme: 64 KiB
// buffers re-posted in slot avail_idx % size, kicks only when the device asked) and one host
// client thread per port that pauses its reads once for 200 ms and its reads or writes at
// random (issue 20's BareConsole.HostReaderStallsFiveSecondsNothingLost without KVM). Every byte
// is checked both ways; no progress on a port for kNoProgress is a stall, reported with the
// device's view of both directions. Threads make this timing-dependent: ConsoleFlow.* has the
// deterministic event orders. PIER_STRESS_RUNS / _BUF / _RXBUFS / _TXBUFS widen it.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <thread>

#include "devices/chardev/port_backend.hpp"
#include "support/xorshift_stream.hpp"
#include "unit/virtio/console_test_harness.hpp"
#include "vmm/log.hpp"

namespace pier::virtio::testing {
namespace {

using namespace std::chrono_literals;
using namespace linux_console;

using Stream = ::pier::test::XorshiftStream;

// No progress for this long while nobody pauses is a stall (generous: a loaded 2-core host).
constexpr auto kNoProgress = 20s;
uint32_t kBuf = 65536;
unsigned kRxBufs = 64, kTxBufs = 64;

struct Ring {
  FakeQueueDriver* d = nullptr;
  FakeGuest* g = nullptr;
  int efd = -1;
  uint16_t last_used = 0;
  std::atomic<uint64_t> kicks{0};
  void add(uint64_t gpa, uint32_t len, bool writable) {
    const uint16_t slot = static_cast<uint16_t>(d->avail_idx() % d->size());
    d->write_descriptor(slot, {gpa, len, static_cast<uint16_t>(writable ? kDescFlagWrite : 0), 0});
    d->set_avail_entry(d->avail_idx(), slot);
    d->set_avail_idx(static_cast<uint16_t>(d->avail_idx() + 1));
  }
  void kick() {
    if (d->kick_needed()) {
      const uint64_t one = 1;
      [[maybe_unused]] ssize_t n = ::write(efd, &one, 8);
      ++kicks;
    }
  }
  bool get_used(uint16_t& id, uint32_t& len) {
    if (d->used_idx() == last_used) return false;
    const uint64_t elem = d->layout().used + 4 + 8ull * (last_used % d->size());
    id = static_cast<uint16_t>(g->read_obj<uint32_t>(elem));
    len = g->read_obj<uint32_t>(elem + 4);
    ++last_used;
    d->set_used_event(static_cast<uint16_t>(last_used + 0x8000));
    return true;
  }
};

struct Result {
  bool stalled = false;
  std::string what;
};

struct GuestPort {
  Ring rx, tx;
  std::vector<uint64_t> rxb, txb;
  std::vector<int> slot_buf;
  Stream txs{0}, rxs{0};
  uint64_t queued = 0, received = 0, done = 0, bad = 0;
  unsigned inflight = 0, tx_next = 0;
  std::atomic<uint64_t> rx_seen{0}, tx_seen{0};
};

struct HostResult {
  uint64_t sent = 0, got = 0, bad = 0;
  bool stalled = false;
};

Result run_once(unsigned nports, uint64_t bytes, std::chrono::milliseconds pause, uint32_t seed) {
  Result res;
  const auto dir = std::filesystem::temp_directory_path() /
                   ("pier-stress-" + std::to_string(::getpid()) + "-" + std::to_string(seed));
  std::filesystem::create_directories(dir);
  auto path = [&](unsigned p) { return (dir / ("p" + std::to_string(p) + ".sock")).string(); };

  console::ConsoleOptions o;
  o.max_ports = 4;
  o.queue_size = 128;
  o.control_queue_size = 64;
  EventLoop loop;
  std::vector<PortConfig> ports;
  {
    auto [b0, s0] = make_fake_backend(true);
    PortConfig c0;
    c0.console = true;
    c0.backend = std::move(b0);
    ports.push_back(std::move(c0));
    for (unsigned p = 1; p <= nports; ++p) {
      PortConfig c1;
      c1.name = "org.pier.s" + std::to_string(p);
      c1.backend = chardev::make_port_backend(chardev::parse_port_backend("socket=" + path(p)));
      ports.push_back(std::move(c1));
    }
  }
  auto device = std::make_unique<ConsoleDevice>(loop, o, std::move(ports));
  FakeGuest guest{128ull << 20};
  LinuxConsoleOptions lo;
  lo.fill_port_rx = false;
  auto os = std::make_unique<LinuxConsoleModel>(guest, *device, lo);
  EXPECT_TRUE(os->probe());
  os->settle();
  for (unsigned p = 1; p <= nports; ++p) EXPECT_EQ(os->open(p), 0);
  os->settle();

  std::vector<std::unique_ptr<GuestPort>> gp;
  for (unsigned p = 1; p <= nports; ++p) {
    auto g = std::make_unique<GuestPort>();
    g->txs = Stream(p);
    g->rxs = Stream(1000 + p);
    g->rx.d = &os->driver(rx_queue(p));
    g->tx.d = &os->driver(tx_queue(p));
    g->rx.g = g->tx.g = &guest;
    g->rx.last_used = g->rx.d->used_idx();
    g->tx.last_used = g->tx.d->used_idx();
    for (Ring* r : {&g->rx, &g->tx}) {
      r->efd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      const uint16_t q = r == &g->rx ? rx_queue(p) : tx_queue(p);
      const int fd = r->efd;
      loop.add(fd, EPOLLIN, [fd, q, dev = device.get()](uint32_t) {
        uint64_t v;
        if (::read(fd, &v, 8) == 8) dev->queue_notify(q);
      });
    }
    g->rxb.resize(kRxBufs);
    g->txb.resize(kTxBufs);
    for (auto& b : g->rxb) b = guest.alloc(kBuf, 4096);
    for (auto& b : g->txb) b = guest.alloc(kBuf, 4096);
    g->slot_buf.assign(g->rx.d->size(), -1);
    gp.push_back(std::move(g));
  }

  std::thread io([&] { loop.run(); });

  std::atomic<bool> stop{false};
  // Guest: bare-driver-like polling loop over every port.
  std::thread gth([&] {
    std::vector<uint8_t> tmp(kBuf);
    std::mt19937 grng(seed * 7 + 1);
    for (auto& g : gp) {
      for (unsigned i = 0; i < kRxBufs; ++i) {
        g->slot_buf[g->rx.d->avail_idx() % g->rx.d->size()] = static_cast<int>(i);
        g->rx.add(g->rxb[i], kBuf, true);
      }
      g->rx.kick();
    }
    while (!stop.load(std::memory_order_relaxed)) {
      // A vCPU that is preempted now and then.
      if (grng() % 256 == 0) std::this_thread::sleep_for(std::chrono::microseconds(grng() % 5000));
      bool all = true;
      for (auto& gptr : gp) {
        GuestPort& g = *gptr;
        uint16_t id;
        uint32_t len;
        while (g.tx.get_used(id, len)) {
          --g.inflight;
          g.done += g.tx.d->read_descriptor(id).len;
        }
        g.tx_seen = g.done;
        bool tx_added = false;
        while (g.queued < bytes && g.inflight < kTxBufs) {
          const uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(kBuf, bytes - g.queued));
          for (uint32_t i = 0; i < n; ++i) tmp[i] = g.txs.next();
          guest.write(g.txb[g.tx_next], std::span(tmp.data(), n));
          g.tx.add(g.txb[g.tx_next], n, false);
          g.tx_next = (g.tx_next + 1) % kTxBufs;
          ++g.inflight;
          g.queued += n;
          tx_added = true;
        }
        if (tx_added) g.tx.kick();
        bool rx_added = false;
        while (g.rx.get_used(id, len)) {
          const int b = g.slot_buf[id];
          auto data = guest.read(g.rxb[static_cast<size_t>(b)], len);
          for (uint8_t c : data) g.bad += c != g.rxs.next();
          g.received += len;
          g.slot_buf[g.rx.d->avail_idx() % g.rx.d->size()] = b;
          g.rx.add(g.rxb[static_cast<size_t>(b)], kBuf, true);
          rx_added = true;
        }
        g.rx_seen = g.received;
        if (rx_added) g.rx.kick();
        if (g.received < bytes || g.done < bytes) all = false;
      }
      if (all) break;
    }
  });

  std::vector<HostResult> hres(nports);
  std::atomic<bool> any_stall{false};
  std::vector<std::thread> hosts;
  for (unsigned port = 1; port <= nports; ++port) {
    hosts.emplace_back([&, port] {
      HostResult& h = hres[port - 1];
      GuestPort& g = *gp[port - 1];
      Stream hs(1000 + port), hr(port);
      int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path(port).c_str());
      EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
      std::vector<uint8_t> out(65536), in(65536);
      size_t out_len = 0, out_off = 0;
      bool paused = pause.count() == 0 || port != 1;
      std::mt19937 rng(seed * 31 + port);
      auto last_progress = std::chrono::steady_clock::now();
      uint64_t last_sum = 0;
      bool read_paused = false, write_paused = false;
      auto pause_until = std::chrono::steady_clock::now();
      while ((h.sent < bytes || h.got < bytes) && !any_stall) {
        auto now = std::chrono::steady_clock::now();
        if (!paused && h.got >= bytes / 3) {
          std::this_thread::sleep_for(pause);
          paused = true;
          last_progress = std::chrono::steady_clock::now();
        }
        if (now >= pause_until) {
          read_paused = write_paused = false;
          if (rng() % 128 == 0) {
            read_paused = rng() % 2;
            write_paused = !read_paused || rng() % 2;
            pause_until = now + std::chrono::microseconds(rng() % 30000);
          }
        }
        if (out_off == out_len && h.sent < bytes) {
          out_len = static_cast<size_t>(std::min<uint64_t>(out.size(), bytes - h.sent));
          for (size_t i = 0; i < out_len; ++i) out[i] = hs.next();
          out_off = 0;
        }
        pollfd p{fd, 0, 0};
        if (!read_paused) p.events |= POLLIN;
        if (!write_paused && out_off < out_len) p.events |= POLLOUT;
        ::poll(&p, 1, 20);
        if (p.revents & POLLIN) {
          const ssize_t n = ::recv(fd, in.data(), rng() % in.size() + 1, MSG_DONTWAIT);
          if (n > 0) {
            for (ssize_t i = 0; i < n; ++i) h.bad += in[static_cast<size_t>(i)] != hr.next();
            h.got += static_cast<uint64_t>(n);
          }
        }
        if ((p.revents & POLLOUT) && out_off < out_len) {
          const size_t want = std::min<size_t>(out_len - out_off, rng() % out.size() + 1);
          const ssize_t n = ::send(fd, out.data() + out_off, want, MSG_DONTWAIT);
          if (n > 0) {
            out_off += static_cast<size_t>(n);
            h.sent += static_cast<uint64_t>(n);
          }
        }
        const uint64_t sum = h.sent + h.got + g.rx_seen + g.tx_seen;
        now = std::chrono::steady_clock::now();
        if (sum != last_sum || read_paused || write_paused) {
          last_sum = sum;
          last_progress = now;
        } else if (now - last_progress > kNoProgress) {
          h.stalled = true;
          any_stall = true;
        }
      }
      ::close(fd);
    });
  }
  for (auto& t : hosts) t.join();
  for (unsigned p = 1; p <= nports; ++p) {
    const HostResult& h = hres[p - 1];
    GuestPort& g = *gp[p - 1];
    EXPECT_EQ(h.bad, 0u);
    if (h.stalled) {
      res.stalled = true;
      const auto s = device->port_stats(p).value();
      res.what +=
          "port " + std::to_string(p) + ": host sent " + std::to_string(h.sent) + " got " +
          std::to_string(h.got) + "; guest rx " + std::to_string(g.rx_seen) + " tx done " +
          std::to_string(g.tx_seen) + "; device to_guest " + std::to_string(s.bytes_to_guest) +
          " from_guest " + std::to_string(s.bytes_from_guest) + " to_host " +
          std::to_string(s.bytes_to_host) + " rx_held " + std::to_string(s.rx_buffers_held) +
          " tx_held " + std::to_string(s.tx_chains_held) + " rx kicks " +
          std::to_string(g.rx.kicks) + " tx kicks " + std::to_string(g.tx.kicks) +
          " rx avail_event " + std::to_string(g.rx.d->avail_event()) + " rx avail " +
          std::to_string(g.rx.d->avail_idx()) + " rx last_avail " +
          std::to_string(os->transport().queue(rx_queue(p)).last_avail_idx()) + " tx avail_event " +
          std::to_string(g.tx.d->avail_event()) + " tx avail " +
          std::to_string(g.tx.d->avail_idx()) + " tx last_avail " +
          std::to_string(os->transport().queue(tx_queue(p)).last_avail_idx()) + "\n";
    }
  }
  stop = true;
  gth.join();
  for (auto& g : gp) EXPECT_EQ(g->bad, 0u);
  loop.stop();
  io.join();
  for (auto& g : gp) {
    for (Ring* r : {&g->rx, &g->tx}) {
      loop.remove(r->efd);
      ::close(r->efd);
    }
  }
  device.reset();
  std::filesystem::remove_all(dir);
  return res;
}

TEST(ConsoleStreamStress, TwoPortsHostReaderPausesNothingLostNoStall) {
  log::set_level(log::Level::kError);
  const int runs = std::getenv("PIER_STRESS_RUNS") ? std::atoi(std::getenv("PIER_STRESS_RUNS")) : 2;
  if (auto* e = std::getenv("PIER_STRESS_BUF")) kBuf = static_cast<uint32_t>(std::atoi(e));
  if (auto* e = std::getenv("PIER_STRESS_RXBUFS")) kRxBufs = static_cast<unsigned>(std::atoi(e));
  if (auto* e = std::getenv("PIER_STRESS_TXBUFS")) kTxBufs = static_cast<unsigned>(std::atoi(e));
  for (int i = 0; i < runs; ++i) {
    const auto seed = static_cast<uint32_t>(i);
    const Result r = run_once(2, 16 << 20, 200ms, seed);
    ASSERT_FALSE(r.stalled) << "seed " << seed << ":\n" << r.what;
  }
}

}  // namespace
}  // namespace pier::virtio::testing
