// The kvm_pvm assist's completion paths, driven by bare-metal guests: int3 in CPL0, fwait (and
// clac/stac, ldmxcsr/stmxcsr), a user-mode SYSCALL, and an instruction pier does not complete.
// The guests pass on any KVM host; on a kvm_pvm host the completion counts pier logs at exit must
// show that the assist did the work, and `--host-profile none` must run none of it.
#include <filesystem>
#include <regex>

#include "pier_process.hpp"

using namespace pier::test;

namespace {

bool pvm_host() {
  return std::filesystem::exists("/sys/module/kvm_pvm");
}

// The count of `kind` in pier's "host profile pvm: completed ..." line (0 if absent).
long completed(const PierResult& r, const std::string& kind) {
  std::smatch m;
  const std::regex re("host profile pvm: completed[^\\n]*[ ,]" + kind + " ([0-9]+)");
  return std::regex_search(r.err, m, re) ? std::stol(m[1]) : 0;
}

PierResult run_guest(const std::string& name, std::vector<std::string> extra = {}) {
  extra.push_back("--log-level");
  extra.push_back("info");
  return run_bare(name, extra);
}

}  // namespace

TEST(PvmBare, Int3InCpl0ReachesTheGuestHandler) {
  PIER_REQUIRE_KVM();
  const auto r = run_guest("pvm_int3");
  EXPECT_TRUE(guest_passed(r, "pvm_int3"));
  if (pvm_host()) {
    EXPECT_EQ(completed(r, "int3"), 102) << r.err;
  }
}

TEST(PvmBare, FwaitClacStacAndMxcsr) {
  PIER_REQUIRE_KVM();
  const auto r = run_guest("pvm_fwait");
  EXPECT_TRUE(guest_passed(r, "pvm_fwait"));
  if (pvm_host()) {
    EXPECT_EQ(completed(r, "fwait"), 53) << r.err;
    EXPECT_EQ(completed(r, "ldmxcsr"), 2) << r.err;
    EXPECT_EQ(completed(r, "stmxcsr"), 2) << r.err;
  }
}

TEST(PvmBare, UserSyscallEntersCpl0AtLstar) {
  PIER_REQUIRE_KVM();
  const auto r = run_guest("pvm_syscall", {"--cmdline", "syscalls=2000"});
  EXPECT_TRUE(guest_passed(r, "pvm_syscall"));
  if (pvm_host()) {
    EXPECT_EQ(completed(r, "syscall"), 2001) << r.err;
  }
  std::cout << "[ figures  ] " << line_after(r.out, "syscall: ") << "\n";
}

TEST(PvmBare, UncompletableInstructionStopsWithARegisterDump) {
  PIER_REQUIRE_KVM();
  const auto r = run_guest("pvm_unsupported");
  if (!pvm_host()) {
    EXPECT_TRUE(guest_passed(r, "pvm_unsupported"));
    return;
  }
  if (r.out.find("no POPCNT in CPUID") != std::string::npos) GTEST_SKIP() << "no POPCNT here";
  EXPECT_NE(r.exit_code, 0) << r.describe();
  EXPECT_FALSE(r.timed_out);
  EXPECT_NE(r.err.find("popcnt"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("clearcpuid=popcnt"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("rip="), std::string::npos) << r.err;  // the register dump
  EXPECT_EQ(r.out.find("PIER-TEST PASS"), std::string::npos) << r.out;
}

TEST(PvmBare, HostProfileNoneRunsNoneOfTheAssist) {
  PIER_REQUIRE_KVM();
  const auto r = run_guest("pvm_int3", {"--host-profile", "none"});
  EXPECT_EQ(r.err.find("host profile pvm"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("host profile: none"), std::string::npos) << r.err;
  if (pvm_host()) {
    // Without the assist kvm_pvm's emulation failure on int3 stops pier.
    EXPECT_NE(r.exit_code, 0) << r.describe();
    EXPECT_NE(r.err.find("internal error"), std::string::npos) << r.err;
  } else {
    // Hardware virtualization needs no assist: forcing none is what auto detection picks.
    EXPECT_TRUE(guest_passed(r, "pvm_int3"));
  }
}
