// libFuzzer target for the machine's port I/O devices, wired on an IoBus exactly as
// vmm/machine.cpp wires them: the 16550A on COM1, the i8042, the PCI type-1 mechanism with the
// reset control register at 0xCF9 carved out, and the ACPI sleep/reset ports. The input is a
// script of IN/OUT at any port (steered towards the devices' ranges and their edges) with any
// width, interleaved with host events on the UART: input bytes, the host's output filling up
// and draining.
//
// The harness keeps a reference model and asserts it (abort = finding):
//  - the machine stops exactly when the guest asked for it: power-off for SLP_TYP 5 with SLP_EN
//    at the sleep control port, reset for 0xFE at 0x64, RST_CPU at 0xCF9, the reset value at the
//    ACPI reset port; never otherwise (and no other stop reason);
//  - the UART transmits exactly the bytes written to THR with DLAB and loopback off, in order;
//    RBR returns the bytes the host gave it (and loopback bytes), in order, FIFO at most 16
//    bytes; LSR.DR tells whether one is waiting; the scratch register and the divisor latch
//    read back what was written; the IRQ line it reports follows IIR;
//  - unclaimed ports read all-ones; the i8042 and ACPI ports read 0; config data for an absent
//    PCI function reads all-ones; CONFIG_ADDRESS reads back what a dword write left there.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "boot/layout.hpp"
#include "devices/io_bus.hpp"
#include "devices/pci/bus.hpp"
#include "devices/system_control.hpp"
#include "devices/uart16550.hpp"
#include "vmm/log.hpp"

using namespace pier;

namespace {

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "pio_fuzz: invariant broken: %s\n", what.c_str());
  std::abort();
}

const bool g_trace = std::getenv("PIO_FUZZ_TRACE") != nullptr;

struct UartModel {
  uint8_t lcr = 0, mcr = 0, scr = 0;
  uint16_t divisor = 12;
  std::deque<uint8_t> fifo;
  bool dlab() const { return (lcr & 0x80) != 0; }
  bool loopback() const { return (mcr & 0x10) != 0; }
};

class Harness {
 public:
  explicit Harness(FuzzedDataProvider& in)
      : in_(in), pci_(layout::kPciMmioStart, layout::kPciMmioEnd) {
    auto stop = [this](StopReason reason) { stops_.push_back(reason); };
    Uart16550::Host host;
    host.set_irq = [this](bool level) {
      if (level == irq_) fail("UART reported the same IRQ level twice");
      irq_ = level;
    };
    host.transmit = [this](std::span<const uint8_t> bytes) {
      transmitted_.insert(transmitted_.end(), bytes.begin(), bytes.end());
    };
    host.can_transmit = [this] { return host_has_room_; };
    host.rx_space = [this] { ++rx_space_calls_; };
    uart_ = std::make_shared<Uart16550>(std::move(host));
    pio_.add(layout::kCom1, layout::kCom1Size, uart_, "COM1");
    pio_.add(layout::kI8042Data, 5, std::make_shared<I8042>(stop), "i8042");
    pio_.add(layout::kPciConfigAddress, 8,
             std::make_shared<ResetControlPort>(stop, pci_.config_io()), "PCI config + RCR");
    pio_.add(layout::kAcpiSleepControl, layout::kAcpiPortsSize,
             std::make_shared<AcpiSystemControl>(stop), "ACPI");
  }

  void step() {
    switch (in_.ConsumeIntegralInRange<int>(0, 9)) {
      case 0:
      case 1:
      case 2:
        out();
        break;
      case 3:
      case 4:
      case 5:
        in();
        break;
      case 6: {  // host input
        const auto bytes = in_.ConsumeBytes<uint8_t>(in_.ConsumeIntegralInRange<size_t>(0, 24));
        const size_t taken = uart_->receive(bytes);
        const size_t room = model_.loopback() ? 0 : 16 - model_.fifo.size();
        if (taken != std::min(room, bytes.size()))
          fail("receive took " + std::to_string(taken) + " of " + std::to_string(bytes.size()) +
               " with " + std::to_string(room) + " free");
        model_.fifo.insert(model_.fifo.end(), bytes.begin(), bytes.begin() + taken);
        break;
      }
      case 7:
        host_has_room_ = in_.ConsumeBool();
        break;
      case 8:
        host_has_room_ = true;
        uart_->transmit_space_available();
        break;
      case 9:
        check_transmitted();
        break;
    }
    check_stops();
  }

  void finish() {
    check_transmitted();
    check_stops();
  }

 private:
  uint16_t steer_port() {
    static constexpr uint16_t kBases[] = {layout::kCom1, layout::kI8042Data,
                                          layout::kPciConfigAddress, layout::kAcpiSleepControl};
    const uint16_t v = in_.ConsumeIntegral<uint16_t>();
    const int pick = in_.ConsumeIntegralInRange<int>(0, 5);
    if (pick < 4) return static_cast<uint16_t>(kBases[pick] + (v % 12) - 2);  // and the edges
    if (pick == 4) return layout::kCom1 + v % 8;
    return v;
  }

  size_t width() {
    static constexpr size_t kWidths[] = {1, 1, 2, 4};
    return kWidths[in_.ConsumeIntegralInRange<int>(0, 3)];
  }

  // What the device whose range holds [port, port + n) is, or none.
  enum class Dev { kNone, kUart, kI8042, kPci, kAcpi };
  static Dev device_at(uint64_t port, size_t n) {
    auto inside = [&](uint64_t base, uint64_t size) {
      return port >= base && port + n <= base + size;
    };
    if (inside(layout::kCom1, layout::kCom1Size)) return Dev::kUart;
    if (inside(layout::kI8042Data, 5)) return Dev::kI8042;
    if (inside(layout::kPciConfigAddress, 8)) return Dev::kPci;
    if (inside(layout::kAcpiSleepControl, layout::kAcpiPortsSize)) return Dev::kAcpi;
    return Dev::kNone;
  }

  void out() {
    const uint16_t port = steer_port();
    const size_t n = width();
    uint8_t data[4];
    const uint32_t value = steer_value(port);
    std::memcpy(data, &value, 4);
    if (g_trace) std::fprintf(stderr, "  out %#x/%zu = %#x\n", port, n, value);
    switch (device_at(port, n)) {
      case Dev::kUart:
        for (size_t i = 0; i < n; ++i)
          uart_write(static_cast<uint8_t>(port - layout::kCom1 + i), data[i]);
        break;
      case Dev::kI8042:
        if (port == layout::kI8042Data + 4 && data[0] == 0xfe)
          expected_.push_back(StopReason::kReset);
        break;
      case Dev::kPci:
        if (port == layout::kPciConfigAddress + 1 && n == 1) {
          if (data[0] & 4) expected_.push_back(StopReason::kReset);
        } else if (port == layout::kPciConfigAddress && n == 4) {
          config_address_ = value & 0x80ff'fffcu;
        }
        break;
      case Dev::kAcpi:
        if (port == layout::kAcpiSleepControl && (data[0] & 0x20)) {
          if (((data[0] >> 2) & 7) == 5) expected_.push_back(StopReason::kPowerOff);
        } else if (port == layout::kAcpiReset && data[0] == layout::kAcpiResetValue) {
          expected_.push_back(StopReason::kReset);
        }
        break;
      case Dev::kNone:
        break;
    }
    pio_.write(port, std::span<const uint8_t>(data, n));
    check_stops();
  }

  uint32_t steer_value(uint16_t port) {
    const uint32_t raw = in_.ConsumeIntegral<uint32_t>();
    switch (in_.ConsumeIntegralInRange<int>(0, 3)) {
      case 0:
        if (port == layout::kPciConfigAddress)  // an enabled CONFIG_ADDRESS, often of 00:00.0
          return 0x8000'0000u | (in_.ConsumeBool() ? 0 : (raw & 0xffff00)) | (raw & 0xfc);
        return raw & 0xff;
      case 1:
        return raw & 0x80;  // DLAB, or nothing
      default:
        return raw;
    }
  }

  void uart_write(uint8_t reg, uint8_t v) {
    UartModel& m = model_;
    if (m.dlab() && reg <= 1) {
      m.divisor = reg == 0 ? static_cast<uint16_t>((m.divisor & 0xff00) | v)
                           : static_cast<uint16_t>((m.divisor & 0x00ff) | (v << 8));
      return;
    }
    switch (reg) {
      case 0:
        if (m.loopback()) {
          if (m.fifo.size() < 16) m.fifo.push_back(v);
        } else {
          expected_tx_.push_back(v);
        }
        break;
      case 2:
        if (v & 2) m.fifo.clear();
        break;
      case 3:
        m.lcr = v;
        break;
      case 4:
        m.mcr = v & 0x1f;
        break;
      case 7:
        m.scr = v;
        break;
      default:
        break;
    }
  }

  void in() {
    const uint16_t port = steer_port();
    const size_t n = width();
    uint8_t data[4];
    std::memset(data, 0x5a, sizeof(data));
    irq_before_access_ = irq_;
    pio_.read(port, std::span(data, n));
    if (g_trace) std::fprintf(stderr, "  in %#x/%zu\n", port, n);
    switch (device_at(port, n)) {
      case Dev::kNone:
        for (size_t i = 0; i < n; ++i)
          if (data[i] != 0xff) fail("unclaimed port " + std::to_string(port) + " read non-ones");
        break;
      case Dev::kI8042:
      case Dev::kAcpi:
        for (size_t i = 0; i < n; ++i)
          if (data[i] != 0) fail("port " + std::to_string(port) + " read non-zero");
        break;
      case Dev::kPci:
        if (port == layout::kPciConfigAddress && n == 4) {
          uint32_t v;
          std::memcpy(&v, data, 4);
          if (v != config_address_) fail("CONFIG_ADDRESS reads back wrong");
        } else if (port >= layout::kPciConfigAddress + 4 && (config_address_ & 0x8000'0000u) &&
                   ((config_address_ >> 8) & 0xffff) != 0) {
          // Any bus, device or function but 00:00.0 is absent on this bus.
          for (size_t i = 0; i < n; ++i)
            if (data[i] != 0xff) fail("absent PCI function read non-ones");
        } else if (port >= layout::kPciConfigAddress + 4 && !(config_address_ & 0x8000'0000u)) {
          for (size_t i = 0; i < n; ++i)
            if (data[i] != 0xff) fail("config data with CONFIG_ADDRESS disabled read non-ones");
        }
        break;
      case Dev::kUart:
        for (size_t i = 0; i < n; ++i)
          uart_read(static_cast<uint8_t>(port - layout::kCom1 + i), data[i], i == 0);
        break;
    }
  }

  void uart_read(uint8_t reg, uint8_t got, bool first) {
    UartModel& m = model_;
    auto expect = [&](uint8_t want, const char* what) {
      if (got != want)
        fail(std::string("UART ") + what + " read " + std::to_string(got) + ", expected " +
             std::to_string(want));
    };
    if (m.dlab() && reg <= 1) {
      expect(static_cast<uint8_t>(reg == 0 ? m.divisor : m.divisor >> 8), "divisor latch");
      return;
    }
    switch (reg) {
      case 0:
        if (m.fifo.empty()) {
          expect(0, "RBR (empty)");
        } else {
          expect(m.fifo.front(), "RBR");
          m.fifo.pop_front();
        }
        break;
      case 2:
        // IIR bit 0 clear <=> an interrupt is pending <=> the line is up (the read itself may
        // then acknowledge THRE, which the next check sees). Only for the first register of an
        // access: the ones before it in a wide read may have changed the state.
        if (first && ((got & 1) == 0) != irq_before_read())
          fail("IIR " + std::to_string(got) + " disagrees with the IRQ line");
        break;
      case 3:
        expect(m.lcr, "LCR");
        break;
      case 4:
        expect(m.mcr, "MCR");
        break;
      case 5:
        if (((got & 1) != 0) != !m.fifo.empty()) fail("LSR.DR disagrees with the FIFO");
        break;
      case 7:
        expect(m.scr, "SCR");
        break;
      default:
        break;
    }
  }

  // The line as reported before this access (the read itself may lower it: reading IIR
  // acknowledges THRE).
  bool irq_before_read() const { return irq_before_access_; }

  void check_transmitted() {
    if (transmitted_ != expected_tx_) {
      fail("UART transmitted " + std::to_string(transmitted_.size()) + " bytes, expected " +
           std::to_string(expected_tx_.size()));
    }
  }

  void check_stops() {
    if (stops_ != expected_) {
      fail("stop requests: got " + std::to_string(stops_.size()) + ", expected " +
           std::to_string(expected_.size()) +
           (stops_.empty() ? std::string()
                           : std::string(" (last: ") + to_string(stops_.back()) + ")"));
    }
  }

  FuzzedDataProvider& in_;
  IoBus pio_{"pio"};
  pci::Bus pci_;
  std::shared_ptr<Uart16550> uart_;
  UartModel model_;
  uint32_t config_address_ = 0;
  bool irq_ = false;
  bool irq_before_access_ = false;
  bool host_has_room_ = true;
  size_t rx_space_calls_ = 0;
  std::vector<uint8_t> transmitted_, expected_tx_;
  std::vector<StopReason> stops_, expected_;
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  log::set_level(g_trace ? log::Level::kDebug : log::Level::kError);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  Harness h(in);
  for (int ops = 0; ops < 1000 && in.remaining_bytes() > 0; ++ops) h.step();
  h.finish();
  return 0;
}
