// Fuzzes load_kernel end to end into a small guest. The first byte picks the boot method and
// whether the rest is a whole file (any format) or the kernel proper, which the harness wraps
// the way a bzImage carries it: made a plausible ELF, compressed as an lz4 legacy frame and put
// behind a valid setup header, so that most runs reach the streamed ELF loading.
#include <elf.h>
#include <lz4.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

#include "boot/elf.hpp"
#include "boot/kernel_loader.hpp"
#include "vmm/error.hpp"

namespace {

// Errors are one line, and "internal:" ones mean pier's own invariants broke.
void check_error(const pier::Error& e) {
  const std::string_view message = e.what();
  if (message.find('\n') != message.npos || message.starts_with("internal:")) std::abort();
}

using pier::boot::BootMethod;

constexpr uint64_t kRam = 64 << 20;

const pier::GuestMemory& memory() {
  static const auto m = pier::GuestMemory::create(kRam);
  return m;
}

void put_le(std::vector<uint8_t>& f, size_t at, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) f[at + i] = static_cast<uint8_t>(value >> (8 * i));
}

// As in elf_fuzz.cpp: a valid ELF header and program headers folded into the guest.
void make_plausible_elf(std::vector<uint8_t>& file) {
  if (file.size() < sizeof(Elf64_Ehdr) + sizeof(Elf64_Phdr)) return;
  Elf64_Ehdr eh;
  std::memcpy(&eh, file.data(), sizeof(eh));
  std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
  eh.e_ident[EI_CLASS] = ELFCLASS64;
  eh.e_ident[EI_DATA] = ELFDATA2LSB;
  eh.e_ident[EI_VERSION] = EV_CURRENT;
  eh.e_type = ET_EXEC;
  eh.e_machine = EM_X86_64;
  eh.e_version = EV_CURRENT;
  eh.e_phoff = sizeof(Elf64_Ehdr);
  eh.e_phentsize = sizeof(Elf64_Phdr);
  const size_t room = (file.size() - sizeof(Elf64_Ehdr)) / sizeof(Elf64_Phdr);
  eh.e_phnum = static_cast<uint16_t>(1 + eh.e_phnum % std::min<size_t>(room, 4));
  for (size_t i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph;
    uint8_t* at = file.data() + sizeof(Elf64_Ehdr) + i * sizeof(Elf64_Phdr);
    std::memcpy(&ph, at, sizeof(ph));
    ph.p_type = PT_LOAD;
    ph.p_paddr = (1 << 20) + ph.p_paddr % kRam;
    ph.p_offset %= file.size() + 16;
    ph.p_filesz %= 1 << 16;
    ph.p_memsz = ph.p_filesz + ph.p_memsz % (1 << 16);
    if (i == 0) eh.e_entry = ph.p_paddr + (eh.e_entry % (ph.p_memsz + 1));
    std::memcpy(at, &ph, sizeof(ph));
  }
  std::memcpy(file.data(), &eh, sizeof(eh));
}

std::vector<uint8_t> wrap_in_bzimage(std::span<const uint8_t> vmlinux) {
  std::vector<uint8_t> payload;
  payload.resize(4);
  put_le(payload, 0, 0x184c2102, 4);
  if (!vmlinux.empty()) {
    std::vector<char> block(
        static_cast<size_t>(LZ4_compressBound(static_cast<int>(vmlinux.size()))));
    const int n =
        LZ4_compress_default(reinterpret_cast<const char*>(vmlinux.data()), block.data(),
                             static_cast<int>(vmlinux.size()), static_cast<int>(block.size()));
    if (n <= 0) std::abort();
    const size_t at = payload.size();
    payload.resize(at + 4);
    put_le(payload, at, static_cast<uint32_t>(n), 4);
    payload.insert(payload.end(), block.begin(), block.begin() + n);
  }
  const size_t trailer = payload.size();
  payload.resize(trailer + 4);
  put_le(payload, trailer, vmlinux.size(), 4);

  constexpr size_t kSetupSize = 2 * 512;  // setup_sects = 1
  std::vector<uint8_t> f(kSetupSize + payload.size(), 0);
  f[0x1f1] = 1;
  put_le(f, 0x1fe, 0xaa55, 2);
  f[0x200] = 0xeb;
  f[0x201] = 0x6a;
  std::memcpy(&f[0x202], "HdrS", 4);
  put_le(f, 0x206, 0x020f, 2);
  f[0x211] = 1;
  put_le(f, 0x22c, 0x7fffffff, 4);
  put_le(f, 0x230, 0x200000, 4);
  f[0x234] = 1;
  put_le(f, 0x236, 0x7f, 2);
  put_le(f, 0x238, 2047, 4);
  put_le(f, 0x248, 0, 4);
  put_le(f, 0x24c, payload.size(), 4);
  put_le(f, 0x258, 0x1000000, 8);
  put_le(f, 0x260, 0x100000, 4);
  std::copy(payload.begin(), payload.end(), f.begin() + kSetupSize);
  return f;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const BootMethod method = (data[0] & 1) != 0 ? BootMethod::kDirect : BootMethod::kBzImage;
  std::vector<uint8_t> file(data + 1, data + size);
  if ((data[0] & 2) != 0) {
    make_plausible_elf(file);
    if ((data[0] & 4) != 0) file = wrap_in_bzimage(file);
  }
  try {
    const auto k = pier::boot::load_kernel(memory(), file, method);
    if (k.image_start >= k.image_end || k.image_end > kRam) std::abort();
    if (k.method == BootMethod::kDirect && (k.entry < k.image_start || k.entry >= k.image_end)) {
      std::abort();
    }
    // An ELF (recognised first) has no setup header, a bzImage always has one.
    if (pier::boot::is_elf(file) != k.setup_header.empty()) std::abort();
  } catch (const pier::Error& e) {
    check_error(e);
  }
  return 0;
}
