// The ways a guest ends the VM: ACPI S5, i8042 reset (both exit 0) and a triple fault (non-zero,
// with a message on stderr).
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "pier_process.hpp"

using namespace pier::test;

TEST(BarePower, AcpiS5PowerOffExitsZero) {
  PIER_REQUIRE_KVM();
  auto r = run_bare("poweroff_s5");
  EXPECT_TRUE(guest_passed(r, "poweroff_s5"));
}

TEST(BarePower, I8042ResetExitsZero) {
  PIER_REQUIRE_KVM();
  auto r = run_bare("reset_i8042");
  EXPECT_TRUE(guest_passed(r, "reset_i8042"));
}

static void expect_triple_fault(const std::string& how, const std::vector<std::string>& extra = {},
                                const std::string& cmdline = "") {
  std::vector<std::string> args{"--cmdline", "how=" + how + cmdline};
  args.insert(args.end(), extra.begin(), extra.end());
  auto r = run_bare("triple_fault", args);
  EXPECT_FALSE(r.timed_out) << r.describe();
  EXPECT_TRUE(has_line_starting(r.out, "PIER-TEST ARMED triple_fault")) << r.describe();
  EXPECT_FALSE(has_line_starting(r.out, "PIER-TEST FAIL")) << r.describe();
  EXPECT_NE(r.exit_code, 0) << r.describe();
  EXPECT_EQ(r.term_signal, 0) << "pier died of a signal\n" << r.describe();
  std::string err = r.err;
  std::transform(err.begin(), err.end(), err.begin(), ::tolower);
  EXPECT_TRUE(err.find("triple") != std::string::npos || err.find("shutdown") != std::string::npos)
      << "expected a message about the triple fault on stderr\n" << r.describe();
  std::cout << "[ stderr   ] " << r.err;
}

TEST(BarePower, TripleFaultExitsNonZeroWithMessage) {
  PIER_REQUIRE_KVM();
  expect_triple_fault("ud2");
}

TEST(BarePower, TripleFaultFromGeneralProtection) {
  PIER_REQUIRE_KVM();
  expect_triple_fault("gp");
}

TEST(BarePower, TripleFaultOnAnApEndsTheVm) {
  PIER_REQUIRE_KVM();
  expect_triple_fault("ud2", {"--cpus", "2"}, " cpu=ap");
}

TEST(BarePower, SerialToFile) {
  PIER_REQUIRE_KVM();
  char path[] = "/tmp/pier-serial-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  auto r = run_bare("poweroff_s5", {"--serial", std::string("file=") + path});
  std::string file;
  if (FILE* f = std::fopen(path, "rb")) {
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) file.append(buf, n);
    std::fclose(f);
  }
  std::remove(path);
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_TRUE(has_line_starting(file, "PIER-TEST PASS poweroff_s5")) << "file: " << file << "\n" << r.describe();
  EXPECT_EQ(r.out.find("PIER-TEST"), std::string::npos) << "guest output leaked to stdout\n" << r.describe();
}
