// The ways a guest ends the VM: ACPI S5 power-off, and every reset path Linux tries (ACPI reset
// register, i8042, 0xCF9, triple fault), from the BSP or from an AP while the BSP runs: all exit
// 0, and pier's stop line names the reason.
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <string>

#include "pier_process.hpp"

using namespace pier::test;

TEST(BarePower, AcpiS5PowerOffExitsZero) {
  PIER_REQUIRE_KVM();
  auto r = run_bare("poweroff_s5");
  EXPECT_TRUE(guest_passed(r, "poweroff_s5"));
}

// One boot of the reset guest per method and CPU.
class BareReset : public ::testing::TestWithParam<std::tuple<std::string, bool>> {};

TEST_P(BareReset, EndsTheRunWithExitZero) {
  PIER_REQUIRE_KVM();
  const auto& [method, on_ap] = GetParam();
  std::vector<std::string> args{"--log-level", "info", "--cmdline",
                                "method=" + method + (on_ap ? " cpu=ap" : "")};
  if (on_ap) args.insert(args.end(), {"--cpus", "2"});
  auto r = run_bare("reset", args);
  EXPECT_TRUE(guest_passed(r, "reset"));
  EXPECT_FALSE(r.timed_out) << r.describe();
  EXPECT_NE(r.err.find("machine stopped: guest reset"), std::string::npos) << r.describe();
}

INSTANTIATE_TEST_SUITE_P(EveryMethod, BareReset,
                         ::testing::Combine(::testing::Values("kbd", "acpi", "cf9"),
                                            ::testing::Bool()),
                         [](const auto& info) {
                           return std::get<0>(info.param) +
                                  (std::get<1>(info.param) ? "OnAp" : "OnBsp");
                         });

// A triple fault is a reset too (Linux reboot=t; also how a kernel that cannot handle a fault
// ends): exit 0 like the other resets, with a warning and the registers on stderr.
static void expect_triple_fault(const std::string& how, const std::vector<std::string>& extra = {},
                                const std::string& cmdline = "") {
  std::vector<std::string> args{"--log-level", "info", "--cmdline", "how=" + how + cmdline};
  args.insert(args.end(), extra.begin(), extra.end());
  auto r = run_bare("triple_fault", args);
  EXPECT_FALSE(r.timed_out) << r.describe();
  EXPECT_TRUE(has_line_starting(r.out, "PIER-TEST ARMED triple_fault")) << r.describe();
  EXPECT_FALSE(has_line_starting(r.out, "PIER-TEST FAIL")) << r.describe();
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_EQ(r.term_signal, 0) << "pier died of a signal\n" << r.describe();
  EXPECT_NE(r.err.find("triple fault: the guest reset itself"), std::string::npos) << r.describe();
  EXPECT_NE(r.err.find("rip="), std::string::npos) << "the register dump\n" << r.describe();
  EXPECT_NE(r.err.find("machine stopped: triple fault"), std::string::npos) << r.describe();
}

TEST(BarePower, TripleFaultResetsWithExitZeroAndARegisterDump) {
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

// The halt guest with the runtime API: what the API's event stream carried in `watch`, then the
// run ended by the API's quit.
struct HaltRun {
  PierResult result;
  std::string events;
};

HaltRun run_halt_guest(const std::string& cmdline, const std::string& cpus,
                       std::chrono::seconds watch) {
  const std::string api = "/tmp/pier-halt-" + std::to_string(::getpid()) + ".sock";
  PierRun run;
  run.args = {
      "run",         "--kernel", bare_guest("halt"), "--cmdline", cmdline,       "--cpus", cpus,
      "--log-level", "info",     "--api-socket",     api,         "--max-ports", "1"};
  run.timeout = std::chrono::seconds(120);
  auto pier = std::async(std::launch::async, [run] { return run_pier(run); });
  HaltRun out;
  const int fd = connect_unix(api);
  if (fd >= 0) {
    const auto deadline = std::chrono::steady_clock::now() + watch;
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n <= 0) break;
      out.events.append(buf, static_cast<size_t>(n));
    }
    const std::string quit = "{\"cmd\":\"quit\"}\n";
    EXPECT_EQ(::write(fd, quit.data(), quit.size()), static_cast<ssize_t>(quit.size()));
    ::close(fd);
  }
  out.result = pier.get();
  ::unlink(api.c_str());
  return out;
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = 0; (at = text.find(what, at)) != std::string::npos; at += what.size()) ++n;
  return n;
}

constexpr const char* kHangWarning = "the guest has halted every vCPU with interrupts off";

TEST(BareHalt, EveryVcpuHaltedWithInterruptsOffIsReportedOnce) {
  PIER_REQUIRE_KVM();
  for (const auto& [cmdline, cpus] :
       std::vector<std::pair<std::string, std::string>>{{"", "1"}, {"cpus=2", "2"}, {"", "2"}}) {
    SCOPED_TRACE("--cmdline '" + cmdline + "' --cpus " + cpus);
    const HaltRun r = run_halt_guest(cmdline, cpus, std::chrono::seconds(8));
    EXPECT_TRUE(has_line_starting(r.result.out, "PIER-TEST ARMED halt")) << r.result.describe();
    EXPECT_EQ(count(r.result.err, kHangWarning), 1u) << r.result.describe();
    EXPECT_EQ(count(r.events, "\"event\":\"guest-halted\""), 1u) << r.events;
    EXPECT_EQ(r.result.exit_code, 0) << r.result.describe();
    EXPECT_NE(r.result.err.find("machine stopped: quit from the API"), std::string::npos)
        << r.result.describe();
  }
}

TEST(BareHalt, HaltedWithInterruptsOnIsNotAHang) {
  PIER_REQUIRE_KVM();
  const HaltRun r = run_halt_guest("irqs=on", "1", std::chrono::seconds(6));
  EXPECT_TRUE(has_line_starting(r.result.out, "PIER-TEST ARMED halt")) << r.result.describe();
  EXPECT_EQ(r.result.err.find(kHangWarning), std::string::npos) << r.result.describe();
  EXPECT_EQ(r.events.find("guest-halted"), std::string::npos) << r.events;
  EXPECT_EQ(r.result.exit_code, 0) << r.result.describe();
}

// The guest writes 100 KiB to COM1 and powers off while pier's stdout (a pipe) is not read: the
// pipe takes 64 KiB, pier holds the rest. It must still all come out, after the stop.
TEST(BarePower, SerialOutputHeldAtPowerOffIsDeliveredBeforeExit) {
  PIER_REQUIRE_KVM();
  int out[2], err[2];
  ASSERT_EQ(::pipe2(out, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(err, O_CLOEXEC), 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  std::vector<std::string> args{
      pier_binary(), "run",          "--kernel",    bare_guest("serial_flood"),
      "--cmdline",   "bytes=102400", "--log-level", "info"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  ASSERT_EQ(posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  ::close(out[1]);
  ::close(err[1]);
  // stderr only, until pier says it is delivering held output (stdout stays unread meanwhile).
  std::string errors, output;
  // 200 000 port I/O exits: 10-20 s in the nested host, minutes when its machine is loaded.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(600);
  char buf[65536];
  while (errors.find("delivering") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    pollfd p{err[0], POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    const ssize_t n = ::read(err[0], buf, sizeof buf);
    if (n <= 0) break;
    errors.append(buf, static_cast<size_t>(n));
  }
  EXPECT_NE(errors.find("stopping (guest powered off): delivering"), std::string::npos) << errors;
  for (ssize_t n; (n = ::read(out[0], buf, sizeof buf)) > 0;)
    output.append(buf, static_cast<size_t>(n));
  for (ssize_t n; (n = ::read(err[0], buf, sizeof buf)) > 0;)
    errors.append(buf, static_cast<size_t>(n));
  int status = 0;
  ::waitpid(pid, &status, 0);
  ::close(out[0]);
  ::close(err[0]);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << errors;
  const std::string end = line_after(output, "flood-end ");
  ASSERT_FALSE(end.empty()) << "the last line is missing: " << output.size() << " bytes\n"
                            << errors;
  // Every flood line arrived, in order and whole.
  size_t flood_bytes = 0, lines = 0;
  for (size_t at = 0; (at = output.find("flood ", at)) != std::string::npos;) {
    const size_t eol = output.find('\n', at);
    ASSERT_NE(eol, std::string::npos);
    char expected[32];
    std::snprintf(expected, sizeof expected, "flood %08zu ", lines);
    ASSERT_EQ(output.compare(at, std::strlen(expected), expected), 0) << "line " << lines;
    // The guest counted "...\n"; the serial console writes "\r\n".
    flood_bytes += eol + 1 - at - (output[eol - 1] == '\r' ? 1 : 0);
    ++lines;
    at = eol + 1;
  }
  EXPECT_EQ(std::to_string(flood_bytes), end);
  EXPECT_EQ(errors.find("not delivered"), std::string::npos) << errors;
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
  EXPECT_TRUE(has_line_starting(file, "PIER-TEST PASS poweroff_s5")) << "file: " << file << "\n"
                                                                     << r.describe();
  EXPECT_EQ(r.out.find("PIER-TEST"), std::string::npos) << "guest output leaked to stdout\n"
                                                        << r.describe();
}
