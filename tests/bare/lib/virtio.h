// A small virtio-pci (modern) driver for the bare-metal test guests: PCI type-1 config access,
// capability walk, feature negotiation, split virtqueues in guest memory, MSI-X vectors aimed at
// this CPU's LAPIC, and notify through the queue's notify address. Everything after set-up is
// MMIO and plain memory, so it runs in CPL3 at native speed on kvm_pvm (port I/O from CPL3 is
// slow there). It drives the device the way Linux's virtio_pci does.
#pragma once
#include "bare.h"

// ---- PCI (lib/pci.c) ----
uint32_t pci_read32(unsigned dev, unsigned reg);
uint16_t pci_read16(unsigned dev, unsigned reg);
uint8_t pci_read8(unsigned dev, unsigned reg);
void pci_write32(unsigned dev, unsigned reg, uint32_t v);
void pci_write16(unsigned dev, unsigned reg, uint16_t v);
// Device number on bus 0 of vendor:device, or -1.
int pci_find(uint16_t vendor, uint16_t device);
// Base address of a 32- or 64-bit memory BAR.
uint64_t pci_bar(unsigned dev, unsigned bar);

// ---- virtio-pci (lib/virtio.c) ----
#define VIRTIO_STATUS_ACK 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_F_VERSION_1 (1ull << 32)
#define VIRTIO_F_EVENT_IDX (1ull << 29)
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2

struct virtq_desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags, next;
};

struct vq {
  uint16_t index, size;
  struct virtq_desc *desc;
  volatile uint16_t *avail;  // flags, idx, ring[size], used_event
  volatile uint8_t *used;    // flags, idx, ring[size] of {id u32, len u32}, avail_event
  volatile uint16_t *notify;
  uint16_t avail_idx, last_used;
  uint16_t vector;
  uint16_t kicked_idx;  // avail_idx at the last virtq_kick (what the device has been told of)
  uint8_t event_idx;    // VIRTIO_F_EVENT_IDX negotiated: kicks and interrupts go by the indices
  uint8_t polled;       // virtq_poll_only(): the driver never wants used-buffer interrupts
  uint64_t notify_tsc;  // TSC ticks spent in notify writes (the exits), for reports
};

struct virtio_dev {
  unsigned pci_dev;
  volatile uint8_t *common, *isr, *device_cfg, *notify_base;
  uint32_t notify_mult;
  volatile uint32_t *msix_table;
  unsigned msix_vectors;
  uint64_t features;
};

// Finds 1af4:(0x1040 + device_id), enables memory and bus mastering, resets it and negotiates
// `wanted` & offered (always VERSION_1). Returns 0 or a negative error (and prints why).
int virtio_init(struct virtio_dev *d, unsigned device_id, uint64_t wanted);
// Programs MSI-X vector `vector` to deliver IDT vector `idt_vector` to this CPU and unmasks it.
void virtio_msix_route(struct virtio_dev *d, unsigned vector, uint8_t idt_vector);
void virtio_msix_enable(struct virtio_dev *d);
// Sets up queue `index` with `size` entries in memory at `mem` (needs virtq_bytes(size), 4 KiB
// aligned), MSI-X vector `vector` (0xffff for none). Returns 0 or negative.
uint64_t virtq_bytes(uint16_t size);
int virtq_setup(struct virtio_dev *d, struct vq *q, uint16_t index, uint16_t size, void *mem,
                uint16_t vector);
void virtio_driver_ok(struct virtio_dev *d);
uint8_t virtio_status(struct virtio_dev *d);
// Puts a chain of `n` buffers (writable ones after readable ones) on the avail ring.
void virtq_add(struct vq *q, const uint64_t *addrs, const uint32_t *lens, const int *writable, int n);
// Notifies the device of the chains added since the last kick, unless it said it does not need
// it (EVENT_IDX: avail_event not crossed; else used.flags NO_NOTIFY), as Linux's
// virtqueue_kick_prepare does. Returns 1 when it wrote the notify register (an exit).
int virtq_kick(struct vq *q);
// The driver only polls this queue: ask the device for no used-buffer notifications at all
// (avail.flags NO_INTERRUPT, or used_event kept half the index space away with EVENT_IDX).
void virtq_poll_only(struct vq *q);
// Pops one used entry: returns 1 and fills id/len, or 0 when none.
int virtq_get_used(struct vq *q, uint32_t *id, uint32_t *len);
