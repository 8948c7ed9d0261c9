#include "vmm/host_profile.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "vmm/error.hpp"
#include "vmm/kvm.hpp"

namespace pier {

HostProfile select_host_profile(std::string_view choice) {
  HostProfile profile;
  bool pvm = false;
  if (choice == "auto") {
    const auto modules = Kvm::loaded_vendor_modules();
    pvm = std::find(modules.begin(), modules.end(), "kvm_pvm") != modules.end();
  } else if (choice == "pvm") {
    pvm = true;
  } else if (choice != "none") {
    throw Error(fmt::format("unknown host profile '{}' (use auto, pvm or none)", choice));
  }
  if (pvm) {
    profile.kind = HostKind::kPvm;
    profile.slow_guest_kernel = true;
    profile.time_dilation = kPvmDefaultTimeDilation;
  }
  return profile;
}

}  // namespace pier
