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
#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "vmm/event_loop.hpp"

namespace pier::chardev {

// Parsed from the CLI: "socket=PATH[,client][,reconnect=SECONDS]", "tcp=[HOST:]PORT",
// "pty", "file=PATH", "stdio", "null".
struct PortBackendSpec {
  enum class Kind { kUnixListen, kUnixConnect, kTcpListen, kPty, kFile, kStdio, kNull };
  Kind kind = Kind::kNull;
  std::string path;          // unix socket path, file path
  std::string host;          // tcp: listen address (default 127.0.0.1)
  uint16_t port = 0;         // tcp
  unsigned reconnect_s = 0;  // client mode: retry interval in seconds, 0 = no retry
  std::string text;          // the spec as given, for messages
};

// Throws pier::Error with one actionable line on a malformed spec.
PortBackendSpec parse_port_backend(std::string_view spec);

class PortBackend {
 public:
  class Listener {
   public:
    virtual ~Listener() = default;
    virtual void on_host_connected(bool connected) = 0;
    // Input is available (only reported while want_input(true)).
    virtual void on_readable() = 0;
    // The backend can take more output (only reported while want_output(true)).
    virtual void on_writable() = 0;
  };

  virtual ~PortBackend() = default;

  // Opens/binds/listens (setup errors throw pier::Error: unwritable path, socket path held by a
  // live listener, address in use, ...) and registers with `loop`. A stale unix socket file left
  // by a dead process is replaced.
  virtual void start(EventLoop& loop, Listener& listener) = 0;
  virtual bool host_connected() const = 0;
  // Reads into `iov`: bytes read (> 0), 0 when nothing is available now, -1 when the peer went
  // away (the backend has then reported on_host_connected(false) or will at once).
  virtual ssize_t readv(std::span<const iovec> iov) = 0;
  // Writes from `iov`: bytes accepted (>= 0; fewer than offered when the peer is slow), -1 when
  // no peer is connected (the caller keeps its bytes for the next peer).
  virtual ssize_t writev(std::span<const iovec> iov) = 0;
  virtual void want_input(bool on) = 0;
  virtual void want_output(bool on) = 0;
  // "socket=/tmp/a.sock (listening)", "pty /dev/pts/3", ...
  virtual std::string describe() const = 0;
  // Unregisters from the loop and closes everything (idempotent; the destructor calls it).
  virtual void stop() = 0;
};

std::unique_ptr<PortBackend> make_port_backend(const PortBackendSpec& spec);

}  // namespace pier::chardev
