#include "devices/uart16550.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace pier {
namespace {

class UartTest : public ::testing::Test {
 protected:
  UartTest() {
    Uart16550::Host host;
    host.set_irq = [this](bool level) {
      irq = level;
      irq_changes++;
    };
    host.transmit = [this](std::span<const uint8_t> b) { out.append(b.begin(), b.end()); };
    host.can_transmit = [this] { return host_has_space; };
    host.rx_space = [this] { rx_space_calls++; };
    uart = std::make_unique<Uart16550>(std::move(host));
  }
  uint8_t in(uint8_t reg) {
    uint8_t v = 0;
    uart->read(reg, std::span(&v, 1));
    return v;
  }
  void out_b(uint8_t reg, uint8_t v) { uart->write(reg, std::span(&v, 1)); }

  std::unique_ptr<Uart16550> uart;
  std::string out;
  bool irq = false;
  int irq_changes = 0;
  bool host_has_space = true;
  int rx_space_calls = 0;
};

TEST_F(UartTest, ScratchAndIerBehaveLikeA16550) {
  out_b(Uart16550::kScr, 0xa5);
  EXPECT_EQ(in(Uart16550::kScr), 0xa5);
  out_b(Uart16550::kIer, 0xff);
  EXPECT_EQ(in(Uart16550::kIer), 0x0f);  // 8250 autoconfig checks the upper bits read 0
  out_b(Uart16550::kIer, 0);
  EXPECT_EQ(in(Uart16550::kIer), 0);
}

TEST_F(UartTest, FifoEnableIsReportedAs16550A) {
  EXPECT_EQ(in(Uart16550::kIirFcr), 0x01);  // no FIFO, no interrupt
  out_b(Uart16550::kIirFcr, 0xe7);
  EXPECT_EQ(in(Uart16550::kIirFcr)&0xc0, 0xc0);
  // 16750 probe: bit 5 (64-byte FIFO) must stay clear for a 16550A.
  EXPECT_EQ(in(Uart16550::kIirFcr)&0x20, 0);
}

TEST_F(UartTest, DivisorLatchRoundTrip) {
  out_b(Uart16550::kLcr, 0x80);
  out_b(0, 0x01);
  out_b(1, 0x02);
  EXPECT_EQ(in(0), 0x01);
  EXPECT_EQ(in(1), 0x02);
  out_b(Uart16550::kLcr, 0x03);
  EXPECT_EQ(in(Uart16550::kLcr), 0x03);
  out_b(0, 'A');  // DLAB off: THR again
  EXPECT_EQ(out, "A");
}

TEST_F(UartTest, LoopbackEchoesAndMirrorsModemControl) {
  out_b(Uart16550::kMcr, 0x10 | 0x0a);        // loopback, RTS, OUT2
  EXPECT_EQ(in(Uart16550::kMsr)&0xf0, 0x90);  // CTS (from RTS) and DCD (from OUT2)
  out_b(Uart16550::kMcr, 0x10 | 0x05);        // loopback, DTR, OUT1
  EXPECT_EQ(in(Uart16550::kMsr)&0xf0, 0x60);  // DSR, RI
  out_b(0, 'z');
  EXPECT_TRUE(out.empty());
  EXPECT_TRUE(in(Uart16550::kLsr)&Uart16550::kLsrDataReady);
  EXPECT_EQ(in(0), 'z');
  EXPECT_FALSE(in(Uart16550::kLsr)&Uart16550::kLsrDataReady);
}

TEST_F(UartTest, ThrEmptyInterruptRaisedOnEnableAndAcknowledgedByIirRead) {
  EXPECT_FALSE(irq);
  out_b(Uart16550::kIer, Uart16550::kIerThrEmpty);
  EXPECT_TRUE(irq);
  EXPECT_EQ(in(Uart16550::kIirFcr)&0x0f, Uart16550::kIirThrEmpty);
  EXPECT_FALSE(irq);
  out_b(0, 'x');  // transmitting makes THR empty again -> interrupt
  EXPECT_TRUE(irq);
  EXPECT_EQ(out, "x");
}

TEST_F(UartTest, FullHostThrottlesTheTransmitterWithoutLosingBytes) {
  out_b(Uart16550::kIer, Uart16550::kIerThrEmpty);
  (void)in(Uart16550::kIirFcr);
  host_has_space = false;
  EXPECT_FALSE(in(Uart16550::kLsr)&Uart16550::kLsrThrEmpty);
  out_b(0, 'q');  // a guest that writes anyway is still heard
  EXPECT_EQ(out, "q");
  EXPECT_FALSE(irq);
  host_has_space = true;
  uart->transmit_space_available();
  EXPECT_TRUE(irq);
  EXPECT_TRUE(in(Uart16550::kLsr)&Uart16550::kLsrThrEmpty);
}

TEST_F(UartTest, ReceiveFillsTheFifoThenAsksTheHostToWait) {
  out_b(Uart16550::kIirFcr, 0x01);
  out_b(Uart16550::kIer, Uart16550::kIerRxData);
  std::vector<uint8_t> bytes(20);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>('a' + i);
  EXPECT_EQ(uart->receive(bytes), Uart16550::kFifoSize);
  EXPECT_TRUE(irq);
  EXPECT_EQ(in(Uart16550::kIirFcr)&0x0f, Uart16550::kIirRxData);  // at the trigger level
  EXPECT_EQ(in(0), 'a');
  EXPECT_EQ(rx_space_calls, 1);
  std::string got = "a";
  while (in(Uart16550::kLsr)&Uart16550::kLsrDataReady) got += static_cast<char>(in(0));
  EXPECT_EQ(got, "abcdefghijklmnop");
  EXPECT_FALSE(irq);
}

TEST_F(UartTest, PartialFifoReportsCharacterTimeout) {
  out_b(Uart16550::kIirFcr, 0x01);
  out_b(Uart16550::kIer, Uart16550::kIerRxData);
  const uint8_t b = 'k';
  EXPECT_EQ(uart->receive(std::span(&b, 1)), 1u);
  EXPECT_EQ(in(Uart16550::kIirFcr)&0x0f, Uart16550::kIirRxTimeout);
}

TEST_F(UartTest, WideAndOutOfRangeAccessesAreSafe) {
  uint8_t wide[4] = {1, 2, 3, 4};
  uart->write(6, std::span(wide, 4));  // runs past the 8 registers
  uint8_t back[4];
  uart->read(6, std::span(back, 4));
  EXPECT_EQ(back[1], 2);  // scratch register got byte 2
  EXPECT_EQ(back[2], 0xff);
}

}  // namespace
}  // namespace pier
