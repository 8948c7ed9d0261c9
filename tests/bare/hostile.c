// hostile: a guest that attacks pier the way issue 13 describes, forever, so the host side
// (tests/integration/bare_hostile_test.cpp) can check that pier's memory, log volume and
// responsiveness stay bounded and that SIGTERM still stops it. Command line: mode=...
//  - tx_head_reuse: on port 1's transmit queue (a named port with no client, so the device holds
//    what it takes), make descriptor 0 available again and again without waiting for it to be
//    used. The device must stop at the queue size (NEEDS_RESET), not hold chains without limit.
//    Afterwards: a notify storm on the failed queue.
//  - console_flood: on port 0 (the console, backend null), keep the transmit ring full of 4 KiB
//    chains and notify after every refill, forever: the device's busiest legitimate path.
//  - sleep_spam: ask for ACPI sleep state S3 (which pier does not implement) in a loop: one log
//    line, not one per write.
// The guest prints "HOSTILE running <mode>" when the attack starts and never ends by itself.
#include "virtio_console.h"
TEST_NAME("hostile");

static struct vcon con;
static uint8_t payload[4096] ALIGNED(4096);
static uint64_t khz;  // TSC ticks per ms

static uint16_t used_idx(struct vq* q) {
  return *(volatile uint16_t*)(q->used + 2);
}
static uint16_t avail_event(struct vq* q) {
  return *(volatile uint16_t*)(q->used + 4 + 8 * q->size);
}

// Puts head 0 on the avail ring once more and publishes it.
static void expose_head0(struct vq* q) {
  q->avail[2 + q->avail_idx % q->size] = 0;
  __atomic_thread_fence(__ATOMIC_RELEASE);
  q->avail_idx++;
  q->avail[1] = q->avail_idx;
}

static void set_head0(struct vq* q) {
  q->desc[0].addr = (uint64_t)payload;
  q->desc[0].len = sizeof(payload);
  q->desc[0].flags = 0;
  q->desc[0].next = 0;
}

static void tx_head_reuse(void) {
  struct vq* q = &con.ports[1].tx;
  set_head0(q);
  uint64_t posts = 0;
  for (;;) {
    expose_head0(q);
    ++posts;
    *q->notify = q->index;
    // Wait (briefly) until the device has looked at it, so the ring never runs more than the
    // queue size ahead of the device: the error must be the chains in flight, not the jump.
    const uint64_t deadline = rdtsc() + 100 * khz;
    while (avail_event(q) != q->avail_idx && rdtsc() < deadline) pause();
    if (virtio_status(&con.dev) & VIRTIO_STATUS_NEEDS_RESET) break;
  }
  printf("HOSTILE needs-reset after %lu posts with head 0\n", posts);
  for (;;) *q->notify = q->index;
}

static void console_flood(void) {
  struct vq* q = &con.ports[0].tx;
  set_head0(q);
  for (;;) {
    while ((uint16_t)(q->avail_idx - used_idx(q)) < q->size) expose_head0(q);
    *q->notify = q->index;
  }
}

static void sleep_spam(void) {
  const uint8_t s3 = (3 << 2) | (1 << 5);  // SLP_TYP 3, SLP_EN
  for (;;) outb(0x600, s3);
}

int test_main(void) {
  char mode[32] = "";
  cmdline_str("mode", mode, sizeof(mode));
  khz = tsc_khz();
  int rc = vcon_init(&con, 2, 10000);
  CHECK(rc == 0, "virtio-console with 2 ports: %d", rc);
  if (rc) return 1;
  printf("HOSTILE running %s\n", mode);
  if (strcmp(mode, "tx_head_reuse") == 0) tx_head_reuse();
  if (strcmp(mode, "console_flood") == 0) console_flood();
  if (strcmp(mode, "sleep_spam") == 0) sleep_spam();
  CHECK(0, "unknown mode '%s'", mode);
  return 1;
}
