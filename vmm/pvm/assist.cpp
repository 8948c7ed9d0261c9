#include "vmm/pvm/assist.hpp"

#include <fmt/format.h>
#include <sys/ioctl.h>

#include <cstring>
#include <vector>

#include "vmm/error.hpp"
#include "vmm/guest_memory.hpp"
#include "vmm/kvm.hpp"
#include "vmm/log.hpp"

namespace pier::pvm {
namespace {

constexpr uint32_t kMsrStar = 0xc000'0081;
constexpr uint32_t kMsrLstar = 0xc000'0082;
constexpr uint32_t kMsrSfmask = 0xc000'0084;
constexpr uint64_t kDr7EnableL0 = 1ull << 0;
constexpr uint64_t kDr7Reserved = 1ull << 10;

// The instruction bytes kvm_run carries with an emulation failure (when RIP cannot be read
// through the page tables).
// Layout (kvm_run::emulation_failure): data[0] flags, then insn_size (one byte) and 15 bytes.
std::string bytes_from_run(const kvm_run* run) {
  if (run->internal.ndata < 3 ||
      !(run->internal.data[0] & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)) {
    return {};
  }
  uint8_t raw[16];
  std::memcpy(raw, &run->internal.data[1], sizeof(raw));
  const size_t size = std::min<size_t>(raw[0], 15);
  return std::string(reinterpret_cast<const char*>(raw + 1), size);
}

// MXCSR goes through KVM_GET/SET_XSAVE: kvm_pvm's KVM_GET_FPU reports MXCSR as 0 and its
// KVM_SET_FPU does not load it. Byte 24 of the legacy area; XSTATE_BV bit 1 (SSE) makes
// KVM_SET_XSAVE take it.
// struct kvm_xsave ends in a flexible array, so in C++ its size (and the ioctl numbers built from
// it) is 4100, not 4096 (see vmm/kvm_abi.hpp): use the kernel's numbers and a 4 KiB area. (With
// an xstate larger than 4 KiB, AMX, KVM_SET_XSAVE would need KVM_CAP_XSAVE2's size.)
constexpr size_t kXsaveBytes = 4096;
constexpr unsigned long kGetXsave = _IOC(_IOC_READ, KVMIO, 0xa4, kXsaveBytes);
constexpr unsigned long kSetXsave = _IOC(_IOC_WRITE, KVMIO, 0xa5, kXsaveBytes);
static_assert(kGetXsave == 0x9000aea4 && kSetXsave == 0x5000aea5);
constexpr size_t kXsaveMxcsr = 24 / 4;
constexpr size_t kXsaveXstateBv = 512 / 4;

std::optional<uint32_t> read_mxcsr(const Vcpu& vcpu) {
  std::vector<uint32_t> area(kXsaveBytes / 4);
  if (::ioctl(vcpu.fd(), kGetXsave, area.data()) != 0) return std::nullopt;
  return area[kXsaveMxcsr];
}

bool write_mxcsr(Vcpu& vcpu, uint32_t value) {
  std::vector<uint32_t> area(kXsaveBytes / 4);
  if (::ioctl(vcpu.fd(), kGetXsave, area.data()) != 0) return false;
  area[kXsaveMxcsr] = value;
  area[kXsaveXstateBv] |= 2;
  if (::ioctl(vcpu.fd(), kSetXsave, area.data()) != 0) {
    log::error("pvm: vCPU {}: KVM_SET_XSAVE: {}", vcpu.index(), std::strerror(errno));
    return false;
  }
  return true;
}

}  // namespace

PvmAssist::PvmAssist(const GuestMemory& memory, KernelOptionsConfig options)
    : memory_(memory), options_(options) {}

std::string PvmAssist::linux_kernel_options() const {
  const auto options = kernel_options(options_);
  for (const auto& o : options) {
    log::debug("pvm kernel option (Linux guests) {}: {}", o.text, o.why);
  }
  return join(options);
}

PvmAssist::VcpuState& PvmAssist::state(const Vcpu& vcpu) {
  if (vcpu.index() >= states_.size()) {
    throw Error(fmt::format("pvm assist: vCPU {} was not prepared", vcpu.index()));
  }
  return states_[vcpu.index()];
}

void PvmAssist::prepare_vcpu(Vcpu& vcpu) {
  while (states_.size() <= vcpu.index()) states_.emplace_back();
  VcpuState& st = states_[vcpu.index()];
  if (vcpu.index() > 0) {
    // An AP runs nothing until INIT-SIPI-SIPI and then never exits to pier on its own before
    // user processes may run on it: single-step its first instruction to get one exit, where
    // the #PF-handler breakpoint the BSP found is armed.
    st.first_step = true;
    set_debug(vcpu, st, true);
  }
}

void PvmAssist::set_debug(Vcpu& vcpu, VcpuState& st, bool single_step) {
  kvm_guest_debug dbg{};
  if (single_step) {
    dbg.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP;
  } else if (st.armed_at != 0) {
    dbg.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP;
    dbg.arch.debugreg[0] = st.armed_at;
    dbg.arch.debugreg[7] = kDr7EnableL0 | kDr7Reserved;  // DR0: execute, 1 byte
  }
  vcpu.set_guest_debug(dbg);
}

void PvmAssist::ensure_armed(Vcpu& vcpu, VcpuState& st, const kvm_sregs& sregs) {
  const auto found = page_fault_handler(memory_, sregs);
  if (found) pf_handler_.store(*found, std::memory_order_relaxed);
  const uint64_t target = found ? *found : pf_handler_.load(std::memory_order_relaxed);
  if (target == 0 || target == st.armed_at || st.first_step || st.stepping_over) return;
  st.armed_at = target;
  set_debug(vcpu, st, false);
  log::debug("pvm: vCPU {}: breakpoint on the guest's #PF handler at {:#x} ({})", vcpu.index(),
             target, found ? "from its IDT" : "found by another vCPU");
}

void PvmAssist::refresh_msrs(Vcpu& vcpu, VcpuState& st) {
  const uint32_t indices[] = {kMsrStar, kMsrLstar, kMsrSfmask};
  const auto msrs = vcpu.msrs(indices);
  st.msrs.star = msrs[0].data;
  st.msrs.lstar = msrs[1].data;
  st.msrs.sfmask = msrs[2].data;
}

bool PvmAssist::apply(Vcpu& vcpu, const EmulationPlan& plan) {
  if (plan.load_mxcsr) {
    if (!write_mxcsr(vcpu, *plan.load_mxcsr)) return false;
  } else if (plan.store_mxcsr_at) {
    const auto value = read_mxcsr(vcpu);
    const kvm_sregs sregs = vcpu.sregs();
    if (!value || !write_virtual(memory_, paging_of(sregs), *plan.store_mxcsr_at,
                                 std::span(reinterpret_cast<const uint8_t*>(&*value), 4))) {
      log::error("pvm: vCPU {}: stmxcsr to {:#x} failed", vcpu.index(), *plan.store_mxcsr_at);
      return false;
    }
  }
  if (plan.fault_address) {  // #PF: CR2 first, as the CPU sets it
    kvm_sregs sregs = vcpu.sregs();
    sregs.cr2 = *plan.fault_address;
    vcpu.set_sregs(sregs);
  }
  // KVM_SET_REGS drops a pending exception, so the registers go first.
  vcpu.set_regs(plan.regs);
  if (plan.inject_vector) {
    kvm_vcpu_events events = vcpu.events();
    events.exception.injected = 1;
    events.exception.nr = *plan.inject_vector;
    events.exception.has_error_code = plan.inject_error_code ? 1 : 0;
    events.exception.error_code = plan.inject_error_code.value_or(0);
    vcpu.set_events(events);
  }
  return true;
}

bool PvmAssist::on_internal_error(Vcpu& vcpu) {
  kvm_run* run = vcpu.run_data();
  if (run->internal.suberror != KVM_INTERNAL_ERROR_EMULATION) return false;
  VcpuState& st = state(vcpu);
  const kvm_regs regs = vcpu.regs();
  const kvm_sregs sregs = vcpu.sregs();
  std::string bytes = read_instruction_bytes(memory_, regs, sregs);
  if (bytes.empty()) bytes = bytes_from_run(run);
  const EmulationPlan plan = plan_emulation(memory_, regs, sregs, bytes);
  if (!plan.ok) {
    log::error("pvm: vCPU {}: kvm_pvm's emulator failed and pier cannot complete it: {}",
               vcpu.index(), plan.problem);
    return false;
  }
  if (!apply(vcpu, plan)) return false;
  const uint64_t n = counts_[static_cast<size_t>(plan.kind)].fetch_add(1) + 1;
  if (n == 1) {
    log::debug("pvm: vCPU {}: first {} completed at {:#x} [{}]", vcpu.index(),
               completion_name(plan.kind), regs.rip, plan.bytes);
  } else {
    log::trace("pvm: vCPU {}: {} at {:#x}", vcpu.index(), completion_name(plan.kind), regs.rip);
  }
  // Every completion exit is a chance to (re)arm the SYSCALL fix-up from the guest's IDT.
  ensure_armed(vcpu, st, sregs);
  return true;
}

bool PvmAssist::on_debug_exit(Vcpu& vcpu) {
  kvm_run* run = vcpu.run_data();
  const kvm_debug_exit_arch dbg = run->debug.arch;
  VcpuState& st = state(vcpu);

  if (st.first_step || st.stepping_over) {
    const bool ap_start = st.first_step;
    st.first_step = st.stepping_over = false;
    if (ap_start) {
      bump(Completion::kApStart);
      log::debug("pvm: vCPU {}: first instruction done (pc {:#x}, dr6 {:#x})", vcpu.index(), dbg.pc,
                 dbg.dr6);
      ensure_armed(vcpu, st, vcpu.sregs());
    }
    set_debug(vcpu, st, false);
    return true;
  }

  if (st.armed_at != 0 && dbg.pc == st.armed_at) {
    kvm_regs regs = vcpu.regs();
    kvm_sregs sregs = vcpu.sregs();
    const auto frame = read_exception_frame(memory_, regs, sregs);
    if (!frame) {
      log::error("pvm: vCPU {}: #PF handler breakpoint with an unreadable stack at {:#x}",
                 vcpu.index(), regs.rsp);
      return false;
    }
    // A user fault at a kernel address that is not the cached LSTAR: the cache may be stale
    // (an AP armed before it set its MSRs).
    if (frame->from_user() && (frame->rip >> 63) && frame->rip != st.msrs.lstar) {
      refresh_msrs(vcpu, st);
    }
    const PageFaultPlan plan = plan_page_fault_hit(memory_, regs, sregs, *frame, st.msrs);
    if (!st.logged_first_hit) {
      st.logged_first_hit = true;
      log::debug(
          "pvm: vCPU {}: first #PF-handler breakpoint: frame rip {:#x} cs {:#x}, "
          "handler starts [{}] ({})",
          vcpu.index(), frame->rip, frame->cs, plan.step.bytes, plan.step.insn.name);
    }
    switch (plan.action) {
      case PageFaultPlan::Action::kSyscall:
        vcpu.set_regs(plan.regs);
        sregs.cs = plan.cs;
        sregs.ss = plan.ss;
        vcpu.set_sregs(sregs);
        bump(Completion::kSyscall);
        return true;
      case PageFaultPlan::Action::kStepOverEmulated:
        if (!apply(vcpu, plan.step)) return false;
        bump(Completion::kPageFault);
        return true;
      case PageFaultPlan::Action::kStepOverSingleStep:
        st.stepping_over = true;
        set_debug(vcpu, st, true);
        bump(Completion::kPageFault);
        return true;
      case PageFaultPlan::Action::kFail:
        log::error("pvm: vCPU {}: {}", vcpu.index(), plan.problem);
        return false;
    }
  }
  log::error("pvm: vCPU {}: debug exit pier did not ask for (pc {:#x}, dr6 {:#x}, exception {})",
             vcpu.index(), dbg.pc, dbg.dr6, dbg.exception);
  return false;
}

std::string PvmAssist::summary() const {
  std::string out = "completed";
  bool any = false;
  for (size_t i = 0; i < counts_.size(); ++i) {
    const uint64_t n = counts_[i].load(std::memory_order_relaxed);
    if (n == 0) continue;
    out += fmt::format("{} {} {}", any ? "," : "", completion_name(static_cast<Completion>(i)), n);
    any = true;
  }
  if (!any) out += " nothing";
  return out;
}

uint64_t query_tsc_khz(const std::string& kvm_device) {
  try {
    Kvm kvm(kvm_device);
    Vm vm(kvm);
    Vcpu vcpu(vm, 0);
    const int khz = ::ioctl(vcpu.fd(), KVM_GET_TSC_KHZ, 0);
    return khz > 0 ? static_cast<uint64_t>(khz) : 0;
  } catch (const Error& e) {
    log::warn("pvm: cannot read the guest TSC frequency ({}); no time dilation", e.what());
    return 0;
  }
}

}  // namespace pier::pvm
