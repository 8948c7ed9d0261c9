#pragma once
// A PCI function's 256-byte configuration space (type 0 header) with the write semantics a
// driver relies on: read-only fields, RW1C status bits, BAR sizing (writing all-ones reads back
// the size mask), capability lists. Values are little endian, as on the bus.
#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

namespace pier::pci {

namespace cfg {  // offsets (PCI Local Bus 3.0 §6.1)
constexpr uint16_t kVendorId = 0x00, kDeviceId = 0x02, kCommand = 0x04, kStatus = 0x06,
                   kRevision = 0x08, kProgIf = 0x09, kSubclass = 0x0a, kClass = 0x0b,
                   kHeaderType = 0x0e, kBar0 = 0x10, kSubsystemVendorId = 0x2c, kSubsystemId = 0x2e,
                   kCapabilitiesPointer = 0x34, kInterruptLine = 0x3c, kInterruptPin = 0x3d;
constexpr uint16_t kCommandIo = 1 << 0, kCommandMemory = 1 << 1, kCommandBusMaster = 1 << 2,
                   kCommandIntxDisable = 1 << 10;
constexpr uint16_t kStatusInterrupt = 1 << 3, kStatusCapabilities = 1 << 4;
constexpr uint8_t kCapVendor = 0x09, kCapMsix = 0x11;
constexpr size_t kSize = 256;
constexpr unsigned kBarCount = 6;
}  // namespace cfg

struct BarInfo {
  uint64_t size = 0;  // power of two, >= 16 for memory; 0: unused
  bool is_64bit = true;
  bool prefetchable = false;
};

class ConfigSpace {
 public:
  ConfigSpace(uint16_t vendor, uint16_t device, uint8_t class_code, uint8_t subclass,
              uint8_t prog_if = 0);

  void set_subsystem(uint16_t vendor, uint16_t id);
  void set_revision(uint8_t revision);
  void set_interrupt_pin(uint8_t pin);  // 1 = INTA#
  // Declares memory BAR `index` (a 64-bit BAR takes index and index+1) at `address`.
  void add_memory_bar(unsigned index, const BarInfo& info, uint64_t address);
  // Appends a capability (id, then the body after the id/next bytes); returns its offset.
  uint8_t add_capability(uint8_t id, std::span<const uint8_t> body);

  // Config accesses from the guest: any offset/width; out-of-range reads return 0xff.
  void read(uint16_t offset, std::span<uint8_t> data) const;
  // Applies write masks. Calls the hooks for BAR moves and command changes.
  void write(uint16_t offset, std::span<const uint8_t> data);

  uint16_t command() const;
  // Current guest-programmed BAR address (memory BARs only).
  uint64_t bar_address(unsigned index) const;
  const BarInfo& bar(unsigned index) const { return bars_[index]; }

  // Raw access for the device model itself (no write masks).
  uint8_t* raw() { return bytes_.data(); }
  uint32_t read32(uint16_t offset) const;
  void set_status_bits(uint16_t bits, bool on);

  // Hooks: a memory BAR moved (old, new), or memory decoding was switched on/off.
  std::function<void(unsigned bar, uint64_t old_address, uint64_t new_address)> on_bar_moved;
  std::function<void(uint16_t old_command, uint16_t new_command)> on_command_changed;
  // A write landed in a capability's body (for MSI-X message control and similar).
  std::function<void(uint16_t offset, size_t len)> on_capability_write;

 private:
  void write_byte(uint16_t offset, uint8_t value);

  std::array<uint8_t, cfg::kSize> bytes_{};
  std::array<uint8_t, cfg::kSize> writable_{};        // per-bit write mask
  std::array<uint8_t, cfg::kSize> clear_on_write_{};  // RW1C bits
  std::array<BarInfo, cfg::kBarCount> bars_{};
  uint8_t next_capability_ = 0x40;
  uint8_t last_capability_ = 0;
};

}  // namespace pier::pci
