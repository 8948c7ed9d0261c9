// The console's building blocks on their own: the control-message codec and validation, the
// bounded console output ring, and the chain FIFO.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "unit/virtio/console_fake_link.hpp"
#include "virtio/console/control.hpp"
#include "virtio/console/fifo.hpp"
#include "virtio/console/output_ring.hpp"

namespace pier::virtio::console {
namespace {

using pier::virtio::testing::control_header;

ControlMessage msg(uint32_t id, ControlEvent event, uint16_t value) {
  ControlMessage m;
  m.id = id;
  m.event = event;
  m.value = value;
  return m;
}

TEST(ConsoleControl, EncodesTheHeaderLittleEndian) {
  std::array<uint8_t, 64> out{};
  const size_t n = encode(msg(0x01020304, ControlEvent::kPortOpen, 1), ResizeLayout::kRowsCols, out);
  ASSERT_EQ(n, 8u);
  EXPECT_EQ(std::vector<uint8_t>(out.begin(), out.begin() + 8),
            (std::vector<uint8_t>{0x04, 0x03, 0x02, 0x01, 6, 0, 1, 0}));
}

TEST(ConsoleControl, EncodesPortNameWithoutNul) {
  auto m = msg(3, ControlEvent::kPortName, 1);
  m.name = "org.pier.agent";
  std::array<uint8_t, 64> out{};
  out.fill(0xee);
  const size_t n = encode(m, ResizeLayout::kRowsCols, out);
  EXPECT_EQ(n, encoded_size(m));
  EXPECT_EQ(n, 8 + m.name.size());
  EXPECT_EQ(std::string(out.begin() + 8, out.begin() + static_cast<long>(n)), "org.pier.agent");
  EXPECT_EQ(out[n], 0xee);  // nothing written past the message
}

TEST(ConsoleControl, PortNameIsCutToTheBuffer) {
  auto m = msg(3, ControlEvent::kPortName, 1);
  m.name = std::string(100, 'n');
  std::array<uint8_t, 20> out{};
  EXPECT_EQ(encode(m, ResizeLayout::kRowsCols, out), 20u);
  EXPECT_EQ(encode(m, ResizeLayout::kRowsCols, std::span(out.data(), 5)), 5u);  // header cut
}

TEST(ConsoleControl, ResizeLayouts) {
  auto m = msg(0, ControlEvent::kResize, 0);
  m.cols = 132;
  m.rows = 43;
  std::array<uint8_t, 16> out{};
  ASSERT_EQ(encode(m, ResizeLayout::kRowsCols, out), 12u);
  uint16_t a, b;
  std::memcpy(&a, &out[8], 2);
  std::memcpy(&b, &out[10], 2);
  EXPECT_EQ(a, 43);  // Linux 6.1: rows first
  EXPECT_EQ(b, 132);
  ASSERT_EQ(encode(m, ResizeLayout::kColsRows, out), 12u);
  std::memcpy(&a, &out[8], 2);
  std::memcpy(&b, &out[10], 2);
  EXPECT_EQ(a, 132);  // spec: cols first
  EXPECT_EQ(b, 43);
}

TEST(ConsoleControl, ParsesWhatLinuxSends) {
  auto r = parse_driver_message(control_header(kBadId, 0, 1), 31);
  ASSERT_EQ(r.error, ControlError::kOk);
  EXPECT_EQ(r.message.event, ControlEvent::kDeviceReady);
  EXPECT_TRUE(r.message.value);
  r = parse_driver_message(control_header(30, 3, 1), 31);
  ASSERT_EQ(r.error, ControlError::kOk);
  EXPECT_EQ(r.message.event, ControlEvent::kPortReady);
  EXPECT_EQ(r.message.id, 30u);
  r = parse_driver_message(control_header(2, 6, 0), 31);
  ASSERT_EQ(r.error, ControlError::kOk);
  EXPECT_EQ(r.message.event, ControlEvent::kPortOpen);
  EXPECT_FALSE(r.message.value);
  // Trailing bytes are ignored.
  auto longer = control_header(1, 6, 1);
  longer.resize(4096, 0xff);
  EXPECT_EQ(parse_driver_message(longer, 31).error, ControlError::kOk);
}

TEST(ConsoleControl, RejectsNonsense) {
  const auto h = control_header(1, 6, 1);
  EXPECT_EQ(parse_driver_message(std::span(h.data(), 7), 31).error, ControlError::kShort);
  EXPECT_EQ(parse_driver_message({}, 31).error, ControlError::kShort);
  EXPECT_EQ(parse_driver_message(control_header(1, 8, 1), 31).error, ControlError::kUnknownEvent);
  EXPECT_EQ(parse_driver_message(control_header(1, 0xffff, 1), 31).error, ControlError::kUnknownEvent);
  for (uint16_t host_only : {1, 2, 4, 5, 7}) {
    EXPECT_EQ(parse_driver_message(control_header(1, host_only, 1), 31).error,
              ControlError::kHostOnlyEvent)
        << host_only;
  }
  EXPECT_EQ(parse_driver_message(control_header(1, 6, 7), 31).error, ControlError::kBadValue);
  EXPECT_EQ(parse_driver_message(control_header(kBadId, 0, 2), 31).error, ControlError::kBadValue);
  EXPECT_EQ(parse_driver_message(control_header(31, 6, 1), 31).error, ControlError::kBadId);
  EXPECT_EQ(parse_driver_message(control_header(kBadId, 3, 1), 31).error, ControlError::kBadId);
  // DEVICE_READY's id is not a port.
  EXPECT_EQ(parse_driver_message(control_header(12345, 0, 1), 31).error, ControlError::kOk);
}

TEST(ConsoleControl, PortNames) {
  EXPECT_FALSE(port_name_error("org.pier.agent"));
  EXPECT_FALSE(port_name_error("a"));
  EXPECT_FALSE(port_name_error("com.redhat.spice.0"));
  EXPECT_FALSE(port_name_error(std::string(255, 'x')));
  EXPECT_TRUE(port_name_error(""));
  EXPECT_TRUE(port_name_error(std::string(256, 'x')));
  EXPECT_TRUE(port_name_error("."));
  EXPECT_TRUE(port_name_error(".."));
  EXPECT_TRUE(port_name_error("a/b"));
  EXPECT_TRUE(port_name_error("a b"));
  EXPECT_TRUE(port_name_error("a\\b"));
  EXPECT_TRUE(port_name_error(std::string("a\0b", 3)));
  EXPECT_TRUE(port_name_error("caf\xc3\xa9"));
}

std::string contents(const OutputRing& ring) {
  std::array<iovec, 2> iov;
  const size_t k = ring.peek(iov);
  std::string s;
  for (size_t i = 0; i < k; ++i) s.append(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
  return s;
}
std::span<const uint8_t> bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

TEST(ConsoleOutputRing, KeepsOrderAcrossTheWrap) {
  OutputRing ring(8);
  EXPECT_TRUE(ring.empty());
  EXPECT_EQ(ring.push(bytes("abcdef")), 0u);
  ring.consume(4);
  EXPECT_EQ(contents(ring), "ef");
  EXPECT_EQ(ring.push(bytes("ghijkl")), 0u);  // wraps
  EXPECT_EQ(contents(ring), "efghijkl");
  std::array<iovec, 2> iov;
  EXPECT_EQ(ring.peek(iov), 2u);
  ring.consume(3);
  EXPECT_EQ(contents(ring), "hijkl");
  EXPECT_EQ(ring.dropped(), 0u);
}

TEST(ConsoleOutputRing, DropsTheOldestAndCountsThem) {
  OutputRing ring(8);
  ring.push(bytes("abcdef"));
  EXPECT_EQ(ring.push(bytes("ghij")), 2u);
  EXPECT_EQ(contents(ring), "cdefghij");
  EXPECT_EQ(ring.dropped(), 2u);
  // Bigger than the ring: only its newest 8 bytes stay.
  EXPECT_EQ(ring.push(bytes("0123456789AB")), 12u);
  EXPECT_EQ(contents(ring), "456789AB");
  EXPECT_EQ(ring.dropped(), 14u);
  ring.count_dropped(5);
  EXPECT_EQ(ring.dropped(), 19u);
  ring.clear();
  EXPECT_TRUE(ring.empty());
  EXPECT_EQ(ring.dropped(), 19u);
}

TEST(ConsoleOutputRing, ZeroCapacityDropsEverything) {
  OutputRing ring(0);
  EXPECT_EQ(ring.push(bytes("abc")), 3u);
  EXPECT_TRUE(ring.empty());
  EXPECT_EQ(ring.dropped(), 3u);
}

TEST(ConsoleFifo, GrowsAndWraps) {
  Fifo<std::unique_ptr<int>> f;
  int next = 0, expect = 0;
  for (int round = 0; round < 50; ++round) {
    for (int i = 0; i < round % 13; ++i) f.push_back(std::make_unique<int>(next++));
    for (int i = 0; i < round % 7 && !f.empty(); ++i) EXPECT_EQ(*f.pop_front(), expect++);
  }
  for (size_t i = 0; i < f.size(); ++i) EXPECT_EQ(*f.at(i), expect + static_cast<int>(i));
  f.clear();
  EXPECT_TRUE(f.empty());
}

}  // namespace
}  // namespace pier::virtio::console
