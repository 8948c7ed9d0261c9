#include "boot/kernel_loader.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "boot/bzimage.hpp"
#include "boot/decompress.hpp"
#include "boot/elf.hpp"
#include "boot/layout.hpp"
#include "vmm/error.hpp"

namespace pier::boot {

// Image builders defined next to the tests of each format (decompress_test.cpp, elf_test.cpp,
// bzimage_test.cpp); they are linked into this same test binary.
namespace test_images {
std::vector<uint8_t> compress_payload(Compression compression, std::span<const uint8_t> data);
std::vector<uint8_t> make_kernel_elf(uint64_t paddr, size_t text_size, size_t bss_size);
std::vector<uint8_t> make_bzimage(std::span<const uint8_t> payload, uint32_t init_size);
std::vector<uint8_t> pattern(size_t size, uint8_t seed);
}  // namespace test_images

namespace {

using layout::MiB;
using test_images::compress_payload;
using test_images::make_bzimage;
using test_images::make_kernel_elf;
using test_images::pattern;

constexpr uint64_t kKernelPaddr = 16 * MiB;  // where Debian's vmlinux is linked
constexpr size_t kText = 300000;
constexpr size_t kBss = 200000;
constexpr uint64_t kDataPaddr = kKernelPaddr + ((kText + 0xfff) & ~size_t{0xfff});

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected pier::Error";
  return {};
}

void expect_contains(const std::string& message, std::string_view part) {
  EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
}

std::vector<uint8_t> read_guest(const GuestMemory& memory, uint64_t gpa, size_t size) {
  std::vector<uint8_t> out(size);
  EXPECT_TRUE(memory.read(gpa, out));
  return out;
}

bool untouched(const GuestMemory& memory, uint64_t gpa, size_t size) {
  return read_guest(memory, gpa, size) == std::vector<uint8_t>(size, 0);
}

// The synthetic vmlinux must be in memory: text, data, zeroed bss.
void expect_kernel_elf_loaded(const GuestMemory& memory) {
  EXPECT_EQ(read_guest(memory, kKernelPaddr, kText), pattern(kText, 1));
  EXPECT_EQ(read_guest(memory, kDataPaddr, 4096), pattern(4096, 2));
  EXPECT_TRUE(untouched(memory, kDataPaddr + 4096, kBss));
}

TEST(KernelLoader, BzImageProtocolLoadsTheProtectedModeKernelAt1MiB) {
  auto memory = GuestMemory::create(512 * MiB);
  const auto payload =
      compress_payload(Compression::kLz4, make_kernel_elf(kKernelPaddr, kText, kBss));
  const auto file = make_bzimage(payload, 48 * MiB);
  const LoadedKernel k = load_kernel(memory, file, BootMethod::kBzImage);

  EXPECT_EQ(k.method, BootMethod::kBzImage);
  EXPECT_EQ(k.entry, 0x100200u);
  EXPECT_EQ(k.setup_header, std::vector<uint8_t>(file.begin() + 0x1f1, file.begin() + 0x26c));
  // The kernel moves itself to pref_address (16 MiB) and needs init_size from there.
  EXPECT_EQ(k.image_start, 1 * MiB);
  EXPECT_EQ(k.image_end, 16 * MiB + 48 * MiB);
  EXPECT_EQ(k.initrd_addr_max, 0x7fffffffu);
  EXPECT_EQ(k.cmdline_size, 2047u);
  const size_t pm_size = file.size() - 5 * 512;
  EXPECT_EQ(read_guest(memory, 1 * MiB, pm_size),
            std::vector<uint8_t>(file.begin() + 5 * 512, file.end()));
  EXPECT_TRUE(untouched(memory, kKernelPaddr, 4096));  // nothing decompressed by pier
  expect_contains(k.description, "bzImage protocol 2.15, lz4 payload");
  expect_contains(k.description, "entry 0x100200");
}

TEST(KernelLoader, DirectBootLoadsTheElfInsideThePayloadForEveryFormat) {
  const auto vmlinux = make_kernel_elf(kKernelPaddr, kText, kBss);
  for (const Compression c :
       {Compression::kGzip, Compression::kXz, Compression::kLz4, Compression::kZstd}) {
    SCOPED_TRACE(std::string(compression_name(c)));
    auto memory = GuestMemory::create(64 * MiB);
    memory.fill(kDataPaddr + 4096, kBss, 0xcc, "dirt");  // bss must be zeroed by the loader
    const auto file = make_bzimage(compress_payload(c, vmlinux), 48 * MiB);
    const LoadedKernel k = load_kernel(memory, file, BootMethod::kDirect);

    EXPECT_EQ(k.method, BootMethod::kDirect);
    EXPECT_EQ(k.entry, kKernelPaddr);
    EXPECT_EQ(k.setup_header.size(), 0x26cu - 0x1f1);
    EXPECT_EQ(k.image_start, kKernelPaddr);
    EXPECT_EQ(k.image_end, (kDataPaddr + 4096 + kBss + 0xfff) & ~uint64_t{0xfff});
    expect_kernel_elf_loaded(memory);
    EXPECT_TRUE(untouched(memory, 1 * MiB, 4096));  // the bzImage itself is not loaded
    expect_contains(k.description, std::string(compression_name(c)) + " payload");
    expect_contains(k.description, "-> ELF");
  }
}

TEST(KernelLoader, PlainElfIsLoadedDirectlyWhateverTheMethod) {
  auto memory = GuestMemory::create(64 * MiB);
  const auto file = make_kernel_elf(kKernelPaddr, kText, kBss);
  const LoadedKernel k = load_kernel(memory, file, BootMethod::kBzImage);
  EXPECT_EQ(k.method, BootMethod::kDirect);
  EXPECT_EQ(k.entry, kKernelPaddr);
  EXPECT_TRUE(k.setup_header.empty());
  EXPECT_EQ(k.initrd_addr_max, 0x7fffffffu);
  EXPECT_EQ(k.cmdline_size, 2047u);
  EXPECT_EQ(k.image_start, kKernelPaddr);
  expect_kernel_elf_loaded(memory);
  expect_contains(k.description, "ELF64 kernel, 2 segment(s)");
}

TEST(KernelLoader, RejectsFilesThatAreNeitherBzImageNorElf) {
  auto memory = GuestMemory::create(64 * MiB);
  for (const auto& file :
       {std::vector<uint8_t>{}, std::vector<uint8_t>(100, 0x4d), pattern(1 << 20, 3)}) {
    const auto msg = error_of([&] { load_kernel(memory, file, BootMethod::kDirect); });
    expect_contains(msg, "neither a bzImage");
    expect_contains(msg, "pass a Linux bzImage");
  }
}

TEST(KernelLoader, BzImageThatDoesNotFitInRam) {
  auto memory = GuestMemory::create(64 * MiB);
  const auto file = make_bzimage(
      compress_payload(Compression::kLz4, make_kernel_elf(kKernelPaddr, kText, kBss)), 100 * MiB);
  const auto msg = error_of([&] { load_kernel(memory, file, BootMethod::kBzImage); });
  expect_contains(msg, "guest has 64 MiB; use --memory of at least 116 MiB");
  EXPECT_TRUE(untouched(memory, 1 * MiB, 4096));
}

TEST(KernelLoader, DirectKernelThatDoesNotFitInRam) {
  auto memory = GuestMemory::create(64 * MiB);
  const auto vmlinux = make_kernel_elf(kKernelPaddr, kText, 60 * MiB);  // bss past 64 MiB
  const auto file = make_bzimage(compress_payload(Compression::kZstd, vmlinux), 1 * MiB);
  const auto msg = error_of([&] { load_kernel(memory, file, BootMethod::kDirect); });
  expect_contains(msg, "beyond guest RAM (64 MiB); use --memory of at least 77 MiB");
  EXPECT_TRUE(untouched(memory, kKernelPaddr, 4096));
}

TEST(KernelLoader, DirectBootRejectsBadPayloads) {
  auto memory = GuestMemory::create(64 * MiB);
  // Decompresses fine but is not an ELF.
  auto file = make_bzimage(compress_payload(Compression::kGzip, pattern(5000, 4)), 1 * MiB);
  auto msg = error_of([&] { load_kernel(memory, file, BootMethod::kDirect); });
  expect_contains(msg, "bzImage payload does not hold a usable kernel: kernel image is not an ELF");

  // Corrupt compressed data.
  auto payload = compress_payload(Compression::kXz, make_kernel_elf(kKernelPaddr, kText, kBss));
  for (size_t i = payload.size() / 2; i < payload.size() / 2 + 8; ++i) payload[i] ^= 0xff;
  msg = error_of([&] { load_kernel(memory, make_bzimage(payload, 1 * MiB), BootMethod::kDirect); });
  expect_contains(msg, "xz kernel payload is corrupt");

  // A format pier does not decompress; the kernel itself could.
  std::vector<uint8_t> bzip2 = {'B', 'Z', 'h', '9', 0x31, 0x41, 0x59, 0x26, 0, 0, 1, 0};
  msg = error_of([&] { load_kernel(memory, make_bzimage(bzip2, 1 * MiB), BootMethod::kDirect); });
  expect_contains(msg, "bzip2 compression");
  expect_contains(msg, "use --boot-method bzimage");
  EXPECT_NO_THROW(load_kernel(memory, make_bzimage(bzip2, 1 * MiB), BootMethod::kBzImage));

  // The kernel proper is linked into pier's boot area.
  file =
      make_bzimage(compress_payload(Compression::kLz4, make_kernel_elf(0x10000, 4096, 0)), 1 * MiB);
  msg = error_of([&] { load_kernel(memory, file, BootMethod::kDirect); });
  expect_contains(msg, "boot area below 1 MiB");
  EXPECT_TRUE(untouched(memory, 0x10000, 4096));
}

TEST(KernelLoader, HeaderErrorsComeThroughLoadKernel) {
  auto memory = GuestMemory::create(64 * MiB);
  auto file = make_bzimage(compress_payload(Compression::kLz4, pattern(100, 1)), 1 * MiB);
  file[0x206] = 0x0b;  // protocol 2.11
  expect_contains(error_of([&] { load_kernel(memory, file, BootMethod::kBzImage); }),
                  "boot protocol 2.11");
  file[0x206] = 0x0f;
  file[0x236] = 0;  // no XLF_KERNEL_64
  expect_contains(error_of([&] { load_kernel(memory, file, BootMethod::kDirect); }),
                  "XLF_KERNEL_64");
}

// ---- A real kernel, when one is available (never committed; see tools/ for the image). ----

std::filesystem::path real_kernel_path() {
  if (const char* env = std::getenv("PIER_TEST_KERNEL"); env != nullptr && *env != '\0') {
    return env;
  }
  // tests/unit/boot/<this file> -> the source tree's build/guest/vmlinuz.
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path().parent_path() /
         "build" / "guest" / "vmlinuz";
}

std::vector<uint8_t> read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

TEST(KernelLoader, RealKernelLoadsBothWays) {
  const auto path = real_kernel_path();
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << "no real kernel: set PIER_TEST_KERNEL to a bzImage or build " << path;
  }
  const auto file = read_file(path);
  ASSERT_TRUE(is_bzimage(file)) << path;
  const SetupHeader hdr = parse_setup_header(file);

  auto memory = GuestMemory::create(512 * MiB);
  const LoadedKernel protocol = load_kernel(memory, file, BootMethod::kBzImage);
  std::cout << "  " << path.string() << ": " << protocol.description << "\n";
  EXPECT_EQ(protocol.entry, 0x100200u);
  EXPECT_EQ(protocol.image_start, 1 * MiB);
  EXPECT_GE(protocol.image_end, bzimage_runtime_start(hdr, 1 * MiB) + hdr.init_size);
  EXPECT_EQ(read_guest(memory, 1 * MiB, 4096),
            std::vector<uint8_t>(file.begin() + static_cast<ptrdiff_t>(hdr.setup_size),
                                 file.begin() + static_cast<ptrdiff_t>(hdr.setup_size) + 4096));

  auto direct_memory = GuestMemory::create(512 * MiB);
  const auto started = std::chrono::steady_clock::now();
  const LoadedKernel direct = load_kernel(direct_memory, file, BootMethod::kDirect);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - started)
                      .count();
  std::cout << "  " << direct.description << " (load_kernel " << ms << " ms)\n";
  EXPECT_EQ(direct.setup_header, protocol.setup_header);
  // vmlinux is linked at LOAD_PHYSICAL_ADDR (= pref_address) with startup_64 first.
  EXPECT_EQ(direct.image_start, hdr.pref_address);
  EXPECT_EQ(direct.entry, hdr.pref_address);
  EXPECT_GT(direct.image_end, direct.image_start + 16 * MiB);
  // The kernel proper's segments are where its ELF says, byte for byte.
  const auto vmlinux = decompress_kernel_payload(hdr.payload);
  const ElfImage elf = parse_elf64(vmlinux);
  for (const auto& s : elf.segments) {
    EXPECT_EQ(read_guest(direct_memory, s.paddr, s.filesz),
              std::vector<uint8_t>(vmlinux.begin() + static_cast<ptrdiff_t>(s.offset),
                                   vmlinux.begin() + static_cast<ptrdiff_t>(s.offset + s.filesz)));
  }
}

}  // namespace
}  // namespace pier::boot
