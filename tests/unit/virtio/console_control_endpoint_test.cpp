// console::ControlEndpoint on its own (virtio/console/control_endpoint.hpp): the control message
// state machine over the two control queues on fake guest memory, with real Ports on fake
// backends and a FakeLink in place of the device. The driver's side is played message by
// message (no model of Linux here: the whole device against one is console_device_test.cpp).
#include "virtio/console/control_endpoint.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include "unit/virtio/console_fake_link.hpp"

namespace pier::virtio::testing {
namespace {

using console::ControlEvent;
using console::kControlRxQueue;
using console::kControlTxQueue;

// A message as the guest found it in a control receive buffer: "EVENT id value[ payload]".
std::string describe(const UsedBuffer& u) {
  if (u.written.size() < 8) return "short(" + std::to_string(u.written.size()) + ")";
  uint32_t id;
  uint16_t event, value;
  std::memcpy(&id, u.written.data(), 4);
  std::memcpy(&event, u.written.data() + 4, 2);
  std::memcpy(&value, u.written.data() + 6, 2);
  std::string s = std::string(to_string(static_cast<ControlEvent>(event))) + " " +
                  std::to_string(id) + " " + std::to_string(value);
  if (event == static_cast<uint16_t>(ControlEvent::kResize) && u.written.size() == 12) {
    uint16_t a, b;
    std::memcpy(&a, u.written.data() + 8, 2);
    std::memcpy(&b, u.written.data() + 10, 2);
    s += " " + std::to_string(a) + "," + std::to_string(b);
  } else if (u.written.size() > 8) {
    s += " " + std::string(u.written.begin() + 8, u.written.end());
  }
  return s;
}

struct EndpointHarness : PartHarness {
  explicit EndpointHarness(uint64_t features = kQueueFeatures | console::kFeatureSize,
                           console::ResizeLayout layout = console::ResizeLayout::kRowsCols)
      : control(link, 4, layout) {
    control.set_features(features);
    control.activate(true);
  }

  // The driver posts `count` control receive buffers of `size` bytes.
  void post(size_t count, uint32_t size = 4096) {
    auto& d = link.driver(kControlRxQueue);
    for (size_t i = 0; i < count; ++i) ASSERT_TRUE(d.chain().writable(size).build());
    control.deliver();  // the driver's kick
  }
  // The driver sends raw bytes on the control transmitq.
  void send_raw(std::span<const uint8_t> bytes) {
    ASSERT_TRUE(link.driver(kControlTxQueue).chain().readable(bytes).build());
    control.receive();  // the driver's kick
    EXPECT_EQ(link.driver(kControlTxQueue).get_all_used().size(), 1u) << "not completed at once";
  }
  void send(uint32_t id, ControlEvent event, uint16_t value) {
    send_raw(control_header(id, static_cast<uint16_t>(event), value));
  }
  // Every message delivered since the last call.
  std::vector<std::string> received() {
    std::vector<std::string> out;
    for (const auto& u : link.driver(kControlRxQueue).get_all_used()) out.push_back(describe(u));
    return out;
  }
  // Posts one buffer at a time until nothing is pending, so no spare buffer is left.
  void drain() {
    while (control.pending() > 0) post(1);
  }
  // DEVICE_READY, then PORT_READY for every port, each answer delivered; no spare buffers.
  void handshake() {
    send(console::kBadId, ControlEvent::kDeviceReady, 1);
    drain();
    for (auto& [id, p] : link.ports) {
      send(id, ControlEvent::kPortReady, 1);
      drain();
    }
  }

  console::ControlEndpoint control;
};

using Messages = std::vector<std::string>;

TEST(ControlEndpoint, DeviceReadyAnnouncesEveryPortInIdOrder) {
  EndpointHarness h;
  h.add_port(2, "two");
  h.add_port(0, "", true);
  h.add_port(1, "one");
  h.post(8);
  h.send(console::kBadId, ControlEvent::kDeviceReady, 1);
  EXPECT_TRUE(h.control.driver_ready());
  EXPECT_EQ(h.received(), (Messages{"PORT_ADD 0 1", "PORT_ADD 1 1", "PORT_ADD 2 1"}));
  EXPECT_EQ(h.control.delivered(), 3u);
  EXPECT_EQ(h.control.received(), 1u);
}

// ---------------------------------------------------------------------------------------------
// The answer to PORT_READY, per kind of port.

struct ReadyCase {
  const char* name;
  bool console;
  std::string port_name;
  bool host_connected;
  uint16_t cols, rows;
  uint64_t features;
  Messages answer;
};
void PrintTo(const ReadyCase& c, std::ostream* os) {
  *os << c.name;
}

class ControlEndpointAnswers : public ::testing::TestWithParam<ReadyCase> {};

TEST_P(ControlEndpointAnswers, PortReadyGetsQemusOrder) {
  const ReadyCase& c = GetParam();
  EndpointHarness h(c.features);
  h.add_port(1, c.port_name, c.console, c.host_connected);
  h.port(1).set_size(c.cols, c.rows);
  h.post(8);
  h.send(console::kBadId, ControlEvent::kDeviceReady, 1);
  ASSERT_EQ(h.received(), Messages{"PORT_ADD 1 1"});
  h.send(1, ControlEvent::kPortReady, 1);
  EXPECT_EQ(h.received(), c.answer);
  EXPECT_TRUE(h.port(1).guest_ready());
  EXPECT_FALSE(h.port(1).guest_connected());
  EXPECT_EQ(h.port(1).announced_host(), c.host_connected);
}

constexpr uint64_t kWithSize = kQueueFeatures | console::kFeatureSize;
INSTANTIATE_TEST_SUITE_P(
    ControlEndpoint, ControlEndpointAnswers,
    ::testing::Values(
        ReadyCase{"NamedConnected",
                  false,
                  "org.pier.a",
                  true,
                  0,
                  0,
                  kWithSize,
                  {"PORT_NAME 1 1 org.pier.a", "PORT_OPEN 1 1"}},
        ReadyCase{"NamedDisconnected",
                  false,
                  "org.pier.a",
                  false,
                  0,
                  0,
                  kWithSize,
                  {"PORT_NAME 1 1 org.pier.a"}},
        ReadyCase{"Unnamed", false, "", true, 0, 0, kWithSize, {"PORT_OPEN 1 1"}},
        ReadyCase{"ConsoleWithSize",
                  true,
                  "",
                  true,
                  80,
                  24,
                  kWithSize,
                  {"CONSOLE_PORT 1 1", "PORT_OPEN 1 1", "RESIZE 1 0 24,80"}},
        ReadyCase{"NamedConsoleWithoutFSize",
                  true,
                  "c",
                  false,
                  80,
                  24,
                  kQueueFeatures,
                  {"CONSOLE_PORT 1 1", "PORT_NAME 1 1 c"}},
        ReadyCase{"ConsoleSizeUnknown", true, "", false, 0, 0, kWithSize, {"CONSOLE_PORT 1 1"}}),
    [](const auto& info) { return std::string(info.param.name); });

// ---------------------------------------------------------------------------------------------
// Driver messages that are ignored (counted, logged once per kind), with nothing sent and no
// port changed.

struct IgnoredCase {
  const char* name;
  std::vector<uint8_t> bytes;
  bool after_device_ready;  // DEVICE_READY (and PORT_ADD delivered) first
  bool after_port_ready;    // PORT_READY(1) for port 1 first
};
void PrintTo(const IgnoredCase& c, std::ostream* os) {
  *os << c.name;
}

class ControlEndpointIgnores : public ::testing::TestWithParam<IgnoredCase> {};

TEST_P(ControlEndpointIgnores, NonsenseIsCountedAndChangesNothing) {
  const IgnoredCase& c = GetParam();
  EndpointHarness h;
  h.add_port(1, "org.pier.a");
  h.post(16);
  if (c.after_device_ready) h.send(console::kBadId, ControlEvent::kDeviceReady, 1);
  if (c.after_port_ready) h.send(1, ControlEvent::kPortReady, 1);
  h.received();
  const uint64_t ignored = h.control.ignored();
  const auto before = h.port(1).stats();
  h.send_raw(c.bytes);
  EXPECT_EQ(h.control.ignored(), ignored + 1);
  EXPECT_EQ(h.received(), Messages{});
  EXPECT_EQ(h.control.pending(), 0u);
  const auto after = h.port(1).stats();
  EXPECT_EQ(after.guest_ready, before.guest_ready);
  EXPECT_EQ(after.guest_connected, before.guest_connected);
}

INSTANTIATE_TEST_SUITE_P(
    ControlEndpoint, ControlEndpointIgnores,
    ::testing::Values(
        IgnoredCase{"Short", {1, 0, 0, 0}, true, true},
        IgnoredCase{"UnknownEvent", control_header(1, 99, 1), true, true},
        IgnoredCase{"HostOnlyEvent", control_header(1, 1, 1), true, true},
        IgnoredCase{"BadValue", control_header(1, 6, 7), true, true},
        IgnoredCase{"IdBeyondMaxPorts", control_header(999, 6, 1), true, true},
        IgnoredCase{"NoSuchPort", control_header(3, 6, 1), true, true},
        IgnoredCase{"DeviceReadyZero", control_header(console::kBadId, 0, 0), false, false},
        IgnoredCase{"RepeatedDeviceReady", control_header(console::kBadId, 0, 1), true, false},
        IgnoredCase{"PortOpenBeforePortReady", control_header(1, 6, 1), true, false}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(ControlEndpoint, RepeatedPortReadyIsAnsweredOncePerWait) {
  EndpointHarness h;
  h.add_port(1, "org.pier.a");
  h.post(1);
  h.send(console::kBadId, ControlEvent::kDeviceReady, 1);
  h.send(1, ControlEvent::kPortReady, 1);  // the answer waits: no buffer
  EXPECT_EQ(h.control.pending(), 2u);
  const uint64_t ignored = h.control.ignored();
  for (int i = 0; i < 100; ++i) h.send(1, ControlEvent::kPortReady, 1);
  EXPECT_EQ(h.control.pending(), 2u);
  EXPECT_EQ(h.control.ignored(), ignored + 100);
  h.post(8);
  EXPECT_EQ(h.received(), (Messages{"PORT_ADD 1 1", "PORT_NAME 1 1 org.pier.a", "PORT_OPEN 1 1"}));
}

TEST(ControlEndpoint, PortReadyBeforeItsPortAddReachedTheGuestIsIgnored) {
  EndpointHarness h;
  h.add_port(1, "org.pier.a");
  h.send(console::kBadId, ControlEvent::kDeviceReady, 1);  // PORT_ADD waits: no buffer
  h.send(1, ControlEvent::kPortReady, 1);
  EXPECT_FALSE(h.port(1).guest_ready());
  EXPECT_EQ(h.control.ignored(), 1u);
  h.post(4);
  EXPECT_EQ(h.received(), Messages{"PORT_ADD 1 1"});
}

// ---------------------------------------------------------------------------------------------
// PORT_OPEN from the guest.

TEST(ControlEndpoint, GuestOpenAndCloseMoveThePortsInput) {
  EndpointHarness h;
  auto peer = h.add_port(1, "org.pier.a");
  h.handshake();
  h.received();
  h.post_rx(1, 2, 64);
  peer->input = "held by the host";
  h.send(1, ControlEvent::kPortOpen, 1);
  EXPECT_TRUE(h.port(1).guest_connected());
  EXPECT_EQ(h.take_rx(1), "held by the host");
  h.send(1, ControlEvent::kPortOpen, 0);
  EXPECT_FALSE(h.port(1).guest_connected());
  EXPECT_EQ(h.port(1).rx_wait(), console::FlowWait::kGuestClosed);
  EXPECT_EQ(h.link.events, (Messages{"guest-opened 1", "guest-closed 1"}));
}

TEST(ControlEndpoint, PortReadyZeroTakesThePortFromTheGuest) {
  EndpointHarness h;
  h.add_port(1, "org.pier.a");
  h.handshake();
  h.send(1, ControlEvent::kPortOpen, 1);
  h.send(1, ControlEvent::kPortReady, 0);
  EXPECT_FALSE(h.port(1).guest_ready());
  EXPECT_FALSE(h.port(1).guest_connected());
}

// ---------------------------------------------------------------------------------------------
// The host-side queue stays bounded: newer states replace undelivered ones.

TEST(ControlEndpoint, HostFlappingLeavesAtMostOnePortOpen) {
  EndpointHarness h;
  auto peer = h.add_port(1, "org.pier.a", false, false);
  h.handshake();
  EXPECT_EQ(h.received(), (Messages{"PORT_ADD 1 1", "PORT_NAME 1 1 org.pier.a"}));
  // The guest takes no control buffers now; a client connects and leaves 1001 times.
  for (int i = 0; i < 1001; ++i) {
    peer->connected = !peer->connected;
    h.port(1).host_changed(peer->connected);
    h.control.host_changed(h.port(1));
    EXPECT_LE(h.control.pending(), 1u);
  }
  h.post(4);
  EXPECT_EQ(h.received(), Messages{"PORT_OPEN 1 1"});
  EXPECT_TRUE(h.port(1).announced_host());
}

struct ResizeCase {
  const char* name;
  console::ResizeLayout layout;
  std::string expected;
};
void PrintTo(const ResizeCase& c, std::ostream* os) {
  *os << c.name;
}

class ControlEndpointResize : public ::testing::TestWithParam<ResizeCase> {};

TEST_P(ControlEndpointResize, CoalescesToTheNewestSizeInTheGuestsLayout) {
  EndpointHarness h(kWithSize, GetParam().layout);
  h.add_port(0, "", true);
  h.handshake();
  h.received();
  // The guest takes no control buffers now: a hundred sizes leave one message.
  for (uint16_t c = 1; c <= 100; ++c) {
    h.port(0).set_size(c, static_cast<uint16_t>(c + 100));
    h.control.size_changed(h.port(0));
  }
  EXPECT_EQ(h.control.pending(), 1u);
  h.post(4);
  EXPECT_EQ(h.received(), Messages{GetParam().expected});
}

INSTANTIATE_TEST_SUITE_P(
    ControlEndpoint, ControlEndpointResize,
    ::testing::Values(
        ResizeCase{"RowsFirstLinux61", console::ResizeLayout::kRowsCols, "RESIZE 0 0 200,100"},
        ResizeCase{"ColsFirstSpec", console::ResizeLayout::kColsRows, "RESIZE 0 0 100,200"}),
    [](const auto& info) { return std::string(info.param.name); });

// ---------------------------------------------------------------------------------------------
// Buffers.

TEST(ControlEndpoint, OneMessagePerBufferAndShortBuffersAreKept) {
  EndpointHarness h;
  h.add_port(0, "", true);
  h.add_port(1, "org.pier.a");
  h.post(1, 4);   // too short for a header: kept unused, never returned
  h.post(1, 20);  // room for one message only
  h.send(console::kBadId, ControlEvent::kDeviceReady, 1);
  h.send(0, ControlEvent::kPortReady, 1);
  h.post(8);
  h.send(1, ControlEvent::kPortReady, 1);
  EXPECT_EQ(h.received(), (Messages{"PORT_ADD 0 1", "PORT_ADD 1 1", "CONSOLE_PORT 0 1",
                                    "PORT_OPEN 0 1", "PORT_NAME 1 1 org.pier.a", "PORT_OPEN 1 1"}));
  // Ten buffers posted, six used (one message each): the 4-byte one is still held, three of
  // the 4 KiB ones wait for more.
  EXPECT_EQ(h.link.driver(kControlRxQueue).num_outstanding(), 4u);
}

TEST(ControlEndpoint, NameLongerThanTheBufferIsCut) {
  EndpointHarness h;
  h.add_port(1, "org.pier.a.long.name");
  h.post(2, 16);
  h.send(console::kBadId, ControlEvent::kDeviceReady, 1);
  h.send(1, ControlEvent::kPortReady, 1);
  EXPECT_EQ(h.received(), (Messages{"PORT_ADD 1 1", "PORT_NAME 1 1 org.pier"}));
}

// ---------------------------------------------------------------------------------------------
// Hot-plug and restore.

struct RemoveCase {
  const char* name;
  size_t buffers_before_remove;  // 0: PORT_ADD still waiting on the host
  Messages after_remove;
};
void PrintTo(const RemoveCase& c, std::ostream* os) {
  *os << c.name;
}

class ControlEndpointRemove : public ::testing::TestWithParam<RemoveCase> {};

TEST_P(ControlEndpointRemove, RemoveTellsTheGuestOnlyWhatItMayKnow) {
  const RemoveCase& c = GetParam();
  EndpointHarness h;
  h.send(console::kBadId, ControlEvent::kDeviceReady, 1);
  h.add_port(1, "org.pier.brief");
  h.control.port_added(h.port(1));
  if (c.buffers_before_remove > 0) h.post(c.buffers_before_remove);
  h.received();
  h.control.port_removed(h.port(1));
  h.post(4);
  EXPECT_EQ(h.received(), c.after_remove);
  EXPECT_EQ(h.control.pending(), 0u);
}

INSTANTIATE_TEST_SUITE_P(ControlEndpoint, ControlEndpointRemove,
                         ::testing::Values(RemoveCase{"AddWithdrawn", 0, {}},
                                           RemoveCase{"AddDelivered", 1, {"PORT_REMOVE 1 1"}}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(ControlEndpoint, RestoredDriverWithAReplacedPortIsToldRemoveThenAdd) {
  EndpointHarness h;
  h.add_port(0, "", true);
  h.handshake();
  h.received();
  // hvc0 is replaced by a generic port while the guest is frozen; the reset drops the news.
  h.control.port_removed(h.port(0));
  h.link.ports.erase(0);
  h.add_port(0, "org.pier.replacement");
  h.control.port_added(h.port(0));
  h.control.reset();
  h.port(0).forget_guest();
  h.control.activate(true);
  // The restored driver re-announces the port it kept: no DEVICE_READY, PORT_READY(0).
  h.post(8);
  h.send(0, ControlEvent::kPortReady, 1);
  EXPECT_FALSE(h.port(0).guest_ready());
  EXPECT_EQ(h.received(), (Messages{"PORT_REMOVE 0 1", "PORT_ADD 0 1"}));
  h.send(0, ControlEvent::kPortReady, 1);  // the answer to that PORT_ADD
  EXPECT_TRUE(h.port(0).guest_ready());
  EXPECT_EQ(h.received(), (Messages{"PORT_NAME 0 1 org.pier.replacement", "PORT_OPEN 0 1"}));
}

TEST(ControlEndpoint, NothingMovesWithoutMultiport) {
  EndpointHarness h;
  h.add_port(1, "org.pier.a");
  h.control.reset();
  h.control.activate(false);
  h.post(4);
  h.control.port_added(h.port(1));
  h.control.host_changed(h.port(1));
  EXPECT_EQ(h.received(), Messages{});
  EXPECT_EQ(h.control.pending(), 0u);
}

}  // namespace
}  // namespace pier::virtio::testing
