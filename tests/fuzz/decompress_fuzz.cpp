// Fuzzes bzImage payload decompression. The first byte picks a mode:
//   0: the rest is a payload as found in a bzImage (magic, stream, le32 size);
//   1: the rest is compressed by the harness (format from the second byte) the way the kernel
//      build does it, and must decompress to exactly itself;
//   2: like 1, then damaged (bytes flipped, stream cut, size trailer changed) before decoding,
//      which drives pier's framing and error paths with otherwise well-formed streams.
// Output is capped far below the real limit so a claimed size cannot make runs slow.
#include <lz4.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string_view>
#include <vector>

#include "boot/decompress.hpp"
#include "vmm/error.hpp"

namespace {

// Errors are one line, and "internal:" ones mean pier's own invariants broke.
void check_error(const pier::Error& e) {
  const std::string_view message = e.what();
  if (message.find('\n') != message.npos || message.starts_with("internal:")) std::abort();
}

using pier::boot::Compression;

constexpr uint64_t kMaxOutput = 8 << 20;

void append_le32(std::vector<uint8_t>& out, uint32_t value) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(value >> (8 * i)));
}

std::vector<uint8_t> compress(Compression c, std::span<const uint8_t> data) {
  std::vector<uint8_t> out;
  switch (c) {
    case Compression::kGzip: {
      z_stream z{};
      if (deflateInit2(&z, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        std::abort();
      }
      out.resize(deflateBound(&z, data.size()));
      z.next_in = const_cast<Bytef*>(data.data());
      z.avail_in = static_cast<uInt>(data.size());
      z.next_out = out.data();
      z.avail_out = static_cast<uInt>(out.size());
      if (deflate(&z, Z_FINISH) != Z_STREAM_END) std::abort();
      out.resize(z.total_out);
      deflateEnd(&z);
      return out;  // ends with ISIZE, the size the kernel build would append
    }
    case Compression::kXz: {
      lzma_options_lzma opts;
      lzma_lzma_preset(&opts, 0);
      lzma_filter filters[] = {
          {LZMA_FILTER_X86, nullptr}, {LZMA_FILTER_LZMA2, &opts}, {LZMA_VLI_UNKNOWN, nullptr}};
      out.resize(lzma_stream_buffer_bound(data.size()));
      size_t pos = 0;
      if (lzma_stream_buffer_encode(filters, LZMA_CHECK_CRC32, nullptr, data.data(), data.size(),
                                    out.data(), &pos, out.size()) != LZMA_OK) {
        std::abort();
      }
      out.resize(pos);
      break;
    }
    case Compression::kLz4: {
      append_le32(out, 0x184c2102);
      std::vector<char> block(
          static_cast<size_t>(LZ4_compressBound(static_cast<int>(data.size()))));
      const int n =
          LZ4_compress_default(reinterpret_cast<const char*>(data.data()), block.data(),
                               static_cast<int>(data.size()), static_cast<int>(block.size()));
      if (n <= 0 && !data.empty()) std::abort();
      if (n > 0) {
        append_le32(out, static_cast<uint32_t>(n));
        out.insert(out.end(), block.begin(), block.begin() + n);
      }
      break;
    }
    default: {
      ZSTD_CCtx* cctx = ZSTD_createCCtx();
      ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 0);
      ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
      out.resize(ZSTD_compressBound(data.size()));
      const size_t n = ZSTD_compress2(cctx, out.data(), out.size(), data.data(), data.size());
      ZSTD_freeCCtx(cctx);
      if (ZSTD_isError(n)) std::abort();
      out.resize(n);
      break;
    }
  }
  append_le32(out, static_cast<uint32_t>(data.size()));
  return out;
}

// Decompresses, checking the API's promises; returns the output, or nothing on pier::Error.
std::optional<std::vector<uint8_t>> decode(std::span<const uint8_t> payload) {
  std::vector<uint8_t> out;
  try {
    const uint64_t recorded = pier::boot::decompressed_size(payload, kMaxOutput);
    const uint64_t n = pier::boot::decompress_kernel_payload_to(
        payload,
        [&](std::span<const uint8_t> chunk) {
          if (chunk.empty() || chunk.size() > recorded - out.size()) std::abort();
          out.insert(out.end(), chunk.begin(), chunk.end());
        },
        kMaxOutput);
    if (n != recorded || out.size() != recorded) std::abort();
    return out;
  } catch (const pier::Error& e) {
    check_error(e);
    return std::nullopt;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t mode = data[0] % 3;
  if (mode == 0) {
    decode(std::span(data + 1, size - 1));
    return 0;
  }
  constexpr Compression kFormats[] = {Compression::kGzip, Compression::kXz, Compression::kLz4,
                                      Compression::kZstd};
  const Compression c = kFormats[data[1] % 4];
  if (mode == 1) {
    const std::span<const uint8_t> plain(data + 2, size - 2);
    const auto out = decode(compress(c, plain));
    if (!out || !std::equal(out->begin(), out->end(), plain.begin(), plain.end())) std::abort();
    return 0;
  }
  // mode 2: the next 8 bytes say how to damage the stream compressed from the rest.
  if (size < 10) return 0;
  const uint8_t* how = data + 2;
  auto payload = compress(c, std::span(data + 10, size - 10));
  for (int i = 0; i < 3; ++i) {
    const size_t at = (how[i] * 131u + how[3]) % payload.size();
    payload[at] ^= static_cast<uint8_t>(how[4 + i] | 1);
  }
  if ((how[7] & 1) != 0) payload.resize(payload.size() * how[7] / 256 + 1);
  if ((how[7] & 2) != 0) append_le32(payload, how[7] * 97u);
  decode(payload);
  return 0;
}
