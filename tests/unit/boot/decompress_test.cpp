#include "boot/decompress.hpp"

#include <gtest/gtest.h>
#include <lz4.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include <cstring>
#include <string>

#include "vmm/error.hpp"

namespace pier::boot {

// Payload builders shared with kernel_loader_test.cpp (same test binary). Each writes the
// payload the way the kernel build does (arch/x86/boot/compressed/Makefile and
// scripts/Makefile.lib): compressed data, then the uncompressed size as a le32.
namespace test_images {

void append_le32(std::vector<uint8_t>& out, uint32_t value) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(value >> (8 * i)));
}

// lz4 -l: the legacy frame, [magic][le32 size][block]... with 8 MiB blocks. With
// `magic_between_blocks`, repeats the magic before every block, as concatenated frames do.
std::vector<uint8_t> lz4_legacy(std::span<const uint8_t> data, bool magic_between_blocks = false) {
  constexpr size_t kBlock = 8 << 20;
  std::vector<uint8_t> out;
  append_le32(out, 0x184c2102);
  std::vector<char> block(static_cast<size_t>(LZ4_compressBound(kBlock)));
  for (size_t pos = 0; pos < data.size(); pos += kBlock) {
    const size_t n = std::min(kBlock, data.size() - pos);
    const int c =
        LZ4_compress_default(reinterpret_cast<const char*>(data.data() + pos), block.data(),
                             static_cast<int>(n), static_cast<int>(block.size()));
    if (c <= 0) throw std::runtime_error("LZ4_compress_default failed");
    if (magic_between_blocks && pos > 0) append_le32(out, 0x184c2102);
    append_le32(out, static_cast<uint32_t>(c));
    out.insert(out.end(), block.begin(), block.begin() + c);
  }
  return out;
}

std::vector<uint8_t> compress_payload(Compression compression, std::span<const uint8_t> data) {
  std::vector<uint8_t> out;
  switch (compression) {
    case Compression::kGzip: {
      z_stream z{};
      if (deflateInit2(&z, 9, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        throw std::runtime_error("deflateInit2 failed");
      }
      out.resize(deflateBound(&z, data.size()));
      z.next_in = const_cast<Bytef*>(data.data());
      z.avail_in = static_cast<uInt>(data.size());
      z.next_out = out.data();
      z.avail_out = static_cast<uInt>(out.size());
      const int ret = deflate(&z, Z_FINISH);
      out.resize(z.total_out);
      deflateEnd(&z);
      if (ret != Z_STREAM_END) throw std::runtime_error("deflate failed");
      return out;  // the gzip trailer's ISIZE is the size the kernel build would append
    }
    case Compression::kXz: {
      // Like the kernel's xzkern: CRC32 check, x86 BCJ filter, then LZMA2.
      lzma_options_lzma opts;
      lzma_lzma_preset(&opts, 1);
      lzma_filter filters[] = {
          {LZMA_FILTER_X86, nullptr}, {LZMA_FILTER_LZMA2, &opts}, {LZMA_VLI_UNKNOWN, nullptr}};
      out.resize(lzma_stream_buffer_bound(data.size()));
      size_t pos = 0;
      if (lzma_stream_buffer_encode(filters, LZMA_CHECK_CRC32, nullptr, data.data(), data.size(),
                                    out.data(), &pos, out.size()) != LZMA_OK) {
        throw std::runtime_error("lzma_stream_buffer_encode failed");
      }
      out.resize(pos);
      break;
    }
    case Compression::kLz4:
      out = lz4_legacy(data);
      break;
    case Compression::kZstd: {
      // Like `zstd` reading a pipe: no content size in the frame header, with a checksum.
      ZSTD_CCtx* cctx = ZSTD_createCCtx();
      ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, 3);
      ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 0);
      ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
      out.resize(ZSTD_compressBound(data.size()));
      const size_t n = ZSTD_compress2(cctx, out.data(), out.size(), data.data(), data.size());
      ZSTD_freeCCtx(cctx);
      if (ZSTD_isError(n)) throw std::runtime_error("ZSTD_compress2 failed");
      out.resize(n);
      break;
    }
    default:
      throw std::runtime_error("no test compressor for this format");
  }
  append_le32(out, static_cast<uint32_t>(data.size()));
  return out;
}

// Deterministic, compressible, not trivially repetitive bytes.
std::vector<uint8_t> sample_data(size_t size, uint32_t seed) {
  static constexpr std::string_view kWords[] = {"kernel ",      "virtio ",      "console ",
                                                "\x0f\x1f\x44", "\x48\x89\xe5", "pier ",
                                                "\0\0\0\0",     "boot "};
  std::vector<uint8_t> out;
  out.reserve(size + 16);
  uint32_t x = seed;
  while (out.size() < size) {
    x = x * 1664525 + 1013904223;
    const auto w = kWords[(x >> 24) % std::size(kWords)];
    out.insert(out.end(), w.begin(), w.end());
    if ((x & 0xff) < 16) out.push_back(static_cast<uint8_t>(x >> 8));
  }
  out.resize(size);
  return out;
}

}  // namespace test_images

namespace {

using test_images::append_le32;
using test_images::compress_payload;
using test_images::sample_data;

constexpr Compression kSupported[] = {Compression::kGzip, Compression::kXz, Compression::kLz4,
                                      Compression::kZstd};

// Runs `f`, which must throw pier::Error, and returns the message.
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
}

// Every error is one line that says what to do.
void expect_actionable(const std::string& message) {
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  const bool says_what_to_do = message.find("re-copy") != std::string::npos ||
                               message.find("rebuild") != std::string::npos ||
                               message.find("use ") != std::string::npos;
  EXPECT_TRUE(says_what_to_do) << message;
}

void replace_trailer(std::vector<uint8_t>& payload, uint32_t size) {
  std::memcpy(payload.data() + payload.size() - 4, &size, 4);
}

TEST(Decompress, DetectsFormatsByMagicLikeTheKernel) {
  const auto detect = [](std::initializer_list<uint8_t> bytes) {
    const std::vector<uint8_t> v(bytes);
    return detect_compression(v);
  };
  EXPECT_EQ(detect({0x1f, 0x8b, 0x08, 0}), Compression::kGzip);
  EXPECT_EQ(detect({0x1f, 0x9e, 0, 0}), Compression::kGzip);
  EXPECT_EQ(detect({'B', 'Z', 'h', '9'}), Compression::kBzip2);
  EXPECT_EQ(detect({0x5d, 0, 0, 0x80}), Compression::kLzma);
  EXPECT_EQ(detect({0xfd, '7', 'z', 'X', 'Z', 0}), Compression::kXz);
  EXPECT_EQ(detect({0x89, 'L', 'Z', 'O'}), Compression::kLzo);
  EXPECT_EQ(detect({0x02, 0x21, 0x4c, 0x18}), Compression::kLz4);
  EXPECT_EQ(detect({0x28, 0xb5, 0x2f, 0xfd}), Compression::kZstd);
  EXPECT_EQ(detect({0x7f, 'E', 'L', 'F'}), Compression::kUnknown);
  EXPECT_EQ(detect({0xfd, '7', 'z'}), Compression::kUnknown);  // too short for the xz magic
  EXPECT_EQ(detect({}), Compression::kUnknown);
  EXPECT_EQ(compression_name(Compression::kLz4), "lz4");
  EXPECT_TRUE(compression_supported(Compression::kZstd));
  EXPECT_FALSE(compression_supported(Compression::kBzip2));
}

TEST(Decompress, RoundTripsEverySupportedFormat) {
  const auto data = sample_data(3 << 20, 1);
  for (const Compression c : kSupported) {
    SCOPED_TRACE(std::string(compression_name(c)));
    const auto payload = compress_payload(c, data);
    EXPECT_EQ(detect_compression(payload), c);
    EXPECT_EQ(decompressed_size(payload), data.size());
    EXPECT_EQ(decompress_kernel_payload(payload), data);
  }
}

TEST(Decompress, RoundTripsTinyAndEmptyPayloads) {
  const auto one = sample_data(1, 2);
  for (const Compression c : kSupported) {
    SCOPED_TRACE(std::string(compression_name(c)));
    EXPECT_EQ(decompress_kernel_payload(compress_payload(c, one)), one);
    EXPECT_TRUE(decompress_kernel_payload(compress_payload(c, {})).empty());
  }
}

TEST(Decompress, Lz4LegacyFrameWithManyBlocksAndRepeatedMagics) {
  // 8 MiB blocks: two full ones and a partial one, with and without magics between them (the
  // kernel's unlz4 skips a magic wherever a block size is expected).
  const auto data = sample_data((16 << 20) + 12345, 3);
  for (const bool magics : {false, true}) {
    auto payload = test_images::lz4_legacy(data, magics);
    append_le32(payload, static_cast<uint32_t>(data.size()));
    EXPECT_EQ(decompress_kernel_payload(payload), data);
  }
}

TEST(Decompress, Lz4LegacyRejectsBadFraming) {
  const auto data = sample_data(100000, 4);
  const auto good = test_images::lz4_legacy(data);
  const uint32_t block_size = static_cast<uint32_t>(good.size() - 8);
  const auto with_trailer = [&](std::vector<uint8_t> v) {
    append_le32(v, static_cast<uint32_t>(data.size()));
    return v;
  };

  // A block that claims more than an 8 MiB block can compress to.
  auto huge = good;
  const uint32_t too_big = 0x7fffffff;
  std::memcpy(huge.data() + 4, &too_big, 4);
  auto msg = error_of([&] { decompress_kernel_payload(with_trailer(huge)); });
  expect_contains(msg, "lz4 kernel payload is corrupt");
  expect_actionable(msg);

  // A block that runs past the payload end.
  auto past = good;
  const uint32_t longer = block_size + 1;
  std::memcpy(past.data() + 4, &longer, 4);
  msg = error_of([&] { decompress_kernel_payload(with_trailer(past)); });
  expect_contains(msg, "truncated");
  expect_actionable(msg);

  // Garbage after the last block that is too short to be a block size.
  auto tail = good;
  tail.push_back(0);
  tail.push_back(0);
  msg = error_of([&] { decompress_kernel_payload(with_trailer(tail)); });
  expect_contains(msg, "truncated");

  // A zero-length block is not valid lz4 data (every block has at least one token).
  auto empty_block = good;
  append_le32(empty_block, 0);
  EXPECT_THROW(decompress_kernel_payload(with_trailer(empty_block)), Error);
}

TEST(Decompress, RejectsCorruptDataInEveryFormat) {
  const auto data = sample_data(1 << 20, 5);
  for (const Compression c : kSupported) {
    SCOPED_TRACE(std::string(compression_name(c)));
    auto payload = compress_payload(c, data);
    if (c == Compression::kLz4) {
      // lz4 has no checksum: make the first sequence's literal length run past the block.
      std::memset(payload.data() + 8, 0xff, 64);
    } else {
      // gzip/xz/zstd: damage the middle of the stream (caught by the decoder or the checksum).
      for (size_t i = payload.size() / 2; i < payload.size() / 2 + 16; ++i) payload[i] ^= 0x5a;
    }
    const auto msg = error_of([&] { decompress_kernel_payload(payload); });
    expect_contains(msg, std::string(compression_name(c)) + " kernel payload");
    expect_actionable(msg);
  }
}

TEST(Decompress, RejectsTruncatedDataInEveryFormat) {
  const auto data = sample_data(1 << 20, 6);
  for (const Compression c : kSupported) {
    SCOPED_TRACE(std::string(compression_name(c)));
    auto payload = compress_payload(c, data);
    // Cut the stream in half but keep a valid size trailer, as a short copy with the right
    // header would look.
    payload.resize(payload.size() / 2);
    append_le32(payload, static_cast<uint32_t>(data.size()));
    const auto msg = error_of([&] { decompress_kernel_payload(payload); });
    expect_contains(msg, std::string(compression_name(c)) + " kernel payload");
    expect_actionable(msg);
    if (c != Compression::kLz4) expect_contains(msg, "truncated");
  }
}

TEST(Decompress, RejectsOutputLongerOrShorterThanRecorded) {
  const auto data = sample_data(1 << 20, 7);
  for (const Compression c : kSupported) {
    SCOPED_TRACE(std::string(compression_name(c)));
    if (c == Compression::kGzip) continue;  // the size is gzip's own ISIZE, checked by zlib
    auto payload = compress_payload(c, data);
    replace_trailer(payload, static_cast<uint32_t>(data.size() - 1));
    auto msg = error_of([&] { decompress_kernel_payload(payload); });
    expect_contains(msg, std::to_string(data.size() - 1));
    expect_actionable(msg);

    replace_trailer(payload, static_cast<uint32_t>(data.size() + 4096));
    msg = error_of([&] { decompress_kernel_payload(payload); });
    expect_contains(msg, std::to_string(data.size() + 4096));
    expect_actionable(msg);
  }
  auto gz = compress_payload(Compression::kGzip, data);
  replace_trailer(gz, static_cast<uint32_t>(data.size() + 1));
  EXPECT_THROW(decompress_kernel_payload(gz), Error);
}

TEST(Decompress, RejectsUnsupportedAndUnknownFormats) {
  std::vector<uint8_t> payload = {'B', 'Z', 'h', '9', 1, 2, 3, 4};
  append_le32(payload, 1000);
  auto msg = error_of([&] { decompress_kernel_payload(payload); });
  expect_contains(msg, "bzip2");
  expect_contains(msg, "use --boot-method bzimage");
  expect_actionable(msg);

  payload[0] = 0x89, payload[1] = 'L', payload[2] = 'Z', payload[3] = 'O';
  expect_contains(error_of([&] { decompress_kernel_payload(payload); }), "lzo");
  payload[0] = 0x5d, payload[1] = 0, payload[2] = 0, payload[3] = 0;
  expect_contains(error_of([&] { decompress_kernel_payload(payload); }), "lzma");

  payload[0] = 0xde, payload[1] = 0xad, payload[2] = 0xbe, payload[3] = 0xef;
  msg = error_of([&] { decompress_kernel_payload(payload); });
  expect_contains(msg, "unknown compression format (first bytes de ad be ef)");
  expect_actionable(msg);
}

TEST(Decompress, RejectsTooShortAndTooLargePayloadsBeforeAllocating) {
  const std::vector<uint8_t> tiny = {0x1f, 0x8b, 0};
  auto msg = error_of([&] { decompress_kernel_payload(tiny); });
  expect_contains(msg, "truncated");
  expect_actionable(msg);

  auto payload = compress_payload(Compression::kLz4, sample_data(1000, 8));
  replace_trailer(payload, 0xffffffff);  // 4 GiB: above the default 512 MiB cap
  msg = error_of([&] { decompress_kernel_payload(payload); });
  expect_contains(msg, "limit of 512.0 MiB");
  EXPECT_THROW(
      decompress_kernel_payload(compress_payload(Compression::kLz4, sample_data(5000, 9)), 4096),
      Error);
}

TEST(Decompress, StreamsChunksInOrderToTheSink) {
  for (const Compression c : kSupported) {
    SCOPED_TRACE(std::string(compression_name(c)));
    // More than one chunk: 1 MiB for gzip and xz, one 8 MiB block for lz4; zstd decodes in one
    // pass.
    const bool lz4 = c == Compression::kLz4;
    const auto data = sample_data(lz4 ? (9 << 20) + 77 : (3 << 20) + 77, 10);
    const auto payload = compress_payload(c, data);
    std::vector<uint8_t> got;
    size_t chunks = 0;
    const uint64_t total =
        decompress_kernel_payload_to(payload, [&](std::span<const uint8_t> chunk) {
          EXPECT_FALSE(chunk.empty());
          if (c != Compression::kZstd) {
            EXPECT_LE(chunk.size(), lz4 ? 8u << 20 : 1u << 20);
          }
          got.insert(got.end(), chunk.begin(), chunk.end());
          ++chunks;
        });
    EXPECT_EQ(total, data.size());
    EXPECT_EQ(got, data);
    EXPECT_EQ(chunks > 1, c != Compression::kZstd);
  }
}

TEST(Decompress, NeverDeliversMoreThanTheRecordedSize) {
  const auto data = sample_data(3 << 20, 12);
  for (const Compression c : kSupported) {
    SCOPED_TRACE(std::string(compression_name(c)));
    if (c == Compression::kGzip) continue;  // ISIZE is checked by zlib itself
    auto payload = compress_payload(c, data);
    replace_trailer(payload, 100000);
    uint64_t delivered = 0;
    EXPECT_THROW(decompress_kernel_payload_to(
                     payload, [&](std::span<const uint8_t> chunk) { delivered += chunk.size(); }),
                 Error);
    EXPECT_LE(delivered, 100000u);
  }
}

TEST(Decompress, SinkErrorsAbortDecompression) {
  const auto payload = compress_payload(Compression::kXz, sample_data(3 << 20, 13));
  int calls = 0;
  EXPECT_THROW(decompress_kernel_payload_to(payload,
                                            [&](std::span<const uint8_t>) {
                                              ++calls;
                                              throw Error("sink says no");
                                            }),
               Error);
  EXPECT_EQ(calls, 1);
}

TEST(Decompress, ZstdFrameWithContentSize) {
  // A frame that records its content size, as `zstd file` writes it (the kernel build pipes, so
  // its frames do not); both decode, and the size trailer after the frame is not zstd data.
  const auto data = sample_data(200000, 11);
  std::vector<uint8_t> payload(ZSTD_compressBound(data.size()));
  payload.resize(ZSTD_compress(payload.data(), payload.size(), data.data(), data.size(), 19));
  append_le32(payload, static_cast<uint32_t>(data.size()));
  EXPECT_EQ(decompress_kernel_payload(payload), data);
}

}  // namespace
}  // namespace pier::boot
