// COM1: 16550A register behaviour under polling, and interrupt-driven TX and RX through the
// IOAPIC, with RX bytes fed to pier's stdin (--serial stdio).
#include "pier_process.hpp"

using namespace pier::test;

TEST(BareUart, Polled16550A) {
  PIER_REQUIRE_KVM();
  auto r = run_bare("uart_polled", {"--serial", "stdio"});
  EXPECT_TRUE(guest_passed(r, "uart_polled"));
  EXPECT_TRUE(has_line_starting(r.out, "uart_polled: polled THR output from CPL0")) << r.describe();
  EXPECT_TRUE(has_line_starting(r.out, "uart_polled: polled THR output from CPL3")) << r.describe();
  // Loopback bytes must not leak to the host.
  EXPECT_EQ(r.out.find("LB"), std::string::npos) << r.describe();
}

TEST(BareUart, InterruptDrivenTxAndRxFromStdin) {
  PIER_REQUIRE_KVM();
  PierRun run;
  run.args = {"run", "--kernel", bare_guest("uart_irq"), "--serial", "stdio", "--cmdline", "timeout_ms=20000"};
  run.stdin_data = "hello-pier\n";
  run.stdin_after = "PIER-TEST READY uart_irq rx";
  auto r = run_pier(run);
  EXPECT_TRUE(guest_passed(r, "uart_irq"));
  EXPECT_TRUE(has_line_starting(r.out, "uart_irq: interrupt-driven TX, one byte per THRE interrupt")) << r.describe();
  EXPECT_EQ(line_after(r.out, "got:"), "hello-pier") << r.describe();
  std::cout << "[ figures  ] TX: " << line_after(r.out, "TX: ") << "\n[ figures  ] RX: " << line_after(r.out, "RX: ")
            << "\n";
}

TEST(BareUart, RxPendingBeforeInterruptEnable) {
  PIER_REQUIRE_KVM();
  // Input that arrives while the guest does TX (RX interrupts still off) waits in the UART (or in
  // pier) and raises the RX interrupt as soon as the guest sets IER.ERBFI.
  PierRun run;
  run.args = {"run", "--kernel", bare_guest("uart_irq"), "--serial", "stdio"};
  run.stdin_data = "early\n";
  run.stdin_after = "PIER-TEST READY uart_irq tx";
  auto r = run_pier(run);
  EXPECT_TRUE(guest_passed(r, "uart_irq"));
  EXPECT_EQ(line_after(r.out, "got:"), "early") << r.describe();
}

TEST(BareUart, RxLongLineNothingLost) {
  PIER_REQUIRE_KVM();
  // 600 bytes at once: far more than the 16-byte RX FIFO. pier must feed the UART only as the
  // guest drains it (host -> guest: nothing lost).
  std::string line;
  for (int i = 0; line.size() < 600; i++) line += "0123456789abcdefghijklmnopqrstuvwxyz"[i % 36];
  PierRun run;
  run.args = {"run", "--kernel", bare_guest("uart_irq"), "--serial", "stdio"};
  run.stdin_data = line + "\n";
  run.stdin_after = "PIER-TEST READY uart_irq rx";
  auto r = run_pier(run);
  EXPECT_TRUE(guest_passed(r, "uart_irq"));
  const std::string got = line_after(r.out, "got:");
  EXPECT_EQ(got.size(), line.size()) << r.describe();
  EXPECT_EQ(got, line) << r.describe();
  std::cout << "[ figures  ] RX: " << line_after(r.out, "RX: ") << "\n";
}
