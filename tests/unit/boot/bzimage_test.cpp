#include "boot/bzimage.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "vmm/error.hpp"

namespace pier::boot {

namespace test_images {

// Offsets into a synthetic bzImage made by make_bzimage.
constexpr size_t kSetupSects = 4;
constexpr size_t kSetupSize = (kSetupSects + 1) * 512;
constexpr size_t kPayloadOffset = 0x100;  // fake decompressor code before the payload
constexpr size_t kTailSize = 64;          // bytes after the payload, as in real images

template <class T>
void poke(std::vector<uint8_t>& file, uint64_t offset, T value) {
  std::memcpy(file.data() + offset, &value, sizeof(T));
}

// A bzImage shaped like Debian's (protocol 2.15, relocatable, 64-bit entry, kernel linked at
// 16 MiB): boot sector + setup header, setup sectors, then the protected-mode kernel with the
// payload at kPayloadOffset. Shared with kernel_loader_test.cpp.
std::vector<uint8_t> make_bzimage(std::span<const uint8_t> payload, uint32_t init_size) {
  std::vector<uint8_t> f(kSetupSize + kPayloadOffset + payload.size() + kTailSize, 0);
  f[0x1f1] = kSetupSects;
  poke<uint16_t>(f, 0x1fe, 0xaa55);
  f[0x200] = 0xeb;  // jmp short to just after the 2.15 header, which ends at 0x26c
  f[0x201] = 0x6a;
  std::memcpy(f.data() + 0x202, "HdrS", 4);
  poke<uint16_t>(f, 0x206, 0x020f);
  f[0x211] = 0x01;                           // LOADED_HIGH
  poke<uint32_t>(f, 0x22c, 0x7fffffff);      // initrd_addr_max
  poke<uint32_t>(f, 0x230, 0x200000);        // kernel_alignment
  f[0x234] = 1;                              // relocatable_kernel
  poke<uint16_t>(f, 0x236, 0x7f);            // xloadflags
  poke<uint32_t>(f, 0x238, 2047);            // cmdline_size
  poke<uint32_t>(f, 0x248, kPayloadOffset);  // payload_offset
  poke<uint32_t>(f, 0x24c, static_cast<uint32_t>(payload.size()));
  poke<uint64_t>(f, 0x258, 0x1000000);  // pref_address
  poke<uint32_t>(f, 0x260, init_size);
  poke<uint32_t>(f, 0x1f4, static_cast<uint32_t>((f.size() - kSetupSize) / 16));  // syssize
  for (size_t i = 0; i < kPayloadOffset; ++i) f[kSetupSize + i] = static_cast<uint8_t>(0x90 + i);
  std::copy(payload.begin(), payload.end(), f.begin() + kSetupSize + kPayloadOffset);
  return f;
}

}  // namespace test_images

namespace {

using test_images::kPayloadOffset;
using test_images::kSetupSize;
using test_images::make_bzimage;
using test_images::poke;

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

const std::vector<uint8_t> kPayload = {0x02, 0x21, 0x4c, 0x18, 1, 2, 3, 4, 5, 6, 7, 8};

TEST(BzImage, ParsesTheSetupHeader) {
  const auto file = make_bzimage(kPayload, 0x3378000);
  ASSERT_TRUE(is_bzimage(file));
  const SetupHeader h = parse_setup_header(file);
  EXPECT_EQ(h.version, 0x020f);
  EXPECT_EQ(h.setup_sects, 4u);
  EXPECT_EQ(h.setup_size, kSetupSize);
  EXPECT_EQ(h.loadflags, kLoadedHigh);
  EXPECT_EQ(h.xloadflags, 0x7f);
  EXPECT_EQ(h.payload_offset, kPayloadOffset);
  EXPECT_EQ(h.payload_length, kPayload.size());
  EXPECT_EQ(h.init_size, 0x3378000u);
  EXPECT_EQ(h.pref_address, 0x1000000u);
  EXPECT_EQ(h.kernel_alignment, 0x200000u);
  EXPECT_TRUE(h.relocatable);
  EXPECT_EQ(h.initrd_addr_max, 0x7fffffffu);
  EXPECT_EQ(h.cmdline_size, 2047u);
  // The header is [0x1f1, 0x202 + byte[0x201]) = [0x1f1, 0x26c).
  ASSERT_EQ(h.header_bytes.size(), 0x26cu - 0x1f1);
  EXPECT_EQ(h.header_bytes.data(), file.data() + 0x1f1);
  EXPECT_EQ(h.protected_mode.data(), file.data() + kSetupSize);
  EXPECT_EQ(h.protected_mode.size(), file.size() - kSetupSize);
  EXPECT_TRUE(std::equal(h.payload.begin(), h.payload.end(), kPayload.begin(), kPayload.end()));
}

TEST(BzImage, SetupSectsZeroMeansFour) {
  auto file = make_bzimage(kPayload, 0x100000);
  file[0x1f1] = 0;
  EXPECT_EQ(parse_setup_header(file).setup_size, 5u * 512);
}

TEST(BzImage, ClampsAnOverlongHeaderToBootParams) {
  auto file = make_bzimage(kPayload, 0x100000);
  file[0x201] = 0xff;  // would end at 0x301, past boot_params.hdr
  EXPECT_EQ(parse_setup_header(file).header_bytes.size(), kSetupHeaderMaxEnd - 0x1f1);
}

TEST(BzImage, RejectsFilesWithoutTheSignatureOrTooShort) {
  auto file = make_bzimage(kPayload, 0x100000);
  auto bad = file;
  bad[0x202] = 'X';
  EXPECT_FALSE(is_bzimage(bad));
  expect_contains(error_of([&] { parse_setup_header(bad); }), "\"HdrS\" at offset 0x202");
  EXPECT_FALSE(is_bzimage(std::span(file).first(0x205)));

  // Signature present but the header is cut off before init_size.
  auto msg = error_of([&] { parse_setup_header(std::span(file).first(0x250)); });
  expect_contains(msg, "truncated");
  expect_contains(msg, "re-copy the kernel");
  // Header complete but the file ends inside the setup sectors.
  msg = error_of([&] { parse_setup_header(std::span(file).first(kSetupSize - 1)); });
  expect_contains(msg, "truncated: its 4 setup sectors end at byte 2560");
}

TEST(BzImage, RejectsOldProtocolsAndKernelsWithout64BitEntry) {
  auto file = make_bzimage(kPayload, 0x100000);
  auto bad = file;
  poke<uint16_t>(bad, 0x206, 0x020b);
  auto msg = error_of([&] { parse_setup_header(bad); });
  expect_contains(msg, "boot protocol 2.11");
  expect_contains(msg, "2.12 or newer");

  bad = file;
  poke<uint16_t>(bad, 0x236, 0x7e);
  msg = error_of([&] { parse_setup_header(bad); });
  expect_contains(msg, "XLF_KERNEL_64");
  expect_contains(msg, "use a 64-bit (x86_64) kernel");
}

TEST(BzImage, RejectsPayloadsOutsideTheFile) {
  const auto file = make_bzimage(kPayload, 0x100000);
  const uint32_t pm_size = static_cast<uint32_t>(file.size() - kSetupSize);
  auto bad = file;
  poke<uint32_t>(bad, 0x248, pm_size);  // offset at EOF
  auto msg = error_of([&] { parse_setup_header(bad); });
  expect_contains(msg, "compressed payload");
  expect_contains(msg, "re-copy the kernel");

  bad = file;
  poke<uint32_t>(bad, 0x248, 0xffffffff);  // offset far past EOF; offset + length wraps in 32 bits
  expect_contains(error_of([&] { parse_setup_header(bad); }), "outside the");

  bad = file;
  poke<uint32_t>(bad, 0x24c, pm_size - kPayloadOffset + 1);  // one byte too long
  expect_contains(error_of([&] { parse_setup_header(bad); }), "outside the");

  bad = file;
  poke<uint32_t>(bad, 0x24c, 0);
  expect_contains(error_of([&] { parse_setup_header(bad); }), "outside the");

  // A truncated copy of a good image: the payload runs past the new EOF.
  bad = file;
  bad.resize(file.size() - 70);
  poke<uint32_t>(bad, 0x1f4, 0);  // keep syssize from noticing first
  msg = error_of([&] { parse_setup_header(bad); });
  expect_contains(msg, "truncated or corrupt");
}

TEST(BzImage, RejectsACopyCutShortAfterThePayload) {
  const auto file = make_bzimage(kPayload, 0x100000);
  EXPECT_EQ(parse_setup_header(file).syssize, (file.size() - kSetupSize) / 16 * 16);
  // The payload is intact but the decompressor code after it is gone.
  const auto msg = error_of([&] { parse_setup_header(std::span(file).first(file.size() - 20)); });
  expect_contains(msg, "truncated: its protected-mode kernel is");
  expect_contains(msg, "re-copy the kernel");
}

TEST(BzImage, RejectsCorruptSizesAndAddresses) {
  const auto file = make_bzimage(kPayload, 0x100000);
  auto bad = file;
  poke<uint32_t>(bad, 0x230, 0x300000);
  expect_contains(error_of([&] { parse_setup_header(bad); }), "not a power of two");
  bad = file;
  poke<uint32_t>(bad, 0x260, 0);
  expect_contains(error_of([&] { parse_setup_header(bad); }), "init_size 0");
  bad = file;
  poke<uint64_t>(bad, 0x258, UINT64_MAX - 0x1000);
  expect_contains(error_of([&] { parse_setup_header(bad); }), "pref_address");
  bad = file;
  bad[0x201] = 0x10;  // header would end at 0x212, before init_size
  expect_contains(error_of([&] { parse_setup_header(bad); }), "setup header ends at 0x212");
}

TEST(BzImage, RuntimeStartFollowsBootRst) {
  auto file = make_bzimage(kPayload, 0x100000);
  SetupHeader h = parse_setup_header(file);
  // Relocatable: at least pref_address, aligned up to kernel_alignment.
  EXPECT_EQ(bzimage_runtime_start(h, 0x100000), 0x1000000u);
  EXPECT_EQ(bzimage_runtime_start(h, 0x1100000), 0x1200000u);
  EXPECT_EQ(bzimage_runtime_start(h, 0x1200000), 0x1200000u);
  // Not relocatable: exactly pref_address.
  h.relocatable = false;
  EXPECT_EQ(bzimage_runtime_start(h, 0x1100000), 0x1000000u);
}

}  // namespace
}  // namespace pier::boot
