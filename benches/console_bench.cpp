// The virtio-console device's data hot paths, in-process: fake guest memory, the Linux driver
// model for the handshake, then a minimal driver that keeps re-posting the same descriptors on
// port 1's queues (no allocation, no copies on the driver side), and a backend that is either
//  - memory: readv/writev memcpy from/to a 64 KiB buffer (what a socket copy costs, no
//    syscall), or
//  - pipe: real readv/writev on pipes; the benchmark thread plays the host peer and writes
//    (rx) or drains (tx) the other end inside the timed loop, so those syscalls are included.
// One iteration is one batch: the driver makes `batch` chains available, notifies once (the
// ioeventfd path), the device moves them, the driver reaps the used ring.
//
//   build-console/benches/console_bench          Time = ns per batch; see ns/chain, bytes/s
//
//   BM_GuestToHost  generic port tx: chains held until written, gathered into one writev
//   BM_HostToGuest  generic port rx: readv straight into up to 16 guest buffers per call
//   BM_ConsoleTx    console port tx: completed at once, one writev per chain
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#include "tests/unit/virtio/linux_console_model.hpp"
#include "virtio/console/console_device.hpp"
#include "vmm/log.hpp"

namespace {

using namespace pier;
using namespace pier::virtio;
using namespace pier::virtio::testing;

enum class Mode { kMemory, kPipe };

class BenchBackend final : public chardev::PortBackend {
 public:
  explicit BenchBackend(Mode mode) : mode_(mode) {
    for (size_t i = 0; i < source_.size(); ++i) source_[i] = static_cast<uint8_t>(i * 131);
    if (mode_ == Mode::kPipe) {
      if (::pipe2(in_, O_NONBLOCK | O_CLOEXEC) != 0 || ::pipe2(out_, O_NONBLOCK | O_CLOEXEC) != 0) {
        throw std::runtime_error("pipe2");
      }
      for (int fd : {in_[1], out_[1]}) ::fcntl(fd, F_SETPIPE_SZ, 1 << 20);
    }
  }
  ~BenchBackend() override {
    for (int fd : {in_[0], in_[1], out_[0], out_[1]}) {
      if (fd >= 0) ::close(fd);
    }
  }

  void start(EventLoop&, Listener&) override {}
  bool host_connected() const override { return true; }
  ssize_t readv(std::span<const iovec> iov) override {
    if (mode_ == Mode::kPipe) {
      const ssize_t n = ::readv(in_[0], iov.data(), static_cast<int>(iov.size()));
      return n < 0 ? 0 : n;
    }
    size_t total = 0;
    for (const iovec& v : iov) {
      for (size_t done = 0; done < v.iov_len;) {
        const size_t n = std::min(v.iov_len - done, source_.size() - src_pos_);
        std::memcpy(static_cast<uint8_t*>(v.iov_base) + done, source_.data() + src_pos_, n);
        done += n;
        src_pos_ = (src_pos_ + n) % source_.size();
      }
      total += v.iov_len;
    }
    return static_cast<ssize_t>(total);
  }
  ssize_t writev(std::span<const iovec> iov) override {
    if (mode_ == Mode::kPipe) {
      const ssize_t n = ::writev(out_[1], iov.data(), static_cast<int>(iov.size()));
      return n < 0 ? 0 : n;
    }
    size_t total = 0;
    for (const iovec& v : iov) {
      for (size_t done = 0; done < v.iov_len;) {
        const size_t n = std::min(v.iov_len - done, sink_.size() - sink_pos_);
        std::memcpy(sink_.data() + sink_pos_, static_cast<const uint8_t*>(v.iov_base) + done, n);
        done += n;
        sink_pos_ = (sink_pos_ + n) % sink_.size();
      }
      total += v.iov_len;
    }
    return static_cast<ssize_t>(total);
  }
  void want_input(bool) override {}
  void want_output(bool) override {}
  std::string describe() const override { return "bench"; }
  std::string address() const { return "bench"; }  // where the interface has it
  void stop() override {}

  // The host peer's ends of the pipes.
  int host_writes() const { return in_[1]; }
  int host_reads() const { return out_[0]; }

 private:
  Mode mode_;
  std::array<uint8_t, 64 * 1024> source_{};
  std::array<uint8_t, 64 * 1024> sink_{};
  size_t src_pos_ = 0, sink_pos_ = 0;
  int in_[2] = {-1, -1};
  int out_[2] = {-1, -1};
};

constexpr uint32_t kPort = 1;

struct Bench {
  Bench(Mode mode, uint32_t chain_bytes, uint16_t batch, bool console_port)
      : chain_bytes(chain_bytes), batch(batch) {
    log::set_level(log::Level::kError);
    console::ConsoleOptions options;
    options.max_ports = 4;
    options.queue_size = 256;
    auto backend = std::make_unique<BenchBackend>(mode);
    host = backend.get();
    std::vector<console::PortConfig> ports;
    console::PortConfig p0;
    p0.console = true;
    p0.backend = std::make_unique<BenchBackend>(Mode::kMemory);
    ports.push_back(std::move(p0));
    console::PortConfig p1;
    p1.name = "org.pier.bench";
    p1.console = console_port;
    p1.backend = std::move(backend);
    ports.push_back(std::move(p1));
    device = std::make_unique<console::ConsoleDevice>(loop, options, std::move(ports));
    LinuxConsoleOptions lo;
    lo.fill_port_rx = false;
    os = std::make_unique<LinuxConsoleModel>(guest, *device, lo);
    if (!os->probe()) throw std::runtime_error("probe");
    os->settle();
    if (!console_port && os->open(kPort) != 0) throw std::runtime_error("open");
    os->settle();
    if (!os->problems().empty()) throw std::runtime_error(os->problems_text());
    // `batch` buffers for each direction, descriptors 0..batch-1, re-posted every iteration.
    for (uint16_t q : {linux_console::rx_queue(kPort), linux_console::tx_queue(kPort)}) {
      FakeQueueDriver& d = os->driver(q);
      const bool rx = q == linux_console::rx_queue(kPort);
      for (uint16_t i = 0; i < batch; ++i) {
        const uint64_t gpa = guest.alloc(chain_bytes, 64);
        if (!rx) guest.write(gpa, std::vector<uint8_t>(chain_bytes, static_cast<uint8_t>(i)));
        d.write_descriptor(i, {gpa, chain_bytes, static_cast<uint16_t>(rx ? kDescFlagWrite : 0), 0});
      }
    }
    scratch.resize(1 << 20);
  }

  // Makes the batch available on queue `q`, notifies, and reaps what the device used.
  void run(uint16_t q) {
    FakeQueueDriver& d = os->driver(q);
    for (uint16_t i = 0; i < batch; ++i) {
      d.set_avail_entry(static_cast<uint16_t>(d.avail_idx() + i), i);
    }
    d.set_avail_idx(static_cast<uint16_t>(d.avail_idx() + batch));
    device->queue_notify(q);
    const uint16_t used = d.used_idx();
    uint16_t& last = last_used[q & 1];
    if (static_cast<uint16_t>(used - last) != batch) throw std::runtime_error("chains not used");
    last = used;
  }

  void host_write(size_t bytes) {  // pipe mode: the peer sends what one batch will take
    while (bytes > 0) {
      const ssize_t n = ::write(host->host_writes(), scratch.data(), std::min(bytes, scratch.size()));
      if (n <= 0) throw std::runtime_error("pipe full");
      bytes -= static_cast<size_t>(n);
    }
  }
  void host_drain(size_t bytes) {  // pipe mode: the peer reads what one batch wrote
    while (bytes > 0) {
      const ssize_t n = ::read(host->host_reads(), scratch.data(), std::min(bytes, scratch.size()));
      if (n <= 0) throw std::runtime_error("pipe empty");
      bytes -= static_cast<size_t>(n);
    }
  }

  uint32_t chain_bytes;
  uint16_t batch;
  EventLoop loop;
  FakeGuest guest{256ull << 20};
  std::unique_ptr<console::ConsoleDevice> device;
  std::unique_ptr<LinuxConsoleModel> os;
  BenchBackend* host = nullptr;
  std::array<uint16_t, 2> last_used{};
  std::vector<uint8_t> scratch;
};

void counters(benchmark::State& state, const Bench& b) {
  const int64_t chains = static_cast<int64_t>(state.iterations()) * b.batch;
  state.SetItemsProcessed(chains);
  state.SetBytesProcessed(chains * b.chain_bytes);
  state.counters["ns/chain"] = benchmark::Counter(static_cast<double>(chains),
                                                  benchmark::Counter::kIsRate |
                                                      benchmark::Counter::kInvert);
}

// Args: chain bytes, chains per notify, 0 = memory backend / 1 = pipe backend.
void BM_GuestToHost(benchmark::State& state) {
  const Mode mode = state.range(2) ? Mode::kPipe : Mode::kMemory;
  Bench b(mode, static_cast<uint32_t>(state.range(0)), static_cast<uint16_t>(state.range(1)),
          false);
  const uint16_t q = linux_console::tx_queue(kPort);
  for (auto _ : state) {
    b.run(q);
    if (mode == Mode::kPipe) b.host_drain(size_t{b.batch} * b.chain_bytes);
  }
  counters(state, b);
}

void BM_HostToGuest(benchmark::State& state) {
  const Mode mode = state.range(2) ? Mode::kPipe : Mode::kMemory;
  Bench b(mode, static_cast<uint32_t>(state.range(0)), static_cast<uint16_t>(state.range(1)),
          false);
  const uint16_t q = linux_console::rx_queue(kPort);
  for (auto _ : state) {
    if (mode == Mode::kPipe) b.host_write(size_t{b.batch} * b.chain_bytes);
    b.run(q);
  }
  counters(state, b);
}

void BM_ConsoleTx(benchmark::State& state) {
  const Mode mode = state.range(2) ? Mode::kPipe : Mode::kMemory;
  Bench b(mode, static_cast<uint32_t>(state.range(0)), static_cast<uint16_t>(state.range(1)),
          true);
  const uint16_t q = linux_console::tx_queue(kPort);
  for (auto _ : state) {
    b.run(q);
    if (mode == Mode::kPipe) b.host_drain(size_t{b.batch} * b.chain_bytes);
  }
  counters(state, b);
}

void args(benchmark::internal::Benchmark* bm) {
  for (int64_t pipe : {0, 1}) {
    bm->Args({4096, 64, pipe});  // Linux's 4 KiB buffers, a full batch per kick
    bm->Args({4096, 1, pipe});   // one chain per kick: per-notification overhead
  }
  bm->Args({65536, 16, 1});  // the bare guest's 64 KiB buffers, 1 MiB per kick (pipe size)
  bm->Args({32768, 16, 0});  // port_fops_write's largest writes
  bm->Args({64, 64, 0});     // small messages: per-chain overhead
}

BENCHMARK(BM_GuestToHost)->Apply(args)->ArgNames({"bytes", "batch", "pipe"});
BENCHMARK(BM_HostToGuest)->Apply(args)->ArgNames({"bytes", "batch", "pipe"});
BENCHMARK(BM_ConsoleTx)->Args({4096, 64, 0})->Args({4096, 64, 1})->Args({64, 64, 0})
    ->ArgNames({"bytes", "batch", "pipe"});

}  // namespace
