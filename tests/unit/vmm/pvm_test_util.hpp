#pragma once
// Fake guest page tables for the pvm unit tests: a bump allocator of zeroed 4 KiB tables in a
// GuestMemory, and helpers to map pages in long mode (4- or 5-level), PAE and 32-bit paging.
#include <linux/kvm.h>

#include <cstdint>

#include "vmm/guest_memory.hpp"
#include "vmm/pvm/page_walk.hpp"

namespace pier::pvm::test {

constexpr uint64_t kP = 1, kRw = 2, kUs = 4, kPs = 0x80, kNx = 1ull << 63;

class FakePaging {
 public:
  // Tables are allocated from `table_base` up.
  FakePaging(const GuestMemory& mem, uint64_t table_base, bool la57 = false)
      : mem_(mem), next_(table_base), la57_(la57) {
    root_ = alloc();
  }

  uint64_t root() const { return root_; }
  PagingState long_mode() const {
    PagingState p;
    p.cr0 = (1ull << 31) | 1;
    p.cr3 = root_;
    p.cr4 = (1ull << 5) | (la57_ ? (1ull << 12) : 0);
    p.efer = (1ull << 8) | (1ull << 10);
    return p;
  }
  void fill_sregs(kvm_sregs& s) const {
    const PagingState p = long_mode();
    s.cr0 = p.cr0;
    s.cr3 = p.cr3;
    s.cr4 = p.cr4;
    s.efer = p.efer;
    s.cs.l = 1;
    s.cs.selector = 0x10;
    s.cs.dpl = 0;
    s.ss.selector = 0x18;
  }

  // Maps gva -> gpa with a page of 4 KiB (level 1), 2 MiB (level 2) or 1 GiB (level 3).
  void map(uint64_t gva, uint64_t gpa, int page_level = 1, uint64_t flags = kP | kRw) {
    uint64_t table = root_;
    for (int level = la57_ ? 5 : 4; level > page_level; --level) {
      const uint64_t slot = table + ((gva >> (12 + 9 * (level - 1))) & 511) * 8;
      uint64_t entry = *mem_.read_obj<uint64_t>(slot);
      if (!(entry & kP)) {
        entry = alloc() | kP | kRw | kUs;
        mem_.write_obj(slot, entry);
      }
      table = entry & 0x000f'ffff'ffff'f000ull;
    }
    const uint64_t slot = table + ((gva >> (12 + 9 * (page_level - 1))) & 511) * 8;
    mem_.write_obj(slot, gpa | flags | (page_level > 1 ? kPs : 0));
  }

  uint64_t alloc() {
    const uint64_t at = next_;
    next_ += 4096;
    mem_.fill(at, 4096, 0, "fake page table");
    return at;
  }

 private:
  const GuestMemory& mem_;
  uint64_t next_;
  bool la57_;
  uint64_t root_ = 0;
};

}  // namespace pier::pvm::test
