// LAPIC timer one-shot, periodic (while halted) and TSC-deadline. Timing is reported, not asserted.
#include "pier_process.hpp"

using namespace pier::test;

TEST(BareLapicTimer, OneShotPeriodicAndDeadline) {
  PIER_REQUIRE_KVM();
  auto r = run_bare("lapic_timer");
  EXPECT_TRUE(guest_passed(r, "lapic_timer"));
  for (const char* p : {"TSC: ", "one-shot ", "periodic ", "TSC-deadline "})
    if (has_line_starting(r.out, p)) std::cout << "[ figures  ] " << p << line_after(r.out, p) << "\n";
}
