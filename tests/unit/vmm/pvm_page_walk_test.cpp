// Guest page-table walks for the kvm_pvm assist, against fake page tables in fake guest memory.
#include "vmm/pvm/page_walk.hpp"

#include <gtest/gtest.h>

#include <array>

#include "pvm_test_util.hpp"

namespace pier::pvm {
namespace {

using test::FakePaging;

class PageWalk : public ::testing::Test {
 protected:
  GuestMemory mem = GuestMemory::create(64 << 20);
};

TEST_F(PageWalk, PagingOffIsIdentity) {
  PagingState p;
  EXPECT_EQ(translate(mem, p, 0x12345), 0x12345u);
  // Outside long mode the address is 32 bits.
  EXPECT_EQ(translate(mem, p, 0x1'0000'1234ull), 0x1234u);
}

TEST_F(PageWalk, FourLevelWith4KiB2MiBAnd1GiBPages) {
  FakePaging f(mem, 0x100000);
  const uint64_t kernel = 0xffff'ffff'8100'0000ull;
  f.map(kernel, 0x200000);
  f.map(kernel + 0x1000, 0x7000);
  f.map(0xffff'8880'0000'0000ull, 0x0, 3);  // direct map: 1 GiB page
  f.map(0x40'0000, 0x60'0000, 2);           // 2 MiB page
  const PagingState p = f.long_mode();
  EXPECT_EQ(translate(mem, p, kernel + 0x123), 0x200123u);
  EXPECT_EQ(translate(mem, p, kernel + 0x1fff), 0x7fffu);
  EXPECT_EQ(translate(mem, p, 0xffff'8880'0012'3456ull), 0x12'3456u);
  EXPECT_EQ(translate(mem, p, 0x4f'ffff), 0x6f'ffffu);
  EXPECT_FALSE(translate(mem, p, kernel + 0x2000));      // PTE not present
  EXPECT_FALSE(translate(mem, p, 0x7000'0000'0000ull));  // PML4E not present
}

TEST_F(PageWalk, NonCanonicalAddressesDoNotTranslate) {
  FakePaging f(mem, 0x100000);
  f.map(0x1000, 0x1000);
  const PagingState p = f.long_mode();
  EXPECT_TRUE(translate(mem, p, 0x1000));
  EXPECT_FALSE(translate(mem, p, 0x0001'0000'0000'1000ull));
  EXPECT_FALSE(translate(mem, p, 0x8000'0000'0000'1000ull));
}

TEST_F(PageWalk, EntryFlagsAboveTheAddressAreIgnored) {
  FakePaging f(mem, 0x100000);
  // NX and protection-key bits set in the leaf.
  f.map(0x5000, 0x9000, 1, test::kP | test::kNx | (0xfull << 59));
  EXPECT_EQ(translate(mem, f.long_mode(), 0x5010), 0x9010u);
}

TEST_F(PageWalk, FiveLevelPaging) {
  FakePaging f(mem, 0x100000, /*la57=*/true);
  const uint64_t va = 0xff11'0000'0000'2000ull;  // needs 57-bit canonical form
  f.map(va, 0x30'0000);
  const PagingState p = f.long_mode();
  EXPECT_EQ(translate(mem, p, va + 8), 0x30'0008u);
  // 48-bit-canonical only addresses are fine with LA57 too; this one is not mapped.
  EXPECT_FALSE(translate(mem, p, 0xffff'8000'0000'0000ull));
  // Not canonical for 57 bits.
  EXPECT_FALSE(translate(mem, p, 0x0100'0000'0000'0000ull));
}

TEST_F(PageWalk, TablesOutsideRamFailInsteadOfReadingThem) {
  FakePaging f(mem, 0x100000);
  // A PML4 entry pointing far past the 64 MiB of RAM.
  mem.write_obj<uint64_t>(f.root(), 0x40'0000'0000ull | test::kP);
  EXPECT_FALSE(translate(mem, f.long_mode(), 0x1000));
  // CR3 itself outside RAM.
  PagingState p = f.long_mode();
  p.cr3 = 0x7000'0000'0000ull;
  EXPECT_FALSE(translate(mem, p, 0x1000));
}

TEST_F(PageWalk, PaeThreeLevel) {
  // PDPT (4 entries) at 0x1000, PD at 0x2000, PT at 0x3000.
  mem.fill(0x1000, 0x3000, 0, "tables");
  mem.write_obj<uint64_t>(0x1000 + 3 * 8, 0x2000 | test::kP);
  mem.write_obj<uint64_t>(0x2000 + 0x1ff * 8, 0x3000 | test::kP);  // 0xffe00000
  mem.write_obj<uint64_t>(0x3000 + 5 * 8, 0x8000 | test::kP);
  mem.write_obj<uint64_t>(0x2000 + 0 * 8, 0x40'0000 | test::kP | test::kPs);  // 0xc0000000, 2 MiB
  PagingState p;
  p.cr0 = (1ull << 31) | 1;
  p.cr3 = 0x1000;
  p.cr4 = 1ull << 5;
  EXPECT_EQ(translate(mem, p, 0xffe0'5abcull), 0x8abcu);
  EXPECT_EQ(translate(mem, p, 0xc001'0000ull), 0x41'0000u);
  EXPECT_FALSE(translate(mem, p, 0x1000));
}

TEST_F(PageWalk, Legacy32BitWith4MiBPages) {
  mem.fill(0x1000, 0x2000, 0, "tables");
  mem.write_obj<uint32_t>(0x1000 + 0x300 * 4, 0x2000 | 1);        // 0xc0000000 -> PT
  mem.write_obj<uint32_t>(0x2000 + 2 * 4, 0x5000 | 1);            // 0xc0002000
  mem.write_obj<uint32_t>(0x1000 + 1 * 4, 0x80'0000 | 1 | 0x80);  // 0x400000, 4 MiB
  PagingState p;
  p.cr0 = (1ull << 31) | 1;
  p.cr3 = 0x1000;
  p.cr4 = 1ull << 4;  // PSE
  EXPECT_EQ(translate(mem, p, 0xc000'2010ull), 0x5010u);
  EXPECT_EQ(translate(mem, p, 0x41'2345ull), 0x81'2345u);
  p.cr4 = 0;  // without PSE the large bit is ignored: the entry is a page table at 0x800000
  mem.fill(0x80'0000, 4096, 0, "pt");
  EXPECT_FALSE(translate(mem, p, 0x41'2345ull));
}

TEST_F(PageWalk, ReadAndWriteAcrossAPageBoundary) {
  FakePaging f(mem, 0x100000);
  const uint64_t va = 0xffff'ffff'8200'0000ull;
  f.map(va, 0x20'0000);
  f.map(va + 0x1000, 0x50'0000);  // physically apart
  const PagingState p = f.long_mode();
  const std::array<uint8_t, 8> in = {1, 2, 3, 4, 5, 6, 7, 8};
  ASSERT_TRUE(write_virtual(mem, p, va + 0xffc, in));
  EXPECT_EQ(*mem.read_obj<uint32_t>(0x20'0ffc), 0x04030201u);
  EXPECT_EQ(*mem.read_obj<uint32_t>(0x50'0000), 0x08070605u);
  std::array<uint8_t, 8> out{};
  ASSERT_TRUE(read_virtual(mem, p, va + 0xffc, out));
  EXPECT_EQ(out, in);
  EXPECT_EQ(read_virtual_obj<uint64_t>(mem, p, va + 0xffc), 0x0807060504030201ull);
}

TEST_F(PageWalk, UnmappedSecondPageFailsAndWritesNothing) {
  FakePaging f(mem, 0x100000);
  const uint64_t va = 0x60'0000;
  f.map(va, 0x20'0000);
  const PagingState p = f.long_mode();
  mem.write_obj<uint32_t>(0x20'0ffc, 0xdeadbeef);
  const std::array<uint8_t, 8> in = {1, 2, 3, 4, 5, 6, 7, 8};
  EXPECT_FALSE(write_virtual(mem, p, va + 0xffc, in));
  EXPECT_EQ(*mem.read_obj<uint32_t>(0x20'0ffc), 0xdeadbeefu);
  std::array<uint8_t, 8> out{};
  EXPECT_FALSE(read_virtual(mem, p, va + 0xffc, out));
  EXPECT_TRUE(read_virtual(mem, p, va + 0xffc, std::span(out.data(), 4)));
}

TEST_F(PageWalk, LeafOutsideRamTranslatesButDoesNotRead) {
  FakePaging f(mem, 0x100000);
  f.map(0x1000, 0x10'0000'0000ull);  // 64 GiB: no RAM there
  const PagingState p = f.long_mode();
  EXPECT_EQ(translate(mem, p, 0x1008), 0x10'0000'0008ull);
  std::array<uint8_t, 4> out{};
  EXPECT_FALSE(read_virtual(mem, p, 0x1008, out));
}

// check_access: what the CPU would allow a data access, level by level.
TEST_F(PageWalk, AccessChecksUserSupervisorWriteProtectAndSmap) {
  using test::kP;
  using test::kRw;
  using test::kUs;
  FakePaging f(mem, 0x100000);
  const uint64_t kernel = 0xffff'8880'0000'0000ull, user_ro = 0x40'0000, user_rw = 0x40'1000;
  f.map(kernel, 0x200000);                  // supervisor, writable
  f.map(kernel + 0x1000, 0x201000, 1, kP);  // supervisor, read-only
  f.map(user_ro, 0x300000, 1, kP | kUs);    // user, read-only
  f.map(user_rw, 0x301000, 1, kP | kRw | kUs);
  PagingState p = f.long_mode();
  const DataAccess user_read{false, true, false}, user_write{true, true, false};
  const DataAccess kernel_read{false, false, false}, kernel_write{true, false, false};
  const DataAccess kernel_write_ac{true, false, true};
  EXPECT_EQ(check_access(mem, p, kernel, 4, user_read), AccessCheck::kProtection);
  EXPECT_EQ(check_access(mem, p, kernel, 4, user_write), AccessCheck::kProtection);
  EXPECT_EQ(check_access(mem, p, user_ro, 4, user_read), AccessCheck::kAllowed);
  EXPECT_EQ(check_access(mem, p, user_ro, 4, user_write), AccessCheck::kProtection);
  EXPECT_EQ(check_access(mem, p, user_rw, 4, user_write), AccessCheck::kAllowed);
  // Four bytes across into the next page: the second page decides too.
  EXPECT_EQ(check_access(mem, p, user_rw - 2, 4, user_write), AccessCheck::kProtection);
  EXPECT_EQ(check_access(mem, p, user_rw + 0xffe, 4, user_read), AccessCheck::kNotPresent);
  // Supervisor writes to a read-only page: allowed unless CR0.WP.
  EXPECT_EQ(check_access(mem, p, kernel + 0x1000, 4, kernel_write), AccessCheck::kAllowed);
  p.cr0 |= 1ull << 16;
  EXPECT_EQ(check_access(mem, p, kernel + 0x1000, 4, kernel_write), AccessCheck::kProtection);
  EXPECT_EQ(check_access(mem, p, kernel + 0x1000, 4, kernel_read), AccessCheck::kAllowed);
  // SMAP: supervisor accesses to user pages only with RFLAGS.AC.
  EXPECT_EQ(check_access(mem, p, user_rw, 4, kernel_write), AccessCheck::kAllowed);
  p.cr4 |= 1ull << 21;
  EXPECT_EQ(check_access(mem, p, user_rw, 4, kernel_write), AccessCheck::kProtection);
  EXPECT_EQ(check_access(mem, p, user_rw, 4, kernel_read), AccessCheck::kProtection);
  EXPECT_EQ(check_access(mem, p, user_rw, 4, kernel_write_ac), AccessCheck::kAllowed);
  // Paging off: everything in reach is allowed.
  EXPECT_EQ(check_access(mem, PagingState{}, 0x1000, 4, user_write), AccessCheck::kAllowed);
}

}  // namespace
}  // namespace pier::pvm
