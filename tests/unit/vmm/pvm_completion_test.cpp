// How the kvm_pvm assist completes emulation failures and #PF-handler breakpoints, decided from
// registers and fake guest memory (no KVM).
#include "vmm/pvm/completion.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "pvm_test_util.hpp"

namespace pier::pvm {
namespace {

using test::FakePaging;

constexpr uint64_t kKernelText = 0xffff'ffff'8100'0000ull;  // -> 0x200000
constexpr uint64_t kKernelData = 0xffff'8880'0000'0000ull;  // -> 0 (1 GiB page)
constexpr uint64_t kUserText = 0x40'1000;                   // -> 0x300000
constexpr uint64_t kLstar = kKernelText + 0x800;
constexpr uint64_t kPfHandler = kKernelText + 0x400;

class Completions : public ::testing::Test {
 protected:
  Completions() : paging(mem, 0x100000) {
    paging.map(kKernelText, 0x200000);
    paging.map(kKernelData, 0, 3);
    paging.map(kUserText, 0x300000, 1, test::kP | test::kUs);
    paging.fill_sregs(sregs);
    regs.rip = kKernelText;
    regs.rflags = 0x2;
  }
  void code(uint64_t gva_offset, std::vector<uint8_t> bytes) {
    mem.load(0x200000 + gva_offset, bytes, "code");
    regs.rip = kKernelText + gva_offset;
  }
  EmulationPlan plan() {
    return plan_emulation(mem, regs, sregs, read_instruction_bytes(mem, regs, sregs));
  }

  GuestMemory mem = GuestMemory::create(64 << 20);
  FakePaging paging;
  kvm_regs regs{};
  kvm_sregs sregs{};
};

TEST_F(Completions, Int3AdvancesRipAndInjectsBreakpoint) {
  code(0x10, {0xcc, 0x90});
  const EmulationPlan p = plan();
  ASSERT_TRUE(p.ok) << p.problem;
  EXPECT_EQ(p.kind, Completion::kInt3);
  EXPECT_EQ(p.regs.rip, kKernelText + 0x11);
  EXPECT_EQ(p.inject_vector, 3);
  EXPECT_FALSE(p.inject_error_code);
}

TEST_F(Completions, FwaitAndNopsAdvance) {
  code(0x20, {0x9b});
  EXPECT_EQ(plan().regs.rip, kKernelText + 0x21);
  EXPECT_EQ(plan().kind, Completion::kFwait);
  code(0x30, {0xf3, 0x0f, 0x1e, 0xfa});
  EXPECT_EQ(plan().regs.rip, kKernelText + 0x34);
  EXPECT_FALSE(plan().inject_vector);
}

TEST_F(Completions, ClacClearsAcAndStacSetsIt) {
  regs.rflags = 0x2 | (1u << 18) | (1u << 9);
  code(0x40, {0x0f, 0x01, 0xca});
  EmulationPlan p = plan();
  ASSERT_TRUE(p.ok);
  EXPECT_EQ(p.regs.rflags, 0x2u | (1u << 9));
  EXPECT_EQ(p.regs.rip, kKernelText + 0x43);
  regs.rflags = 0x2;
  code(0x50, {0x0f, 0x01, 0xcb});
  p = plan();
  EXPECT_EQ(p.kind, Completion::kStac);
  EXPECT_EQ(p.regs.rflags, 0x2u | (1u << 18));
}

TEST_F(Completions, LdmxcsrReadsItsOperandThroughThePageTables) {
  mem.write_obj<uint32_t>(0x1234, 0x1fa0);
  regs.rdi = kKernelData + 0x1230;
  code(0x60, {0x0f, 0xae, 0x57, 0x04});  // ldmxcsr 4(%rdi)
  const EmulationPlan p = plan();
  ASSERT_TRUE(p.ok) << p.problem;
  EXPECT_EQ(p.kind, Completion::kLdmxcsr);
  EXPECT_EQ(p.load_mxcsr, 0x1fa0u);
  EXPECT_EQ(p.regs.rip, kKernelText + 0x64);
}

TEST_F(Completions, LdmxcsrWithReservedBitsRaisesGeneralProtection) {
  mem.write_obj<uint32_t>(0x2000, 0x10000);
  regs.rdi = kKernelData + 0x2000;
  code(0x60, {0x0f, 0xae, 0x17});  // ldmxcsr (%rdi)
  const EmulationPlan p = plan();
  ASSERT_TRUE(p.ok);
  EXPECT_EQ(p.inject_vector, 13);
  EXPECT_EQ(p.inject_error_code, 0u);
  EXPECT_EQ(p.regs.rip, regs.rip);  // faults: RIP stays
  EXPECT_FALSE(p.load_mxcsr);
}

TEST_F(Completions, LdmxcsrWithAnUnmappedOperandIsNotCompleted) {
  regs.rdi = 0x7000'0000'0000ull;
  code(0x60, {0x0f, 0xae, 0x17});
  const EmulationPlan p = plan();
  EXPECT_FALSE(p.ok);
  EXPECT_NE(p.problem.find("not mapped"), std::string::npos) << p.problem;
}

TEST_F(Completions, StmxcsrGivesTheAddress) {
  regs.rsp = kKernelData + 0x3000;
  code(0x70, {0x0f, 0xae, 0x5c, 0x24, 0x08});  // stmxcsr 8(%rsp)
  const EmulationPlan p = plan();
  ASSERT_TRUE(p.ok);
  EXPECT_EQ(p.store_mxcsr_at, kKernelData + 0x3008);
}

// From CPL3 the operand is checked as the CPU would: MXCSR is never stored into the kernel's
// memory or a read-only page, nor loaded from the kernel's; the program gets the #PF instead.
TEST_F(Completions, UserMxcsrAccessesTheTablesForbidBecomePageFaults) {
  sregs.cs.selector = 0x33;
  sregs.cs.dpl = 3;
  mem.load(0x300000 + 0x70, std::vector<uint8_t>{0x0f, 0xae, 0x5c, 0x24, 0x08}, "stmxcsr 8(%rsp)");
  mem.load(0x300000 + 0x80, std::vector<uint8_t>{0x0f, 0xae, 0x17}, "ldmxcsr (%rdi)");
  struct Case {
    uint64_t rip, operand;
    uint32_t error_code;
  } cases[] = {
      {kUserText + 0x70, kKernelData + 0x3000, 0x7},  // store into the kernel: P|W|U
      {kUserText + 0x70, kUserText, 0x7},             // store into read-only user text
      {kUserText + 0x80, kKernelData + 0x2000, 0x5},  // load from the kernel: P|U
  };
  for (const Case& c : cases) {
    regs.rip = c.rip;
    regs.rsp = c.operand - 8;
    regs.rdi = c.operand;
    const EmulationPlan p = plan();
    ASSERT_TRUE(p.ok) << p.problem;
    EXPECT_EQ(p.inject_vector, 14);
    EXPECT_EQ(p.inject_error_code, c.error_code);
    EXPECT_EQ(p.fault_address, c.operand);
    EXPECT_EQ(p.regs.rip, c.rip);  // faults: RIP stays
    EXPECT_FALSE(p.store_mxcsr_at);
    EXPECT_FALSE(p.load_mxcsr);
  }
  // The same store from the kernel is completed.
  sregs.cs.selector = 0x10;
  sregs.cs.dpl = 0;
  regs.rip = kKernelText + 0x70;
  code(0x70, {0x0f, 0xae, 0x5c, 0x24, 0x08});
  regs.rsp = kKernelData + 0x3000 - 8;
  EXPECT_EQ(plan().store_mxcsr_at, kKernelData + 0x3000);
}

TEST_F(Completions, UnsupportedInstructionsStopWithTheBytesAndAHint) {
  code(0x80, {0xf0, 0x48, 0x0f, 0xc7, 0x0f});
  EmulationPlan p = plan();
  EXPECT_FALSE(p.ok);
  EXPECT_NE(p.problem.find("cmpxchg16b"), std::string::npos) << p.problem;
  EXPECT_NE(p.problem.find("clearcpuid=cx16"), std::string::npos) << p.problem;
  EXPECT_NE(p.problem.find("f0 48 0f c7 0f"), std::string::npos) << p.problem;
  code(0x90, {0x48, 0x0f, 0xae, 0x2f});
  EXPECT_NE(plan().problem.find("noxsave"), std::string::npos);
  code(0xa0, {0x48, 0x89, 0xc3});
  p = plan();
  EXPECT_FALSE(p.ok);
  EXPECT_NE(p.problem.find("unknown instruction [48 89 c3"), std::string::npos) << p.problem;
}

TEST_F(Completions, UnmappedRipIsReported) {
  regs.rip = 0x7000'0000'0000ull;
  const EmulationPlan p = plan();
  EXPECT_FALSE(p.ok);
  EXPECT_NE(p.problem.find("not mapped"), std::string::npos);
}

TEST_F(Completions, InstructionBytesStopAtTheEndOfTheMapping) {
  // The last byte of the mapped kernel page, the next page unmapped.
  code(0xfff, {0xcc});
  const std::string bytes = read_instruction_bytes(mem, regs, sregs);
  EXPECT_EQ(bytes.size(), 1u);
  EXPECT_TRUE(plan().ok);
}

TEST_F(Completions, ThirtyTwoBitCodeUsesCsBase) {
  sregs.efer = 0;
  sregs.cr0 = 1;  // protected mode, no paging
  sregs.cs.l = 0;
  sregs.cs.db = 1;
  sregs.cs.base = 0x10000;
  mem.load(0x10100, std::vector<uint8_t>{0xcc}, "code");
  regs.rip = 0x100;
  const EmulationPlan p = plan();
  ASSERT_TRUE(p.ok) << p.problem;
  EXPECT_EQ(p.regs.rip, 0x101u);
}

// ---- the #PF-handler breakpoint ------------------------------------------------------------

class PageFaultHits : public Completions {
 protected:
  PageFaultHits() {
    // IDT at kKernelData + 0x5000 with vector 14 -> kPfHandler (interrupt gate, present).
    idt = kKernelData + 0x5000;
    sregs.idt.base = idt;
    sregs.idt.limit = 256 * 16 - 1;
    uint8_t gate[16] = {};
    const uint64_t h = kPfHandler;
    gate[0] = h & 0xff;
    gate[1] = (h >> 8) & 0xff;
    gate[2] = 0x10;
    gate[5] = 0x8e;
    gate[6] = (h >> 16) & 0xff;
    gate[7] = (h >> 24) & 0xff;
    for (int i = 0; i < 4; ++i) gate[8 + i] = (h >> (32 + 8 * i)) & 0xff;
    mem.load(0x5000 + 14 * 16, gate, "gate");
    // The handler starts with endbr64.
    mem.load(0x200000 + 0x400, std::vector<uint8_t>{0xf3, 0x0f, 0x1e, 0xfa}, "handler");
    // User code: "syscall" at kUserText + 0x10.
    mem.load(0x300000 + 0x10, std::vector<uint8_t>{0x0f, 0x05}, "user");
    msrs.star = (0x23ull << 48) | (0x10ull << 32);
    msrs.lstar = kLstar;
    msrs.sfmask = 0x47700;  // TF DF IF IOPL AC NT
    // At the breakpoint: RIP = handler, RSP = the frame on the kernel stack.
    regs.rip = kPfHandler;
    regs.rsp = kKernelData + 0x8000 - 48;
    regs.rcx = kUserText + 0x12;  // SYSCALL's return address
    regs.r11 = 0x246;             // user RFLAGS (IF set)
    frame.error = 0x15;           // present | user | instruction fetch
    frame.rip = kLstar;
    frame.cs = 0x33;
    frame.rflags = 0x46;
    frame.rsp = 0x7ffd'0000'1000ull;
    frame.ss = 0x2b;
    write_frame();
  }
  void write_frame() {
    const uint64_t f[6] = {frame.error, frame.rip, frame.cs, frame.rflags, frame.rsp, frame.ss};
    mem.load(0x8000 - 48, std::span(reinterpret_cast<const uint8_t*>(f), sizeof(f)), "frame");
  }
  PageFaultPlan hit() {
    const auto f = read_exception_frame(mem, regs, sregs);
    EXPECT_TRUE(f);
    return plan_page_fault_hit(mem, regs, sregs, *f, msrs);
  }

  uint64_t idt = 0;
  SyscallMsrs msrs;
  ExceptionFrame frame;
};

TEST_F(PageFaultHits, FindsTheHandlerInTheIdt) {
  EXPECT_EQ(page_fault_handler(mem, sregs), kPfHandler);
  sregs.idt.limit = 14 * 16 + 14;  // vector 14 cut off by the limit
  EXPECT_FALSE(page_fault_handler(mem, sregs));
  sregs.idt.limit = 0xfff;
  mem.write_obj<uint8_t>(0x5000 + 14 * 16 + 5, 0x0e);  // not present
  EXPECT_FALSE(page_fault_handler(mem, sregs));
  sregs.efer = 0;  // not long mode
  EXPECT_FALSE(page_fault_handler(mem, sregs));
}

TEST_F(PageFaultHits, UserSyscallFaultingAtLstarBecomesTheSyscall) {
  const PageFaultPlan p = hit();
  ASSERT_EQ(p.action, PageFaultPlan::Action::kSyscall);
  EXPECT_EQ(p.regs.rip, kLstar);
  EXPECT_EQ(p.regs.rsp, frame.rsp);
  EXPECT_EQ(p.regs.rcx, regs.rcx);
  EXPECT_EQ(p.regs.r11, regs.r11);
  EXPECT_EQ(p.regs.rflags, 0x46u);  // R11 0x246 with IF masked by SFMASK
  EXPECT_EQ(p.cs.selector, 0x10);
  EXPECT_EQ(p.cs.dpl, 0);
  EXPECT_EQ(p.cs.l, 1);
  EXPECT_EQ(p.ss.selector, 0x18);
  EXPECT_EQ(p.ss.dpl, 0);
  EXPECT_EQ(p.ss.db, 1);
}

// A user jump to LSTAR dressed as a SYSCALL (RCX after real 0f 05 bytes) picks R11 itself: the
// kernel's RFLAGS come from the CPU's frame, so no IOPL 3 even where SFMASK would not clear it.
TEST_F(PageFaultHits, KernelRflagsComeFromTheFrameNotFromR11) {
  msrs.sfmask = 0;
  regs.r11 = 0x3246 | (1u << 18);  // IOPL 3, AC
  frame.rflags = 0x246;
  write_frame();
  const PageFaultPlan p = hit();
  ASSERT_EQ(p.action, PageFaultPlan::Action::kSyscall);
  EXPECT_EQ(p.regs.rflags, 0x246u);
  EXPECT_EQ(p.regs.r11, regs.r11);  // the user's R11 stays R11, as after SYSCALL
}

TEST_F(PageFaultHits, UserJumpToLstarWithoutSyscallStaysAPageFault) {
  regs.rcx = kUserText + 0x40;  // no 0f 05 before it
  const PageFaultPlan p = hit();
  EXPECT_EQ(p.action, PageFaultPlan::Action::kStepOverEmulated);
}

TEST_F(PageFaultHits, KernelFaultsAndOtherUserFaultsStepOverEndbr) {
  frame.cs = 0x10;
  write_frame();
  PageFaultPlan p = hit();
  ASSERT_EQ(p.action, PageFaultPlan::Action::kStepOverEmulated);
  EXPECT_EQ(p.step.regs.rip, kPfHandler + 4);
  EXPECT_FALSE(p.step.inject_vector);

  frame.cs = 0x33;
  frame.rip = kUserText + 0x100;
  write_frame();
  p = hit();
  EXPECT_EQ(p.action, PageFaultPlan::Action::kStepOverEmulated);
}

TEST_F(PageFaultHits, UnknownLstarMeansNoSyscall) {
  msrs.lstar = 0;
  EXPECT_EQ(hit().action, PageFaultPlan::Action::kStepOverEmulated);
}

TEST_F(PageFaultHits, AHandlerStartingWithSomethingElseIsSingleStepped) {
  mem.load(0x200000 + 0x400, std::vector<uint8_t>{0x48, 0x89, 0xe5}, "handler");  // mov %rsp,%rbp
  frame.cs = 0x10;
  write_frame();
  EXPECT_EQ(hit().action, PageFaultPlan::Action::kStepOverSingleStep);
  // int3 as the first instruction must not be "stepped over" by injecting #BP.
  mem.load(0x200000 + 0x400, std::vector<uint8_t>{0xcc}, "handler");
  EXPECT_EQ(hit().action, PageFaultPlan::Action::kStepOverSingleStep);
}

TEST_F(PageFaultHits, UnreadableStackHasNoFrame) {
  regs.rsp = 0x7000'0000'0000ull;
  EXPECT_FALSE(read_exception_frame(mem, regs, sregs));
}

TEST(CompletionNames, EveryKindHasAName) {
  for (int i = 0; i < static_cast<int>(Completion::kCount); ++i) {
    EXPECT_STRNE(completion_name(static_cast<Completion>(i)), "?");
  }
}

}  // namespace
}  // namespace pier::pvm
