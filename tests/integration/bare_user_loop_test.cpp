// CPL3 round trips and a 100 M-iteration CPL3 loop (native speed even on kvm_pvm).
#include "pier_process.hpp"

using namespace pier::test;

TEST(BareUserLoop, Cpl3LoopRunsAtNativeSpeed) {
  PIER_REQUIRE_KVM();
  auto r = run_bare("user_loop");
  EXPECT_TRUE(guest_passed(r, "user_loop"));
  std::cout << "[ figures  ] " << line_after(r.out, "user loop: ") << "; pier run " << r.total_s << " s\n";
  std::cout << "[ figures  ] " << line_after(r.out, "costs: ") << "\n";
}
