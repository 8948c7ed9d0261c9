#pragma once
// The Linux kernel options the kvm_pvm profile adds to the user's command line, each with the
// reason it is there (logged at debug level). See docs/pvm.md.
#include <cstdint>
#include <string>
#include <vector>

namespace pier::pvm {

struct KernelOption {
  std::string text;
  std::string why;
};

struct KernelOptionsConfig {
  // Guest ticks arrive this many times less often (1: off). See time dilation in docs/pvm.md.
  unsigned time_dilation = 1;
  // The real TSC frequency the guest sees (KVM_GET_TSC_KHZ); 0: unknown (no dilation).
  uint64_t tsc_khz = 0;
};

std::vector<KernelOption> kernel_options(const KernelOptionsConfig& config);
std::string join(const std::vector<KernelOption>& options);

// The clearcpuid= list; Linux 6.1 reads at most 127 characters of it (a 128-byte buffer), so
// its length is checked by a unit test.
std::string clearcpuid_list();
// Built-in initcalls the profile skips (initcall_blacklist=).
std::string initcall_blacklist();

}  // namespace pier::pvm
