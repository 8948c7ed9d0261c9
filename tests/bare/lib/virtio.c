#include "virtio.h"

// Common configuration offsets (virtio 1.2 §4.1.4.3).
#define C_DFSEL 0x00
#define C_DF 0x04
#define C_GFSEL 0x08
#define C_GF 0x0c
#define C_MSIX 0x10
#define C_NUMQ 0x12
#define C_STATUS 0x14
#define C_QSEL 0x16
#define C_QSIZE 0x18
#define C_QMSIX 0x1a
#define C_QENABLE 0x1c
#define C_QNOFF 0x1e
#define C_QDESC 0x20
#define C_QDRIVER 0x28
#define C_QDEVICE 0x30

static inline void w8(volatile uint8_t *b, unsigned o, uint8_t v) { *(volatile uint8_t *)(b + o) = v; }
static inline void w16(volatile uint8_t *b, unsigned o, uint16_t v) { *(volatile uint16_t *)(b + o) = v; }
static inline void w32(volatile uint8_t *b, unsigned o, uint32_t v) { *(volatile uint32_t *)(b + o) = v; }
static inline uint8_t r8(volatile uint8_t *b, unsigned o) { return *(volatile uint8_t *)(b + o); }
static inline uint16_t r16(volatile uint8_t *b, unsigned o) { return *(volatile uint16_t *)(b + o); }
static inline uint32_t r32(volatile uint8_t *b, unsigned o) { return *(volatile uint32_t *)(b + o); }
static inline void w64(volatile uint8_t *b, unsigned o, uint64_t v) {
  w32(b, o, (uint32_t)v);  // as Linux's vp_iowrite64_twopart does
  w32(b, o + 4, (uint32_t)(v >> 32));
}

int virtio_init(struct virtio_dev *d, unsigned device_id, uint64_t wanted) {
  memset(d, 0, sizeof(*d));
  const int dev = pci_find(0x1af4, (uint16_t)(0x1040 + device_id));
  if (dev < 0) {
    printf("virtio: no device 1af4:%04x\n", 0x1040 + device_id);
    return -1;
  }
  d->pci_dev = (unsigned)dev;
  pci_write16(d->pci_dev, 0x04, 0x6);  // memory space + bus master
  // Walk the capability list for the virtio structures and MSI-X.
  uint8_t cap = pci_read8(d->pci_dev, 0x34);
  for (int guard = 0; cap && guard < 48; ++guard) {
    const uint8_t id = pci_read8(d->pci_dev, cap);
    if (id == 0x09) {
      const uint8_t type = pci_read8(d->pci_dev, cap + 3);
      const uint8_t bar = pci_read8(d->pci_dev, cap + 4);
      const uint32_t off = pci_read32(d->pci_dev, cap + 8);
      volatile uint8_t *p = (volatile uint8_t *)(pci_bar(d->pci_dev, bar) + off);
      if (type == 1) d->common = p;
      if (type == 2) {
        d->notify_base = p;
        d->notify_mult = pci_read32(d->pci_dev, cap + 16);
      }
      if (type == 3) d->isr = p;
      if (type == 4) d->device_cfg = p;
    } else if (id == 0x11) {
      d->msix_vectors = (pci_read16(d->pci_dev, cap + 2) & 0x7ff) + 1;
      const uint32_t table = pci_read32(d->pci_dev, cap + 4);
      d->msix_table = (volatile uint32_t *)(pci_bar(d->pci_dev, table & 7) + (table & ~7u));
    }
    cap = pci_read8(d->pci_dev, cap + 1);
  }
  if (!d->common || !d->notify_base || !d->isr || !d->msix_table) {
    printf("virtio: missing capabilities\n");
    return -2;
  }
  w8(d->common, C_STATUS, 0);
  while (r8(d->common, C_STATUS) != 0) pause();
  w8(d->common, C_STATUS, VIRTIO_STATUS_ACK);
  w8(d->common, C_STATUS, VIRTIO_STATUS_ACK | VIRTIO_STATUS_DRIVER);
  w32(d->common, C_DFSEL, 0);
  uint64_t offered = r32(d->common, C_DF);
  w32(d->common, C_DFSEL, 1);
  offered |= (uint64_t)r32(d->common, C_DF) << 32;
  d->features = offered & (wanted | VIRTIO_F_VERSION_1);
  w32(d->common, C_GFSEL, 0);
  w32(d->common, C_GF, (uint32_t)d->features);
  w32(d->common, C_GFSEL, 1);
  w32(d->common, C_GF, (uint32_t)(d->features >> 32));
  w8(d->common, C_STATUS, VIRTIO_STATUS_ACK | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
  if (!(r8(d->common, C_STATUS) & VIRTIO_STATUS_FEATURES_OK)) {
    printf("virtio: features %#lx refused\n", d->features);
    return -3;
  }
  return 0;
}

void virtio_msix_route(struct virtio_dev *d, unsigned vector, uint8_t idt_vector) {
  volatile uint32_t *e = d->msix_table + vector * 4;
  e[0] = 0xfee00000u | (lapic_id() << 12);  // fixed delivery, physical destination
  e[1] = 0;
  e[2] = idt_vector;
  e[3] = 0;  // unmask
}

void virtio_msix_enable(struct virtio_dev *d) {
  uint8_t cap = pci_read8(d->pci_dev, 0x34);
  while (cap && pci_read8(d->pci_dev, cap) != 0x11) cap = pci_read8(d->pci_dev, cap + 1);
  if (cap) pci_write16(d->pci_dev, cap + 2, (uint16_t)(pci_read16(d->pci_dev, cap + 2) | 0x8000));
}

uint64_t virtq_bytes(uint16_t size) {
  const uint64_t desc = 16ull * size, avail = 6 + 2ull * size, used = 6 + 8ull * size;
  return ((desc + avail + 4095) & ~4095ull) + ((used + 4095) & ~4095ull);
}

int virtq_setup(struct virtio_dev *d, struct vq *q, uint16_t index, uint16_t size, void *mem,
                uint16_t vector) {
  memset(q, 0, sizeof(*q));
  w16(d->common, C_QSEL, index);
  const uint16_t max = r16(d->common, C_QSIZE);
  if (size > max) size = max;
  q->index = index;
  q->size = size;
  q->vector = vector;
  q->event_idx = (d->features & VIRTIO_F_EVENT_IDX) != 0;
  memset(mem, 0, virtq_bytes(size));
  q->desc = (struct virtq_desc *)mem;
  q->avail = (volatile uint16_t *)((uint8_t *)mem + 16ull * size);
  q->used = (volatile uint8_t *)mem + ((16ull * size + 6 + 2ull * size + 4095) & ~4095ull);
  w16(d->common, C_QSIZE, size);
  w64(d->common, C_QDESC, (uint64_t)q->desc);
  w64(d->common, C_QDRIVER, (uint64_t)q->avail);
  w64(d->common, C_QDEVICE, (uint64_t)q->used);
  w16(d->common, C_QMSIX, vector);
  if (r16(d->common, C_QMSIX) != vector) return -1;
  q->notify = (volatile uint16_t *)(d->notify_base + (uint64_t)r16(d->common, C_QNOFF) * d->notify_mult);
  w16(d->common, C_QENABLE, 1);
  return 0;
}

void virtio_driver_ok(struct virtio_dev *d) {
  w8(d->common, C_STATUS, (uint8_t)(r8(d->common, C_STATUS) | VIRTIO_STATUS_DRIVER_OK));
}

uint8_t virtio_status(struct virtio_dev *d) { return r8(d->common, C_STATUS); }

void virtq_add(struct vq *q, const uint64_t *addrs, const uint32_t *lens, const int *writable, int n) {
  // Descriptors are used as a ring: chain i takes slots [head, head + n).
  const uint16_t head = (uint16_t)((q->avail_idx * (uint16_t)n) % q->size);
  for (int i = 0; i < n; ++i) {
    struct virtq_desc *dsc = &q->desc[(head + i) % q->size];
    dsc->addr = addrs[i];
    dsc->len = lens[i];
    dsc->flags = (uint16_t)((writable[i] ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
    dsc->next = (uint16_t)((head + i + 1) % q->size);
  }
  q->avail[2 + q->avail_idx % q->size] = head;
  __atomic_thread_fence(__ATOMIC_RELEASE);
  q->avail_idx++;
  q->avail[1] = q->avail_idx;
}

// vring_need_event(): the other side asked to hear when the index passes `event`.
static inline int need_event(uint16_t event, uint16_t new_idx, uint16_t old_idx) {
  return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old_idx);
}

int virtq_kick(struct vq *q) {
  // Store avail.idx, then load avail_event / used.flags: a full fence (pairs with the device's
  // fence between publishing avail_event and re-reading avail.idx).
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  const uint16_t old = q->kicked_idx, now = q->avail_idx;
  q->kicked_idx = now;
  int kick;
  if (q->event_idx) {
    const uint16_t avail_event = *(volatile uint16_t *)(q->used + 4 + 8 * q->size);
    kick = need_event(avail_event, now, old);
  } else {
    kick = !(*(volatile uint16_t *)q->used & 1);  // VIRTQ_USED_F_NO_NOTIFY
  }
  if (kick) {
    const uint64_t t0 = rdtsc();
    *q->notify = q->index;
    q->notify_tsc += rdtsc() - t0;
  }
  return kick;
}

void virtq_poll_only(struct vq *q) {
  q->polled = 1;
  q->avail[0] = 1;  // VIRTQ_AVAIL_F_NO_INTERRUPT (ignored by the device with EVENT_IDX)
  q->avail[2 + q->size] = (uint16_t)(q->last_used + 0x8000);
}

int virtq_get_used(struct vq *q, uint32_t *id, uint32_t *len) {
  const uint16_t used_idx = *(volatile uint16_t *)(q->used + 2);
  if (used_idx == q->last_used) return 0;
  __atomic_thread_fence(__ATOMIC_ACQUIRE);
  const volatile uint8_t *e = q->used + 4 + 8 * (q->last_used % q->size);
  *id = *(volatile uint32_t *)e;
  *len = *(volatile uint32_t *)(e + 4);
  q->last_used++;
  // VIRTIO_F_EVENT_IDX: ask for an interrupt when the next entry is used (as Linux does while
  // callbacks are enabled). Harmless without the feature. A polled queue keeps used_event half
  // the index space behind, where the device's used index (at most `size` ahead) never meets it.
  q->avail[2 + q->size] = q->polled ? (uint16_t)(q->last_used + 0x8000) : q->last_used;
  return 1;
}
