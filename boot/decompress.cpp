#include "boot/decompress.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <lz4.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstring>
#include <memory>

#include "vmm/error.hpp"

namespace pier::boot {
namespace {

constexpr uint64_t kSizeTrailer = 4;  // the le32 uncompressed size the kernel build appends
// liblzma's decoder keeps the dictionary in memory; the kernel's xz uses 32 MiB (Makefile.lib
// xzkern), so this leaves room while bounding what a hostile header can make us allocate.
constexpr uint64_t kXzMemoryLimit = uint64_t{256} << 20;
// lz4 legacy frame (lz4 -l, as the kernel build writes it): a magic, then blocks of
// [le32 compressed size][data], each decoding to at most 8 MiB; more magics may follow.
constexpr uint32_t kLz4LegacyMagic = 0x184c2102;
constexpr uint64_t kLz4LegacyBlockMax = uint64_t{8} << 20;

struct Magic {
  std::array<uint8_t, 6> bytes;
  size_t length;
  Compression compression;
};
// lib/decompress.c compressed_formats[], with the longer magics where the format defines them.
constexpr std::array<Magic, 8> kMagics = {{
    {{0x1f, 0x8b}, 2, Compression::kGzip},
    {{0x1f, 0x9e}, 2, Compression::kGzip},  // old gzip, accepted by the kernel too
    {{0x42, 0x5a, 0x68}, 3, Compression::kBzip2},
    {{0x5d, 0x00, 0x00}, 3, Compression::kLzma},
    {{0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00}, 6, Compression::kXz},
    {{0x89, 0x4c, 0x5a, 0x4f}, 4, Compression::kLzo},
    {{0x02, 0x21, 0x4c, 0x18}, 4, Compression::kLz4},
    {{0x28, 0xb5, 0x2f, 0xfd}, 4, Compression::kZstd},
}};

uint32_t load_le32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

std::string mib(uint64_t bytes) {
  return fmt::format("{:.1f} MiB", double(bytes) / (1 << 20));
}

[[noreturn]] void throw_corrupt(Compression c, std::string_view detail) {
  throw Error(fmt::format("{} kernel payload is corrupt ({}); re-copy or rebuild the kernel",
                          compression_name(c), detail));
}

[[noreturn]] void throw_truncated(Compression c, uint64_t consumed) {
  throw Error(fmt::format(
      "{} kernel payload is truncated (the stream ends unfinished after {} input bytes); "
      "re-copy the kernel",
      compression_name(c), consumed));
}

[[noreturn]] void throw_too_long(Compression c, uint64_t recorded) {
  throw Error(fmt::format(
      "{} kernel payload decompresses to more than the {} bytes recorded at its end; the image "
      "is corrupt, re-copy or rebuild the kernel",
      compression_name(c), recorded));
}

void check_length(Compression c, uint64_t produced, uint64_t recorded) {
  if (produced != recorded) {
    throw Error(fmt::format(
        "{} kernel payload decompressed to {} bytes but the image records {}; the image is "
        "corrupt, re-copy or rebuild the kernel",
        compression_name(c), produced, recorded));
  }
}

// ---- gzip (zlib). The size trailer is the gzip ISIZE field, part of the stream. ----
struct Inflater {
  z_stream stream{};
  Inflater() {
    // 16 + MAX_WBITS: gzip wrapper only, with its CRC32 and ISIZE checks.
    if (inflateInit2(&stream, 16 + MAX_WBITS) != Z_OK) throw Error("zlib: out of memory");
  }
  ~Inflater() { inflateEnd(&stream); }
  Inflater(const Inflater&) = delete;
  Inflater& operator=(const Inflater&) = delete;
};

void gunzip(std::span<const uint8_t> in, std::span<uint8_t> out) {
  // Both fit in uInt: payload_length is a u32 and out is capped at kMaxDecompressedKernel.
  Inflater z;
  z.stream.next_in = const_cast<Bytef*>(in.data());  // zlib's API is not const-correct
  z.stream.avail_in = static_cast<uInt>(in.size());
  // zlib wants a non-null output pointer even for an empty buffer.
  uint8_t dummy = 0;
  z.stream.next_out = out.empty() ? &dummy : out.data();
  z.stream.avail_out = static_cast<uInt>(out.size());
  const int ret = inflate(&z.stream, Z_FINISH);
  switch (ret) {
    case Z_STREAM_END:
      check_length(Compression::kGzip, z.stream.total_out, out.size());
      return;
    case Z_BUF_ERROR:
      if (z.stream.avail_out == 0) throw_too_long(Compression::kGzip, out.size());
      throw_truncated(Compression::kGzip, z.stream.total_in);
    case Z_MEM_ERROR:
      throw Error("zlib: out of memory while decompressing the kernel");
    default:
      throw_corrupt(
          Compression::kGzip,
          fmt::format("{} after {} input bytes",
                      z.stream.msg != nullptr ? z.stream.msg : "bad data", z.stream.total_in));
  }
}

// ---- xz (liblzma). The kernel uses CRC32 checks and the x86 BCJ filter; liblzma does both. ----
struct LzmaStream {
  lzma_stream stream = LZMA_STREAM_INIT;
  LzmaStream() = default;
  ~LzmaStream() { lzma_end(&stream); }
  LzmaStream(const LzmaStream&) = delete;
  LzmaStream& operator=(const LzmaStream&) = delete;
};

void unxz(std::span<const uint8_t> in, std::span<uint8_t> out) {
  LzmaStream s;
  // Not LZMA_CONCATENATED: the kernel's decoder stops at the end of the first stream, and the
  // size trailer that follows it is not xz data.
  if (lzma_stream_decoder(&s.stream, kXzMemoryLimit, 0) != LZMA_OK) {
    throw Error("liblzma: cannot initialise the xz decoder (out of memory)");
  }
  s.stream.next_in = in.data();
  s.stream.avail_in = in.size();
  s.stream.next_out = out.data();
  s.stream.avail_out = out.size();
  for (;;) {
    const lzma_ret ret = lzma_code(&s.stream, LZMA_FINISH);
    switch (ret) {
      case LZMA_OK:
        // Progress was made. Even with the output full, the index and footer may remain; a
        // stream that really needs more room ends in LZMA_BUF_ERROR on the next call.
        continue;
      case LZMA_STREAM_END:
        check_length(Compression::kXz, s.stream.total_out, out.size());
        return;
      case LZMA_BUF_ERROR:
        if (s.stream.avail_out == 0) throw_too_long(Compression::kXz, out.size());
        throw_truncated(Compression::kXz, s.stream.total_in);
      case LZMA_MEMLIMIT_ERROR:
        throw Error(fmt::format(
            "xz kernel payload needs more than {} of decoder memory (dictionary too large); "
            "recompress the kernel with a smaller dictionary or use the bzImage boot method",
            mib(kXzMemoryLimit)));
      case LZMA_MEM_ERROR:
        throw Error("liblzma: out of memory while decompressing the kernel");
      case LZMA_OPTIONS_ERROR:
        throw_corrupt(Compression::kXz, fmt::format("unsupported xz options after {} input bytes",
                                                    s.stream.total_in));
      case LZMA_DATA_ERROR:
        throw_corrupt(Compression::kXz,
                      fmt::format("bad data after {} input bytes", s.stream.total_in));
      case LZMA_FORMAT_ERROR:
        throw_corrupt(Compression::kXz, "bad xz stream header");
      default:
        throw_corrupt(Compression::kXz, fmt::format("liblzma error {} after {} input bytes",
                                                    static_cast<int>(ret), s.stream.total_in));
    }
  }
}

// ---- lz4 legacy frame, parsed like lib/decompress_unlz4.c: the trailer is not part of the
// stream, magics between blocks are skipped, and the blocks must end exactly at the payload
// end. ----
void unlz4_legacy(std::span<const uint8_t> in, std::span<uint8_t> out) {
  const auto block_bound = static_cast<uint64_t>(LZ4_compressBound(int{kLz4LegacyBlockMax}));
  uint64_t pos = 4;  // the magic, checked by detect_compression
  uint64_t out_pos = 0;
  uint64_t block = 0;
  while (pos < in.size()) {
    if (in.size() - pos < 4) throw_truncated(Compression::kLz4, pos);
    const uint32_t size = load_le32(in.data() + pos);
    pos += 4;
    if (size == kLz4LegacyMagic) continue;
    if (size > block_bound) {
      throw_corrupt(Compression::kLz4,
                    fmt::format("block {} at byte {} claims {} compressed bytes, more than an "
                                "8 MiB legacy block can need",
                                block, pos - 4, size));
    }
    if (size > in.size() - pos) throw_truncated(Compression::kLz4, in.size());
    const uint64_t room = std::min(kLz4LegacyBlockMax, out.size() - out_pos);
    const int n = LZ4_decompress_safe(reinterpret_cast<const char*>(in.data() + pos),
                                      reinterpret_cast<char*>(out.data() + out_pos),
                                      static_cast<int>(size), static_cast<int>(room));
    if (n < 0) {
      // LZ4 cannot tell "bad data" from "needs more room"; name both when room was short.
      if (room < kLz4LegacyBlockMax) {
        throw_corrupt(Compression::kLz4,
                      fmt::format("block {} at byte {} does not decode, or decodes past the {} "
                                  "bytes recorded at the payload end",
                                  block, pos - 4, out.size()));
      }
      throw_corrupt(Compression::kLz4,
                    fmt::format("block {} at byte {} does not decode", block, pos - 4));
    }
    out_pos += static_cast<uint64_t>(n);
    pos += size;
    ++block;
  }
  check_length(Compression::kLz4, out_pos, out.size());
}

// ---- zstd. Like lib/decompress_unzstd.c: one frame, decoded in a single pass into the output
// (which also serves as the window, so frames without a content size and with the --ultra 128 MiB
// window need no extra buffer). The size trailer after the frame is ignored. ----
struct ZstdDctxDeleter {
  void operator()(ZSTD_DCtx* dctx) const { ZSTD_freeDCtx(dctx); }
};

void unzstd(std::span<const uint8_t> in, std::span<uint8_t> out) {
  const size_t frame = ZSTD_findFrameCompressedSize(in.data(), in.size());
  if (ZSTD_isError(frame)) {
    if (ZSTD_getErrorCode(frame) == ZSTD_error_srcSize_wrong) {
      throw_truncated(Compression::kZstd, in.size());
    }
    throw_corrupt(Compression::kZstd, ZSTD_getErrorName(frame));
  }
  std::unique_ptr<ZSTD_DCtx, ZstdDctxDeleter> dctx(ZSTD_createDCtx());
  if (!dctx) throw Error("libzstd: out of memory while decompressing the kernel");
  const size_t n = ZSTD_decompressDCtx(dctx.get(), out.data(), out.size(), in.data(), frame);
  if (ZSTD_isError(n)) {
    if (ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall) {
      throw_too_long(Compression::kZstd, out.size());
    }
    throw_corrupt(Compression::kZstd, ZSTD_getErrorName(n));
  }
  check_length(Compression::kZstd, n, out.size());
}

}  // namespace

Compression detect_compression(std::span<const uint8_t> payload) noexcept {
  for (const auto& m : kMagics) {
    if (payload.size() >= m.length &&
        std::equal(m.bytes.begin(), m.bytes.begin() + m.length, payload.begin())) {
      return m.compression;
    }
  }
  return Compression::kUnknown;
}

std::string_view compression_name(Compression compression) noexcept {
  switch (compression) {
    case Compression::kGzip:
      return "gzip";
    case Compression::kBzip2:
      return "bzip2";
    case Compression::kLzma:
      return "lzma";
    case Compression::kXz:
      return "xz";
    case Compression::kLzo:
      return "lzo";
    case Compression::kLz4:
      return "lz4";
    case Compression::kZstd:
      return "zstd";
    case Compression::kUnknown:
      break;
  }
  return "unknown";
}

bool compression_supported(Compression compression) noexcept {
  switch (compression) {
    case Compression::kGzip:
    case Compression::kXz:
    case Compression::kLz4:
    case Compression::kZstd:
      return true;
    default:
      return false;
  }
}

uint64_t decompressed_size(std::span<const uint8_t> payload, uint64_t max_output) {
  if (payload.size() < kSizeTrailer + 2) {
    throw Error(fmt::format(
        "kernel payload is truncated ({} bytes, too short for compressed data and its size "
        "trailer); re-copy the kernel",
        payload.size()));
  }
  const uint64_t size = load_le32(payload.data() + payload.size() - kSizeTrailer);
  if (size > max_output) {
    throw Error(fmt::format(
        "kernel payload records a decompressed size of {}, more than pier's limit of {}; the "
        "image is corrupt or not a kernel",
        mib(size), mib(max_output)));
  }
  return size;
}

namespace {

// Throws unless `payload` starts with the magic of a format pier decompresses.
Compression check_format(std::span<const uint8_t> payload) {
  const Compression c = detect_compression(payload);
  if (compression_supported(c)) return c;
  if (c != Compression::kUnknown) {
    throw Error(fmt::format(
        "kernel payload uses {} compression, which pier cannot decompress for direct boot; "
        "use the bzImage boot method (the kernel decompresses itself) or a kernel built with "
        "gzip, xz, lz4 or zstd",
        compression_name(c)));
  }
  throw Error(fmt::format(
      "kernel payload has an unknown compression format (first bytes {:02x}); expected gzip, "
      "xz, lz4 or zstd, re-copy the kernel or use the bzImage boot method",
      fmt::join(payload.first(std::min<size_t>(payload.size(), 4)), " ")));
}

}  // namespace

void decompress_kernel_payload_into(std::span<const uint8_t> payload, std::span<uint8_t> out) {
  const uint64_t recorded = decompressed_size(payload, UINT64_MAX);
  if (out.size() != recorded) {
    throw Error(fmt::format("internal: kernel payload output buffer is {} bytes, expected {}",
                            out.size(), recorded));
  }
  if (payload.size() > UINT32_MAX) {
    throw Error("kernel payload is larger than 4 GiB; the image is corrupt");
  }
  const Compression c = check_format(payload);
  const auto without_trailer = payload.first(payload.size() - kSizeTrailer);
  switch (c) {
    case Compression::kGzip:
      return gunzip(payload, out);
    case Compression::kXz:
      return unxz(without_trailer, out);
    case Compression::kLz4:
      return unlz4_legacy(without_trailer, out);
    case Compression::kZstd:
      return unzstd(without_trailer, out);
    default:
      break;
  }
}

std::vector<uint8_t> decompress_kernel_payload(std::span<const uint8_t> payload,
                                               uint64_t max_output) {
  // Format first, so an unsupported payload fails before a large allocation.
  const uint64_t size = decompressed_size(payload, max_output);
  check_format(payload);
  std::vector<uint8_t> out(size);
  decompress_kernel_payload_into(payload, out);
  return out;
}

}  // namespace pier::boot
