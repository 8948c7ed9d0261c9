#include "devices/chardev/unix_listener.hpp"

#include <fmt/format.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "vmm/error.hpp"
#include "vmm/log.hpp"

namespace pier::chardev {
sockaddr_un unix_socket_address(const std::string& path, std::string_view label) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    throw Error(fmt::format("{}: the path is {} bytes; unix sockets allow 1 to {}", label,
                            path.size(), sizeof(addr.sun_path) - 1));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

namespace {

UniqueFd unix_socket() {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) throw system_error("socket(AF_UNIX)");
  return fd;
}

// A socket file at `path` left by a dead process is removed; a live one or a non-socket throws.
void replace_stale_socket(const std::string& path, const sockaddr_un& addr,
                          std::string_view label) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    throw system_error(fmt::format("cannot use {}", label));
  }
  if (!S_ISSOCK(st.st_mode)) {
    throw Error(
        fmt::format("{} exists and is not a socket; remove it or choose another path", label));
  }
  // Probing by connecting is the only reliable test. A live listener (pier, QEMU, socat) sees
  // one client that leaves at once without sending anything.
  UniqueFd probe = unix_socket();
  if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0 ||
      errno == EAGAIN) {
    throw Error(fmt::format("{} is in use by another process", label));
  }
  if (errno == ENOENT) return;  // removed meanwhile
  if (errno != ECONNREFUSED) {
    throw system_error(fmt::format("cannot tell whether {} is in use", label));
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    throw system_error(fmt::format("cannot replace stale socket {}", label));
  }
  log::info("{}: replaced a stale socket file", path);
}

// bind() under a umask that leaves only the owner's read/write: the socket file is created
// 0600 in the one system call. The umask is process-wide; for the instant it is set, a file
// another thread creates gets a narrower mode, never a wider one.
int bind_owner_only(int fd, const sockaddr_un& addr) {
  const mode_t old = ::umask(0177);
  const int rc = ::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  const int err = errno;
  ::umask(old);
  errno = err;
  return rc;
}

}  // namespace

UnixListener UnixListener::listen(const std::string& path, std::string_view label, int backlog) {
  const sockaddr_un addr = unix_socket_address(path, label);
  replace_stale_socket(path, addr, label);
  UnixListener l;
  l.path_ = path;
  l.fd_ = unix_socket();
  if (bind_owner_only(l.fd_.get(), addr) != 0) {
    const int err = errno;
    if (err == EADDRINUSE) throw Error(fmt::format("{} is in use by another process", label));
    const auto dir = std::filesystem::path(path).parent_path();
    if (err == ENOENT && !std::filesystem::is_directory(dir.empty() ? "." : dir)) {
      throw Error(fmt::format("cannot create {}: its directory does not exist", label));
    }
    throw Error(fmt::format("cannot create {}: {} (is the directory writable?)", label,
                            std::strerror(err)));
  }
  // Remember which file we made (lstat: never through a symlink), so remove() leaves alone a
  // file that replaced ours.
  if (::lstat(path.c_str(), &l.created_) != 0 || !S_ISSOCK(l.created_.st_mode)) {
    throw Error(fmt::format("cannot set up {}: the socket file vanished or was replaced", label));
  }
  l.owns_file_ = true;
  if (::listen(l.fd_.get(), backlog) != 0) {
    throw system_error(fmt::format("cannot listen on {}", label));
  }
  return l;
}

UnixListener& UnixListener::operator=(UnixListener&& other) noexcept {
  if (this == &other) return *this;
  remove();
  path_ = std::move(other.path_);
  fd_ = std::move(other.fd_);
  created_ = other.created_;
  owns_file_ = std::exchange(other.owns_file_, false);
  return *this;
}

void UnixListener::remove() {
  if (!owns_file_) return;
  owns_file_ = false;
  struct stat st {};
  if (::lstat(path_.c_str(), &st) == 0 && st.st_dev == created_.st_dev &&
      st.st_ino == created_.st_ino) {
    ::unlink(path_.c_str());
  }
}

}  // namespace pier::chardev
