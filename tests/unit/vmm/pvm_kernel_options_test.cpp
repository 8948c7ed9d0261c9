// The kernel options of the kvm_pvm profile.
#include "vmm/pvm/kernel_options.hpp"

#include <gtest/gtest.h>

#include <set>

namespace pier::pvm {
namespace {

bool has(const std::string& joined, const std::string& word) {
  return (" " + joined + " ").find(" " + word + " ") != std::string::npos;
}

TEST(PvmKernelOptions, ClearcpuidFitsLinuxBuffer) {
  // Linux 6.1 copies clearcpuid= into a 128-byte buffer: the rest would be dropped silently.
  EXPECT_LE(clearcpuid_list().size(), 127u);
  for (const char* feature : {"cx16", "popcnt", "smap", "fsgsbase", "rdrand", "rdseed", "rdpid",
                              "invpcid", "pcid"}) {
    EXPECT_NE(("," + clearcpuid_list() + ",").find(std::string(",") + feature + ","),
              std::string::npos)
        << feature;
  }
}

TEST(PvmKernelOptions, TimeDilationScalesTheTscAndKeepsKvmClock) {
  KernelOptionsConfig c;
  c.time_dilation = 10;
  c.tsc_khz = 2596128;
  const std::string o = join(kernel_options(c));
  EXPECT_TRUE(has(o, "tsc_early_khz=25961280")) << o;
  EXPECT_TRUE(has(o, "clocksource=kvm-clock")) << o;
}

TEST(PvmKernelOptions, NoDilationWithoutATscFrequencyOrWhenOff) {
  KernelOptionsConfig c;
  c.time_dilation = 10;
  c.tsc_khz = 0;
  EXPECT_EQ(join(kernel_options(c)).find("tsc_early_khz"), std::string::npos);
  c.time_dilation = 1;
  c.tsc_khz = 2596128;
  EXPECT_EQ(join(kernel_options(c)).find("tsc_early_khz"), std::string::npos);
}

TEST(PvmKernelOptions, EveryOptionOnceWithAReasonAndNoInitArguments) {
  KernelOptionsConfig c;
  c.time_dilation = 10;
  c.tsc_khz = 1000000;
  std::set<std::string> keys;
  for (const auto& o : kernel_options(c)) {
    EXPECT_FALSE(o.why.empty()) << o.text;
    EXPECT_EQ(o.text.find(' '), std::string::npos) << o.text;
    EXPECT_NE(o.text, "--");
    EXPECT_TRUE(keys.insert(o.text.substr(0, o.text.find('='))).second) << o.text;
  }
  const std::string o = join(kernel_options(c));
  EXPECT_TRUE(has(o, "noxsave"));
  EXPECT_TRUE(has(o, "cryptomgr.notests=1"));
  // Linux's command line is 2048 bytes; leave the user most of it.
  EXPECT_LT(o.size(), 700u);
}

}  // namespace
}  // namespace pier::pvm
