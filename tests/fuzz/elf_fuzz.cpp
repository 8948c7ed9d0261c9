// Fuzzes the ELF64 parser, the PVH note walk and both loaders (whole file and streamed in pieces) against a small
// guest: anything accepted must be consistent, anything else must be a one-line pier::Error.
#include <elf.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

#include "boot/elf.hpp"
#include "vmm/error.hpp"

namespace {

constexpr uint64_t kRam = 64 << 20;

const pier::GuestMemory& memory() {
  static const auto m = pier::GuestMemory::create(kRam);
  return m;
}

// Makes the input a plausible x86-64 executable: a valid ELF header with its program headers
// right after it, and segment addresses and sizes folded into the guest, so that most runs get
// past the identity checks into the segment and placement logic.
void make_plausible(std::vector<uint8_t>& file) {
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
  eh.e_phnum = static_cast<uint16_t>(1 + eh.e_phnum % std::min<size_t>(room, 8));
  for (size_t i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph;
    uint8_t* at = file.data() + sizeof(Elf64_Ehdr) + i * sizeof(Elf64_Phdr);
    std::memcpy(&ph, at, sizeof(ph));
    ph.p_type = (ph.p_type & 3) == 0 ? PT_NOTE : PT_LOAD;
    ph.p_paddr %= kRam + (1 << 20);
    ph.p_offset %= file.size() + 16;
    ph.p_filesz %= 1 << 16;
    ph.p_memsz = ph.p_filesz + ph.p_memsz % (1 << 16);
    if (i == 0) eh.e_entry = ph.p_paddr + (eh.e_entry % (ph.p_memsz + 1));
    std::memcpy(at, &ph, sizeof(ph));
  }
  std::memcpy(file.data(), &eh, sizeof(eh));
}

// Errors are one line, and "internal:" ones mean pier's own invariants broke.
void check_error(const pier::Error& e) {
  const std::string_view message = e.what();
  if (message.find('\n') != message.npos || message.starts_with("internal:")) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pier::boot;
  if (size < 2) return 0;
  const uint8_t mode = data[0];
  const size_t piece = 1 + data[1] % 97;
  std::vector<uint8_t> file(data + 2, data + size);
  if ((mode & 1) != 0) make_plausible(file);

  bool parsed = false;
  try {
    const ElfImage image = parse_elf64(file);
    parsed = true;
    for (size_t i = 0; i < image.segments.size(); ++i) {
      const auto& s = image.segments[i];
      if (s.filesz > s.memsz || s.offset + s.filesz > file.size() || s.memsz == 0) std::abort();
      if (i > 0 && image.segments[i - 1].paddr + image.segments[i - 1].memsz > s.paddr) {
        std::abort();
      }
    }
    if (image.entry < image.lowest_paddr || image.entry >= image.highest_end) std::abort();
    // The PVH note walk over the PT_NOTE segments (make_plausible makes some of them notes).
    if (const auto pvh = find_pvh_entry(file); pvh && *pvh > UINT32_MAX) std::abort();
    load_elf(memory(), file, image);
  } catch (const pier::Error& e) {
    check_error(e);
  }

  // The streaming loader must agree with the parser on what is a valid file.
  try {
    ElfStreamLoader loader(memory(), file.size(), "fuzz stream");
    for (size_t pos = 0; pos < file.size(); pos += piece) {
      loader.write(std::span(file).subspan(pos, std::min(piece, file.size() - pos)));
    }
    (void)loader.finish();
    if (!parsed) std::abort();
  } catch (const pier::Error& e) {
    check_error(e);
  }
  return 0;
}
