// The pvm host profile's command-line knobs (--host-profile, --time-dilation).
#include <gtest/gtest.h>

#include "vmm/error.hpp"
#include "vmm/host_profile.hpp"
#include "vmm/options.hpp"

namespace pier {
namespace {

TEST(PvmOptions, ProfilesAndTheirDefaults) {
  auto pvm = parse_run_options({"--kernel", "/k", "--host-profile", "pvm"});
  EXPECT_EQ(pvm.machine.host.kind, HostKind::kPvm);
  EXPECT_TRUE(pvm.machine.host.slow_guest_kernel);
  EXPECT_EQ(pvm.machine.host.time_dilation, kPvmDefaultTimeDilation);
  EXPECT_EQ(pvm.machine.host.name(), "pvm");

  auto none = parse_run_options({"--kernel", "/k", "--host-profile", "none"});
  EXPECT_EQ(none.machine.host.kind, HostKind::kHardware);
  EXPECT_FALSE(none.machine.host.slow_guest_kernel);
  EXPECT_EQ(none.machine.host.time_dilation, 1u);
  EXPECT_EQ(none.machine.host.name(), "none");
}

TEST(PvmOptions, TimeDilation) {
  auto o = parse_run_options({"--kernel", "/k", "--host-profile", "pvm", "--time-dilation", "25"});
  EXPECT_EQ(o.machine.host.time_dilation, 25u);
  o = parse_run_options({"--kernel", "/k", "--host-profile", "pvm", "--time-dilation", "1"});
  EXPECT_EQ(o.machine.host.time_dilation, 1u);
  for (const char* bad : {"0", "1001", "-3", "fast"}) {
    EXPECT_THROW(
        parse_run_options({"--kernel", "/k", "--host-profile", "pvm", "--time-dilation", bad}),
        Error)
        << bad;
  }
  // Only the pvm profile has a dilated clock.
  EXPECT_THROW(
      parse_run_options({"--kernel", "/k", "--host-profile", "none", "--time-dilation", "10"}),
      Error);
}

TEST(PvmOptions, TheProfileQueriesTheSameKvmDevice) {
  auto o = parse_run_options(
      {"--kernel", "/k", "--host-profile", "pvm", "--kvm-device", "/dev/other-kvm"});
  EXPECT_EQ(o.machine.host.kvm_device, "/dev/other-kvm");
}

}  // namespace
}  // namespace pier
