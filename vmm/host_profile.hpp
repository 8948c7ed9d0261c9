#pragma once
// What kind of KVM host pier runs on. Hardware virtualization (VT-x/AMD-V) is the target; a host
// whose /dev/kvm is the kvm_pvm software hypervisor runs guest kernel code in an emulator, so
// pier changes defaults there: direct boot, kernel options, completion of the emulator's gaps
// and the SYSCALL fix-up (vmm/pvm/, docs/pvm.md).
#include <string>
#include <string_view>

namespace pier {

enum class HostKind { kHardware, kPvm };

struct HostProfile {
  HostKind kind = HostKind::kHardware;
  // Guest kernel (CPL0) code is emulated: decompress the kernel in the host instead.
  bool slow_guest_kernel = false;
  // kvm_pvm: the guest's timer ticks come this many times less often (1: off); see docs/pvm.md.
  unsigned time_dilation = 1;
  // The KVM device the profile may query (the guest TSC frequency for time dilation).
  std::string kvm_device = "/dev/kvm";
  std::string name() const { return kind == HostKind::kPvm ? "pvm" : "none"; }
};

// The default time dilation of the pvm profile.
inline constexpr unsigned kPvmDefaultTimeDilation = 10;

// `choice` is "auto", "pvm" or "none"; throws pier::Error otherwise.
HostProfile select_host_profile(std::string_view choice);

}  // namespace pier
