// boot_params (zero page): e820 table and kernel command line.
#include "bare.h"

uint8_t *boot_params;  // set by entry.S from RSI

int e820_count(void) {
  int n = boot_params[0x1e8];
  return n > 128 ? 128 : n;
}

const struct e820_entry *e820_get(int i) {
  return (const struct e820_entry *)(boot_params + 0x2d0) + i;
}

const char *cmdline(void) {
  uint64_t p = *(uint32_t *)(boot_params + 0x228) | ((uint64_t) * (uint32_t *)(boot_params + 0xc8) << 32);
  return p ? (const char *)p : "";
}

// Finds key in the command line; returns a pointer just past "key" (at '=' or a separator).
static const char *find_key(const char *key) {
  size_t kl = strlen(key);
  const char *s = cmdline();
  while (*s) {
    while (*s == ' ') s++;
    const char *w = s;
    while (*s && *s != ' ') s++;
    if ((size_t)(s - w) >= kl && !strncmp(w, key, kl) && (w[kl] == '=' || w[kl] == ' ' || !w[kl]))
      return w + kl;
  }
  return 0;
}

int cmdline_has(const char *key) { return find_key(key) != 0; }

int cmdline_str(const char *key, char *buf, size_t n) {
  const char *p = find_key(key);
  if (!p) return 0;
  size_t i = 0;
  if (*p == '=') {
    p++;
    while (*p && *p != ' ' && i + 1 < n) buf[i++] = *p++;
  }
  if (n) buf[i] = 0;
  return 1;
}

uint64_t parse_u64(const char *s, const char **end) {
  uint64_t v = 0;
  unsigned base = 10;
  if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) base = 16, s += 2;
  for (;; s++) {
    unsigned d;
    if (*s >= '0' && *s <= '9') d = *s - '0';
    else if (base == 16 && *s >= 'a' && *s <= 'f') d = *s - 'a' + 10;
    else if (base == 16 && *s >= 'A' && *s <= 'F') d = *s - 'A' + 10;
    else break;
    v = v * base + d;
  }
  switch (*s) {
    case 'K': case 'k': v <<= 10, s++; break;
    case 'M': case 'm': v <<= 20, s++; break;
    case 'G': case 'g': v <<= 30, s++; break;
  }
  if (end) *end = s;
  return v;
}

uint64_t cmdline_u64(const char *key, uint64_t def) {
  char buf[32];
  if (!cmdline_str(key, buf, sizeof buf) || !buf[0]) return def;
  return parse_u64(buf, 0);
}
