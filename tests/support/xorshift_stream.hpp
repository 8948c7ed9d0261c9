#pragma once
// The byte stream the console stream tests send and check: xorshift64, 8 bytes per step, seeded
// per port and direction. The bare guest (tests/bare/console_stream.c) generates the same
// sequence, so the host side of the integration tests and the unit tests share this one copy.
#include <cstdint>

namespace pier::test {

class XorshiftStream {
 public:
  explicit XorshiftStream(uint64_t seed) : state_(seed * 0x9e3779b97f4a7c15ull + 0x1234567) {}
  uint8_t next() {
    if (used_ == 8) {
      uint64_t x = state_;
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      state_ = word_ = x;
      used_ = 0;
    }
    return static_cast<uint8_t>(word_ >> (8 * used_++));
  }

 private:
  uint64_t state_, word_ = 0;
  unsigned used_ = 8;
};

}  // namespace pier::test
