#pragma once
// The one guest-memory API. Every access to guest RAM from the VMM goes through here and is
// bounds-checked against the RAM regions; nothing else dereferences guest memory.
//
// Guest RAM is one host reservation laid out exactly like the guest-physical space (RAM below the
// MMIO hole, the hole itself PROT_NONE, RAM above 4 GiB), so a guest-physical address maps to the
// host by a single add once it has been checked, and a stray host access into the hole faults
// instead of corrupting anything.
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string_view>
#include <type_traits>
#include <vector>

#include "vmm/fd.hpp"

namespace pier {

struct MemoryRegion {
  uint64_t gpa = 0;
  uint64_t size = 0;
  uint64_t end() const { return gpa + size; }
};

class GuestMemory {
 public:
  // Reserves and maps `ram_bytes` of guest RAM (split around the 32-bit MMIO hole). Pages are
  // populated lazily by the host kernel. Throws pier::Error when the host cannot map it.
  static GuestMemory create(uint64_t ram_bytes);

  GuestMemory(GuestMemory&&) noexcept = default;
  GuestMemory& operator=(GuestMemory&&) noexcept = default;

  uint64_t ram_size() const { return ram_size_; }
  // RAM regions in ascending order: [0, low_end) and, when RAM exceeds the hole, [4 GiB, ...).
  std::span<const MemoryRegion> regions() const { return regions_; }
  // Host address backing guest-physical `gpa` of a region (for KVM memslots only).
  void* host_address_of_region(const MemoryRegion& region) const;

  // True when [gpa, gpa+len) lies inside one RAM region (len 0 is inside when gpa is).
  bool contains(uint64_t gpa, uint64_t len) const noexcept;

  // The host view of [gpa, gpa+len) when it is inside one RAM region, else nullopt.
  std::optional<std::span<uint8_t>> slice(uint64_t gpa, uint64_t len) const noexcept;

  // Copies out of / into guest RAM. Return false (touching nothing) when out of range.
  bool read(uint64_t gpa, std::span<uint8_t> out) const noexcept;
  bool write(uint64_t gpa, std::span<const uint8_t> in) const noexcept;

  template <class T>
  std::optional<T> read_obj(uint64_t gpa) const noexcept {
    static_assert(std::is_trivially_copyable_v<T>);
    T value;
    if (!read(gpa, std::span(reinterpret_cast<uint8_t*>(&value), sizeof(T)))) return std::nullopt;
    return value;
  }
  template <class T>
  bool write_obj(uint64_t gpa, const T& value) const noexcept {
    static_assert(std::is_trivially_copyable_v<T>);
    return write(gpa, std::span(reinterpret_cast<const uint8_t*>(&value), sizeof(T)));
  }

  // Bytes of guest RAM the host currently has resident (pages the guest or pier touched).
  uint64_t resident_bytes() const;

  // Set-up time helpers: throw pier::Error("<what> (N bytes at 0x...) does not fit in guest RAM").
  void load(uint64_t gpa, std::span<const uint8_t> bytes, std::string_view what) const;
  void fill(uint64_t gpa, uint64_t len, uint8_t byte, std::string_view what) const;
  std::span<uint8_t> checked_slice(uint64_t gpa, uint64_t len, std::string_view what) const;

 private:
  GuestMemory() = default;
  Mapping reservation_;
  uint64_t ram_size_ = 0;
  std::vector<MemoryRegion> regions_;
};

}  // namespace pier
