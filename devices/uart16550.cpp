#include "devices/uart16550.hpp"

namespace pier {
namespace {
// Modem status: with loopback off we report CTS, DSR and DCD asserted so software waiting for
// carrier (getty) proceeds.
constexpr uint8_t kMsrCts = 0x10, kMsrDsr = 0x20, kMsrDcd = 0x80;
constexpr uint8_t kDefaultModemStatus = kMsrCts | kMsrDsr | kMsrDcd;
constexpr uint8_t kFcrEnable = 0x01, kFcrClearRx = 0x02;
}  // namespace

Uart16550::Uart16550(Host host) : host_(std::move(host)) {
  msr_ = kDefaultModemStatus;
}

void Uart16550::read(uint64_t offset, std::span<uint8_t> data) {
  std::function<void()> notify;
  {
    std::lock_guard lock(mutex_);
    const bool was_full = rx_.size() >= kFifoSize;
    // The UART is byte-wide; a wider access reads consecutive registers.
    for (size_t i = 0; i < data.size(); ++i) {
      data[i] = offset + i < 8 ? read_register(static_cast<uint8_t>(offset + i)) : 0xff;
    }
    if (was_full && rx_.size() < kFifoSize && rx_waiting_) {
      rx_waiting_ = false;
      notify = host_.rx_space;
    }
    update_irq();
  }
  if (notify) notify();
}

void Uart16550::write(uint64_t offset, std::span<const uint8_t> data) {
  std::lock_guard lock(mutex_);
  for (size_t i = 0; i < data.size(); ++i) {
    if (offset + i < 8) write_register(static_cast<uint8_t>(offset + i), data[i]);
  }
  update_irq();
}

uint8_t Uart16550::line_status() const {
  uint8_t lsr = 0;
  if (!rx_.empty()) lsr |= kLsrDataReady;
  if (overrun_) lsr |= kLsrOverrun;
  const bool can_tx = (mcr_ & kMcrLoopback) || !host_.can_transmit || host_.can_transmit();
  if (can_tx) lsr |= kLsrThrEmpty | kLsrTxEmpty;
  return lsr;
}

uint8_t Uart16550::interrupt_identification() const {
  uint8_t iir = kIirNoInterrupt;
  if ((ier_ & kIerLineStatus) && overrun_) {
    iir = kIirLineStatus;
  } else if ((ier_ & kIerRxData) && !rx_.empty()) {
    // Below the trigger level a real 16550 reports a character timeout after 4 character times;
    // reporting it at once is indistinguishable to a driver that reads until LSR.DR clears.
    iir = fifo_enabled_ && rx_.size() < kFifoSize ? kIirRxTimeout : kIirRxData;
  } else if ((ier_ & kIerThrEmpty) && thr_interrupt_pending_) {
    iir = kIirThrEmpty;
  } else if ((ier_ & kIerModemStatus) && (msr_ & 0x0f)) {
    iir = 0x00;
  }
  if (fifo_enabled_) iir |= kIirFifoEnabled;
  return iir;
}

uint8_t Uart16550::read_register(uint8_t reg) {
  if ((lcr_ & kLcrDlab) && reg <= kIer) {
    return reg == 0 ? static_cast<uint8_t>(divisor_) : static_cast<uint8_t>(divisor_ >> 8);
  }
  switch (reg) {
    case kRbrThr: {
      if (rx_.empty()) return 0;
      const uint8_t byte = rx_.front();
      rx_.pop_front();
      return byte;
    }
    case kIer:
      return ier_;
    case kIirFcr: {
      const uint8_t iir = interrupt_identification();
      // Reading IIR while it reports THRE acknowledges that interrupt.
      if ((iir & 0x0f) == kIirThrEmpty) thr_interrupt_pending_ = false;
      return iir;
    }
    case kLcr:
      return lcr_;
    case kMcr:
      return mcr_;
    case kLsr: {
      const uint8_t lsr = line_status();
      overrun_ = false;
      return lsr;
    }
    case kMsr: {
      uint8_t msr;
      if (mcr_ & kMcrLoopback) {
        // Loopback wires DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
        msr = static_cast<uint8_t>(((mcr_ & 0x01) << 5) | ((mcr_ & 0x02) << 3) |
                                   ((mcr_ & 0x04) << 4) | ((mcr_ & 0x08) << 4));
      } else {
        msr = msr_;
      }
      msr_ &= 0xf0;  // reading clears the delta bits
      return msr;
    }
    case kScr:
      return scr_;
    default:
      return 0xff;
  }
}

void Uart16550::write_register(uint8_t reg, uint8_t value) {
  if ((lcr_ & kLcrDlab) && reg <= kIer) {
    divisor_ = reg == 0 ? static_cast<uint16_t>((divisor_ & 0xff00) | value)
                        : static_cast<uint16_t>((divisor_ & 0x00ff) | (value << 8));
    return;
  }
  switch (reg) {
    case kRbrThr:
      if (mcr_ & kMcrLoopback) {
        if (rx_.size() < kFifoSize) {
          rx_.push_back(value);
        } else {
          overrun_ = true;
        }
      } else if (host_.transmit) {
        host_.transmit(std::span(&value, 1));
      }
      // Transmission is instantaneous: THR is empty again at once, unless the host is full, in
      // which case transmit_space_available() raises THRE later.
      thr_interrupt_pending_ = (line_status() & kLsrThrEmpty) != 0;
      break;
    case kIer: {
      const uint8_t old = ier_;
      ier_ = value & 0x0f;
      // Enabling the THRE interrupt while THR is empty raises it (8250 driver relies on this).
      if (!(old & kIerThrEmpty) && (ier_ & kIerThrEmpty) && (line_status() & kLsrThrEmpty)) {
        thr_interrupt_pending_ = true;
      }
      break;
    }
    case kIirFcr:
      fcr_ = value;
      fifo_enabled_ = value & kFcrEnable;
      if (value & kFcrClearRx) rx_.clear();
      break;
    case kLcr:
      lcr_ = value;
      break;
    case kMcr:
      mcr_ = value & 0x1f;
      break;
    case kLsr:
    case kMsr:
      break;  // read-only (factory test registers on real parts)
    case kScr:
      scr_ = value;
      break;
    default:
      break;
  }
}

void Uart16550::update_irq() {
  const bool level = (interrupt_identification() & kIirNoInterrupt) == 0;
  if (level != irq_level_) {
    irq_level_ = level;
    if (host_.set_irq) host_.set_irq(level);
  }
}

size_t Uart16550::receive(std::span<const uint8_t> bytes) {
  std::lock_guard lock(mutex_);
  size_t taken = 0;
  // In loopback the receiver is disconnected from the line.
  if (!(mcr_ & kMcrLoopback)) {
    while (taken < bytes.size() && rx_.size() < kFifoSize) rx_.push_back(bytes[taken++]);
  }
  if (taken < bytes.size()) rx_waiting_ = true;
  update_irq();
  return taken;
}

void Uart16550::transmit_space_available() {
  std::lock_guard lock(mutex_);
  thr_interrupt_pending_ = true;
  update_irq();
}

}  // namespace pier
