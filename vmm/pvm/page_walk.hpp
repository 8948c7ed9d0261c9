#pragma once
// Guest-virtual -> guest-physical translation by walking the guest's own page tables (CR3) through
// GuestMemory, as the CPU would for a supervisor access. The kvm_pvm assist reads instruction
// bytes at RIP, the IDT, exception frames and memory operands with it.
//
// Supported: paging off (identity), 32-bit (2-level, 4 MiB pages with CR4.PSE), PAE (3-level),
// long mode with 4- or 5-level tables (CR4.LA57), 1 GiB and 2 MiB pages. translate() and the
// copies check only the present bits (the VMM looks at memory the guest's kernel can look at);
// an access pier completes on the guest's behalf is checked first with check_access(), as the
// CPU would check it.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

namespace pier {
class GuestMemory;
}

namespace pier::pvm {

struct PagingState {
  uint64_t cr0 = 0;
  uint64_t cr3 = 0;
  uint64_t cr4 = 0;
  uint64_t efer = 0;
};

// The guest-physical address of `gva`, or nullopt when a level is not present, a table lies
// outside guest RAM, or the address is not canonical.
std::optional<uint64_t> translate(const GuestMemory& memory, const PagingState& paging,
                                  uint64_t gva);

// A data access the guest's CPU makes: a write or a read, from CPL3 or not, with RFLAGS.AC.
struct DataAccess {
  bool write = false;
  bool user = false;
  bool rflags_ac = false;
};
enum class AccessCheck { kAllowed, kNotPresent, kProtection };
// Whether the CPU allows `access` to every byte of [gva, gva + size): U/S and R/W of every level
// of the walk, CR0.WP for supervisor writes, CR4.SMAP for supervisor accesses to user pages
// (unless RFLAGS.AC). Data accesses only: NX does not apply.
AccessCheck check_access(const GuestMemory& memory, const PagingState& paging, uint64_t gva,
                         size_t size, DataAccess access);

// Copies guest-virtual [gva, gva + out.size()) page by page; false (out partly written) when any
// byte is unmapped or outside RAM. write_virtual writes at most 4 KiB (one page boundary) and
// writes nothing unless every byte is mapped.
bool read_virtual(const GuestMemory& memory, const PagingState& paging, uint64_t gva,
                  std::span<uint8_t> out);
bool write_virtual(const GuestMemory& memory, const PagingState& paging, uint64_t gva,
                   std::span<const uint8_t> in);

template <class T>
std::optional<T> read_virtual_obj(const GuestMemory& memory, const PagingState& paging,
                                  uint64_t gva) {
  T value;
  if (!read_virtual(memory, paging, gva, std::span(reinterpret_cast<uint8_t*>(&value), sizeof(T))))
    return std::nullopt;
  return value;
}

}  // namespace pier::pvm
