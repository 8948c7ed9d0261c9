#include "vmm/guest_memory.hpp"

#include <fmt/format.h>
#include <sys/mman.h>

#include "boot/layout.hpp"
#include "vmm/error.hpp"

namespace pier {

GuestMemory GuestMemory::create(uint64_t ram_bytes) {
  if (ram_bytes == 0 || ram_bytes % 4096 != 0) {
    throw Error(fmt::format("guest memory size {} is not a positive multiple of 4 KiB", ram_bytes));
  }
  GuestMemory mem;
  mem.ram_size_ = ram_bytes;
  const uint64_t low = std::min(ram_bytes, layout::kMmioHoleStart);
  const uint64_t high = ram_bytes - low;
  mem.regions_.push_back({0, low});
  if (high > 0) mem.regions_.push_back({layout::kHighRamStart, high});
  const uint64_t span = mem.regions_.back().end();

  // Reserve the whole guest-physical span inaccessible, then open up the RAM regions. The hole
  // stays PROT_NONE. MAP_NORESERVE: the host commits pages only as the guest touches them.
  void* base = ::mmap(nullptr, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) {
    throw system_error(fmt::format("cannot reserve {} MiB for guest RAM", span >> 20));
  }
  mem.reservation_ = Mapping(base, span);
  for (const auto& r : mem.regions_) {
    void* at = static_cast<uint8_t*>(base) + r.gpa;
    if (::mprotect(at, r.size, PROT_READ | PROT_WRITE) != 0) {
      throw system_error(fmt::format("cannot map {} MiB of guest RAM", r.size >> 20));
    }
    // Transparent huge pages cut TLB misses and page-table memory for big guests; advisory only.
    ::madvise(at, r.size, MADV_HUGEPAGE);
  }
  return mem;
}

void* GuestMemory::host_address_of_region(const MemoryRegion& region) const {
  return reservation_.as<uint8_t>() + region.gpa;
}

bool GuestMemory::contains(uint64_t gpa, uint64_t len) const noexcept {
  for (const auto& r : regions_) {
    // Written so that no addition can overflow: gpa >= r.gpa, then compare the remaining room.
    if (gpa >= r.gpa && gpa - r.gpa <= r.size && len <= r.size - (gpa - r.gpa)) {
      return true;
    }
  }
  return false;
}

std::optional<std::span<uint8_t>> GuestMemory::slice(uint64_t gpa, uint64_t len) const noexcept {
  if (!contains(gpa, len)) return std::nullopt;
  return std::span<uint8_t>(reservation_.as<uint8_t>() + gpa, len);
}

bool GuestMemory::read(uint64_t gpa, std::span<uint8_t> out) const noexcept {
  auto s = slice(gpa, out.size());
  if (!s) return false;
  if (!out.empty()) std::memcpy(out.data(), s->data(), out.size());
  return true;
}

bool GuestMemory::write(uint64_t gpa, std::span<const uint8_t> in) const noexcept {
  auto s = slice(gpa, in.size());
  if (!s) return false;
  if (!in.empty()) std::memcpy(s->data(), in.data(), in.size());
  return true;
}

uint64_t GuestMemory::resident_bytes() const {
  const uint64_t page = 4096;
  uint64_t resident = 0;
  std::vector<unsigned char> vec;
  for (const auto& r : regions_) {
    // In chunks so the vector stays small for large guests.
    constexpr uint64_t kChunk = 1ull << 30;
    for (uint64_t off = 0; off < r.size; off += kChunk) {
      const uint64_t len = std::min(kChunk, r.size - off);
      vec.resize(len / page);
      if (::mincore(reservation_.as<uint8_t>() + r.gpa + off, len, vec.data()) != 0) continue;
      for (unsigned char v : vec) resident += (v & 1) ? page : 0;
    }
  }
  return resident;
}

std::span<uint8_t> GuestMemory::checked_slice(uint64_t gpa, uint64_t len,
                                              std::string_view what) const {
  auto s = slice(gpa, len);
  if (!s) {
    throw Error(
        fmt::format("{} ({} bytes at guest address {:#x}) does not fit in guest RAM "
                    "({} MiB); use a larger --memory",
                    what, len, gpa, ram_size_ >> 20));
  }
  return *s;
}

void GuestMemory::load(uint64_t gpa, std::span<const uint8_t> bytes, std::string_view what) const {
  auto dst = checked_slice(gpa, bytes.size(), what);
  if (!bytes.empty()) std::memcpy(dst.data(), bytes.data(), bytes.size());
}

void GuestMemory::fill(uint64_t gpa, uint64_t len, uint8_t byte, std::string_view what) const {
  auto dst = checked_slice(gpa, len, what);
  if (len) std::memset(dst.data(), byte, len);
}

}  // namespace pier
