// Full boots of Debian's stock kernel with pier's default guest (tools/guest-image): few and
// expensive on a kvm_pvm host (minutes each, guest kernel code is emulated there), so each boot
// runs many checks through one guest command.
//
//   DebianBoot.DefaultGuestAndTwoCpusWithHighMemory  (default ctest run) two boots side by side:
//       `pier run -- <checks>` exactly as a user runs the default guest, and
//       `pier run --cpus 2 --memory 5G -- <checks>`.
//   DebianBoot.EveryLinuxRebootMethodEndsTheRun  one boot per reboot= method (and none, Linux's
//       own default), each ending in the guest init's `reboot -f`: pier must exit 0.
//   The other kernels (6.1 generic, 6.12 cloud) and 8 vCPUs: debian_console_test.cpp.
//
// Both need the guest next to the pier binary (<pier dir>/guest, built by tools/setup) and
// /dev/kvm, and are skipped with the reason otherwise.
#include <filesystem>
#include <regex>
#include <sstream>
#include <thread>

#include "pier_process.hpp"

using namespace pier::test;
namespace fs = std::filesystem;

namespace {

constexpr std::chrono::milliseconds kBootTimeout{25 * 60 * 1000};

bool pvm_host() {
  return fs::exists("/sys/module/kvm_pvm");
}

fs::path guest_dir(const std::string& name) {
  return fs::path(pier_binary()).parent_path() / name;
}

// The guest's part: one line per fact, "T <name>=<value>", read back by value_of(). Busybox ash
// builtins only: every fork/exec costs emulated kernel time on kvm_pvm. Linux passes the words
// after " -- " to init as arguments and panics beyond 32 ("Too many boot init vars"), so the
// script goes as one double-quoted word to eval, its $ escaped for that second expansion.
// clearcpu''id is spelled so because Linux's early x86 option parser reads the whole command
// line, words after " -- " included, and would take the text for the last clearcpuid= option.
const std::string kChecks =
    R"sh(echo pier-command-output; read -r online < /sys/devices/system/cpu/online; )sh"
    R"sh(echo T online=\$online; n=0; while read -r k rest; )sh"
    R"sh(do case \$k in processor) n=\$((n+1));; esac; done < /proc/cpuinfo; )sh"
    R"sh(echo T processors=\$n; while read -r k v u; )sh"
    R"sh(do case \$k in MemTotal:) echo T memtotal_kib=\$v;; esac; done < /proc/meminfo; )sh"
    R"sh(high=0; while read -r range colon name; )sh"
    R"sh(do case \$name in 'System RAM') end=\${range#*-}; )sh"
    R"sh([ \$((0x\$end)) -ge \$((0x100000000)) ] && high=1;; esac; done < /proc/iomem; )sh"
    R"sh(echo T ram_above_4g=\$high; read -r cmdline < /proc/cmdline; )sh"
    R"sh(case \$cmdline in *clearcpu''id=*) c=1;; *) c=0;; esac; echo T pvm_options=\$c; )sh"
    R"sh(read -r up idle < /proc/uptime; echo T uptime=\$up; )sh"
    R"sh(read -r release < /proc/sys/kernel/osrelease; echo T release=\$release; )sh"
    R"sh(while read -r irq rest; do case \$rest in *ttyS0*) echo T serial_irq=\$irq \$rest;; )sh"
    R"sh(esac; done < /proc/interrupts)sh";
const std::vector<std::string> kCommand = {"eval", "\"" + kChecks + "\""};

std::string value_of(const std::string& out, const std::string& name) {
  std::smatch m;
  const std::regex re("(^|\\n)T " + name + "=([^\\r\\n]*)");
  return std::regex_search(out, m, re) ? m[2].str() : std::string("<missing>");
}

long completed(const std::string& err, const std::string& kind) {
  std::smatch m;
  const std::regex re("host profile pvm: completed[^\\n]*[ ,]" + kind + " ([0-9]+)");
  return std::regex_search(err, m, re) ? std::stol(m[1]) : 0;
}

PierRun boot(const std::vector<std::string>& extra) {
  PierRun run;
  run.args = {"run", "--log-level", "info"};
  run.args.insert(run.args.end(), extra.begin(), extra.end());
  run.args.push_back("--");
  run.args.insert(run.args.end(), kCommand.begin(), kCommand.end());
  run.timeout = kBootTimeout;
  return run;
}

std::string figures(const PierResult& r) {
  std::string s = "marker at guest uptime " + line_after(r.out, "PIER-READY uptime=") +
                  " s, pier exit after " + std::to_string(r.total_s) + " s";
  const std::string counts = line_after(r.err, "host profile pvm: ");
  if (!counts.empty()) s += "; " + counts;
  return s;
}

// What every boot must show.
void expect_booted(const PierResult& r) {
  ASSERT_FALSE(r.timed_out) << r.describe();
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_TRUE(has_line_starting(r.out, "PIER-READY uptime=")) << r.describe();
  EXPECT_TRUE(has_line_starting(r.out, "pier-command-output")) << r.describe();
  EXPECT_TRUE(has_line_starting(r.out, "PIER-EXIT status=0")) << r.describe();
  EXPECT_NE(r.err.find("machine stopped: guest reset"), std::string::npos) << r.err;
  // No guest crash on the way.
  for (const char* bad : {"Kernel panic", "BUG:", "Oops", "segfault", "general protection"}) {
    EXPECT_EQ(r.out.find(bad), std::string::npos) << bad << "\n" << r.describe();
  }
  // The UART's interrupt arrives through the IOAPIC, pin 4 of pier's MADT, with no `noapic`:
  // "<linux irq>: <count per cpu>... IO-APIC 4-edge ttyS0". (Linux numbers it 25 or so, not 4:
  // a hardware-reduced ACPI machine has no legacy PIC, so legacy IRQs are not identity-mapped.)
  const std::string irq = value_of(r.out, "serial_irq");
  EXPECT_NE(irq.find("IO-APIC 4-edge"), std::string::npos) << irq;
  long serial_interrupts = 0;
  std::istringstream words(irq);
  std::string linux_irq;
  words >> linux_irq;
  for (std::string w; words >> w && w != "IO-APIC";) serial_interrupts += std::atol(w.c_str());
  EXPECT_GT(serial_interrupts, 0) << irq;
  if (pvm_host()) {
    EXPECT_EQ(value_of(r.out, "pvm_options"), "1") << "pvm kernel options in /proc/cmdline";
    // User processes ran: their system calls went through the SYSCALL fix-up, and the
    // kernel's int3 self-test through the int3 completion.
    EXPECT_GT(completed(r.err, "syscall"), 100) << r.err;
    EXPECT_GE(completed(r.err, "int3"), 1) << r.err;
  }
}

// run_pier(boot(extra)); in the nested host a boot whose guest crashed is booted again, up to 3
// boots (in_nested_tcg_host), each crash printed; elsewhere the one boot as it ended.
PierResult boot_again_on_nested_crash(const std::vector<std::string>& extra) {
  for (int attempt = 1;; ++attempt) {
    PierResult r = run_pier(boot(extra));
    const std::string fault = nested_host_fault(r.out + r.err);
    if (fault.empty() || !in_nested_tcg_host() || attempt == 3) return r;
    std::printf("[  RETRY   ] boot %d in the nested KVM host: %s\n", attempt, fault.c_str());
  }
}

void require_guest(const fs::path& dir, const std::string& how) {
  if (!fs::exists(dir / "vmlinuz") || !fs::exists(dir / "initramfs.cpio")) {
    GTEST_SKIP() << dir << " has no vmlinuz/initramfs.cpio: run " << how;
  }
}

}  // namespace

TEST(DebianBoot, DefaultGuestAndTwoCpusWithHighMemory) {
  PIER_REQUIRE_KVM();
  require_guest(guest_dir("guest"), "tools/guest-image");
  if (testing::Test::IsSkipped()) return;

  PierResult plain, big;
  std::thread side([&] { big = boot_again_on_nested_crash({"--cpus", "2", "--memory", "5G"}); });
  plain = boot_again_on_nested_crash({});
  side.join();

  {
    SCOPED_TRACE("pier run -- <checks>");
    expect_booted(plain);
    EXPECT_EQ(value_of(plain.out, "online"), "0");
    EXPECT_EQ(value_of(plain.out, "processors"), "1");
    EXPECT_EQ(value_of(plain.out, "ram_above_4g"), "0");
    std::cout << "[ figures  ] default: " << figures(plain) << "\n";
  }
  {
    SCOPED_TRACE("pier run --cpus 2 --memory 5G -- <checks>");
    expect_booted(big);
    EXPECT_EQ(value_of(big.out, "online"), "0-1");
    EXPECT_EQ(value_of(big.out, "processors"), "2");
    EXPECT_EQ(value_of(big.out, "ram_above_4g"), "1");
    const std::string mem = value_of(big.out, "memtotal_kib");
    EXPECT_GT(std::atol(mem.c_str()), 4L << 20) << "MemTotal " << mem << " kB";
    std::cout << "[ figures  ] --cpus 2 --memory 5G: " << figures(big) << "\n";
  }
}

// The default guest's init ends with `reboot -f`: with each of Linux's x86 reboot= methods, and
// with none (Linux then picks EFI on a hardware-reduced ACPI machine, finds no EFI and jumps to
// the BIOS reset vector), pier must end the run with exit 0. On a kvm_pvm host, where a boot takes
// minutes, only the default.
TEST(DebianBoot, EveryLinuxRebootMethodEndsTheRun) {
  PIER_REQUIRE_KVM();
  require_guest(guest_dir("guest"), "tools/guest-image");
  if (testing::Test::IsSkipped()) return;
  std::vector<std::string> methods = {"", "a", "k", "t", "p", "pci", "efi", "b"};
  if (pvm_host()) methods.resize(1);
  // One boot (and in the nested host up to 2 more when it hit that host's faults).
  auto boot_with = [](const std::string& method) {
    std::string cmdline = "console=ttyS0 panic=-1";
    if (!method.empty()) cmdline += " reboot=" + method;
    PierRun run;
    run.args = {"run",       "--log-level", "info", "--memory", "256M",
                "--cmdline", cmdline,       "--",   "true"};
    run.timeout = pvm_host() ? kBootTimeout : std::chrono::milliseconds(180'000);
    PierResult r = run_pier(run);
    for (int attempt = 2; attempt <= 3 && in_nested_tcg_host(); ++attempt) {
      std::string fault = nested_host_fault(r.out + r.err);
      // A guest that went silent mid-boot also counts (seen in CI: output stopped mid-line 7 s
      // in, vCPU 0's last exit 164 s before the timeout); a real hang fails all 3 boots.
      if (fault.empty() && r.timed_out) fault = "the guest went silent and the boot timed out";
      // reboot=t ends in a triple fault on purpose: only one before the guest's exit line is a
      // fault of the nested host.
      if (fault.empty() || (method == "t" && has_line_starting(r.out, "PIER-EXIT"))) break;
      std::printf("[  RETRY   ] reboot=%s boot %d in the nested KVM host: %s\n", method.c_str(),
                  attempt - 1, fault.c_str());
      r = run_pier(run);
    }
    return r;
  };
  // Two boots at a time (a small guest each): half the wall time of one after the other.
  std::vector<PierResult> results(methods.size());
  for (size_t i = 0; i < methods.size(); i += 2) {
    std::thread second;
    if (i + 1 < methods.size()) {
      second = std::thread([&, i] { results[i + 1] = boot_with(methods[i + 1]); });
    }
    results[i] = boot_with(methods[i]);
    if (second.joinable()) second.join();
  }
  for (size_t i = 0; i < methods.size(); ++i) {
    const std::string& method = methods[i];
    const PierResult& r = results[i];
    SCOPED_TRACE("reboot=" + (method.empty() ? std::string("(none)") : method));
    EXPECT_FALSE(r.timed_out) << r.describe();
    EXPECT_EQ(r.exit_code, 0) << r.describe();
    EXPECT_TRUE(has_line_starting(r.out, "PIER-EXIT status=0")) << r.describe();
    const std::string stopped =
        method == "t" ? "machine stopped: triple fault" : "machine stopped: guest reset";
    EXPECT_NE(r.err.find(stopped), std::string::npos) << r.describe();
    std::cout << "[ figures  ] reboot=" << (method.empty() ? "(none)" : method) << ": pier exit "
              << r.total_s << " s after exec\n";
  }
}
