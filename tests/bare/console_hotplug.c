// console_hotplug: a guest for the runtime API's hot-plug tests. It sets up the queues of every
// port id the device offers (as Linux does at probe), then, in CPL3, forever:
//  - a port that appears (PORT_ADD) and gets its name is opened by the guest (PORT_OPEN 1), the
//    way an agent opens /dev/virtio-ports/<name> when udev creates it;
//  - every byte the host sends on an open named port is echoed back on it;
//  - PORT_REMOVE drops the port; a later PORT_ADD of the same id is a new port;
//  - commands arrive as lines on port 0 (the console): "close NAME" / "open NAME" make the guest
//    close or reopen a port; "status" prints every port. Answers go back on port 0 as
//    "ok <command>" lines (or "error ...").
// The host side is tests/integration/api_test.cpp. The guest never exits by itself: the test
// stops pier through the API's quit.
#include "virtio_console.h"
TEST_NAME("console_hotplug");

static struct vcon con;

struct echo {
  uint8_t buf[VCON_BUF];
  uint32_t len, off;
  int closed_by_command;  // the host asked us to keep it closed
};
static struct echo echoes[VCON_MAX_PORTS];

static char cmd_line[256];
static uint32_t cmd_len;

static void console_print(const char* s) {
  uint32_t len = (uint32_t)strlen(s), off = 0;
  // Console tx is completed at once by the device, so this does not spin for long.
  while (off < len) off += vcon_write(&con, 0, (const uint8_t*)s + off, len - off);
}

static int find_port(const char* name) {
  for (unsigned p = 1; p < VCON_MAX_PORTS; ++p) {
    if (con.ports[p].ready && strcmp(con.ports[p].name, name) == 0) return (int)p;
  }
  return -1;
}

static void append(char* out, uint32_t size, const char* s) {
  uint32_t n = (uint32_t)strlen(out);
  while (*s && n + 1 < size) out[n++] = *s++;
  out[n] = 0;
}

static void append_u64(char* out, uint32_t size, uint64_t v) {
  char digits[24];
  int i = 23;
  digits[i] = 0;
  do {
    digits[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v && i > 0);
  append(out, size, digits + i);
}

static void run_command(const char* line) {
  static char reply[2048];
  reply[0] = 0;
  if (strncmp(line, "close ", 6) == 0 || strncmp(line, "open ", 5) == 0) {
    const int open = line[0] == 'o';
    const char* name = line + (open ? 5 : 6);
    const int p = find_port(name);
    if (p < 0) {
      append(reply, sizeof(reply), "error no port ");
      append(reply, sizeof(reply), name);
    } else {
      echoes[p].closed_by_command = !open;
      if (con.ports[p].guest_open != open) vcon_guest_open(&con, (unsigned)p, open);
      append(reply, sizeof(reply), "ok ");
      append(reply, sizeof(reply), line);
    }
  } else if (strcmp(line, "status") == 0) {
    append(reply, sizeof(reply), "ok status");
    for (unsigned p = 1; p < VCON_MAX_PORTS; ++p) {
      const struct vcon_port* port = &con.ports[p];
      if (!port->ready) continue;
      append(reply, sizeof(reply), " ");
      append_u64(reply, sizeof(reply), p);
      append(reply, sizeof(reply), ":");
      append(reply, sizeof(reply), port->name);
      append(reply, sizeof(reply), port->guest_open ? ":open:" : ":closed:");
      append_u64(reply, sizeof(reply), port->rx_bytes);
    }
  } else {
    append(reply, sizeof(reply), "error unknown command");
  }
  append(reply, sizeof(reply), "\n");
  console_print(reply);
}

static void poll_commands(void) {
  uint8_t b[64];
  uint32_t n;
  while ((n = vcon_read(&con, 0, b, sizeof(b))) > 0) {
    for (uint32_t i = 0; i < n; ++i) {
      if (b[i] == '\n' || b[i] == '\r') {
        if (cmd_len > 0) {
          cmd_line[cmd_len] = 0;
          run_command(cmd_line);
        }
        cmd_len = 0;
      } else if (cmd_len + 1 < sizeof(cmd_line)) {
        cmd_line[cmd_len++] = (char)b[i];
      }
    }
  }
}

static uint64_t main_loop(uint64_t nports) {
  for (;;) {
    vcon_poll_control(&con);
    poll_commands();
    for (unsigned p = 1; p < nports; ++p) {
      struct vcon_port* port = &con.ports[p];
      struct echo* e = &echoes[p];
      if (!port->ready) {
        e->len = e->off = 0;
        e->closed_by_command = 0;
        continue;
      }
      if (!port->guest_open) {
        if (port->name[0] && !e->closed_by_command) vcon_guest_open(&con, p, 1);
        continue;
      }
      if (e->off == e->len) {
        e->off = 0;
        e->len = vcon_read(&con, p, e->buf, sizeof(e->buf));
      }
      if (e->off < e->len) e->off += vcon_write(&con, p, e->buf + e->off, e->len - e->off);
    }
  }
  return 0;
}

int test_main(void) {
  // 24 port ids: a few 64 KiB buffers each way per port keep the data buffers (taken from the
  // RAM above the image) to 12 MiB, so the guest runs in small --memory sizes too.
  vcon_rx_bufs = vcon_tx_bufs = 4;
  const int rc = vcon_setup(&con, VCON_MAX_PORTS);
  CHECK(rc == 0, "virtio-console set-up: %d", rc);
  if (rc) return 1;
  unsigned nports = con.max_ports < VCON_MAX_PORTS ? con.max_ports : VCON_MAX_PORTS;
  printf("console_hotplug: max_nr_ports %u, driving %u port ids\n", con.max_ports, nports);
  // Port 0 (the console) comes with the device; wait for it so commands can arrive.
  const uint64_t khz = tsc_khz() ? tsc_khz() : 3000000;
  const uint64_t deadline = rdtsc() + 10000 * khz;
  while (!con.ports[0].console && rdtsc() < deadline) {
    vcon_poll_control(&con);
    pause();
  }
  CHECK(con.ports[0].console, "port 0 is a console port");
  console_print("PIER-HOTPLUG ready\n");
  printf("PIER-TEST READY console_hotplug\n");
  enter_user(main_loop, nports, ENTER_USER_IF);
  return 0;
}
