#include "vmm/pvm/completion.hpp"

#include <fmt/format.h>

#include <array>

#include "vmm/guest_memory.hpp"

namespace pier::pvm {
namespace {

constexpr uint64_t kEferLongModeActive = 1ull << 10;
constexpr uint64_t kRflagsFixed = 1ull << 1;
constexpr uint64_t kRflagsDf = 1ull << 10;
constexpr uint64_t kRflagsRf = 1ull << 16;
constexpr uint64_t kRflagsVm = 1ull << 17;
constexpr uint64_t kRflagsAc = 1ull << 18;
constexpr uint8_t kVectorBp = 3;
constexpr uint8_t kVectorGp = 13;
constexpr uint8_t kVectorPf = 14;
// MXCSR bits above 15 are reserved: loading them raises #GP(0).
constexpr uint32_t kMxcsrReserved = 0xffff'0000u;

uint64_t linear_rip(const kvm_regs& regs, const kvm_sregs& sregs) {
  if (code_size_of(sregs) == CodeSize::k64) return regs.rip;
  return (sregs.cs.base + (regs.rip & 0xffff'ffffull)) & 0xffff'ffffull;
}

uint64_t advance(const kvm_regs& regs, const kvm_sregs& sregs, uint8_t length) {
  const uint64_t next = regs.rip + length;
  switch (code_size_of(sregs)) {
    case CodeSize::k64:
      return next;
    case CodeSize::k32:
      return next & 0xffff'ffffull;
    default:
      return next & 0xffffull;
  }
}

kvm_segment flat_segment(uint16_t selector, bool code) {
  kvm_segment s{};
  s.base = 0;
  s.limit = 0xffff'ffffu;
  s.selector = selector;
  s.type = code ? 0xb : 0x3;  // execute/read accessed : read/write accessed
  s.present = 1;
  s.dpl = 0;
  s.db = code ? 0 : 1;
  s.s = 1;
  s.l = code ? 1 : 0;
  s.g = 1;
  return s;
}

}  // namespace

const char* completion_name(Completion kind) {
  switch (kind) {
    case Completion::kInt3:
      return "int3";
    case Completion::kFwait:
      return "fwait";
    case Completion::kClac:
      return "clac";
    case Completion::kStac:
      return "stac";
    case Completion::kLdmxcsr:
      return "ldmxcsr";
    case Completion::kStmxcsr:
      return "stmxcsr";
    case Completion::kNop:
      return "nop";
    case Completion::kCld:
      return "cld";
    case Completion::kSyscall:
      return "syscall";
    case Completion::kPageFault:
      return "page-fault";
    case Completion::kApStart:
      return "ap-start";
    default:
      return "?";
  }
}

PagingState paging_of(const kvm_sregs& sregs) {
  return PagingState{sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer};
}

CodeSize code_size_of(const kvm_sregs& sregs) {
  if ((sregs.efer & kEferLongModeActive) && sregs.cs.l) return CodeSize::k64;
  return sregs.cs.db ? CodeSize::k32 : CodeSize::k16;
}

std::string read_instruction_bytes(const GuestMemory& memory, const kvm_regs& regs,
                                   const kvm_sregs& sregs) {
  const PagingState paging = paging_of(sregs);
  const uint64_t rip = linear_rip(regs, sregs);
  std::array<uint8_t, 15> buf{};
  // Up to the end of RIP's page first, then the rest if the next page is mapped.
  const size_t first = std::min<uint64_t>(buf.size(), 4096 - (rip & 4095));
  if (!read_virtual(memory, paging, rip, std::span(buf.data(), first))) return {};
  size_t got = first;
  if (got < buf.size() &&
      read_virtual(memory, paging, rip + got, std::span(buf.data() + got, buf.size() - got))) {
    got = buf.size();
  }
  return std::string(reinterpret_cast<const char*>(buf.data()), got);
}

EmulationPlan plan_emulation(const GuestMemory& memory, const kvm_regs& regs,
                             const kvm_sregs& sregs, const std::string& bytes) {
  EmulationPlan plan;
  const auto span = std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  plan.bytes = hex_bytes(span);
  if (bytes.empty()) {
    plan.problem = fmt::format("RIP {:#x} is not mapped in the guest's page tables", regs.rip);
    return plan;
  }
  const Instruction insn = decode(span, code_size_of(sregs));
  plan.insn = insn;
  plan.regs = regs;
  const uint64_t next = insn.length ? advance(regs, sregs, insn.length) : regs.rip;
  const bool cpl0 = (sregs.cs.selector & 3) == 0 && sregs.cs.dpl == 0;

  auto done = [&](Completion kind) {
    plan.ok = true;
    plan.kind = kind;
    plan.regs.rip = next;
    return plan;
  };
  switch (insn.op) {
    case Op::kInt3:
      plan.inject_vector = kVectorBp;
      return done(Completion::kInt3);
    case Op::kFwait:
      return done(Completion::kFwait);
    case Op::kNop:
      return done(Completion::kNop);
    case Op::kCld:
      plan.regs.rflags &= ~kRflagsDf;
      return done(Completion::kCld);
    case Op::kClac:
    case Op::kStac:
      if (!cpl0) break;  // #UD outside CPL0; the emulator would have said so
      if (insn.op == Op::kClac) {
        plan.regs.rflags &= ~kRflagsAc;
        return done(Completion::kClac);
      }
      plan.regs.rflags |= kRflagsAc;
      return done(Completion::kStac);
    case Op::kLdmxcsr:
    case Op::kStmxcsr: {
      if (!insn.has_memory) break;
      const uint64_t address = effective_address(insn, regs, segment_bases(sregs), regs.rip);
      // The CPU checks the operand against the page tables before it completes; so does pier,
      // or a user program could have MXCSR stored into the kernel's memory (or a read-only
      // page), or loaded from it. A violation is the #PF the CPU would raise; RIP stays.
      const DataAccess access{insn.op == Op::kStmxcsr, !cpl0, (regs.rflags & kRflagsAc) != 0};
      if (check_access(memory, paging_of(sregs), address, 4, access) == AccessCheck::kProtection) {
        plan.ok = true;
        plan.kind = insn.op == Op::kStmxcsr ? Completion::kStmxcsr : Completion::kLdmxcsr;
        plan.inject_vector = kVectorPf;
        plan.inject_error_code = 1u | (access.write ? 2u : 0u) | (access.user ? 4u : 0u);
        plan.fault_address = address;
        return plan;
      }
      if (insn.op == Op::kStmxcsr) {
        plan.store_mxcsr_at = address;
        return done(Completion::kStmxcsr);
      }
      const auto value = read_virtual_obj<uint32_t>(memory, paging_of(sregs), address);
      if (!value) {
        plan.problem = fmt::format("ldmxcsr operand at {:#x} is not mapped", address);
        return plan;
      }
      if (*value & kMxcsrReserved) {
        // As the CPU does: #GP(0), RIP stays at the instruction.
        plan.ok = true;
        plan.kind = Completion::kLdmxcsr;
        plan.inject_vector = kVectorGp;
        plan.inject_error_code = 0;
        return plan;
      }
      plan.load_mxcsr = *value;
      return done(Completion::kLdmxcsr);
    }
    default:
      break;
  }
  if (insn.op == Op::kUnknown || insn.op == Op::kTruncated) {
    plan.problem = fmt::format("unknown instruction [{}] at {:#x}", plan.bytes, regs.rip);
  } else {
    const char* hint = hint_for(insn.op);
    plan.problem = fmt::format("{} [{}] at {:#x} is not completed by pier{}{}", insn.name,
                               plan.bytes, regs.rip, *hint ? "; " : "", hint);
  }
  plan.ok = false;
  return plan;
}

std::optional<uint64_t> page_fault_handler(const GuestMemory& memory, const kvm_sregs& sregs) {
  if (!(sregs.efer & kEferLongModeActive)) return std::nullopt;
  constexpr uint64_t kGateSize = 16;
  if (sregs.idt.limit < kVectorPf * kGateSize + kGateSize - 1) return std::nullopt;
  std::array<uint8_t, kGateSize> gate{};
  if (!read_virtual(memory, paging_of(sregs), sregs.idt.base + kVectorPf * kGateSize, gate))
    return std::nullopt;
  const uint8_t type_attr = gate[5];
  const uint8_t type = type_attr & 0xf;
  if (!(type_attr & 0x80) || (type != 0xe && type != 0xf)) return std::nullopt;
  auto u16 = [&](size_t at) { return static_cast<uint64_t>(gate[at] | (gate[at + 1] << 8)); };
  const uint64_t high = u16(8) | (u16(10) << 16);
  return u16(0) | (u16(6) << 16) | (high << 32);
}

std::optional<ExceptionFrame> read_exception_frame(const GuestMemory& memory, const kvm_regs& regs,
                                                   const kvm_sregs& sregs) {
  std::array<uint64_t, 6> f{};
  if (!read_virtual(memory, paging_of(sregs), regs.rsp,
                    std::span(reinterpret_cast<uint8_t*>(f.data()), sizeof(f)))) {
    return std::nullopt;
  }
  return ExceptionFrame{f[0], f[1], f[2], f[3], f[4], f[5]};
}

PageFaultPlan plan_page_fault_hit(const GuestMemory& memory, const kvm_regs& regs,
                                  const kvm_sregs& sregs, const ExceptionFrame& frame,
                                  const SyscallMsrs& msrs) {
  PageFaultPlan plan;
  if (frame.from_user() && msrs.lstar != 0 && frame.rip == msrs.lstar) {
    // A real SYSCALL left RCX = the address after it and R11 = RFLAGS. Confirm with the bytes
    // before RCX (0f 05), so a user jump to the kernel's entry stays a page fault.
    std::array<uint8_t, 2> insn{};
    const bool is_syscall = regs.rcx >= 2 &&
                            read_virtual(memory, paging_of(sregs), regs.rcx - 2, insn) &&
                            insn[0] == 0x0f && insn[1] == 0x05;
    if (is_syscall) {
      plan.action = PageFaultPlan::Action::kSyscall;
      plan.regs = regs;
      plan.regs.rip = msrs.lstar;
      plan.regs.rsp = frame.rsp;  // SYSCALL keeps the user stack; the kernel switches itself
      // RFLAGS from the CPU's own frame, never from R11: a user program that jumps to LSTAR
      // (RCX set after some 0f 05 bytes of its own) chooses R11, and would choose IOPL 3 or
      // whatever SFMASK does not clear. After a real SYSCALL the frame holds RFLAGS already
      // masked and R11 the user's RFLAGS, as the kernel expects.
      plan.regs.rflags = (frame.rflags & ~msrs.sfmask & ~(kRflagsRf | kRflagsVm)) | kRflagsFixed;
      const auto selector = static_cast<uint16_t>((msrs.star >> 32) & 0xfffc);
      plan.cs = flat_segment(selector, true);
      plan.ss = flat_segment(static_cast<uint16_t>(selector + 8), false);
      return plan;
    }
  }
  // A real page fault: let the handler run, stepping over its first instruction (kvm_pvm's
  // emulator ignores RFLAGS.RF, so resuming at the breakpoint would hit it again).
  const std::string bytes = read_instruction_bytes(memory, regs, sregs);
  plan.step = plan_emulation(memory, regs, sregs, bytes);
  const Op op = plan.step.insn.op;
  const bool simple = plan.step.ok && !plan.step.inject_vector &&
                      (op == Op::kNop || op == Op::kCld || op == Op::kClac || op == Op::kStac);
  plan.action = simple ? PageFaultPlan::Action::kStepOverEmulated
                       : PageFaultPlan::Action::kStepOverSingleStep;
  if (bytes.empty()) {
    plan.action = PageFaultPlan::Action::kFail;
    plan.problem = fmt::format("the #PF handler at {:#x} is not mapped", regs.rip);
  }
  return plan;
}

}  // namespace pier::pvm
