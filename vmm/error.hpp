#pragma once
// Setup errors: anything the user can fix (bad flag, bad kernel file, KVM missing) is thrown as a
// pier::Error whose message is one actionable line. main() prints it and exits 1. Errors caused by
// the guest never throw across a device boundary (see DESIGN.md "Conventions").
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pier {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// "what: strerror(errno)" for a failed system call.
inline Error system_error(const std::string& what, int err = errno) {
  return Error(what + ": " + std::strerror(err));
}

}  // namespace pier
