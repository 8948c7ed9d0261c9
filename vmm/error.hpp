#pragma once
// Setup errors: anything the user can fix (bad flag, bad kernel file, KVM missing) is thrown as a
// pier::Error whose message is one actionable line. main() prints it and exits 1. Errors caused by
// the guest never throw across a device boundary (see DESIGN.md "Conventions").
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>

namespace pier {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// "what: strerror(errno)" for a failed system call.
inline Error system_error(const std::string& what, int err = errno) {
  return Error(what + ": " + std::strerror(err));
}

// User text as quoted in an error message: control bytes escaped (\xNN), so the message stays
// one line.
inline std::string printable(std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f) {
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 15];
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace pier
