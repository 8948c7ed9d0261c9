#include "virtio_console.h"

#define F_MULTIPORT (1ull << 1)
#define CFG_MAX_NR_PORTS 4

struct ctrl {
  uint32_t id;
  uint16_t event, value;
};

unsigned vcon_rx_bufs = 64, vcon_tx_bufs = 64;

static uint8_t vcon_mem[(2 + 2 * VCON_MAX_PORTS)][16384] ALIGNED(4096);
static uint8_t crx_space[VCON_CTRL_QSIZE][VCON_BUF] ALIGNED(4096);
static uint8_t ctx_buf[VCON_CTRL_QSIZE][64] ALIGNED(64);
static uint16_t ctx_next;

extern uint8_t __image_end[];

// Port data buffers come from the RAM above the image (2 MiB aligned), checked against e820.
static uint64_t data_next;
static uint8_t *data_alloc(uint64_t bytes) {
  if (!data_next) data_next = ((uint64_t)__image_end + 0x1fffff) & ~0x1fffffull;
  const uint64_t at = data_next, end = at + bytes;
  for (int i = 0; i < e820_count(); ++i) {
    const struct e820_entry *e = e820_get(i);
    if (e->type == E820_RAM && at >= e->addr && end <= e->addr + e->size) {
      data_next = (end + 4095) & ~4095ull;
      return (uint8_t *)at;
    }
  }
  printf("vcon: no RAM for %lu bytes of buffers at %#lx\n", bytes, at);
  return 0;
}

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
  uint8_t *b = ctx_buf[ctx_next++ % VCON_CTRL_QSIZE];
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
        p->adds++;
        if (p->rx.size) {
          if (!p->rx_posted) {
            for (unsigned i = 0; i < vcon_rx_bufs; ++i) {
              post_rx(&p->rx, p->rx_bufs[i], VCON_DATA_BUF);
            }
            p->kicks += (uint64_t)virtq_kick(&p->rx);
            p->rx_posted = 1;
          }
          p->ready = 1;
          send_control(c, m.id, VCON_PORT_READY, 1);
        }
      }
      break;
    case VCON_PORT_REMOVE:
      p->added = p->ready = p->host_open = p->guest_open = p->console = 0;
      p->name[0] = 0;
      p->removes++;
      if (p->rx.size) {
        // Like Linux, drop what the old port had received but nobody read; the buffers go back.
        uint8_t sink[256];
        while (vcon_read(c, m.id, sink, sizeof(sink)) > 0) {
        }
        p->rx_bytes = 0;
      }
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
  int rc = vcon_setup(c, nports);
  if (rc) return rc;
  if (nports > c->max_ports) nports = c->max_ports;
  if (nports > VCON_MAX_PORTS) nports = VCON_MAX_PORTS;
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

int vcon_setup(struct vcon *c, unsigned nports) {
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
  if (vcon_rx_bufs < 1 || vcon_rx_bufs > VCON_QSIZE) vcon_rx_bufs = 64;
  if (vcon_tx_bufs < 1 || vcon_tx_bufs > VCON_QSIZE) vcon_tx_bufs = 64;
  // Queue layout: port 0 rx/tx = 0/1, control rx/tx = 2/3, port p>=1 at 2p+2 / 2p+3.
  int m = 0;
  if (virtq_setup(&c->dev, &c->crx, 2, VCON_CTRL_QSIZE, vcon_mem[m++], 0xffff)) return -11;
  if (virtq_setup(&c->dev, &c->ctx, 3, VCON_CTRL_QSIZE, vcon_mem[m++], 0xffff)) return -12;
  virtq_poll_only(&c->crx);
  virtq_poll_only(&c->ctx);
  c->crx_bufs = crx_space;
  for (unsigned p = 0; p < nports; ++p) {
    struct vcon_port *port = &c->ports[p];
    const uint16_t rxq = (uint16_t)(p == 0 ? 0 : 2 * p + 2);
    port->rx_bufs = (uint8_t(*)[VCON_DATA_BUF])data_alloc((uint64_t)vcon_rx_bufs * VCON_DATA_BUF);
    port->tx_bufs = (uint8_t(*)[VCON_DATA_BUF])data_alloc((uint64_t)vcon_tx_bufs * VCON_DATA_BUF);
    if (!port->rx_bufs || !port->tx_bufs) return -16;
    port->rx_pending_buf = -1;
    if (virtq_setup(&c->dev, &port->rx, rxq, VCON_QSIZE, vcon_mem[m++], 0xffff)) return -13;
    if (virtq_setup(&c->dev, &port->tx, (uint16_t)(rxq + 1), VCON_QSIZE, vcon_mem[m++], 0xffff))
      return -14;
    virtq_poll_only(&port->rx);
    virtq_poll_only(&port->tx);
  }
  virtio_driver_ok(&c->dev);
  for (int i = 0; i < VCON_CTRL_QSIZE / 2; ++i) post_rx(&c->crx, c->crx_bufs[i], VCON_BUF);
  virtq_kick(&c->crx);
  send_control(c, 0xffffffffu, VCON_DEVICE_READY, 1);
  return 0;
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

uint8_t *vcon_write_buf(struct vcon *c, unsigned id, uint32_t *room) {
  struct vcon_port *p = &c->ports[id];
  reclaim_tx(p);
  if (p->tx_inflight >= vcon_tx_bufs || p->tx_inflight >= p->tx.size) {
    vcon_flush(c, id);  // all in flight: make sure the device knows of them
    return 0;
  }
  *room = VCON_DATA_BUF;
  // The device completes a port's writes in order, so the next buffer in turn is free.
  return p->tx_bufs[p->tx_next];
}

void vcon_write_commit(struct vcon *c, unsigned id, uint32_t len) {
  struct vcon_port *p = &c->ports[id];
  if (len == 0) return;
  // Single-descriptor chains use descriptor slot avail_idx % size (see virtq_add).
  const uint64_t a = (uint64_t)p->tx_bufs[p->tx_next];
  const int w = 0;
  virtq_add(&p->tx, &a, &len, &w, 1);
  p->tx_next = p->tx_next + 1 == vcon_tx_bufs ? 0 : p->tx_next + 1;
  p->tx_inflight++;
  p->tx_bytes += len;
  p->tx_unkicked = 1;  // kicked by vcon_flush(), once per batch
}

void vcon_flush(struct vcon *c, unsigned id) {
  struct vcon_port *p = &c->ports[id];
  // With EVENT_IDX each of these is an exit only when the device ran out of chains/buffers and
  // asked (avail_event). One kick per batch, not per buffer: kicking after every buffer wakes
  // the device for each one, and it re-arms avail_event each time it drains the ring.
  if (p->tx_unkicked) p->kicks += (uint64_t)virtq_kick(&p->tx);
  if (p->rx_unkicked) p->kicks += (uint64_t)virtq_kick(&p->rx);
  p->tx_unkicked = p->rx_unkicked = 0;
}

uint32_t vcon_write(struct vcon *c, unsigned id, const uint8_t *data, uint32_t len) {
  uint32_t queued = 0, room;
  uint8_t *buf;
  while (queued < len && (buf = vcon_write_buf(c, id, &room))) {
    const uint32_t n = len - queued < room ? len - queued : room;
    memcpy(buf, data + queued, n);
    vcon_write_commit(c, id, n);
    queued += n;
  }
  vcon_flush(c, id);
  return queued;
}

uint32_t vcon_read_peek(struct vcon *c, unsigned id, const uint8_t **data) {
  struct vcon_port *p = &c->ports[id];
  while (p->rx_pending_buf < 0) {
    uint32_t uid, ulen;
    if (!virtq_get_used(&p->rx, &uid, &ulen)) {
      vcon_flush(c, id);  // nothing more to read: hand back the buffers reposted meanwhile
      return 0;
    }
    // Descriptor slot -> the buffer that was posted in it.
    const uint64_t addr = p->rx.desc[uid].addr;
    const int buf = (int)((addr - (uint64_t)p->rx_bufs[0]) / VCON_DATA_BUF);
    if (ulen == 0) {
      post_rx(&p->rx, p->rx_bufs[buf], VCON_DATA_BUF);
      p->rx_unkicked = 1;
      continue;
    }
    p->rx_pending_buf = buf;
    p->rx_pending_off = 0;
    p->rx_pending_len = ulen > VCON_DATA_BUF ? VCON_DATA_BUF : ulen;
  }
  *data = p->rx_bufs[p->rx_pending_buf] + p->rx_pending_off;
  return p->rx_pending_len - p->rx_pending_off;
}

void vcon_read_consume(struct vcon *c, unsigned id, uint32_t n) {
  struct vcon_port *p = &c->ports[id];
  if (p->rx_pending_buf < 0) return;
  const uint32_t avail = p->rx_pending_len - p->rx_pending_off;
  if (n > avail) n = avail;
  p->rx_pending_off += n;
  p->rx_bytes += n;
  if (p->rx_pending_off == p->rx_pending_len) {
    post_rx(&p->rx, p->rx_bufs[p->rx_pending_buf], VCON_DATA_BUF);
    p->rx_pending_buf = -1;
    p->rx_unkicked = 1;  // kicked by vcon_flush() (vcon_read_peek finding nothing calls it)
  }
}

uint32_t vcon_read(struct vcon *c, unsigned id, uint8_t *out, uint32_t len) {
  uint32_t copied = 0;
  const uint8_t *data;
  uint32_t n;
  while (copied < len && (n = vcon_read_peek(c, id, &data)) > 0) {
    if (n > len - copied) n = len - copied;
    memcpy(out + copied, data, n);
    vcon_read_consume(c, id, n);
    copied += n;
  }
  vcon_flush(c, id);
  return copied;
}

uint64_t vcon_tx_completed(struct vcon *c, unsigned id) {
  reclaim_tx(&c->ports[id]);
  return c->ports[id].tx_done;
}
