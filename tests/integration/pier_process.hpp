#pragma once
// Runs build/pier as a subprocess, the way a user would, for the integration tests: argv, an
// optional line fed to its stdin (optionally only once a marker appeared on its stdout), a
// timeout (then SIGKILL), captured stdout/stderr, the exit status, and wall times from exec to
// the first stdout byte and to exit.
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

namespace pier::test {

struct PierRun {
  std::vector<std::string> args;  // after the binary, e.g. {"run", "--kernel", ...}
  std::string stdin_data;         // written to pier's stdin (a pipe that stays open until exit)
  std::string stdin_after;        // if set: write stdin_data only once this appears on stdout
  std::chrono::milliseconds timeout{60000};
  // Called on run_pier's thread with each piece of pier's stdout as it arrives (the guest's
  // serial output, live), besides collecting it in PierResult::out.
  std::function<void(std::string_view)> on_stdout;
  // Once this is set and true, run_pier kills pier (SIGKILL) within 100 ms (PierResult::cancelled).
  std::shared_ptr<std::atomic<bool>> cancel;
};

struct PierResult {
  int exit_code = -1;  // exit status; -1 if killed by a signal (see term_signal)
  int term_signal = 0;
  bool timed_out = false;  // killed by us after PierRun::timeout
  bool cancelled = false;  // killed by us through PierRun::cancel
  std::string out, err;
  double first_output_s = -1;    // exec -> first byte on stdout (-1: none)
  double total_s = 0;            // exec -> exit
  std::string describe() const;  // status, times, stdout and stderr, for failure messages
};

// "" when /dev/kvm can be opened read-write, else why not.
std::string kvm_unavailable_reason();
std::string pier_binary();
// PIER_BARE_DIR/<name>.elf
std::string bare_guest(const std::string& name);
PierResult run_pier(const PierRun& run);
// Runs `pier run --kernel <bare guest> <extra args>`.
PierResult run_bare(const std::string& guest, const std::vector<std::string>& extra = {},
                    std::chrono::milliseconds timeout = std::chrono::milliseconds(60000));

// Guest output checks: exit 0, a "PIER-TEST PASS <name>" line, no "PIER-TEST FAIL" line.
::testing::AssertionResult guest_passed(const PierResult& r, const std::string& name);
bool has_line_starting(const std::string& out, const std::string& prefix);
// The rest of the first line starting with prefix ("" if none).
std::string line_after(const std::string& out, const std::string& prefix);

// Connects to a unix stream socket, retrying until pier has created it and listens or `timeout`
// passes. Returns the fd (the caller closes it) or -1.
int connect_unix(const std::string& path,
                 std::chrono::milliseconds timeout = std::chrono::milliseconds(20000));

// The first line of a guest kernel crash in pier's output (the guest's serial console, or pier's
// own report of a triple fault), or "".
std::string guest_kernel_crash(const std::string& log);
// What the nested host is known to do to Debian guests now and then, as found in pier's output:
// a guest kernel crash (guest_kernel_crash), or a guest that never printed "Linux version" (seen
// once in CI: 2 vCPUs, 6.12, no output for 25 minutes). "" if neither.
std::string nested_host_fault(const std::string& log);
// True inside tools/kvm-host's nested host (PIER_KVM_HOST=nested-tcg): QEMU's emulated SVM, which
// corrupts nested guests now and then (docs/kvm-host.md), so Debian boots that crash there are
// booted again, up to 3 boots; never on a real KVM host.
bool in_nested_tcg_host();

// True when PIER_KVM_REQUIRED=1: tools/run-tests promises /dev/kvm (directly or in the nested
// host of tools/kvm-host), so a test that cannot have it fails instead of skipping.
bool kvm_required();

}  // namespace pier::test

// Skips the current test when KVM is not usable here (fails under PIER_KVM_REQUIRED=1).
#define PIER_REQUIRE_KVM()                                               \
  do {                                                                   \
    const std::string why_ = ::pier::test::kvm_unavailable_reason();     \
    if (why_.empty()) break;                                             \
    if (::pier::test::kvm_required()) FAIL() << "no /dev/kvm: " << why_; \
    GTEST_SKIP() << "no /dev/kvm: " << why_;                             \
  } while (0)
