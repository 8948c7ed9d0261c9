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

// Decoded bytes go through here: never more than the recorded size reaches the sink, so a
// corrupt or hostile payload cannot make pier produce more than it announced.
class Output {
 public:
  Output(Compression c, uint64_t recorded, const DecompressSink& sink)
      : compression_(c), recorded_(recorded), sink_(sink) {}
  void emit(const uint8_t* data, uint64_t size) {
    if (size > recorded_ - total_) throw_too_long(compression_, recorded_);
    total_ += size;
    if (size > 0) sink_(std::span<const uint8_t>(data, size));
  }
  uint64_t finish() const {
    check_length(compression_, total_, recorded_);
    return total_;
  }
  uint64_t recorded() const { return recorded_; }

 private:
  Compression compression_;
  uint64_t recorded_;
  uint64_t total_ = 0;
  const DecompressSink& sink_;
};

// Decoders write into a scratch buffer and hand it to the sink; reused, so its pages are faulted
// in once however large the kernel is. Not zero-initialised: decoders write before anything
// reads. Never larger than the recorded output (plus one byte, to see a stream run past it).
constexpr uint64_t kChunk = uint64_t{1} << 20;
struct Scratch {
  explicit Scratch(uint64_t size)
      : size(size), data(std::make_unique_for_overwrite<uint8_t[]>(size)) {}
  uint64_t size;
  std::unique_ptr<uint8_t[]> data;
};
Scratch scratch_for(const Output& out, uint64_t max) {
  return Scratch(std::min(max, out.recorded() + 1));
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

uint64_t gunzip(std::span<const uint8_t> in, Output& out) {
  const Scratch buffer = scratch_for(out, kChunk);
  Inflater z;
  z.stream.next_in = const_cast<Bytef*>(in.data());  // zlib's API is not const-correct
  z.stream.avail_in = static_cast<uInt>(in.size());  // < 4 GiB, checked by the caller
  for (;;) {
    z.stream.next_out = buffer.data.get();
    z.stream.avail_out = static_cast<uInt>(buffer.size);
    const int ret = inflate(&z.stream, Z_NO_FLUSH);
    if (ret == Z_OK || ret == Z_STREAM_END) {
      out.emit(buffer.data.get(), buffer.size - z.stream.avail_out);
    }
    switch (ret) {
      case Z_OK:
        continue;  // more output; out of input shows up as Z_BUF_ERROR on the next call
      case Z_STREAM_END:
        return out.finish();
      case Z_BUF_ERROR:
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
}

// ---- xz (liblzma). The kernel uses CRC32 checks and the x86 BCJ filter; liblzma does both. ----
struct LzmaStream {
  lzma_stream stream = LZMA_STREAM_INIT;
  LzmaStream() = default;
  ~LzmaStream() { lzma_end(&stream); }
  LzmaStream(const LzmaStream&) = delete;
  LzmaStream& operator=(const LzmaStream&) = delete;
};

uint64_t unxz(std::span<const uint8_t> in, Output& out) {
  const Scratch buffer = scratch_for(out, kChunk);
  LzmaStream s;
  // Not LZMA_CONCATENATED: the kernel's decoder stops at the end of the first stream, and the
  // size trailer that follows it is not xz data.
  if (lzma_stream_decoder(&s.stream, kXzMemoryLimit, 0) != LZMA_OK) {
    throw Error("liblzma: cannot initialise the xz decoder (out of memory)");
  }
  s.stream.next_in = in.data();
  s.stream.avail_in = in.size();
  for (;;) {
    s.stream.next_out = buffer.data.get();
    s.stream.avail_out = buffer.size;
    const lzma_ret ret = lzma_code(&s.stream, LZMA_FINISH);
    if (ret == LZMA_OK || ret == LZMA_STREAM_END) {
      out.emit(buffer.data.get(), buffer.size - s.stream.avail_out);
    }
    switch (ret) {
      case LZMA_OK:
        continue;  // out of input shows up as LZMA_BUF_ERROR on the next call
      case LZMA_STREAM_END:
        return out.finish();
      case LZMA_BUF_ERROR:
        throw_truncated(Compression::kXz, s.stream.total_in);
      case LZMA_MEMLIMIT_ERROR:
        throw Error(fmt::format(
            "xz kernel payload needs more than {} of decoder memory (dictionary too large); "
            "recompress the kernel with a smaller dictionary or use --boot-method bzimage",
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
// end. Each block is one LZ4 block that must be decoded whole, hence the 8 MiB buffer. ----
uint64_t unlz4_legacy(std::span<const uint8_t> in, Output& out) {
  const auto block_bound = static_cast<uint64_t>(LZ4_compressBound(int{kLz4LegacyBlockMax}));
  const Scratch buffer = scratch_for(out, kLz4LegacyBlockMax);
  uint64_t pos = 4;  // the magic, checked by detect_compression
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
    const int n = LZ4_decompress_safe(reinterpret_cast<const char*>(in.data() + pos),
                                      reinterpret_cast<char*>(buffer.data.get()),
                                      static_cast<int>(size), static_cast<int>(buffer.size));
    if (n < 0) {
      // With a buffer cut down to the recorded size, LZ4 cannot tell bad data from a block that
      // decodes to more than that; name both.
      throw_corrupt(Compression::kLz4,
                    buffer.size < kLz4LegacyBlockMax
                        ? fmt::format("block {} at byte {} does not decode within the {} bytes "
                                      "recorded at the payload end",
                                      block, pos - 4, out.recorded())
                        : fmt::format("block {} at byte {} does not decode", block, pos - 4));
    }
    out.emit(buffer.data.get(), static_cast<uint64_t>(n));
    pos += size;
    ++block;
  }
  return out.finish();
}

// ---- zstd. Like lib/decompress_unzstd.c: one frame, decoded in a single pass into a buffer of
// the recorded size. That needs no window buffer besides the output (a streaming decoder would
// allocate and fault in up to the --ultra 128 MiB window) and works for frames without a
// content size. The size trailer after the frame is ignored. ----
struct ZstdDctxDeleter {
  void operator()(ZSTD_DCtx* dctx) const { ZSTD_freeDCtx(dctx); }
};

uint64_t unzstd(std::span<const uint8_t> in, Output& out) {
  const size_t frame = ZSTD_findFrameCompressedSize(in.data(), in.size());
  if (ZSTD_isError(frame)) {
    if (ZSTD_getErrorCode(frame) == ZSTD_error_srcSize_wrong) {
      throw_truncated(Compression::kZstd, in.size());
    }
    throw_corrupt(Compression::kZstd, ZSTD_getErrorName(frame));
  }
  std::unique_ptr<ZSTD_DCtx, ZstdDctxDeleter> dctx(ZSTD_createDCtx());
  if (!dctx) throw Error("libzstd: out of memory while decompressing the kernel");
  const Scratch buffer(std::max<uint64_t>(out.recorded(), 1));
  const size_t n =
      ZSTD_decompressDCtx(dctx.get(), buffer.data.get(), out.recorded(), in.data(), frame);
  if (ZSTD_isError(n)) {
    if (ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall) {
      throw_too_long(Compression::kZstd, out.recorded());
    }
    throw_corrupt(Compression::kZstd, ZSTD_getErrorName(n));
  }
  out.emit(buffer.data.get(), n);
  return out.finish();
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
        "use --boot-method bzimage (the kernel decompresses itself) or a kernel built with "
        "gzip, xz, lz4 or zstd",
        compression_name(c)));
  }
  throw Error(fmt::format(
      "kernel payload has an unknown compression format (first bytes {:02x}); expected gzip, "
      "xz, lz4 or zstd, re-copy the kernel or use --boot-method bzimage",
      fmt::join(payload.first(std::min<size_t>(payload.size(), 4)), " ")));
}

}  // namespace

uint64_t decompress_kernel_payload_to(std::span<const uint8_t> payload, const DecompressSink& sink,
                                      uint64_t max_output) {
  const uint64_t recorded = decompressed_size(payload, max_output);
  if (payload.size() > UINT32_MAX) {
    throw Error("kernel payload is larger than 4 GiB; the image is corrupt");
  }
  const Compression c = check_format(payload);
  Output out(c, recorded, sink);
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
  throw Error("internal: unhandled kernel payload compression");
}

std::vector<uint8_t> decompress_kernel_payload(std::span<const uint8_t> payload,
                                               uint64_t max_output) {
  // Format first, so an unsupported payload fails before a large allocation.
  const uint64_t size = decompressed_size(payload, max_output);
  check_format(payload);
  std::vector<uint8_t> out;
  out.reserve(size);
  decompress_kernel_payload_to(
      payload,
      [&](std::span<const uint8_t> chunk) { out.insert(out.end(), chunk.begin(), chunk.end()); },
      max_output);
  return out;
}

}  // namespace pier::boot
