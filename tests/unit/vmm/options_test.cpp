#include "vmm/options.hpp"

#include <gtest/gtest.h>

#include "vmm/error.hpp"

namespace pier {
namespace {

TEST(ParseSize, UnitsAndDefaults) {
  EXPECT_EQ(parse_size("512M"), 512ull << 20);
  EXPECT_EQ(parse_size("512"), 512ull << 20);
  EXPECT_EQ(parse_size("2G"), 2ull << 30);
  EXPECT_EQ(parse_size("2GiB"), 2ull << 30);
  EXPECT_EQ(parse_size("2GB"), 2ull << 30);
  EXPECT_EQ(parse_size("65536K"), 64ull << 20);
  EXPECT_EQ(parse_size("1t"), 1ull << 40);
}

TEST(ParseSize, MalformedSizesThrow) {
  for (const char* bad :
       {"", "M", "12X", "1.5G", "-1G", "12 M", "99999999999999999999G", "20000000000T", "5GiBs"}) {
    EXPECT_THROW(parse_size(bad), Error) << bad;
  }
}

TEST(RunOptions, GuestCommandGoesAfterDashesOnTheCmdline) {
  auto o = parse_run_options({"--kernel", "/k", "--cmdline", "console=ttyS0", "--", "echo", "hi"});
  EXPECT_EQ(o.machine.cmdline, "console=ttyS0 -- echo hi");
  EXPECT_EQ(o.machine.kernel_path, "/k");
}

TEST(RunOptions, DefaultsAndLimits) {
  auto o = parse_run_options({"--kernel", "/k"});
  EXPECT_EQ(o.machine.memory_bytes, 512ull << 20);
  EXPECT_EQ(o.machine.cpus, 1u);
  EXPECT_EQ(o.machine.serial, "stdio");
  EXPECT_EQ(o.machine.cmdline, default_linux_cmdline());
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--memory", "32M"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--memory", "1T"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--memory", "lots"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--cpus", "0"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--cpus", "two"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--frobnicate"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--boot-method", "uefi"}), Error);
  EXPECT_THROW(parse_run_options({"--kernel", "/k", "--host-profile", "tcg"}), Error);
}

TEST(RunOptions, HelpIsNotAnError) {
  auto o = parse_run_options({"--help"});
  EXPECT_TRUE(o.show_help);
  EXPECT_NE(o.help_text.find("--kernel"), std::string::npos);
  EXPECT_NE(o.help_text.find("Ctrl-A x"), std::string::npos);
}

}  // namespace
}  // namespace pier
