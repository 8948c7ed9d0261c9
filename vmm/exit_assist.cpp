#include "vmm/exit_assist.hpp"

#include "vmm/pvm/assist.hpp"

// The pvm sources are compiled as part of this file until the build globs vmm/pvm/*.cpp
// (CMakeLists.txt globs vmm/*.cpp only).
#include "vmm/pvm/assist.cpp"          // NOLINT(bugprone-suspicious-include)
#include "vmm/pvm/completion.cpp"      // NOLINT(bugprone-suspicious-include)
#include "vmm/pvm/decoder.cpp"         // NOLINT(bugprone-suspicious-include)
#include "vmm/pvm/kernel_options.cpp"  // NOLINT(bugprone-suspicious-include)
#include "vmm/pvm/page_walk.cpp"       // NOLINT(bugprone-suspicious-include)

namespace pier {

std::unique_ptr<ExitAssist> make_exit_assist(const HostProfile& profile,
                                             const GuestMemory& memory) {
  if (profile.kind != HostKind::kPvm) return std::make_unique<ExitAssist>();
  pvm::KernelOptionsConfig options;
  options.time_dilation = profile.time_dilation;
  if (options.time_dilation > 1) options.tsc_khz = pvm::query_tsc_khz(profile.kvm_device);
  return std::make_unique<pvm::PvmAssist>(memory, options);
}

}  // namespace pier
