#pragma once
// A small x86 instruction decoder for the kvm_pvm assist: enough to recognise the instructions
// kvm_pvm's emulator fails on (int3, fwait, clac/stac, ldmxcsr/stmxcsr, ...), to know their length,
// to compute a memory operand's effective address, and to name the ones the VMM cannot complete
// (with the kernel option that keeps the guest from using them). Anything else decodes as
// Op::kUnknown; nothing here executes or trusts guest bytes beyond the span it is given.
#include <linux/kvm.h>

#include <cstdint>
#include <span>
#include <string>

namespace pier::pvm {

enum class CodeSize : uint8_t { k16, k32, k64 };

enum class Op : uint8_t {
  kUnknown,
  kTruncated,  // the bytes ran out before the instruction did
  // Completed by the assist.
  kInt3,
  kFwait,
  kClac,
  kStac,
  kLdmxcsr,
  kStmxcsr,
  kNop,  // 90, 0f 1f /0, endbr64/endbr32, 0f 1e hint nops
  kCld,
  // Recognised, not completed: the guest must not use them here (a kernel option hides them).
  kXsaveFamily,
  kCmpxchg16b,
  kPopcnt,
  kRdrand,
  kRdseed,
  kRdpid,
  kFsGsBase,
  kPkru,
  kInvpcid,
  kSimd,
  kOther,  // decoded (length known) but nothing the assist completes
};

// x86 register numbers as encoded: 0 rax, 1 rcx, 2 rdx, 3 rbx, 4 rsp, 5 rbp, 6 rsi, 7 rdi, 8-15.
enum class Segment : uint8_t { kEs, kCs, kSs, kDs, kFs, kGs };

struct MemOperand {
  static constexpr uint8_t kNone = 0xff;
  static constexpr uint8_t kRip = 0xfe;
  uint8_t base = kNone;   // register number, kRip, or kNone
  uint8_t index = kNone;  // register number or kNone
  uint8_t scale = 1;
  int64_t disp = 0;
  uint8_t address_size = 8;  // bytes: 2, 4 or 8
  Segment segment = Segment::kDs;
};

struct Instruction {
  Op op = Op::kUnknown;
  uint8_t length = 0;  // bytes, including prefixes; 0 for kUnknown/kTruncated
  bool has_memory = false;
  MemOperand mem;
  uint8_t modrm_reg = 0;  // ModRM.reg (the /digit of group opcodes)
  CodeSize code_size = CodeSize::k64;
  const char* name = "unknown";
};

Instruction decode(std::span<const uint8_t> bytes, CodeSize code_size);

// Segment bases that matter in 64-bit mode (FS/GS overrides); in other modes every segment's.
struct SegmentBases {
  uint64_t base[6] = {};
};
SegmentBases segment_bases(const kvm_sregs& sregs);

// Linear address of `insn`'s memory operand at `rip` (RIP-relative operands count from the end of
// the instruction). Only meaningful when insn.has_memory.
uint64_t effective_address(const Instruction& insn, const kvm_regs& regs, const SegmentBases& bases,
                           uint64_t rip);

// The value of register `number` (x86 encoding) in `regs`.
uint64_t register_value(const kvm_regs& regs, uint8_t number);

// What keeps the guest from executing a recognised-but-not-completed instruction ("" if none).
const char* hint_for(Op op);

// "cc 0f 01 ca ..." for logs.
std::string hex_bytes(std::span<const uint8_t> bytes);

}  // namespace pier::pvm
