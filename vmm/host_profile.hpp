#pragma once
// What kind of KVM host pier runs on. Hardware virtualization (VT-x/AMD-V) is the target; a host
// whose /dev/kvm is the kvm_pvm software hypervisor runs guest kernel code in an emulator, so
// pier changes defaults there (direct boot; later: kernel options and emulation completion).
#include <string>
#include <string_view>

namespace pier {

enum class HostKind { kHardware, kPvm };

struct HostProfile {
  HostKind kind = HostKind::kHardware;
  // Guest kernel (CPL0) code is emulated: decompress the kernel in the host instead.
  bool slow_guest_kernel = false;
  std::string name() const { return kind == HostKind::kPvm ? "pvm" : "none"; }
};

// `choice` is "auto", "pvm" or "none"; throws pier::Error otherwise.
HostProfile select_host_profile(std::string_view choice);

}  // namespace pier
