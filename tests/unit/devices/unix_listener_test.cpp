// The one way pier makes a listening unix socket file (API server and socket= ports).
#include "devices/chardev/unix_listener.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "port_test_util.hpp"
#include "vmm/error.hpp"

namespace pier::chardev {
namespace {

using port_test::TempDir;
using port_test::unix_connect;
using port_test::unix_listen;
using ::testing::HasSubstr;

std::string listen_error(const std::string& path) {
  try {
    UnixListener::listen(path, "socket path " + path, 4);
  } catch (const Error& e) {
    return e.what();
  }
  return "(listening)";
}

mode_t mode_of(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
  return st.st_mode;
}

TEST(UnixListener, CreatesTheFileOwnerOnlyWhateverTheUmaskAndRestoresIt) {
  TempDir dir;
  const std::string path = dir.file("s.sock");
  const mode_t old = ::umask(0);
  {
    auto l = UnixListener::listen(path, "socket path " + path, 4);
    EXPECT_TRUE(S_ISSOCK(mode_of(path)));
    EXPECT_EQ(mode_of(path) & 07777, 0600u);
    EXPECT_TRUE(unix_connect(path));
  }
  EXPECT_EQ(::umask(old), 0u) << "the umask is back to what it was";
  EXPECT_FALSE(std::filesystem::exists(path)) << "removed with the listener";
}

TEST(UnixListener, ReplacesAStaleSocketAndRefusesALiveOne) {
  TempDir dir;
  const std::string path = dir.file("s.sock");
  {
    // Bound, never listened: what a killed process leaves (connect is refused).
    UniqueFd stale(::socket(AF_UNIX, SOCK_STREAM, 0));
    const sockaddr_un addr = unix_socket_address(path, "x");
    ASSERT_EQ(::bind(stale.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
  }
  auto l = UnixListener::listen(path, "socket path " + path, 4);
  EXPECT_TRUE(unix_connect(path));
  EXPECT_EQ(listen_error(path), "socket path " + path + " is in use by another process");
}

TEST(UnixListener, NeverFollowsOrTouchesWhatIsNotASocket) {
  TempDir dir;
  const std::string target = dir.file("precious");
  std::ofstream(target) << "keep";
  ASSERT_EQ(::chmod(target.c_str(), 0644), 0);
  const std::string link = dir.file("link.sock");
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  EXPECT_THAT(listen_error(link), HasSubstr("exists and is not a socket"));
  EXPECT_THAT(listen_error(target), HasSubstr("exists and is not a socket"));
  const std::string dangling = dir.file("dangling.sock");
  ASSERT_EQ(::symlink(dir.file("nowhere").c_str(), dangling.c_str()), 0);
  EXPECT_THAT(listen_error(dangling), HasSubstr("exists and is not a socket"));
  EXPECT_FALSE(std::filesystem::exists(dir.file("nowhere")));
  EXPECT_EQ(mode_of(target) & 07777, 0644u);
  EXPECT_TRUE(S_ISLNK(mode_of(link)));
}

TEST(UnixListener, RemoveLeavesAFileThatReplacedOurs) {
  TempDir dir;
  const std::string path = dir.file("s.sock");
  auto l = UnixListener::listen(path, "socket path " + path, 4);
  ASSERT_EQ(::unlink(path.c_str()), 0);
  UniqueFd other = unix_listen(path);  // another process took the path meanwhile
  l.remove();
  EXPECT_TRUE(S_ISSOCK(mode_of(path)));
}

TEST(UnixListener, ExplainsAMissingDirectoryAndAnOverlongPath) {
  TempDir dir;
  const std::string missing = dir.file("no/such/dir/s.sock");
  EXPECT_THAT(listen_error(missing), HasSubstr("its directory does not exist"));
  const std::string long_path = dir.file(std::string(120, 'a'));
  EXPECT_THAT(listen_error(long_path), HasSubstr("unix sockets allow 1 to 107"));
}

}  // namespace
}  // namespace pier::chardev
