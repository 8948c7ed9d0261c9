// Every kind of bad input a user can give `pier run` ends with exactly one line on stderr that
// starts with "pier:" and exit code 1 — before any guest runs.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "integration/pier_process.hpp"

namespace pier::test {
namespace {

namespace fs = std::filesystem;

class CliErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("pier-cli-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write_file(const std::string& name, const std::string& bytes) {
    const fs::path p = dir_ / name;
    std::ofstream(p, std::ios::binary) << bytes;
    return p.string();
  }

  // Asserts the one-line error and returns it.
  std::string expect_one_line_error(const std::vector<std::string>& args) {
    PierRun run;
    run.args = args;
    run.timeout = std::chrono::milliseconds(20000);
    const PierResult r = run_pier(run);
    EXPECT_EQ(r.exit_code, 1) << r.describe();
    EXPECT_TRUE(r.err.starts_with("pier: ")) << r.describe();
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.describe();
    EXPECT_TRUE(r.out.empty()) << r.describe();
    return r.err;
  }

  // A real kernel that is valid, so the test isolates the one bad input.
  std::string good_kernel() { return bare_guest("poweroff_s5"); }

  fs::path dir_;
};

TEST_F(CliErrors, MissingKernel) {
  const auto err = expect_one_line_error({"run", "--kernel", (dir_ / "nope").string()});
  EXPECT_NE(err.find("cannot read kernel"), std::string::npos) << err;
}

TEST_F(CliErrors, UnreadableKernel) {
  if (::geteuid() == 0) {
    // root reads any file; a directory is unreadable as a kernel for everyone.
    const auto err = expect_one_line_error({"run", "--kernel", dir_.string()});
    EXPECT_NE(err.find("kernel"), std::string::npos) << err;
    return;
  }
  const auto path = write_file("noread", "x");
  fs::permissions(path, fs::perms::none);
  expect_one_line_error({"run", "--kernel", path});
}

TEST_F(CliErrors, NeitherBzImageNorElf) {
  const auto path = write_file("junk", std::string(8192, 'j'));
  PIER_REQUIRE_KVM();
  const auto err = expect_one_line_error({"run", "--kernel", path});
  EXPECT_NE(err.find("bzImage"), std::string::npos) << err;
}

TEST_F(CliErrors, CorruptCompressedPayload) {
  // A bzImage whose setup header is valid but whose lz4 payload is garbage.
  std::string image(0x4000, '\0');
  image[0x1f1] = 1;                        // setup_sects: the payload starts at 0x400
  image[0x200] = static_cast<char>(0xeb);  // jmp over the header, which ends at 0x202 + 0x6a
  image[0x201] = 0x6a;
  image.replace(0x202, 4, "HdrS");
  image[0x206] = 0x0f;  // protocol 2.15
  image[0x207] = 0x02;
  image[0x236] = 0x01;  // xloadflags: XLF_KERNEL_64
  auto put32 = [&](size_t at, uint32_t v) {
    for (int i = 0; i < 4; ++i) image[at + i] = static_cast<char>(v >> (8 * i));
  };
  put32(0x248, 0x100);      // payload_offset within the protected-mode part
  put32(0x24c, 0x200);      // payload_length
  put32(0x260, 0x1000000);  // init_size
  image.replace(0x400 + 0x100, 4, "\x02\x21\x4c\x18");  // lz4 legacy magic
  for (size_t i = 0x400 + 0x104; i < 0x400 + 0x300; ++i) image[i] = static_cast<char>(0xa5 ^ i);
  const auto path = write_file("corrupt-bzimage", image);
  PIER_REQUIRE_KVM();
  const auto err = expect_one_line_error({"run", "--kernel", path, "--boot-method", "direct"});
  EXPECT_NE(err.find("payload"), std::string::npos) << err;
}

TEST_F(CliErrors, InitrdThatDoesNotFit) {
  PIER_REQUIRE_KVM();
  const auto initrd = (dir_ / "big-initrd").string();
  {
    std::ofstream f(initrd, std::ios::binary);
    f.seekp((70ll << 20) - 1);
    f.put('\0');
  }
  const auto err = expect_one_line_error(
      {"run", "--kernel", good_kernel(), "--initrd", initrd, "--memory", "64M"});
  EXPECT_NE(err.find("initrd"), std::string::npos) << err;
  EXPECT_NE(err.find("--memory"), std::string::npos) << err;
}

TEST_F(CliErrors, MemoryTooSmallTooLargeOrMalformed) {
  const auto k = good_kernel();
  EXPECT_NE(expect_one_line_error({"run", "--kernel", k, "--memory", "32M"}).find("64M"),
            std::string::npos);
  EXPECT_NE(expect_one_line_error({"run", "--kernel", k, "--memory", "900T"}).find("host"),
            std::string::npos);
  EXPECT_NE(expect_one_line_error({"run", "--kernel", k, "--memory", "12Q"}).find("size"),
            std::string::npos);
  expect_one_line_error({"run", "--kernel", k, "--memory", "lots"});
}

TEST_F(CliErrors, CpuCountOutOfRange) {
  const auto k = good_kernel();
  expect_one_line_error({"run", "--kernel", k, "--cpus", "0"});
  expect_one_line_error({"run", "--kernel", k, "--cpus", "x"});
  PIER_REQUIRE_KVM();
  const auto err = expect_one_line_error({"run", "--kernel", k, "--cpus", "100000"});
  EXPECT_NE(err.find("--cpus"), std::string::npos) << err;
}

TEST_F(CliErrors, UnknownFlagsAndCommands) {
  expect_one_line_error({"run", "--kernal", "x"});
  expect_one_line_error({"frobnicate"});
  expect_one_line_error({"run", "--serial", "carrier-pigeon", "--kernel", good_kernel()});
}

TEST_F(CliErrors, KvmDeviceMissingOrNotKvm) {
  auto err = expect_one_line_error(
      {"run", "--kernel", good_kernel(), "--kvm-device", (dir_ / "kvm").string()});
  EXPECT_NE(err.find("KVM"), std::string::npos) << err;
  // ... and names the way to try pier anyway on such a machine.
  EXPECT_NE(err.find("tools/kvm-host -- build/pier run"), std::string::npos) << err;
  // A device that is not KVM (the ioctl fails): still one clear line.
  err = expect_one_line_error({"run", "--kernel", good_kernel(), "--kvm-device", "/dev/null"});
  EXPECT_NE(err.find("/dev/null"), std::string::npos) << err;
}

TEST_F(CliErrors, HelpAndVersionSucceed) {
  PierRun run;
  run.args = {"--version"};
  auto r = run_pier(run);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(r.out.starts_with("pier ")) << r.out;
  run.args = {"run", "--help"};
  r = run_pier(run);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("--boot-method"), std::string::npos);
}

}  // namespace
}  // namespace pier::test
