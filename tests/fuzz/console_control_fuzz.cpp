// libFuzzer target for the virtio-console control path: parse_driver_message() on raw bytes,
// then a ConsoleDevice driven by the Linux driver model (tests/unit/virtio/linux_console_model
// .hpp) through a fuzzed sequence of hostile control messages, control-buffer refills of any
// size, host connects/disconnects, port hot-plug, resizes, data both ways, emergency writes and
// driver resets. Invariants (abort = finding):
//  - nothing throws out of the device except pier::Error from the host API on bad arguments;
//  - control tx and console tx are completed at once;
//  - every message the guest receives has a header, a device->driver event, an id below
//    max_nr_ports, PORT_OPEN value 0/1, and exactly its own length (one message per buffer);
//  - the host-side control queue stays within its documented bound (6 * max_nr_ports);
//  - no queue ever enters NEEDS_RESET (the fuzzer only builds valid descriptors).
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "tests/unit/virtio/console_fake_backend.hpp"
#include "tests/unit/virtio/linux_console_model.hpp"
#include "virtio/console/console_device.hpp"
#include "vmm/error.hpp"
#include "vmm/log.hpp"

using namespace pier;
using namespace pier::virtio;
using namespace pier::virtio::testing;

namespace {

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "console_control_fuzz: invariant broken: %s\n", what.c_str());
  std::abort();
}

struct Ports {
  std::vector<std::shared_ptr<FakePortBackend::State>> state;  // by id (null: none)
};

// Ports for which the fuzzer forged a PORT_READY while the guest model still had an earlier
// incarnation of the id. Linux sends PORT_READY only in answer to a PORT_ADD (after handling
// the PORT_REMOVE of the id's previous incarnation, which comes first) or after a reset, so a
// genuine guest's view of the port always matches the device's; a forged one can hand the
// queues to a new generic incarnation while the model still writes to them as its old hvc
// console. That guest only hurts itself (its console write waits), so the console-tx invariant
// is not applied to such a port until the guest model has seen its PORT_REMOVE.
std::set<uint32_t> forged_ready;

bool console_tx_of_forged_port(const std::string& problem) {
  const std::string prefix = "console tx on port ";
  if (problem.rfind(prefix, 0) != 0) return false;
  return forged_ready.count(static_cast<uint32_t>(std::stoul(problem.substr(prefix.size())))) > 0;
}

void check(LinuxConsoleModel& os, console::ConsoleDevice& device, uint32_t max_ports) {
  for (const auto& p : os.problems()) {
    if (console_tx_of_forged_port(p)) continue;
    // Problems the guest can cause itself (e.g. a PORT_READY for a port it was never given gets
    // an answer it then calls "Invalid index") are not device bugs; these are.
    if (p.find("not completed at once") != std::string::npos ||
        p.find("one message per buffer") != std::string::npos ||
        p.find("control buffer with") != std::string::npos ||
        p.find("rx used length") != std::string::npos) {
      fail(p);
    }
  }
  os.clear_problems();  // each is judged once, against the state of its own moment
  static const bool trace = std::getenv("CONSOLE_FUZZ_TRACE") != nullptr;
  for (const auto& r : os.control_log()) {
    using namespace linux_console;
    if (trace) {
      std::fprintf(stderr, "  guest got id %u event %u value %u (%u bytes)\n", r.id, r.event,
                   r.value, r.len);
    }
    if (r.len < 8) fail("control message shorter than its header");
    if (r.event != kPortAdd && r.event != kPortRemove && r.event != kConsolePort &&
        r.event != kResize && r.event != kPortOpen && r.event != kPortName) {
      fail("device sent event " + std::to_string(r.event));
    }
    if (r.id >= max_ports) fail("device sent id " + std::to_string(r.id));
    if (r.event == kPortRemove) forged_ready.erase(r.id);
    if (r.event == kPortOpen && r.value > 1) fail("PORT_OPEN value " + std::to_string(r.value));
    if (r.event == kPortName && r.payload.empty() && os.options().control_buffer_size > 8) {
      fail("empty PORT_NAME in a buffer with room for it");
    }
  }
  os.clear_control_log();
  if (device.stats().control_pending > 6u * max_ports) {
    fail("control queue holds " + std::to_string(device.stats().control_pending));
  }
  if (os.transport().needs_reset()) fail("NEEDS_RESET: " + os.transport().errors().front());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  log::set_level(log::Level::kError);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);

  // Part 1: the parser on raw bytes.
  {
    const auto bytes = in.ConsumeBytes<uint8_t>(in.ConsumeIntegralInRange<size_t>(0, 16));
    const uint32_t max = in.ConsumeIntegralInRange<uint32_t>(1, console::kMaxPortsLimit);
    const auto r = console::parse_driver_message(bytes, max);
    if (r.error == console::ControlError::kOk) {
      if (bytes.size() < 8) fail("short message accepted");
      if (r.message.event != console::ControlEvent::kDeviceReady && r.message.id >= max) {
        fail("out-of-range id accepted");
      }
    }
  }

  // Part 2: the device.
  EventLoop loop;
  console::ConsoleOptions options;
  options.max_ports = in.ConsumeIntegralInRange<uint32_t>(1, 6);
  options.queue_size = 8;
  options.control_queue_size = 8;
  options.console_ring_bytes = in.ConsumeIntegralInRange<size_t>(0, 64);
  options.resize_layout =
      in.ConsumeBool() ? console::ResizeLayout::kColsRows : console::ResizeLayout::kRowsCols;
  const uint32_t max = options.max_ports;

  Ports ports;
  ports.state.resize(max);
  std::vector<console::PortConfig> configs;
  const uint32_t initial = in.ConsumeIntegralInRange<uint32_t>(0, max);
  for (uint32_t i = 0; i < initial; ++i) {
    auto [backend, state] = make_fake_backend(in.ConsumeBool());
    console::PortConfig c;
    c.console = i == 0 || in.ConsumeBool();
    if (in.ConsumeBool())
      c.name = "p" + std::to_string(i) + std::string(in.ConsumeIntegralInRange<size_t>(0, 40), 'n');
    c.backend = std::move(backend);
    ports.state[i] = state;
    configs.push_back(std::move(c));
  }
  forged_ready.clear();
  FakeGuest guest(32ull << 20);
  console::ConsoleDevice device(loop, options, std::move(configs));
  LinuxConsoleOptions lo;
  lo.control_rx_buffers = in.ConsumeIntegralInRange<size_t>(1, 8);
  lo.control_buffer_size = in.ConsumeIntegralInRange<uint32_t>(1, 64);
  lo.refill_control = in.ConsumeBool();
  lo.port_rx_buffers = in.ConsumeIntegralInRange<size_t>(1, 8);
  lo.rx_buffer_size = in.ConsumeIntegralInRange<uint32_t>(1, 64);
  lo.f_size = in.ConsumeBool();
  lo.max_write = 64;
  auto os = std::make_unique<LinuxConsoleModel>(guest, device, lo);
  if (!os->probe()) fail("probe failed");
  check(*os, device, max);

  // CONSOLE_FUZZ_TRACE=1 prints each operation (to reproduce a finding by hand).
  static const bool trace = std::getenv("CONSOLE_FUZZ_TRACE") != nullptr;
  if (trace) {
    std::fprintf(stderr,
                 "max_ports %u, %u ports, control buffers %zu x %u (refill %d), rx %zu x %u, "
                 "ring %zu\n",
                 max, initial, lo.control_rx_buffers, lo.control_buffer_size, lo.refill_control,
                 lo.port_rx_buffers, lo.rx_buffer_size, options.console_ring_bytes);
  }
  auto pick = [&] { return in.ConsumeIntegralInRange<uint32_t>(0, max - 1); };
  for (int ops = 0; ops < 400 && in.remaining_bytes() > 0; ++ops) {
    const int op = in.ConsumeIntegralInRange<int>(0, 14);
    if (trace) std::fprintf(stderr, "op %d\n", op);
    switch (op) {
      case 0: {  // a well-formed-looking control message
        const uint32_t id = in.ConsumeBool() ? pick() : in.ConsumeIntegral<uint32_t>();
        const uint16_t event = in.ConsumeIntegralInRange<uint16_t>(0, 9);
        const uint16_t value = in.ConsumeIntegralInRange<uint16_t>(0, 8);
        if (trace)
          std::fprintf(stderr, "  guest sends id %u event %u value %u\n", id, event, value);
        if (event == linux_console::kPortReady && os->port(id) != nullptr) forged_ready.insert(id);
        os->send_control(id, event, value);
        break;
      }
      case 1: {  // raw bytes as a control message (length >= 1: 0 would be a queue error)
        auto bytes = in.ConsumeBytes<uint8_t>(in.ConsumeIntegralInRange<size_t>(1, 16));
        if (bytes.empty()) bytes.push_back(0);
        os->send_raw_control(bytes);
        break;
      }
      case 2:
        os->refill_control(in.ConsumeIntegralInRange<size_t>(1, 8));
        break;
      case 3:
        os->control_work();
        break;
      case 4: {
        auto& s = ports.state[pick()];
        if (!s || s->stopped) break;
        if (in.ConsumeBool()) {
          s->connect();
        } else {
          s->disconnect();
        }
        break;
      }
      case 5: {
        auto& s = ports.state[pick()];
        if (s && !s->stopped)
          s->send(in.ConsumeBytesAsString(in.ConsumeIntegralInRange<size_t>(0, 100)));
        break;
      }
      case 6: {
        const uint32_t id = pick();
        if (in.ConsumeBool()) {
          os->open(id);
        } else {
          os->close(id);
        }
        break;
      }
      case 7: {
        const uint32_t id = pick();
        const std::string bytes =
            in.ConsumeBytesAsString(in.ConsumeIntegralInRange<size_t>(1, 100));
        auto* p = os->port(id);
        if (trace) {
          std::fprintf(stderr, "  write %zu bytes to port %u (guest: %s)\n", bytes.size(), id,
                       p == nullptr ? "none"
                       : p->console ? "console"
                                    : "generic");
        }
        if (p != nullptr && p->console) {
          os->put_chars(id, bytes);
        } else {
          os->write(id, bytes);
        }
        break;
      }
      case 8: {  // hot-plug
        const uint32_t id = pick();
        if (in.ConsumeBool()) {
          if (trace) std::fprintf(stderr, "  host removes port %u\n", id);
          try {
            device.remove_port(id);
          } catch (const Error&) {
          }
        } else {
          auto [backend, state] = make_fake_backend(in.ConsumeBool());
          console::PortConfig c;
          c.id = id;
          c.console = in.ConsumeBool();
          if (in.ConsumeBool())
            c.name = "hot" + std::to_string(in.ConsumeIntegralInRange<int>(0, 3));
          c.backend = std::move(backend);
          if (trace) std::fprintf(stderr, "  host adds port %u console %d\n", id, c.console);
          try {
            device.add_port(std::move(c));
            ports.state[id] = state;
          } catch (const Error&) {
          }
        }
        break;
      }
      case 9:
        try {
          device.resize(pick(), in.ConsumeIntegral<uint16_t>(), in.ConsumeIntegral<uint16_t>());
        } catch (const Error&) {
        }
        break;
      case 10:
        os->settle();
        break;
      case 11: {
        auto& s = ports.state[pick()];
        if (s && !s->stopped) {
          if (in.ConsumeBool()) {
            s->write_budget = 0;
          } else {
            s->make_room(in.ConsumeIntegralInRange<size_t>(0, 200));
          }
        }
        break;
      }
      case 12: {
        const uint8_t ch = in.ConsumeIntegral<uint8_t>();
        device.write_config(in.ConsumeIntegralInRange<uint64_t>(0, 16), std::span(&ch, 1));
        break;
      }
      case 13:
        os->in_intr(pick());
        break;
      case 14:
        if (in.ConsumeBool()) {
          if (trace) std::fprintf(stderr, "  hibernation: freeze and restore\n");
          if (!os->freeze_and_restore()) fail("restore failed");
        } else {
          if (trace) std::fprintf(stderr, "  driver reset and re-probe\n");
          os->transport().reset();
          os = std::make_unique<LinuxConsoleModel>(guest, device, lo);
          if (!os->probe()) fail("re-probe failed");
        }
        break;
    }
    check(*os, device, max);
  }
  os->settle();
  check(*os, device, max);
  // Run what the device posted to the I/O loop (emergency-write flushes).
  loop.post([&loop] { loop.stop(); });
  loop.run();
  return 0;
}
