#pragma once
// The ways a guest ends the machine: ACPI hardware-reduced sleep control (S5 = power off) and
// reset registers, and the i8042 keyboard controller's CPU-reset command (0xFE to port 0x64,
// Linux `reboot=k`). Both report to one callback; the machine stops and pier exits 0.
#include <atomic>
#include <cstdint>
#include <functional>

#include "devices/io_bus.hpp"

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

}  // namespace pier
