// pier's start-up cost with the smallest guest (poweroff_s5): wall time from exec to the first
// byte of guest serial output, and to exit. Printed, never asserted (target: exec -> first guest
// instruction < 10 ms). PIER_BOOT_LATENCY_RUNS overrides the number of runs (default 10).
#include <algorithm>
#include <cstdlib>
#include <cstdio>

#include "pier_process.hpp"

using namespace pier::test;

TEST(BareBootLatency, ExecToFirstSerialByte) {
  PIER_REQUIRE_KVM();
  int runs = 10;
  if (const char* e = std::getenv("PIER_BOOT_LATENCY_RUNS")) runs = std::max(1, std::atoi(e));
  std::vector<double> first, total;
  for (int i = 0; i < runs; i++) {
    auto r = run_bare("poweroff_s5", {"--memory", "64M"});
    ASSERT_TRUE(guest_passed(r, "poweroff_s5"));
    first.push_back(r.first_output_s * 1e3);
    total.push_back(r.total_s * 1e3);
  }
  std::sort(first.begin(), first.end());
  std::sort(total.begin(), total.end());
  auto med = [](const std::vector<double>& v) { return v[v.size() / 2]; };
  std::printf("[ figures  ] poweroff_s5 x%d, --memory 64M: exec -> first serial byte min %.2f ms, median %.2f ms; "
              "exec -> exit min %.2f ms, median %.2f ms\n",
              runs, first.front(), med(first), total.front(), med(total));
}
