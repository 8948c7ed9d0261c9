// pier's start-up cost, printed, never asserted (target: exec -> first guest instruction < 10 ms):
// - first_byte (no library; its first instruction writes to COM1): exec -> first serial byte is
//   pier's exec -> first guest instruction plus one I/O exit;
// - poweroff_s5 (library set-up, then PASS and S5): exec -> first byte and exec -> exit.
// PIER_BOOT_LATENCY_RUNS overrides the number of runs (default 10).
#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "pier_process.hpp"

using namespace pier::test;

namespace {

void measure(const std::string& guest) {
  int runs = 10;
  if (const char* e = std::getenv("PIER_BOOT_LATENCY_RUNS")) runs = std::max(1, std::atoi(e));
  std::vector<double> first, total;
  for (int i = 0; i < runs; i++) {
    auto r = run_bare(guest, {"--memory", "64M"});
    ASSERT_TRUE(guest_passed(r, guest));
    first.push_back(r.first_output_s * 1e3);
    total.push_back(r.total_s * 1e3);
  }
  std::sort(first.begin(), first.end());
  std::sort(total.begin(), total.end());
  auto med = [](const std::vector<double>& v) { return v[v.size() / 2]; };
  std::printf("[ figures  ] %s x%d, --memory 64M: exec -> first serial byte min %.2f ms, median %.2f ms, max %.2f ms; "
              "exec -> exit min %.2f ms, median %.2f ms\n",
              guest.c_str(), runs, first.front(), med(first), first.back(), total.front(), med(total));
}

}  // namespace

TEST(BareBootLatency, ExecToFirstGuestInstruction) {
  PIER_REQUIRE_KVM();
  measure("first_byte");
}

TEST(BareBootLatency, ExecToFirstSerialByteWithLibrary) {
  PIER_REQUIRE_KVM();
  measure("poweroff_s5");
}
