// console_stream: the KVM-level loss test for virtio-console. Ports 1..N (cmdline ports=N) carry
// `bytes=B` each way at once: the guest writes a deterministic stream (xorshift, seeded by port
// id) and checks, byte by byte, the host's stream (seed 1000 + id). The host side
// (tests/integration/bare_console_test.cpp) does the mirror image through the ports' sockets,
// and may stall or reconnect mid-stream: nothing may be lost, duplicated or reordered. Port 0 is
// the console (hvc0): the guest writes a greeting there. The data loop runs in CPL3.
// Command line: ports=N bytes=B [dir=both|h2g|g2h] [echo] [verify=0] [rxbufs=N] [txbufs=N]
// [stall_ms=MS] [timeout_ms=MS] [report_ms=MS] [host_end] [linger_ms=MS] (see test_main and
// data_loop).
//
// Budgets go by progress, not by the clock: a run fails as stalled when no byte moved on any
// port, either way, for stall_ms (default 30 s); timeout_ms (default 30 min) is only a backstop
// for a run that keeps moving but never ends. report_ms=MS prints a "progress:" line every MS
// (the host side quotes the last one when it sees a stall). host_end: the streams have no fixed
// length; the host ends them by writing "end S1 .. SN\n" on hvc0 (SP: the bytes it sent on port
// P), the guest then stops writing, prints "stream-end: sent T1 .. TN" (the bytes the host must
// read) and finishes once it has received SP and the device completed TP on every port.
#include "virtio_console.h"
TEST_NAME("console_stream");

static struct vcon con;

struct stream {
  uint64_t state, word;
  unsigned used;  // bytes of `word` already consumed
};

static void stream_init(struct stream *s, uint64_t seed) {
  s->state = seed * 0x9e3779b97f4a7c15ull + 0x1234567;
  s->used = 8;
}
static inline uint8_t stream_next(struct stream *s) {
  if (s->used == 8) {
    uint64_t x = s->state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s->state = x;
    s->word = x;
    s->used = 0;
  }
  return (uint8_t)(s->word >> (8 * s->used++));
}

// Fills `out` with the next `n` stream bytes (whole words at a time; the same bytes as calling
// stream_next() n times).
static void stream_fill(struct stream *s, uint8_t *out, uint32_t n) {
  uint32_t i = 0;
  while (i < n && s->used < 8) out[i++] = stream_next(s);
  for (; n - i >= 8; i += 8) {
    uint64_t x = s->state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s->state = x;
    memcpy(out + i, &x, 8);
  }
  while (i < n) out[i++] = stream_next(s);
}

struct port_run {
  struct stream tx, rx;
  uint64_t queued, received, bad, first_bad;
  uint64_t tx_total, rx_total;  // this port's stream lengths (host_end: set by the end line)
};
static struct port_run runs[VCON_MAX_PORTS];
static uint8_t chunk[VCON_DATA_BUF * 4], expect[VCON_DATA_BUF];
static uint64_t total_bytes;
static unsigned nports;
// dir=both (default) | h2g (the guest only reads) | g2h (the guest only writes);
// echo=1: port 1 sends back every byte it receives (ping-pong latency), total_bytes in all.
static int do_tx = 1, do_rx = 1, echo;
// verify=0 (benchmarks): count the host's bytes without checking them, and send the transmit
// buffers without generating the stream into them (the host side does not check either).
static int verify = 1;
// wsize=N: the guest's write size, bytes per transmit chain (1 .. 64 KiB; `pier bench`).
static uint32_t wsize = VCON_DATA_BUF;
// host_end: open-ended streams until the host's end line on hvc0 (see the top of the file).
static int host_end, ended;
static char end_line[256];
static unsigned end_len;
// Budgets in TSC ticks (test_main): no byte moved for `stall_ticks` = stall; `cap_ticks` in all.
static uint64_t stall_ticks, cap_ticks, report_ticks;
// Where data_loop stopped, for test_main's report.
static uint64_t loop_ticks, last_move_ticks;

enum { LOOP_DONE = 0, LOOP_CAP = 1, LOOP_STALL = 2, LOOP_BAD_END = 3 };

// Bytes that moved so far, all ports, both ways (received from the host, writes the device
// completed): what the stall rule watches.
static uint64_t moved_bytes(void) {
  uint64_t m = 0;
  for (unsigned p = 1; p <= nports; ++p) m += runs[p].received + vcon_tx_completed(&con, p);
  return m;
}

static void report_progress(uint64_t now_ticks, uint64_t khz) {
  printf("progress: %lu ms, moved %lu", now_ticks / khz, moved_bytes());
  for (unsigned p = 1; p <= nports; ++p) {
    const struct port_run *r = &runs[p];
    printf("; port %u rx %lu (bad %lu) tx %lu queued %lu", p, r->received, r->bad,
           vcon_tx_completed(&con, p), r->queued);
  }
  printf("\n");
}

// host_end: reads hvc0 for the host's "end S1 .. SN" line. On it: every port's receive length
// is SP, and its transmit length what it has queued so far (no more writes). Returns 1 when the
// line was there but malformed.
static int poll_end(void) {
  const uint8_t *data;
  uint32_t got;
  while (!ended && (got = vcon_read_peek(&con, 0, &data)) > 0) {
    uint32_t i = 0;
    while (i < got && !ended) {
      const char ch = (char)data[i++];
      if (ch != '\n') {
        if (end_len + 1 < sizeof(end_line)) end_line[end_len++] = ch;
        continue;
      }
      end_line[end_len] = 0;
      ended = 1;
    }
    vcon_read_consume(&con, 0, i);
  }
  vcon_flush(&con, 0);
  if (!ended) return 0;
  const char *s = end_line;
  if (strncmp(s, "end", 3) != 0) return 1;
  s += 3;
  for (unsigned p = 1; p <= nports; ++p) {
    while (*s == ' ') ++s;
    if (*s < '0' || *s > '9') return 1;
    runs[p].rx_total = parse_u64(s, &s);
    runs[p].tx_total = runs[p].queued;
  }
  printf("stream-end: sent");
  for (unsigned p = 1; p <= nports; ++p) printf(" %lu", runs[p].tx_total);
  printf("\n");
  return 0;
}

static uint64_t data_loop(uint64_t arg) {
  (void)arg;
  const uint64_t khz = tsc_khz() ? tsc_khz() : 3000000;
  const uint64_t start = rdtsc();
  uint64_t last_moved = 0, last_move = start, next_report = start + report_ticks;
  for (;;) {
    vcon_poll_control(&con);
    if (host_end && !ended && poll_end()) return LOOP_BAD_END;
    int done = 1;
    for (unsigned p = 1; p <= nports; ++p) {
      struct port_run *r = &runs[p];
      if (echo) {
        uint32_t got = vcon_read(&con, p, chunk, sizeof(chunk));
        uint32_t off = 0;
        while (off < got) off += vcon_write(&con, p, chunk + off, got - off);
        r->received += got;
        r->queued += got;
        if (r->received < total_bytes || vcon_tx_completed(&con, p) < total_bytes) done = 0;
        continue;
      }
      // Refill the transmit side while the device takes chains (it holds them while the host
      // side is slow or gone: that is the flow control under test). The stream is generated
      // straight into the driver's buffers; with verify=0 (benchmarks) not at all.
      uint8_t *buf;
      uint32_t room;
      while (do_tx && r->queued < r->tx_total && (buf = vcon_write_buf(&con, p, &room))) {
        const uint64_t left = r->tx_total - r->queued;
        uint32_t n = left < room ? (uint32_t)left : room;
        if (n > wsize) n = wsize;  // one chain per write of wsize bytes
        if (verify) stream_fill(&r->tx, buf, n);
        vcon_write_commit(&con, p, n);
        r->queued += n;
      }
      vcon_flush(&con, p);
      const uint8_t *data;
      uint32_t got;
      while (do_rx && (got = vcon_read_peek(&con, p, &data)) > 0) {
        if (verify) {
          stream_fill(&r->rx, expect, got);
          if (memcmp(data, expect, got) != 0) {
            for (uint32_t i = 0; i < got; ++i) {
              if (data[i] != expect[i]) {
                if (!r->bad) r->first_bad = r->received + i;
                r->bad++;
              }
            }
          }
        }
        vcon_read_consume(&con, p, got);
        r->received += got;
      }
      if ((do_rx && r->received < r->rx_total) ||
          (do_tx && vcon_tx_completed(&con, p) < r->tx_total)) {
        done = 0;
      }
    }
    if (host_end && !ended) done = 0;
    if (done) return LOOP_DONE;
    const uint64_t now = rdtsc();
    const uint64_t moved = moved_bytes();
    if (moved != last_moved) last_moved = moved, last_move = now;
    loop_ticks = now - start;
    last_move_ticks = last_move - start;
    if (report_ticks && now >= next_report) {
      report_progress(now - start, khz);
      next_report = now + report_ticks;
    }
    if (now - last_move > stall_ticks) return LOOP_STALL;
    if (now - start > cap_ticks) return LOOP_CAP;
  }
}

// A virtqueue as the guest sees it: what it made available (and told the device of), what the
// device has used and the guest has taken back, and where the device asked to be kicked.
static void print_vq(const char *what, const struct vq *q) {
  const uint16_t used_idx = *(volatile const uint16_t *)(q->used + 2);
  const uint16_t avail_event = *(volatile const uint16_t *)(q->used + 4 + 8 * (uint32_t)q->size);
  printf("  %s: avail %u (kicked %u), used %u (taken %u), avail_event %u\n", what, q->avail_idx,
         q->kicked_idx, used_idx, q->last_used, avail_event);
}

static uint64_t linger_loop(uint64_t ms) {
  const uint64_t khz = tsc_khz() ? tsc_khz() : 3000000;
  const uint64_t end = rdtsc() + ms * khz;
  while (rdtsc() < end) vcon_poll_control(&con);
  return 0;
}

int test_main(void) {
  nports = (unsigned)cmdline_u64("ports", 1);
  total_bytes = cmdline_u64("bytes", 1 << 20);
  char dir[8] = "both";
  cmdline_str("dir", dir, sizeof(dir));
  do_tx = strcmp(dir, "h2g") != 0;
  do_rx = strcmp(dir, "g2h") != 0;
  echo = cmdline_has("echo");
  verify = cmdline_u64("verify", 1) != 0;
  host_end = cmdline_has("host_end");
  if (host_end && echo) test_fail("host_end and echo do not mix");
  // rxbufs=N / txbufs=N: 64 KiB buffers per port posted for receive / in flight for transmit.
  vcon_rx_bufs = (unsigned)cmdline_u64("rxbufs", vcon_rx_bufs);
  vcon_tx_bufs = (unsigned)cmdline_u64("txbufs", vcon_tx_bufs);
  wsize = (uint32_t)cmdline_u64("wsize", VCON_DATA_BUF);
  if (wsize < 1 || wsize > VCON_DATA_BUF) test_fail("wsize=%u out of range", wsize);
  if (nports < 1 || nports + 1 > VCON_MAX_PORTS) test_fail("ports=%u out of range", nports);
  int rc = vcon_init(&con, nports + 1, 10000);
  CHECK(rc == 0, "virtio-console set-up and handshake: %d", rc);
  if (rc) return 1;
  // The device answers each PORT_READY with CONSOLE_PORT / PORT_NAME / PORT_OPEN afterwards:
  // keep handling control messages until port 0 is the console and every named port has its name.
  {
    const uint64_t khz = tsc_khz() ? tsc_khz() : 3000000;
    const uint64_t deadline = rdtsc() + 10000 * khz;
    for (;;) {
      vcon_poll_control(&con);
      int complete = con.ports[0].console;
      for (unsigned p = 1; p <= nports; ++p) complete &= con.ports[p].name[0] != 0;
      if (complete || rdtsc() > deadline) break;
      pause();
    }
  }
  printf("virtio-console: max_nr_ports %u, %u control messages\n", con.max_ports, con.control_msgs);
  CHECK(con.ports[0].console, "port 0 is a console port");
  for (unsigned p = 1; p <= nports; ++p) {
    printf("port %u: name '%s'\n", p, con.ports[p].name);
    CHECK(con.ports[p].name[0] != 0, "port %u has a name", p);
    stream_init(&runs[p].tx, p);
    stream_init(&runs[p].rx, 1000 + p);
    runs[p].tx_total = runs[p].rx_total = host_end ? UINT64_MAX : total_bytes;
    vcon_guest_open(&con, p, 1);
  }
  static const char hello[] = "PIER-CONSOLE hello from hvc0\n";
  vcon_write(&con, 0, (const uint8_t *)hello, sizeof(hello) - 1);
  // wait_host=1: start only once the host has every named port open (QEMU drops what a guest
  // writes to an unconnected socket chardev; pier holds it).
  if (cmdline_u64("wait_host", 0)) {
    const uint64_t deadline = rdtsc() + 30000 * (tsc_khz() ? tsc_khz() : 3000000);
    for (;;) {
      vcon_poll_control(&con);
      int open = 1;
      for (unsigned p = 1; p <= nports; ++p) open &= con.ports[p].host_open;
      if (open || rdtsc() > deadline) break;
      pause();
    }
  }
  printf("PIER-TEST READY console_stream\n");

  const uint64_t khz = tsc_khz();
  {
    const uint64_t k = khz ? khz : 3000000;
    stall_ticks = cmdline_u64("stall_ms", 30000) * k;
    cap_ticks = cmdline_u64("timeout_ms", 1800000) * k;
    report_ticks = cmdline_u64("report_ms", 0) * k;
  }
  const uint64_t t0 = rdtsc();
  const uint64_t loop = enter_user(data_loop, 0, ENTER_USER_IF);
  const uint64_t us = khz ? (rdtsc() - t0) * 1000 / khz : 0;
  CHECK(loop != LOOP_STALL, "no stall: a byte moved at least every %lu ms (stall_ms; %lu ms in, "
        "the last byte moved at %lu ms)", khz ? stall_ticks / khz : 0, khz ? loop_ticks / khz : 0,
        khz ? last_move_ticks / khz : 0);
  CHECK(loop != LOOP_CAP, "all streams complete within timeout_ms=%lu (the backstop)",
        khz ? cap_ticks / khz : 0);
  CHECK(loop != LOOP_BAD_END, "the host's end line is \"end S1 .. SN\": '%s'", end_line);
  for (unsigned p = 1; p <= nports; ++p) {
    struct port_run *r = &runs[p];
    const uint64_t kick_tsc = con.ports[p].rx.notify_tsc + con.ports[p].tx.notify_tsc;
    const uint64_t kicks = con.ports[p].kicks;
    printf("port %u: sent %lu (completed %lu), received %lu, %lu bad (first at %lu), %lu kicks "
           "(%lu ns each)\n",
           p, r->queued, vcon_tx_completed(&con, p), r->received, r->bad, r->first_bad, kicks,
           khz && kicks ? kick_tsc * 1000000 / khz / kicks : 0);
    if (loop != LOOP_DONE) {
      // Why it stopped, from the guest's side: are receive buffers posted and the device told?
      printf("  host_open %d guest_open %d, rx buffer pending %d (%u of %u bytes read), "
             "%u writes in flight\n",
             con.ports[p].host_open, con.ports[p].guest_open, con.ports[p].rx_pending_buf,
             con.ports[p].rx_pending_off, con.ports[p].rx_pending_len, con.ports[p].tx_inflight);
      print_vq("rx", &con.ports[p].rx);
      print_vq("tx", &con.ports[p].tx);
    }
    if (echo) {
      CHECK(r->received == total_bytes, "port %u echoed %lu bytes", p, r->received);
      continue;
    }
    if (do_rx) {
      CHECK(r->received == r->rx_total && r->bad == 0, "port %u received the host stream intact",
            p);
    }
    if (do_tx) {
      CHECK(vcon_tx_completed(&con, p) == r->tx_total, "port %u: device completed every write", p);
    }
  }
  // linger_ms=N: stay up (spinning in CPL3) so the host can still connect, e.g. to the console.
  const uint64_t linger = cmdline_u64("linger_ms", 0);
  if (linger) enter_user(linger_loop, linger, ENTER_USER_IF);
  if (us && !host_end) {
    printf("console_stream: %u ports x %lu bytes each way in %lu us: %lu MB/s per direction\n",
           nports, total_bytes, us, total_bytes * nports / us);
  }
  return 0;
}
