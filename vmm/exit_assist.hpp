#pragma once
// Host-specific help for vCPU exits. On hardware virtualization nothing is needed; on a host
// whose KVM cannot run some guest instructions (kvm_pvm), an assist completes them in the VMM.
// The machine calls these hooks from the vCPU threads; an implementation keeps per-vCPU state
// itself and must be thread-safe for different vCPUs.
#include <memory>
#include <string>

#include "vmm/host_profile.hpp"

namespace pier {

class Vcpu;
class GuestMemory;

class ExitAssist {
 public:
  virtual ~ExitAssist() = default;
  // Kernel command-line options the host needs the guest (a Linux kernel) to run with; appended
  // to the user's command line.
  virtual std::string linux_kernel_options() const { return {}; }
  // After the vCPU's boot state is set, before its first KVM_RUN.
  virtual void prepare_vcpu(Vcpu& /*vcpu*/) {}
  // KVM_EXIT_INTERNAL_ERROR / KVM_EXIT_DEBUG: return true when handled and the vCPU may
  // continue; false makes the machine stop with a register dump.
  virtual bool on_internal_error(Vcpu& /*vcpu*/) { return false; }
  virtual bool on_debug_exit(Vcpu& /*vcpu*/) { return false; }
  // One line per kind of completed exit, logged when the machine stops.
  virtual std::string summary() const { return {}; }
};

// The assist for `profile` (a no-op one for hardware hosts). `memory` outlives the assist.
std::unique_ptr<ExitAssist> make_exit_assist(const HostProfile& profile, const GuestMemory& memory);

}  // namespace pier
