// console_stream: the KVM-level loss test for virtio-console. Ports 1..N (cmdline ports=N) carry
// `bytes=B` each way at once: the guest writes a deterministic stream (xorshift, seeded by port
// id) and checks, byte by byte, the host's stream (seed 1000 + id). The host side
// (tests/integration/bare_console_test.cpp) does the mirror image through the ports' sockets,
// and may stall or reconnect mid-stream: nothing may be lost, duplicated or reordered. Port 0 is
// the console (hvc0): the guest writes a greeting there. The data loop runs in CPL3.
// Command line: ports=N bytes=B [dir=both|h2g|g2h] [echo] [verify=0] [rxbufs=N] [txbufs=N]
// [timeout_ms=MS] [linger_ms=MS] (see test_main and data_loop).
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

static uint64_t data_loop(uint64_t arg) {
  (void)arg;
  const uint64_t khz = tsc_khz() ? tsc_khz() : 3000000;
  const uint64_t timeout = cmdline_u64("timeout_ms", 120000) * khz;
  const uint64_t start = rdtsc();
  for (;;) {
    vcon_poll_control(&con);
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
      while (do_tx && r->queued < total_bytes && (buf = vcon_write_buf(&con, p, &room))) {
        const uint64_t left = total_bytes - r->queued;
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
      if ((do_rx && r->received < total_bytes) ||
          (do_tx && vcon_tx_completed(&con, p) < total_bytes)) {
        done = 0;
      }
    }
    if (done) return 0;
    if (rdtsc() - start > timeout) return 1;
  }
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
  const uint64_t t0 = rdtsc();
  const uint64_t timed_out = enter_user(data_loop, 0, ENTER_USER_IF);
  const uint64_t us = khz ? (rdtsc() - t0) * 1000 / khz : 0;
  CHECK(!timed_out, "all streams complete before the timeout");
  for (unsigned p = 1; p <= nports; ++p) {
    struct port_run *r = &runs[p];
    const uint64_t kick_tsc = con.ports[p].rx.notify_tsc + con.ports[p].tx.notify_tsc;
    const uint64_t kicks = con.ports[p].kicks;
    printf("port %u: sent %lu (completed %lu), received %lu, %lu bad (first at %lu), %lu kicks "
           "(%lu ns each)\n",
           p, r->queued, vcon_tx_completed(&con, p), r->received, r->bad, r->first_bad, kicks,
           khz && kicks ? kick_tsc * 1000000 / khz / kicks : 0);
    if (echo) {
      CHECK(r->received == total_bytes, "port %u echoed %lu bytes", p, r->received);
      continue;
    }
    if (do_rx) {
      CHECK(r->received == total_bytes && r->bad == 0, "port %u received the host stream intact", p);
    }
    if (do_tx) {
      CHECK(vcon_tx_completed(&con, p) == total_bytes, "port %u: device completed every write", p);
    }
  }
  // linger_ms=N: stay up (spinning in CPL3) so the host can still connect, e.g. to the console.
  const uint64_t linger = cmdline_u64("linger_ms", 0);
  if (linger) enter_user(linger_loop, linger, ENTER_USER_IF);
  if (us) {
    printf("console_stream: %u ports x %lu bytes each way in %lu us: %lu MB/s per direction\n",
           nports, total_bytes, us, total_bytes * nports / us);
  }
  return 0;
}
