// Hostile guest input: every case leaves the queue in its error state (reported once to the
// transport, which sets NEEDS_RESET), touches nothing outside guest RAM, and a reset brings back
// a working queue.
#include <gtest/gtest.h>

#include "boot/layout.hpp"
#include "unit/virtio/queue_fixture.hpp"
#include "virtio/queue.hpp"

namespace pier::virtio::testing {
namespace {

constexpr uint64_t kGiB = 1ull << 30;
constexpr uint64_t kHole = layout::kMmioHoleStart;

// Expects the next pop() to fail with `error`, reported exactly once, and the queue to stay
// failed (no pop, push or interrupt) until reset; then resets and checks a normal round trip.
void expect_error_then_recovery(QueueFixture& f, QueueError error) {
  EXPECT_FALSE(f.queue.pop().has_value());
  EXPECT_TRUE(f.queue.failed());
  EXPECT_EQ(f.queue.error(), error) << f.queue.describe_fault();
  ASSERT_EQ(f.recorder.errors.size(), 1u);
  EXPECT_EQ(f.recorder.errors[0], error);
  EXPECT_NE(f.recorder.messages[0].find(std::string(to_string(error))), std::string::npos)
      << f.recorder.messages[0];
  // Dead until reset: nothing more happens, and nothing is reported twice.
  EXPECT_FALSE(f.queue.pop().has_value());
  EXPECT_FALSE(f.queue.has_available());
  EXPECT_FALSE(f.queue.should_interrupt());
  EXPECT_FALSE(f.queue.enable_notification());
  EXPECT_EQ(f.recorder.errors.size(), 1u);

  ASSERT_TRUE(f.reset_and_reactivate()) << f.queue.describe_fault();
  EXPECT_FALSE(f.queue.failed());
  auto head = f.driver.chain().readable("ping").writable(4).build();
  ASSERT_TRUE(head);
  auto chain = f.queue.pop();
  ASSERT_TRUE(chain) << f.queue.describe_fault();
  EXPECT_EQ(chain->readable_length(), 4u);
  const std::array<uint8_t, 4> pong{'p', 'o', 'n', 'g'};
  chain->copy_to(0, pong);
  ASSERT_TRUE(f.queue.push(std::move(*chain), 4));
  auto used = f.driver.get_used();
  ASSERT_TRUE(used);
  EXPECT_EQ(used->id, *head);
  EXPECT_EQ(used->text(), "pong");
  EXPECT_EQ(f.recorder.errors.size(), 1u);
}

// Activation fails with `error`; after a reset and a valid configuration it works.
void expect_activation_error_then_recovery(QueueFixture& f, QueueError error) {
  EXPECT_FALSE(f.activate());
  EXPECT_FALSE(f.queue.ready());
  EXPECT_EQ(f.queue.error(), error) << f.queue.describe_fault();
  ASSERT_EQ(f.recorder.errors.size(), 1u);
  EXPECT_EQ(f.recorder.errors[0], error);
  EXPECT_FALSE(f.queue.pop().has_value());
  f.recorder.errors.clear();
  f.recorder.messages.clear();
  ASSERT_TRUE(f.reset_and_reactivate()) << f.queue.describe_fault();
  ASSERT_TRUE(f.driver.chain().readable("ok").build());
  auto chain = f.queue.pop();
  ASSERT_TRUE(chain);
  ASSERT_TRUE(f.queue.push(std::move(*chain), 0));
  EXPECT_TRUE(f.driver.get_used());
  EXPECT_TRUE(f.recorder.errors.empty());
}

// A one-descriptor readable buffer in RAM, for building raw chains.
uint64_t buffer(QueueFixture& f, uint32_t len = 16) {
  return f.guest.alloc(len);
}

TEST(VirtioQueueHostile, LoopInAChain) {
  QueueFixture f(8, kAllFeatures, 64 << 20, 8);
  ASSERT_TRUE(f.activate());
  const uint64_t b = buffer(f);
  f.driver.write_descriptor(0, {b, 16, kDescFlagNext, 1});
  f.driver.write_descriptor(1, {b, 16, kDescFlagNext, 2});
  f.driver.write_descriptor(2, {b, 16, kDescFlagNext, 1});
  f.driver.expose_raw(0);
  expect_error_then_recovery(f, QueueError::kChainLoop);
}

TEST(VirtioQueueHostile, DescriptorPointingAtItself) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  f.driver.write_descriptor(5, {buffer(f), 16, kDescFlagNext, 5});
  f.driver.expose_raw(5);
  expect_error_then_recovery(f, QueueError::kChainLoop);
}

TEST(VirtioQueueHostile, LoopInsideAnIndirectTable) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  const uint64_t b = buffer(f);
  const uint64_t table = f.guest.alloc(48);
  f.guest.write_obj(table, RawDescriptor{b, 16, kDescFlagNext, 1});
  f.guest.write_obj(table + 16, RawDescriptor{b, 16, kDescFlagNext, 2});
  f.guest.write_obj(table + 32, RawDescriptor{b, 16, kDescFlagNext, 0});
  f.driver.write_descriptor(0, {table, 48, kDescFlagIndirect, 0});
  f.driver.expose_raw(0);
  expect_error_then_recovery(f, QueueError::kChainLoop);
}

TEST(VirtioQueueHostile, ChainLongerThanTheQueueSize) {
  // Every descriptor of an 8-entry queue chained, and the last one pointing back to the first:
  // the 9th descriptor of the chain is a repeat.
  QueueFixture f(8, kAllFeatures, 64 << 20, 8);
  ASSERT_TRUE(f.activate());
  const uint64_t b = buffer(f);
  for (uint16_t i = 0; i < 8; ++i) {
    f.driver.write_descriptor(i, {b, 1, kDescFlagNext, static_cast<uint16_t>((i + 1) % 8)});
  }
  f.driver.expose_raw(0);
  expect_error_then_recovery(f, QueueError::kChainLoop);
}

TEST(VirtioQueueHostile, DirectPrefixPlusIndirectTableLongerThanTheQueueSize) {
  // "A driver MUST NOT create a descriptor chain longer than the Queue Size of the device":
  // 4 direct descriptors and an 8-entry table on an 8-entry queue.
  QueueFixture f(8, kAllFeatures, 64 << 20, 8);
  ASSERT_TRUE(f.activate());
  const uint64_t b = buffer(f);
  const uint64_t table = f.guest.alloc(8 * 16);
  for (uint16_t i = 0; i < 8; ++i) {
    f.guest.write_obj(table + 16 * i,
                      RawDescriptor{b, 1, static_cast<uint16_t>(i < 7 ? kDescFlagNext : 0),
                                    static_cast<uint16_t>(i + 1)});
  }
  for (uint16_t i = 0; i < 4; ++i) {
    f.driver.write_descriptor(i, {b, 1, kDescFlagNext, static_cast<uint16_t>(i + 1)});
  }
  f.driver.write_descriptor(4, {table, 8 * 16, kDescFlagIndirect, 0});
  f.driver.expose_raw(0);
  expect_error_then_recovery(f, QueueError::kChainTooLong);
}

TEST(VirtioQueueHostile, DescriptorOutsideRam) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  ASSERT_TRUE(f.driver.chain().raw(64 << 20, 16, 0).build());
  expect_error_then_recovery(f, QueueError::kBufferOutOfRange);
}

TEST(VirtioQueueHostile, DescriptorStraddlingTheEndOfRam) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  ASSERT_TRUE(f.driver.chain().raw((64 << 20) - 8, 16, kDescFlagWrite).build());
  expect_error_then_recovery(f, QueueError::kBufferOutOfRange);
}

TEST(VirtioQueueHostile, DescriptorWhoseEndOverflows64Bits) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  ASSERT_TRUE(f.driver.chain().raw(~0ull - 7, 16, 0).build());
  expect_error_then_recovery(f, QueueError::kBufferOutOfRange);
}

// 5 GiB of RAM: [0, 3 GiB) and [4 GiB, 6 GiB), the hole between them PROT_NONE in pier's
// mapping, so any host access there would crash the test.
TEST(VirtioQueueHostile, DescriptorAcrossTheMmioHole) {
  QueueFixture f(256, kAllFeatures, 5 * kGiB);
  ASSERT_TRUE(f.activate());
  ASSERT_TRUE(f.driver.chain().raw(kHole - 8, 16, kDescFlagWrite).build());
  expect_error_then_recovery(f, QueueError::kBufferOutOfRange);
}

TEST(VirtioQueueHostile, DescriptorInsideTheMmioHole) {
  QueueFixture f(256, kAllFeatures, 5 * kGiB);
  ASSERT_TRUE(f.activate());
  ASSERT_TRUE(f.driver.chain().raw(layout::kIoapic, 4, 0).build());
  expect_error_then_recovery(f, QueueError::kBufferOutOfRange);
}

TEST(VirtioQueueHostile, BuffersJustBesideTheHoleAreFine) {
  QueueFixture f(256, kAllFeatures, 5 * kGiB);
  ASSERT_TRUE(f.activate());
  ASSERT_TRUE(f.driver.chain().raw(kHole - 16, 16, 0).raw(4 * kGiB, 16, kDescFlagWrite).build());
  auto chain = f.queue.pop();
  ASSERT_TRUE(chain) << f.queue.describe_fault();
  EXPECT_EQ(chain->copy_to(0, std::array<uint8_t, 16>{}), 16u);
}

TEST(VirtioQueueHostile, IndirectTableAcrossTheMmioHole) {
  QueueFixture f(256, kAllFeatures, 5 * kGiB);
  ASSERT_TRUE(f.activate());
  f.driver.write_descriptor(0, {kHole - 16, 32, kDescFlagIndirect, 0});
  f.driver.expose_raw(0);
  expect_error_then_recovery(f, QueueError::kIndirectOutOfRange);
}

TEST(VirtioQueueHostile, ZeroLengthDescriptor) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  ASSERT_TRUE(f.driver.chain().readable("a").raw(buffer(f), 0, kDescFlagWrite).build());
  expect_error_then_recovery(f, QueueError::kZeroLength);
}

TEST(VirtioQueueHostile, ZeroLengthDescriptorInAnIndirectTable) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  ASSERT_TRUE(f.driver.chain().raw(buffer(f), 0, 0).indirect().build());
  expect_error_then_recovery(f, QueueError::kZeroLength);
}

TEST(VirtioQueueHostile, IndirectInsideIndirect) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  const uint64_t inner = f.guest.alloc(16);
  f.guest.write_obj(inner, RawDescriptor{buffer(f), 16, 0, 0});
  ASSERT_TRUE(f.driver.chain().raw(inner, 16, kDescFlagIndirect).indirect().build());
  expect_error_then_recovery(f, QueueError::kNestedIndirect);
}

TEST(VirtioQueueHostile, IndirectTogetherWithNext) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  const uint64_t table = f.guest.alloc(16);
  f.guest.write_obj(table, RawDescriptor{buffer(f), 16, 0, 0});
  f.driver.write_descriptor(0, {table, 16, kDescFlagIndirect | kDescFlagNext, 1});
  f.driver.write_descriptor(1, {buffer(f), 16, 0, 0});
  f.driver.expose_raw(0);
  expect_error_then_recovery(f, QueueError::kIndirectWithNext);
}

TEST(VirtioQueueHostile, IndirectWithoutTheFeature) {
  QueueFixture f(256, kFeatureVersion1 | kFeatureRingEventIdx);
  ASSERT_TRUE(f.activate());
  ASSERT_TRUE(f.driver.chain().readable("x").indirect().build());
  expect_error_then_recovery(f, QueueError::kIndirectNotNegotiated);
}

class VirtioQueueHostileIndirectLength : public ::testing::TestWithParam<uint32_t> {};

TEST_P(VirtioQueueHostileIndirectLength, IsRejected) {
  QueueFixture f(16, kAllFeatures, 64 << 20, 16);
  ASSERT_TRUE(f.activate());
  const uint64_t table = f.guest.alloc(64 * 16);
  for (uint16_t i = 0; i < 64; ++i) {
    f.guest.write_obj(table + 16 * i, RawDescriptor{buffer(f), 16, 0, 0});
  }
  f.driver.write_descriptor(0, {table, GetParam(), kDescFlagIndirect, 0});
  f.driver.expose_raw(0);
  expect_error_then_recovery(f, QueueError::kBadIndirectLength);
}

// Zero, not a multiple of 16 (three ways), and more entries (17, 64) than the 16-entry queue.
INSTANTIATE_TEST_SUITE_P(Lengths, VirtioQueueHostileIndirectLength,
                         ::testing::Values(0u, 8u, 17u, 40u, 17u * 16, 64u * 16),
                         [](const auto& info) { return "Len" + std::to_string(info.param); });

TEST(VirtioQueueHostile, IndirectTableOfExactlyQueueSizeEntriesIsFine) {
  QueueFixture f(16, kAllFeatures, 64 << 20, 16);
  ASSERT_TRUE(f.activate());
  auto b = f.driver.chain().indirect();
  for (int i = 0; i < 16; ++i) b.readable("x");
  ASSERT_TRUE(b.build());
  auto chain = f.queue.pop();
  ASSERT_TRUE(chain) << f.queue.describe_fault();
  EXPECT_EQ(chain->descriptor_count(), 16u);
}

TEST(VirtioQueueHostile, TotalLengthAbove4GiB) {
  // Two buffers that are each valid RAM (the whole 3 GiB low region and 1 GiB above 4 GiB; the
  // mapping is MAP_NORESERVE and nothing touches them) add up to 2^32 bytes.
  QueueFixture f(256, kAllFeatures, 5 * kGiB);
  ASSERT_TRUE(f.activate());
  ASSERT_TRUE(f.driver.chain().raw(0, 3 * kGiB, 0).raw(4 * kGiB, kGiB, kDescFlagWrite).build());
  expect_error_then_recovery(f, QueueError::kLengthOverflow);
}

TEST(VirtioQueueHostile, SameHugeBufferTwice) {
  QueueFixture f(256, kAllFeatures, 5 * kGiB);
  ASSERT_TRUE(f.activate());
  ASSERT_TRUE(
      f.driver.chain().raw(0, 3 * kGiB, kDescFlagWrite).raw(0, 3 * kGiB, kDescFlagWrite).build());
  expect_error_then_recovery(f, QueueError::kLengthOverflow);
}

TEST(VirtioQueueHostile, LengthJustBelow4GiBIsFine) {
  QueueFixture f(256, kAllFeatures, 5 * kGiB);
  ASSERT_TRUE(f.activate());
  ASSERT_TRUE(f.driver.chain().raw(0, 3 * kGiB, 0).raw(4 * kGiB, kGiB - 1, kDescFlagWrite).build());
  auto chain = f.queue.pop();
  ASSERT_TRUE(chain) << f.queue.describe_fault();
  EXPECT_EQ(chain->readable_length() + chain->writable_length(), 0xffff'ffffu);
}

TEST(VirtioQueueHostile, AvailIndexJumpsByMoreThanTheQueueSize) {
  QueueFixture f(16, kAllFeatures, 64 << 20, 16);
  ASSERT_TRUE(f.activate());
  for (int i = 0; i < 16; ++i) ASSERT_TRUE(f.driver.chain().readable("x").build());
  f.driver.set_avail_idx(17);
  expect_error_then_recovery(f, QueueError::kAvailIndexJump);
}

TEST(VirtioQueueHostile, AvailIndexGoesBackwards) {
  QueueFixture f(16, kAllFeatures, 64 << 20, 16);
  ASSERT_TRUE(f.activate());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(f.driver.chain().readable("x").build());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(f.queue.pop());
  f.driver.set_avail_idx(2);  // 65535 entries "ahead"
  expect_error_then_recovery(f, QueueError::kAvailIndexJump);
}

TEST(VirtioQueueHostile, AvailIndexJumpSeenByEnableNotification) {
  QueueFixture f(16, kAllFeatures, 64 << 20, 16);
  ASSERT_TRUE(f.activate());
  f.queue.disable_notification();
  f.driver.set_avail_idx(1000);
  EXPECT_FALSE(f.queue.enable_notification());
  EXPECT_EQ(f.queue.error(), QueueError::kAvailIndexJump);
  expect_error_then_recovery(f, QueueError::kAvailIndexJump);
}

TEST(VirtioQueueHostile, HeadIndexBeyondTheQueueSize) {
  QueueFixture f(16, kAllFeatures, 64 << 20, 16);
  ASSERT_TRUE(f.activate());
  f.driver.expose_raw(16);
  expect_error_then_recovery(f, QueueError::kHeadOutOfRange);
}

TEST(VirtioQueueHostile, NextIndexBeyondTheQueueSize) {
  QueueFixture f(16, kAllFeatures, 64 << 20, 16);
  ASSERT_TRUE(f.activate());
  f.driver.write_descriptor(0, {buffer(f), 16, kDescFlagNext, 16});
  f.driver.expose_raw(0);
  expect_error_then_recovery(f, QueueError::kNextOutOfRange);
}

TEST(VirtioQueueHostile, NextIndexBeyondTheIndirectTable) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  const uint64_t table = f.guest.alloc(32);
  f.guest.write_obj(table, RawDescriptor{buffer(f), 16, kDescFlagNext, 2});
  f.guest.write_obj(table + 16, RawDescriptor{buffer(f), 16, 0, 0});
  f.driver.write_descriptor(0, {table, 32, kDescFlagIndirect, 0});
  f.driver.expose_raw(0);
  expect_error_then_recovery(f, QueueError::kNextOutOfRange);
}

TEST(VirtioQueueHostile, ReadableDescriptorAfterAWritableOne) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  ASSERT_TRUE(f.driver.chain().readable("a").writable(4).readable("b").build());
  expect_error_then_recovery(f, QueueError::kReadableAfterWritable);
}

TEST(VirtioQueueHostile, ReadableAfterWritableInAnIndirectTable) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  ASSERT_TRUE(f.driver.chain().writable(4).readable("b").indirect().build());
  expect_error_then_recovery(f, QueueError::kReadableAfterWritable);
}

TEST(VirtioQueueHostile, ErrorAfterGoodChainsDropsTheirCompletions) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  ASSERT_TRUE(f.driver.chain().readable("good").build());
  f.driver.expose_raw(999);
  auto good = f.queue.pop();
  ASSERT_TRUE(good);
  EXPECT_FALSE(f.queue.pop());
  EXPECT_EQ(f.queue.error(), QueueError::kHeadOutOfRange);
  // The device finishing a chain it took before the error changes nothing in the dead ring.
  EXPECT_FALSE(f.queue.push(std::move(*good), 0));
  EXPECT_EQ(f.driver.used_idx(), 0);
  EXPECT_EQ(f.recorder.errors.size(), 1u);
}

// ---- Ring layout, checked when the queue is activated.

TEST(VirtioQueueHostile, DescriptorTableOutsideRam) {
  QueueFixture f;
  f.queue.set_desc_addr((64 << 20) - 16 * 128);  // half of the 256-entry table past the end
  expect_activation_error_then_recovery(f, QueueError::kRingOutOfRange);
}

TEST(VirtioQueueHostile, AvailRingOutsideRam) {
  QueueFixture f;
  f.queue.set_avail_addr(1ull << 40);
  expect_activation_error_then_recovery(f, QueueError::kRingOutOfRange);
}

TEST(VirtioQueueHostile, UsedRingInTheMmioHole) {
  QueueFixture f(256, kAllFeatures, 5 * kGiB);
  f.queue.set_used_addr(kHole - 1024);  // 6 + 8 * 256 bytes do not fit below the hole
  expect_activation_error_then_recovery(f, QueueError::kRingOutOfRange);
}

TEST(VirtioQueueHostile, DescriptorTableMisaligned) {
  QueueFixture f;
  f.queue.set_desc_addr(f.driver.layout().desc + 8);
  expect_activation_error_then_recovery(f, QueueError::kRingMisaligned);
}

TEST(VirtioQueueHostile, AvailRingMisaligned) {
  QueueFixture f;
  f.queue.set_avail_addr(f.driver.layout().avail + 1);
  expect_activation_error_then_recovery(f, QueueError::kRingMisaligned);
}

TEST(VirtioQueueHostile, UsedRingMisaligned) {
  QueueFixture f;
  f.queue.set_used_addr(f.driver.layout().used + 2);
  expect_activation_error_then_recovery(f, QueueError::kRingMisaligned);
}

class VirtioQueueHostileSize : public ::testing::TestWithParam<uint16_t> {};

TEST_P(VirtioQueueHostileSize, IsRejected) {
  QueueFixture f;
  f.queue.set_size(GetParam());
  expect_activation_error_then_recovery(f, QueueError::kBadSize);
}

// Zero, not a power of two, above the device's maximum of 256, above 32768.
INSTANTIATE_TEST_SUITE_P(Sizes, VirtioQueueHostileSize,
                         ::testing::Values(0, 3, 100, 255, 512, 32769, 65535),
                         [](const auto& info) { return "Size" + std::to_string(info.param); });

TEST(VirtioQueueHostile, SizeAbove32768WithTheLargestMaximum) {
  FakeGuest guest;
  Queue queue(0, 32768);
  ErrorRecorder recorder;
  queue.set_error_handler(&recorder);
  queue.set_size(65535);
  EXPECT_FALSE(queue.activate(guest.memory(), kAllFeatures));
  EXPECT_EQ(queue.error(), QueueError::kBadSize);
}

TEST(VirtioQueueHostile, LegacyDriverWithoutVersion1) {
  // The transport refuses FEATURES_OK without VERSION_1; the queue checks again.
  QueueFixture f(256, kFeatureRingEventIdx);
  EXPECT_FALSE(f.activate());
  EXPECT_EQ(f.queue.error(), QueueError::kNotVersion1);
  EXPECT_EQ(f.recorder.errors.size(), 1u);
  f.features = kAllFeatures;
  ASSERT_TRUE(f.reset_and_reactivate());
  ASSERT_TRUE(f.driver.chain().readable("ok").build());
  EXPECT_TRUE(f.queue.pop());
}

TEST(VirtioQueueHostile, ErrorWithoutAHandlerIsStillAnError) {
  FakeGuest guest;
  Queue queue(3, 16);
  FakeQueueDriver driver(guest, queue, 16);
  driver.set_features(kAllFeatures);
  ASSERT_TRUE(queue.activate(guest.memory(), kAllFeatures));
  driver.expose_raw(40);
  EXPECT_FALSE(queue.pop());
  EXPECT_EQ(queue.error(), QueueError::kHeadOutOfRange);
  EXPECT_EQ(queue.describe_fault(),
            "virtqueue 3: avail ring entry is not a descriptor index: head 40 in slot 0 (size 16)");
}

TEST(VirtioQueueHostile, HeadMadeAvailableAgainWhileHeldFailsAtSizeInFlight) {
  // The same one-descriptor head exposed over and over while the device keeps every chain it
  // popped (a transmit queue with no client reading): a driver cannot have more than `size`
  // chains outstanding, so the ninth pop on an 8-entry queue is the error, not one more chain.
  QueueFixture f(8, kAllFeatures, 64 << 20, 8);
  ASSERT_TRUE(f.activate());
  f.driver.write_descriptor(0, {buffer(f), 16, 0, 0});
  std::vector<Chain> held;
  for (int i = 0; i < 8; ++i) {
    f.driver.expose_raw(0);
    auto chain = f.queue.pop();
    ASSERT_TRUE(chain) << i << ": " << f.queue.describe_fault();
    held.push_back(std::move(*chain));
  }
  EXPECT_EQ(f.queue.in_flight(), 8);
  f.driver.expose_raw(0);
  expect_error_then_recovery(f, QueueError::kTooManyInFlight);
  EXPECT_NE(f.recorder.messages[0].find("with 8 chains already in flight (size 8)"),
            std::string::npos)
      << f.recorder.messages[0];
}

TEST(VirtioQueueHostile, FullRingHeldThenReturnedIsNoError) {
  // The legitimate extreme: every descriptor of the ring in flight at once, all returned, and
  // again, many times round the 16-bit indices.
  QueueFixture f(8, kAllFeatures, 64 << 20, 8);
  ASSERT_TRUE(f.activate());
  for (int round = 0; round < 20000; ++round) {
    std::vector<Chain> held;
    for (int i = 0; i < 8; ++i) {
      ASSERT_TRUE(f.driver.chain().writable(4).build());
      auto chain = f.queue.pop();
      ASSERT_TRUE(chain) << round << "/" << i << ": " << f.queue.describe_fault();
      held.push_back(std::move(*chain));
    }
    for (auto& chain : held) ASSERT_TRUE(f.queue.push(std::move(chain), 0));
    while (f.driver.get_used()) {
    }
  }
  EXPECT_FALSE(f.queue.failed());
  EXPECT_EQ(f.queue.in_flight(), 0);
}

}  // namespace
}  // namespace pier::virtio::testing
