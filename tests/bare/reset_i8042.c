// reset_i8042: i8042 "pulse reset line" (port 0x64 <- 0xFE); pier must exit 0. The PASS line is
// printed first; if the reset is ignored the guest prints a FAIL line and powers off.
#include "bare.h"
TEST_NAME("reset_i8042");

int test_main(void) {
  printf("PIER-TEST PASS reset_i8042 (resetting through port 0x64)\n");
  outb(0x64, 0xfe);
  test_fail("i8042 reset (0x64 <- 0xfe) returned");
}
