// uart_polled: COM1 behaves like a 16550A under polling: scratch register, LCR, DLAB divisor
// latch round trip, IER, FCR -> IIR FIFO bits, LSR idle bits, MCR, loopback (MCR bit 4: THR
// comes back in RBR, MSR mirrors MCR, nothing reaches the host), and polled THR output from
// CPL0 and CPL3.
#include "bare.h"
TEST_NAME("uart_polled");

#define RBR 0
#define THR 0
#define IER 1
#define IIR 2
#define FCR 2
#define LCR 3
#define MCR 4
#define LSR 5
#define MSR 6
#define SCR 7
#define DLL 0
#define DLM 1

static uint8_t rd(int r) { return inb(COM1 + r); }
static void wr(int r, uint8_t v) { outb(COM1 + r, v); }

static uint64_t user_print(uint64_t arg) {
  // Polled THR writes from CPL3 (port I/O through the TSS I/O bitmap).
  for (const char *s = (const char *)arg; *s; s++) {
    while (!(inb(COM1 + LSR) & 0x20)) {
    }
    outb(COM1 + THR, (uint8_t)*s);
  }
  return 0;
}

int test_main(void) {
  // Scratch.
  wr(SCR, 0x5a);
  uint8_t a = rd(SCR);
  wr(SCR, 0xa5);
  uint8_t b = rd(SCR);
  CHECK(a == 0x5a && b == 0xa5, "scratch register round trip (0x%x 0x%x)", a, b);

  // LCR.
  wr(LCR, 0x1b);
  uint8_t lcr = rd(LCR);
  wr(LCR, 0x03);
  CHECK(lcr == 0x1b, "LCR round trip (0x%x)", lcr);
  CHECK(rd(LCR) == 0x03, "LCR restored to 8N1");

  // Divisor latch.
  wr(IER, 0x00);
  wr(LCR, 0x83);
  wr(DLL, 0x0c);
  wr(DLM, 0x01);
  uint8_t dll = rd(DLL), dlm = rd(DLM);
  wr(DLL, 0x01);
  wr(DLM, 0x00);
  uint8_t dll2 = rd(DLL), dlm2 = rd(DLM);
  wr(LCR, 0x03);
  uint8_t ier = rd(IER);
  CHECK(dll == 0x0c && dlm == 0x01, "DLAB divisor latch round trip (DLL 0x%x DLM 0x%x)", dll, dlm);
  CHECK(dll2 == 0x01 && dlm2 == 0x00, "divisor back to 115200 (DLL 0x%x DLM 0x%x)", dll2, dlm2);
  CHECK(ier == 0x00, "IER untouched by DLM writes under DLAB (0x%x)", ier);

  // IER: only the low 4 bits exist on a 16550A. Interrupts stay off (IF=0, IOAPIC pin masked).
  wr(IER, 0x05);
  uint8_t ier2 = rd(IER);
  wr(IER, 0x00);
  CHECK(ier2 == 0x05, "IER round trip (0x%x)", ier2);

  // What Linux's 8250 autoconfig probes to call it a 16550A: IER keeps only bits 3:0 (no XScale
  // UUE bit 6), loopback MCR 0x1A gives MSR 0x90, IIR under LCR 0xBF is not 0 (no EFR), and the
  // 16750 64-byte FIFO bit (FCR bit 5 under DLAB) does not show in IIR bit 5.
  wr(IER, 0xf0);
  uint8_t ier_hi = rd(IER);
  wr(IER, 0x00);
  CHECK(ier_hi == 0x00, "IER bits 7:4 do not exist (wrote 0xf0, read 0x%x)", ier_hi);
  uint8_t mcr_save = rd(MCR);
  wr(MCR, 0x1a);
  uint8_t msr_loop = rd(MSR) & 0xf0;
  wr(MCR, mcr_save);
  CHECK(msr_loop == 0x90, "8250 loop test: MCR 0x1a -> MSR & 0xf0 = 0x90 (0x%x)", msr_loop);
  wr(LCR, 0xbf);
  uint8_t efr = rd(2);
  wr(LCR, 0x80);
  wr(FCR, 0x07 | 0x20);
  uint8_t iir_64 = rd(IIR);
  wr(LCR, 0x03);
  wr(FCR, 0x07);
  CHECK(efr != 0, "no EFR: register 2 under LCR 0xbf is not 0 (0x%x)", efr);
  CHECK((iir_64 >> 5) == 6, "not a 16750: IIR bits 7:5 = 110 after FCR bit 5 under DLAB (IIR 0x%x)", iir_64);

  // FIFO enable -> IIR bits 7:6 = 11, no interrupt pending (bit 0 = 1).
  wr(FCR, 0x07);
  uint8_t iir = rd(IIR);
  CHECK((iir & 0xc0) == 0xc0, "FIFO enabled: IIR bits 7:6 = 11 (IIR 0x%x)", iir);
  CHECK(iir & 1, "IIR: no interrupt pending with IER = 0 (IIR 0x%x)", iir);
  wr(FCR, 0x00);
  uint8_t iir_nofifo = rd(IIR);
  wr(FCR, 0x07);
  CHECK((iir_nofifo & 0xc0) == 0, "FIFO disabled: IIR bits 7:6 = 00 (IIR 0x%x)", iir_nofifo);

  // Idle line status: THR empty, transmitter empty, no data.
  uint8_t lsr = rd(LSR);
  CHECK((lsr & 0x60) == 0x60, "LSR: THRE and TEMT set when idle (0x%x)", lsr);
  CHECK(!(lsr & 0x01), "LSR: no received data (0x%x)", lsr);

  // MCR.
  wr(MCR, 0x0b);
  uint8_t mcr = rd(MCR);
  CHECK((mcr & 0x1f) == 0x0b, "MCR round trip (0x%x)", mcr);

  // Loopback: THR -> RBR, MSR mirrors MCR outputs. Nothing may be printed while in loopback
  // (it would loop back too), so results are checked after MCR is restored.
  wr(MCR, 0x1f);
  uint8_t msr_all = rd(MSR);
  wr(MCR, 0x10);
  uint8_t msr_none = rd(MSR);
  static const uint8_t pattern[] = {0x55, 0xaa, 0x00, 0xff, 'L', 'B'};
  uint8_t got[sizeof pattern], got_lsr[sizeof pattern];
  for (unsigned i = 0; i < sizeof pattern; i++) {
    wr(THR, pattern[i]);
    uint8_t l = 0;
    for (int k = 0; k < 100 && !((l = rd(LSR)) & 1); k++) {
    }
    got_lsr[i] = l;
    got[i] = rd(RBR);
  }
  uint8_t lsr_after = rd(LSR);
  wr(MCR, 0x03);
  int echoed = 0;
  for (unsigned i = 0; i < sizeof pattern; i++) {
    if ((got_lsr[i] & 1) && got[i] == pattern[i]) echoed++;
    else printf("loopback byte %u: sent 0x%x, LSR 0x%x, RBR 0x%x\n", i, pattern[i], got_lsr[i], got[i]);
  }
  CHECK((msr_all & 0xf0) == 0xf0, "loopback: MSR DCD/RI/DSR/CTS follow OUT2/OUT1/DTR/RTS set (MSR 0x%x)", msr_all);
  CHECK((msr_none & 0xf0) == 0x00, "loopback: MSR inputs clear with MCR outputs clear (MSR 0x%x)", msr_none);
  CHECK(echoed == (int)sizeof pattern, "loopback echoes THR into RBR (%d/%u bytes)", echoed, (unsigned)sizeof pattern);
  CHECK(!(lsr_after & 1), "loopback: RX empty after reading every byte (LSR 0x%x)", lsr_after);

  // Polled output from CPL0 and CPL3; the integration test looks for both lines.
  serial_puts("uart_polled: polled THR output from CPL0\n");
  enter_user(user_print, (uint64_t) "uart_polled: polled THR output from CPL3\r\n", 0);
  return 0;
}
