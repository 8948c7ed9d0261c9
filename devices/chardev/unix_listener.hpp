#pragma once
// A listening unix socket file, made the same way for every socket pier serves (the --api-socket
// server and socket= ports):
//  - the path must be free, or hold a socket file a dead process left (connect is refused): that
//    one is replaced. A live listener behind it, or a file that is not a socket, is an error.
//  - the file is created owner-only (0600) by bind() itself, under a umask of 0177: no window in
//    which a wider mode is usable and no chmod by path afterwards (a chmod follows a symlink that
//    someone swapped in for the socket, and pier often runs as root). Widen it with chmod after
//    start if another user must connect.
//  - remove() (and the destructor) unlinks the file only if it is still the one we created: a
//    later process may have replaced a file we left behind.
#include <sys/stat.h>
#include <sys/un.h>

#include <string>
#include <string_view>

#include "vmm/fd.hpp"

namespace pier::chardev {

// The address of a unix socket at `path`; throws pier::Error naming `label` when the path is
// empty or too long for sun_path.
sockaddr_un unix_socket_address(const std::string& path, std::string_view label);

class UnixListener {
 public:
  UnixListener() = default;
  // Binds and listens on `path`, non-blocking and close-on-exec. `label` names the socket in
  // error messages the way the user gave it ("socket path /run/x.sock", "--api-socket
  // /run/api.sock"). Throws pier::Error with a message a user can act on.
  static UnixListener listen(const std::string& path, std::string_view label, int backlog);

  UnixListener(UnixListener&& other) noexcept { *this = std::move(other); }
  UnixListener& operator=(UnixListener&& other) noexcept;
  UnixListener(const UnixListener&) = delete;
  UnixListener& operator=(const UnixListener&) = delete;
  ~UnixListener() { remove(); }

  // The listening socket; the caller may take it (the file stays owned by this object).
  UniqueFd& fd() { return fd_; }
  const std::string& path() const { return path_; }
  // Unlinks the socket file if it is still ours. Idempotent.
  void remove();

 private:
  std::string path_;
  UniqueFd fd_;
  struct stat created_ {};
  bool owns_file_ = false;
};

}  // namespace pier::chardev
