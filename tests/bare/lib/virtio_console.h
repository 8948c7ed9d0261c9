// A virtio-console multiport driver for the bare-metal test guests, speaking the control protocol
// the way Linux's virtio_console does: DEVICE_READY, PORT_ADD -> PORT_READY, CONSOLE_PORT,
// PORT_NAME, PORT_OPEN both ways, one control message per 4 KiB buffer. It polls (no interrupts:
// every queue asks the device for none), so after set-up it runs entirely in CPL3 (MMIO kicks and
// memory), at native speed on kvm_pvm. It negotiates VIRTIO_F_EVENT_IDX and kicks only when the
// device asked for it (avail_event), since each kick is an exit. Port data moves in 64 KiB
// buffers: vcon_rx_bufs posted per port, up to vcon_tx_bufs writes in flight, taken from the
// free RAM above the image (not .bss, which pier zeroes at load).
#pragma once
#include "virtio.h"

#ifndef VCON_MAX_PORTS  // a guest may build the driver for more ports
#define VCON_MAX_PORTS 9  // port 0 (console) + 8 named ports
#endif
#define VCON_BUF 4096        // control buffers
#define VCON_DATA_BUF 65536  // port rx and tx buffers
#define VCON_QSIZE 128       // port queues (pier's default maximum)
#define VCON_CTRL_QSIZE 32   // control queues
// Data buffers per port (1..VCON_QSIZE), read by vcon_setup: rx posted, tx in flight. Default 64
// each: 4 MiB per port each way.
extern unsigned vcon_rx_bufs, vcon_tx_bufs;

enum {
  VCON_DEVICE_READY = 0,
  VCON_PORT_ADD = 1,
  VCON_PORT_REMOVE = 2,
  VCON_PORT_READY = 3,
  VCON_CONSOLE_PORT = 4,
  VCON_RESIZE = 5,
  VCON_PORT_OPEN = 6,
  VCON_PORT_NAME = 7,
};

struct vcon_port {
  int added, ready, console, host_open, guest_open;
  int rx_posted;  // rx buffers are in the queue (kept across PORT_REMOVE / PORT_ADD)
  uint32_t adds, removes;
  char name[64];
  struct vq rx, tx;
  uint8_t (*rx_bufs)[VCON_DATA_BUF];  // vcon_rx_bufs buffers
  uint8_t (*tx_bufs)[VCON_DATA_BUF];  // vcon_tx_bufs buffers (one per outstanding write chain)
  // rx data not yet consumed by the reader: the buffer index, offset and length.
  int rx_pending_buf;
  uint32_t rx_pending_off, rx_pending_len;
  uint16_t tx_inflight;
  unsigned tx_next;  // the tx buffer the next write chain uses
  uint64_t rx_bytes, tx_bytes, tx_done;
  uint64_t kicks;  // notify writes (exits) for this port's queues
  int tx_unkicked, rx_unkicked;  // chains added since the last kick
};

struct vcon {
  struct virtio_dev dev;
  uint32_t max_ports;
  struct vq crx, ctx;
  uint8_t (*crx_bufs)[VCON_BUF];
  struct vcon_port ports[VCON_MAX_PORTS];
  uint32_t control_msgs, bad_control;
};

// Finds the device, negotiates MULTIPORT, sets up the control queues and ports 0..nports-1,
// sends DEVICE_READY and processes control messages until every port in [0, nports) is ready
// (or `timeout_ms` passes). Returns 0 or negative. CPL0 (port I/O for PCI config).
int vcon_init(struct vcon *c, unsigned nports, uint64_t timeout_ms);
// vcon_init without the wait: sets up the control queues and the queues of ports
// [0, nports) (Linux sets up every port's queues at probe, so ports hot-added later work), sends
// DEVICE_READY and returns.
int vcon_setup(struct vcon *c, unsigned nports);
// Handles pending control messages (PORT_OPEN from the host, PORT_NAME, ...). CPL3-safe.
void vcon_poll_control(struct vcon *c);
// The guest opens/closes port `id` (sends PORT_OPEN(id, 1/0)).
void vcon_guest_open(struct vcon *c, unsigned id, int open);
// Non-blocking write: queues up to `len` bytes (64 KiB chains while free buffers last);
// returns the bytes queued. Completed chains are reclaimed first.
uint32_t vcon_write(struct vcon *c, unsigned id, const uint8_t *data, uint32_t len);
// Zero-copy write: the next free tx buffer (room: its size), or NULL while all are in flight.
// Fill it, then vcon_write_commit() the bytes written. Call vcon_flush() after the last one.
uint8_t *vcon_write_buf(struct vcon *c, unsigned id, uint32_t *room);
void vcon_write_commit(struct vcon *c, unsigned id, uint32_t len);
// Zero-copy read: the unread bytes of the oldest filled rx buffer (0 when none, after handing
// the reposted buffers to the device); vcon_read_consume() takes n of them and reposts the
// buffer once it is used up.
uint32_t vcon_read_peek(struct vcon *c, unsigned id, const uint8_t **data);
void vcon_read_consume(struct vcon *c, unsigned id, uint32_t n);
// Kicks the port's queues if chains were added since the last kick (and the device asked).
void vcon_flush(struct vcon *c, unsigned id);
// Non-blocking read of what the host sent; returns bytes copied. Refills rx buffers.
uint32_t vcon_read(struct vcon *c, unsigned id, uint8_t *out, uint32_t len);
// Bytes of this port's writes the device has completed (used).
uint64_t vcon_tx_completed(struct vcon *c, unsigned id);
