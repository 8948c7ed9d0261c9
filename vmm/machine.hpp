#pragma once
// The machine: the one place that builds a VM, in the order KVM and the guest need
// (VM -> TSS/identity map -> RAM memslots -> irqchip -> PIT -> devices -> guest images and boot
// tables -> vCPUs with CPUID, MSRs, registers), then runs it: one thread per vCPU, the I/O thread
// on the caller's thread.
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "boot/kernel_loader.hpp"
#include "devices/io_bus.hpp"
#include "devices/system_control.hpp"
#include "vmm/event_loop.hpp"
#include "vmm/exit_assist.hpp"
#include "vmm/guest_memory.hpp"
#include "vmm/host_profile.hpp"
#include "vmm/irq_routing.hpp"
#include "vmm/kvm.hpp"
#include "vmm/seccomp.hpp"

namespace pier {

namespace chardev {
class Pump;
class PortBackend;
}  // namespace chardev
namespace pci {
class Bus;
}
namespace virtio {
class PciTransport;
namespace console {
class ConsoleDevice;
}
}  // namespace virtio
namespace api {
class Server;
}
namespace jail {
class Jail;
}
class KvmPciPlatform;
class Uart16550;

enum class BootMethodChoice { kAuto, kBzImage, kDirect };

// A virtio-console port from the command line. Port 0 is the console (hvc0).
struct PortOption {
  std::string name;     // empty for an unnamed port (port 0 by default)
  std::string backend;  // the backend spec, e.g. "socket=/tmp/a.sock,client,reconnect=2"
  bool console = false;
};

struct MachineConfig {
  std::string kernel_path;
  std::string initrd_path;  // empty: none
  std::string cmdline;
  uint64_t memory_bytes = 512ull << 20;
  unsigned cpus = 1;
  std::string serial = "stdio";
  BootMethodChoice boot_method = BootMethodChoice::kAuto;
  bool rng = true;  // a virtio-rng device
  // virtio-console: ports[0] is port 0 (hvc0); empty = no console device.
  std::vector<PortOption> ports;
  unsigned max_ports = 31;
  // RESIZE payload order: false = rows first (Linux 6.1 and other kernels without commit
  // 5326ab737a47), true = cols first (the virtio spec, kernels with that commit).
  bool resize_cols_first = false;
  uint64_t console_ring_bytes = 64 * 1024;  // console output kept per port while nobody reads
  HostProfile host;
  std::string kvm_device = "/dev/kvm";
  std::string dump_dtb;    // write the device tree here and do not run
  std::string api_socket;  // the runtime API's unix socket (empty: none)
  // seccomp filters on the vCPU threads and the I/O thread once the VM runs (vmm/seccomp.hpp).
  seccomp::Mode seccomp = seccomp::Mode::kOn;
  // --jail (vmm/jail.hpp), entered by the caller between building the machine and run(): run()
  // seals it once the threads exist, and port-add confines its backends to it. Null: no jail.
  const jail::Jail* jail = nullptr;
};

class Machine {
 public:
  explicit Machine(const MachineConfig& config);
  ~Machine();
  Machine(const Machine&) = delete;
  Machine& operator=(const Machine&) = delete;

  // Runs until the guest powers off/resets, a fatal error, a signal or the quit key. Returns the
  // process exit code: 0 for power-off, reset, signal and quit; non-zero for guest crashes and
  // KVM errors.
  int run();
  // The flattened device tree given to the guest.
  const std::vector<uint8_t>& device_tree() const { return dtb_; }

  // Any thread: ends the run with `reason`.
  void request_stop(StopReason reason);

 private:
  void create_vm();
  void create_devices();
  void create_virtio_devices();
  void load_guest();
  void create_vcpus();
  void vcpu_thread(unsigned index, seccomp::Filter filter);
  bool handle_exit(Vcpu& vcpu);
  void kick_vcpus();
  void log_memory_footprint() const;
  void update_console_sizes();
  void start_api();
  // After the vCPUs stopped: what the guest wrote and pier still holds goes out first.
  void drain_guest_output();
  uint64_t undelivered_output_bytes() const;
  static constexpr std::chrono::seconds kDrainTimeout{5};
  bool drain_abandoned_ = false;  // a second signal during the drain: exit now

  class ApiTarget;
  friend class ApiTarget;

  MachineConfig config_;
  std::unique_ptr<Kvm> kvm_;
  std::unique_ptr<Vm> vm_;
  std::optional<GuestMemory> memory_;
  std::unique_ptr<IrqRouting> irq_routing_;
  EventLoop loop_;
  IoBus pio_{"pio"};
  IoBus mmio_{"mmio"};
  std::unique_ptr<chardev::Pump> serial_pump_;
  std::shared_ptr<Uart16550> uart_;
  // The platform outlives the bus: the bus owns the transports, which call it when destroyed.
  std::unique_ptr<KvmPciPlatform> pci_platform_;
  std::unique_ptr<pci::Bus> pci_;
  std::vector<std::shared_ptr<virtio::PciTransport>> virtio_devices_;
  virtio::console::ConsoleDevice* console_ = nullptr;  // owned by its transport
  std::vector<std::pair<uint32_t, chardev::PortBackend*>> sized_console_ports_;
  std::vector<std::unique_ptr<Vcpu>> vcpus_;
  // The vCPU threads. run() adds them while a vCPU that already runs may stop the machine
  // (request_stop -> kick_vcpus reads the list): both hold threads_mutex_.
  std::mutex threads_mutex_;
  std::vector<std::thread> threads_;
  // What each vCPU thread last did, for vm-status and the stop log: a guest that hangs (no
  // exits for minutes, or the same exit over and over) shows here. Written by its vCPU thread
  // only, read by the I/O thread.
  struct alignas(64) VcpuActivity {
    std::atomic<uint64_t> exits{0};
    std::atomic<uint32_t> last_exit_reason{0};
    std::atomic<int64_t> last_exit_ns{0};  // steady_clock; 0: never left KVM_RUN for pier
    // The hang watch (watch_for_hang): the I/O thread asks (probe_requested, then a kick), the
    // vCPU thread answers with its state as of that kick.
    std::atomic<bool> probe_requested{false};
    std::atomic<uint64_t> probe_seq{0};    // the request answered
    std::atomic<bool> probe_stuck{false};  // halted with IF=0, or never started (no SIPI)
    std::atomic<uint64_t> probe_exits{0};  // `exits` when it answered
    std::atomic<uint64_t> probe_rip{0};
  };
  std::unique_ptr<VcpuActivity[]> vcpu_activity_;
  // I/O thread, once a second: reports (once) a guest whose every vCPU is halted with interrupts
  // off or waits for a SIPI nobody can send: it can never run again.
  void watch_for_hang();
  void answer_hang_probe(Vcpu& vcpu, VcpuActivity& activity);
  std::atomic<uint64_t> hang_probe_seq_{0};  // the probe the vCPUs answer next
  bool hang_reported_ = false;
  // One line per vCPU: exits, the last exit's reason and how long ago.
  std::string vcpu_activity_summary() const;
  boot::LoadedKernel kernel_;
  std::unique_ptr<ExitAssist> assist_;
  std::vector<uint8_t> dtb_;

  std::atomic<StopReason> stop_reason_{StopReason::kNone};
  std::atomic<bool> stopping_{false};
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();

  // The runtime API (--api-socket), on the I/O thread. Destroyed first.
  std::unique_ptr<ApiTarget> api_target_;
  std::unique_ptr<api::Server> api_server_;
};

}  // namespace pier
