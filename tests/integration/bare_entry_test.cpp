// The Linux 64-bit boot protocol entry state pier sets up, checked from inside the guest.
#include "pier_process.hpp"

using namespace pier::test;

TEST(BareEntry, BootProtocolState) {
  PIER_REQUIRE_KVM();
  auto r = run_bare("entry", {"--memory", "64M", "--cmdline", "entry.check=pier-cmdline-ok expect_mem=64M"});
  std::cout << r.out;
  EXPECT_TRUE(guest_passed(r, "entry"));
  EXPECT_NE(r.out.find("check cmdline value entry.check=pier-cmdline-ok: ok"), std::string::npos) << r.describe();
}
