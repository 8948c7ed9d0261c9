// RAM above 4 GiB with --memory 5G: e820, hole, and a pattern over 64 MiB written from CPL3.
#include "pier_process.hpp"

using namespace pier::test;

TEST(BareHighmem, FiveGigabytesWithRamAboveTheHole) {
  PIER_REQUIRE_KVM();
  auto r = run_bare("highmem", {"--memory", "5G", "--cmdline", "expect_mem=5G test_mib=64"});
  EXPECT_TRUE(guest_passed(r, "highmem"));
  std::cout << r.out;
}
