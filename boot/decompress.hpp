#pragma once
// Decompression of a bzImage payload (the compressed kernel proper, vmlinux.bin + relocs) in the
// host, for the direct boot method. Formats are detected by magic exactly like the kernel's
// lib/decompress.c; pier supports the ones Debian and the upstream defaults use (gzip, xz, lz4,
// zstd) and rejects bzip2, lzma and lzo with an actionable message.
//
// The kernel build appends the uncompressed size as a le32 to every payload (for gzip it is the
// gzip trailer's ISIZE); arch/x86/boot/compressed/misc.c decompresses into exactly that many
// bytes. pier does the same: a stream that decodes to any other length is rejected as corrupt,
// and decoding stops as soon as it would exceed that size.
#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

namespace pier::boot {

enum class Compression { kUnknown, kGzip, kBzip2, kLzma, kXz, kLzo, kLz4, kZstd };

// Upper bound on a decompressed kernel; a payload whose recorded size is larger is rejected
// before anything is allocated.
constexpr uint64_t kMaxDecompressedKernel = uint64_t{512} << 20;

Compression detect_compression(std::span<const uint8_t> payload) noexcept;
// "gzip", "xz", "lz4", ... ("unknown" for kUnknown).
std::string_view compression_name(Compression compression) noexcept;
bool compression_supported(Compression compression) noexcept;

// Receives the decompressed stream in order, in chunks of up to a few MiB. The span is valid
// only during the call; the sink may throw to abort decompression.
using DecompressSink = std::function<void(std::span<const uint8_t> chunk)>;

// The uncompressed size recorded in the payload's last four bytes. Throws pier::Error when the
// payload is too short to hold it or it exceeds `max_output`.
uint64_t decompressed_size(std::span<const uint8_t> payload,
                           uint64_t max_output = kMaxDecompressedKernel);

// Streams the decompressed payload to `sink` through a small reused buffer, so that a caller can
// put the bytes where they belong (guest RAM) without holding the whole kernel in host memory.
// Returns the number of bytes delivered, which is always decompressed_size(payload). Throws
// pier::Error (one actionable line) for an unknown or unsupported format, corrupt or truncated
// data, or output longer or shorter than the recorded size; data found bad part-way through is
// reported after the chunks before it were delivered, and never more than the recorded size is.
uint64_t decompress_kernel_payload_to(std::span<const uint8_t> payload, const DecompressSink& sink,
                                      uint64_t max_output = kMaxDecompressedKernel);

// The same, collected into a vector of exactly decompressed_size(payload) bytes.
std::vector<uint8_t> decompress_kernel_payload(std::span<const uint8_t> payload,
                                               uint64_t max_output = kMaxDecompressedKernel);

}  // namespace pier::boot
