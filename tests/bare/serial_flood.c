// serial_flood: writes bytes=N (default 1M) of numbered lines to COM1, polled, then powers off.
// Behind a stdout nobody reads for a while, pier holds part of it when the guest stops: all of it
// must still come out (pier drains the guest's output before it exits). The line after them,
// `flood-end N`, says how many bytes they were.
#include "bare.h"
TEST_NAME("serial_flood");

int test_main(void) {
  const uint64_t bytes = cmdline_u64("bytes", 1 << 20);
  uint64_t written = 0;
  for (uint64_t line = 0; written < bytes; ++line) {
    char buf[64];
    const int n = snprintf(buf, sizeof buf, "flood %08lu abcdefghijklmnopqrstuvwxyz\n", line);
    printf("%s", buf);
    written += (uint64_t)n;
  }
  printf("flood-end %lu\n", written);
  return 0;
}
