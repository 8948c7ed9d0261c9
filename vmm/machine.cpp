#include "vmm/machine.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <pthread.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include "boot/acpi.hpp"
#include "boot/cpu_setup.hpp"
#include "boot/e820.hpp"
#include "boot/fdt.hpp"
#include "boot/layout.hpp"
#include "boot/pvh.hpp"
#include "boot/zero_page.hpp"
#include "devices/chardev/port_backend.hpp"
#include "devices/chardev/pump.hpp"
#include "devices/pci/bus.hpp"
#include "devices/uart16550.hpp"
#include "virtio/console/console_device.hpp"
#include "virtio/pci_transport.hpp"
#include "virtio/rng.hpp"
#include "vmm/api/server.hpp"
#include "vmm/error.hpp"
#include "vmm/irq_routing.hpp"
#include "vmm/jail.hpp"
#include "vmm/log.hpp"
#include "vmm/options.hpp"
#include "vmm/pci_platform.hpp"

namespace pier {
namespace {

// vCPU threads are kicked out of KVM_RUN with this signal; its handler does nothing (the point
// is the EINTR), and kvm_run::immediate_exit covers a kick that lands before KVM_RUN.
constexpr int kKickSignal = SIGUSR1;

void install_kick_handler() {
  struct sigaction sa {};
  sa.sa_handler = [](int) {};
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
  ::sigaction(kKickSignal, &sa, nullptr);
}

std::vector<uint8_t> read_file(const std::string& path, std::string_view what) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw system_error(fmt::format("cannot read {} '{}'", what, path));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0)
    throw system_error(fmt::format("cannot stat {} '{}'", what, path));
  if (!S_ISREG(st.st_mode)) throw Error(fmt::format("{} '{}' is not a regular file", what, path));
  std::vector<uint8_t> bytes(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::read(fd.get(), bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw system_error(fmt::format("error reading {} '{}'", what, path));
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  bytes.resize(done);
  return bytes;
}

// A "Key:   N kB" field of /proc/self/status, in bytes (0 if unavailable).
uint64_t proc_status_bytes(std::string_view key) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.starts_with(key)) return std::stoull(line.substr(key.size())) * 1024;
  }
  return 0;
}

// Kernel options go before " -- " (after it, words are init's arguments).
std::string insert_kernel_options(const std::string& cmdline, const std::string& options) {
  const size_t dashes = cmdline.find(" -- ");
  if (dashes == std::string::npos) return cmdline + " " + options;
  return cmdline.substr(0, dashes) + " " + options + cmdline.substr(dashes);
}

uint64_t align_down(uint64_t value, uint64_t alignment) {
  return value & ~(alignment - 1);
}

// Local APIC virtual-wire set-up a PC firmware leaves: LINT0 = ExtINT (the 8259 reaches the
// CPU), LINT1 = NMI, both unmasked.
void set_lapic_lints(Vcpu& vcpu) {
  constexpr size_t kLvtLint0 = 0x350, kLvtLint1 = 0x360;
  constexpr uint32_t kModeExtInt = 7, kModeNmi = 4;
  kvm_lapic_state state = vcpu.lapic();
  auto set_mode = [&](size_t reg, uint32_t mode) {
    uint32_t value;
    std::memcpy(&value, state.regs + reg, 4);
    constexpr uint32_t kMasked = 1u << 16;
    value = (value & ~(0x700u | kMasked)) | (mode << 8);
    std::memcpy(state.regs + reg, &value, 4);
  };
  set_mode(kLvtLint0, kModeExtInt);
  set_mode(kLvtLint1, kModeNmi);
  vcpu.set_lapic(state);
}

const char* exit_reason_name(uint32_t reason) {
  switch (reason) {
    case KVM_EXIT_IO:
      return "io";
    case KVM_EXIT_MMIO:
      return "mmio";
    case KVM_EXIT_HLT:
      return "hlt";
    case KVM_EXIT_INTR:
      return "intr";
    case KVM_EXIT_SHUTDOWN:
      return "shutdown";
    case KVM_EXIT_SYSTEM_EVENT:
      return "system-event";
    case KVM_EXIT_FAIL_ENTRY:
      return "fail-entry";
    case KVM_EXIT_DEBUG:
      return "debug";
    case KVM_EXIT_INTERNAL_ERROR:
      return "internal-error";
    default:
      return "other";
  }
}

int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

// The runtime API's view of the machine (I/O thread).
class Machine::ApiTarget final : public api::Target {
 public:
  explicit ApiTarget(Machine& m) : m_(m) {}

  AddedPort add_port(const std::string& name, const std::string& given_backend,
                     bool console) override {
    // Under --jail, socket and file paths name files in the jail directory; tcp= and pty are
    // refused (jail.hpp).
    const std::string backend =
        m_.config_.jail ? m_.config_.jail->confine_run_time_backend(given_backend) : given_backend;
    if (!valid_port_name(name)) {
      throw Error(
          fmt::format("invalid port name '{}': use 1-200 characters of letters, digits "
                      "and ._-+:@ (e.g. org.pier.agent)",
                      name));
    }
    const chardev::PortBackendSpec spec = chardev::parse_port_backend(backend);
    if (spec.kind == chardev::PortBackendSpec::Kind::kStdio) {
      throw Error(
          "a port added at run time cannot use stdio (pier's terminal belongs to "
          "--serial or --console)");
    }
    chardev::PortBackendOptions options;
    options.label = name;
    virtio::console::PortConfig port;
    port.name = name;
    port.console = console;
    port.backend = chardev::make_port_backend(spec, std::move(options));
    chardev::PortBackend* raw = port.backend.get();
    const uint32_t id = m_.console_->add_port(std::move(port));  // validates, starts, announces
    if (console) m_.sized_console_ports_.emplace_back(id, raw);
    const auto stats = m_.console_->port_stats(id);
    log::info("api: port {} '{}' added on {}", id, name, stats ? stats->backend : backend);
    const std::string address =
        m_.config_.jail ? m_.config_.jail->host_address(raw->address()) : raw->address();
    return {id, stats ? stats->backend : backend, address};
  }

  void remove_port(uint32_t id) override {
    m_.console_->remove_port(id);
    std::erase_if(m_.sized_console_ports_, [id](const auto& entry) { return entry.first == id; });
    log::info("api: port {} removed", id);
  }

  std::vector<virtio::console::PortStats> ports() const override {
    return m_.console_->port_stats();
  }

  api::json status() const override {
    const auto uptime =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - m_.started_).count();
    const auto device = m_.console_->stats();
    return {{"state", m_.stopping_ ? "stopping" : "running"},
            {"uptime_s", std::round(uptime * 1000) / 1000},
            {"pid", ::getpid()},
            {"cpus", m_.config_.cpus},
            {"memory_bytes", m_.config_.memory_bytes},
            {"kernel", m_.config_.kernel_path},
            {"max_ports", m_.config_.max_ports},
            {"ports", m_.console_->port_stats().size()},
            {"console_driver_ready", device.driver_ready},
            {"api_clients", m_.api_server_ ? m_.api_server_->client_count() : 0},
            {"serial",
             {{"bytes_pending", m_.serial_pump_->pending_bytes()},
              {"bytes_dropped", m_.serial_pump_->dropped_bytes()},
              {"bytes_lost", m_.serial_pump_->bytes_lost()}}},
            {"vcpus", vcpus()}};
  }

  // Per vCPU: exits that reached pier, the last one's reason and seconds since it.
  api::json vcpus() const {
    api::json list = api::json::array();
    const int64_t now = steady_ns();
    for (unsigned i = 0; i < m_.vcpus_.size(); ++i) {
      const auto& a = m_.vcpu_activity_[i];
      const uint64_t exits = a.exits.load(std::memory_order_relaxed);
      const int64_t last = a.last_exit_ns.load(std::memory_order_relaxed);
      api::json v = {{"index", i}, {"exits", exits}};
      if (exits != 0) {
        v["last_exit"] = exit_reason_name(a.last_exit_reason.load(std::memory_order_relaxed));
        // A vCPU may exit between reading `now` and `last`: never print a negative (-0.0) age.
        v["last_exit_age_s"] = std::round(std::max<int64_t>(0, now - last) / 1e6) / 1000;
      }
      list.push_back(std::move(v));
    }
    return list;
  }

  void quit() override {
    log::info("api: quit");
    m_.request_stop(StopReason::kApiQuit);
  }

 private:
  Machine& m_;
};

Machine::Machine(const MachineConfig& config) : config_(config) {
  create_vm();
  create_devices();
  create_virtio_devices();  // before the guest images: the device tree describes the devices
  load_guest();
  create_vcpus();
}

Machine::~Machine() {
  request_stop(StopReason::kError);
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
}

void Machine::create_vm() {
  kvm_ = std::make_unique<Kvm>(config_.kvm_device);
  for (long cap : {KVM_CAP_IRQCHIP, KVM_CAP_USER_MEMORY, KVM_CAP_SET_TSS_ADDR, KVM_CAP_PIT2,
                   KVM_CAP_IMMEDIATE_EXIT}) {
    if (!kvm_->check_extension(cap)) {
      throw Error(
          fmt::format("this KVM lacks a required capability ({}); pier needs a Linux "
                      "host kernel of 4.11 or later",
                      cap));
    }
  }
  const unsigned max_cpus = std::min(kvm_->max_vcpus(), 255u);
  if (config_.cpus == 0 || config_.cpus > max_cpus) {
    throw Error(
        fmt::format("--cpus {} is out of range: this host allows 1 to {}", config_.cpus, max_cpus));
  }
  vm_ = std::make_unique<Vm>(*kvm_);
  vm_->set_identity_map_address(layout::kKvmIdentityMap);
  vm_->set_tss_address(layout::kKvmTss);

  memory_.emplace(GuestMemory::create(config_.memory_bytes));
  uint32_t slot = 0;
  for (const auto& region : memory_->regions()) {
    vm_->set_user_memory_region(slot++, region.gpa, region.size,
                                memory_->host_address_of_region(region));
  }
  vm_->create_irqchip();
  irq_routing_ = std::make_unique<IrqRouting>(vm_.get());
  irq_routing_->commit();
  vm_->create_pit2();
}

void Machine::create_devices() {
  auto stop = [this](StopReason reason) { request_stop(reason); };

  auto backend = chardev::make_backend(config_.serial, [this] {
    log::info("quit key pressed");
    request_stop(StopReason::kQuitKey);
  });
  serial_pump_ = std::make_unique<chardev::Pump>(std::move(backend), loop_);
  Uart16550::Host host;
  host.set_irq = [this](bool level) { vm_->set_irq_line(layout::kCom1Irq, level); };
  host.transmit = [this](std::span<const uint8_t> bytes) { serial_pump_->write(bytes); };
  host.can_transmit = [this] { return serial_pump_->has_space(); };
  host.rx_space = [this] { serial_pump_->resume_input(); };
  uart_ = std::make_shared<Uart16550>(std::move(host));
  serial_pump_->set_on_space([this] { uart_->transmit_space_available(); });
  serial_pump_->set_input_handler(
      [this](std::span<const uint8_t> bytes) { return uart_->receive(bytes); });
  pio_.add(layout::kCom1, layout::kCom1Size, uart_, "COM1 16550A");

  pio_.add(layout::kI8042Data, 5, std::make_shared<I8042>(stop), "i8042");

  pci_ = std::make_unique<pci::Bus>(layout::kPciMmioStart, layout::kPciMmioEnd);
  pio_.add(layout::kPciConfigAddress, 8,
           std::make_shared<ResetControlPort>(stop, pci_->config_io()),
           "PCI type-1 config, reset control at 0xcf9");
  pio_.add(layout::kAcpiSleepControl, layout::kAcpiPortsSize,
           std::make_shared<AcpiSystemControl>(stop), "ACPI sleep/reset");
}

void Machine::create_virtio_devices() {
  pci_platform_ = std::make_unique<KvmPciPlatform>(*vm_, *irq_routing_, mmio_, loop_);
  if (!config_.ports.empty()) {
    std::vector<virtio::console::PortConfig> ports;
    for (size_t i = 0; i < config_.ports.size(); ++i) {
      const PortOption& option = config_.ports[i];
      chardev::PortBackendOptions backend_options;
      backend_options.label = option.name.empty() ? "console" : option.name;
      backend_options.quit = [this] {
        log::info("quit key pressed");
        request_stop(StopReason::kQuitKey);
      };
      virtio::console::PortConfig port;
      port.name = option.name;
      port.console = option.console;
      port.id = static_cast<uint32_t>(i);
      port.backend = chardev::make_port_backend(chardev::parse_port_backend(option.backend),
                                                std::move(backend_options));
      // Console ports follow their terminal's size (stdio, pty): kept to ask on SIGWINCH. The
      // device owns the backend and keeps it for the machine's lifetime.
      if (option.console) sized_console_ports_.emplace_back(port.id.value(), port.backend.get());
      ports.push_back(std::move(port));
    }
    virtio::console::ConsoleOptions options;
    options.max_ports = config_.max_ports;
    options.console_ring_bytes = config_.console_ring_bytes;
    options.resize_layout = config_.resize_cols_first ? virtio::console::ResizeLayout::kColsRows
                                                      : virtio::console::ResizeLayout::kRowsCols;
    auto device =
        std::make_unique<virtio::console::ConsoleDevice>(loop_, options, std::move(ports));
    console_ = device.get();
    auto console =
        std::make_shared<virtio::PciTransport>(std::move(device), *memory_, *pci_platform_, *pci_);
    const unsigned slot = console->attach();
    log::debug("virtio-console at 00:{:02x}.0 with {} port(s)", slot, config_.ports.size());
    virtio_devices_.push_back(std::move(console));
  }
  if (config_.rng) {
    auto rng = std::make_shared<virtio::PciTransport>(std::make_unique<virtio::RngDevice>(),
                                                      *memory_, *pci_platform_, *pci_);
    const unsigned slot = rng->attach();
    log::debug("virtio-rng at 00:{:02x}.0, BAR0 {:#x}", slot, rng->bar0_address());
    virtio_devices_.push_back(std::move(rng));
  }
}

void Machine::load_guest() {
  const GuestMemory& mem = *memory_;
  const std::vector<uint8_t> kernel_file = read_file(config_.kernel_path, "kernel");

  boot::BootMethod method = boot::BootMethod::kBzImage;
  if (config_.boot_method == BootMethodChoice::kDirect ||
      (config_.boot_method == BootMethodChoice::kAuto && config_.host.slow_guest_kernel)) {
    method = boot::BootMethod::kDirect;
  }
  kernel_ = boot::load_kernel(mem, kernel_file, method);
  log::info("kernel: {}", kernel_.description);

  // Host-specific kernel options apply to Linux kernels (they carry a setup header), not to
  // bare-metal ELF guests.
  assist_ = make_exit_assist(config_.host, mem);
  if (const std::string extra = assist_->linux_kernel_options();
      !extra.empty() && !kernel_.setup_header.empty()) {
    log::debug("host profile {} adds kernel options: {}", config_.host.name(), extra);
    config_.cmdline = insert_kernel_options(config_.cmdline, extra);
  }

  // Command line, NUL-terminated, within the kernel's limit.
  if (config_.cmdline.size() > kernel_.cmdline_size ||
      config_.cmdline.size() + 1 > layout::kCmdlineMax) {
    throw Error(fmt::format("kernel command line is {} bytes; this kernel accepts at most {}",
                            config_.cmdline.size(),
                            std::min<uint64_t>(kernel_.cmdline_size, layout::kCmdlineMax - 1)));
  }
  mem.fill(layout::kCmdline, config_.cmdline.size() + 1, 0, "kernel command line");
  mem.load(
      layout::kCmdline,
      std::span(reinterpret_cast<const uint8_t*>(config_.cmdline.data()), config_.cmdline.size()),
      "kernel command line");

  // initrd: page-aligned at the top of low RAM, below initrd_addr_max, above the kernel.
  uint64_t initrd_address = 0, initrd_size = 0;
  if (!config_.initrd_path.empty()) {
    const std::vector<uint8_t> initrd = read_file(config_.initrd_path, "initrd");
    initrd_size = initrd.size();
    const uint64_t low_end = mem.regions()[0].end();
    const uint64_t ceiling = std::min<uint64_t>(low_end, uint64_t(kernel_.initrd_addr_max) + 1);
    const uint64_t floor = std::max<uint64_t>(kernel_.image_end, layout::kLowRamEnd);
    if (initrd_size > ceiling || align_down(ceiling - initrd_size, 4096) < floor) {
      throw Error(
          fmt::format("initrd '{}' ({} MiB) does not fit in guest RAM below {:#x} "
                      "above the kernel; use a larger --memory",
                      config_.initrd_path, initrd_size >> 20, ceiling));
    }
    initrd_address = align_down(ceiling - initrd_size, 4096);
    mem.load(initrd_address, initrd, "initrd");
    log::info("initrd: {} bytes at {:#x}", initrd_size, initrd_address);
  }

  acpi::AcpiConfig acpi_config;
  acpi_config.cpus = config_.cpus;
  const uint64_t rsdp = acpi::write_acpi_tables(mem, acpi_config);

  // The device tree: memory, CPUs, PCI devices with their BARs and vectors, console ports.
  boot::MachineDescription description;
  description.memory.assign(mem.regions().begin(), mem.regions().end());
  description.cpus = config_.cpus;
  description.cmdline = config_.cmdline;
  for (const auto& dev : virtio_devices_) {
    boot::FdtPciDevice d;
    d.slot = dev->slot();
    d.vendor = 0x1af4;
    d.device = static_cast<uint16_t>(0x1040 + dev->device().device_id());
    d.name = dev->name();
    d.bar0 = dev->bar0_address();
    d.bar0_size = dev->bar0_size();
    d.msix_bar = dev->msix_bar_address();
    d.msix_bar_size = dev->msix_bar_size();
    d.msix_vectors = dev->msix_vectors();
    d.intx_gsi = dev->intx_gsi_number();
    description.pci.push_back(d);
  }
  for (size_t i = 0; i < config_.ports.size(); ++i) {
    description.console_ports.push_back({static_cast<uint32_t>(i), config_.ports[i].name,
                                         config_.ports[i].console, config_.ports[i].backend});
  }
  description.console_max_ports = config_.max_ports;
  dtb_ = boot::build_fdt(description);
  const uint64_t setup_data =
      boot::write_setup_dtb(mem, layout::kSetupData, layout::kSetupDataMax, dtb_);

  boot::ZeroPageConfig zp;
  zp.setup_header = kernel_.setup_header;
  zp.cmdline_address = layout::kCmdline;
  zp.cmdline_length = static_cast<uint32_t>(config_.cmdline.size());
  zp.initrd_address = initrd_address;
  zp.initrd_size = initrd_size;
  zp.e820 = boot::build_e820(mem.regions());
  zp.acpi_rsdp = rsdp;
  zp.setup_data = setup_data;
  const boot::ZeroPage page = boot::build_zero_page(zp);
  mem.load(layout::kZeroPage, page, "zero page");
  if (kernel_.pvh) {
    boot::PvhStartInfoConfig pvh;
    pvh.address = layout::kPvhStartInfo;
    pvh.cmdline_address = layout::kCmdline;
    pvh.rsdp = rsdp;
    pvh.initrd_address = initrd_address;
    pvh.initrd_size = initrd_size;
    pvh.memmap = zp.e820;
    const boot::PvhStartInfo info = boot::build_pvh_start_info(pvh);
    mem.load(layout::kPvhStartInfo, info, "PVH start info");
  }

  boot::write_boot_gdt_and_idt(mem);
  boot::write_identity_page_tables(mem);
  boot::write_bios_reset_stub(mem);
}

void Machine::create_vcpus() {
  std::vector<kvm_cpuid_entry2> cpuid = kvm_->supported_cpuid();
  const std::vector<kvm_msr_entry> msrs = boot::boot_msrs();
  for (unsigned i = 0; i < config_.cpus; ++i) {
    auto vcpu = std::make_unique<Vcpu>(*vm_, i);
    std::vector<kvm_cpuid_entry2> own = cpuid;
    boot::normalize_cpuid(own, i, config_.cpus);
    vcpu->set_cpuid(own);
    // MSRs one by one: a host that lacks one (kvm_pvm rejects some) should not stop the boot.
    for (const auto& msr : msrs) {
      try {
        vcpu->set_msrs(std::span(&msr, 1));
      } catch (const Error& e) {
        log::debug("vCPU {}: MSR {:#x} not set: {}", i, msr.index, e.what());
      }
    }
    set_lapic_lints(*vcpu);
    if (i == 0) {
      // The BSP starts at the kernel's 64-bit entry; APs wait for INIT-SIPI-SIPI (KVM's
      // in-kernel LAPIC holds them in the wait-for-SIPI state).
      kvm_sregs sregs = vcpu->sregs();
      if (kernel_.pvh) {
        boot::set_pvh_sregs(sregs);
        vcpu->set_sregs(sregs);
        vcpu->set_regs(boot::pvh_regs(kernel_.entry, layout::kPvhStartInfo));
      } else {
        boot::set_long_mode_sregs(sregs);
        vcpu->set_sregs(sregs);
        vcpu->set_regs(boot::boot_regs(kernel_.entry, layout::kZeroPage));
      }
      vcpu->set_fpu(boot::boot_fpu());
    }
    assist_->prepare_vcpu(*vcpu);
    vcpus_.push_back(std::move(vcpu));
  }
  vcpu_activity_ = std::make_unique<VcpuActivity[]>(vcpus_.size());
}

std::string Machine::vcpu_activity_summary() const {
  std::string s;
  const int64_t now = steady_ns();
  for (unsigned i = 0; i < vcpus_.size(); ++i) {
    const auto& a = vcpu_activity_[i];
    const uint64_t exits = a.exits.load(std::memory_order_relaxed);
    if (!s.empty()) s += "; ";
    if (exits == 0) {
      s += fmt::format("vCPU {}: no exits", i);
    } else {
      s += fmt::format(
          "vCPU {}: {} exits, last {} {:.1f} s ago", i, exits,
          exit_reason_name(a.last_exit_reason.load(std::memory_order_relaxed)),
          std::max<int64_t>(0, now - a.last_exit_ns.load(std::memory_order_relaxed)) / 1e9);
    }
  }
  return s;
}

void Machine::request_stop(StopReason reason) {
  StopReason expected = StopReason::kNone;
  stop_reason_.compare_exchange_strong(expected, reason);
  if (!stopping_.exchange(true)) {
    kick_vcpus();
    loop_.stop();
  }
}

void Machine::kick_vcpus() {
  std::lock_guard lock(threads_mutex_);
  for (size_t i = 0; i < vcpus_.size(); ++i) {
    vcpus_[i]->run_data()->immediate_exit = 1;
    if (i < threads_.size() && threads_[i].joinable()) {
      ::pthread_kill(threads_[i].native_handle(), kKickSignal);
    }
  }
}

void Machine::vcpu_thread(unsigned index, seccomp::Filter filter) {
  // Only the I/O thread handles process signals; vCPU threads take just the kick.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, kKickSignal);
  ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  Vcpu& vcpu = *vcpus_[index];
  try {
    // From here on this thread only runs the guest and handles its exits.
    filter.install();
    while (!stopping_.load(std::memory_order_relaxed)) {
      const int err = vcpu.run();
      if (err == EINTR || err == EAGAIN) {
        vcpu.run_data()->immediate_exit = 0;
        if (vcpu_activity_[index].probe_requested.exchange(false)) {
          answer_hang_probe(vcpu, vcpu_activity_[index]);
        }
        continue;
      }
      if (err != 0) {
        log::error("KVM_RUN on vCPU {} failed: {}\n{}", index, std::strerror(err), vcpu.dump());
        request_stop(StopReason::kError);
        break;
      }
      VcpuActivity& activity = vcpu_activity_[index];
      activity.exits.fetch_add(1, std::memory_order_relaxed);
      activity.last_exit_reason.store(vcpu.run_data()->exit_reason, std::memory_order_relaxed);
      activity.last_exit_ns.store(steady_ns(), std::memory_order_relaxed);
      if (!handle_exit(vcpu)) break;
    }
  } catch (const std::exception& e) {
    log::error("vCPU {}: {}", index, e.what());
    request_stop(StopReason::kError);
  }
}

void Machine::answer_hang_probe(Vcpu& vcpu, VcpuActivity& activity) {
  constexpr uint64_t kInterruptFlag = 1u << 9;
  const uint32_t mp = vcpu.mp_state().mp_state;
  const kvm_regs regs = vcpu.regs();
  const bool halted_for_good = mp == KVM_MP_STATE_HALTED && !(regs.rflags & kInterruptFlag);
  const bool never_started = mp == KVM_MP_STATE_UNINITIALIZED || mp == KVM_MP_STATE_INIT_RECEIVED;
  activity.probe_stuck.store(halted_for_good || never_started, std::memory_order_relaxed);
  activity.probe_rip.store(regs.rip, std::memory_order_relaxed);
  activity.probe_exits.store(activity.exits.load(std::memory_order_relaxed),
                             std::memory_order_relaxed);
  activity.probe_seq.store(hang_probe_seq_.load(std::memory_order_acquire),
                           std::memory_order_release);
}

void Machine::watch_for_hang() {
  if (hang_reported_ || stopping_) return;
  const int64_t now = steady_ns();
  constexpr int64_t kQuietNs = 1'000'000'000;
  bool any_recent_exit = false;
  for (unsigned i = 0; i < vcpus_.size(); ++i) {
    any_recent_exit |=
        now - vcpu_activity_[i].last_exit_ns.load(std::memory_order_relaxed) < kQuietNs;
  }
  if (any_recent_exit) return;  // something ran: no hang, and no probe needed
  // The answers to the last probe: every vCPU stuck then and no exit since.
  const uint64_t asked = hang_probe_seq_.load(std::memory_order_relaxed);
  if (asked != 0) {
    bool all_stuck = true;
    std::string where;
    for (unsigned i = 0; i < vcpus_.size(); ++i) {
      const auto& a = vcpu_activity_[i];
      all_stuck &=
          a.probe_seq.load(std::memory_order_acquire) == asked &&
          a.probe_stuck.load(std::memory_order_relaxed) &&
          a.probe_exits.load(std::memory_order_relaxed) == a.exits.load(std::memory_order_relaxed);
      if (a.probe_stuck.load(std::memory_order_relaxed)) {
        where += fmt::format("{}vCPU {} rip={:#x}", where.empty() ? "" : ", ", i,
                             a.probe_rip.load(std::memory_order_relaxed));
      }
    }
    if (all_stuck) {
      hang_reported_ = true;
      log::warn(
          "the guest has halted every vCPU with interrupts off (or left them waiting for a "
          "start-up IPI): it cannot run again. pier keeps running until it is stopped (signal, "
          "quit key, API quit). {}",
          where);
      if (api_server_) {
        api_server_->broadcast(api::guest_halted_json(where, std::chrono::system_clock::now()));
      }
      return;
    }
  }
  hang_probe_seq_.fetch_add(1, std::memory_order_release);
  for (unsigned i = 0; i < vcpus_.size(); ++i) {
    vcpu_activity_[i].probe_requested.store(true, std::memory_order_relaxed);
  }
  kick_vcpus();
}

bool Machine::handle_exit(Vcpu& vcpu) {
  kvm_run* run = vcpu.run_data();
  switch (run->exit_reason) {
    case KVM_EXIT_IO: {
      auto* base = reinterpret_cast<uint8_t*>(run) + run->io.data_offset;
      const size_t size = run->io.size;
      for (uint32_t i = 0; i < run->io.count; ++i) {
        std::span<uint8_t> data(base + i * size, size);
        if (run->io.direction == KVM_EXIT_IO_OUT) {
          pio_.write(run->io.port, data);
        } else {
          pio_.read(run->io.port, data);
        }
      }
      return true;
    }
    case KVM_EXIT_MMIO: {
      std::span<uint8_t> data(run->mmio.data, std::min<size_t>(run->mmio.len, 8));
      if (run->mmio.is_write) {
        mmio_.write(run->mmio.phys_addr, data);
      } else {
        mmio_.read(run->mmio.phys_addr, data);
      }
      return true;
    }
    case KVM_EXIT_HLT:
      // Only without an in-kernel LAPIC; ours halts in the kernel. Treat as an idle hint.
      return true;
    case KVM_EXIT_INTR:
      return true;
    case KVM_EXIT_SHUTDOWN:
      // A shutdown is how a PC resets when the CPU cannot deliver a fault (Linux reboot=t uses
      // it on purpose; a kernel that crashes before its IDT works ends here too): it ends the run
      // like the other reset paths, with the registers on stderr for the second case.
      log::warn(
          "vCPU {}: triple fault: the guest reset itself (on purpose, like Linux reboot=t, "
          "or after a fault it could not handle)\n{}",
          vcpu.index(), vcpu.dump());
      request_stop(StopReason::kTripleFault);
      return false;
    case KVM_EXIT_SYSTEM_EVENT:
      if (run->system_event.type == KVM_SYSTEM_EVENT_RESET) {
        request_stop(StopReason::kReset);
      } else if (run->system_event.type == KVM_SYSTEM_EVENT_SHUTDOWN) {
        request_stop(StopReason::kPowerOff);
      } else {
        log::error("vCPU {}: system event {}", vcpu.index(), run->system_event.type);
        request_stop(StopReason::kError);
      }
      return false;
    case KVM_EXIT_FAIL_ENTRY:
      log::error("vCPU {}: KVM could not enter the guest (hardware reason {:#x})\n{}", vcpu.index(),
                 run->fail_entry.hardware_entry_failure_reason, vcpu.dump());
      request_stop(StopReason::kError);
      return false;
    case KVM_EXIT_DEBUG:
      if (assist_->on_debug_exit(vcpu)) return true;
      log::error("vCPU {}: unexpected debug exit\n{}", vcpu.index(), vcpu.dump());
      request_stop(StopReason::kError);
      return false;
    case KVM_EXIT_INTERNAL_ERROR: {
      if (assist_->on_internal_error(vcpu)) return true;
      std::string data;
      for (uint32_t i = 0; i < std::min<uint32_t>(run->internal.ndata, 16); ++i) {
        data += fmt::format(" {:#x}", run->internal.data[i]);
      }
      log::error("vCPU {}: KVM internal error, suberror {}, data:{}\n{}", vcpu.index(),
                 run->internal.suberror, data, vcpu.dump());
      request_stop(StopReason::kError);
      return false;
    }
    default:
      log::error("vCPU {}: unhandled KVM exit reason {}\n{}", vcpu.index(), run->exit_reason,
                 vcpu.dump());
      request_stop(StopReason::kError);
      return false;
  }
}

void Machine::update_console_sizes() {
  if (console_ == nullptr) return;
  for (const auto& [id, backend] : sized_console_ports_) {
    if (const auto size = backend->terminal_size(); size && size->cols && size->rows) {
      console_->resize(id, size->cols, size->rows);
    }
  }
}

void Machine::start_api() {
  if (config_.api_socket.empty()) return;
  if (console_ == nullptr) throw Error("--api-socket needs the virtio-console device");
  api_target_ = std::make_unique<ApiTarget>(*this);
  api_server_ = std::make_unique<api::Server>(loop_, config_.api_socket, *api_target_);
  api_server_->start();
  console_->set_observer([this](const virtio::console::PortEvent& event) {
    if (api_server_)
      api_server_->broadcast(api::event_json(event, std::chrono::system_clock::now()));
  });
}

uint64_t Machine::undelivered_output_bytes() const {
  uint64_t bytes = serial_pump_->pending_bytes();
  if (console_ != nullptr) {
    for (const auto& port : console_->port_stats()) {
      // Only where a client is attached: a port nobody reads keeps its ring for nobody.
      if (port.host_connected) bytes += port.bytes_buffered;
    }
  }
  return bytes;
}

void Machine::drain_guest_output() {
  // The guest is stopped, but the serial output behind a slow terminal or pipe and the console
  // bytes a connected client has not taken yet are still the guest's output: the loop keeps
  // writing them (EPOLLOUT) until none is left, kDrainTimeout passes, or a second signal.
  if (const uint64_t dropped = serial_pump_->dropped_bytes(); dropped != 0) {
    log::warn(
        "serial: {} bytes of guest output were dropped while running (the output buffer was "
        "full: a terminal or pipe that was not read)",
        dropped);
  }
  if (undelivered_output_bytes() == 0) return;
  log::info("stopping ({}): delivering {} bytes of guest output first", to_string(stop_reason_),
            undelivered_output_bytes());
  const bool drained =
      loop_.run_until([this] { return drain_abandoned_ || undelivered_output_bytes() == 0; },
                      std::chrono::steady_clock::now() + kDrainTimeout);
  if (const uint64_t left = undelivered_output_bytes(); !drained || left != 0) {
    log::warn(
        "{} bytes of guest output were not delivered: {} (serial: a terminal or pipe that is "
        "not read; ports: a client that does not read)",
        left, drain_abandoned_ ? "a second signal ended the wait" : "nobody took them in 5 s");
  }
}

void Machine::log_memory_footprint() const {
  if (!log::enabled(log::Level::kInfo)) return;
  // Guest RAM is anonymous memory; shared-library pages are file-backed and shared with every
  // other process using them, so pier's own cost is anonymous RSS minus resident guest RAM.
  const uint64_t anon = proc_status_bytes("RssAnon:");
  const uint64_t file = proc_status_bytes("RssFile:");
  const uint64_t guest = memory_->resident_bytes();
  if (anon == 0 && file == 0) {  // no /proc (--jail)
    log::info("memory: guest RAM resident {} KiB; pier's own unknown (no /proc/self/status)",
              guest >> 10);
    return;
  }
  log::info(
      "memory: guest RAM resident {} KiB; pier's own anonymous {} KiB, plus {} KiB of "
      "shared library and executable pages",
      guest >> 10, anon > guest ? (anon - guest) >> 10 : 0, file >> 10);
}

int Machine::run() {
  start_api();  // before any thread: a bad --api-socket is a setup error
  install_kick_handler();
  // Process signals go to the I/O thread's signalfd; block them here before any thread starts so
  // every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  sigaddset(&signals, SIGWINCH);
  sigaddset(&signals, kKickSignal);
  ::pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  sigdelset(&signals, kKickSignal);
  UniqueFd signal_fd(::signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!signal_fd) throw system_error("signalfd");
  loop_.add(signal_fd.get(), EPOLLIN, [this, fd = signal_fd.get()](uint32_t) {
    signalfd_siginfo info{};
    while (::read(fd, &info, sizeof(info)) == sizeof(info)) {
      if (info.ssi_signo == SIGWINCH) {
        update_console_sizes();  // the terminal was resized: tell the guest's hvc (RESIZE)
        continue;
      }
      if (stopping_) {
        // A second signal while pier waits for output to drain: the user wants out now.
        drain_abandoned_ = true;
        continue;
      }
      log::warn("terminating on signal {}", info.ssi_signo);
      request_stop(StopReason::kSignal);
    }
  });
  loop_.post([this] { update_console_sizes(); });
  UniqueFd hang_timer(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!hang_timer) throw system_error("timerfd_create");
  const itimerspec every_second{{1, 0}, {1, 0}};
  ::timerfd_settime(hang_timer.get(), 0, &every_second, nullptr);
  loop_.add(hang_timer.get(), EPOLLIN, [this, fd = hang_timer.get()](uint32_t) {
    uint64_t ticks = 0;
    if (::read(fd, &ticks, sizeof(ticks)) == sizeof(ticks)) watch_for_hang();
    log::flush_pending();  // log lines a congested stderr did not take at once
  });

  // seccomp: every filter is built now (a failure is a set-up error); each vCPU thread loads its
  // own as it starts, and this thread (the I/O thread, which also serves the API) loads its own
  // once the vCPU threads exist: it never creates a thread or opens KVM again.
  std::vector<seccomp::Filter> vcpu_filters;
  for (size_t i = 0; i < vcpus_.size(); ++i) {
    vcpu_filters.emplace_back(seccomp::ThreadClass::kVcpu, config_.seccomp);
  }
  seccomp::Filter io_filter(seccomp::ThreadClass::kIo, config_.seccomp);
  if (config_.seccomp == seccomp::Mode::kOn) seccomp::install_trap_handler();
  if (config_.seccomp != seccomp::Mode::kOff) {
    log::info("seccomp: {} (filters per thread: vcpu, io)", seccomp::to_string(config_.seccomp));
    // ASan builds: the exit-time leak check could not run on this thread once it is filtered.
    seccomp::leak_check_before_filters();
  }

  {
    std::lock_guard lock(threads_mutex_);
    threads_.reserve(vcpus_.size());
    for (unsigned i = 0; i < vcpus_.size(); ++i) {
      threads_.emplace_back([this, i, filter = std::move(vcpu_filters[i])]() mutable {
        vcpu_thread(i, std::move(filter));
      });
    }
  }
  if (stopping_) kick_vcpus();  // a stop requested while threads were starting
  // --jail: no process or thread from here on (RLIMIT_NPROC 0), before the filter forbids
  // prlimit itself.
  if (config_.jail != nullptr) config_.jail->seal();
  io_filter.install();

  loop_.run();
  // From here no request_stop() kicks (stopping_ is set), so joining without threads_mutex_
  // races with nothing; holding it would deadlock with a vCPU thread waiting for it.
  stopping_.store(true);
  kick_vcpus();
  for (auto& t : threads_) t.join();  // only this thread changes threads_ now
  {
    std::lock_guard lock(threads_mutex_);
    threads_.clear();
  }
  drain_guest_output();
  loop_.remove(signal_fd.get());
  loop_.remove(hang_timer.get());

  const StopReason reason = stop_reason_.load();
  if (api_server_) {
    console_->set_observer({});
    api_server_->shutdown(
        api::vm_stopped_json(to_string(reason), std::chrono::system_clock::now()));
  }
  log::info("machine stopped: {} ({})", to_string(reason), vcpu_activity_summary());
  log_memory_footprint();
  for (const auto& dev : virtio_devices_) {
    log::info("{}: status {:#x}, {} queue notifies reached pier instead of an ioeventfd",
              dev->name(), dev->status(), dev->slow_notifies());
  }
  if (console_ != nullptr) {
    for (const auto& port : console_->port_stats()) {
      log::info(
          "console port {} '{}' ({}): {} bytes to the guest, {} from the guest, {} to the "
          "host ({} of them lost to a write error), {} console bytes dropped, {} discarded, "
          "{} host connects",
          port.id, port.name, port.backend, port.bytes_to_guest, port.bytes_from_guest,
          port.bytes_to_host, port.bytes_lost, port.console_bytes_dropped, port.bytes_discarded,
          port.host_connects);
    }
  }
  if (const std::string summary = assist_->summary(); !summary.empty()) {
    log::info("host profile {}: {}", config_.host.name(), summary);
  }
  switch (reason) {
    case StopReason::kPowerOff:
    case StopReason::kReset:
    case StopReason::kSignal:
    case StopReason::kQuitKey:
    case StopReason::kApiQuit:
    case StopReason::kTripleFault:
      return 0;
    default:
      return 3;
  }
}

}  // namespace pier
