// virtio-pci transport against a fake platform (no KVM): capabilities, feature negotiation,
// BAR mapping that follows the command register and relocation, queue set-up through the common
// configuration, notify on the slow path, MSI-X routes and delivery, reset, NEEDS_RESET.
#include "virtio/pci_transport.hpp"

#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <map>

#include "boot/layout.hpp"
#include "virtio/rng.hpp"
#include "virtio/virtio.hpp"
#include "vmm/error.hpp"

namespace pier::virtio {
namespace {

class FakePlatform final : public PciPlatform {
 public:
  void add_mmio(uint64_t base, uint64_t, std::shared_ptr<BusDevice> device) override {
    mmio[base] = std::move(device);
  }
  void remove_mmio(uint64_t base, const BusDevice* device) override {
    auto it = mmio.find(base);
    if (it != mmio.end() && it->second.get() == device) mmio.erase(it);
  }
  void add_ioeventfd(int fd, uint64_t address) override {
    if (ioeventfds_until_failure >= 0 && ioeventfds_until_failure-- == 0)
      throw Error("KVM_IOEVENTFD: no space left on the io bus (fake)");
    ioeventfds[address] = fd;
  }
  void remove_ioeventfd(int, uint64_t address) override { ioeventfds.erase(address); }
  void watch(int fd, std::function<void()> fn) override { watched[fd] = std::move(fn); }
  void unwatch(int fd) override { watched.erase(fd); }
  uint32_t allocate_msi_gsi() override { return next_gsi++; }
  void release_msi_gsi(uint32_t) override {}
  void set_msi_route(uint32_t gsi, uint64_t address, uint32_t data) override {
    routes[gsi] = {address, data};
  }
  void add_irqfd(int fd, uint32_t gsi) override { irqfds[gsi] = fd; }
  void remove_irqfd(int, uint32_t gsi) override { irqfds.erase(gsi); }
  void set_intx(uint32_t gsi, bool level) override { intx[gsi] = level; }
  // One thread plays vCPU and I/O thread (poll()): run at once.
  void run_on_io_thread(const std::function<void()>& fn) override { fn(); }

  // Runs the I/O thread's work: every watched handler (each drains its own eventfd).
  void poll() {
    for (auto& [fd, fn] : std::map(watched)) fn();
  }

  std::map<uint64_t, std::shared_ptr<BusDevice>> mmio;
  std::map<uint64_t, int> ioeventfds;
  std::map<int, std::function<void()>> watched;
  std::map<uint32_t, std::pair<uint64_t, uint32_t>> routes;
  std::map<uint32_t, int> irqfds;
  std::map<uint32_t, bool> intx;
  uint32_t next_gsi = 24;
  int ioeventfds_until_failure = -1;  // >= 0: that many more succeed, then one throws
};

// Counts what the transport asks of it; `queues` queues of 8.
class CountingDevice final : public Device {
 public:
  explicit CountingDevice(size_t queues) : queues_(queues) {}
  std::string_view name() const override { return "counting"; }
  uint32_t device_id() const override { return 4; }
  uint64_t device_features() const override { return kQueueFeatures; }
  bool ack_features(uint64_t) override { return true; }
  size_t config_size() const override { return 0; }
  void read_config(uint64_t, std::span<uint8_t> out) override { read_config_bytes({}, 0, out); }
  void write_config(uint64_t, std::span<const uint8_t>) override {}
  size_t num_queues() const override { return queues_; }
  uint16_t queue_max_size(size_t) const override { return 8; }
  void activate(std::span<Queue>, Interrupt&) override { ++activations; }
  void reset() override { ++resets; }
  void queue_notify(uint16_t) override {}

  int activations = 0, resets = 0;

 private:
  size_t queues_;
};

uint64_t eventfd_count(int fd) {
  uint64_t v = 0;
  return ::read(fd, &v, sizeof(v)) == sizeof(v) ? v : 0;
}

class PciTransportTest : public ::testing::Test {
 protected:
  PciTransportTest() {
    transport =
        std::make_shared<PciTransport>(std::make_unique<RngDevice>(), memory, platform, bus);
    slot = transport->attach();
  }

  uint32_t cfg32(uint16_t off) {
    uint32_t v = 0;
    transport->config_read(off, std::span(reinterpret_cast<uint8_t*>(&v), 4));
    return v;
  }
  void set_cfg16(uint16_t off, uint16_t v) {
    transport->config_write(off, std::span(reinterpret_cast<const uint8_t*>(&v), 2));
  }
  void enable_memory() {
    set_cfg16(pci::cfg::kCommand, pci::cfg::kCommandMemory | pci::cfg::kCommandBusMaster);
  }
  BusDevice& bar0() { return *platform.mmio.at(transport->bar0_address()); }
  template <class T>
  void w(uint64_t off, T v) {
    bar0().write(off, std::span(reinterpret_cast<const uint8_t*>(&v), sizeof(T)));
  }
  template <class T>
  T r(uint64_t off) {
    T v{};
    bar0().read(off, std::span(reinterpret_cast<uint8_t*>(&v), sizeof(T)));
    return v;
  }
  // Capability offset of the first virtio capability of `type`, or of MSI-X (type 0).
  uint8_t find_cap(uint8_t id, uint8_t type) {
    uint8_t at = static_cast<uint8_t>(cfg32(pci::cfg::kCapabilitiesPointer) & 0xff);
    while (at) {
      const uint32_t hdr = cfg32(at);
      if ((hdr & 0xff) == id && (id != pci::cfg::kCapVendor || ((hdr >> 24) & 0xff) == type))
        return at;
      at = static_cast<uint8_t>((hdr >> 8) & 0xff);
    }
    return 0;
  }
  void negotiate(uint64_t features) {
    w<uint8_t>(0x14, kStatusAcknowledge | kStatusDriver);
    w<uint32_t>(0x08, 0);
    w<uint32_t>(0x0c, static_cast<uint32_t>(features));
    w<uint32_t>(0x08, 1);
    w<uint32_t>(0x0c, static_cast<uint32_t>(features >> 32));
    w<uint8_t>(0x14, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  }

  GuestMemory memory = GuestMemory::create(64 << 20);
  FakePlatform platform;
  pci::Bus bus{layout::kPciMmioStart, layout::kPciMmioEnd};
  std::shared_ptr<PciTransport> transport;
  unsigned slot = 0;
};

TEST_F(PciTransportTest, ModernIdentityAndEveryCapability) {
  EXPECT_EQ(cfg32(0), 0x10441af4u);
  EXPECT_EQ(cfg32(8) & 0xff, 1u);  // revision 1: modern only
  EXPECT_EQ(slot, 1u);
  for (uint8_t type = 1; type <= 5; ++type)
    EXPECT_NE(find_cap(pci::cfg::kCapVendor, type), 0) << int(type);
  const uint8_t msix = find_cap(pci::cfg::kCapMsix, 0);
  ASSERT_NE(msix, 0);
  EXPECT_EQ((cfg32(msix) >> 16) & 0x7ff, 1u);  // 2 vectors: queue + config
  const uint8_t notify = find_cap(pci::cfg::kCapVendor, 2);
  EXPECT_EQ(cfg32(notify + 16), PciTransport::kNotifyMultiplier);
}

TEST_F(PciTransportTest, BarsAreMappedOnlyWhileMemoryDecodingIsOnAndFollowRelocation) {
  EXPECT_TRUE(platform.mmio.empty());
  enable_memory();
  const uint64_t bar0 = transport->bar0_address();
  EXPECT_EQ(platform.mmio.count(bar0), 1u);
  EXPECT_EQ(platform.mmio.size(), 2u);  // BAR0 and the MSI-X BAR
  EXPECT_EQ(platform.ioeventfds.count(transport->notify_address(0)), 1u);
  // Move BAR0 by 1 MiB (guest relocation).
  const uint32_t moved = static_cast<uint32_t>(bar0 + 0x100000) | 0x4;
  transport->config_write(0x10, std::span(reinterpret_cast<const uint8_t*>(&moved), 4));
  EXPECT_EQ(platform.mmio.count(bar0), 0u);
  EXPECT_EQ(platform.mmio.count(bar0 + 0x100000), 1u);
  EXPECT_EQ(platform.ioeventfds.count(bar0 + 0x100000 + PciTransport::kNotifyOffset), 1u);
  set_cfg16(pci::cfg::kCommand, 0);
  EXPECT_TRUE(platform.mmio.empty());
  EXPECT_TRUE(platform.ioeventfds.empty());
}

TEST_F(PciTransportTest, FeaturesWithoutVersion1AreRefused) {
  enable_memory();
  negotiate(kFeatureRingEventIdx);
  EXPECT_FALSE(r<uint8_t>(0x14) & kStatusFeaturesOk);
  w<uint8_t>(0x14, 0);
  negotiate(kFeatureVersion1 | (1ull << 40));  // a bit the device does not offer
  EXPECT_FALSE(r<uint8_t>(0x14) & kStatusFeaturesOk);
  w<uint8_t>(0x14, 0);
  negotiate(kFeatureVersion1 | kFeatureRingEventIdx);
  EXPECT_TRUE(r<uint8_t>(0x14) & kStatusFeaturesOk);
  w<uint32_t>(0x00, 1);
  EXPECT_EQ(r<uint32_t>(0x04), 1u);  // VERSION_1 is bit 32
  EXPECT_EQ(r<uint16_t>(0x12), 1u);  // one queue
}

TEST_F(PciTransportTest, QueueWorksEndToEndWithSlowNotifyAndMsix) {
  enable_memory();
  negotiate(kFeatureVersion1);
  // Ring in guest RAM: 8 entries.
  const uint64_t desc = 0x10000, avail = 0x11000, used = 0x12000, buffer = 0x20000;
  w<uint16_t>(0x16, 0);
  EXPECT_EQ(r<uint16_t>(0x18), 256u);
  w<uint16_t>(0x18, 8);
  w<uint32_t>(0x20, static_cast<uint32_t>(desc));
  w<uint32_t>(0x24, 0);
  w<uint64_t>(0x28, avail);
  w<uint64_t>(0x30, used);
  w<uint16_t>(0x1a, 0);  // queue vector 0
  EXPECT_EQ(r<uint16_t>(0x1a), 0u);
  w<uint16_t>(0x1a, 7);  // out of range: NO_VECTOR
  EXPECT_EQ(r<uint16_t>(0x1a), PciTransport::kNoVector);
  w<uint16_t>(0x1a, 0);
  w<uint16_t>(0x1c, 1);
  // MSI-X: program vector 0 through the MSI-X BAR, enable it in the capability.
  BusDevice& msix_bar = *std::next(platform.mmio.begin(), 1)->second;
  const uint32_t entry[4] = {0xfee00000, 0, 0x45, 0};
  msix_bar.write(0, std::span(reinterpret_cast<const uint8_t*>(entry), 16));
  ASSERT_EQ(platform.routes.count(24), 1u);
  EXPECT_EQ(platform.routes[24].first, 0xfee00000u);
  EXPECT_EQ(platform.routes[24].second, 0x45u);
  const uint8_t msix = find_cap(pci::cfg::kCapMsix, 0);
  set_cfg16(msix + 2, 0x8000);
  w<uint8_t>(0x14, 0x0f);  // DRIVER_OK
  EXPECT_EQ(r<uint8_t>(0x14), 0x0f);

  // One writable 32-byte buffer.
  struct {
    uint64_t addr;
    uint32_t len;
    uint16_t flags, next;
  } d{buffer, 32, 2, 0};
  memory.write_obj(desc, d);
  memory.write_obj<uint16_t>(avail + 4, 0);
  memory.write_obj<uint16_t>(avail + 2, 1);
  // A notify that reaches the transport (no ioeventfd) goes to the queue's eventfd.
  w<uint16_t>(PciTransport::kNotifyOffset, 0);
  EXPECT_EQ(transport->slow_notifies(), 1u);
  platform.poll();
  EXPECT_EQ(memory.read_obj<uint16_t>(used + 2), 1u);
  EXPECT_EQ(memory.read_obj<uint32_t>(used + 8), 32u);
  // The used-buffer notification went out on vector 0's irqfd.
  EXPECT_EQ(eventfd_count(platform.irqfds.at(24)), 1u);

  // Reset: status 0 and the queue back to defaults.
  w<uint8_t>(0x14, 0);
  EXPECT_EQ(r<uint8_t>(0x14), 0u);
  w<uint16_t>(0x16, 0);
  EXPECT_EQ(r<uint16_t>(0x1c), 0u);
  EXPECT_EQ(r<uint16_t>(0x18), 256u);
}

TEST_F(PciTransportTest, RingOutsideRamSetsNeedsReset) {
  enable_memory();
  negotiate(kFeatureVersion1);
  w<uint16_t>(0x16, 0);
  w<uint64_t>(0x20, 0xfff0'0000ull);  // in the MMIO hole
  w<uint64_t>(0x28, 0x11000);
  w<uint64_t>(0x30, 0x12000);
  w<uint16_t>(0x1c, 1);
  w<uint8_t>(0x14, 0x0f);
  EXPECT_TRUE(r<uint8_t>(0x14) & kStatusNeedsReset);
  // With MSI-X off the config change arrives as INTx with ISR bit 1, and reading ISR clears it.
  EXPECT_TRUE(platform.intx[16 + slot % 8]);
  EXPECT_EQ(r<uint8_t>(PciTransport::kIsrOffset), 0x2);
  EXPECT_FALSE(platform.intx[16 + slot % 8]);
  EXPECT_EQ(r<uint8_t>(PciTransport::kIsrOffset), 0);
  // A reset brings the device back.
  w<uint8_t>(0x14, 0);
  EXPECT_EQ(r<uint8_t>(0x14), 0u);
}

TEST_F(PciTransportTest, GarbageRegisterAccessesAreHarmless) {
  enable_memory();
  for (uint64_t off : {0x3aull, 0x7ffull, 0x1001ull, 0x2fffull, 0x3ffcull}) {
    w<uint32_t>(off, 0xffffffff);
    (void)r<uint32_t>(off);
  }
  w<uint16_t>(0x16, 99);  // select a queue that does not exist
  EXPECT_EQ(r<uint16_t>(0x18), 0u);
  w<uint16_t>(0x1c, 1);
  w<uint16_t>(PciTransport::kNotifyOffset + 4 * 50, 0);  // notify for a queue that does not exist
  EXPECT_EQ(r<uint8_t>(0x14), 0u);
}

TEST_F(PciTransportTest, ConfigMsixVectorTheTableLacksReadsBackAsNoVector) {
  enable_memory();
  w<uint16_t>(0x10, 1);  // config_msix_vector: the rng has vectors 0 and 1
  EXPECT_EQ(r<uint16_t>(0x10), 1u);
  w<uint16_t>(0x10, 2);
  EXPECT_EQ(r<uint16_t>(0x10), 0xffffu);
  w<uint16_t>(0x10, 0x7ff);
  EXPECT_EQ(r<uint16_t>(0x10), 0xffffu);
}

// Only a reset clears status bits: a driver that clears DRIVER_OK and sets it again gets one
// activation, and the bits it tried to clear stay.
TEST_F(PciTransportTest, StatusBitsAreClearedOnlyByAReset) {
  auto device = std::make_unique<CountingDevice>(1);
  CountingDevice& counts = *device;
  transport = std::make_shared<PciTransport>(std::move(device), memory, platform, bus);
  transport->attach();
  enable_memory();
  negotiate(kFeatureVersion1);
  const uint8_t running = kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk;
  w<uint8_t>(0x14, running);
  EXPECT_EQ(counts.activations, 1);
  for (uint8_t again : {uint8_t{kStatusAcknowledge}, uint8_t{0x02}, running, uint8_t{0x04}}) {
    w<uint8_t>(0x14, again);
    EXPECT_EQ(r<uint8_t>(0x14), running) << int(again);
  }
  EXPECT_EQ(counts.activations, 1);
  EXPECT_EQ(counts.resets, 0);
  w<uint8_t>(0x14, 0);
  EXPECT_EQ(r<uint8_t>(0x14), 0u);
  EXPECT_EQ(counts.resets, 1);
  negotiate(kFeatureVersion1);
  w<uint8_t>(0x14, running);
  EXPECT_EQ(counts.activations, 2);
}

// KVM refusing the second queue's ioeventfd (its io bus full) leaves no BAR and no ioeventfd
// behind; the next successful mapping has them all.
TEST_F(PciTransportTest, BarMappingThatFailsHalfwayLeavesNothingRegistered) {
  transport =
      std::make_shared<PciTransport>(std::make_unique<CountingDevice>(3), memory, platform, bus);
  transport->attach();
  platform.ioeventfds_until_failure = 1;
  enable_memory();
  EXPECT_TRUE(platform.mmio.empty());
  EXPECT_TRUE(platform.ioeventfds.empty());
  set_cfg16(pci::cfg::kCommand, 0);
  enable_memory();
  EXPECT_EQ(platform.mmio.size(), 2u);
  EXPECT_EQ(platform.ioeventfds.size(), 3u);
}

}  // namespace
}  // namespace pier::virtio
