// libFuzzer target for the virtio-pci transport as a hostile guest drives it: the input is a
// script of register accesses against real PciTransports (virtio-rng and a virtio-console with
// fake backends) on a pci::Bus, a fake platform and guest RAM laid out like a machine's (3 GiB
// below the 32-bit hole, the hole PROT_NONE, 2 MiB above 4 GiB). Operations: BAR 0 reads and
// writes at any offset and width (common config, ISR, device config, notify; notify writes take
// the ioeventfd fast path when one is registered at the address, as under KVM), MSI-X table and
// PBA accesses, config space accesses directly and through the 0xCF8/0xCFC mechanism (BAR
// sizing and moves, command register, MSI-X message control, the PCI_CFG window), driver-like
// macros (feature negotiation, queue set-up with good and bad ring layouts, status writes
// including 0), guest writes of descriptors and ring indices, I/O-thread rounds, console
// backend events, and injected platform failures (KVM refusing an MMIO range or an ioeventfd).
//
// Invariants (abort = finding), besides ASan/UBSan and the PROT_NONE hole catching any host
// access outside guest RAM that bypassed the guest-memory API's bounds checks:
//  - nothing throws out of a guest access;
//  - the device is activated at most once per reset, gets queue_notify only while active and
//    for its own queues, and is stopped (queues handed back) whenever the status reads 0;
//  - no ready queue ever holds more chains in flight than its size (Queue::in_flight());
//  - every registered ioeventfd belongs to a transport whose BAR 0 is mapped at the matching
//    notify address, and no two share an address (KVM would refuse the second);
//  - every MMIO range the platform maps lies outside guest RAM;
//  - the console's control queue stays within its documented bound.
#include <fuzzer/FuzzedDataProvider.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "boot/layout.hpp"
#include "devices/io_bus.hpp"
#include "devices/pci/bus.hpp"
#include "tests/unit/virtio/console_fake_backend.hpp"
#include "virtio/console/console_device.hpp"
#include "virtio/pci_transport.hpp"
#include "virtio/rng.hpp"
#include "virtio/virtio.hpp"
#include "vmm/error.hpp"
#include "vmm/event_loop.hpp"
#include "vmm/guest_memory.hpp"
#include "vmm/log.hpp"

using namespace pier;
using namespace pier::virtio;

namespace {

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "pci_transport_fuzz: invariant broken: %s\n", what.c_str());
  std::abort();
}

const bool g_trace = std::getenv("PCI_FUZZ_TRACE") != nullptr;
#define TRACE(...)                            \
  do {                                        \
    if (g_trace) {                            \
      std::fprintf(stderr, "  " __VA_ARGS__); \
      std::fputc('\n', stderr);               \
    }                                         \
  } while (0)

// PCI_FUZZ_STATS=1: totals over every input run, printed at exit (to see that a corpus reaches
// the device paths).
struct Totals {
  uint64_t inputs = 0, activations = 0, resets = 0, needs_reset = 0, max_in_flight = 0,
           rng_bytes = 0, slow_notifies = 0, fast_notifies = 0, mapped = 0;
  ~Totals() {
    if (std::getenv("PCI_FUZZ_STATS") == nullptr) return;
    std::fprintf(
        stderr,
        "pci_transport_fuzz: %llu inputs; %llu activations, %llu device resets, "
        "NEEDS_RESET seen %llu times, most chains in flight %llu, rng bytes %llu, "
        "notifies %llu slow / %llu by ioeventfd, BARs mapped in %llu\n",
        static_cast<unsigned long long>(inputs), static_cast<unsigned long long>(activations),
        static_cast<unsigned long long>(resets), static_cast<unsigned long long>(needs_reset),
        static_cast<unsigned long long>(max_in_flight), static_cast<unsigned long long>(rng_bytes),
        static_cast<unsigned long long>(slow_notifies),
        static_cast<unsigned long long>(fast_notifies), static_cast<unsigned long long>(mapped));
  }
} g_totals;

// Guest RAM: all of the low 3 GiB (lazily populated) so the hole above it is PROT_NONE, and a
// little high RAM so buffers can also sit above 4 GiB and straddle its end.
constexpr uint64_t kLowEnd = layout::kMmioHoleStart;
constexpr uint64_t kHighRam = 2ull << 20;
constexpr uint64_t kRamBytes = kLowEnd + kHighRam;
constexpr uint64_t kHighStart = layout::kHighRamStart;
constexpr uint64_t kRingArea = 0x100000;    // queue q of transport t: kRingArea + (t*64+q)*0x4000
constexpr uint64_t kBufferArea = 0x800000;  // 1 MiB of buffers

// PROT_NONE pages right after the end of guest RAM (where free), so a host access that runs
// past the last region faults like one into the hole does, instead of landing in whatever the
// host mapped there.
class EndGuard {
 public:
  explicit EndGuard(const GuestMemory& memory) {
    const MemoryRegion& last = memory.regions().back();
    void* end = static_cast<uint8_t*>(memory.host_address_of_region(last)) + last.size;
    void* p = ::mmap(end, kSize, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == end)
      guard_ = p;
    else if (p != MAP_FAILED)
      ::munmap(p, kSize);  // kernels without MAP_FIXED_NOREPLACE
  }
  ~EndGuard() {
    if (guard_ != nullptr) ::munmap(guard_, kSize);
  }
  EndGuard(const EndGuard&) = delete;
  EndGuard& operator=(const EndGuard&) = delete;

 private:
  static constexpr size_t kSize = 1ull << 30;
  void* guard_ = nullptr;
};

// The device as the transport sees it, wrapped so the harness sees the lifecycle calls and the
// queues the transport hands over.
class WatchedDevice final : public Device {
 public:
  explicit WatchedDevice(std::unique_ptr<Device> inner) : inner_(std::move(inner)) {}
  std::string_view name() const override { return inner_->name(); }
  uint32_t device_id() const override { return inner_->device_id(); }
  uint64_t device_features() const override { return inner_->device_features(); }
  bool ack_features(uint64_t f) override { return inner_->ack_features(f); }
  size_t config_size() const override { return inner_->config_size(); }
  void read_config(uint64_t offset, std::span<uint8_t> out) override {
    inner_->read_config(offset, out);
  }
  void write_config(uint64_t offset, std::span<const uint8_t> in) override {
    inner_->write_config(offset, in);
  }
  size_t num_queues() const override { return inner_->num_queues(); }
  uint16_t queue_max_size(size_t index) const override { return inner_->queue_max_size(index); }
  void activate(std::span<Queue> queues, Interrupt& interrupt) override {
    if (active) fail(std::string(name()) + ": activate() twice without a reset");
    if (queues.size() != num_queues()) fail("activate() with the wrong number of queues");
    this->queues = queues;
    active = true;
    ++activations;
    inner_->activate(queues, interrupt);
  }
  void reset() override {
    inner_->reset();
    active = false;
    queues = {};
    ++resets;
  }
  void queue_notify(uint16_t index) override {
    if (!active) fail(std::string(name()) + ": queue_notify() while not active");
    if (index >= num_queues()) fail("queue_notify() for queue " + std::to_string(index));
    inner_->queue_notify(index);
  }

  Device& inner() { return *inner_; }
  std::span<Queue> queues;
  bool active = false;
  uint64_t activations = 0, resets = 0;

 private:
  std::unique_ptr<Device> inner_;
};

// The machine's side, as KvmPciPlatform does it, with KVM's refusals modelled: an MMIO range
// overlapping another (IoBus throws), a second ioeventfd at an address (EEXIST), and failures
// the fuzzer injects (ENOSPC, ENOMEM).
class FakePlatform final : public PciPlatform {
 public:
  explicit FakePlatform(const GuestMemory& memory) : memory_(memory) {}

  void add_mmio(uint64_t base, uint64_t size, std::shared_ptr<BusDevice> device) override {
    if (fail_next_mmio) {
      fail_next_mmio = false;
      throw Error("injected: cannot map MMIO range");
    }
    if (memory_.contains(base, 1) || memory_.contains(base + size - 1, 1))
      fail("MMIO range mapped over guest RAM");
    mmio.add(base, size, device, "BAR");
    mapped[device.get()] = base;
  }
  void remove_mmio(uint64_t base, const BusDevice* device) override {
    if (mmio.remove(base, device)) mapped.erase(device);
  }
  void add_ioeventfd(int fd, uint64_t address) override {
    if (fail_ioeventfd_in > 0 && --fail_ioeventfd_in == 0)
      throw Error("injected: KVM_IOEVENTFD failed");
    if (ioeventfds.count(address)) throw Error("KVM_IOEVENTFD: address in use (EEXIST)");
    ioeventfds[address] = fd;
  }
  void remove_ioeventfd(int fd, uint64_t address) override {
    auto it = ioeventfds.find(address);
    if (it != ioeventfds.end() && it->second == fd) ioeventfds.erase(it);
  }
  void watch(int fd, std::function<void()> fn) override { watched[fd] = std::move(fn); }
  void unwatch(int fd) override { watched.erase(fd); }
  uint32_t allocate_msi_gsi() override { return next_gsi++; }
  void release_msi_gsi(uint32_t) override {}
  void set_msi_route(uint32_t gsi, uint64_t, uint32_t) override {
    if (gsi < 24 || gsi >= next_gsi) fail("MSI route for a GSI never allocated");
  }
  void add_irqfd(int fd, uint32_t gsi) override { irqfds[gsi] = fd; }
  void remove_irqfd(int, uint32_t gsi) override { irqfds.erase(gsi); }
  void set_intx(uint32_t gsi, bool level) override {
    if (gsi < 16 || gsi > 23) fail("INTx on GSI " + std::to_string(gsi));
    intx[gsi] = level;
  }
  void run_on_io_thread(const std::function<void()>& fn) override { fn(); }

  // One round of the I/O thread: every watched handler (each drains its own eventfd).
  void poll() {
    for (auto& [fd, fn] : std::map(watched)) {
      if (watched.count(fd)) fn();
    }
  }

  IoBus mmio{"mmio"};
  std::map<const BusDevice*, uint64_t> mapped;  // BusDevice -> base
  std::map<uint64_t, int> ioeventfds;
  std::map<int, std::function<void()>> watched;
  std::map<uint32_t, int> irqfds;
  std::map<uint32_t, bool> intx;
  uint32_t next_gsi = 24;
  bool fail_next_mmio = false;
  int fail_ioeventfd_in = 0;  // > 0: the Nth add_ioeventfd from now fails

 private:
  const GuestMemory& memory_;
};

struct Caps {
  uint8_t common = 0, notify = 0, isr = 0, device = 0, pci_cfg = 0, msix = 0;
};

struct Slot {
  std::shared_ptr<PciTransport> transport;
  WatchedDevice* device = nullptr;
  console::ConsoleDevice* console = nullptr;  // when the device is the console
  std::vector<std::shared_ptr<testing::FakePortBackend::State>> ports;
  Caps caps;
  unsigned slot = 0;
  std::set<int> notify_fds;  // the transport's queue eventfds (watched by the platform)
  // What the driver side last programmed per queue (for the guest-memory operations).
  struct Ring {
    uint64_t desc = 0, avail = 0, used = 0;
    uint16_t size = 8;
    uint16_t avail_idx = 0;
    uint16_t cursor = 0;  // next descriptor good_chain() uses
  };
  std::vector<Ring> rings;
};

uint32_t cfg_read(PciTransport& t, uint16_t off, size_t size = 4) {
  uint32_t v = 0;
  t.config_read(off, std::span(reinterpret_cast<uint8_t*>(&v), size));
  return v;
}

Caps find_caps(PciTransport& t) {
  Caps caps;
  uint8_t at = static_cast<uint8_t>(cfg_read(t, pci::cfg::kCapabilitiesPointer) & 0xff);
  for (int guard = 0; at && guard < 48; ++guard) {
    const uint32_t hdr = cfg_read(t, at);
    if ((hdr & 0xff) == pci::cfg::kCapMsix) caps.msix = at;
    if ((hdr & 0xff) == pci::cfg::kCapVendor) {
      switch ((hdr >> 24) & 0xff) {
        case 1:
          caps.common = at;
          break;
        case 2:
          caps.notify = at;
          break;
        case 3:
          caps.isr = at;
          break;
        case 4:
          caps.device = at;
          break;
        case 5:
          caps.pci_cfg = at;
          break;
      }
    }
    at = static_cast<uint8_t>((hdr >> 8) & 0xff);
  }
  return caps;
}

class Harness {
 public:
  explicit Harness(FuzzedDataProvider& in)
      : in_(in),
        memory_(GuestMemory::create(kRamBytes)),
        end_guard_(memory_),
        platform_(memory_),
        bus_(layout::kPciMmioStart, layout::kPciMmioEnd) {
    pio_.add(layout::kPciConfigAddress, 8, bus_.config_io(), "PCI config");
    // Small pages: the fuzzer touches a few scattered bytes, huge pages would zero 2 MiB each.
    for (const auto& r : memory_.regions())
      ::madvise(memory_.host_address_of_region(r), r.size, MADV_NOHUGEPAGE);
  }

  ~Harness() {
    ++g_totals.inputs;
    g_totals.mapped += !platform_.mapped.empty();
    for (auto& s : slots_) {
      g_totals.activations += s.device->activations;
      g_totals.resets += s.device->resets;
      g_totals.slow_notifies += s.transport->slow_notifies();
      if (s.console == nullptr)
        g_totals.rng_bytes += static_cast<RngDevice&>(s.device->inner()).bytes_served();
    }
    for (auto& s : slots_) bus_.remove(s.slot);
    for (auto& s : slots_) s.transport.reset();  // resets the devices, unmaps, releases
    loop_.post([this] { loop_.stop(); });
    loop_.run();
  }

  void add_rng() {
    add(std::make_unique<RngDevice>(in_.ConsumeIntegralInRange<size_t>(1, 8)), nullptr, {});
  }

  void add_console() {
    console::ConsoleOptions o;
    o.max_ports = in_.ConsumeIntegralInRange<uint32_t>(1, 3);
    o.queue_size = 8;
    o.control_queue_size = 8;
    o.console_ring_bytes = in_.ConsumeIntegralInRange<size_t>(0, 64);
    std::vector<console::PortConfig> configs;
    std::vector<std::shared_ptr<testing::FakePortBackend::State>> states(o.max_ports);
    const uint32_t n = in_.ConsumeIntegralInRange<uint32_t>(0, o.max_ports);
    for (uint32_t i = 0; i < n; ++i) {
      auto [backend, state] = testing::make_fake_backend(in_.ConsumeBool());
      state->write_budget = 4096;  // a peer that reads like a socket, not all at once
      console::PortConfig c;
      c.console = i == 0 || in_.ConsumeBool();
      if (in_.ConsumeBool()) c.name = "p" + std::to_string(i);
      c.backend = std::move(backend);
      c.id = i;
      states[i] = state;
      configs.push_back(std::move(c));
    }
    auto dev = std::make_unique<console::ConsoleDevice>(loop_, o, std::move(configs));
    console::ConsoleDevice* raw = dev.get();
    add(std::move(dev), raw, std::move(states));
  }

  size_t count() const { return slots_.size(); }

  // One scripted operation.
  void step() {
    Slot& s = slots_[in_.ConsumeIntegralInRange<size_t>(0, slots_.size() - 1)];
    const int op = in_.ConsumeIntegralInRange<int>(0, 21);
    switch (op) {
      case 0:
        bar0_read(s, steer_bar0_offset(), access_size());
        break;
      case 1:
        bar0_write(s, steer_bar0_offset(), access_size(), in_.ConsumeIntegral<uint64_t>());
        break;
      case 2:
        msix_access(s);
        break;
      case 3:
        config_access(s);
        break;
      case 4:
        config_io_access(s);
        break;
      case 5:
        negotiate(s);
        break;
      case 6:
        setup_queue(s);
        break;
      case 7:
        write_status(s, steer_status());
        break;
      case 8:
        write_descriptor(s);
        break;
      case 9:
        publish_avail(s);
        break;
      case 10:
        notify(s);
        break;
      case 11:
        io_round();
        break;
      case 12:
        backend_event(s);
        break;
      case 13:
        if (in_.ConsumeBool()) {
          platform_.fail_next_mmio = true;
        } else {
          platform_.fail_ioeventfd_in = in_.ConsumeIntegralInRange<int>(1, 4);
        }
        TRACE("inject a platform failure");
        break;
      case 14:
        guest_bytes();
        break;
      case 15:
        control_bytes();
        break;
      case 16:
        enable_memory(s, in_.ConsumeBool());
        break;
      case 17:
        move_bar(s);
        break;
      case 18:
        bring_up(s);
        break;
      case 19:
      case 20:
        good_chain(s);
        break;
      case 21:
        console_message(s);
        break;
    }
    check();
  }

  void check() {
    for (auto& s : slots_) {
      WatchedDevice& d = *s.device;
      const uint8_t status = s.transport->status();
      if (status & kStatusNeedsReset) ++g_totals.needs_reset;
      // Only a reset brings the status back to 0, and it stops the device.
      if (status == 0 && s.device->active) fail(std::string(d.name()) + ": active with status 0");
      for (Queue& q : d.queues) {
        g_totals.max_in_flight = std::max<uint64_t>(g_totals.max_in_flight, q.in_flight());
        if (q.ready() && q.in_flight() > q.size()) {
          fail(std::string(d.name()) + ": queue " + std::to_string(q.index()) + " holds " +
               std::to_string(q.in_flight()) + " chains in flight, size " +
               std::to_string(q.size()));
        }
      }
      if (s.console != nullptr &&
          s.console->stats().control_pending > 6u * s.console->options().max_ports) {
        fail("console control queue holds " + std::to_string(s.console->stats().control_pending));
      }
    }
    // ioeventfds only where a transport's BAR 0 is mapped now, at its own notify addresses.
    for (const auto& [address, fd] : platform_.ioeventfds) {
      bool ok = false;
      for (auto& s : slots_) {
        if (!s.notify_fds.count(fd)) continue;
        const uint64_t base = s.transport->bar0_address();
        const bool bar_mapped = std::any_of(platform_.mapped.begin(), platform_.mapped.end(),
                                            [&](const auto& m) { return m.second == base; });
        if (bar_mapped && address >= base + PciTransport::kNotifyOffset &&
            (address - base - PciTransport::kNotifyOffset) % PciTransport::kNotifyMultiplier == 0 &&
            (address - base - PciTransport::kNotifyOffset) / PciTransport::kNotifyMultiplier <
                s.device->num_queues()) {
          ok = true;
        }
      }
      if (!ok) {
        char buf[96];
        std::snprintf(buf, sizeof(buf), "ioeventfd %d left at %#llx with no BAR 0 mapped there", fd,
                      static_cast<unsigned long long>(address));
        fail(buf);
      }
    }
  }

 private:
  void add(std::unique_ptr<Device> inner, console::ConsoleDevice* console,
           std::vector<std::shared_ptr<testing::FakePortBackend::State>> ports) {
    auto watched = std::make_unique<WatchedDevice>(std::move(inner));
    WatchedDevice* raw = watched.get();
    const std::set<int> before = watched_fds();
    Slot s;
    s.transport = std::make_shared<PciTransport>(std::move(watched), memory_, platform_, bus_);
    s.slot = s.transport->attach();
    s.device = raw;
    s.console = console;
    s.ports = std::move(ports);
    s.caps = find_caps(*s.transport);
    for (int fd : watched_fds())
      if (!before.count(fd)) s.notify_fds.insert(fd);
    s.rings.resize(raw->num_queues());
    const size_t t = slots_.size();
    for (size_t q = 0; q < s.rings.size(); ++q) {
      const uint64_t base = kRingArea + (t * 64 + q) * 0x4000;
      s.rings[q].desc = base;
      s.rings[q].avail = base + 0x1000;
      s.rings[q].used = base + 0x2000;
    }
    slots_.push_back(std::move(s));
  }

  std::set<int> watched_fds() const {
    std::set<int> fds;
    for (const auto& [fd, fn] : platform_.watched) fds.insert(fd);
    return fds;
  }

  size_t access_size() {
    static constexpr size_t kSizes[] = {1, 2, 4, 8, 1, 2, 4, 3};
    return kSizes[in_.ConsumeIntegralInRange<size_t>(0, 7)];
  }

  uint64_t steer_bar0_offset() {
    const uint64_t v = in_.ConsumeIntegral<uint16_t>();
    switch (in_.ConsumeIntegralInRange<int>(0, 4)) {
      case 0:
        return PciTransport::kCommonOffset + v % 0x40;
      case 1:
        return PciTransport::kIsrOffset + v % 4;
      case 2:
        return PciTransport::kDeviceConfigOffset + v % 0x20;
      case 3:
        return PciTransport::kNotifyOffset + v % 0x40;
      default:
        return v;
    }
  }

  // Guest accesses go through the machine's MMIO bus: nothing happens while the BAR is not
  // mapped there.
  void bar0_read(Slot& s, uint64_t offset, size_t size) {
    uint8_t buf[8];
    TRACE("read BAR0+%#llx/%zu", static_cast<unsigned long long>(offset), size);
    platform_.mmio.read(s.transport->bar0_address() + offset, std::span(buf, size));
  }

  void bar0_write(Slot& s, uint64_t offset, size_t size, uint64_t value) {
    uint8_t buf[8];
    std::memcpy(buf, &value, 8);
    const uint64_t address = s.transport->bar0_address() + offset;
    TRACE("write BAR0+%#llx/%zu = %#llx", static_cast<unsigned long long>(offset), size,
          static_cast<unsigned long long>(value));
    // KVM takes a write at an ioeventfd's address itself (length 0 matches any width).
    if (auto it = platform_.ioeventfds.find(address); it != platform_.ioeventfds.end()) {
      ++g_totals.fast_notifies;
      const uint64_t one = 1;
      [[maybe_unused]] ssize_t n = ::write(it->second, &one, sizeof(one));
      return;
    }
    platform_.mmio.write(address, std::span<const uint8_t>(buf, size));
  }

  template <class T>
  void common_write(Slot& s, uint64_t offset, T value) {
    bar0_write(s, PciTransport::kCommonOffset + offset, sizeof(T), value);
  }

  void msix_access(Slot& s) {
    const uint64_t size = s.transport->msix_bar_size();
    const uint64_t offset = in_.ConsumeBool() ? in_.ConsumeIntegral<uint16_t>() % 0x40
                                              : in_.ConsumeIntegral<uint16_t>() % size;
    const size_t n = access_size();
    uint8_t buf[8];
    const uint64_t v = in_.ConsumeIntegral<uint64_t>();
    std::memcpy(buf, &v, 8);
    const uint64_t address = s.transport->msix_bar_address() + offset;
    if (in_.ConsumeBool()) {
      TRACE("write MSI-X BAR+%#llx/%zu", static_cast<unsigned long long>(offset), n);
      platform_.mmio.write(address, std::span<const uint8_t>(buf, n));
    } else {
      platform_.mmio.read(address, std::span(buf, n));
    }
  }

  uint16_t steer_config_offset(Slot& s) {
    const uint16_t v = in_.ConsumeIntegral<uint16_t>();
    switch (in_.ConsumeIntegralInRange<int>(0, 6)) {
      case 0:
        return pci::cfg::kCommand;
      case 1:
        return static_cast<uint16_t>(pci::cfg::kBar0 + 4 * (v % 6));
      case 2:
        return static_cast<uint16_t>(s.caps.msix + v % 12);
      case 3:
        return static_cast<uint16_t>(s.caps.pci_cfg + v % 20);
      case 4:
        return static_cast<uint16_t>(v % 0x40);
      case 5:
        return static_cast<uint16_t>(v % 0x100);
      default:
        return v;  // beyond the 256 bytes too
    }
  }

  void config_access(Slot& s) {
    const uint16_t offset = steer_config_offset(s);
    const size_t n = std::min<size_t>(access_size(), 4);
    uint8_t buf[4];
    const uint32_t v = steer_config_value(s);
    std::memcpy(buf, &v, 4);
    if (in_.ConsumeBool()) {
      TRACE("config write %#x/%zu = %#x", offset, n, v);
      s.transport->config_write(offset, std::span<const uint8_t>(buf, n));
    } else {
      s.transport->config_read(offset, std::span(buf, n));
    }
  }

  uint32_t steer_config_value(Slot& s) {
    const uint32_t raw = in_.ConsumeIntegral<uint32_t>();
    switch (in_.ConsumeIntegralInRange<int>(0, 5)) {
      case 0:
        return 0xffffffff;  // BAR sizing
      case 1:
        return static_cast<uint32_t>(layout::kPciMmioStart + (raw % 64) * 0x4000) | 4;
      case 2:
        return static_cast<uint32_t>(s.transport->bar0_address()) | 4;
      case 3:
        return static_cast<uint32_t>((raw % kLowEnd) & ~0xfffu) | 4;  // over RAM
      case 4:
        return raw & 0xc007;  // command bits, MSI-X enable/mask in the high byte
      default:
        return raw;
    }
  }

  // The same, the way a guest reaches config space: CONFIG_ADDRESS at 0xCF8, data at 0xCFC-F,
  // sometimes for a function that is not there.
  void config_io_access(Slot& s) {
    const unsigned dev = in_.ConsumeBool() ? s.slot : in_.ConsumeIntegralInRange<unsigned>(0, 31);
    const uint8_t reg = static_cast<uint8_t>(steer_config_offset(s));
    uint32_t address = 0x8000'0000u | (dev << 11) | (reg & 0xfc);
    if (in_.ConsumeBool()) address = in_.ConsumeIntegral<uint32_t>();
    pio_.write(layout::kPciConfigAddress, std::span(reinterpret_cast<const uint8_t*>(&address), 4));
    const size_t n = std::min<size_t>(access_size(), 4);
    const uint64_t port = layout::kPciConfigAddress + 4 + in_.ConsumeIntegralInRange<int>(0, 3);
    uint8_t buf[4];
    const uint32_t v = steer_config_value(s);
    std::memcpy(buf, &v, 4);
    if (in_.ConsumeBool()) {
      pio_.write(port, std::span<const uint8_t>(buf, n));
    } else {
      pio_.read(port, std::span(buf, n));
    }
  }

  void enable_memory(Slot& s, bool on) {
    const uint16_t command = on ? pci::cfg::kCommandMemory | pci::cfg::kCommandBusMaster
                                : in_.ConsumeIntegral<uint16_t>();
    TRACE("command = %#x", command);
    s.transport->config_write(pci::cfg::kCommand,
                              std::span(reinterpret_cast<const uint8_t*>(&command), 2));
    if (in_.ConsumeBool()) {  // MSI-X enable (and sometimes function mask)
      const uint16_t control = in_.ConsumeBool() ? 0x8000 : in_.ConsumeIntegral<uint16_t>();
      s.transport->config_write(static_cast<uint16_t>(s.caps.msix + 2),
                                std::span(reinterpret_cast<const uint8_t*>(&control), 2));
    }
  }

  // BAR 0 or the MSI-X BAR to a new place: in the PCI window, onto the other BAR or another
  // transport's, over RAM, or raw; 64-bit BARs sometimes get only one half.
  void move_bar(Slot& s) {
    const unsigned bar = in_.ConsumeBool() ? 0 : PciTransport::kMsixBar;
    uint64_t target;
    switch (in_.ConsumeIntegralInRange<int>(0, 4)) {
      case 0:
        target = layout::kPciMmioStart + in_.ConsumeIntegralInRange<uint64_t>(0, 255) * 0x4000;
        break;
      case 1: {
        const Slot& o = slots_[in_.ConsumeIntegralInRange<size_t>(0, slots_.size() - 1)];
        target = in_.ConsumeBool() ? o.transport->bar0_address() : o.transport->msix_bar_address();
        break;
      }
      case 2:
        target = in_.ConsumeIntegralInRange<uint64_t>(0, kLowEnd - 1) & ~0xfffull;
        break;
      case 3:
        target = kHighStart + in_.ConsumeIntegralInRange<uint64_t>(0, kHighRam);
        break;
      default:
        target = in_.ConsumeIntegral<uint64_t>();
        break;
    }
    TRACE("move BAR%u to %#llx", bar, static_cast<unsigned long long>(target));
    const uint32_t low = static_cast<uint32_t>(target) | 4,
                   high = static_cast<uint32_t>(target >> 32);
    const uint16_t at = static_cast<uint16_t>(pci::cfg::kBar0 + 4 * bar);
    const int halves = in_.ConsumeIntegralInRange<int>(0, 2);
    if (halves != 2)
      s.transport->config_write(at, std::span(reinterpret_cast<const uint8_t*>(&low), 4));
    if (halves != 1)
      s.transport->config_write(static_cast<uint16_t>(at + 4),
                                std::span(reinterpret_cast<const uint8_t*>(&high), 4));
  }

  uint8_t steer_status() {
    static constexpr uint8_t kSteps[] = {
        0,
        kStatusAcknowledge,
        kStatusAcknowledge | kStatusDriver,
        kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk,
        kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk,
        kStatusFailed,
    };
    const uint8_t pick = in_.ConsumeIntegralInRange<uint8_t>(0, 6);
    return pick < 6 ? kSteps[pick] : in_.ConsumeIntegral<uint8_t>();
  }

  void write_status(Slot& s, uint8_t status) {
    TRACE("status = %#x", status);
    common_write<uint8_t>(s, 0x14, status);
    // The write reached this transport unless its BAR 0 is not mapped, or another BAR is mapped
    // at that address (then that device got it). Status 0 means the reset is complete (virtio
    // 1.2 §4.1.4.3.2, the driver reads 0 back): the device is out of its queues by then.
    if (status == 0 && s.transport->status() == 0) {
      if (s.device->active) fail("device still active after reset");
      if (!s.device->queues.empty()) fail("queues kept after reset");
      for (auto& r : s.rings) r.avail_idx = 0;
    }
  }

  void negotiate(Slot& s) {
    const uint64_t offered = s.device->device_features();
    uint64_t want = offered & (in_.ConsumeIntegral<uint64_t>() | kFeatureVersion1);
    if (in_.ConsumeIntegralInRange<int>(0, 7) == 0) want = in_.ConsumeIntegral<uint64_t>();
    TRACE("negotiate %#llx", static_cast<unsigned long long>(want));
    write_status(s, kStatusAcknowledge | kStatusDriver);
    common_write<uint32_t>(s, 0x08, 0);
    common_write<uint32_t>(s, 0x0c, static_cast<uint32_t>(want));
    common_write<uint32_t>(s, 0x08, 1);
    common_write<uint32_t>(s, 0x0c, static_cast<uint32_t>(want >> 32));
    write_status(s, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  }

  // A queue programmed through the common configuration: size, vector, rings (well placed,
  // straddling the end of low RAM, in the hole, misaligned, or raw), then maybe enabled.
  void setup_queue(Slot& s) {
    const uint16_t q = in_.ConsumeBool() ? in_.ConsumeIntegralInRange<uint16_t>(
                                               0, static_cast<uint16_t>(s.rings.size() - 1))
                                         : in_.ConsumeIntegral<uint16_t>();
    static constexpr uint16_t kSizes[] = {1, 2, 4, 8, 8, 16, 3, 0};
    const uint16_t size = in_.ConsumeBool() ? kSizes[in_.ConsumeIntegralInRange<int>(0, 7)]
                                            : in_.ConsumeIntegral<uint16_t>();
    Slot::Ring r;
    if (q < s.rings.size()) r = s.rings[q];
    switch (in_.ConsumeIntegralInRange<int>(0, 5)) {
      case 0:
      case 1:
        break;  // its own area
      case 2:
        r.used = kLowEnd - in_.ConsumeIntegralInRange<uint64_t>(0, 16) * 4;
        break;
      case 3:
        r.desc = kLowEnd + in_.ConsumeIntegralInRange<uint64_t>(0, 0x1000) * 16;
        break;
      case 4:
        r.avail = kHighStart + kHighRam - in_.ConsumeIntegralInRange<uint64_t>(0, 64) * 2;
        break;
      default:
        r.desc += in_.ConsumeIntegralInRange<uint64_t>(0, 15);
        r.avail = in_.ConsumeIntegral<uint64_t>();
        break;
    }
    TRACE("queue %u: size %u desc %#llx avail %#llx used %#llx", q, size,
          static_cast<unsigned long long>(r.desc), static_cast<unsigned long long>(r.avail),
          static_cast<unsigned long long>(r.used));
    common_write<uint16_t>(s, 0x16, q);
    common_write<uint16_t>(s, 0x18, size);
    common_write<uint16_t>(s, 0x1a, in_.ConsumeBool() ? q : in_.ConsumeIntegral<uint16_t>());
    if (in_.ConsumeBool()) {
      common_write<uint64_t>(s, 0x20, r.desc);
      common_write<uint64_t>(s, 0x28, r.avail);
      common_write<uint64_t>(s, 0x30, r.used);
    } else {  // as two 32-bit halves, like Linux's vp_iowrite64_twopart
      common_write<uint32_t>(s, 0x20, static_cast<uint32_t>(r.desc));
      common_write<uint32_t>(s, 0x24, static_cast<uint32_t>(r.desc >> 32));
      common_write<uint32_t>(s, 0x28, static_cast<uint32_t>(r.avail));
      common_write<uint32_t>(s, 0x2c, static_cast<uint32_t>(r.avail >> 32));
      common_write<uint32_t>(s, 0x30, static_cast<uint32_t>(r.used));
      common_write<uint32_t>(s, 0x34, static_cast<uint32_t>(r.used >> 32));
    }
    if (in_.ConsumeIntegralInRange<int>(0, 3) != 0) common_write<uint16_t>(s, 0x1c, 1);
    if (q < s.rings.size()) {
      r.size = size;
      r.avail_idx = 0;
      s.rings[q] = r;
    }
  }

  uint64_t steer_buffer_address() {
    const uint64_t v = in_.ConsumeIntegral<uint32_t>();
    switch (in_.ConsumeIntegralInRange<int>(0, 7)) {
      case 0:
      case 1:
      case 2:
        return kBufferArea + v % 0x100000;
      case 3:
        return kLowEnd - v % 128;  // straddling the hole
      case 4:
        return kHighStart + v % (kHighRam + 128);  // above 4 GiB, and past the end
      case 5:
        return kRingArea + v % 0x40000;  // over the rings themselves
      case 6:
        return kLowEnd + v;  // in the hole
      default:
        return in_.ConsumeIntegral<uint64_t>();
    }
  }

  // The guest writes one descriptor of a queue it set up.
  void write_descriptor(Slot& s) {
    auto& r = s.rings[in_.ConsumeIntegralInRange<size_t>(0, s.rings.size() - 1)];
    const uint16_t n = r.size ? r.size : 1;
    struct {
      uint64_t addr;
      uint32_t len;
      uint16_t flags, next;
    } d{};
    const uint16_t index = in_.ConsumeIntegralInRange<uint16_t>(0, static_cast<uint16_t>(n - 1));
    d.addr = steer_buffer_address();
    d.len = in_.ConsumeBool() ? in_.ConsumeIntegralInRange<uint32_t>(1, 256)
                              : in_.ConsumeIntegral<uint32_t>();
    d.flags = in_.ConsumeIntegral<uint8_t>() & 0x7;
    d.next = in_.ConsumeBool()
                 ? in_.ConsumeIntegralInRange<uint16_t>(0, static_cast<uint16_t>(n - 1))
                 : in_.ConsumeIntegral<uint16_t>();
    if (d.flags & kDescFlagIndirect) {  // an indirect table in the buffer area, filled
      d.addr = kBufferArea + (in_.ConsumeIntegral<uint16_t>() % 0x100) * 0x100;
      d.len = in_.ConsumeBool() ? 16u * in_.ConsumeIntegralInRange<uint32_t>(1, 8) : d.len;
      for (uint32_t i = 0; i < 8 && in_.ConsumeBool(); ++i) {
        decltype(d) e{};
        e.addr = steer_buffer_address();
        e.len = in_.ConsumeIntegralInRange<uint32_t>(1, 128);
        e.flags = in_.ConsumeIntegral<uint8_t>() & 0x7;
        e.next = in_.ConsumeIntegralInRange<uint16_t>(0, 8);
        memory_.write_obj(d.addr + 16 * i, e);
      }
    }
    memory_.write_obj(r.desc + 16ull * index, d);
  }

  // The guest puts heads in the avail ring and publishes a new avail.idx (usually a few entries
  // on, sometimes far: the queue must refuse a jump beyond its size).
  void publish_avail(Slot& s) {
    auto& r = s.rings[in_.ConsumeIntegralInRange<size_t>(0, s.rings.size() - 1)];
    const uint16_t n = r.size ? r.size : 1;
    const uint16_t count = in_.ConsumeIntegralInRange<uint16_t>(1, 4);
    for (uint16_t i = 0; i < count; ++i) {
      const uint16_t head = in_.ConsumeBool() ? in_.ConsumeIntegralInRange<uint16_t>(0, n - 1)
                                              : in_.ConsumeIntegral<uint16_t>();
      memory_.write_obj<uint16_t>(r.avail + 4 + 2ull * ((r.avail_idx + i) % n), head);
    }
    r.avail_idx = static_cast<uint16_t>(r.avail_idx + count);
    if (in_.ConsumeIntegralInRange<int>(0, 7) == 0) r.avail_idx = in_.ConsumeIntegral<uint16_t>();
    memory_.write_obj<uint16_t>(r.avail + 2, r.avail_idx);
    if (in_.ConsumeBool()) {  // flags / used_event
      memory_.write_obj<uint16_t>(r.avail, in_.ConsumeIntegral<uint8_t>() & 1);
      memory_.write_obj<uint16_t>(r.avail + 4 + 2ull * n, in_.ConsumeIntegral<uint16_t>());
    }
    if (in_.ConsumeBool()) notify_queue(s, static_cast<uint16_t>(&r - s.rings.data()));
  }

  void notify_queue(Slot& s, uint16_t q) {
    const uint16_t v = q;
    bar0_write(s, PciTransport::kNotifyOffset + uint64_t(q) * PciTransport::kNotifyMultiplier,
               in_.ConsumeBool() ? 2 : 4, v);
    if (in_.ConsumeBool()) io_round();
  }

  void notify(Slot& s) {
    const uint16_t q = in_.ConsumeBool() ? in_.ConsumeIntegralInRange<uint16_t>(
                                               0, static_cast<uint16_t>(s.rings.size() - 1))
                                         : in_.ConsumeIntegral<uint16_t>();
    notify_queue(s, q);
  }

  void io_round() {
    TRACE("I/O round");
    platform_.poll();
    // Continuations the console posted (its per-run budget) and emergency-write flushes.
    int rounds = 0;
    loop_.post([] {});
    loop_.run_until([&] { return rounds++ > 0; },
                    std::chrono::steady_clock::now() + std::chrono::seconds(5));
  }

  void backend_event(Slot& s) {
    if (s.console == nullptr || s.ports.empty()) return;
    auto& state = s.ports[in_.ConsumeIntegralInRange<size_t>(0, s.ports.size() - 1)];
    if (!state || state->stopped) return;
    switch (in_.ConsumeIntegralInRange<int>(0, 4)) {
      case 0:
        state->connect();
        break;
      case 1:
        state->disconnect();
        break;
      case 2:
        state->send(in_.ConsumeBytesAsString(in_.ConsumeIntegralInRange<size_t>(0, 64)));
        break;
      case 3:
        state->write_budget = 0;
        break;
      default:
        state->make_room(in_.ConsumeIntegralInRange<size_t>(0, 128));
        break;
    }
  }

  // Raw guest bytes anywhere in the ring and buffer areas (rings rewritten under the device).
  void guest_bytes() {
    const uint64_t at = in_.ConsumeBool() ? kRingArea + in_.ConsumeIntegral<uint32_t>() % 0x40000
                                          : steer_buffer_address();
    const auto bytes = in_.ConsumeBytes<uint8_t>(in_.ConsumeIntegralInRange<size_t>(1, 32));
    memory_.write(at, bytes);
  }

  // A driver's whole initialization, as Linux's virtio_pci does it: memory decoding (and
  // MSI-X) on, features, every queue at size 8 in its own area with a vector, DRIVER_OK. So the
  // rest of the script mostly runs against a live device.
  void bring_up(Slot& s) {
    TRACE("bring-up");
    write_status(s, 0);
    enable_memory(s, true);
    negotiate(s);
    for (uint16_t q = 0; q < s.rings.size(); ++q) {
      Slot::Ring& r = s.rings[q];
      const uint64_t base = r.desc & ~0x3fffull;
      if (base < kRingArea || base >= kBufferArea) continue;  // moved by setup_queue: skip
      r = Slot::Ring{};
      r.desc = base;
      r.avail = base + 0x1000;
      r.used = base + 0x2000;
      memory_.fill(base, 0x3000, 0, "rings");
      common_write<uint16_t>(s, 0x16, q);
      common_write<uint16_t>(s, 0x18, r.size);
      common_write<uint16_t>(s, 0x1a, q);
      common_write<uint64_t>(s, 0x20, r.desc);
      common_write<uint64_t>(s, 0x28, r.avail);
      common_write<uint64_t>(s, 0x30, r.used);
      common_write<uint16_t>(s, 0x1c, 1);
    }
    write_status(s, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
  }

  // A chain a driver would post on queue q: one or two buffers in the buffer area, writable,
  // or readable with bytes in them on a console transmit queue; published and kicked.
  void good_chain(Slot& s) {
    const uint16_t q =
        in_.ConsumeIntegralInRange<uint16_t>(0, static_cast<uint16_t>(s.rings.size() - 1));
    const bool readable = s.console != nullptr && q % 2 == 1;
    post(s, q, readable, in_.ConsumeIntegralInRange<uint32_t>(1, 64), std::nullopt);
  }

  void post(Slot& s, uint16_t q, bool readable, uint32_t len,
            std::optional<std::span<const uint8_t>> bytes) {
    Slot::Ring& r = s.rings[q];
    if (r.size == 0 || (r.size & (r.size - 1)) != 0 || r.size > 256) return;
    const uint16_t head = r.cursor++ % r.size;
    const uint64_t buffer = kBufferArea + (uint64_t(q) * 64 + head) * 0x100;
    if (bytes) {
      memory_.write(buffer, *bytes);
    } else if (readable) {
      memory_.write(buffer, in_.ConsumeBytes<uint8_t>(len));
    }
    struct {
      uint64_t addr;
      uint32_t len;
      uint16_t flags, next;
    } d{buffer, len, static_cast<uint16_t>(readable ? 0 : kDescFlagWrite), 0};
    memory_.write_obj(r.desc + 16ull * head, d);
    memory_.write_obj<uint16_t>(r.avail + 4 + 2ull * (r.avail_idx % r.size), head);
    memory_.write_obj<uint16_t>(r.avail + 2, ++r.avail_idx);
    TRACE("post %s buffer of %u on queue %u (head %u)", readable ? "readable" : "writable", len, q,
          head);
    notify_queue(s, q);
  }

  // The console's control traffic a driver sends: control-rx buffers, then DEVICE_READY,
  // PORT_READY or PORT_OPEN for a port (or any message) on control tx.
  void console_message(Slot& s) {
    if (s.console == nullptr) return;
    post(s, 2, false, 64, std::nullopt);
    struct {
      uint32_t id;
      uint16_t event, value;
    } m{};
    switch (in_.ConsumeIntegralInRange<int>(0, 3)) {
      case 0:
        m = {0xffffffffu, 0, 1};
        break;
      case 1:
        m = {in_.ConsumeIntegralInRange<uint32_t>(0, 3), 3, 1};
        break;
      case 2:
        m = {in_.ConsumeIntegralInRange<uint32_t>(0, 3), 6, 1};
        break;
      default:
        m = {in_.ConsumeIntegral<uint32_t>(), in_.ConsumeIntegral<uint16_t>(),
             in_.ConsumeIntegral<uint16_t>()};
        break;
    }
    post(s, 3, true, sizeof(m), std::span(reinterpret_cast<const uint8_t*>(&m), sizeof(m)));
  }

  // A console control message written somewhere in the buffer area, for the hostile
  // descriptors to point at.
  void control_bytes() {
    const uint64_t at = kBufferArea + (in_.ConsumeIntegral<uint16_t>() % 0x100) * 0x100;
    struct {
      uint32_t id;
      uint16_t event, value;
    } m{};
    m.id = in_.ConsumeIntegralInRange<uint32_t>(0, 4);
    m.event = in_.ConsumeIntegralInRange<uint16_t>(0, 8);
    m.value = in_.ConsumeIntegralInRange<uint16_t>(0, 2);
    memory_.write_obj(at, m);
  }

  FuzzedDataProvider& in_;
  GuestMemory memory_;
  EndGuard end_guard_;
  EventLoop loop_;
  FakePlatform platform_;
  IoBus pio_{"pio"};
  pci::Bus bus_;
  std::vector<Slot> slots_;
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  log::set_level(g_trace ? log::Level::kDebug : log::Level::kError);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  Harness h(in);
  const uint8_t which = in.ConsumeIntegral<uint8_t>();
  if (which & 1) h.add_rng();
  if (which & 2 || h.count() == 0) h.add_console();
  if (which & 4) h.add_rng();
  h.check();
  for (int ops = 0; ops < 512 && in.remaining_bytes() > 0; ++ops) h.step();
  return 0;
}
