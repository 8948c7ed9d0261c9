#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "integration/pier_process.hpp"

namespace pier::test {
namespace {

TEST(BareDtb, GuestFindsItsDevicesInTheDeviceTree) {
  PIER_REQUIRE_KVM();
  const PierResult r =
      run_bare("dtb", {"--cpus", "2", "--memory", "5G", "--port", "name=org.pier.a,null"});
  EXPECT_TRUE(guest_passed(r, "dtb")) << r.describe();
  EXPECT_NE(r.out.find("virtio-console 1af4:1043"), std::string::npos) << r.describe();
  EXPECT_NE(r.out.find("virtio-rng 1af4:1044"), std::string::npos) << r.describe();
}

TEST(BareDtb, DumpDtbWritesTheSameTreeAndDoesNotRun) {
  PIER_REQUIRE_KVM();
  const auto path =
      std::filesystem::temp_directory_path() / ("pier-" + std::to_string(::getpid()) + ".dtb");
  PierRun run;
  run.args = {"run", "--kernel", bare_guest("dtb"), "--dump-dtb", path.string()};
  const PierResult r = run_pier(run);
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_EQ(r.out.find("PIER-TEST"), std::string::npos) << "the guest must not run";
  std::ifstream f(path, std::ios::binary);
  char magic[4] = {};
  f.read(magic, 4);
  EXPECT_EQ(std::string(magic, 4), std::string("\xd0\x0d\xfe\xed", 4));
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace pier::test
