#include "devices/pci/config_space.hpp"

#include <cstring>

namespace pier::pci {
namespace {
constexpr uint32_t kBarMemory64 = 0x4;
constexpr uint32_t kBarPrefetchable = 0x8;
}  // namespace

ConfigSpace::ConfigSpace(uint16_t vendor, uint16_t device, uint8_t class_code, uint8_t subclass,
                         uint8_t prog_if) {
  std::memcpy(&bytes_[cfg::kVendorId], &vendor, 2);
  std::memcpy(&bytes_[cfg::kDeviceId], &device, 2);
  bytes_[cfg::kClass] = class_code;
  bytes_[cfg::kSubclass] = subclass;
  bytes_[cfg::kProgIf] = prog_if;
  // Command: I/O, memory, bus master and INTx disable are writable.
  const uint16_t command_mask =
      cfg::kCommandIo | cfg::kCommandMemory | cfg::kCommandBusMaster | cfg::kCommandIntxDisable;
  std::memcpy(&writable_[cfg::kCommand], &command_mask, 2);
  writable_[cfg::kInterruptLine] = 0xff;
}

void ConfigSpace::set_subsystem(uint16_t vendor, uint16_t id) {
  std::memcpy(&bytes_[cfg::kSubsystemVendorId], &vendor, 2);
  std::memcpy(&bytes_[cfg::kSubsystemId], &id, 2);
}

void ConfigSpace::set_revision(uint8_t revision) {
  bytes_[cfg::kRevision] = revision;
}

void ConfigSpace::set_interrupt_pin(uint8_t pin) {
  bytes_[cfg::kInterruptPin] = pin;
}

void ConfigSpace::add_memory_bar(unsigned index, const BarInfo& info, uint64_t address) {
  bars_[index] = info;
  const uint16_t at = static_cast<uint16_t>(cfg::kBar0 + 4 * index);
  uint32_t low = static_cast<uint32_t>(address) & ~0xfu;
  if (info.is_64bit) low |= kBarMemory64;
  if (info.prefetchable) low |= kBarPrefetchable;
  std::memcpy(&bytes_[at], &low, 4);
  // Only the address bits above the size are writable: that is what makes sizing work (write
  // all-ones, read back ~(size-1) | type bits).
  const uint64_t mask = ~(info.size - 1);
  const uint32_t low_mask = static_cast<uint32_t>(mask) & ~0xfu;
  std::memcpy(&writable_[at], &low_mask, 4);
  if (info.is_64bit) {
    const uint32_t high = static_cast<uint32_t>(address >> 32);
    const uint32_t high_mask = static_cast<uint32_t>(mask >> 32);
    std::memcpy(&bytes_[at + 4], &high, 4);
    std::memcpy(&writable_[at + 4], &high_mask, 4);
  }
}

uint8_t ConfigSpace::add_capability(uint8_t id, std::span<const uint8_t> body) {
  const uint8_t at = next_capability_;
  bytes_[at] = id;
  bytes_[at + 1] = 0;
  std::memcpy(&bytes_[at + 2], body.data(), body.size());
  if (last_capability_ == 0) {
    bytes_[cfg::kCapabilitiesPointer] = at;
  } else {
    bytes_[last_capability_ + 1] = at;
  }
  last_capability_ = at;
  next_capability_ = static_cast<uint8_t>((at + 2 + body.size() + 3) & ~3u);
  set_status_bits(cfg::kStatusCapabilities, true);
  return at;
}

void ConfigSpace::read(uint16_t offset, std::span<uint8_t> data) const {
  for (size_t i = 0; i < data.size(); ++i) {
    const size_t at = offset + i;
    data[i] = at < cfg::kSize ? bytes_[at] : 0xff;
  }
}

uint32_t ConfigSpace::read32(uint16_t offset) const {
  uint32_t v;
  std::memcpy(&v, &bytes_[offset], 4);
  return v;
}

uint16_t ConfigSpace::command() const {
  uint16_t c;
  std::memcpy(&c, &bytes_[cfg::kCommand], 2);
  return c;
}

uint64_t ConfigSpace::bar_address(unsigned index) const {
  const uint16_t at = static_cast<uint16_t>(cfg::kBar0 + 4 * index);
  uint64_t address = read32(at) & ~0xfull;
  if (bars_[index].is_64bit) address |= uint64_t(read32(at + 4)) << 32;
  return address;
}

void ConfigSpace::set_status_bits(uint16_t bits, bool on) {
  uint16_t status;
  std::memcpy(&status, &bytes_[cfg::kStatus], 2);
  status = on ? (status | bits) : (status & ~bits);
  std::memcpy(&bytes_[cfg::kStatus], &status, 2);
}

void ConfigSpace::write_byte(uint16_t offset, uint8_t value) {
  bytes_[offset] =
      static_cast<uint8_t>((bytes_[offset] & ~writable_[offset]) | (value & writable_[offset]));
  bytes_[offset] &= static_cast<uint8_t>(~(value & clear_on_write_[offset]));
}

void ConfigSpace::write(uint16_t offset, std::span<const uint8_t> data) {
  if (offset >= cfg::kSize) return;
  const size_t len = std::min<size_t>(data.size(), cfg::kSize - offset);
  const uint16_t old_command = command();
  std::array<uint64_t, cfg::kBarCount> old_bars{};
  for (unsigned i = 0; i < cfg::kBarCount; ++i) old_bars[i] = bars_[i].size ? bar_address(i) : 0;

  for (size_t i = 0; i < len; ++i) write_byte(static_cast<uint16_t>(offset + i), data[i]);

  const uint16_t end = static_cast<uint16_t>(offset + len);
  if (offset < cfg::kCommand + 2 && end > cfg::kCommand && on_command_changed &&
      command() != old_command) {
    on_command_changed(old_command, command());
  }
  if (offset < cfg::kBar0 + 4 * cfg::kBarCount && end > cfg::kBar0) {
    for (unsigned i = 0; i < cfg::kBarCount; ++i) {
      if (!bars_[i].size) continue;
      const uint64_t now = bar_address(i);
      // A BAR being sized holds all-ones (an address no one decodes); a move is reported
      // anyway and the owner only maps it while memory decoding is on and it is sane.
      if (now != old_bars[i] && on_bar_moved) on_bar_moved(i, old_bars[i], now);
    }
  }
  if (offset + len > 0x40 && on_capability_write) {
    const uint16_t start = std::max<uint16_t>(offset, 0x40);
    on_capability_write(start, offset + len - start);
  }
}

}  // namespace pier::pci
