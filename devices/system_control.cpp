#include "devices/system_control.hpp"

#include <cstring>

#include "boot/layout.hpp"
#include "vmm/log.hpp"

namespace pier {

const char* to_string(StopReason reason) {
  switch (reason) {
    case StopReason::kNone:
      return "running";
    case StopReason::kPowerOff:
      return "guest powered off";
    case StopReason::kReset:
      return "guest reset";
    case StopReason::kTripleFault:
      return "triple fault";
    case StopReason::kError:
      return "fatal error";
    case StopReason::kSignal:
      return "signal";
    case StopReason::kQuitKey:
      return "quit key";
    case StopReason::kApiQuit:
      return "quit from the API";
  }
  return "unknown";
}

namespace {
// ACPI 6.x §4.8.3.7: sleep control register: SLP_TYPx in bits 4:2, SLP_EN bit 5.
constexpr uint8_t kSleepEnable = 1u << 5;
constexpr uint8_t kSleepTypeShift = 2;
constexpr uint8_t kSleepTypeMask = 0x7;
constexpr uint8_t kS5SleepType = 5;  // matches \_S5 in boot/dsdt.asl
}  // namespace

void AcpiSystemControl::read(uint64_t, std::span<uint8_t> data) {
  // Sleep status: WAK_STS never set (we never wake); the others read 0.
  std::memset(data.data(), 0, data.size());
}

void AcpiSystemControl::write(uint64_t offset, std::span<const uint8_t> data) {
  if (data.empty()) return;
  const uint8_t value = data[0];
  const uint64_t control = layout::kAcpiSleepControl - layout::kAcpiSleepControl;
  const uint64_t reset = layout::kAcpiReset - layout::kAcpiSleepControl;
  if (offset == control && (value & kSleepEnable)) {
    const uint8_t type = (value >> kSleepTypeShift) & kSleepTypeMask;
    if (type == kS5SleepType) {
      stop_(StopReason::kPowerOff);
    } else if (unsupported_sleep_logged_.first()) {
      log::warn("guest requested ACPI sleep type {}, which pier does not implement (logged once)",
                type);
    }
  } else if (offset == reset && value == layout::kAcpiResetValue) {
    stop_(StopReason::kReset);
  }
}

void I8042::read(uint64_t offset, std::span<uint8_t> data) {
  // Status (0x64): output buffer empty, input buffer empty. Data (0x60): nothing.
  std::memset(data.data(), offset == kCommandOffset ? 0x00 : 0x00, data.size());
}

void I8042::write(uint64_t offset, std::span<const uint8_t> data) {
  if (offset == kCommandOffset && !data.empty() && data[0] == kResetCommand) {
    stop_(StopReason::kReset);
  }
}

void ResetControlPort::read(uint64_t offset, std::span<uint8_t> data) {
  if (offset == kRegisterOffset && data.size() == 1) {
    data[0] = value_.load(std::memory_order_relaxed);
    return;
  }
  pci_config_->read(offset, data);
}

void ResetControlPort::write(uint64_t offset, std::span<const uint8_t> data) {
  if (offset == kRegisterOffset && data.size() == 1) {
    // RST_CPU resets on its 0->1 edge and clears itself, so it always reads 0 and every write
    // with it set is an edge. SYS_RST/FULL_RST only choose the kind of reset: pier ends the run
    // for all of them.
    value_.store(data[0] & (kSystemReset | kFullReset), std::memory_order_relaxed);
    if (data[0] & kResetCpu) stop_(StopReason::kReset);
    return;
  }
  pci_config_->write(offset, data);
}

}  // namespace pier
