#include "vmm/pvm/decoder.hpp"

#include <fmt/format.h>

namespace pier::pvm {
namespace {

class Reader {
 public:
  explicit Reader(std::span<const uint8_t> bytes) : bytes_(bytes) {}
  bool has(size_t n) const { return pos_ + n <= bytes_.size(); }
  uint8_t peek() const { return bytes_[pos_]; }
  uint8_t u8() { return bytes_[pos_++]; }
  int64_t s8() { return static_cast<int8_t>(u8()); }
  int64_t s16() {
    const uint16_t v = static_cast<uint16_t>(bytes_[pos_] | (bytes_[pos_ + 1] << 8));
    pos_ += 2;
    return static_cast<int16_t>(v);
  }
  int64_t s32() {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(bytes_[pos_ + i]) << (8 * i);
    pos_ += 4;
    return static_cast<int32_t>(v);
  }
  size_t pos() const { return pos_; }

 private:
  std::span<const uint8_t> bytes_;
  size_t pos_ = 0;
};

struct Prefixes {
  bool lock = false, rep = false, repne = false, opsize = false, addrsize = false;
  uint8_t rex = 0;
  bool has_segment = false;
  Segment segment = Segment::kDs;
  bool rex_w() const { return rex & 8; }
  bool rex_r() const { return rex & 4; }
  bool rex_x() const { return rex & 2; }
  bool rex_b() const { return rex & 1; }
};

Instruction truncated() {
  Instruction insn;
  insn.op = Op::kTruncated;
  insn.name = "truncated";
  return insn;
}

// Parses ModRM (+ SIB + displacement) into insn; false when the bytes run out.
bool parse_modrm(Reader& r, const Prefixes& p, CodeSize code_size, Instruction& insn,
                 uint8_t& mod) {
  if (!r.has(1)) return false;
  const uint8_t modrm = r.u8();
  mod = modrm >> 6;
  insn.modrm_reg = static_cast<uint8_t>(((modrm >> 3) & 7) | (p.rex_r() ? 8 : 0));
  const uint8_t rm = modrm & 7;
  if (mod == 3) return true;

  insn.has_memory = true;
  MemOperand& m = insn.mem;
  const uint8_t default_size = code_size == CodeSize::k64 ? 8 : code_size == CodeSize::k32 ? 4 : 2;
  m.address_size = default_size;
  if (p.addrsize) m.address_size = default_size == 8 ? 4 : default_size == 4 ? 2 : 4;
  if (p.has_segment) m.segment = p.segment;

  if (m.address_size == 2) {
    static constexpr uint8_t kBase[8] = {3, 3, 5, 5, 6, 7, 5, 3};  // bx bx bp bp si di bp bx
    static constexpr uint8_t kIndex[8] = {
        6, 7, 6, 7, MemOperand::kNone, MemOperand::kNone, MemOperand::kNone, MemOperand::kNone};
    if (mod == 0 && rm == 6) {
      if (!r.has(2)) return false;
      m.disp = r.s16();
      return true;
    }
    m.base = kBase[rm];
    m.index = kIndex[rm];
    if (!p.has_segment && (rm == 2 || rm == 3 || rm == 6)) m.segment = Segment::kSs;
    if (mod == 1) {
      if (!r.has(1)) return false;
      m.disp = r.s8();
    } else if (mod == 2) {
      if (!r.has(2)) return false;
      m.disp = r.s16();
    }
    return true;
  }

  if (rm == 4) {
    if (!r.has(1)) return false;
    const uint8_t sib = r.u8();
    m.scale = static_cast<uint8_t>(1u << (sib >> 6));
    const uint8_t index = static_cast<uint8_t>(((sib >> 3) & 7) | (p.rex_x() ? 8 : 0));
    if (index != 4) m.index = index;
    const uint8_t base = sib & 7;
    if (base == 5 && mod == 0) {
      if (!r.has(4)) return false;
      m.disp = r.s32();
    } else {
      m.base = static_cast<uint8_t>(base | (p.rex_b() ? 8 : 0));
    }
  } else if (rm == 5 && mod == 0) {
    if (!r.has(4)) return false;
    m.disp = r.s32();
    if (code_size == CodeSize::k64) m.base = MemOperand::kRip;
    return true;
  } else {
    m.base = static_cast<uint8_t>(rm | (p.rex_b() ? 8 : 0));
  }
  if (!p.has_segment && (m.base == 4 || m.base == 5)) m.segment = Segment::kSs;
  if (mod == 1) {
    if (!r.has(1)) return false;
    m.disp += r.s8();
  } else if (mod == 2) {
    if (!r.has(4)) return false;
    m.disp += r.s32();
  }
  return true;
}

Instruction finish(Instruction insn, Op op, const char* name, const Reader& r) {
  insn.op = op;
  insn.name = name;
  insn.length = op == Op::kUnknown ? 0 : static_cast<uint8_t>(r.pos());
  return insn;
}

// 0f ae: fxsave/fxrstor/ldmxcsr/stmxcsr/xsave/xrstor/xsaveopt/clflush, fences, fs/gs base.
Instruction decode_0fae(Reader& r, const Prefixes& p, CodeSize cs, Instruction insn) {
  uint8_t mod = 0;
  if (!parse_modrm(r, p, cs, insn, mod)) return truncated();
  const unsigned digit = insn.modrm_reg & 7;
  if (mod == 3) {
    if (p.rep && digit <= 3) {
      static constexpr const char* kNames[4] = {"rdfsbase", "rdgsbase", "wrfsbase", "wrgsbase"};
      return finish(insn, Op::kFsGsBase, kNames[digit], r);
    }
    if (digit == 5) return finish(insn, Op::kOther, "lfence", r);
    if (digit == 6) return finish(insn, Op::kOther, "mfence", r);
    if (digit == 7) return finish(insn, Op::kOther, "sfence", r);
    return finish(insn, Op::kUnknown, "unknown", r);
  }
  switch (digit) {
    case 0:
      return finish(insn, Op::kOther, p.rex_w() ? "fxsave64" : "fxsave", r);
    case 1:
      return finish(insn, Op::kOther, p.rex_w() ? "fxrstor64" : "fxrstor", r);
    case 2:
      return finish(insn, Op::kLdmxcsr, "ldmxcsr", r);
    case 3:
      return finish(insn, Op::kStmxcsr, "stmxcsr", r);
    case 4:
      return finish(insn, Op::kXsaveFamily, p.rex_w() ? "xsave64" : "xsave", r);
    case 5:
      return finish(insn, Op::kXsaveFamily, p.rex_w() ? "xrstor64" : "xrstor", r);
    case 6:
      if (p.opsize) return finish(insn, Op::kOther, "clwb", r);
      return finish(insn, Op::kXsaveFamily, p.rex_w() ? "xsaveopt64" : "xsaveopt", r);
    default:
      return finish(insn, Op::kOther, p.opsize ? "clflushopt" : "clflush", r);
  }
}

// 0f c7: cmpxchg8b/16b, xrstors/xsavec/xsaves, rdrand/rdseed/rdpid.
Instruction decode_0fc7(Reader& r, const Prefixes& p, CodeSize cs, Instruction insn) {
  uint8_t mod = 0;
  if (!parse_modrm(r, p, cs, insn, mod)) return truncated();
  const unsigned digit = insn.modrm_reg & 7;
  if (mod == 3) {
    if (digit == 6) return finish(insn, Op::kRdrand, "rdrand", r);
    if (digit == 7) {
      if (p.rep) return finish(insn, Op::kRdpid, "rdpid", r);
      return finish(insn, Op::kRdseed, "rdseed", r);
    }
    return finish(insn, Op::kUnknown, "unknown", r);
  }
  switch (digit) {
    case 1:
      if (p.rex_w())
        return finish(insn, Op::kCmpxchg16b, p.lock ? "lock cmpxchg16b" : "cmpxchg16b", r);
      return finish(insn, Op::kOther, p.lock ? "lock cmpxchg8b" : "cmpxchg8b", r);
    case 3:
      return finish(insn, Op::kXsaveFamily, "xrstors", r);
    case 4:
      return finish(insn, Op::kXsaveFamily, "xsavec", r);
    case 5:
      return finish(insn, Op::kXsaveFamily, "xsaves", r);
    default:
      return finish(insn, Op::kUnknown, "unknown", r);
  }
}

// 0f 01 with a register-form ModRM: the system instructions encoded in the ModRM byte.
Instruction decode_0f01(Reader& r, const Prefixes& p, CodeSize cs, Instruction insn) {
  if (!r.has(1)) return truncated();
  const uint8_t modrm = r.peek();
  if ((modrm >> 6) == 3) {
    r.u8();
    insn.modrm_reg = (modrm >> 3) & 7;
    switch (modrm) {
      case 0xca:
        return finish(insn, Op::kClac, "clac", r);
      case 0xcb:
        return finish(insn, Op::kStac, "stac", r);
      case 0xd0:
        return finish(insn, Op::kXsaveFamily, "xgetbv", r);
      case 0xd1:
        return finish(insn, Op::kXsaveFamily, "xsetbv", r);
      case 0xe8:
        return finish(insn, Op::kOther, "serialize", r);
      case 0xee:
        return finish(insn, Op::kPkru, "rdpkru", r);
      case 0xef:
        return finish(insn, Op::kPkru, "wrpkru", r);
      case 0xf8:
        return finish(insn, Op::kOther, "swapgs", r);
      case 0xf9:
        return finish(insn, Op::kOther, "rdtscp", r);
      default:
        return finish(insn, Op::kOther, "0f 01 system instruction", r);
    }
  }
  uint8_t mod = 0;
  if (!parse_modrm(r, p, cs, insn, mod)) return truncated();
  static constexpr const char* kNames[8] = {"sgdt", "sidt",     "lgdt", "lidt",
                                            "smsw", "0f 01 /5", "lmsw", "invlpg"};
  return finish(insn, Op::kOther, kNames[insn.modrm_reg & 7], r);
}

}  // namespace

Instruction decode(std::span<const uint8_t> bytes, CodeSize code_size) {
  Reader r(bytes);
  Prefixes p;
  Instruction insn;
  insn.code_size = code_size;
  // Legacy prefixes and (64-bit mode) REX prefixes; a REX only counts right before the opcode.
  for (int n = 0;; ++n) {
    if (n == 15 || !r.has(1)) return truncated();
    const uint8_t b = r.peek();
    bool prefix = true;
    switch (b) {
      case 0xf0:
        p.lock = true;
        break;
      case 0xf2:
        p.repne = true;
        p.rep = false;
        break;
      case 0xf3:
        p.rep = true;
        p.repne = false;
        break;
      case 0x66:
        p.opsize = true;
        break;
      case 0x67:
        p.addrsize = true;
        break;
      case 0x26:
        p.has_segment = true;
        p.segment = Segment::kEs;
        break;
      case 0x2e:
        p.has_segment = true;
        p.segment = Segment::kCs;
        break;
      case 0x36:
        p.has_segment = true;
        p.segment = Segment::kSs;
        break;
      case 0x3e:
        p.has_segment = true;
        p.segment = Segment::kDs;
        break;
      case 0x64:
        p.has_segment = true;
        p.segment = Segment::kFs;
        break;
      case 0x65:
        p.has_segment = true;
        p.segment = Segment::kGs;
        break;
      default:
        prefix = false;
    }
    if (prefix) {
      p.rex = 0;  // a REX before a legacy prefix is ignored
      r.u8();
      continue;
    }
    if (code_size == CodeSize::k64 && (b & 0xf0) == 0x40) {
      p.rex = b;
      r.u8();
      continue;
    }
    break;
  }
  // In 64-bit mode ES/CS/SS/DS overrides are ignored.
  if (code_size == CodeSize::k64 && p.has_segment && p.segment != Segment::kFs &&
      p.segment != Segment::kGs) {
    p.has_segment = false;
    p.segment = Segment::kDs;
  }

  if (!r.has(1)) return truncated();
  const uint8_t op = r.u8();
  switch (op) {
    case 0xcc:
      return finish(insn, Op::kInt3, "int3", r);
    case 0x9b:
      return finish(insn, Op::kFwait, "fwait", r);
    case 0x90:
      if (p.rex_b()) break;  // xchg r8, rax
      return finish(insn, Op::kNop, p.rep ? "pause" : "nop", r);
    case 0xfc:
      return finish(insn, Op::kCld, "cld", r);
    case 0xc4:
    case 0xc5:
      if (code_size == CodeSize::k64 || (r.has(1) && (r.peek() >> 6) == 3))
        return finish(insn, Op::kSimd, "AVX (VEX-encoded) instruction", r);
      break;
    case 0x62:
      if (code_size == CodeSize::k64)
        return finish(insn, Op::kSimd, "AVX-512 (EVEX-encoded) instruction", r);
      break;
    case 0x0f: {
      if (!r.has(1)) return truncated();
      const uint8_t op2 = r.u8();
      switch (op2) {
        case 0x01:
          return decode_0f01(r, p, code_size, insn);
        case 0x0b:
          return finish(insn, Op::kOther, "ud2", r);
        case 0x1e:
          if (p.rep && r.has(1) && (r.peek() == 0xfa || r.peek() == 0xfb)) {
            const bool is64 = r.u8() == 0xfa;
            return finish(insn, Op::kNop, is64 ? "endbr64" : "endbr32", r);
          }
          [[fallthrough]];
        case 0x1f: {
          uint8_t mod = 0;
          if (!parse_modrm(r, p, code_size, insn, mod)) return truncated();
          return finish(insn, Op::kNop, "nop", r);
        }
        case 0x38:
        case 0x3a: {
          if (!r.has(1)) return truncated();
          const uint8_t op3 = r.u8();
          if (op2 == 0x38 && op3 == 0x82 && p.opsize) {
            uint8_t mod = 0;
            if (!parse_modrm(r, p, code_size, insn, mod)) return truncated();
            return finish(insn, Op::kInvpcid, "invpcid", r);
          }
          return finish(insn, Op::kSimd, "SSSE3/SSE4/AES/SHA instruction (0f 38/0f 3a map)", r);
        }
        case 0xae:
          return decode_0fae(r, p, code_size, insn);
        case 0xc7:
          return decode_0fc7(r, p, code_size, insn);
        case 0xb8:
          if (p.rep) {
            uint8_t mod = 0;
            if (!parse_modrm(r, p, code_size, insn, mod)) return truncated();
            return finish(insn, Op::kPopcnt, "popcnt", r);
          }
          break;
        default:
          break;
      }
      break;
    }
    default:
      break;
  }
  Instruction unknown;
  unknown.code_size = code_size;
  return unknown;
}

SegmentBases segment_bases(const kvm_sregs& sregs) {
  SegmentBases b;
  b.base[static_cast<int>(Segment::kEs)] = sregs.es.base;
  b.base[static_cast<int>(Segment::kCs)] = sregs.cs.base;
  b.base[static_cast<int>(Segment::kSs)] = sregs.ss.base;
  b.base[static_cast<int>(Segment::kDs)] = sregs.ds.base;
  b.base[static_cast<int>(Segment::kFs)] = sregs.fs.base;
  b.base[static_cast<int>(Segment::kGs)] = sregs.gs.base;
  return b;
}

uint64_t register_value(const kvm_regs& regs, uint8_t number) {
  switch (number) {
    case 0:
      return regs.rax;
    case 1:
      return regs.rcx;
    case 2:
      return regs.rdx;
    case 3:
      return regs.rbx;
    case 4:
      return regs.rsp;
    case 5:
      return regs.rbp;
    case 6:
      return regs.rsi;
    case 7:
      return regs.rdi;
    case 8:
      return regs.r8;
    case 9:
      return regs.r9;
    case 10:
      return regs.r10;
    case 11:
      return regs.r11;
    case 12:
      return regs.r12;
    case 13:
      return regs.r13;
    case 14:
      return regs.r14;
    case 15:
      return regs.r15;
    default:
      return 0;
  }
}

uint64_t effective_address(const Instruction& insn, const kvm_regs& regs, const SegmentBases& bases,
                           uint64_t rip) {
  const MemOperand& m = insn.mem;
  uint64_t offset = static_cast<uint64_t>(m.disp);
  if (m.base == MemOperand::kRip) {
    offset += rip + insn.length;
  } else if (m.base != MemOperand::kNone) {
    offset += register_value(regs, m.base);
  }
  if (m.index != MemOperand::kNone) offset += register_value(regs, m.index) * m.scale;
  if (m.address_size == 4) offset &= 0xffff'ffffull;
  if (m.address_size == 2) offset &= 0xffffull;
  // 64-bit mode: only FS and GS have bases. Other modes: every segment.
  if (insn.code_size == CodeSize::k64 && m.segment != Segment::kFs && m.segment != Segment::kGs)
    return offset;
  const uint64_t linear = offset + bases.base[static_cast<int>(m.segment)];
  return insn.code_size == CodeSize::k64 ? linear : (linear & 0xffff'ffffull);
}

const char* hint_for(Op op) {
  switch (op) {
    case Op::kXsaveFamily:
      return "XSAVE: boot the guest with noxsave";
    case Op::kCmpxchg16b:
      return "CMPXCHG16B: boot the guest with clearcpuid=cx16";
    case Op::kPopcnt:
      return "POPCNT: boot the guest with clearcpuid=popcnt";
    case Op::kRdrand:
    case Op::kRdseed:
      return "RDRAND/RDSEED: boot the guest with clearcpuid=rdrand,rdseed";
    case Op::kRdpid:
      return "RDPID: boot the guest with clearcpuid=rdpid";
    case Op::kFsGsBase:
      return "FSGSBASE: boot the guest with clearcpuid=fsgsbase";
    case Op::kPkru:
      return "PKU: boot the guest with clearcpuid=pku";
    case Op::kInvpcid:
      return "INVPCID: boot the guest with clearcpuid=invpcid";
    case Op::kSimd:
      return "SIMD: hide the instruction set the guest checked with clearcpuid=";
    default:
      return "";
  }
}

std::string hex_bytes(std::span<const uint8_t> bytes) {
  std::string out;
  for (uint8_t b : bytes) {
    if (!out.empty()) out += ' ';
    out += fmt::format("{:02x}", b);
  }
  return out;
}

}  // namespace pier::pvm
