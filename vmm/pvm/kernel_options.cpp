#include "vmm/pvm/kernel_options.hpp"

#include <fmt/format.h>

namespace pier::pvm {

std::string clearcpuid_list() {
  // Features whose instructions kvm_pvm's emulator lacks and that the kernel would use in CPL0
  // (KVM_SET_CPUID2 is ignored there: the guest sees the host's CPUID). AVX/AVX-512/VAES/
  // VPCLMULQDQ/FMA/F16C go with XSAVE (noxsave): Linux clears features that depend on a
  // cleared one.
  return "erms,fsrm,cx16,popcnt,smap,fsgsbase,rdrand,rdseed,rdpid,invpcid,pcid,pku,"
         "ssse3,sse4_1,sse4_2,aes,pclmulqdq,sha_ni,gfni";
}

std::string initcall_blacklist() {
  return "trace_eval_init,tracer_init_tracefs,slab_sysfs_init,blake2s_mod_init,crypto_kdf108_init";
}

std::vector<KernelOption> kernel_options(const KernelOptionsConfig& config) {
  std::vector<KernelOption> o;
  o.push_back({"noxsave", "xrstor (FPU init) is not emulated; also hides AVX and AVX-512"});
  o.push_back({"clearcpuid=" + clearcpuid_list(),
               "CPUID cannot be set on kvm_pvm: hide what the emulator cannot run (cmpxchg16b, "
               "popcnt, clac/stac, rd/wrfsbase, rdrand, rdpid, invpcid, SIMD crypto)"});
  if (config.time_dilation > 1 && config.tsc_khz != 0) {
    o.push_back({fmt::format("tsc_early_khz={}", config.tsc_khz * config.time_dilation),
                 fmt::format("time dilation x{}: the guest believes the TSC runs {} times "
                             "faster, so its timer ticks come {} times less often",
                             config.time_dilation, config.time_dilation, config.time_dilation)});
    o.push_back({"clocksource=kvm-clock",
                 "keeps the guest's clock right under time dilation (kvm-clock is scaled by "
                 "the host, not by tsc_early_khz)"});
  }
  o.push_back({"tsc=reliable", "no clocksource watchdog (emulated CPL0 makes TSC reads jitter)"});
  o.push_back({"cryptomgr.notests=1", "the crypto self-tests (RSA) take minutes in emulated code"});
  o.push_back({"mitigations=off", "no speculation mitigations: they only cost emulated cycles"});
  o.push_back({"nowatchdog", "no soft/hard lockup detectors (emulated code looks locked up)"});
  o.push_back({"init_on_alloc=0", "no zeroing of every allocated page (Debian turns it on)"});
  o.push_back({"initcall_blacklist=" + initcall_blacklist(),
               "skips boot work a VM guest does not need: tracefs event files and their enum "
               "rewriting (~80 s emulated), /sys/kernel/slab (~20 s), the blake2s and KDF "
               "self-tests (~9 s)"});
  o.push_back({"ipv6.disable=1", "no IPv6 stack set-up (~4 s); the guest has no network"});
  o.push_back({"quiet", "fewer console lines: each byte on ttyS0 is an exit plus emulated code"});
  return o;
}

std::string join(const std::vector<KernelOption>& options) {
  std::string out;
  for (const auto& o : options) {
    if (!out.empty()) out += ' ';
    out += o.text;
  }
  return out;
}

}  // namespace pier::pvm
