// AP start-up by INIT-SIPI-SIPI with a guest-provided real-mode trampoline, 2 and 4 vCPUs.
#include "pier_process.hpp"

using namespace pier::test;

static void run_smp(int cpus) {
  auto r = run_bare("smp", {"--cpus", std::to_string(cpus), "--cmdline", "cpus=" + std::to_string(cpus)});
  EXPECT_TRUE(guest_passed(r, "smp"));
  EXPECT_EQ(line_after(r.out, "smp: "), std::to_string(cpus) + " CPUs running") << r.describe();
  std::cout << "[ figures  ] " << line_after(r.out, "APs: ") << "; pier run " << r.total_s << " s\n";
}

TEST(BareSmp, TwoCpus) {
  PIER_REQUIRE_KVM();
  run_smp(2);
}

TEST(BareSmp, FourCpus) {
  PIER_REQUIRE_KVM();
  run_smp(4);
}

TEST(BareSmp, PowerOffFromAnApWhileTheBspHalts) {
  PIER_REQUIRE_KVM();
  auto r = run_bare("smp", {"--cpus", "3", "--cmdline", "cpus=3 poweroff=ap"}, std::chrono::milliseconds(30000));
  EXPECT_TRUE(guest_passed(r, "smp"));
}
