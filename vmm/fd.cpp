#include "vmm/fd.hpp"

#include <fcntl.h>
#include <sys/stat.h>

#include <string>

namespace pier {

UniqueFd reopen_private_nonblocking(int fd, int access) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return {};
  if (!S_ISFIFO(st.st_mode) && !(S_ISCHR(st.st_mode) && ::isatty(fd))) return {};
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  return UniqueFd(::open(path.c_str(), access | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
}

}  // namespace pier
