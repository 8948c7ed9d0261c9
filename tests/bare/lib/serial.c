// COM1 polled output and printf-lite. Works in CPL0 and in CPL3 (IOPL 3).
#include "bare.h"

void serial_init(void) {
  outb(COM1 + 1, 0x00);  // IER: no interrupts
  outb(COM1 + 3, 0x80);  // LCR: DLAB
  outb(COM1 + 0, 0x01);  // DLL: 115200
  outb(COM1 + 1, 0x00);  // DLM
  outb(COM1 + 3, 0x03);  // LCR: 8N1
  outb(COM1 + 2, 0x07);  // FCR: FIFO on, clear both
  outb(COM1 + 4, 0x03);  // MCR: DTR|RTS (OUT2 off: no IRQ unless a test asks)
}

void serial_putc(char c) {
  // Bounded wait: a UART that never reports THRE must not hang the guest.
  for (int i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++) pause();
  outb(COM1, (uint8_t)c);
}

void serial_puts(const char *s) {
  while (*s) {
    if (*s == '\n') serial_putc('\r');
    serial_putc(*s++);
  }
}

// ---- printf-lite ---------------------------------------------------------------------------
struct out {
  char *buf;  // NULL: serial
  size_t cap, len;
};

static void out_c(struct out *o, char c) {
  if (o->buf) {
    if (o->len + 1 < o->cap) o->buf[o->len] = c;
  } else {
    if (c == '\n') serial_putc('\r');
    serial_putc(c);
  }
  o->len++;
}

static void out_num(struct out *o, uint64_t v, int neg, unsigned base, int upper, int width,
                    char pad, int left) {
  char tmp[24];
  int n = 0;
  const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  do {
    tmp[n++] = digits[v % base];
    v /= base;
  } while (v);
  int len = n + neg;
  if (!left && pad == '0' && neg) out_c(o, '-');
  if (!left)
    for (int i = len; i < width; i++) out_c(o, pad);
  if (!(pad == '0' && !left) && neg) out_c(o, '-');
  while (n) out_c(o, tmp[--n]);
  if (left)
    for (int i = len; i < width; i++) out_c(o, ' ');
}

static int do_printf(struct out *o, const char *fmt, va_list ap) {
  for (; *fmt; fmt++) {
    if (*fmt != '%') {
      out_c(o, *fmt);
      continue;
    }
    fmt++;
    int left = 0, width = 0, lng = 0;
    char pad = ' ';
    for (;; fmt++) {
      if (*fmt == '-') left = 1;
      else if (*fmt == '0') pad = '0';
      else break;
    }
    while (*fmt >= '0' && *fmt <= '9') width = width * 10 + (*fmt++ - '0');
    while (*fmt == 'l' || *fmt == 'z') lng++, fmt++;
    switch (*fmt) {
      case 'd':
      case 'i': {
        int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
        out_num(o, v < 0 ? -(uint64_t)v : (uint64_t)v, v < 0, 10, 0, width, pad, left);
        break;
      }
      case 'u':
      case 'x':
      case 'X': {
        uint64_t v = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
        out_num(o, v, 0, *fmt == 'u' ? 10 : 16, *fmt == 'X', width, pad, left);
        break;
      }
      case 'p':
        out_c(o, '0');
        out_c(o, 'x');
        out_num(o, (uint64_t)va_arg(ap, void *), 0, 16, 0, width, pad, left);
        break;
      case 'c':
        out_c(o, (char)va_arg(ap, int));
        break;
      case 's': {
        const char *s = va_arg(ap, const char *);
        if (!s) s = "(null)";
        int len = (int)strlen(s);
        if (!left)
          for (int i = len; i < width; i++) out_c(o, ' ');
        while (*s) out_c(o, *s++);
        if (left)
          for (int i = len; i < width; i++) out_c(o, ' ');
        break;
      }
      case '%':
        out_c(o, '%');
        break;
      case 0:
        return (int)o->len;
      default:
        out_c(o, '%');
        out_c(o, *fmt);
    }
  }
  return (int)o->len;
}

int vprintf(const char *fmt, va_list ap) {
  struct out o = {0, 0, 0};
  return do_printf(&o, fmt, ap);
}

int printf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vprintf(fmt, ap);
  va_end(ap);
  return n;
}

int vsnprintf(char *buf, size_t n, const char *fmt, va_list ap) {
  struct out o = {buf, n, 0};
  int r = do_printf(&o, fmt, ap);
  if (n) buf[o.len < n ? o.len : n - 1] = 0;
  return r;
}

int snprintf(char *buf, size_t n, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int r = vsnprintf(buf, n, fmt, ap);
  va_end(ap);
  return r;
}
