// A virtio-console multiport driver for the bare-metal test guests, speaking the control protocol
// the way Linux's virtio_console does: DEVICE_READY, PORT_ADD -> PORT_READY, CONSOLE_PORT,
// PORT_NAME, PORT_OPEN both ways, one control message per 4 KiB buffer. It polls (no interrupts),
// so after set-up it runs entirely in CPL3 (MMIO kicks and memory), at native speed on kvm_pvm.
#pragma once
#include "virtio.h"

#define VCON_MAX_PORTS 9  // port 0 (console) + 8 named ports
#define VCON_BUF 4096
#define VCON_RX_BUFS 16   // per port rx queue
#define VCON_QSIZE 32

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
  char name[64];
  struct vq rx, tx;
  uint8_t (*rx_bufs)[VCON_BUF];  // VCON_RX_BUFS buffers
  uint8_t (*tx_bufs)[VCON_BUF];  // VCON_QSIZE buffers (one per outstanding write)
  // rx data not yet consumed by the reader: the buffer index, offset and length.
  int rx_pending_buf;
  uint32_t rx_pending_off, rx_pending_len;
  uint16_t tx_inflight;
  uint64_t rx_bytes, tx_bytes, tx_done;
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
// Handles pending control messages (PORT_OPEN from the host, PORT_NAME, ...). CPL3-safe.
void vcon_poll_control(struct vcon *c);
// The guest opens/closes port `id` (sends PORT_OPEN(id, 1/0)).
void vcon_guest_open(struct vcon *c, unsigned id, int open);
// Non-blocking write: queues up to `len` bytes (whole 4 KiB chains while free slots last);
// returns the bytes queued. Completed chains are reclaimed first.
uint32_t vcon_write(struct vcon *c, unsigned id, const uint8_t *data, uint32_t len);
// Non-blocking read of what the host sent; returns bytes copied. Refills rx buffers.
uint32_t vcon_read(struct vcon *c, unsigned id, uint8_t *out, uint32_t len);
// Bytes of this port's writes the device has completed (used).
uint64_t vcon_tx_completed(struct vcon *c, unsigned id);
