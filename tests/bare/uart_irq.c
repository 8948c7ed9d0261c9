// uart_irq: COM1 interrupts through the IOAPIC (pin 4, edge, like Linux's 8250 driver).
// TX: IER.ETBEI, one byte written per THRE interrupt (the handler takes one IIR event per
// interrupt) while the CPU sits in `sti; hlt`; counts the interrupts. RX: IER.ERBFI, the host writes a line to the UART input (pier's stdin with
// --serial stdio); the guest collects it by RX interrupts up to '\n' and prints "got:<bytes>".
// A LAPIC periodic tick wakes the HLT loop so a silent UART ends in a FAIL line, not a hang.
// cmdline: rx=skip (TX only), timeout_ms=N (default 20000 per phase).
#include "bare.h"
TEST_NAME("uart_irq");

#define UART_VECTOR 0x24
#define TICK_VECTOR 0x30

static const char tx_msg[] = "uart_irq: interrupt-driven TX, one byte per THRE interrupt\r\n";
static volatile uint32_t tx_pos, thre_irqs, rx_irqs, uart_irqs, spurious_iir, ticks, rx_done;
static volatile uint32_t other_iir[16];
static char rx_buf[1024];
static volatile uint32_t rx_len;

// One IIR event per interrupt (no loop over IIR): each next byte then needs a new THRE interrupt,
// i.e. the UART must drop and raise its line again (IOAPIC pin programmed edge-triggered).
static void uart_handler(struct regs *r) {
  uart_irqs++;
  for (int guard = 0; guard < 1; guard++) {
    uint8_t iir = inb(COM1 + 2);
    if (iir & 1) {
      if (guard == 0) spurious_iir++;
      break;
    }
    switch (iir & 0x0e) {
      case 0x02:  // THR empty
        thre_irqs++;
        if (tx_pos < sizeof tx_msg - 1) outb(COM1, (uint8_t)tx_msg[tx_pos++]);
        else outb(COM1 + 1, inb(COM1 + 1) & ~0x02);  // done: ETBEI off
        break;
      case 0x04:  // RX data available
      case 0x0c:  // RX timeout
        rx_irqs++;
        while (inb(COM1 + 5) & 1) {
          char c = (char)inb(COM1);
          if (rx_len < sizeof rx_buf - 1) rx_buf[rx_len++] = c;
          if (c == '\n' || rx_len >= sizeof rx_buf - 1) rx_done = 1;
        }
        break;
      case 0x06:
        inb(COM1 + 5);
        other_iir[6]++;
        break;
      default:
        inb(COM1 + 6);
        other_iir[iir & 0x0e]++;
        break;
    }
  }
}

static void tick_handler(struct regs *r) { ticks++; }

// Sleeps in HLT until cond() or the TSC deadline; returns 1 if cond() held.
static int hlt_until(int (*cond)(void), uint64_t timeout_ms) {
  uint64_t khz = tsc_khz() ? tsc_khz() : 3000000, t0 = rdtsc();
  while (!cond()) {
    if (rdtsc() - t0 > khz * timeout_ms) return 0;
    sti_hlt_cli();
  }
  return 1;
}
static int tx_finished(void) { return tx_pos >= sizeof tx_msg - 1 && !(inb(COM1 + 1) & 0x02); }
static int rx_finished(void) { return rx_done; }

int test_main(void) {
  uint64_t timeout_ms = cmdline_u64("timeout_ms", 20000);
  uint64_t khz = tsc_khz();
  printf("tsc %lu kHz (%s)\n", khz, tsc_khz_source());
  pic_disable();
  lapic_enable();
  irq_set_handler(UART_VECTOR, uart_handler);
  irq_set_handler(TICK_VECTOR, tick_handler);
  ioapic_route(4, UART_VECTOR, (uint8_t)lapic_id(), 0);
  // Backup wake-up: LAPIC periodic timer, ~10 ms at KVM's 1 GHz APIC bus, divide by 1.
  lapic_write(LAPIC_TIMER_DIV, 0xb);
  lapic_write(LAPIC_LVT_TIMER, TICK_VECTOR | (1u << 17));
  lapic_write(LAPIC_TIMER_INIT, 10000000);

  // Input that arrives from here on stays in the RX FIFO until ERBFI is set after TX (then the
  // pending data must raise the interrupt at once). OUT2 gates the IRQ on a PC; then ETBEI.
  printf("PIER-TEST READY uart_irq tx\n");
  outb(COM1 + 4, 0x0b);
  uint64_t t0 = rdtsc();
  outb(COM1 + 1, 0x02);
  int tx_ok = hlt_until(tx_finished, timeout_ms);
  uint64_t tx_cycles = rdtsc() - t0;
  printf("TX: %u/%u bytes, %u THRE events (IIR), %u UART interrupts, %u with nothing pending, %u ticks, %lu cycles\n",
         tx_pos, (unsigned)sizeof tx_msg - 1, thre_irqs, uart_irqs, spurious_iir, ticks, tx_cycles);
  CHECK(tx_ok, "interrupt-driven TX finished (%u of %u bytes)", tx_pos, (unsigned)sizeof tx_msg - 1);
  CHECK(thre_irqs >= sizeof tx_msg - 1, "one THRE event per byte at least (%u)", thre_irqs);
  CHECK(uart_irqs >= sizeof tx_msg - 1, "one UART interrupt per byte through IOAPIC pin 4 (%u)", uart_irqs);
  uint32_t iir = inb(COM1 + 2);
  CHECK(iir & 1, "IIR: nothing pending after TX with ETBEI off (IIR 0x%x)", iir);

  if (!cmdline_has("rx=skip")) {
    outb(COM1 + 1, 0x01);  // ERBFI
    printf("PIER-TEST READY uart_irq rx\n");
    int rx_ok = hlt_until(rx_finished, timeout_ms);
    rx_buf[rx_len] = 0;
    if (rx_len && rx_buf[rx_len - 1] == '\n') rx_buf[--rx_len] = 0;
    if (rx_len && rx_buf[rx_len - 1] == '\r') rx_buf[--rx_len] = 0;
    printf("got:%s\n", rx_buf);
    printf("RX: %u bytes in %u RX interrupts (%u ticks)\n", rx_len, rx_irqs, ticks);
    CHECK(rx_ok, "a line received by RX interrupts within %lu ms (%u bytes so far)", timeout_ms, rx_len);
    CHECK(rx_irqs > 0, "RX interrupts (%u)", rx_irqs);
    outb(COM1 + 1, 0x00);
  }
  lapic_write(LAPIC_TIMER_INIT, 0);
  lapic_write(LAPIC_LVT_TIMER, 1u << 16);
  ioapic_mask(4);
  return 0;
}
