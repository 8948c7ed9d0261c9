#include "boot/kernel_loader.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>

#include "boot/bzimage.hpp"
#include "boot/decompress.hpp"
#include "boot/elf.hpp"
#include "boot/layout.hpp"
#include "vmm/error.hpp"

namespace pier::boot {
namespace {

constexpr uint64_t kPageSize = 4096;
constexpr uint32_t kElfInitrdAddrMax = 0x7fffffff;
constexpr uint32_t kElfCmdlineSize = 2047;

std::string mib(uint64_t bytes) {
  return fmt::format("{:.1f} MiB", double(bytes) / (1 << 20));
}

std::string protocol(uint16_t version) {
  return fmt::format("{}.{:02}", version >> 8, version & 0xff);
}

void set_elf_range(LoadedKernel& k, const ElfImage& elf) {
  k.image_start = elf.lowest_paddr & ~(kPageSize - 1);
  // highest_end fits in guest RAM (checked by load_elf), far below UINT64_MAX - 4095.
  k.image_end = (elf.highest_end + kPageSize - 1) & ~(kPageSize - 1);
}

LoadedKernel load_plain_elf(const GuestMemory& memory, std::span<const uint8_t> file) {
  const ElfImage elf = parse_elf64(file);
  load_elf(memory, file, elf);
  LoadedKernel k;
  k.entry = elf.entry;
  set_elf_range(k, elf);
  k.initrd_addr_max = kElfInitrdAddrMax;
  k.cmdline_size = kElfCmdlineSize;
  k.method = BootMethod::kDirect;
  k.description = fmt::format("ELF64 kernel, {} segment(s) at [{:#x}, {:#x}), entry {:#x}",
                              elf.segments.size(), elf.lowest_paddr, elf.highest_end, elf.entry);
  if (const auto pvh = find_pvh_entry(file)) {
    const bool inside = std::any_of(elf.segments.begin(), elf.segments.end(), [&](const auto& s) {
      return *pvh >= s.paddr && *pvh - s.paddr < s.memsz;
    });
    if (!inside) {
      throw Error(fmt::format(
          "ELF kernel's PVH entry {:#x} (Xen PHYS32_ENTRY note) is outside its loaded segments; "
          "the file is corrupt",
          *pvh));
    }
    k.pvh = true;
    k.entry = *pvh;
    k.description += fmt::format(", PVH entry {:#x} (32-bit)", *pvh);
  }
  return k;
}

// 64-bit boot protocol: the protected-mode code goes to 1 MiB, and the kernel needs
// [runtime start, + init_size) to decompress itself before it looks at the e820 map.
void load_bzimage_protocol(const GuestMemory& memory, const SetupHeader& hdr, LoadedKernel& k) {
  const uint64_t load = layout::kKernelLoad;
  const uint64_t runtime = bzimage_runtime_start(hdr, load);  // < 2^52 + alignment: no overflow
  k.image_start = std::min(load, runtime);
  k.image_end = std::max(load + hdr.protected_mode.size(), runtime + hdr.init_size);
  k.image_end = (k.image_end + kPageSize - 1) & ~(kPageSize - 1);
  if (k.image_start < layout::kLowRamEnd) {
    throw Error(fmt::format(
        "bzImage runs at {:#x}, inside pier's boot area below 1 MiB; the image is corrupt",
        k.image_start));
  }
  if (!memory.contains(k.image_start, k.image_end - k.image_start)) {
    if (k.image_end > layout::kMmioHoleStart) {
      throw Error(fmt::format(
          "bzImage needs guest RAM [{:#x}, {:#x}) (runtime start {:#x} + init_size {}), which "
          "reaches the 32-bit MMIO hole at {:#x}; use a kernel with a lower pref_address",
          k.image_start, k.image_end, runtime, mib(hdr.init_size), layout::kMmioHoleStart));
    }
    throw Error(fmt::format(
        "bzImage needs guest RAM up to {:#x} (runtime start {:#x} + init_size {}) but the guest "
        "has {} MiB; use --memory of at least {} MiB",
        k.image_end, runtime, mib(hdr.init_size), memory.ram_size() >> 20,
        (k.image_end + layout::MiB - 1) >> 20));
  }
  memory.load(load, hdr.protected_mode, "bzImage protected-mode kernel");
  k.entry = load + layout::kBzImage64BitEntryOffset;
  k.description = fmt::format(
      "bzImage protocol {}, {} payload {}, loaded at {:#x}, init_size {} at {:#x}, entry {:#x}",
      protocol(hdr.version), compression_name(detect_compression(hdr.payload)),
      mib(hdr.payload.size()), load, mib(hdr.init_size), runtime, k.entry);
}

// Direct boot: what the kernel's decompressor would do (misc.c: decompress, parse_elf), done in
// the host. No relocation is needed because the kernel runs at its link-time address. The
// payload streams through a small buffer straight into the segments' guest pages: the whole
// vmlinux is never held in host memory (faulting in ~60 MB of fresh host pages costs more than
// decompressing lz4).
void load_bzimage_direct(const GuestMemory& memory, const SetupHeader& hdr, LoadedKernel& k) {
  const auto started = std::chrono::steady_clock::now();
  const uint64_t size = decompressed_size(hdr.payload);
  ElfStreamLoader loader(memory, size, "bzImage payload");
  decompress_kernel_payload_to(hdr.payload,
                               [&](std::span<const uint8_t> chunk) { loader.write(chunk); });
  const ElfImage elf = loader.finish();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - started)
                      .count();
  k.entry = elf.entry;
  set_elf_range(k, elf);
  k.description = fmt::format(
      "bzImage protocol {}, {} payload {} -> ELF {} in {} ms, {} segment(s) at [{:#x}, {:#x}), "
      "entry {:#x}",
      protocol(hdr.version), compression_name(detect_compression(hdr.payload)),
      mib(hdr.payload.size()), mib(size), ms, elf.segments.size(), elf.lowest_paddr,
      elf.highest_end, elf.entry);
}

}  // namespace

LoadedKernel load_kernel(const GuestMemory& memory, std::span<const uint8_t> file,
                         BootMethod method) {
  if (is_elf(file)) return load_plain_elf(memory, file);
  if (!is_bzimage(file)) {
    throw Error(fmt::format(
        "kernel image ({} bytes) is neither a bzImage (no \"HdrS\" at offset 0x202) nor an ELF "
        "file; pass a Linux bzImage such as /boot/vmlinuz-* or an x86-64 vmlinux",
        file.size()));
  }
  const SetupHeader hdr = parse_setup_header(file);
  LoadedKernel k;
  k.setup_header.assign(hdr.header_bytes.begin(), hdr.header_bytes.end());
  k.initrd_addr_max = hdr.initrd_addr_max;
  // cmdline_size exists from protocol 2.06, and pier requires 2.12.
  k.cmdline_size = hdr.cmdline_size;
  k.method = method;
  if (method == BootMethod::kDirect) {
    load_bzimage_direct(memory, hdr, k);
  } else {
    load_bzimage_protocol(memory, hdr, k);
  }
  return k;
}

}  // namespace pier::boot
