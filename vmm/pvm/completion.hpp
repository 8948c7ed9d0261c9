#pragma once
// What the kvm_pvm assist does about an exit, decided from the vCPU's registers and guest memory
// alone (no KVM calls), so the decisions are unit-tested with fake guest memory:
//   * plan_emulation: kvm_pvm's emulator failed on the instruction at RIP (KVM_EXIT_INTERNAL_ERROR,
//     suberror 1). Decode it through the guest's page tables and say how to complete it.
//   * plan_page_fault_hit: the hardware breakpoint on the guest's #PF handler fired. Either it is
//     a user-mode SYSCALL that kvm_pvm left in CPL3 (it faulted fetching the supervisor page at
//     LSTAR) and is turned into what SYSCALL should have done, or a real page fault whose handler
//     runs on after its first instruction is stepped over.
#include <linux/kvm.h>

#include <cstdint>
#include <optional>
#include <string>

#include "vmm/pvm/decoder.hpp"
#include "vmm/pvm/page_walk.hpp"

namespace pier {
class GuestMemory;
}

namespace pier::pvm {

// Kinds of completed exits, counted by the assist.
enum class Completion : uint8_t {
  kInt3,       // RIP+1, #BP injected
  kFwait,      // RIP+1
  kClac,       // RFLAGS.AC cleared
  kStac,       // RFLAGS.AC set
  kLdmxcsr,    // MXCSR loaded through KVM_SET_FPU
  kStmxcsr,    // MXCSR stored to guest memory
  kNop,        // endbr64/nop/pause: RIP advanced
  kCld,        // RFLAGS.DF cleared
  kSyscall,    // user SYSCALL completed into CPL0 at LSTAR
  kPageFault,  // #PF-handler breakpoint stepped over (a real page fault)
  kApStart,    // first instruction of an AP (single-step that arms the breakpoint)
  kCount,
};
const char* completion_name(Completion kind);

PagingState paging_of(const kvm_sregs& sregs);
CodeSize code_size_of(const kvm_sregs& sregs);

// Reads up to 15 instruction bytes at CS:RIP through the page tables (fewer at the end of a
// mapping); empty when RIP is unmapped.
std::string read_instruction_bytes(const GuestMemory& memory, const kvm_regs& regs,
                                   const kvm_sregs& sregs);

struct EmulationPlan {
  bool ok = false;
  Completion kind = Completion::kNop;
  Instruction insn;
  std::string bytes;    // the bytes decoded (for logs)
  std::string problem;  // when !ok: what and, where known, the kernel option that avoids it
  kvm_regs regs{};      // registers to set (RIP advanced, RFLAGS changed) when ok
  // Exception to inject after setting regs (#BP for int3, #GP(0) for a bad ldmxcsr operand,
  // #PF for an operand the page tables forbid), and for #PF the CR2 to set first.
  std::optional<uint8_t> inject_vector;
  std::optional<uint32_t> inject_error_code;
  std::optional<uint64_t> fault_address;
  std::optional<uint32_t> load_mxcsr;      // ldmxcsr: the value to load
  std::optional<uint64_t> store_mxcsr_at;  // stmxcsr: linear address to write MXCSR to
};

// Decides how to complete the instruction the emulator failed on. `bytes` as read by
// read_instruction_bytes (the caller may substitute kvm_run's copy when RIP is unmapped).
EmulationPlan plan_emulation(const GuestMemory& memory, const kvm_regs& regs,
                             const kvm_sregs& sregs, const std::string& bytes);

// The #PF handler of the guest's current IDT (vector 14), if the IDT holds a present 64-bit
// interrupt or trap gate for it.
std::optional<uint64_t> page_fault_handler(const GuestMemory& memory, const kvm_sregs& sregs);

struct SyscallMsrs {
  uint64_t star = 0, lstar = 0, sfmask = 0;
};

struct PageFaultPlan {
  enum class Action {
    kSyscall,
    kStepOverEmulated,
    kStepOverSingleStep,
    kFail
  } action = Action::kFail;
  std::string problem;
  // kSyscall: the registers and code/stack segments SYSCALL would have produced.
  kvm_regs regs{};
  kvm_segment cs{}, ss{};
  // kStepOverEmulated: the handler's first instruction, completed like an emulation failure.
  EmulationPlan step;
};

// The 64-bit exception frame the CPU pushed for an exception with an error code, at RSP.
struct ExceptionFrame {
  uint64_t error = 0, rip = 0, cs = 0, rflags = 0, rsp = 0, ss = 0;
  bool from_user() const { return (cs & 3) == 3; }
};
std::optional<ExceptionFrame> read_exception_frame(const GuestMemory& memory, const kvm_regs& regs,
                                                   const kvm_sregs& sregs);

// Called at the breakpoint on the #PF handler (RIP = handler, RSP = `frame`).
PageFaultPlan plan_page_fault_hit(const GuestMemory& memory, const kvm_regs& regs,
                                  const kvm_sregs& sregs, const ExceptionFrame& frame,
                                  const SyscallMsrs& msrs);

}  // namespace pier::pvm
