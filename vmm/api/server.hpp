#pragma once
// The API socket (--api-socket PATH): a unix socket on the I/O thread's EventLoop, speaking the
// line protocol of protocol.hpp to any number of clients at once. Everything is non-blocking and
// bounded per client:
//  - a request line may be up to max_line bytes; a longer one gets one error response and is
//    discarded up to its newline (the connection stays usable);
//  - responses and events queue in the client's output buffer; while more than pause_input_at
//    bytes are queued the client's further requests are not read (it must read its responses);
//    a client that lets more than max_output bytes pile up (it never reads its events) is
//    dropped with a log line, so it can never hold up the I/O thread or grow pier's memory;
//  - at end of input, an unterminated last line is still a request; the connection closes once
//    its responses are out.
// Thread rules: construct, start() and shutdown() while the loop is not dispatching (before it
// runs, after it stopped); broadcast() and the handlers run on the loop's thread.
#include <sys/stat.h>

#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "devices/chardev/stream_port.hpp"
#include "devices/chardev/unix_listener.hpp"
#include "vmm/api/protocol.hpp"
#include "vmm/event_loop.hpp"
#include "vmm/fd.hpp"

namespace pier::api {

struct ServerLimits {
  size_t max_line = 64 * 1024;
  size_t pause_input_at = 256 * 1024;
  size_t max_output = 4 * 1024 * 1024;
  size_t max_clients = 256;
};

class Server {
 public:
  Server(EventLoop& loop, std::string path, Target& target, ServerLimits limits = {});
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Creates the socket (mode 0600; a stale file from a dead process is replaced, a live one is
  // an error) and starts accepting. Throws pier::Error.
  void start();
  // Sends `message` (an event) to every client (I/O thread).
  void broadcast(const json& message);
  // The machine stopped: sends `final_event` to every client, gives their output up to
  // `grace_ms` to drain, closes everything and removes the socket file.
  void shutdown(const json& final_event, int grace_ms = 500);
  size_t client_count() const { return clients_.size(); }
  const std::string& path() const { return path_; }

 private:
  struct Client {
    UniqueFd fd;
    std::string in;           // bytes read, not yet handled
    bool discarding = false;  // inside an over-long line: dropping bytes up to its newline
    bool input_eof = false;
    bool input_paused = false;
    std::string out;  // queued output; out_off bytes of it already written
    size_t out_off = 0;
    uint32_t events = 0;  // as registered with the loop
    uint64_t serial = 0;
    bool dead = false;  // dropped while its own handler runs; erased when that returns
  };

  void on_accept();
  void on_client(int fd, uint32_t events);
  // Handles complete lines in `in` while output is below the pause mark. Returns false if the
  // client was dropped.
  bool process_input(Client& c);
  // false if the client was dropped (then `c` is gone).
  bool respond(Client& c, const json& response);
  // Queues and tries to write. Returns false if the client was dropped (error or over limit).
  bool send(Client& c, std::string_view line);
  bool flush(Client& c);
  void update_interest(Client& c);
  void drop(int fd, std::string_view why);
  size_t pending(const Client& c) const { return c.out.size() - c.out_off; }
  void remove_file();

  EventLoop& loop_;
  std::string path_;
  RequestHandler handler_;
  ServerLimits limits_;
  chardev::UnixListener socket_file_;  // owns the socket file (0600, removed at the end)
  UniqueFd listen_fd_;
  std::map<int, std::unique_ptr<Client>> clients_;
  // accept() out of descriptors (EMFILE/ENFILE) leaves the connection pending and the listener
  // readable: stop watching it for a while instead of spinning (and logging) on it.
  chardev::PortTimer accept_backoff_;
  int serving_fd_ = -1;  // the client whose handler is running
  uint64_t next_serial_ = 1;
};

}  // namespace pier::api
