#pragma once
// Host-side character backends for serial-like devices (the 16550 now, virtio-console ports
// later). Every backend fd is non-blocking: the VMM never blocks on host I/O.
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace pier::chardev {

class Backend {
 public:
  virtual ~Backend() = default;
  // Writes as much as the host takes without blocking; returns the bytes accepted (0 = would
  // block). Bytes the backend cannot deliver at all (null; a write error such as EPIPE, EIO or
  // ENOSPC) count as accepted, so the guest never stalls on them; write errors also count in
  // bytes_lost() and are logged once per backend.
  virtual size_t write(std::span<const uint8_t> data) = 0;
  // Bytes accepted by write() that a write error lost (not the ones null discards by design).
  uint64_t bytes_lost() const { return bytes_lost_.load(std::memory_order_relaxed); }
  // Reads pending input; returns bytes read, 0 when none is available, -1 at end of input.
  virtual ssize_t read(std::span<uint8_t> out) = 0;
  // Descriptors to poll: EPOLLOUT on output_fd after a short write, EPOLLIN on input_fd.
  // -1 when that direction never blocks / has no input.
  virtual int output_fd() const = 0;
  virtual int input_fd() const = 0;
  virtual std::string describe() const = 0;

 protected:
  // Non-blocking write of `data` to `fd` for write(): short on EAGAIN; a hard error loses the
  // rest (counted in bytes_lost(), logged once with the reason).
  size_t write_fd(int fd, std::span<const uint8_t> data);

 private:
  std::atomic<uint64_t> bytes_lost_{0};
  bool loss_logged_ = false;
};

// Called when the user presses the quit key on an interactive stdio backend.
using QuitHandler = std::function<void()>;

// "stdio", "null" or "file=PATH" (output appended; no input). Throws pier::Error on a bad spec
// or a file that cannot be opened. `quit` is used by stdio on a terminal.
std::unique_ptr<Backend> make_backend(std::string_view spec, QuitHandler quit);

// The quit sequence on an interactive stdio backend: Ctrl-A then 'x' (Ctrl-A twice sends one).
constexpr uint8_t kEscapeKey = 0x01;
constexpr uint8_t kQuitKey = 'x';

// Filters the escape sequence out of terminal input. Returns the number of bytes kept in
// `data` (compacted in place); sets `quit` when the quit sequence was seen.
class EscapeFilter {
 public:
  size_t filter(std::span<uint8_t> data, bool& quit);

 private:
  bool pending_escape_ = false;
};

}  // namespace pier::chardev
