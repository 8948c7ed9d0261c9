// pier-vport-api: checks, from inside a Linux guest, every row of the virtio-serial guest API
// table (shared/seeds/guest-and-host-api.txt) on one named port, while the host side
// (tests/integration/debian_console_test.cpp) drives the port's socket. The two sides meet at
// markers on the console: the guest prints "GUEST-API WAIT <step>" and the host acts.
//
//   pier-vport-api NAME
//   pier-vport-api --unplug NAME   the host hot-adds port NAME through the runtime API, talks on
//                                  it, then removes it while this program is blocked in read():
//                                  read returns ENODEV, poll reports POLLHUP.
//
// Prints "GUEST-API check <what>: ok|FAILED (...)" per check and "GUEST-API DONE failures=N".
// Static, no dependencies: built into the test initramfs.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int failures;
static volatile sig_atomic_t sigio_count;

static void check(int ok, const char *what, const char *fmt, ...) {
  char detail[256] = "";
  if (fmt) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
  }
  printf("GUEST-API check %s: %s%s%s%s\n", what, ok ? "ok" : "FAILED", detail[0] ? " (" : "",
         detail, detail[0] ? ")" : "");
  fflush(stdout);
  if (!ok) failures++;
}

static void wait_host(const char *step) {
  printf("GUEST-API WAIT %s\n", step);
  fflush(stdout);
}

static void on_sigio(int sig) {
  (void)sig;
  sigio_count++;
}
static void on_alarm(int sig) { (void)sig; }

static int wait_sigio(int count, int seconds) {
  for (int i = 0; i < seconds * 100 && sigio_count < count; ++i) usleep(10000);
  return sigio_count >= count;
}

static short poll_events(int fd, short events, int timeout_ms) {
  struct pollfd p = {fd, events, 0};
  return poll(&p, 1, timeout_ms) > 0 ? p.revents : 0;
}

static int unplug_main(const char *name) {
  char link[PATH_MAX], buf[64];
  snprintf(link, sizeof(link), "/dev/virtio-ports/%s", name);
  printf("GUEST-API UNPLUG BEGIN %s\n", name);
  wait_host("hotadd");
  // The host adds the port at run time; init's hotplug hook makes the link.
  int found = 0;
  for (int i = 0; i < 1200 && !found; ++i) {
    found = access(link, F_OK) == 0;
    if (!found) usleep(100000);
  }
  check(found, "a hot-added port appears in /dev/virtio-ports", "%s", link);
  int fd = found ? open(link, O_RDWR) : -1;
  check(fd >= 0, "open the hot-added port", "errno %d", fd < 0 ? errno : 0);
  if (fd < 0) goto done;
  // The host sees us open it (the guest-opened event), connects and says hello. Until it has
  // connected, poll reports POLLHUP at once (a read would return 0): wait 100 ms a round, for
  // up to 120 s, whatever poll says.
  size_t got = 0;
  for (int i = 0; i < 1200 && got < 6; ++i) {
    if (!(poll_events(fd, POLLIN, 100) & POLLIN)) {
      usleep(100000);
      continue;
    }
    const ssize_t n = read(fd, buf + got, 6 - got);
    if (n > 0) got += (size_t)n;
  }
  check(got == 6 && memcmp(buf, "hello\n", 6) == 0, "the host talks on the hot-added port",
        "%zu bytes", got);
  // A second process blocks in poll, this one in read; then the host removes the port.
  const pid_t child = fork();
  if (child == 0) {
    const short ev = poll_events(fd, POLLIN, 120000);
    _exit(ev & POLLHUP ? 0 : 1);
  }
  wait_host("unplug");
  errno = 0;
  const ssize_t r = read(fd, buf, sizeof(buf));
  const int read_errno = errno;
  check(r < 0 && read_errno == ENODEV, "a read blocked on a removed port returns ENODEV",
        "ret %zd errno %d", r, read_errno);
  const short ev = poll_events(fd, POLLIN | POLLOUT, 0);
  check(ev & POLLHUP, "poll on a removed port reports POLLHUP", "revents %#x", ev);
  int status = -1;
  waitpid(child, &status, 0);
  check(WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "a poll blocked on a removed port wakes with POLLHUP", "status %#x", status);
  errno = 0;
  const ssize_t w = write(fd, "x", 1);
  check(w < 0 && errno == ENODEV, "write to a removed port returns ENODEV", "ret %zd errno %d",
        w, errno);
  close(fd);
  int gone = 0;
  for (int i = 0; i < 100 && !gone; ++i) {
    gone = access(link, F_OK) != 0;
    if (!gone) usleep(100000);
  }
  check(gone, "the removed port's link goes away", "%s", link);
done:
  printf("GUEST-API UNPLUG DONE failures=%d\n", failures);
  fflush(stdout);
  return failures ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc > 2 && strcmp(argv[1], "--unplug") == 0) return unplug_main(argv[2]);
  const char *name = argc > 1 ? argv[1] : "org.pier.api";
  char link[PATH_MAX], target[PATH_MAX] = "", sysname[PATH_MAX], buf[256];
  printf("GUEST-API BEGIN %s\n", name);

  // Port discovery: /dev/virtio-ports/<name> -> /dev/vportNpM, and sysfs has the name.
  snprintf(link, sizeof(link), "/dev/virtio-ports/%s", name);
  ssize_t n = readlink(link, target, sizeof(target) - 1);
  if (n > 0) target[n] = 0;
  check(n > 0 && strstr(target, "vport") != NULL, "discovery by name", "%s -> %s", link, target);
  const char *base = strrchr(target, '/') ? strrchr(target, '/') + 1 : target;
  snprintf(sysname, sizeof(sysname), "/sys/class/virtio-ports/%s/name", base);
  FILE *f = fopen(sysname, "r");
  buf[0] = 0;
  if (f) {
    if (!fgets(buf, sizeof(buf), f)) buf[0] = 0;
    fclose(f);
  }
  buf[strcspn(buf, "\n")] = 0;
  check(strcmp(buf, name) == 0, "sysfs name", "%s = '%s'", sysname, buf);

  // Opening: >= 0, and only one open at a time.
  int fd = open(link, O_RDWR);
  check(fd >= 0, "open", "fd %d errno %d", fd, fd < 0 ? errno : 0);
  if (fd < 0) goto done;
  int fd2 = open(link, O_RDWR);
  check(fd2 < 0 && errno == EBUSY, "second open is EBUSY", "fd %d errno %d", fd2, errno);
  if (fd2 >= 0) close(fd2);

  // Host not connected (the host side has not connected yet).
  check(read(fd, buf, sizeof(buf)) == 0, "read returns 0 while the host is not connected", NULL);
  short ev = poll_events(fd, POLLIN | POLLOUT, 0);
  check(ev & POLLHUP, "poll reports POLLHUP while the host is not connected", "revents %#x", ev);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  errno = 0;
  const int nb_write_ok = write(fd, "x", 1) < 0 && errno == EAGAIN;
  const int nb_write_errno = errno;
  check(nb_write_ok, "non-blocking write is EAGAIN while not connected", "errno %d", nb_write_errno);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  struct sigaction sa = {0};
  sa.sa_handler = on_alarm;
  sigaction(SIGALRM, &sa, NULL);  // no SA_RESTART: the blocked write returns EINTR
  alarm(1);
  errno = 0;
  const ssize_t w = write(fd, "x", 1);
  alarm(0);
  check(w < 0 && errno == EINTR, "blocking write blocks while not connected", "ret %zd errno %d",
        w, errno);

  // SIGIO on host connect and disconnect for an O_ASYNC fd.
  sa.sa_handler = on_sigio;
  sigaction(SIGIO, &sa, NULL);
  fcntl(fd, F_SETOWN, getpid());
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC);
  wait_host("connect");
  const int connect_sigio = wait_sigio(1, 30);
  check(connect_sigio, "SIGIO on host connect", "%d signals", (int)sigio_count);
  ev = poll_events(fd, POLLIN | POLLOUT, 0);
  check((ev & POLLOUT) && !(ev & POLLHUP), "poll reports POLLOUT, not POLLHUP, when connected",
        "revents %#x", ev);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  errno = 0;
  const int nb_read_ok = read(fd, buf, sizeof(buf)) < 0 && errno == EAGAIN;
  const int nb_read_errno = errno;
  check(nb_read_ok, "non-blocking read is EAGAIN when connected without data", "errno %d",
        nb_read_errno);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);

  // Data both ways.
  wait_host("send");
  ev = poll_events(fd, POLLIN, 10000);
  check(ev & POLLIN, "poll reports POLLIN when the host sent data", "revents %#x", ev);
  size_t got = 0;
  while (got < 15) {
    n = read(fd, buf + got, sizeof(buf) - 1 - got);
    if (n <= 0) break;
    got += (size_t)n;
  }
  buf[got] = 0;
  check(strncmp(buf, "ping-from-host\n", 15) == 0, "blocking read gets the host's bytes", "'%s'",
        buf);
  const char pong[] = "pong-from-guest\n";
  check(write(fd, pong, sizeof(pong) - 1) == (ssize_t)sizeof(pong) - 1, "write reaches the host",
        NULL);
  const int before = sigio_count;
  wait_host("disconnect");
  const int disconnect_sigio = wait_sigio(before + 1, 30);
  check(disconnect_sigio, "SIGIO on host disconnect", "%d signals", (int)sigio_count);
  check(read(fd, buf, sizeof(buf)) == 0, "read returns 0 after the host disconnected", NULL);
  ev = poll_events(fd, POLLIN | POLLOUT, 0);
  check(ev & POLLHUP, "poll reports POLLHUP after the host disconnected", "revents %#x", ev);
  close(fd);
done:
  printf("GUEST-API DONE failures=%d\n", failures);
  fflush(stdout);
  return failures ? 1 : 0;
}
