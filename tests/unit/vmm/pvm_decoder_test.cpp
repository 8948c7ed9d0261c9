// The kvm_pvm assist's instruction decoder: the instructions it completes, their lengths and
// memory operands, the ones it only names, and garbage that must not be over-read.
#include "vmm/pvm/decoder.hpp"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace pier::pvm {
namespace {

Instruction d(std::vector<uint8_t> bytes, CodeSize size = CodeSize::k64) {
  return decode(bytes, size);
}

TEST(PvmDecoder, CompletedInstructionsAndTheirLengths) {
  struct Case {
    std::vector<uint8_t> bytes;
    Op op;
    uint8_t length;
  } cases[] = {
      {{0xcc}, Op::kInt3, 1},
      {{0x9b}, Op::kFwait, 1},
      {{0x0f, 0x01, 0xca}, Op::kClac, 3},
      {{0x0f, 0x01, 0xcb}, Op::kStac, 3},
      {{0xfc}, Op::kCld, 1},
      {{0x90}, Op::kNop, 1},
      {{0xf3, 0x90}, Op::kNop, 2},                                            // pause
      {{0xf3, 0x0f, 0x1e, 0xfa}, Op::kNop, 4},                                // endbr64
      {{0x0f, 0x1f, 0x00}, Op::kNop, 3},                                      // nopl (%rax)
      {{0x0f, 0x1f, 0x40, 0x00}, Op::kNop, 4},                                // nopl 0(%rax)
      {{0x0f, 0x1f, 0x44, 0x00, 0x00}, Op::kNop, 5},                          // nopl 0(%rax,%rax)
      {{0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00}, Op::kNop, 9},  // nopw 0(...)
      {{0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00}, Op::kNop, 11},
      {{0x0f, 0xae, 0x10}, Op::kLdmxcsr, 3},                    // ldmxcsr (%rax)
      {{0x0f, 0xae, 0x5d, 0xfc}, Op::kStmxcsr, 4},              // stmxcsr -4(%rbp)
      {{0x0f, 0xae, 0x54, 0x24, 0x04}, Op::kLdmxcsr, 5},        // ldmxcsr 4(%rsp)
      {{0x0f, 0xae, 0x15, 0x78, 0x56, 0x34, 0x12}, Op::kLdmxcsr, 7},  // rip-relative
      {{0x41, 0x0f, 0xae, 0x10}, Op::kLdmxcsr, 4},              // ldmxcsr (%r8)
  };
  for (const auto& c : cases) {
    const Instruction insn = decode(c.bytes, CodeSize::k64);
    EXPECT_EQ(insn.op, c.op) << hex_bytes(c.bytes);
    EXPECT_EQ(insn.length, c.length) << hex_bytes(c.bytes);
  }
}

TEST(PvmDecoder, TrailingBytesAreNotPartOfTheInstruction) {
  const Instruction insn = d({0xcc, 0x0f, 0x0b, 0x90, 0x90});
  EXPECT_EQ(insn.op, Op::kInt3);
  EXPECT_EQ(insn.length, 1);
}

TEST(PvmDecoder, MemoryOperands) {
  kvm_regs regs{};
  regs.rax = 0x1000;
  regs.rbx = 0x20;
  regs.rsp = 0xffffc900'00003f00ull;
  regs.rbp = 0xffffc900'00004000ull;
  regs.r8 = 0x8888;
  regs.r13 = 0x1300;
  SegmentBases bases;
  bases.base[static_cast<int>(Segment::kGs)] = 0xffff8880'0fc00000ull;
  bases.base[static_cast<int>(Segment::kDs)] = 0x5555;  // ignored in 64-bit mode
  const uint64_t rip = 0xffffffff'81000000ull;

  auto ea = [&](std::vector<uint8_t> bytes) {
    const Instruction insn = decode(bytes, CodeSize::k64);
    EXPECT_TRUE(insn.has_memory) << hex_bytes(bytes);
    return effective_address(insn, regs, bases, rip);
  };
  EXPECT_EQ(ea({0x0f, 0xae, 0x10}), 0x1000u);                            // (%rax)
  EXPECT_EQ(ea({0x0f, 0xae, 0x5d, 0xfc}), regs.rbp - 4);                 // -4(%rbp)
  EXPECT_EQ(ea({0x0f, 0xae, 0x54, 0x24, 0x04}), regs.rsp + 4);           // 4(%rsp)
  EXPECT_EQ(ea({0x0f, 0xae, 0x14, 0x98}), 0x1000u + 0x20 * 4);           // (%rax,%rbx,4)
  EXPECT_EQ(ea({0x41, 0x0f, 0xae, 0x10}), 0x8888u);                      // (%r8)
  EXPECT_EQ(ea({0x41, 0x0f, 0xae, 0x55, 0x08}), 0x1308u);                // 8(%r13)
  EXPECT_EQ(ea({0x0f, 0xae, 0x15, 0x10, 0x00, 0x00, 0x00}), rip + 7 + 0x10);   // rip-relative
  EXPECT_EQ(ea({0x0f, 0xae, 0x15, 0xf0, 0xff, 0xff, 0xff}), rip + 7 - 0x10);   // negative
  EXPECT_EQ(ea({0x65, 0x0f, 0xae, 0x14, 0x25, 0x40, 0x00, 0x00, 0x00}),  // %gs:0x40
            0xffff8880'0fc00040ull);
  EXPECT_EQ(ea({0x67, 0x0f, 0xae, 0x10}), 0x1000u);  // 32-bit address size
}

TEST(PvmDecoder, ThirtyTwoAndSixteenBitAddressing) {
  kvm_regs regs{};
  regs.rbx = 0x100;
  regs.rsi = 0x20;
  regs.rbp = 0x300;
  SegmentBases bases;
  bases.base[static_cast<int>(Segment::kDs)] = 0x10000;
  bases.base[static_cast<int>(Segment::kSs)] = 0x20000;
  // 32-bit code: ldmxcsr 8(%ebx) -> DS base + 0x108.
  Instruction insn = d({0x0f, 0xae, 0x53, 0x08}, CodeSize::k32);
  ASSERT_EQ(insn.op, Op::kLdmxcsr);
  EXPECT_EQ(insn.length, 4);
  EXPECT_EQ(effective_address(insn, regs, bases, 0), 0x10108u);
  // 32-bit code, disp32 absolute.
  insn = d({0x0f, 0xae, 0x15, 0x00, 0x10, 0x00, 0x00}, CodeSize::k32);
  EXPECT_EQ(insn.length, 7);
  EXPECT_EQ(effective_address(insn, regs, bases, 0), 0x11000u);
  // 16-bit: [bp+si+4] uses SS.
  insn = d({0x0f, 0xae, 0x52, 0x04}, CodeSize::k16);
  ASSERT_EQ(insn.op, Op::kLdmxcsr);
  EXPECT_EQ(insn.length, 4);
  EXPECT_EQ(effective_address(insn, regs, bases, 0), 0x20000u + 0x300 + 0x20 + 4);
  // 16-bit: [0x1234].
  insn = d({0x0f, 0xae, 0x16, 0x34, 0x12}, CodeSize::k16);
  EXPECT_EQ(insn.length, 5);
  EXPECT_EQ(effective_address(insn, regs, bases, 0), 0x11234u);
}

TEST(PvmDecoder, NamesWhatItDoesNotCompleteWithAHint) {
  struct Case {
    std::vector<uint8_t> bytes;
    Op op;
    const char* name;
  } cases[] = {
      {{0xf0, 0x48, 0x0f, 0xc7, 0x0f}, Op::kCmpxchg16b, "lock cmpxchg16b"},
      {{0x48, 0x0f, 0xae, 0x2f}, Op::kXsaveFamily, "xrstor64"},
      {{0x0f, 0xae, 0x2f}, Op::kXsaveFamily, "xrstor"},
      {{0x48, 0x0f, 0xc7, 0x1f}, Op::kXsaveFamily, "xrstors"},
      {{0x0f, 0x01, 0xd0}, Op::kXsaveFamily, "xgetbv"},
      {{0xf3, 0x48, 0x0f, 0xb8, 0xc7}, Op::kPopcnt, "popcnt"},
      {{0x48, 0x0f, 0xc7, 0xf0}, Op::kRdrand, "rdrand"},
      {{0x48, 0x0f, 0xc7, 0xf8}, Op::kRdseed, "rdseed"},
      {{0xf3, 0x0f, 0xc7, 0xf8}, Op::kRdpid, "rdpid"},
      {{0xf3, 0x48, 0x0f, 0xae, 0xd7}, Op::kFsGsBase, "wrfsbase"},
      {{0x0f, 0x01, 0xef}, Op::kPkru, "wrpkru"},
      {{0x66, 0x0f, 0x38, 0x82, 0x10}, Op::kInvpcid, "invpcid"},
  };
  for (const auto& c : cases) {
    const Instruction insn = decode(c.bytes, CodeSize::k64);
    EXPECT_EQ(insn.op, c.op) << hex_bytes(c.bytes);
    EXPECT_STREQ(insn.name, c.name) << hex_bytes(c.bytes);
    EXPECT_STRNE(hint_for(insn.op), "") << hex_bytes(c.bytes);
  }
  EXPECT_EQ(d({0xc5, 0xf8, 0x77}).op, Op::kSimd);        // vzeroupper
  EXPECT_EQ(d({0x66, 0x0f, 0x38, 0x00, 0xc1}).op, Op::kSimd);  // pshufb
  EXPECT_EQ(d({0x62, 0xf1, 0x7c, 0x48, 0x10, 0x01}).op, Op::kSimd);
  EXPECT_STREQ(hint_for(Op::kInt3), "");
}

TEST(PvmDecoder, OtherInstructionsAreUnknown) {
  EXPECT_EQ(d({0x48, 0x89, 0xc3}).op, Op::kUnknown);  // mov %rax,%rbx
  EXPECT_EQ(d({0x48, 0x89, 0xc3}).length, 0);
  EXPECT_EQ(d({0x41, 0x90}).op, Op::kUnknown);  // xchg %r8d,%eax is not a nop
  EXPECT_EQ(d({0x0f, 0x0b}).op, Op::kOther);    // ud2
}

TEST(PvmDecoder, RexBeforeALegacyPrefixIsIgnored) {
  // 48 f3 0f 1e fa: the REX does not apply; still endbr64 (5 bytes).
  const Instruction insn = d({0x48, 0xf3, 0x0f, 0x1e, 0xfa});
  EXPECT_EQ(insn.op, Op::kNop);
  EXPECT_EQ(insn.length, 5);
  // 41 then 0f ae 10: REX.B applies -> (%r8).
  EXPECT_EQ(d({0x41, 0x0f, 0xae, 0x10}).mem.base, 8);
  EXPECT_EQ(d({0x41, 0x66, 0x0f, 0xae, 0x10}).mem.base, 0);
}

TEST(PvmDecoder, TruncatedInputIsReportedNotOverRead) {
  const std::vector<std::vector<uint8_t>> cases = {
      {}, {0xf3}, {0x0f}, {0x0f, 0x01}, {0x0f, 0xae}, {0x0f, 0xae, 0x14},
      {0x0f, 0xae, 0x15, 0x00, 0x00}, {0x0f, 0xae, 0x50}, {0x48}, {0x66, 0x66, 0x66},
  };
  for (const auto& c : cases) {
    const Instruction insn = decode(c, CodeSize::k64);
    EXPECT_EQ(insn.op, Op::kTruncated) << hex_bytes(c);
    EXPECT_EQ(insn.length, 0) << hex_bytes(c);
  }
  // 15 prefixes and no opcode.
  EXPECT_EQ(d(std::vector<uint8_t>(20, 0x66)).op, Op::kTruncated);
}

TEST(PvmDecoder, RandomBytesNeverClaimMoreThanGiven) {
  std::mt19937 rng(1234);
  for (int i = 0; i < 200000; ++i) {
    std::vector<uint8_t> bytes(rng() % 16);
    for (auto& b : bytes) b = static_cast<uint8_t>(rng());
    for (CodeSize size : {CodeSize::k16, CodeSize::k32, CodeSize::k64}) {
      const Instruction insn = decode(bytes, size);
      ASSERT_LE(insn.length, bytes.size()) << hex_bytes(bytes);
      if (insn.op == Op::kInt3 || insn.op == Op::kFwait || insn.op == Op::kLdmxcsr) {
        ASSERT_GT(insn.length, 0) << hex_bytes(bytes);
      }
    }
  }
}

TEST(PvmDecoder, HexBytes) {
  const std::vector<uint8_t> bytes = {0x0f, 0x01, 0xca};
  EXPECT_EQ(hex_bytes(bytes), "0f 01 ca");
  EXPECT_EQ(hex_bytes({}), "");
}

}  // namespace
}  // namespace pier::pvm
