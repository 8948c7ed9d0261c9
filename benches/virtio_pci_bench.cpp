// The virtio-pci device path in-process: a queue notify (as the slow MMIO path delivers it to
// the queue's eventfd) -> the I/O thread's handler -> virtio-rng pops, fills and pushes the chain
// -> the used-buffer notification goes out on the MSI-X vector's irqfd (an eventfd write).
// What KVM adds around it (the ioeventfd signal, the irqfd injection) is not in this figure.
#include <benchmark/benchmark.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <map>

#include "boot/layout.hpp"
#include "devices/pci/bus.hpp"
#include "virtio/pci_transport.hpp"
#include "virtio/rng.hpp"
#include "virtio/virtio.hpp"

namespace pier::virtio {
namespace {

class BenchPlatform final : public PciPlatform {
 public:
  void add_mmio(uint64_t base, uint64_t, std::shared_ptr<BusDevice> d) override { mmio[base] = d; }
  void remove_mmio(uint64_t base, const BusDevice*) override { mmio.erase(base); }
  void add_ioeventfd(int, uint64_t) override {}
  void remove_ioeventfd(int, uint64_t) override {}
  void watch(int fd, std::function<void()> fn) override { watched[fd] = std::move(fn); }
  void unwatch(int fd) override { watched.erase(fd); }
  uint32_t allocate_msi_gsi() override { return gsi++; }
  void release_msi_gsi(uint32_t) override {}
  void set_msi_route(uint32_t, uint64_t, uint32_t) override {}
  void add_irqfd(int fd, uint32_t g) override { irqfds[g] = fd; }
  void remove_irqfd(int, uint32_t g) override { irqfds.erase(g); }
  void set_intx(uint32_t, bool) override {}
  void run_on_io_thread(const std::function<void()>& fn) override { fn(); }
  std::map<uint64_t, std::shared_ptr<BusDevice>> mmio;
  std::map<int, std::function<void()>> watched;
  std::map<uint32_t, int> irqfds;
  uint32_t gsi = 24;
};

void BM_NotifyToIrqfd(benchmark::State& state) {
  auto memory = GuestMemory::create(64 << 20);
  BenchPlatform platform;
  pci::Bus bus(layout::kPciMmioStart, layout::kPciMmioEnd);
  auto t = std::make_shared<PciTransport>(std::make_unique<RngDevice>(), memory, platform, bus);
  t->attach();
  const uint16_t cmd = pci::cfg::kCommandMemory | pci::cfg::kCommandBusMaster;
  t->config_write(pci::cfg::kCommand, std::span(reinterpret_cast<const uint8_t*>(&cmd), 2));
  BusDevice& bar0 = *platform.mmio.at(t->bar0_address());
  BusDevice& msix_bar = *std::next(platform.mmio.begin())->second;
  auto w = [&](uint64_t off, auto v) {
    bar0.write(off, std::span(reinterpret_cast<const uint8_t*>(&v), sizeof(v)));
  };
  w(uint64_t{0x14}, uint8_t{3});
  w(uint64_t{0x08}, uint32_t{1});
  w(uint64_t{0x0c}, uint32_t{1});  // VERSION_1
  w(uint64_t{0x14}, uint8_t{0xb});
  const uint64_t desc = 0x10000, avail = 0x11000, used = 0x12000, buffer = 0x20000;
  w(uint64_t{0x18}, uint16_t{256});
  w(uint64_t{0x20}, desc);
  w(uint64_t{0x28}, avail);
  w(uint64_t{0x30}, used);
  w(uint64_t{0x1a}, uint16_t{0});
  w(uint64_t{0x1c}, uint16_t{1});
  const uint32_t entry[4] = {0xfee00000, 0, 0x45, 0};
  msix_bar.write(0, std::span(reinterpret_cast<const uint8_t*>(entry), 16));
  const uint16_t control = 0x8000;
  for (uint8_t at = 0x40; at < 0xf0; at += 4) {
    uint8_t id = 0;
    t->config_read(at, std::span(&id, 1));
    if (id == pci::cfg::kCapMsix) {
      t->config_write(at + 2, std::span(reinterpret_cast<const uint8_t*>(&control), 2));
      break;
    }
  }
  w(uint64_t{0x14}, uint8_t{0xf});
  const size_t len = static_cast<size_t>(state.range(0));
  for (uint16_t i = 0; i < 256; ++i) {
    struct {
      uint64_t addr;
      uint32_t len;
      uint16_t flags, next;
    } d{buffer, static_cast<uint32_t>(len), 2, 0};
    memory.write_obj(desc + 16ull * i, d);
  }
  const int notify_fd = platform.watched.begin()->first;
  auto handler = platform.watched.begin()->second;
  const int irqfd = platform.irqfds.at(24);
  uint16_t idx = 0;
  for (auto _ : state) {
    memory.write_obj<uint16_t>(avail + 4 + 2 * (idx % 256), idx % 256);
    ++idx;
    memory.write_obj<uint16_t>(avail + 2, idx);
    w(PciTransport::kNotifyOffset, uint16_t{0});  // -> the queue's eventfd
    handler();                                    // the I/O thread's turn
    uint64_t v;
    if (::read(irqfd, &v, sizeof(v)) != sizeof(v)) state.SkipWithError("no interrupt");
  }
  (void)notify_fd;
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(len));
}
BENCHMARK(BM_NotifyToIrqfd)->Arg(64)->Arg(4096);

}  // namespace
}  // namespace pier::virtio
