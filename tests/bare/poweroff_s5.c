// poweroff_s5: the smallest guest. Prints its PASS line and powers off through ACPI S5
// (port 0x600 <- 0x34); pier must exit 0. Also the guest used to measure exec -> first byte.
#include "bare.h"
TEST_NAME("poweroff_s5");

int test_main(void) {
  uint64_t khz = cmdline_has("timing") ? tsc_khz() : 0;
  if (khz) printf("library init: %lu us\n", (rdtsc() - entry_state.tsc) * 1000 / khz);
  return 0;
}
