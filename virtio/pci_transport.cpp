#include "virtio/pci_transport.hpp"

#include <fmt/format.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <bit>
#include <cassert>
#include <cstring>

#include "virtio/virtio.hpp"
#include "vmm/error.hpp"
#include "vmm/log.hpp"

namespace pier::virtio {
namespace {

// virtio_pci_cap cfg_type values (virtio 1.2 §4.1.4).
constexpr uint8_t kCapCommon = 1, kCapNotify = 2, kCapIsr = 3, kCapDevice = 4, kCapPciCfg = 5;

// Common configuration fields (virtio 1.2 §4.1.4.3).
namespace common {
constexpr uint64_t kDeviceFeatureSelect = 0x00, kDeviceFeature = 0x04, kDriverFeatureSelect = 0x08,
                   kDriverFeature = 0x0c, kConfigMsixVector = 0x10, kNumQueues = 0x12,
                   kDeviceStatus = 0x14, kConfigGeneration = 0x15, kQueueSelect = 0x16,
                   kQueueSize = 0x18, kQueueMsixVector = 0x1a, kQueueEnable = 0x1c,
                   kQueueNotifyOff = 0x1e, kQueueDesc = 0x20, kQueueDriver = 0x28,
                   kQueueDevice = 0x30;
}  // namespace common

constexpr uint8_t kIsrQueue = 0x1, kIsrConfig = 0x2;

uint64_t round_up_pow2(uint64_t v) {
  return std::bit_ceil(std::max<uint64_t>(v, 0x1000));
}

template <class T>
T load_le(std::span<const uint8_t> data) {
  T v{};
  std::memcpy(&v, data.data(), std::min(sizeof(T), data.size()));
  return v;
}

// Reads `value` as a little-endian field of `width` bytes at `field`, for an access of
// data.size() bytes at `offset` (accesses may cover part of a field).
void put_field(uint64_t offset, std::span<uint8_t> data, uint64_t field, uint64_t width,
               uint64_t value) {
  for (size_t i = 0; i < data.size(); ++i) {
    const uint64_t at = offset + i;
    if (at >= field && at < field + width)
      data[i] = static_cast<uint8_t>(value >> (8 * (at - field)));
  }
}

// Debug builds: asserts that the transport's calls into the device (activate, reset,
// queue_notify) never overlap, i.e. that they all run on the I/O thread (device.hpp).
#ifndef NDEBUG
class DeviceCallCheck {
 public:
  explicit DeviceCallCheck(std::atomic<bool>& busy) : busy_(busy) {
    [[maybe_unused]] const bool was_busy = busy_.exchange(true);
    assert(!was_busy && "virtio device called from two threads at once");
  }
  ~DeviceCallCheck() { busy_.store(false); }
  DeviceCallCheck(const DeviceCallCheck&) = delete;
  DeviceCallCheck& operator=(const DeviceCallCheck&) = delete;

 private:
  std::atomic<bool>& busy_;
};
#else
class DeviceCallCheck {
 public:
  explicit DeviceCallCheck(std::atomic<bool>&) {}
};
#endif

}  // namespace

// The driver's settings of one queue. Everything but notify_fd is vCPU-side state under the
// transport lock; the Queue object itself is the I/O thread's (start_queue_io copies these in).
struct PciTransport::QueueState {
  std::atomic<uint16_t> vector{kNoVector};
  bool enabled = false;
  uint16_t max_size = 0;
  uint16_t size = 0;  // max_size until the driver writes one
  uint64_t desc = 0, driver = 0, device = 0;
  UniqueFd notify_fd;
};

class PciTransport::Bar0 final : public BusDevice {
 public:
  explicit Bar0(PciTransport& t) : t_(t) {}
  void read(uint64_t offset, std::span<uint8_t> data) override {
    std::memset(data.data(), 0, data.size());
    if (offset < kCommonOffset + 0x1000) {
      t_.common_read(offset - kCommonOffset, data);
    } else if (offset >= kIsrOffset && offset < kIsrOffset + 0x1000) {
      if (offset == kIsrOffset) t_.isr_read(data);
    } else if (offset >= kDeviceConfigOffset && offset < kDeviceConfigOffset + kDeviceConfigMax) {
      std::lock_guard lock(t_.mutex_);
      t_.device_->read_config(offset - kDeviceConfigOffset, data);
    }
  }
  void write(uint64_t offset, std::span<const uint8_t> data) override {
    if (offset < kCommonOffset + 0x1000) {
      t_.common_write(offset - kCommonOffset, data);
    } else if (offset >= kDeviceConfigOffset && offset < kDeviceConfigOffset + kDeviceConfigMax) {
      std::lock_guard lock(t_.mutex_);
      t_.device_->write_config(offset - kDeviceConfigOffset, data);
    } else if (offset >= kNotifyOffset) {
      t_.notify_write(offset - kNotifyOffset);
    }
  }

 private:
  PciTransport& t_;
};

class PciTransport::MsixBar final : public BusDevice {
 public:
  MsixBar(pci::Msix& msix, uint64_t pba_offset) : msix_(msix), pba_offset_(pba_offset) {}
  void read(uint64_t offset, std::span<uint8_t> data) override {
    if (offset >= pba_offset_) {
      msix_.pba_read(offset - pba_offset_, data);
    } else {
      msix_.table_read(offset, data);
    }
  }
  void write(uint64_t offset, std::span<const uint8_t> data) override {
    if (offset < pba_offset_) msix_.table_write(offset, data);  // the PBA is read-only
  }

 private:
  pci::Msix& msix_;
  uint64_t pba_offset_;
};

class PciTransport::InterruptImpl final : public Interrupt {
 public:
  explicit InterruptImpl(PciTransport& t) : t_(t) {}
  void signal_queue(uint16_t queue_index) override {
    if (queue_index >= t_.queue_state_.size()) return;
    deliver(t_.queue_state_[queue_index].vector.load(std::memory_order_relaxed), kIsrQueue);
  }
  void signal_config() override {
    // Lock-free: this runs from queue-error paths that may already hold the transport lock.
    t_.config_generation_.fetch_add(1, std::memory_order_relaxed);
    deliver(config_vector.load(std::memory_order_relaxed), kIsrConfig);
  }
  void notify_again(uint16_t queue_index) override {
    if (queue_index >= t_.queue_state_.size()) return;
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n =
        ::write(t_.queue_state_[queue_index].notify_fd.get(), &one, sizeof(one));
  }
  std::atomic<uint16_t> config_vector{kNoVector};
  std::atomic<uint8_t> isr{0};

 private:
  void deliver(uint16_t vector, uint8_t isr_bit) {
    if (t_.msix_.enabled()) {
      if (vector != kNoVector) t_.msix_.signal(vector);
      return;
    }
    log::trace("{}: INTx (MSI-X off)", t_.device_->name());
    // INTx: the ISR bit says why; the line stays up until the driver reads the ISR.
    isr.fetch_or(isr_bit);
    t_.platform_.set_intx(t_.intx_gsi(), true);
  }
  PciTransport& t_;
};

PciTransport::PciTransport(std::unique_ptr<Device> device, const GuestMemory& memory,
                           PciPlatform& platform, pci::Bus& bus)
    : device_(std::move(device)),
      memory_(memory),
      platform_(platform),
      bus_(bus),
      config_(0x1af4, static_cast<uint16_t>(0x1040 + device_->device_id()), 0xff, 0x00),
      msix_(static_cast<unsigned>(device_->num_queues() + 1)),
      queue_state_(device_->num_queues()) {
  if (device_->config_size() > kDeviceConfigMax) {
    throw Error(fmt::format("{}: device config space too large", device_->name()));
  }
  config_.set_revision(1);  // modern-only devices have revision >= 1
  config_.set_subsystem(0x1af4, static_cast<uint16_t>(0x40 + device_->device_id()));
  config_.set_interrupt_pin(1);
  for (size_t i = 0; i < device_->num_queues(); ++i) {
    queues_.emplace_back(static_cast<uint16_t>(i), device_->queue_max_size(i));
    queue_state_[i].max_size = queue_state_[i].size = queues_[i].max_size();
  }
  interrupt_ = std::make_unique<InterruptImpl>(*this);
  for (auto& q : queues_) q.set_error_handler(this);
  bar0_ = std::make_shared<Bar0>(*this);
  const uint64_t pba_offset = (msix_.table_size() + 0xfff) & ~0xfffull;
  msix_bar_ = std::make_shared<MsixBar>(msix_, pba_offset);
  msix_.on_message_changed = [this](unsigned v, const pci::Msix::Message& m) {
    on_vector_changed(v, m);
  };
  msix_.fire = [this](unsigned v) {
    log::trace("{}: MSI-X vector {} fires", device_->name(), v);
    const uint64_t one = 1;
    if (v < vector_fds_.size()) {
      [[maybe_unused]] ssize_t n = ::write(vector_fds_[v].get(), &one, sizeof(one));
    }
  };
}

PciTransport::~PciTransport() {
  std::lock_guard lock(mutex_);
  // Notifications first: once the reset below has run on the I/O thread, no notify callback of
  // this transport is running or will run.
  for (auto& qs : queue_state_) {
    if (qs.notify_fd) platform_.unwatch(qs.notify_fd.get());
  }
  if (activated_) {
    platform_.run_on_io_thread([this] {
      DeviceCallCheck check(in_device_call_);
      activated_flag_.store(false, std::memory_order_relaxed);
      device_->reset();
    });
  }
  unmap_bars_locked();
  for (size_t v = 0; v < vector_fds_.size(); ++v) {
    platform_.remove_irqfd(vector_fds_[v].get(), vector_gsis_[v]);
    platform_.release_msi_gsi(vector_gsis_[v]);
  }
}

uint32_t PciTransport::intx_gsi() const {
  return 16 + slot_ % 8;
}

std::string PciTransport::name() const {
  return std::string(device_->name());
}

unsigned PciTransport::attach() {
  const uint64_t bar0_size =
      round_up_pow2(kNotifyOffset + uint64_t(device_->num_queues()) * kNotifyMultiplier);
  const uint64_t pba_offset = (msix_.table_size() + 0xfff) & ~0xfffull;
  const uint64_t msix_size = round_up_pow2(pba_offset + msix_.pba_size());
  config_.add_memory_bar(0, {.size = bar0_size, .is_64bit = true}, bus_.allocate_bar(bar0_size));
  config_.add_memory_bar(kMsixBar, {.size = msix_size, .is_64bit = true},
                         bus_.allocate_bar(msix_size));

  // Capabilities: common, notify, ISR, device config, PCI config access, MSI-X.
  auto virtio_cap = [&](uint8_t type, uint8_t bar, uint32_t offset, uint32_t length,
                        std::optional<uint32_t> multiplier) {
    std::vector<uint8_t> body(multiplier ? 18 : 14, 0);
    body[0] = static_cast<uint8_t>(body.size() + 2);  // cap_len counts the id and next bytes
    body[1] = type;
    body[2] = bar;
    std::memcpy(&body[6], &offset, 4);
    std::memcpy(&body[10], &length, 4);
    if (multiplier) std::memcpy(&body[14], &*multiplier, 4);
    return config_.add_capability(pci::cfg::kCapVendor, body);
  };
  virtio_cap(kCapCommon, 0, kCommonOffset, kCommonSize, std::nullopt);
  virtio_cap(kCapNotify, 0, kNotifyOffset,
             static_cast<uint32_t>(device_->num_queues() * kNotifyMultiplier), kNotifyMultiplier);
  virtio_cap(kCapIsr, 0, kIsrOffset, kIsrSize, std::nullopt);
  virtio_cap(kCapDevice, 0, kDeviceConfigOffset,
             static_cast<uint32_t>(std::max<size_t>(device_->config_size(), 4)), std::nullopt);
  pci_cfg_cap_ = virtio_cap(kCapPciCfg, 0, 0, 0, uint32_t{0});  // pci_cfg_data in place of mult.
  std::vector<uint8_t> msix_body(10, 0);
  const uint16_t control = static_cast<uint16_t>(msix_.vectors() - 1);
  const uint32_t table = kMsixBar, pba = static_cast<uint32_t>(pba_offset) | kMsixBar;
  std::memcpy(&msix_body[0], &control, 2);
  std::memcpy(&msix_body[2], &table, 4);
  std::memcpy(&msix_body[6], &pba, 4);
  msix_cap_ = config_.add_capability(pci::cfg::kCapMsix, msix_body);

  // One eventfd + MSI route + irqfd per vector, for the transport's lifetime.
  for (unsigned v = 0; v < msix_.vectors(); ++v) {
    UniqueFd fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!fd) throw system_error("eventfd");
    const uint32_t gsi = platform_.allocate_msi_gsi();
    platform_.add_irqfd(fd.get(), gsi);
    vector_fds_.push_back(std::move(fd));
    vector_gsis_.push_back(gsi);
  }
  // One notify eventfd per queue, polled by the I/O thread; KVM signals it on guest kicks once
  // the BAR is mapped.
  for (size_t q = 0; q < queue_state_.size(); ++q) {
    UniqueFd fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!fd) throw system_error("eventfd");
    const int raw = fd.get();
    queue_state_[q].notify_fd = std::move(fd);
    platform_.watch(raw, [this, raw, q] {
      uint64_t count;
      if (::read(raw, &count, sizeof(count)) != sizeof(count)) return;
      // On the I/O thread, like every activate/reset (run_on_io_thread): no lock needed.
      if (activated_flag_.load(std::memory_order_relaxed)) {
        DeviceCallCheck check(in_device_call_);
        device_->queue_notify(static_cast<uint16_t>(q));
      }
    });
  }

  config_.on_command_changed = [this](uint16_t, uint16_t) { map_bars_locked(); };
  config_.on_bar_moved = [this](unsigned, uint64_t, uint64_t) { map_bars_locked(); };
  slot_ = bus_.add(shared_from_this());
  return slot_;
}

void PciTransport::config_read(uint16_t offset, std::span<uint8_t> data) {
  std::lock_guard lock(mutex_);
  config_.read(offset, data);
  if (msix_cap_) put_field(offset, data, msix_cap_ + 2u, 2, msix_.message_control());
  // VIRTIO_PCI_CAP_PCI_CFG: reads of pci_cfg_data go to the BAR window it selects.
  const uint16_t window = static_cast<uint16_t>(pci_cfg_cap_ + 16);
  if (pci_cfg_cap_ && offset < window + 4 && offset + data.size() > window) {
    const uint8_t bar = config_.raw()[pci_cfg_cap_ + 4];
    const uint32_t at = config_.read32(pci_cfg_cap_ + 8);
    const uint32_t len = config_.read32(pci_cfg_cap_ + 12);
    std::array<uint8_t, 4> value{};
    if (bar == 0 && (len == 1 || len == 2 || len == 4)) {
      mutex_.unlock();
      bar0_->read(at, std::span(value.data(), len));
      mutex_.lock();
    }
    put_field(offset, data, window, 4, load_le<uint32_t>(value));
  }
}

void PciTransport::config_write(uint16_t offset, std::span<const uint8_t> data) {
  std::unique_lock lock(mutex_);
  const uint16_t control_at = static_cast<uint16_t>(msix_cap_ + 2);
  if (msix_cap_ && offset < control_at + 2 && offset + data.size() > control_at) {
    uint16_t control = msix_.message_control();
    for (size_t i = 0; i < data.size(); ++i) {
      const size_t at = offset + i;
      if (at == control_at + 1u)
        control = static_cast<uint16_t>((control & 0x00ff) | (data[i] << 8));
    }
    lock.unlock();  // set_message_control may fire vectors
    msix_.set_message_control(control &
                              (pci::Msix::kControlEnable | pci::Msix::kControlFunctionMask));
    lock.lock();
  }
  const uint16_t window = static_cast<uint16_t>(pci_cfg_cap_ + 16);
  if (pci_cfg_cap_ && offset >= pci_cfg_cap_ + 4u && offset + data.size() <= window) {
    // bar/offset/length fields of the PCI_CFG capability are writable by the driver.
    std::memcpy(config_.raw() + offset, data.data(), data.size());
    return;
  }
  if (pci_cfg_cap_ && offset == window && data.size() <= 4) {
    const uint8_t bar = config_.raw()[pci_cfg_cap_ + 4];
    const uint32_t at = config_.read32(pci_cfg_cap_ + 8);
    const uint32_t len = config_.read32(pci_cfg_cap_ + 12);
    if (bar == 0 && (len == 1 || len == 2 || len == 4) && len <= data.size()) {
      lock.unlock();
      bar0_->write(at, data.first(len));
    }
    return;
  }
  config_.write(offset, data);
}

uint8_t PciTransport::status() const {
  std::lock_guard lock(mutex_);
  return current_status_locked();
}

uint8_t PciTransport::current_status_locked() const {
  return static_cast<uint8_t>(status_ | (needs_reset_.load() ? kStatusNeedsReset : 0));
}

uint64_t PciTransport::slow_notifies() const {
  std::lock_guard lock(mutex_);
  return slow_notifies_;
}

void PciTransport::common_read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard lock(mutex_);
  using namespace common;
  const uint64_t features = device_->device_features();
  put_field(offset, data, kDeviceFeatureSelect, 4, device_feature_select_);
  put_field(
      offset, data, kDeviceFeature, 4,
      device_feature_select_ < 2 ? (features >> (32 * device_feature_select_)) & 0xffffffff : 0);
  put_field(offset, data, kDriverFeatureSelect, 4, driver_feature_select_);
  put_field(offset, data, kDriverFeature, 4,
            driver_feature_select_ < 2
                ? (driver_features_ >> (32 * driver_feature_select_)) & 0xffffffff
                : 0);
  put_field(offset, data, kConfigMsixVector, 2, interrupt_->config_vector.load());
  put_field(offset, data, kNumQueues, 2, queues_.size());
  put_field(offset, data, kDeviceStatus, 1, current_status_locked());
  put_field(offset, data, kConfigGeneration, 1, config_generation_.load());
  put_field(offset, data, kQueueSelect, 2, queue_select_);
  if (queue_select_ < queue_state_.size()) {
    const QueueState& qs = queue_state_[queue_select_];
    put_field(offset, data, kQueueSize, 2, qs.size);
    put_field(offset, data, kQueueMsixVector, 2, qs.vector.load());
    put_field(offset, data, kQueueEnable, 2, qs.enabled ? 1 : 0);
    put_field(offset, data, kQueueNotifyOff, 2, queue_select_);
    put_field(offset, data, kQueueDesc, 8, qs.desc);
    put_field(offset, data, kQueueDriver, 8, qs.driver);
    put_field(offset, data, kQueueDevice, 8, qs.device);
  }
}

void PciTransport::common_write(uint64_t offset, std::span<const uint8_t> data) {
  std::unique_lock lock(mutex_);
  using namespace common;
  // Fields are written whole by drivers; a 64-bit address may come as two 32-bit halves.
  auto value = load_le<uint64_t>(data);
  auto half = [&](uint64_t old, uint64_t field) -> uint64_t {
    if (offset == field && data.size() == 8) return value;
    if (offset == field && data.size() == 4) return (old & ~0xffffffffull) | (value & 0xffffffff);
    if (offset == field + 4 && data.size() == 4) return (old & 0xffffffffull) | (value << 32);
    return old;
  };
  // The Queue objects are the I/O thread's; registers go to queue_state_. A queue is ready only
  // while enabled (activation needs enabled, a reset clears both), so a disabled queue is
  // configurable.
  const size_t index = queue_select_;
  QueueState* qs = index < queue_state_.size() ? &queue_state_[index] : nullptr;
  const bool configurable = qs && !qs->enabled;
  switch (offset) {
    case kDeviceFeatureSelect:
      device_feature_select_ = static_cast<uint32_t>(value);
      return;
    case kDriverFeatureSelect:
      driver_feature_select_ = static_cast<uint32_t>(value);
      return;
    case kDriverFeature:
      if (driver_feature_select_ < 2 && !(status_ & kStatusFeaturesOk)) {
        const unsigned shift = 32 * driver_feature_select_;
        driver_features_ =
            (driver_features_ & ~(0xffffffffull << shift)) | ((value & 0xffffffff) << shift);
      }
      return;
    case kConfigMsixVector:
      interrupt_->config_vector.store(static_cast<uint16_t>(value));
      return;
    case kDeviceStatus:
      lock.unlock();
      set_status(static_cast<uint8_t>(value));
      return;
    case kQueueSelect:
      queue_select_ = static_cast<uint16_t>(value);
      return;
    case kQueueSize:
      if (configurable) qs->size = static_cast<uint16_t>(value);
      return;
    case kQueueMsixVector:
      if (qs)
        qs->vector.store(static_cast<uint16_t>(value) < msix_.vectors()
                             ? static_cast<uint16_t>(value)
                             : kNoVector);
      return;
    case kQueueEnable:
      if (qs && (value & 1) && !qs->enabled) {
        qs->enabled = true;
        // A queue enabled after DRIVER_OK starts at once, on the I/O thread (where the device
        // may be using its other queues right now).
        if (activated_) platform_.run_on_io_thread([this, index] { start_queue_io(index); });
      }
      return;
    default:
      break;
  }
  if (configurable) {
    if (offset >= kQueueDesc && offset < kQueueDesc + 8) qs->desc = half(qs->desc, kQueueDesc);
    if (offset >= kQueueDriver && offset < kQueueDriver + 8)
      qs->driver = half(qs->driver, kQueueDriver);
    if (offset >= kQueueDevice && offset < kQueueDevice + 8)
      qs->device = half(qs->device, kQueueDevice);
  }
}

void PciTransport::isr_read(std::span<uint8_t> data) {
  // Reading the ISR acknowledges it (virtio 1.2 §4.1.4.5) and lowers INTx.
  const uint8_t isr = interrupt_->isr.exchange(0);
  if (!data.empty()) data[0] = isr;
  if (isr) platform_.set_intx(intx_gsi(), false);
}

void PciTransport::notify_write(uint64_t offset) {
  // The ioeventfd normally takes these; a write that reaches pier (the BAR being remapped, or
  // a host without ioeventfd) goes the same way: through the queue's eventfd to the I/O thread.
  const uint64_t queue = offset / kNotifyMultiplier;
  {
    std::lock_guard lock(mutex_);
    ++slow_notifies_;
    if (queue >= queue_state_.size()) return;
  }
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(queue_state_[queue].notify_fd.get(), &one, sizeof(one));
}

void PciTransport::set_status(uint8_t status) {
  std::lock_guard lock(mutex_);
  if (status == 0) {
    reset_locked();
    return;
  }
  if ((status & kStatusFeaturesOk) && !(status_ & kStatusFeaturesOk)) {
    const uint64_t offered = device_->device_features();
    const bool ok = (driver_features_ & ~offered) == 0 && (driver_features_ & kFeatureVersion1) &&
                    device_->ack_features(driver_features_);
    if (!ok) {
      static log::OnceFlag once;
      if (once.first()) {
        log::warn("{}: driver features {:#x} refused (offered {:#x})", device_->name(),
                  driver_features_, offered);
      }
      status &= static_cast<uint8_t>(~kStatusFeaturesOk);
    }
  }
  const bool driver_ok = (status & kStatusDriverOk) && !(status_ & kStatusDriverOk);
  // The driver clears bits only by writing 0 (virtio 1.2 §2.1.2 "MUST NOT clear a device status
  // bit"); a write that tries keeps them set, so DRIVER_OK cannot be cleared and set again to
  // activate the device a second time without a reset. NEEDS_RESET is the device's bit.
  status_ = static_cast<uint8_t>(status_ | (status & ~kStatusNeedsReset));
  if (driver_ok && (status_ & kStatusFeaturesOk)) activate_locked();
}

void PciTransport::start_queue_io(size_t index) {
  Queue& q = queues_[index];
  if (q.ready()) return;
  const QueueState& qs = queue_state_[index];
  q.set_size(qs.size);
  q.set_desc_addr(qs.desc);
  q.set_avail_addr(qs.driver);
  q.set_used_addr(qs.device);
  q.activate(memory_, driver_features_);
}

void PciTransport::activate_locked() {
  // The device and its queues start on the I/O thread, between two of its events: never while
  // it is inside queue_notify() or a backend callback using the queues.
  platform_.run_on_io_thread([this] {
    for (size_t i = 0; i < queues_.size(); ++i) {
      if (queue_state_[i].enabled) start_queue_io(i);
    }
    DeviceCallCheck check(in_device_call_);
    device_->activate(queues_, *interrupt_);
    activated_flag_.store(true, std::memory_order_relaxed);
  });
  activated_ = true;
}

void PciTransport::reset_locked() {
  // Stopped on the I/O thread too: when the status write returns (and the driver reads 0), the
  // device is out of queue_notify() and will not touch the queues or push old chains.
  platform_.run_on_io_thread([this] {
    activated_flag_.store(false, std::memory_order_relaxed);
    if (activated_) {
      DeviceCallCheck check(in_device_call_);
      device_->reset();
    }
    for (auto& q : queues_) q.reset();
  });
  activated_ = false;
  for (auto& qs : queue_state_) {
    qs.enabled = false;
    qs.vector.store(kNoVector);
    qs.size = qs.max_size;
    qs.desc = qs.driver = qs.device = 0;
  }
  interrupt_->config_vector.store(kNoVector);
  interrupt_->isr.store(0);
  platform_.set_intx(intx_gsi(), false);
  driver_features_ = 0;
  device_feature_select_ = driver_feature_select_ = 0;
  queue_select_ = 0;
  status_ = 0;
  needs_reset_.store(false);
}

void PciTransport::on_queue_error(const Queue& queue) {
  // Called inside a queue operation on the I/O thread: from the device, or from activation run
  // there while a vCPU thread waits holding the transport lock, so it must not take the lock.
  // Flag NEEDS_RESET and tell the driver through the config interrupt; the device keeps its
  // other queues.
  if (queue_error_logged_.first()) {
    log::warn("{}: {}; device needs reset", device_->name(), queue.describe_fault());
  }
  if (!needs_reset_.exchange(true)) interrupt_->signal_config();
}

void PciTransport::on_vector_changed(unsigned vector, const pci::Msix::Message& message) {
  log::debug("{}: MSI-X vector {} -> address {:#x} data {:#x}", device_->name(), vector,
             message.address, message.data);
  if (vector < vector_gsis_.size()) {
    platform_.set_msi_route(vector_gsis_[vector], message.address, message.data);
  }
}

void PciTransport::unmap_bars_locked() {
  if (!bars_mapped_) return;
  for (size_t q = 0; q < queue_state_.size(); ++q) {
    platform_.remove_ioeventfd(queue_state_[q].notify_fd.get(),
                               mapped_bar0_ + kNotifyOffset + q * kNotifyMultiplier);
  }
  platform_.remove_mmio(mapped_bar0_, bar0_.get());
  platform_.remove_mmio(mapped_msix_, msix_bar_.get());
  bars_mapped_ = false;
}

void PciTransport::map_bars_locked() {
  // Called from ConfigSpace hooks inside config_write (lock held). Remap on every change: the
  // handlers and ioeventfds follow a moved BAR, and go away while memory decoding is off.
  unmap_bars_locked();
  if (!(config_.command() & pci::cfg::kCommandMemory)) return;
  const uint64_t bar0 = config_.bar_address(0), msix = config_.bar_address(kMsixBar);
  const uint64_t bar0_size = config_.bar(0).size, msix_size = config_.bar(kMsixBar).size;
  // A BAR left at all-ones by sizing, or placed over RAM, is not decoded.
  auto sane = [&](uint64_t base, uint64_t size) {
    return base != 0 && base + size > base && base + size <= (1ull << 46) &&
           !memory_.contains(base, 1) && !memory_.contains(base + size - 1, 1);
  };
  if (!sane(bar0, bar0_size) || !sane(msix, msix_size)) return;
  size_t ioeventfds = 0;  // registered so far, undone if a later step fails
  try {
    platform_.add_mmio(bar0, bar0_size, bar0_);
    platform_.add_mmio(msix, msix_size, msix_bar_);
    for (; ioeventfds < queue_state_.size(); ++ioeventfds) {
      platform_.add_ioeventfd(queue_state_[ioeventfds].notify_fd.get(),
                              bar0 + kNotifyOffset + ioeventfds * kNotifyMultiplier);
    }
  } catch (const Error& e) {
    static log::OnceFlag once;
    if (once.first()) log::warn("{}: BARs not mapped: {}", device_->name(), e.what());
    // All or nothing: an ioeventfd left behind would keep catching writes at an address the BAR
    // no longer decodes, and make KVM refuse (EEXIST) the next mapping there.
    for (size_t q = 0; q < ioeventfds; ++q) {
      platform_.remove_ioeventfd(queue_state_[q].notify_fd.get(),
                                 bar0 + kNotifyOffset + q * kNotifyMultiplier);
    }
    platform_.remove_mmio(bar0, bar0_.get());
    platform_.remove_mmio(msix, msix_bar_.get());
    return;
  }
  mapped_bar0_ = bar0;
  mapped_msix_ = msix;
  bars_mapped_ = true;
}

}  // namespace pier::virtio
