#include "vmm/bench_command.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;

namespace {

class BenchScript : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ =
        fs::temp_directory_path() /
        ("pier-bench-script-" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
         "-" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_ / "build");
  }
  void TearDown() override { fs::remove_all(root_); }
  fs::path touch(const fs::path& p) {
    fs::create_directories(p.parent_path());
    std::ofstream(p) << "#!/usr/bin/env python3\n";
    return p;
  }
  fs::path root_;
};

TEST_F(BenchScript, FoundBesideTheBuildDirectory) {
  touch(root_ / "benches" / "pier_bench.py");
  auto s = pier::find_bench_script((root_ / "build" / "pier").string(), "", "");
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(fs::path(*s), fs::weakly_canonical(root_ / "benches" / "pier_bench.py"));
}

TEST_F(BenchScript, EnvironmentOverrideWins) {
  touch(root_ / "benches" / "pier_bench.py");
  auto other = touch(root_ / "elsewhere" / "mine.py");
  auto s = pier::find_bench_script((root_ / "build" / "pier").string(), other.string(), "");
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(fs::path(*s), fs::weakly_canonical(other));
}

TEST_F(BenchScript, FallsBackToTheSourceDirectory) {
  auto src = root_ / "src";
  touch(src / "benches" / "pier_bench.py");
  auto s = pier::find_bench_script((root_ / "build" / "pier").string(), "", src.string());
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(fs::path(*s), fs::weakly_canonical(src / "benches" / "pier_bench.py"));
}

TEST_F(BenchScript, MissingEverywhereIsNullopt) {
  EXPECT_FALSE(pier::find_bench_script((root_ / "build" / "pier").string(),
                                       (root_ / "nope.py").string(), (root_ / "src").string())
                   .has_value());
}

}  // namespace
