#pragma once
// Host-side backends for virtio-console ports: what a port's bytes are connected to on the host.
//
// A backend is "host connected" while a peer is attached: a socket client (listening unix/tcp),
// an established outgoing connection (client mode), an open pty slave; always for stdio, file
// and null. Every change is reported to the Listener, which turns it into PORT_OPEN(id, 0/1).
//
// Everything runs on the I/O thread: start(), the Listener callbacks, readv/writev and the
// want_* calls. All fds are non-blocking and driven by readiness on the EventLoop; nothing ever
// blocks. Backpressure both ways is the device's: it asks for input only while the guest has rx
// buffers (want_input), and for writability only while it holds guest bytes the backend did not
// take (want_output).
//
// Callback rules (so a device never sees re-entrant calls):
// - start() never calls the Listener. After it returns, host_connected() is the initial state
//   (true for stdio/file/null, and for a client socket that connected at once); only changes
//   after that are reported.
// - The Listener is only called from the loop (an fd event or a posted task), never from inside
//   readv/writev/want_*/stop. When readv/writev discover that the peer is gone they return -1,
//   host_connected() is false from then on, and on_host_connected(false) follows from the loop
//   before anything else of this backend (in particular before the next peer's
//   on_host_connected(true)).
// - on_readable/on_writable are level-triggered: they repeat while the condition holds and the
//   matching want_* is on, so the device may read or write as little as it likes per callback.
//
// A peer that hangs up with bytes still unread keeps host_connected() true until the device has
// read them (readv then returns -1): what a client sent before closing reaches the guest, and
// the guest sees PORT_OPEN(0) after the last byte. While it drains, writev returns -1 (output
// waits for the next peer).
#include <sys/types.h>
#include <sys/uio.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "devices/chardev/backend.hpp"
#include "vmm/event_loop.hpp"

namespace pier::chardev {

// Parsed from the CLI: "socket=PATH[,client[,reconnect=SECONDS]]", "tcp=[HOST:]PORT",
// "pty", "file=PATH", "stdio", "null". A comma inside a path is written ",," (as in QEMU).
struct PortBackendSpec {
  enum class Kind { kUnixListen, kUnixConnect, kTcpListen, kPty, kFile, kStdio, kNull };
  Kind kind = Kind::kNull;
  std::string path;   // unix socket path, file path
  std::string host;   // tcp: listen address (default 127.0.0.1; IPv6 without the brackets)
  uint16_t port = 0;  // tcp; 0 = any free port (see PortBackend::address())
  // Client mode: retry interval (millisecond resolution; "reconnect=0.5" is allowed), 0 = none.
  std::chrono::milliseconds reconnect{0};
  std::string text;  // the spec as given, for messages
};

// Throws pier::Error with one actionable line on a malformed spec.
PortBackendSpec parse_port_backend(std::string_view spec);

// What the machine knows about the port a backend serves.
struct PortBackendOptions {
  // Names the port in messages: pty prints "char device redirected to /dev/pts/N (label NAME)".
  std::string label;
  // stdio on a terminal: called when the user types the quit sequence (Ctrl-A x).
  QuitHandler quit;
};

struct TerminalSize {
  uint16_t cols = 0;
  uint16_t rows = 0;
};

class PortBackend {
 public:
  class Listener {
   public:
    virtual ~Listener() = default;
    virtual void on_host_connected(bool connected) = 0;
    // Input is available (only reported while want_input(true)).
    virtual void on_readable() = 0;
    // The backend can take more output (only reported while want_output(true) and connected).
    virtual void on_writable() = 0;
  };

  virtual ~PortBackend() = default;

  // Opens/binds/listens (setup errors throw pier::Error: unwritable path, socket path held by a
  // live listener, address in use, ...) and registers with `loop`. A stale unix socket file left
  // by a dead process is replaced. Call once; `loop` and `listener` must outlive the backend.
  virtual void start(EventLoop& loop, Listener& listener) = 0;
  virtual bool host_connected() const = 0;
  // Reads into `iov`: bytes read (> 0), 0 when nothing is available now (or input has ended for
  // good, e.g. stdin at EOF or a unix client that shut down its sending side), -1 when no peer
  // is connected (if it just went away, on_host_connected(false) follows from the loop).
  virtual ssize_t readv(std::span<const iovec> iov) = 0;
  // Writes from `iov`: bytes accepted (>= 0; fewer than offered when the peer is slow), -1 when
  // no peer is connected (the caller keeps its bytes for the next peer).
  virtual ssize_t writev(std::span<const iovec> iov) = 0;
  virtual void want_input(bool on) = 0;
  virtual void want_output(bool on) = 0;
  // "socket=/tmp/a.sock (listening)", "pty /dev/pts/3", "tcp=127.0.0.1:40123 (listening)", ...
  virtual std::string describe() const = 0;
  // Where a host program attaches, valid after start(): the socket path, "127.0.0.1:40123" /
  // "[::1]:40123" (the bound port, also when 0 was asked for), "/dev/pts/3", the file path;
  // empty for stdio and null.
  virtual std::string address() const = 0;
  // The size of the terminal behind the backend (stdio on a terminal, a pty whose user set a
  // size), for VIRTIO_CONSOLE_RESIZE; nullopt when there is none. Cheap (one ioctl).
  virtual std::optional<TerminalSize> terminal_size() const { return std::nullopt; }
  // Bytes writev() accepted that a write error then lost (file= on a full disk, stdio on a
  // closed pipe); socket backends report a lost peer as -1 instead and lose nothing.
  virtual uint64_t bytes_lost() const { return 0; }
  // Unregisters from the loop and closes everything; removes the socket file of a listening unix
  // socket (idempotent; never calls the Listener; the destructor calls it).
  virtual void stop() = 0;
};

// Only one stdio user per process: the machine must not give stdio to both the serial port
// (make_backend("stdio")) and a console port; they share the terminal's saved state.
std::unique_ptr<PortBackend> make_port_backend(const PortBackendSpec& spec,
                                               PortBackendOptions options = {});

}  // namespace pier::chardev
