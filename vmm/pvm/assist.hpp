#pragma once
// The kvm_pvm host profile's exit assist: the kernel options the guest needs there, completion of
// the instructions kvm_pvm's emulator fails on, and the SYSCALL fix-up (docs/pvm.md).
//
// kvm_pvm runs guest CPL0 code in an emulator. Where the emulator has a gap, KVM_RUN returns
// KVM_EXIT_INTERNAL_ERROR (suberror 1) with RIP at the instruction: the assist decodes it through
// the guest's page tables and completes it (int3 -> RIP+1 and #BP injected; fwait; clac/stac;
// ldmxcsr/stmxcsr) or returns false so pier stops with a register dump. A user-mode SYSCALL
// leaves CS in CPL3 and faults fetching LSTAR's supervisor page: a hardware breakpoint on the
// guest's #PF handler (found in the guest's IDT) catches that fault and resumes at LSTAR in CPL0,
// as SYSCALL should have; real page faults resume after the handler's first instruction.
// APs are single-stepped for their first instruction so they can be armed before they run.
#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>

#include "vmm/exit_assist.hpp"
#include "vmm/pvm/completion.hpp"
#include "vmm/pvm/kernel_options.hpp"

namespace pier {
class GuestMemory;
class Vcpu;
}  // namespace pier

namespace pier::pvm {

class PvmAssist : public ExitAssist {
 public:
  PvmAssist(const GuestMemory& memory, KernelOptionsConfig options);

  std::string linux_kernel_options() const override;
  void prepare_vcpu(Vcpu& vcpu) override;
  bool on_internal_error(Vcpu& vcpu) override;
  bool on_debug_exit(Vcpu& vcpu) override;
  std::string summary() const override;

  uint64_t count(Completion kind) const {
    return counts_[static_cast<size_t>(kind)].load(std::memory_order_relaxed);
  }

 private:
  // Per vCPU; touched only by that vCPU's thread once it runs.
  struct VcpuState {
    uint64_t armed_at = 0;       // #PF handler the hardware breakpoint is on (0: none)
    bool first_step = false;     // single-stepping an AP's first instruction
    bool stepping_over = false;  // single-stepping the #PF handler's first instruction
    SyscallMsrs msrs;            // cached STAR/LSTAR/SFMASK
    bool logged_first_hit = false;
  };

  VcpuState& state(const Vcpu& vcpu);
  // Arms (or re-arms) the #PF-handler breakpoint from the vCPU's IDT, else from what another
  // vCPU found. `sregs` are the vCPU's current ones.
  void ensure_armed(Vcpu& vcpu, VcpuState& st, const kvm_sregs& sregs);
  void set_debug(Vcpu& vcpu, VcpuState& st, bool single_step);
  void refresh_msrs(Vcpu& vcpu, VcpuState& st);
  bool apply(Vcpu& vcpu, const EmulationPlan& plan);
  void bump(Completion kind) {
    counts_[static_cast<size_t>(kind)].fetch_add(1, std::memory_order_relaxed);
  }

  const GuestMemory& memory_;
  KernelOptionsConfig options_;
  std::deque<VcpuState> states_;  // grows only in prepare_vcpu, before vCPU threads start
  std::atomic<uint64_t> pf_handler_{0};
  std::array<std::atomic<uint64_t>, static_cast<size_t>(Completion::kCount)> counts_{};
};

// KVM_GET_TSC_KHZ of a vCPU of a throwaway VM on `kvm_device`; 0 when unavailable.
uint64_t query_tsc_khz(const std::string& kvm_device);

}  // namespace pier::pvm
