// The Device / Interrupt interfaces and the FakeTransport, exercised with a small loopback
// device shaped like the console's data path: bytes the driver sends on queue 0 come back on
// queue 1, split over whatever receive buffers exist, and a transmit chain is held with its
// offset until every byte has moved.
#include "virtio/device.hpp"

#include <gtest/gtest.h>

#include <array>

#include "unit/virtio/fake_driver.hpp"

namespace pier::virtio::testing {
namespace {

constexpr uint64_t kFeatureLoopbackFancy = 1ull << 0;
constexpr uint64_t kFeatureLoopbackRefused = 1ull << 1;
constexpr uint16_t kTx = 0;
constexpr uint16_t kRx = 1;

class LoopbackDevice : public Device {
 public:
  std::string_view name() const override { return "virtio-loopback"; }
  uint32_t device_id() const override { return 0x3f; }
  uint64_t device_features() const override {
    return kQueueFeatures | kFeatureLoopbackFancy | kFeatureLoopbackRefused;
  }
  bool ack_features(uint64_t features) override {
    acked = features;
    return (features & kFeatureLoopbackRefused) == 0;
  }
  size_t config_size() const override { return config_.size(); }
  // Layout: le32 magic (read-only), le16 counter (read-only), le16 scratch (read-write).
  void read_config(uint64_t offset, std::span<uint8_t> out) override {
    read_config_bytes(config_, offset, out);
  }
  void write_config(uint64_t offset, std::span<const uint8_t> in) override {
    if (offset < 6) return;  // read-only part: ignored
    write_config_bytes(config_, offset, in);
  }
  size_t num_queues() const override { return 2; }
  uint16_t queue_max_size(size_t) const override { return 16; }

  void activate(std::span<Queue> queues, Interrupt& interrupt) override {
    queues_ = queues;
    interrupt_ = &interrupt;
    ++activations;
  }
  void reset() override {
    queues_ = {};
    interrupt_ = nullptr;
    tx_.reset();  // dropped: its descriptors go back with the queue reset
    tx_offset_ = 0;
  }
  void queue_notify(uint16_t index) override {
    ++notifies;
    if (index > kRx || queues_.empty()) return;
    pump();
  }

  bool holding_tx() const { return tx_.has_value(); }
  uint64_t acked = 0;
  int activations = 0;
  int notifies = 0;

 private:
  void pump() {
    Queue& tx = queues_[kTx];
    Queue& rx = queues_[kRx];
    for (;;) {
      if (!tx_) {
        tx_ = tx.pop();
        tx_offset_ = 0;
        if (!tx_) break;
      }
      auto buf = rx.pop();
      if (!buf) break;  // keep the tx chain and its offset until rx buffers come back
      std::array<uint8_t, 64> bounce;
      const size_t want =
          std::min({buf->writable_length(), tx_->readable_length() - tx_offset_, bounce.size()});
      const size_t n = tx_->copy_from(tx_offset_, std::span(bounce).first(want));
      buf->copy_to(0, std::span(bounce).first(n));
      rx.push(std::move(*buf), static_cast<uint32_t>(n));
      tx_offset_ += n;
      if (tx_offset_ == tx_->readable_length()) {
        tx.push(std::move(*tx_), 0);
        tx_.reset();
      }
    }
    for (uint16_t q : {kTx, kRx}) {
      if (queues_[q].should_interrupt()) interrupt_->signal_queue(q);
    }
  }

  std::array<uint8_t, 8> config_{0x78, 0x56, 0x34, 0x12, 7, 0, 0, 0};
  std::span<Queue> queues_;
  Interrupt* interrupt_ = nullptr;
  std::optional<Chain> tx_;
  size_t tx_offset_ = 0;
};

TEST(VirtioDevice, ConfigSpaceAtAnyOffsetAndWidth) {
  LoopbackDevice dev;
  std::array<uint8_t, 4> word{};
  dev.read_config(0, word);
  EXPECT_EQ(word, (std::array<uint8_t, 4>{0x78, 0x56, 0x34, 0x12}));
  std::array<uint8_t, 1> byte{};
  dev.read_config(4, byte);
  EXPECT_EQ(byte[0], 7);
  std::array<uint8_t, 2> half{};
  dev.read_config(3, half);  // unaligned, across fields
  EXPECT_EQ(half, (std::array<uint8_t, 2>{0x12, 7}));
  std::array<uint8_t, 4> tail{0xff, 0xff, 0xff, 0xff};
  dev.read_config(6, tail);  // half inside, half past the end
  EXPECT_EQ(tail, (std::array<uint8_t, 4>{0, 0, 0, 0}));
  std::array<uint8_t, 8> far{1, 1, 1, 1, 1, 1, 1, 1};
  dev.read_config(~0ull - 2, far);  // no overflow for absurd offsets
  EXPECT_EQ(far, (std::array<uint8_t, 8>{}));

  dev.write_config(6, std::array<uint8_t, 4>{0xaa, 0xbb, 0xcc, 0xdd});  // clipped to 2 bytes
  dev.write_config(0, std::array<uint8_t, 4>{});                        // read-only: ignored
  dev.write_config(~0ull, std::array<uint8_t, 4>{});
  std::array<uint8_t, 8> all{};
  dev.read_config(0, all);
  EXPECT_EQ(all, (std::array<uint8_t, 8>{0x78, 0x56, 0x34, 0x12, 7, 0, 0xaa, 0xbb}));
}

TEST(VirtioDevice, FeatureNegotiation) {
  FakeGuest guest;
  LoopbackDevice dev;
  FakeTransport transport(guest, dev);
  EXPECT_FALSE(transport.negotiate(kQueueFeatures | kFeatureLoopbackRefused));
  EXPECT_EQ(transport.status() & kStatusFeaturesOk, 0);
  ASSERT_TRUE(transport.negotiate(kFeatureRingEventIdx | kFeatureLoopbackFancy | (1ull << 40)));
  EXPECT_EQ(dev.acked, kFeatureVersion1 | kFeatureRingEventIdx | kFeatureLoopbackFancy);
  EXPECT_NE(transport.status() & kStatusFeaturesOk, 0);
}

class VirtioDeviceLoopback : public ::testing::TestWithParam<uint64_t> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(transport.negotiate(GetParam()));
    transport.start();
    EXPECT_EQ(dev.activations, 1);
  }
  void send(std::string_view text) {
    ASSERT_TRUE(transport.driver(kTx).chain().readable(text).build());
    transport.kick(kTx);
  }
  void give_rx(int count, uint32_t size) {
    for (int i = 0; i < count; ++i)
      ASSERT_TRUE(transport.driver(kRx).chain().writable(size).build());
    transport.kick(kRx);
  }
  std::string received() {
    std::string out;
    for (auto& u : transport.driver(kRx).get_all_used()) out += u.text();
    return out;
  }

  FakeGuest guest;
  LoopbackDevice dev;
  FakeTransport transport{guest, dev};
};

TEST_P(VirtioDeviceLoopback, TxChainIsHeldUntilAllBytesMoved) {
  give_rx(2, 4);
  send("hello world");
  EXPECT_EQ(received(), "hello wo");
  EXPECT_TRUE(dev.holding_tx());
  EXPECT_FALSE(transport.driver(kTx).get_used());  // not returned yet: 3 bytes are left
  EXPECT_EQ(transport.queue_interrupts(kTx), 0u);
  give_rx(1, 4);
  EXPECT_EQ(received(), "rld");
  EXPECT_FALSE(dev.holding_tx());
  auto tx_used = transport.driver(kTx).get_all_used();
  ASSERT_EQ(tx_used.size(), 1u);
  EXPECT_EQ(tx_used[0].len, 0u);
  EXPECT_GE(transport.queue_interrupts(kTx), 1u);
  EXPECT_GE(transport.queue_interrupts(kRx), 1u);
  EXPECT_FALSE(transport.needs_reset());
}

TEST_P(VirtioDeviceLoopback, ManyMessagesWithKicksOnlyWhenAsked) {
  int kicks = 0;
  std::string sent;
  std::string got;
  for (int i = 0; i < 200; ++i) {
    const std::string msg = "m" + std::to_string(i) + ";";
    sent += msg;
    ASSERT_TRUE(transport.driver(kRx).chain().writable(16).build());
    kicks += transport.kick(kRx);
    ASSERT_TRUE(transport.driver(kTx).chain().readable(msg).build());
    kicks += transport.kick(kTx);
    transport.driver(kTx).get_all_used();
    got += received();
  }
  EXPECT_EQ(got, sent);
  EXPECT_GT(kicks, 0);
  EXPECT_FALSE(transport.needs_reset());
}

TEST_P(VirtioDeviceLoopback, QueueErrorPutsTheDeviceInNeedsResetAndResetRecovers) {
  transport.driver(kTx).expose_raw(99);  // head index beyond the queue
  transport.notify(kTx);
  EXPECT_TRUE(transport.needs_reset());
  EXPECT_EQ(transport.config_interrupts(), 1u);
  ASSERT_EQ(transport.errors().size(), 1u);
  EXPECT_EQ(transport.errors()[0],
            "virtqueue 0: avail ring entry is not a descriptor index: head 99 in slot 0 "
            "(size 16)");
  // More notifications change nothing and report nothing again.
  transport.notify(kTx);
  EXPECT_EQ(transport.errors().size(), 1u);
  EXPECT_EQ(transport.config_interrupts(), 1u);

  // The driver resets the device and initializes it again: a working device.
  transport.reset();
  EXPECT_EQ(transport.status(), 0);
  ASSERT_TRUE(transport.negotiate(GetParam()));
  transport.start();
  EXPECT_EQ(dev.activations, 2);
  give_rx(1, 16);
  send("again");
  EXPECT_EQ(received(), "again");
  EXPECT_FALSE(transport.needs_reset());
}

TEST_P(VirtioDeviceLoopback, ResetDropsAHeldChain) {
  send("nobody reads this");
  EXPECT_TRUE(dev.holding_tx());
  transport.reset();
  EXPECT_FALSE(dev.holding_tx());
  ASSERT_TRUE(transport.negotiate(GetParam()));
  transport.start();
  EXPECT_EQ(transport.driver(kTx).used_idx(), 0);
  give_rx(1, 16);
  send("fresh");
  EXPECT_EQ(received(), "fresh");
}

INSTANTIATE_TEST_SUITE_P(Features, VirtioDeviceLoopback,
                         ::testing::Values(kQueueFeatures, kFeatureVersion1,
                                           kFeatureVersion1 | kFeatureRingIndirectDesc),
                         [](const auto& info) {
                           return info.param == kQueueFeatures     ? std::string("EventIdx")
                                  : info.param == kFeatureVersion1 ? std::string("Plain")
                                                                   : std::string("Indirect");
                         });

}  // namespace
}  // namespace pier::virtio::testing
