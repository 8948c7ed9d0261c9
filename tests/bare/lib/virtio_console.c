#include "virtio_console.h"

#define F_MULTIPORT (1ull << 1)
#define CFG_MAX_NR_PORTS 4

struct ctrl {
  uint32_t id;
  uint16_t event, value;
};

static uint8_t vcon_mem[(2 + 2 * VCON_MAX_PORTS)][16384] ALIGNED(4096);
static uint8_t crx_space[VCON_QSIZE][VCON_BUF] ALIGNED(4096);
static uint8_t port_rx_space[VCON_MAX_PORTS][VCON_RX_BUFS][VCON_DATA_BUF] ALIGNED(4096);
static uint8_t port_tx_space[VCON_MAX_PORTS][VCON_TX_BUFS][VCON_DATA_BUF] ALIGNED(4096);
static uint8_t ctx_buf[VCON_QSIZE][64] ALIGNED(64);
static uint16_t ctx_next;

static void post_rx(struct vq *q, uint8_t *buf, uint32_t len) {
  const uint64_t a = (uint64_t)buf;
  const int w = 1;
  virtq_add(q, &a, &len, &w, 1);
}

static void send_control(struct vcon *c, uint32_t id, uint16_t event, uint16_t value) {
  // Control tx is completed by the device at once; reclaim before reusing a slot.
  uint32_t uid, ulen;
  while (virtq_get_used(&c->ctx, &uid, &ulen)) {
  }
  uint8_t *b = ctx_buf[ctx_next++ % VCON_QSIZE];
  struct ctrl m = {id, event, value};
  memcpy(b, &m, sizeof(m));
  const uint64_t a = (uint64_t)b;
  const uint32_t len = sizeof(m);
  const int w = 0;
  virtq_add(&c->ctx, &a, &len, &w, 1);
  virtq_kick(&c->ctx);
}

static void handle_control(struct vcon *c, const uint8_t *b, uint32_t len) {
  if (len < sizeof(struct ctrl)) {
    c->bad_control++;
    return;
  }
  struct ctrl m;
  memcpy(&m, b, sizeof(m));
  c->control_msgs++;
  if (m.id >= VCON_MAX_PORTS) {
    // Ports beyond what this guest drives: acknowledge nothing (Linux would warn).
    return;
  }
  struct vcon_port *p = &c->ports[m.id];
  switch (m.event) {
    case VCON_PORT_ADD:
      if (!p->added) {
        p->added = 1;
        if (p->rx.size) {
          for (int i = 0; i < VCON_RX_BUFS; ++i) post_rx(&p->rx, p->rx_bufs[i], VCON_DATA_BUF);
          p->kicks += (uint64_t)virtq_kick(&p->rx);
          p->ready = 1;
          send_control(c, m.id, VCON_PORT_READY, 1);
        }
      }
      break;
    case VCON_PORT_REMOVE:
      p->added = p->ready = p->host_open = 0;
      break;
    case VCON_CONSOLE_PORT:
      p->console = m.value != 0;
      if (p->console) {
        p->guest_open = 1;  // as Linux's hvc does
        send_control(c, m.id, VCON_PORT_OPEN, 1);
      }
      break;
    case VCON_PORT_OPEN:
      p->host_open = m.value != 0;
      break;
    case VCON_PORT_NAME: {
      uint32_t n = len - (uint32_t)sizeof(m);
      if (n >= sizeof(p->name)) n = sizeof(p->name) - 1;
      memcpy(p->name, b + sizeof(m), n);
      p->name[n] = 0;
      break;
    }
    default:
      break;
  }
}

void vcon_poll_control(struct vcon *c) {
  uint32_t id, len;
  int got = 0;
  while (virtq_get_used(&c->crx, &id, &len)) {
    if (id >= c->crx.size) {
      c->bad_control++;
      continue;
    }
    // The used id is the descriptor slot; the slot still holds the buffer's address.
    uint8_t *buf = (uint8_t *)c->crx.desc[id].addr;
    handle_control(c, buf, len > VCON_BUF ? VCON_BUF : len);
    post_rx(&c->crx, buf, VCON_BUF);  // one message per buffer: give it back
    got = 1;
  }
  if (got) virtq_kick(&c->crx);
}

int vcon_init(struct vcon *c, unsigned nports, uint64_t timeout_ms) {
  memset(c, 0, sizeof(*c));
  if (nports > VCON_MAX_PORTS) nports = VCON_MAX_PORTS;
  int rc = virtio_init(&c->dev, 3, F_MULTIPORT | VIRTIO_F_EVENT_IDX);
  if (rc) return rc;
  if (!(c->dev.features & F_MULTIPORT)) {
    printf("vcon: no MULTIPORT\n");
    return -10;
  }
  c->max_ports = *(volatile uint32_t *)(c->dev.device_cfg + CFG_MAX_NR_PORTS);
  if (nports > c->max_ports) nports = c->max_ports;
  // Queue layout: port 0 rx/tx = 0/1, control rx/tx = 2/3, port p>=1 at 2p+2 / 2p+3.
  int m = 0;
  if (virtq_setup(&c->dev, &c->crx, 2, VCON_QSIZE, vcon_mem[m++], 0xffff)) return -11;
  if (virtq_setup(&c->dev, &c->ctx, 3, VCON_QSIZE, vcon_mem[m++], 0xffff)) return -12;
  virtq_poll_only(&c->crx);
  virtq_poll_only(&c->ctx);
  c->crx_bufs = crx_space;
  for (unsigned p = 0; p < nports; ++p) {
    struct vcon_port *port = &c->ports[p];
    const uint16_t rxq = (uint16_t)(p == 0 ? 0 : 2 * p + 2);
    port->rx_bufs = port_rx_space[p];
    port->tx_bufs = port_tx_space[p];
    port->rx_pending_buf = -1;
    if (virtq_setup(&c->dev, &port->rx, rxq, VCON_QSIZE, vcon_mem[m++], 0xffff)) return -13;
    if (virtq_setup(&c->dev, &port->tx, (uint16_t)(rxq + 1), VCON_QSIZE, vcon_mem[m++], 0xffff))
      return -14;
    virtq_poll_only(&port->rx);
    virtq_poll_only(&port->tx);
  }
  virtio_driver_ok(&c->dev);
  for (int i = 0; i < VCON_QSIZE / 2; ++i) post_rx(&c->crx, c->crx_bufs[i], VCON_BUF);
  virtq_kick(&c->crx);
  send_control(c, 0xffffffffu, VCON_DEVICE_READY, 1);
  const uint64_t khz = tsc_khz() ? tsc_khz() : 3000000;
  const uint64_t deadline = rdtsc() + timeout_ms * khz;
  for (;;) {
    vcon_poll_control(c);
    unsigned ready = 0;
    for (unsigned p = 0; p < nports; ++p) ready += c->ports[p].ready;
    if (ready == nports) return 0;
    if (rdtsc() > deadline) {
      printf("vcon: %u of %u ports ready after %lu ms\n", ready, nports, timeout_ms);
      return -15;
    }
    pause();
  }
}

void vcon_guest_open(struct vcon *c, unsigned id, int open) {
  c->ports[id].guest_open = open;
  send_control(c, id, VCON_PORT_OPEN, (uint16_t)(open ? 1 : 0));
}

static void reclaim_tx(struct vcon_port *p) {
  uint32_t id, len;
  while (virtq_get_used(&p->tx, &id, &len)) {
    p->tx_inflight--;
    p->tx_done += (uint32_t)p->tx.desc[id].len;
  }
}

uint32_t vcon_write(struct vcon *c, unsigned id, const uint8_t *data, uint32_t len) {
  struct vcon_port *p = &c->ports[id];
  reclaim_tx(p);
  uint32_t queued = 0;
  int added = 0;
  while (queued < len && p->tx_inflight < VCON_TX_BUFS && p->tx_inflight < p->tx.size) {
    const uint32_t n = len - queued < VCON_DATA_BUF ? len - queued : VCON_DATA_BUF;
    // Single-descriptor chains use descriptor slot avail_idx % size (see virtq_add), and the
    // device completes a port's writes in order, so buffer avail_idx % VCON_TX_BUFS is free.
    uint8_t *buf = p->tx_bufs[p->tx.avail_idx % VCON_TX_BUFS];
    memcpy(buf, data + queued, n);
    const uint64_t a = (uint64_t)buf;
    const int w = 0;
    virtq_add(&p->tx, &a, &n, &w, 1);
    p->tx_inflight++;
    queued += n;
    added = 1;
  }
  if (added) p->kicks += (uint64_t)virtq_kick(&p->tx);
  p->tx_bytes += queued;
  return queued;
}

uint32_t vcon_read(struct vcon *c, unsigned id, uint8_t *out, uint32_t len) {
  struct vcon_port *p = &c->ports[id];
  uint32_t copied = 0;
  int refilled = 0;
  while (copied < len) {
    if (p->rx_pending_buf < 0) {
      uint32_t uid, ulen;
      if (!virtq_get_used(&p->rx, &uid, &ulen)) break;
      // Descriptor slot -> the buffer that was posted in it.
      const uint64_t addr = p->rx.desc[uid].addr;
      p->rx_pending_buf = (int)((addr - (uint64_t)p->rx_bufs[0]) / VCON_DATA_BUF);
      p->rx_pending_off = 0;
      p->rx_pending_len = ulen > VCON_DATA_BUF ? VCON_DATA_BUF : ulen;
    }
    const uint32_t avail = p->rx_pending_len - p->rx_pending_off;
    const uint32_t n = len - copied < avail ? len - copied : avail;
    memcpy(out + copied, p->rx_bufs[p->rx_pending_buf] + p->rx_pending_off, n);
    copied += n;
    p->rx_pending_off += n;
    if (p->rx_pending_off == p->rx_pending_len) {
      post_rx(&p->rx, p->rx_bufs[p->rx_pending_buf], VCON_DATA_BUF);
      p->rx_pending_buf = -1;
      refilled = 1;
    }
  }
  if (refilled) p->kicks += (uint64_t)virtq_kick(&p->rx);
  p->rx_bytes += copied;
  return copied;
}

uint64_t vcon_tx_completed(struct vcon *c, unsigned id) {
  reclaim_tx(&c->ports[id]);
  return c->ports[id].tx_done;
}
