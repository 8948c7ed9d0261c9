// Normal operation of the split virtqueue: chains, scatter-gather helpers, wrap-around and
// notification suppression in both directions.
#include "virtio/queue.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <numeric>
#include <type_traits>

#include "unit/virtio/queue_fixture.hpp"
#include "vmm/error.hpp"

namespace pier::virtio::testing {
namespace {

std::vector<uint8_t> bytes(std::string_view s) {
  return {s.begin(), s.end()};
}

std::string readable_text(const Chain& chain, size_t offset = 0) {
  std::string out(chain.readable_length() - std::min(offset, chain.readable_length()), '\0');
  chain.copy_from(offset, std::span(reinterpret_cast<uint8_t*>(out.data()), out.size()));
  return out;
}

static_assert(!std::is_copy_constructible_v<Chain> && !std::is_copy_assignable_v<Chain>);
static_assert(std::is_nothrow_move_constructible_v<Chain>);

TEST(VirtioQueue, RejectsBadMaximumSizeAtConstruction) {
  EXPECT_THROW(Queue(0, 0), pier::Error);
  EXPECT_THROW(Queue(0, 100), pier::Error);
  EXPECT_THROW(Queue(0, 65535), pier::Error);
  EXPECT_NO_THROW(Queue(0, 32768));
  EXPECT_NO_THROW(Queue(0, 1));
}

TEST(VirtioQueue, ReportsConfigurationBackAndIgnoresWritesWhileReady) {
  QueueFixture f;
  EXPECT_FALSE(f.queue.ready());
  EXPECT_EQ(f.queue.size(), 256);
  ASSERT_TRUE(f.activate());
  EXPECT_TRUE(f.queue.ready());
  f.queue.set_size(16);
  f.queue.set_desc_addr(0x1000);
  EXPECT_EQ(f.queue.size(), 256);
  EXPECT_EQ(f.queue.desc_addr(), f.driver.layout().desc);
  f.queue.reset();
  EXPECT_FALSE(f.queue.ready());
  EXPECT_EQ(f.queue.size(), 256);
  EXPECT_EQ(f.queue.desc_addr(), 0u);
}

TEST(VirtioQueue, EmptyRingPopsNothing) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  EXPECT_FALSE(f.queue.has_available());
  EXPECT_FALSE(f.queue.pop().has_value());
  EXPECT_FALSE(f.queue.failed());
  EXPECT_FALSE(f.queue.should_interrupt());
}

TEST(VirtioQueue, NotReadyQueueDoesNothing) {
  QueueFixture f;
  ASSERT_TRUE(f.driver.chain().readable("x").build());
  EXPECT_FALSE(f.queue.pop().has_value());
  EXPECT_FALSE(f.queue.has_available());
  EXPECT_TRUE(f.recorder.errors.empty());
}

TEST(VirtioQueue, SingleReadableDescriptor) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  auto head = f.driver.chain().readable("hello").build();
  ASSERT_TRUE(head);
  EXPECT_TRUE(f.queue.has_available());
  auto chain = f.queue.pop();
  ASSERT_TRUE(chain);
  EXPECT_TRUE(chain->valid());
  EXPECT_EQ(chain->head(), *head);
  EXPECT_EQ(chain->descriptor_count(), 1u);
  EXPECT_EQ(chain->readable().size(), 1u);
  EXPECT_TRUE(chain->writable().empty());
  EXPECT_EQ(chain->readable_length(), 5u);
  EXPECT_EQ(chain->writable_length(), 0u);
  EXPECT_EQ(readable_text(*chain), "hello");
  EXPECT_TRUE(f.queue.push(std::move(*chain), 0));
  auto used = f.driver.get_used();
  ASSERT_TRUE(used);
  EXPECT_EQ(used->id, *head);
  EXPECT_EQ(used->len, 0u);
  EXPECT_FALSE(f.driver.get_used());
  EXPECT_EQ(f.driver.num_free(), 256u);
}

TEST(VirtioQueue, SingleWritableDescriptor) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  auto head = f.driver.chain().writable(16).build();
  auto chain = f.queue.pop();
  ASSERT_TRUE(chain);
  EXPECT_EQ(chain->writable_length(), 16u);
  EXPECT_EQ(chain->copy_to(0, bytes("from the device")), 15u);
  EXPECT_TRUE(f.queue.push(std::move(*chain), 15));
  auto used = f.driver.get_used();
  ASSERT_TRUE(used);
  EXPECT_EQ(used->id, *head);
  EXPECT_EQ(used->text(), "from the device");
}

// A chain of `n` descriptors, the first half readable, the rest writable, direct or indirect.
struct ChainShape {
  int descriptors;
  bool indirect;
};

class VirtioQueueChains : public ::testing::TestWithParam<ChainShape> {};

TEST_P(VirtioQueueChains, ReadableThenWritableSegments) {
  const auto [n, indirect] = GetParam();
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  const int readable = (n + 1) / 2;
  const int writable = n - readable;
  std::string expected;
  auto builder = f.driver.chain();
  builder.indirect(indirect);
  for (int i = 0; i < readable; ++i) {
    const std::string part = "r" + std::to_string(i) + std::string(i, '.');
    expected += part;
    builder.readable(part);
  }
  for (int i = 0; i < writable; ++i) builder.writable(3 + i);
  const uint32_t writable_len = writable * 3 + writable * (writable - 1) / 2;
  auto head = builder.build();
  ASSERT_TRUE(head);
  EXPECT_EQ(f.driver.num_free(), 256u - (indirect ? 1 : n));

  auto chain = f.queue.pop();
  ASSERT_TRUE(chain) << f.queue.describe_fault();
  EXPECT_EQ(chain->head(), *head);
  EXPECT_EQ(chain->descriptor_count(), static_cast<size_t>(n));
  EXPECT_EQ(chain->readable().size(), static_cast<size_t>(readable));
  EXPECT_EQ(chain->writable().size(), static_cast<size_t>(writable));
  EXPECT_EQ(chain->readable_length(), expected.size());
  EXPECT_EQ(chain->writable_length(), writable_len);
  EXPECT_EQ(readable_text(*chain), expected);

  std::vector<uint8_t> reply(writable_len);
  std::iota(reply.begin(), reply.end(), uint8_t{1});
  EXPECT_EQ(chain->copy_to(0, reply), writable_len);
  ASSERT_TRUE(f.queue.push(std::move(*chain), writable_len));
  auto used = f.driver.get_used();
  ASSERT_TRUE(used);
  EXPECT_EQ(used->id, *head);
  EXPECT_EQ(used->len, writable_len);
  EXPECT_EQ(used->written, reply);
  EXPECT_EQ(f.driver.num_free(), 256u);
}

INSTANTIATE_TEST_SUITE_P(Shapes, VirtioQueueChains,
                         ::testing::Values(ChainShape{1, false}, ChainShape{4, false},
                                           ChainShape{16, false}, ChainShape{1, true},
                                           ChainShape{4, true}, ChainShape{16, true},
                                           ChainShape{40, false}, ChainShape{40, true}),
                         [](const auto& info) {
                           return std::to_string(info.param.descriptors) +
                                  (info.param.indirect ? "Indirect" : "Direct");
                         });

TEST(VirtioQueue, ChainUsingEveryDescriptorOfTheQueue) {
  QueueFixture f(8, kAllFeatures, 64 << 20, 8);
  ASSERT_TRUE(f.activate());
  auto b = f.driver.chain();
  for (int i = 0; i < 8; ++i) b.readable("x");
  ASSERT_TRUE(b.build());
  auto chain = f.queue.pop();
  ASSERT_TRUE(chain) << f.queue.describe_fault();
  EXPECT_EQ(chain->descriptor_count(), 8u);
}

TEST(VirtioQueue, DirectDescriptorsFollowedByAnIndirectTable) {
  // "The device MUST handle the case of zero or more normal chained descriptors followed by a
  // single descriptor with flags&VIRTQ_DESC_F_INDIRECT."
  QueueFixture f(16, kAllFeatures, 64 << 20, 16);
  ASSERT_TRUE(f.activate());
  const uint64_t header = f.guest.alloc(4);
  f.guest.write(header, bytes("head"));
  const uint64_t body = f.guest.alloc(8);
  const uint64_t table = f.guest.alloc(32);
  f.guest.write_obj(table, RawDescriptor{body, 8, kDescFlagWrite | kDescFlagNext, 1});
  f.guest.write_obj(table + 16, RawDescriptor{body, 4, kDescFlagWrite, 0});
  f.driver.write_descriptor(3, {header, 4, kDescFlagNext, 9});
  // WRITE on the descriptor pointing at the table must be ignored.
  f.driver.write_descriptor(9, {table, 32, kDescFlagIndirect | kDescFlagWrite, 0});
  f.driver.expose_raw(3);
  auto chain = f.queue.pop();
  ASSERT_TRUE(chain) << f.queue.describe_fault();
  EXPECT_EQ(chain->head(), 3);
  EXPECT_EQ(chain->readable_length(), 4u);
  EXPECT_EQ(chain->writable_length(), 12u);
  EXPECT_EQ(chain->descriptor_count(), 3u);
  EXPECT_EQ(readable_text(*chain), "head");
}

TEST(VirtioQueue, CopyHelpersHonourOffsetsAcrossSegments) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  ASSERT_TRUE(f.driver.chain()
                  .readable("abc")
                  .readable("defg")
                  .readable("hi")
                  .writable(2)
                  .writable(5)
                  .build());
  auto chain = f.queue.pop();
  ASSERT_TRUE(chain);
  EXPECT_EQ(readable_text(*chain, 0), "abcdefghi");
  EXPECT_EQ(readable_text(*chain, 2), "cdefghi");
  EXPECT_EQ(readable_text(*chain, 3), "defghi");
  EXPECT_EQ(readable_text(*chain, 8), "i");
  EXPECT_EQ(readable_text(*chain, 9), "");
  std::array<uint8_t, 4> small{};
  EXPECT_EQ(chain->copy_from(1, small), 4u);
  EXPECT_EQ(std::string(small.begin(), small.end()), "bcde");
  EXPECT_EQ(chain->copy_from(100, small), 0u);

  EXPECT_EQ(chain->copy_to(1, bytes("XYZ")), 3u);       // last byte of seg 0, two of seg 1
  EXPECT_EQ(chain->copy_to(5, bytes("too long")), 2u);  // only two bytes left
  EXPECT_EQ(chain->copy_to(7, bytes("x")), 0u);
  ASSERT_TRUE(f.queue.push(std::move(*chain), 7));
  auto used = f.driver.get_used();
  ASSERT_TRUE(used);
  EXPECT_EQ(used->written, (std::vector<uint8_t>{0, 'X', 'Y', 'Z', 0, 't', 'o'}));
}

TEST(VirtioQueue, IovecExportStartsAtOffsetAndIsBounded) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  ASSERT_TRUE(f.driver.chain().readable("abc").readable("defg").writable(4).writable(4).build());
  auto chain = f.queue.pop();
  ASSERT_TRUE(chain);
  auto all = chain->readable_iovecs();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].iov_len, 3u);
  EXPECT_EQ(all[1].iov_len, 4u);
  auto tail = chain->readable_iovecs(4);
  ASSERT_EQ(tail.size(), 1u);
  EXPECT_EQ(std::string(static_cast<const char*>(tail[0].iov_base), tail[0].iov_len), "efg");
  auto middle = chain->readable_iovecs(2, 3);
  ASSERT_EQ(middle.size(), 2u);
  EXPECT_EQ(std::string(static_cast<const char*>(middle[0].iov_base), middle[0].iov_len), "c");
  EXPECT_EQ(std::string(static_cast<const char*>(middle[1].iov_base), middle[1].iov_len), "de");
  EXPECT_TRUE(chain->readable_iovecs(7).empty());
  EXPECT_TRUE(chain->readable_iovecs(0, 0).empty());
  auto w = chain->writable_iovecs(3, 2);
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[0].iov_len, 1u);
  EXPECT_EQ(w[1].iov_len, 1u);
}

TEST(VirtioQueue, ReadvWritevGoStraightBetweenAFileDescriptorAndGuestBuffers) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  ASSERT_TRUE(f.driver.chain().readable("hello ").readable("world").build());
  ASSERT_TRUE(f.driver.chain().writable(3).writable(20).build());
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);

  // tx: the guest's bytes go to the pipe in two partial writes, tracked with an offset, the way
  // the console keeps a tx chain until all its bytes reached the backend.
  auto tx = f.queue.pop();
  ASSERT_TRUE(tx);
  size_t offset = 0;
  for (size_t limit : {4u, 100u}) {
    auto iov = tx->readable_iovecs(offset, limit);
    const ssize_t n = ::writev(fds[1], iov.data(), static_cast<int>(iov.size()));
    ASSERT_GT(n, 0);
    offset += static_cast<size_t>(n);
  }
  EXPECT_EQ(offset, tx->readable_length());
  ASSERT_TRUE(f.queue.push(std::move(*tx), 0));

  // rx: readv from the pipe straight into the guest's writable buffers.
  auto rx = f.queue.pop();
  ASSERT_TRUE(rx);
  auto iov = rx->writable_iovecs();
  const ssize_t n = ::readv(fds[0], iov.data(), static_cast<int>(iov.size()));
  ASSERT_EQ(n, 11);
  ASSERT_TRUE(f.queue.push(std::move(*rx), static_cast<uint32_t>(n)));
  ::close(fds[0]);
  ::close(fds[1]);

  auto used = f.driver.get_all_used();
  ASSERT_EQ(used.size(), 2u);
  EXPECT_EQ(used[1].text(), "hello world");
}

TEST(VirtioQueue, ChainsCanBeHeldAndCompletedOutOfOrder) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  auto a = f.driver.chain().readable("first").build();
  auto b = f.driver.chain().readable("second").build();
  auto held = f.queue.pop();
  auto next = f.queue.pop();
  ASSERT_TRUE(held && next);
  ASSERT_TRUE(f.queue.push(std::move(*next), 0));
  auto used = f.driver.get_used();
  ASSERT_TRUE(used);
  EXPECT_EQ(used->id, *b);
  EXPECT_FALSE(f.driver.get_used());
  ASSERT_TRUE(f.queue.push(std::move(*held), 0));
  used = f.driver.get_used();
  ASSERT_TRUE(used);
  EXPECT_EQ(used->id, *a);
}

TEST(VirtioQueue, AChainIsReturnedExactlyOnce) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  ASSERT_TRUE(f.driver.chain().readable("x").build());
  auto chain = f.queue.pop();
  ASSERT_TRUE(chain);
  Chain moved = std::move(*chain);
  EXPECT_FALSE(chain->valid());
  EXPECT_FALSE(f.queue.push(std::move(*chain), 0));  // the moved-from shell
  EXPECT_TRUE(f.queue.push(std::move(moved), 0));
  EXPECT_FALSE(moved.valid());
  EXPECT_FALSE(f.queue.push(std::move(moved), 0));  // already pushed
  EXPECT_EQ(f.queue.used_idx(), 1);
  EXPECT_EQ(f.driver.used_idx(), 1);
  EXPECT_FALSE(f.queue.push(Chain{}, 0));
}

TEST(VirtioQueue, ChainsPoppedBeforeAResetAreStale) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  ASSERT_TRUE(f.driver.chain().readable("old").build());
  auto chain = f.queue.pop();
  ASSERT_TRUE(chain);
  ASSERT_TRUE(f.reset_and_reactivate());
  EXPECT_FALSE(f.queue.push(std::move(*chain), 0));
  EXPECT_EQ(f.driver.used_idx(), 0);
  EXPECT_EQ(f.queue.used_idx(), 0);
}

TEST(VirtioQueue, WrittenLengthIsClampedToTheWritablePart) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  ASSERT_TRUE(f.driver.chain().readable("abc").writable(4).build());
  auto chain = f.queue.pop();
  ASSERT_TRUE(f.queue.push(std::move(*chain), 1000));
  EXPECT_EQ(f.driver.get_used()->len, 4u);
}

TEST(VirtioQueue, FullRingPopsEveryEntryOnce) {
  QueueFixture f(16, kAllFeatures, 64 << 20, 16);
  ASSERT_TRUE(f.activate());
  for (int i = 0; i < 16; ++i) ASSERT_TRUE(f.driver.chain().readable(std::to_string(i)).build());
  EXPECT_FALSE(f.driver.chain().readable("no room").build());
  std::vector<Chain> chains;
  while (auto c = f.queue.pop()) chains.push_back(std::move(*c));
  ASSERT_EQ(chains.size(), 16u);
  EXPECT_FALSE(f.queue.failed());
  for (size_t i = 0; i < chains.size(); ++i) EXPECT_EQ(readable_text(chains[i]), std::to_string(i));
  for (auto& c : chains) ASSERT_TRUE(f.queue.push(std::move(c), 0));
  EXPECT_EQ(f.driver.get_all_used().size(), 16u);
}

TEST(VirtioQueue, IndicesWrapAround65536) {
  // 70000 chains through a 4-entry queue, in batches of up to 3: every 16-bit index wraps once.
  QueueFixture f(4, kAllFeatures, 64 << 20, 4);
  ASSERT_TRUE(f.activate());
  uint32_t sent = 0;
  uint32_t received = 0;
  const uint64_t buffer = f.guest.alloc(8);
  while (received < 70000) {
    const int batch = 1 + static_cast<int>(sent % 3);
    for (int i = 0; i < batch; ++i) {
      f.guest.write_obj(buffer, sent);
      ASSERT_TRUE(f.driver.chain().raw(buffer, 4, 0).writable(4).build());
      ++sent;
    }
    for (int i = 0; i < batch; ++i) {
      auto chain = f.queue.pop();
      ASSERT_TRUE(chain) << f.queue.describe_fault();
      uint32_t value = 0;
      chain->copy_from(0, std::span(reinterpret_cast<uint8_t*>(&value), 4));
      value += 1;
      chain->copy_to(0, std::span(reinterpret_cast<const uint8_t*>(&value), 4));
      ASSERT_TRUE(f.queue.push(std::move(*chain), 4));
    }
    EXPECT_FALSE(f.queue.pop());
    // The guest reuses one readable buffer, so only the last value of a batch survives there;
    // check the completions arrive in order and complete.
    auto used = f.driver.get_all_used();
    ASSERT_EQ(used.size(), static_cast<size_t>(batch));
    received += batch;
  }
  EXPECT_FALSE(f.queue.failed());
  EXPECT_EQ(f.queue.last_avail_idx(), static_cast<uint16_t>(sent));
  EXPECT_EQ(f.driver.used_idx(), static_cast<uint16_t>(received));
  EXPECT_LT(f.driver.used_idx(), 70000 - 65536 + 1);
}

// ---- Used-buffer notifications (device -> driver).

TEST(VirtioQueueNeedEvent, MatchesTheSpecDefinitionIncludingWrapAround) {
  // Notify iff the entry at `event` was written by moving the index from old to new, i.e.
  // event is in [old, new) modulo 2^16.
  for (uint32_t old : {0u, 1u, 100u, 32767u, 32768u, 65000u, 65534u, 65535u}) {
    for (uint32_t delta = 0; delta < 300; delta += 7) {
      const uint16_t o = static_cast<uint16_t>(old);
      const uint16_t n = static_cast<uint16_t>(old + delta);
      for (int e = -300; e < 600; ++e) {
        const uint16_t event = static_cast<uint16_t>(old + e);
        const bool in_window = static_cast<uint16_t>(event - o) < delta;
        ASSERT_EQ(need_event(event, n, o), in_window) << old << " " << delta << " " << e;
      }
    }
  }
  static_assert(need_event(0, 1, 0));
  static_assert(!need_event(1, 1, 0));
  static_assert(need_event(65535, 0, 65535));
  static_assert(need_event(65535, 2, 65534));
  static_assert(!need_event(2, 2, 65534));
  static_assert(!need_event(5, 5, 5));
}

// Pushes one readable chain through the queue.
void round_trip(QueueFixture& f) {
  ASSERT_TRUE(f.driver.chain().readable("x").build());
  auto chain = f.queue.pop();
  ASSERT_TRUE(chain);
  ASSERT_TRUE(f.queue.push(std::move(*chain), 0));
}

TEST(VirtioQueueInterrupts, WithoutEventIdxFollowAvailFlags) {
  QueueFixture f(256, kNoEventIdx);
  ASSERT_TRUE(f.activate());
  EXPECT_FALSE(f.queue.should_interrupt());  // nothing pushed
  round_trip(f);
  EXPECT_TRUE(f.queue.should_interrupt());
  EXPECT_FALSE(f.queue.should_interrupt());  // already covered
  f.driver.disable_interrupts();             // avail.flags = NO_INTERRUPT
  round_trip(f);
  EXPECT_FALSE(f.queue.should_interrupt());
  f.driver.set_avail_flags(2);  // only bit 0 has a meaning
  round_trip(f);
  EXPECT_TRUE(f.queue.should_interrupt());
}

TEST(VirtioQueueInterrupts, WithEventIdxFollowUsedEvent) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  f.driver.set_avail_flags(kAvailFlagNoInterrupt);  // must be ignored with EVENT_IDX
  // used_event 0 (rings start zeroed): notify after the first buffer...
  round_trip(f);
  EXPECT_TRUE(f.queue.should_interrupt());
  // ...and not after the second while the driver has not moved used_event.
  round_trip(f);
  EXPECT_FALSE(f.queue.should_interrupt());
  // "until the device writes an entry with an index specified by used_event": event 5 fires
  // when used.idx goes 5 -> 6, not before.
  f.driver.set_used_event(5);
  for (int i = 2; i < 5; ++i) {
    round_trip(f);
    EXPECT_FALSE(f.queue.should_interrupt()) << i;
  }
  round_trip(f);  // writes entry 5
  EXPECT_TRUE(f.queue.should_interrupt());
  // A batch whose range covers the event notifies once.
  f.driver.set_used_event(8);
  round_trip(f);
  round_trip(f);
  round_trip(f);  // entries 6, 7, 8
  EXPECT_TRUE(f.queue.should_interrupt());
  // An event the device already passed does not fire.
  f.driver.set_used_event(3);
  round_trip(f);
  EXPECT_FALSE(f.queue.should_interrupt());
}

TEST(VirtioQueueInterrupts, EventIdxAcrossTheWrap) {
  QueueFixture f(2, kAllFeatures, 64 << 20, 2);
  ASSERT_TRUE(f.activate());
  const uint64_t buffer = f.guest.alloc(1);
  auto cycle = [&] {
    ASSERT_TRUE(f.driver.chain().raw(buffer, 1, 0).build());
    auto chain = f.queue.pop();
    ASSERT_TRUE(chain);
    ASSERT_TRUE(f.queue.push(std::move(*chain), 0));
    ASSERT_TRUE(f.driver.get_used());
  };
  f.driver.disable_interrupts();  // keep used_event where we put it
  f.driver.set_used_event(65535);
  for (int i = 0; i < 65535; ++i) cycle();
  EXPECT_FALSE(f.queue.should_interrupt());  // entries 0..65534 written
  cycle();                                   // entry 65535, used.idx wraps to 0
  EXPECT_EQ(f.driver.used_idx(), 0);
  EXPECT_TRUE(f.queue.should_interrupt());
  f.driver.set_used_event(0);
  cycle();  // entry 0 (the second time round)
  EXPECT_TRUE(f.queue.should_interrupt());
}

TEST(VirtioQueueInterrupts, MoreThan65535PushesBetweenChecksStillNotify) {
  QueueFixture f(2, kAllFeatures, 64 << 20, 2);
  ASSERT_TRUE(f.activate());
  const uint64_t buffer = f.guest.alloc(1);
  f.driver.disable_interrupts();
  f.driver.set_used_event(7);
  for (int i = 0; i < 65536; ++i) {
    ASSERT_TRUE(f.driver.chain().raw(buffer, 1, 0).build());
    auto chain = f.queue.pop();
    ASSERT_TRUE(f.queue.push(std::move(*chain), 0));
    ASSERT_TRUE(f.driver.get_used());
  }
  // The 16-bit window is useless after a full wrap; the queue errs on the side of notifying.
  EXPECT_TRUE(f.queue.should_interrupt());
}

// ---- Available-buffer notifications (driver -> device).

TEST(VirtioQueueNotifications, WithEventIdxPopOnEmptyArmsAvailEvent) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  // Three chains in one batch: the first needs a kick (avail_event 0 from activation).
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(f.driver.chain().readable("x").add());
  f.driver.publish();
  EXPECT_TRUE(f.driver.kick_needed());
  while (auto c = f.queue.pop()) ASSERT_TRUE(f.queue.push(std::move(*c), 0));
  // Draining the ring re-armed the event at the next entry the driver will write.
  EXPECT_EQ(f.driver.avail_event(), 3);
  ASSERT_TRUE(f.driver.chain().readable("y").build());
  EXPECT_TRUE(f.driver.kick_needed());
  // The device has not looked again: further buffers need no kick.
  ASSERT_TRUE(f.driver.chain().readable("z").build());
  EXPECT_FALSE(f.driver.kick_needed());
  EXPECT_TRUE(f.queue.pop());
  EXPECT_TRUE(f.queue.pop());
  EXPECT_FALSE(f.queue.pop());
  EXPECT_EQ(f.driver.avail_event(), 5);
  EXPECT_EQ(f.driver.used_flags(), 0);  // "The device MUST set flags to 0" with EVENT_IDX
}

TEST(VirtioQueueNotifications, WithEventIdxDisableLeavesAvailEventAndEnableRechecks) {
  QueueFixture f;
  ASSERT_TRUE(f.activate());
  EXPECT_FALSE(f.queue.pop());  // arms at 0
  f.queue.disable_notification();
  EXPECT_FALSE(f.queue.notification_enabled());
  ASSERT_TRUE(f.driver.chain().readable("a").build());
  EXPECT_TRUE(f.driver.kick_needed());  // the one kick an armed event still allows
  EXPECT_TRUE(f.queue.pop());
  EXPECT_FALSE(f.queue.pop());  // disabled: no re-arm
  EXPECT_EQ(f.driver.avail_event(), 0);
  ASSERT_TRUE(f.driver.chain().readable("b").build());
  EXPECT_FALSE(f.driver.kick_needed());
  // Enabling notices the buffer that arrived without a kick.
  EXPECT_TRUE(f.queue.enable_notification());
  EXPECT_EQ(f.driver.avail_event(), 1);  // avail.idx as the device last saw it: "b" is entry 1
  EXPECT_TRUE(f.queue.pop());
  EXPECT_FALSE(f.queue.enable_notification());
  ASSERT_TRUE(f.driver.chain().readable("c").build());
  EXPECT_TRUE(f.driver.kick_needed());
}

TEST(VirtioQueueNotifications, WithoutEventIdxUseTheNoNotifyFlag) {
  QueueFixture f(256, kNoEventIdx);
  ASSERT_TRUE(f.activate());
  EXPECT_EQ(f.driver.used_flags(), 0);
  ASSERT_TRUE(f.driver.chain().readable("a").build());
  EXPECT_TRUE(f.driver.kick_needed());
  f.queue.disable_notification();
  EXPECT_EQ(f.driver.used_flags(), kUsedFlagNoNotify);
  ASSERT_TRUE(f.driver.chain().readable("b").build());
  EXPECT_FALSE(f.driver.kick_needed());
  EXPECT_TRUE(f.queue.enable_notification());  // two pending
  EXPECT_EQ(f.driver.used_flags(), 0);
  EXPECT_TRUE(f.queue.pop());
  EXPECT_TRUE(f.queue.pop());
  EXPECT_FALSE(f.queue.enable_notification());
  ASSERT_TRUE(f.driver.chain().readable("c").build());
  EXPECT_TRUE(f.driver.kick_needed());
}

TEST(VirtioQueueNotifications, ResetStartsWithNotificationsEnabled) {
  QueueFixture f(256, kNoEventIdx);
  ASSERT_TRUE(f.activate());
  f.queue.disable_notification();
  ASSERT_TRUE(f.reset_and_reactivate());
  EXPECT_TRUE(f.queue.notification_enabled());
  EXPECT_EQ(f.driver.used_flags(), 0);
}

}  // namespace
}  // namespace pier::virtio::testing
