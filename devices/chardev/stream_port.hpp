#pragma once
// The part every "peer comes and goes" backend shares: one stream fd at a time (an accepted or
// connected socket, a pty master while its slave is open), the connected/draining/gone state
// machine, readiness registration from want_input/want_output, and deferred notifications so
// the Listener is never called from inside readv/writev.
#include <sys/uio.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>

#include "devices/chardev/port_backend.hpp"
#include "vmm/fd.hpp"

namespace pier::chardev {

// A timerfd on the loop (reconnect delays, pty polling, accept back-off). Not copyable; stop()
// (or the destructor) unregisters it.
class PortTimer {
 public:
  PortTimer() = default;
  PortTimer(const PortTimer&) = delete;
  PortTimer& operator=(const PortTimer&) = delete;
  ~PortTimer() { stop(); }

  void start(EventLoop& loop, std::function<void()> on_fire);
  void arm(std::chrono::milliseconds delay, bool periodic = false);
  void disarm();
  void stop();

 private:
  EventLoop* loop_ = nullptr;
  UniqueFd fd_;
  std::function<void()> on_fire_;
};

class StreamPort : public PortBackend {
 public:
  bool host_connected() const final { return state_ == State::kOpen || state_ == State::kDraining; }
  ssize_t readv(std::span<const iovec> iov) final;
  ssize_t writev(std::span<const iovec> iov) final;
  void want_input(bool on) final;
  void want_output(bool on) final;

 protected:
  // How end of input and hangups look on the fd.
  enum class Flavor {
    // Full close = EPOLLHUP; a peer's shutdown(SHUT_WR) only ends input (RDHUP) and the
    // connection stays up for output (an agent client can send a request, half-close, and still
    // read the reply, as `socat` does).
    kUnixSocket,
    // TCP cannot tell a half-close from a close without writing, and a silent guest would then
    // keep the client's slot forever: end of input (FIN) means the peer is gone.
    kTcpSocket,
    // A pty master: EPOLLHUP while no slave is open; read gives EIO once the slave closed and
    // the data it wrote has been read.
    kPtyMaster,
  };

  explicit StreamPort(Flavor flavor) : flavor_(flavor) {}

  // Remembers the loop and listener (the subclass's start() calls this first).
  void bind_loop(EventLoop& loop, Listener& listener);
  // A peer is attached on `fd`. `owned` is closed when the peer goes (sockets); the pty master
  // is borrowed. `notify`: report on_host_connected(true) now (from an event handler), or not
  // (from start(), where host_connected() is the initial state).
  void attach(UniqueFd owned, int fd, bool notify);
  // The peer is gone and its fd is out of the loop (and closed if owned), after
  // on_host_connected(false) was delivered: accept the next client, arm a reconnect, ...
  virtual void on_detached() = 0;
  // Drops any peer without notifying and cancels pending posts (for stop()).
  void stop_stream();
  // Runs `fn` on the loop thread later, unless this backend has been stopped or destroyed.
  void post(std::function<void()> fn);

  bool attached() const { return state_ != State::kNone; }
  EventLoop* loop_ = nullptr;
  Listener* listener_ = nullptr;

 private:
  enum class State {
    kNone,      // no peer
    kOpen,      // peer attached
    kDraining,  // peer gone, its last bytes still unread: connected for input only
    kGone,      // peer gone, found inside readv/writev: teardown and notification are posted
  };

  void on_fd_event(uint64_t generation, uint32_t events);
  // The peer hung up: drain what it sent first, or detach now.
  void peer_gone(bool from_loop);
  // Notifies and closes now (from_loop) or marks kGone and posts that (inside a device call,
  // where the fd must also stay open so its number cannot be reused within this epoll batch).
  void detach(bool from_loop);
  void finish_detach();
  void update_registration();
  size_t pending_input() const;
  bool hangup_now() const;

  const Flavor flavor_;
  State state_ = State::kNone;
  int fd_ = -1;
  UniqueFd owned_;
  uint64_t generation_ = 0;  // per attached peer: stale events and posts are ignored
  bool registered_ = false;
  uint32_t registered_events_ = 0;
  bool want_in_ = false;
  bool want_out_ = false;
  bool rdhup_seen_ = false;   // stop asking for EPOLLRDHUP (it is level-triggered)
  bool input_ended_ = false;  // unix half-close: readv returns 0 for good
  std::shared_ptr<char> alive_ = std::make_shared<char>();
};

}  // namespace pier::chardev
