#include "vmm/exit_assist.hpp"

namespace pier {

std::unique_ptr<ExitAssist> make_exit_assist(const HostProfile& /*profile*/,
                                             const GuestMemory& /*memory*/) {
  // kvm_pvm's assist (kernel options, emulation completion, SYSCALL fix-up) plugs in here.
  return std::make_unique<ExitAssist>();
}

}  // namespace pier
