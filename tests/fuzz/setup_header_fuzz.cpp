// Fuzzes the bzImage setup header parser: any input either parses into spans that lie inside it
// or is rejected with a one-line pier::Error.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

#include "boot/bzimage.hpp"
#include "vmm/error.hpp"

namespace {

// Errors are one line, and "internal:" ones mean pier's own invariants broke.
void check_error(const pier::Error& e) {
  const std::string_view message = e.what();
  if (message.find('\n') != message.npos || message.starts_with("internal:")) std::abort();
}

bool inside(std::span<const uint8_t> inner, std::span<const uint8_t> outer) {
  return inner.data() >= outer.data() && inner.data() + inner.size() <= outer.data() + outer.size();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pier::boot;
  std::vector<uint8_t> file(data, data + size);
  // Odd first byte: stamp the fields that gate everything else (signature, a supported
  // protocol, the 64-bit entry flag, few setup sectors), so most runs reach the size and payload
  // checks instead of stopping at the magic.
  if (size > 0x270 && (data[0] & 1) != 0) {
    std::memcpy(&file[kSetupMagicOffset], "HdrS", 4);
    file[0x207] = 0x02;
    file[0x206] = static_cast<uint8_t>(0x0c + file[0x206] % 4);
    file[0x236] |= kXlfKernel64;
    file[0x1f1] &= 3;
  }
  try {
    const SetupHeader h = parse_setup_header(file);
    const std::span<const uint8_t> all(file);
    if (!inside(h.header_bytes, all) || !inside(h.protected_mode, all) ||
        !inside(h.payload, h.protected_mode) || h.payload.empty() ||
        h.header_bytes.size() > kSetupHeaderMaxEnd - kSetupHeaderOffset ||
        h.version < kMinBootProtocol || (h.xloadflags & kXlfKernel64) == 0) {
      std::abort();
    }
    (void)bzimage_runtime_start(h, 0x100000);
  } catch (const pier::Error& e) {
    check_error(e);
  }
  return 0;
}
