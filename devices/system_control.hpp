#pragma once
// The ways a guest ends the machine: ACPI hardware-reduced sleep control (S5 = power off) and
// reset registers, the i8042 keyboard controller's CPU-reset command (0xFE to port 0x64, Linux
// `reboot=k`) and the chipset's reset control register (0xCF9, `reboot=p`). All report to one
// callback; the machine stops and pier exits 0. (The BIOS reset vector stub, boot/cpu_setup.hpp,
// and a triple fault, vmm/machine.cpp, end the run the same way.)
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

#include "devices/io_bus.hpp"
#include "vmm/log.hpp"

namespace pier {

enum class StopReason {
  kNone,
  kPowerOff,
  kReset,
  kTripleFault,
  kError,
  kSignal,
  kQuitKey,
  kApiQuit
};
const char* to_string(StopReason reason);

using StopHandler = std::function<void(StopReason)>;

// I/O ports layout::kAcpiSleepControl.. (3 bytes): sleep control, sleep status, reset.
class AcpiSystemControl final : public BusDevice {
 public:
  explicit AcpiSystemControl(StopHandler stop) : stop_(std::move(stop)) {}
  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

 private:
  StopHandler stop_;
  log::OnceFlag unsupported_sleep_logged_;  // a guest can write the register in a loop
};

// Just enough of an i8042 for Linux: status reads report "no data, input buffer empty", the
// reset command stops the machine; everything else is accepted and ignored.
class I8042 final : public BusDevice {
 public:
  static constexpr uint64_t kDataOffset = 0;     // port 0x60
  static constexpr uint64_t kCommandOffset = 4;  // port 0x64
  static constexpr uint8_t kResetCommand = 0xfe;

  explicit I8042(StopHandler stop) : stop_(std::move(stop)) {}
  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

 private:
  StopHandler stop_;
};

// I/O ports 0xCF8-0xCFF with the chipset's reset control register (RCR) at 0xCF9 carved out:
// byte accesses to 0xCF9 are the RCR, where writing RST_CPU (bit 2) resets the machine (Linux
// reboot=p/pci, and its fallback after ACPI and the keyboard controller); every other access goes
// to `pci_config` (the PCI type-1 mechanism, whose CONFIG_ADDRESS takes only dword accesses).
class ResetControlPort final : public BusDevice {
 public:
  static constexpr uint64_t kRegisterOffset = 1;  // 0xCF9 in the 0xCF8 window
  static constexpr uint8_t kSystemReset = 1u << 1;
  static constexpr uint8_t kResetCpu = 1u << 2;
  static constexpr uint8_t kFullReset = 1u << 3;

  ResetControlPort(StopHandler stop, std::shared_ptr<BusDevice> pci_config)
      : stop_(std::move(stop)), pci_config_(std::move(pci_config)) {}
  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

 private:
  StopHandler stop_;
  std::shared_ptr<BusDevice> pci_config_;
  std::atomic<uint8_t> value_{0};  // SYS_RST and FULL_RST as last written (vCPU threads)
};

}  // namespace pier
