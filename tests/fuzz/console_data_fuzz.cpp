// libFuzzer target for the virtio-console data path with a hostile driver: descriptor chains
// written by the fuzzer straight into the data queues of several ports (any address: good
// buffers, buffers straddling the end of RAM or in the PROT_NONE hole above 3 GiB, above 4 GiB;
// any length, wrong direction, NEXT loops, indirect tables; heads re-posted while in flight;
// avail.idx jumps), interleaved with control messages (DEVICE_READY, PORT_READY, PORT_OPEN and
// nonsense), control-rx buffers of any size, backend events (connect, disconnect, input, full,
// room, a peer hanging up inside readv, slow producers), emergency writes, hot-plug, resizes,
// the device's posted continuations and notify_again, and driver resets. The device is driven
// only through ConsoleDevice's public API, with the FakeTransport of tests/unit/virtio.
//
// Invariants (abort = finding), besides ASan/UBSan and the hole catching an unchecked access:
//  - nothing throws out of the device except pier::Error from the host API;
//  - no ready queue ever has more chains in flight than its size, and no port holds more tx
//    chains or rx buffers than its queue size;
//  - used entries name a head below the queue size;
//  - host -> guest: every byte the device took from a backend was placed in a guest buffer
//    (bytes_to_guest), and the used lengths on the port's rx queue add up to the same;
//  - guest -> host: the peer received exactly bytes_to_host, and every byte taken from the
//    guest is accounted for: bytes_from_guest (+ emergency writes for port 0) = bytes_to_host
//    + bytes_buffered + console_bytes_dropped + bytes_discarded;
//  - the control queue stays within its documented bound (6 * max_nr_ports).
#include <fuzzer/FuzzedDataProvider.h>
#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "boot/layout.hpp"
#include "tests/unit/virtio/console_fake_backend.hpp"
#include "tests/unit/virtio/fake_driver.hpp"
#include "virtio/console/console_device.hpp"
#include "vmm/error.hpp"
#include "vmm/event_loop.hpp"
#include "vmm/log.hpp"

using namespace pier;
using namespace pier::virtio;
using namespace pier::virtio::testing;

namespace {

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "console_data_fuzz: invariant broken: %s\n", what.c_str());
  std::abort();
}

const bool g_trace = std::getenv("CONSOLE_DATA_FUZZ_TRACE") != nullptr;
#define TRACE(...)                            \
  do {                                        \
    if (g_trace) {                            \
      std::fprintf(stderr, "  " __VA_ARGS__); \
      std::fputc('\n', stderr);               \
    }                                         \
  } while (0)

// CONSOLE_DATA_FUZZ_STATS=1: totals over every input run, printed at exit (to see that a corpus
// reaches the data paths).
struct Totals {
  uint64_t inputs = 0, to_guest = 0, from_guest = 0, to_host = 0, discarded = 0, dropped = 0,
           needs_reset = 0, max_tx_held = 0, max_rx_held = 0;
  ~Totals() {
    if (std::getenv("CONSOLE_DATA_FUZZ_STATS") == nullptr) return;
    std::fprintf(
        stderr,
        "console_data_fuzz: %llu inputs; bytes to guest %llu, from guest %llu, to host "
        "%llu, discarded %llu, dropped %llu; NEEDS_RESET in %llu; most held: %llu tx "
        "chains, %llu rx buffers\n",
        static_cast<unsigned long long>(inputs), static_cast<unsigned long long>(to_guest),
        static_cast<unsigned long long>(from_guest), static_cast<unsigned long long>(to_host),
        static_cast<unsigned long long>(discarded), static_cast<unsigned long long>(dropped),
        static_cast<unsigned long long>(needs_reset), static_cast<unsigned long long>(max_tx_held),
        static_cast<unsigned long long>(max_rx_held));
  }
} g_totals;

constexpr uint64_t kLowEnd = layout::kMmioHoleStart;
constexpr uint64_t kHighRam = 2ull << 20;
constexpr uint64_t kHighStart = layout::kHighRamStart;
constexpr uint64_t kBufferArea = 0x1000000;  // buffers; the fake driver's rings live below

// PROT_NONE pages right after the end of guest RAM (where free), so a host access that runs
// past the last region faults like one into the hole does, instead of landing in whatever the
// host mapped there.
class EndGuard {
 public:
  explicit EndGuard(const GuestMemory& memory) {
    const MemoryRegion& last = memory.regions().back();
    void* end = static_cast<uint8_t*>(memory.host_address_of_region(last)) + last.size;
    void* p = ::mmap(end, kSize, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == end)
      guard_ = p;
    else if (p != MAP_FAILED)
      ::munmap(p, kSize);  // kernels without MAP_FIXED_NOREPLACE
  }
  ~EndGuard() {
    if (guard_ != nullptr) ::munmap(guard_, kSize);
  }
  EndGuard(const EndGuard&) = delete;
  EndGuard& operator=(const EndGuard&) = delete;

 private:
  static constexpr size_t kSize = 1ull << 30;
  void* guard_ = nullptr;
};

// A port as the host side knows it: its backend's state and what was sent through it.
struct HostPort {
  std::shared_ptr<FakePortBackend::State> state;
  uint64_t sent = 0;           // bytes the peer sent
  uint64_t emergency = 0;      // emergency writes that went to this port (port 0)
  uint64_t rx_used_bytes = 0;  // used lengths seen on its rx queue
  uint64_t output_seen = 0;    // bytes the peer received
};

class Harness {
 public:
  explicit Harness(FuzzedDataProvider& in)
      : in_(in), guest_(kLowEnd + kHighRam), end_guard_(guest_.memory()) {
    for (const auto& r : guest_.memory().regions())
      ::madvise(guest_.memory().host_address_of_region(r), r.size, MADV_NOHUGEPAGE);
    options_.max_ports = in_.ConsumeIntegralInRange<uint32_t>(1, 4);
    options_.queue_size = 8;
    options_.control_queue_size = 8;
    options_.console_ring_bytes = in_.ConsumeIntegralInRange<size_t>(0, 64);
    ports_.resize(options_.max_ports);
    std::vector<console::PortConfig> configs;
    const uint32_t n = in_.ConsumeIntegralInRange<uint32_t>(1, options_.max_ports);
    for (uint32_t i = 0; i < n; ++i) configs.push_back(make_port(i, i == 0 || in_.ConsumeBool()));
    device_ = std::make_unique<console::ConsoleDevice>(loop_, options_, std::move(configs));
    transport_ = std::make_unique<FakeTransport>(guest_, *device_);
    features_ = in_.ConsumeIntegral<uint8_t>();
    start();
  }

  ~Harness() {
    ++g_totals.inputs;
    g_totals.needs_reset += queue_failed_ || transport_->needs_reset();
    for (const auto& s : device_->port_stats()) {
      g_totals.to_guest += s.bytes_to_guest;
      g_totals.from_guest += s.bytes_from_guest;
      g_totals.to_host += s.bytes_to_host;
      g_totals.discarded += s.bytes_discarded;
      g_totals.dropped += s.console_bytes_dropped;
    }
    transport_->reset();
    transport_.reset();
    device_.reset();
    loop_.post([this] { loop_.stop(); });
    loop_.run();
  }

  void step() {
    const int op = in_.ConsumeIntegralInRange<int>(0, 15);
    switch (op) {
      case 0:
        control_tx();
        break;
      case 1:
        control_rx();
        break;
      case 2:
      case 3:
      case 4:
        data_chain();
        break;
      case 5:
        ring_edit();
        break;
      case 6:
        notify(pick_queue());
        break;
      case 7:
        backend_event();
        break;
      case 8:
        io_round();
        break;
      case 9:
        reset();
        break;
      case 10:
        hot_plug();
        break;
      case 11: {
        const uint8_t byte = in_.ConsumeIntegral<uint8_t>();
        const uint64_t offset = in_.ConsumeIntegralInRange<uint64_t>(0, 12);
        if (offset == 8 && ports_[0].state) ports_[0].emergency += 1;  // emerg_wr: to port 0
        device_->write_config(offset, std::span(&byte, 1));
        break;
      }
      case 12:
        try {
          device_->resize(pick_port(), in_.ConsumeIntegral<uint16_t>(),
                          in_.ConsumeIntegral<uint16_t>());
        } catch (const Error&) {
        }
        break;
      case 13:
        collect_used();
        break;
      case 14:
        bring_up();
        break;
      case 15:
        data_chain();
        break;
    }
    check();
  }

  void check() {
    collect_used();
    for (size_t q = 0; q < device_->num_queues(); ++q) {
      Queue& queue = transport_->queue(q);
      if (queue.ready() && queue.in_flight() > queue.size())
        fail("queue " + std::to_string(q) + " has " + std::to_string(queue.in_flight()) +
             " chains in flight, size " + std::to_string(queue.size()));
    }
    const auto stats = device_->stats();
    if (stats.control_pending > 6u * options_.max_ports)
      fail("control queue holds " + std::to_string(stats.control_pending));
    for (uint32_t id = 0; id < ports_.size(); ++id) {
      HostPort& h = ports_[id];
      if (!h.state) continue;
      const auto s = device_->port_stats(id);
      if (!s) fail("port " + std::to_string(id) + " has no stats");
      g_totals.max_tx_held = std::max<uint64_t>(g_totals.max_tx_held, s->tx_chains_held);
      g_totals.max_rx_held = std::max<uint64_t>(g_totals.max_rx_held, s->rx_buffers_held);
      if (s->tx_chains_held > options_.queue_size || s->rx_buffers_held > options_.queue_size)
        fail("port " + std::to_string(id) + " holds " + std::to_string(s->tx_chains_held) +
             " tx chains, " + std::to_string(s->rx_buffers_held) + " rx buffers");
      h.output_seen += h.state->take_output().size();
      const std::string where = "port " + std::to_string(id) + ": ";
      if (h.output_seen != s->bytes_to_host - s->bytes_lost)
        fail(where + "the peer got " + std::to_string(h.output_seen) + " bytes, bytes_to_host " +
             std::to_string(s->bytes_to_host));
      const uint64_t taken = s->bytes_from_guest + h.emergency;
      const uint64_t accounted =
          s->bytes_to_host + s->bytes_buffered + s->console_bytes_dropped + s->bytes_discarded;
      if (taken != accounted)
        fail(where + "taken from the guest " + std::to_string(taken) + " but accounted " +
             std::to_string(accounted) + " (to host " + std::to_string(s->bytes_to_host) +
             ", buffered " + std::to_string(s->bytes_buffered) + ", dropped " +
             std::to_string(s->console_bytes_dropped) + ", discarded " +
             std::to_string(s->bytes_discarded) + ")");
      const uint64_t read_from_host = h.sent - h.state->input.size();
      if (read_from_host != s->bytes_to_guest)
        fail(where + "read " + std::to_string(read_from_host) + " bytes from the peer, " +
             std::to_string(s->bytes_to_guest) + " placed in guest buffers");
      if (!queue_failed_ && h.rx_used_bytes != s->bytes_to_guest)
        fail(where + "rx used lengths add up to " + std::to_string(h.rx_used_bytes) +
             ", bytes_to_guest " + std::to_string(s->bytes_to_guest));
    }
  }

 private:
  console::PortConfig make_port(uint32_t id, bool console) {
    auto [backend, state] = make_fake_backend(in_.ConsumeBool());
    console::PortConfig c;
    c.console = console;
    if (in_.ConsumeBool()) c.name = "p" + std::to_string(id);
    c.backend = std::move(backend);
    c.id = id;
    // A peer that reads like a socket: a buffer's worth at a time (the fake's default takes
    // everything at once, which for a 2 GiB guest buffer means 2 GiB of host memory).
    state->write_budget = 4096;
    ports_[id] = HostPort{};
    ports_[id].state = state;
    return c;
  }

  void start() {
    uint64_t want = 0;
    if (features_ & 1) want |= console::kFeatureMultiport;
    if (features_ & 2) want |= console::kFeatureSize;
    if (features_ & 4) want |= console::kFeatureEmergWrite;
    if (features_ & 8) want |= kFeatureRingEventIdx;
    if (features_ & 16) want |= kFeatureRingIndirectDesc;
    transport_->negotiate(want | (features_ & 32 ? 0 : console::kFeatureMultiport));
    static constexpr uint16_t kSizes[] = {0, 2, 4, 8};
    transport_->start(kSizes[(features_ >> 6) & 3]);
    used_seen_.assign(device_->num_queues(), 0);
    cursor_.assign(device_->num_queues(), 0);
    queue_failed_ = false;
    for (auto& h : ports_) h.rx_used_bytes = 0;
    // Bytes placed before this start were counted against the old rings.
    for (uint32_t id = 0; id < ports_.size(); ++id) {
      if (auto s = ports_[id].state ? device_->port_stats(id) : std::nullopt)
        ports_[id].rx_used_bytes = s->bytes_to_guest;
    }
  }

  uint32_t pick_port() { return in_.ConsumeIntegralInRange<uint32_t>(0, options_.max_ports - 1); }
  uint16_t pick_queue() {
    return in_.ConsumeIntegralInRange<uint16_t>(0,
                                                static_cast<uint16_t>(device_->num_queues() - 1));
  }
  bool is_control(uint16_t q) const { return q == 2 || q == 3; }
  // The port of data queue q, and whether it is that port's rx queue.
  static uint32_t port_of(uint16_t q) { return q < 2 ? 0 : (q - 2) / 2; }
  static bool is_rx(uint16_t q) { return q % 2 == 0; }

  void notify(uint16_t q) {
    TRACE("notify %u", q);
    transport_->notify(q);
  }

  // A control message from the guest, on control tx (a well-formed chain: the fake driver's
  // bookkeeping owns the control queues).
  void control_tx() {
    struct {
      uint32_t id;
      uint16_t event, value;
    } m{};
    switch (in_.ConsumeIntegralInRange<int>(0, 4)) {
      case 0:
        m = {0xffffffffu, 0, 1};  // DEVICE_READY
        break;
      case 1:
        m = {pick_port(), 3, 1};  // PORT_READY
        break;
      case 2:
        m = {pick_port(), 6, static_cast<uint16_t>(in_.ConsumeBool())};  // PORT_OPEN
        break;
      default:
        m.id = in_.ConsumeBool() ? pick_port() : in_.ConsumeIntegral<uint32_t>();
        m.event = in_.ConsumeIntegral<uint16_t>() % 10;
        m.value = in_.ConsumeIntegral<uint16_t>() % 3;
        break;
    }
    TRACE("control id %u event %u value %u", m.id, m.event, m.value);
    auto bytes = std::span(reinterpret_cast<const uint8_t*>(&m), sizeof(m));
    if (in_.ConsumeIntegralInRange<int>(0, 7) == 0)
      bytes = bytes.first(in_.ConsumeIntegralInRange<size_t>(1, 8));
    if (!transport_->driver(3).chain().readable(bytes).build()) return;
    notify(3);
  }

  // What Linux does to open a port: DEVICE_READY, PORT_READY, PORT_OPEN(1), with control-rx
  // buffers for the device's answers.
  void bring_up() {
    struct Message {
      uint32_t id;
      uint16_t event, value;
    };
    const uint32_t id = pick_port();
    for (const Message m : {Message{0xffffffffu, 0, 1}, Message{id, 3, 1}, Message{id, 6, 1}}) {
      // Control-rx buffers for the device's answers (PORT_ADD, PORT_NAME, CONSOLE_PORT, ...).
      while (transport_->driver(2).chain().writable(64).build()) {
      }
      notify(2);
      collect_used();
      TRACE("control id %u event %u value %u", m.id, m.event, m.value);
      if (!transport_->driver(3)
               .chain()
               .readable(std::span(reinterpret_cast<const uint8_t*>(&m), sizeof(m)))
               .build())
        return;
      notify(3);
      collect_used();
    }
  }

  void control_rx() {
    const uint32_t len = in_.ConsumeIntegralInRange<uint32_t>(1, 80);
    if (!transport_->driver(2).chain().writable(len).build()) return;
    notify(2);
  }

  uint64_t steer_address() {
    const uint64_t v = in_.ConsumeIntegral<uint32_t>();
    switch (in_.ConsumeIntegralInRange<int>(0, 7)) {
      case 0:
      case 1:
      case 2:
      case 3:
        return kBufferArea + v % 0x100000;
      case 4:
        return kLowEnd - v % 128;  // straddling the hole
      case 5:
        return kHighStart + v % (kHighRam + 128);  // above 4 GiB, and past its end
      case 6:
        return kLowEnd + v;  // in the hole
      default:
        return in_.ConsumeIntegral<uint64_t>();
    }
  }

  uint32_t steer_length() {
    switch (in_.ConsumeIntegralInRange<int>(0, 3)) {
      case 0:
      case 1:
        return in_.ConsumeIntegralInRange<uint32_t>(1, 64);
      case 2:
        return in_.ConsumeIntegralInRange<uint32_t>(0, 4096);
      default:
        return in_.ConsumeIntegral<uint32_t>();
    }
  }

  // A chain on a data queue written straight into the descriptor table: a few descriptors,
  // mostly in the direction the queue wants, linked in order unless the fuzzer says otherwise.
  void data_chain() {
    uint16_t q = pick_queue();
    if (is_control(q)) q = static_cast<uint16_t>(q - 2);  // port 0's queues instead
    FakeQueueDriver& d = transport_->driver(q);
    const uint16_t size = d.size();
    const uint16_t want_flags = is_rx(q) ? kDescFlagWrite : 0;
    // Most chains are what a driver posts (so data flows and the device holds them); one in
    // four is hostile in every field.
    const bool hostile = in_.ConsumeIntegralInRange<int>(0, 3) == 0;
    const int n = in_.ConsumeIntegralInRange<int>(1, hostile ? 4 : 2);
    std::vector<uint16_t> slots;
    for (int i = 0; i < n; ++i) {
      slots.push_back(hostile && in_.ConsumeIntegralInRange<int>(0, 3) == 0
                          ? in_.ConsumeIntegralInRange<uint16_t>(0, size - 1)
                          : static_cast<uint16_t>(cursor_[q]++ % size));
    }
    for (int i = 0; i < n; ++i) {
      RawDescriptor desc;
      if (!hostile) {
        desc.addr = kBufferArea + (cursor_[q] * 0x100ull + q * 0x10000ull) % 0x100000;
        desc.len = in_.ConsumeIntegralInRange<uint32_t>(1, 64);
        desc.flags = want_flags;
        if (i + 1 < n) {
          desc.flags |= kDescFlagNext;
          desc.next = slots[i + 1];
        }
        ++cursor_[q];
        d.write_descriptor(slots[i], desc);
        continue;
      }
      desc.addr = steer_address();
      desc.len = steer_length();
      desc.flags = in_.ConsumeIntegralInRange<int>(0, 5) == 0
                       ? static_cast<uint16_t>(in_.ConsumeIntegral<uint8_t>() & 7)
                       : want_flags;
      if (i + 1 < n) {
        desc.flags |= kDescFlagNext;
        desc.next = slots[i + 1];
      } else {
        desc.flags &= static_cast<uint16_t>(~kDescFlagNext);
      }
      if (in_.ConsumeIntegralInRange<int>(0, 9) == 0) desc.next = in_.ConsumeIntegral<uint16_t>();
      if (desc.flags & kDescFlagIndirect) {
        // An indirect table of 1-4 entries in the buffer area.
        const uint64_t table = kBufferArea + 0x100000 + (in_.ConsumeIntegral<uint8_t>() * 0x40ull);
        const uint32_t entries = in_.ConsumeIntegralInRange<uint32_t>(1, 4);
        for (uint32_t e = 0; e < entries; ++e) {
          RawDescriptor t;
          t.addr = steer_address();
          t.len = steer_length();
          t.flags = want_flags | (e + 1 < entries ? kDescFlagNext : 0);
          t.next = static_cast<uint16_t>(e + 1);
          if (in_.ConsumeIntegralInRange<int>(0, 7) == 0)
            t.flags = static_cast<uint16_t>(in_.ConsumeIntegral<uint8_t>() & 7);
          guest_.write_obj(table + 16 * e, t);
        }
        desc.addr = table;
        desc.len = in_.ConsumeIntegralInRange<int>(0, 5) == 0 ? steer_length() : 16 * entries;
      }
      d.write_descriptor(slots[i], desc);
    }
    TRACE("chain of %d on queue %u, head %u", n, q, slots[0]);
    d.expose_raw(slots[0]);
    if (in_.ConsumeIntegralInRange<int>(0, 3) != 0) notify(q);
  }

  // Raw ring edits: avail.idx anywhere, avail entries, flags and event indices.
  void ring_edit() {
    uint16_t q = pick_queue();
    if (is_control(q)) q = static_cast<uint16_t>(q - 2);
    FakeQueueDriver& d = transport_->driver(q);
    switch (in_.ConsumeIntegralInRange<int>(0, 4)) {
      case 0:
        d.set_avail_idx(in_.ConsumeBool() ? in_.ConsumeIntegral<uint16_t>()
                                          : static_cast<uint16_t>(d.avail_idx() +
                                                                  in_.ConsumeIntegral<uint8_t>()));
        break;
      case 1:
        d.set_avail_entry(in_.ConsumeIntegral<uint16_t>(), in_.ConsumeIntegral<uint16_t>());
        break;
      case 2:
        d.set_avail_flags(in_.ConsumeIntegral<uint8_t>() & 1);
        break;
      case 3:
        d.set_used_event(in_.ConsumeIntegral<uint16_t>());
        break;
      default:
        // Re-post a head that may be in flight (the flood of issue 13).
        for (int i = in_.ConsumeIntegralInRange<int>(1, 32); i > 0; --i)
          d.expose_raw(static_cast<uint16_t>(in_.ConsumeIntegral<uint8_t>() % d.size()));
        break;
    }
    if (in_.ConsumeBool()) notify(q);
  }

  void backend_event() {
    const uint32_t id = pick_port();
    HostPort& h = ports_[id];
    if (!h.state || h.state->stopped) return;
    switch (in_.ConsumeIntegralInRange<int>(0, 7)) {
      case 0:
        TRACE("port %u: peer connects", id);
        h.state->connect();
        break;
      case 1:
        TRACE("port %u: peer leaves", id);
        h.state->disconnect();
        break;
      case 2:
      case 3: {
        const std::string bytes =
            in_.ConsumeBytesAsString(in_.ConsumeIntegralInRange<size_t>(0, 200));
        TRACE("port %u: peer sends %zu bytes", id, bytes.size());
        h.sent += bytes.size();
        h.state->send(bytes);
        break;
      }
      case 4:
        h.state->write_budget = in_.ConsumeIntegralInRange<size_t>(0, 16);
        break;
      case 5:
        h.state->make_room(in_.ConsumeIntegralInRange<size_t>(0, 300));
        break;
      case 6:
        h.state->hang_up_in_next_readv = true;
        break;
      default:
        h.state->max_read = in_.ConsumeBool() ? SIZE_MAX : in_.ConsumeIntegralInRange<size_t>(1, 8);
        break;
    }
  }

  // The I/O thread's other work: the device's posted continuations and emergency flushes, and
  // the notifications it asked to have re-delivered.
  void io_round() {
    TRACE("I/O round");
    int rounds = 0;
    loop_.post([] {});
    loop_.run_until([&] { return rounds++ > 0; },
                    std::chrono::steady_clock::now() + std::chrono::seconds(5));
    transport_->run_notify_again();
  }

  void reset() {
    collect_used();
    TRACE("driver reset");
    transport_->reset();
    if (in_.ConsumeBool()) features_ = in_.ConsumeIntegral<uint8_t>();
    start();
  }

  void hot_plug() {
    const uint32_t id = pick_port();
    collect_used();
    if (in_.ConsumeBool()) {
      TRACE("remove port %u", id);
      try {
        device_->remove_port(id);
        ports_[id] = HostPort{};
      } catch (const Error&) {
      }
    } else {
      if (ports_[id].state) return;
      TRACE("add port %u", id);
      HostPort saved = ports_[id];
      console::PortConfig c = make_port(id, in_.ConsumeBool());
      try {
        device_->add_port(std::move(c));
        // Used lengths seen on this id's rx queue from now on belong to the new port.
        ports_[id].rx_used_bytes = 0;
      } catch (const Error&) {
        ports_[id] = saved;
      }
    }
  }

  // Reads every new used entry of the data queues (the control queues belong to the fake
  // driver; their used entries are taken here too, to keep their descriptors flowing).
  void collect_used() {
    if (transport_->needs_reset()) queue_failed_ = true;
    for (uint16_t q = 0; q < device_->num_queues(); ++q) {
      FakeQueueDriver& d = transport_->driver(q);
      if (is_control(q)) {
        try {
          d.get_all_used();
        } catch (const std::runtime_error& e) {
          fail(std::string("control queue: ") + e.what());
        }
        continue;
      }
      const uint16_t used = d.used_idx();
      if (static_cast<uint16_t>(used - used_seen_[q]) > d.size())
        fail("used.idx of queue " + std::to_string(q) + " moved " +
             std::to_string(static_cast<uint16_t>(used - used_seen_[q])) + " entries at once");
      while (used_seen_[q] != used) {
        const uint64_t elem = d.layout().used + 4 + 8ull * (used_seen_[q] % d.size());
        const auto id = guest_.read_obj<uint32_t>(elem);
        const auto len = guest_.read_obj<uint32_t>(elem + 4);
        if (id >= d.size())
          fail("used id " + std::to_string(id) + " on queue " + std::to_string(q));
        if (is_rx(q) && ports_[port_of(q)].state) ports_[port_of(q)].rx_used_bytes += len;
        ++used_seen_[q];
      }
    }
  }

  FuzzedDataProvider& in_;
  FakeGuest guest_;
  EndGuard end_guard_;
  EventLoop loop_;
  console::ConsoleOptions options_;
  std::vector<HostPort> ports_;
  std::unique_ptr<console::ConsoleDevice> device_;
  std::unique_ptr<FakeTransport> transport_;
  uint8_t features_ = 0;
  std::vector<uint16_t> used_seen_;
  std::vector<uint16_t> cursor_;
  bool queue_failed_ = false;
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  log::set_level(g_trace ? log::Level::kDebug : log::Level::kError);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  Harness h(in);
  h.check();
  for (int ops = 0; ops < 400 && in.remaining_bytes() > 0; ++ops) h.step();
  return 0;
}
