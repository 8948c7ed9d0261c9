#pragma once
// Constants shared by every virtio device and transport (virtio 1.2, "Basic Facilities of a
// Virtio Device"). Only the modern (VIRTIO_F_VERSION_1) interface is implemented: rings and
// config fields are little-endian, which is the host's byte order on x86-64, so ring fields are
// read and written without swapping.
#include <bit>
#include <cstdint>

namespace pier::virtio {

static_assert(std::endian::native == std::endian::little,
              "virtio 1.x rings are little-endian; pier reads them without byte swaps");

// Device status bits ("Device Status Field").
inline constexpr uint8_t kStatusAcknowledge = 0x01;
inline constexpr uint8_t kStatusDriver = 0x02;
inline constexpr uint8_t kStatusDriverOk = 0x04;
inline constexpr uint8_t kStatusFeaturesOk = 0x08;
// "The device has experienced an error from which it can't recover." The driver must reset it.
inline constexpr uint8_t kStatusNeedsReset = 0x40;
inline constexpr uint8_t kStatusFailed = 0x80;

// Feature bits understood by the split virtqueue ("Reserved Feature Bits").
inline constexpr uint64_t kFeatureRingIndirectDesc = 1ull << 28;  // VIRTIO_RING_F_INDIRECT_DESC
inline constexpr uint64_t kFeatureRingEventIdx = 1ull << 29;      // VIRTIO_RING_F_EVENT_IDX
inline constexpr uint64_t kFeatureVersion1 = 1ull << 32;          // VIRTIO_F_VERSION_1

// What every pier device offers on top of its own feature bits: the Queue implements all three.
inline constexpr uint64_t kQueueFeatures =
    kFeatureVersion1 | kFeatureRingIndirectDesc | kFeatureRingEventIdx;

// Device ids ("Device Types"); virtio-pci uses 0x1040 + id.
inline constexpr uint32_t kDeviceIdNet = 1;
inline constexpr uint32_t kDeviceIdBlock = 2;
inline constexpr uint32_t kDeviceIdConsole = 3;
inline constexpr uint32_t kDeviceIdEntropy = 4;

// "The maximum Queue Size value is 32768."
inline constexpr uint16_t kMaxQueueSize = 32768;

}  // namespace pier::virtio
