#include "vmm/pvm/page_walk.hpp"

#include <algorithm>

#include "vmm/guest_memory.hpp"

namespace pier::pvm {
namespace {

constexpr uint64_t kCr0Pg = 1ull << 31;
constexpr uint64_t kCr4Pse = 1ull << 4;
constexpr uint64_t kCr4Pae = 1ull << 5;
constexpr uint64_t kCr4La57 = 1ull << 12;
constexpr uint64_t kEferLma = 1ull << 10;
constexpr uint64_t kPresent = 1ull << 0;
constexpr uint64_t kWritable = 1ull << 1;
constexpr uint64_t kUser = 1ull << 2;
constexpr uint64_t kLarge = 1ull << 7;
// Physical-address bits 51:12 of a 64-bit entry (bits 62:52 are software/protection-key bits,
// 63 is NX).
constexpr uint64_t kAddressMask = 0x000f'ffff'ffff'f000ull;
constexpr uint64_t kPageSize = 4096;

// A translation and the rights every level of it grants (R/W and U/S are ANDed down the walk).
struct Walk {
  uint64_t gpa = 0;
  bool writable = true;
  bool user = true;
  void restrict_by(uint64_t entry) {
    writable = writable && (entry & kWritable);
    user = user && (entry & kUser);
  }
};

std::optional<uint64_t> read_entry64(const GuestMemory& memory, uint64_t table, unsigned index) {
  return memory.read_obj<uint64_t>((table & kAddressMask) + index * 8ull);
}

std::optional<Walk> walk_long(const GuestMemory& memory, const PagingState& p, uint64_t gva) {
  const bool la57 = (p.cr4 & kCr4La57) != 0;
  const unsigned va_bits = la57 ? 57 : 48;
  // Canonical: bits 63..va_bits-1 all equal.
  const int64_t sign_extended = static_cast<int64_t>(gva << (64 - va_bits)) >> (64 - va_bits);
  if (static_cast<uint64_t>(sign_extended) != gva) return std::nullopt;

  Walk walk;
  uint64_t table = p.cr3 & kAddressMask;
  for (int level = la57 ? 5 : 4; level >= 1; --level) {
    const unsigned shift = 12 + 9 * static_cast<unsigned>(level - 1);
    const auto entry = read_entry64(memory, table, static_cast<unsigned>((gva >> shift) & 511));
    if (!entry || !(*entry & kPresent)) return std::nullopt;
    walk.restrict_by(*entry);
    if (level == 1 || ((level == 2 || level == 3) && (*entry & kLarge))) {
      const uint64_t page_mask = (1ull << shift) - 1;
      walk.gpa = (*entry & kAddressMask & ~page_mask) | (gva & page_mask);
      return walk;
    }
    table = *entry;
  }
  return std::nullopt;
}

std::optional<Walk> walk_pae(const GuestMemory& memory, const PagingState& p, uint32_t gva) {
  // CR3 bits 31:5 point at four PDPTEs (which carry no R/W or U/S bits in PAE mode).
  const auto pdpte = memory.read_obj<uint64_t>((p.cr3 & 0xffff'ffe0ull) + (gva >> 30) * 8ull);
  if (!pdpte || !(*pdpte & kPresent)) return std::nullopt;
  const auto pde = read_entry64(memory, *pdpte, (gva >> 21) & 511);
  if (!pde || !(*pde & kPresent)) return std::nullopt;
  Walk walk;
  walk.restrict_by(*pde);
  if (*pde & kLarge) {
    walk.gpa = (*pde & kAddressMask & ~0x1f'ffffull) | (gva & 0x1f'ffff);
    return walk;
  }
  const auto pte = read_entry64(memory, *pde, (gva >> 12) & 511);
  if (!pte || !(*pte & kPresent)) return std::nullopt;
  walk.restrict_by(*pte);
  walk.gpa = (*pte & kAddressMask) | (gva & 0xfff);
  return walk;
}

std::optional<Walk> walk_legacy(const GuestMemory& memory, const PagingState& p, uint32_t gva) {
  const auto pde = memory.read_obj<uint32_t>((p.cr3 & 0xffff'f000ull) + (gva >> 22) * 4ull);
  if (!pde || !(*pde & kPresent)) return std::nullopt;
  Walk walk;
  walk.restrict_by(*pde);
  if ((*pde & kLarge) && (p.cr4 & kCr4Pse)) {
    // PSE-36: bits 20:13 are physical-address bits 39:32.
    const uint64_t high = (static_cast<uint64_t>(*pde >> 13) & 0xff) << 32;
    walk.gpa = high | (*pde & 0xffc0'0000u) | (gva & 0x3f'ffff);
    return walk;
  }
  const auto pte = memory.read_obj<uint32_t>((*pde & 0xffff'f000u) + ((gva >> 12) & 1023) * 4ull);
  if (!pte || !(*pte & kPresent)) return std::nullopt;
  walk.restrict_by(*pte);
  walk.gpa = static_cast<uint64_t>(*pte & 0xffff'f000u) | (gva & 0xfff);
  return walk;
}

// Paging off: identity, every right.
std::optional<Walk> walk(const GuestMemory& memory, const PagingState& paging, uint64_t gva) {
  const bool long_mode = (paging.efer & kEferLma) != 0;
  if (!(paging.cr0 & kCr0Pg)) return Walk{long_mode ? gva : (gva & 0xffff'ffffull)};
  if (long_mode) return walk_long(memory, paging, gva);
  const auto gva32 = static_cast<uint32_t>(gva);
  if (paging.cr4 & kCr4Pae) return walk_pae(memory, paging, gva32);
  return walk_legacy(memory, paging, gva32);
}

}  // namespace

std::optional<uint64_t> translate(const GuestMemory& memory, const PagingState& paging,
                                  uint64_t gva) {
  const auto w = walk(memory, paging, gva);
  if (!w) return std::nullopt;
  return w->gpa;
}

AccessCheck check_access(const GuestMemory& memory, const PagingState& paging, uint64_t gva,
                         size_t size, DataAccess access) {
  constexpr uint64_t kCr0Wp = 1ull << 16;
  constexpr uint64_t kCr4Smap = 1ull << 21;
  for (uint64_t page = gva & ~(kPageSize - 1); size != 0 && page <= gva + size - 1;
       page += kPageSize) {
    const auto w = walk(memory, paging, std::max(page, gva));
    if (!w) return AccessCheck::kNotPresent;
    if (!(paging.cr0 & kCr0Pg)) continue;
    if (access.user) {
      if (!w->user || (access.write && !w->writable)) return AccessCheck::kProtection;
    } else {
      if (access.write && !w->writable && (paging.cr0 & kCr0Wp)) return AccessCheck::kProtection;
      if (w->user && (paging.cr4 & kCr4Smap) && !access.rflags_ac) return AccessCheck::kProtection;
    }
    if (page + kPageSize < page) break;  // the top page of the address space
  }
  return AccessCheck::kAllowed;
}

bool read_virtual(const GuestMemory& memory, const PagingState& paging, uint64_t gva,
                  std::span<uint8_t> out) {
  size_t done = 0;
  while (done < out.size()) {
    const uint64_t at = gva + done;
    const size_t chunk = std::min<uint64_t>(out.size() - done, kPageSize - (at & (kPageSize - 1)));
    const auto gpa = translate(memory, paging, at);
    if (!gpa || !memory.read(*gpa, out.subspan(done, chunk))) return false;
    done += chunk;
  }
  return true;
}

bool write_virtual(const GuestMemory& memory, const PagingState& paging, uint64_t gva,
                   std::span<const uint8_t> in) {
  // Translate every page first so a failure writes nothing.
  uint64_t gpas[2] = {};
  size_t pages = 0;
  for (size_t done = 0; done < in.size();) {
    const uint64_t at = gva + done;
    const size_t chunk = std::min<uint64_t>(in.size() - done, kPageSize - (at & (kPageSize - 1)));
    const auto gpa = translate(memory, paging, at);
    if (!gpa || pages == 2 || !memory.contains(*gpa, chunk)) return false;
    gpas[pages++] = *gpa;
    done += chunk;
  }
  size_t done = 0;
  for (size_t i = 0; i < pages; ++i) {
    const uint64_t at = gva + done;
    const size_t chunk = std::min<uint64_t>(in.size() - done, kPageSize - (at & (kPageSize - 1)));
    memory.write(gpas[i], in.subspan(done, chunk));
    done += chunk;
  }
  return true;
}

}  // namespace pier::pvm
