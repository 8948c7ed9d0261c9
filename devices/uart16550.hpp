#pragma once
// A 16550A UART (COM1), modelled closely enough that Linux's 8250 driver detects a 16550A: scratch
// register, 4-bit IER, FIFO bits in IIR, loopback with modem-status mirroring, divisor latch, and
// THRE/RX/line-status interrupts on one level the machine maps to an IRQ line.
//
// Output never blocks the vCPU: bytes go to a chardev::Pump; while the pump is above its soft
// limit, LSR reports the transmitter busy so a polling guest waits (no loss), and the THRE
// interrupt is raised again when the host drains.
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <span>

#include "devices/io_bus.hpp"

namespace pier {

class Uart16550 final : public BusDevice {
 public:
  // Register offsets and bits (PC16550D data sheet; Linux include/uapi/linux/serial_reg.h).
  static constexpr uint8_t kRbrThr = 0, kIer = 1, kIirFcr = 2, kLcr = 3, kMcr = 4, kLsr = 5,
                           kMsr = 6, kScr = 7;
  static constexpr uint8_t kLsrDataReady = 0x01, kLsrOverrun = 0x02, kLsrThrEmpty = 0x20,
                           kLsrTxEmpty = 0x40;
  static constexpr uint8_t kIirNoInterrupt = 0x01, kIirThrEmpty = 0x02, kIirRxData = 0x04,
                           kIirLineStatus = 0x06, kIirRxTimeout = 0x0c, kIirFifoEnabled = 0xc0;
  static constexpr uint8_t kIerRxData = 0x01, kIerThrEmpty = 0x02, kIerLineStatus = 0x04,
                           kIerModemStatus = 0x08;
  static constexpr uint8_t kLcrDlab = 0x80, kMcrLoopback = 0x10;
  static constexpr size_t kFifoSize = 16;

  struct Host {
    std::function<void(bool level)> set_irq;
    // Transmit bytes; never blocks.
    std::function<void(std::span<const uint8_t>)> transmit;
    // Whether the host side can take more output right now.
    std::function<bool()> can_transmit;
    // Called when the RX FIFO has room again after the host was told to wait.
    std::function<void()> rx_space;
  };

  explicit Uart16550(Host host);

  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;

  // Host input (I/O thread): queues up to the FIFO's free space; returns bytes taken.
  size_t receive(std::span<const uint8_t> bytes);
  // The host drained its output: THR is empty again.
  void transmit_space_available();

 private:
  uint8_t read_register(uint8_t reg);
  void write_register(uint8_t reg, uint8_t value);
  uint8_t line_status() const;
  uint8_t interrupt_identification() const;
  void update_irq();

  Host host_;
  mutable std::mutex mutex_;
  uint8_t ier_ = 0, lcr_ = 0, mcr_ = 0, scr_ = 0, fcr_ = 0;
  uint8_t msr_ = 0;        // delta bits live in the low nibble
  uint16_t divisor_ = 12;  // 9600 baud
  bool fifo_enabled_ = false;
  bool thr_interrupt_pending_ = false;
  bool overrun_ = false;
  bool rx_waiting_ = false;  // the host was refused input and waits for rx_space
  bool irq_level_ = false;
  std::deque<uint8_t> rx_;
};

}  // namespace pier
