#pragma once
// virtio-console control messages (virtio 1.2 §5.3.6.2 "Multiport Device Operation"): the wire
// format, the event numbers, encoding of device->driver messages into a guest buffer and
// validation of driver->device messages. Pure functions over bytes, no device state, so the
// parser is fuzzed on its own (tests/fuzz/console_control_fuzz.cpp).
//
// Wire format: struct virtio_console_control { le32 id; le16 event; le16 value; } (8 bytes),
// followed for PORT_NAME by the name bytes and for RESIZE by two le16 sizes.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace pier::virtio::console {

// Feature bits (virtio 1.2 §5.3.3).
inline constexpr uint64_t kFeatureSize = 1ull << 0;        // VIRTIO_CONSOLE_F_SIZE
inline constexpr uint64_t kFeatureMultiport = 1ull << 1;   // VIRTIO_CONSOLE_F_MULTIPORT
inline constexpr uint64_t kFeatureEmergWrite = 1ull << 2;  // VIRTIO_CONSOLE_F_EMERG_WRITE

// "VIRTIO_CONSOLE_BAD_ID": the id of DEVICE_READY.
inline constexpr uint32_t kBadId = 0xffffffffu;

// Linux's VIRTCONS_MAX_PORTS is 0x8000; pier caps max_nr_ports lower so that the queues
// (2 * (max + 1) = 1024) and MSI-X vectors (queues + 1 = 1025) stay within what the PCI
// transport offers (a 2048-entry MSI-X table at most).
inline constexpr uint32_t kMaxPortsLimit = 511;
inline constexpr uint32_t kDefaultMaxPorts = 31;

enum class ControlEvent : uint16_t {
  kDeviceReady = 0,  // driver -> device: value 1 = ok, 0 = driver failed
  kPortAdd = 1,      // device -> driver
  kPortRemove = 2,   // device -> driver
  kPortReady = 3,    // driver -> device: value 1 = ok, 0 = failed to add
  kConsolePort = 4,  // device -> driver
  kResize = 5,       // device -> driver, + two le16 sizes
  kPortOpen = 6,     // both ways: value 0/1
  kPortName = 7,     // device -> driver, + name bytes
};
inline constexpr uint16_t kMaxControlEvent = 7;
std::string_view to_string(ControlEvent event);

inline constexpr size_t kControlHeaderSize = 8;

struct ControlHeader {
  uint32_t id = 0;
  uint16_t event = 0;
  uint16_t value = 0;
};

// The RESIZE payload's field order. Linux read it as { u16 rows; u16 cols; } from the first
// multiport driver (2.6.35) until commit 5326ab737a47 ("virtio_console: fix order of fields
// cols and rows"), which switched to the spec's { le16 cols; le16 rows; }. Debian 12's 6.1
// kernel reads rows first, hence the default. The config-space fields are { cols, rows } in
// both the spec and every Linux version (and Linux ignores them in multiport mode).
enum class ResizeLayout : uint8_t {
  kRowsCols,  // Linux before 5326ab737a47 (6.1 included): rows first
  kColsRows,  // virtio spec and Linux after 5326ab737a47: cols first
};

// A device->driver message waiting on the host for a control-rx buffer.
struct ControlMessage {
  uint32_t id = 0;
  ControlEvent event = ControlEvent::kPortAdd;
  uint16_t value = 0;
  uint16_t cols = 0, rows = 0;  // RESIZE only
  std::string name;             // PORT_NAME only (sent without a terminating NUL)
  uint64_t serial = 0;          // the port incarnation it belongs to (device bookkeeping)
};

// The bytes of `message` (header + payload) as the driver sees them in its buffer.
size_t encoded_size(const ControlMessage& message);
// Writes at most out.size() bytes of the encoding into `out`; returns the number written. A
// PORT_NAME longer than the buffer is cut (the caller decides whether that is acceptable).
size_t encode(const ControlMessage& message, ResizeLayout layout, std::span<uint8_t> out);

// Why a driver->device message was refused. Every value but kOk is logged once and ignored.
enum class ControlError : uint8_t {
  kOk = 0,
  kShort,            // fewer than 8 bytes
  kUnknownEvent,     // event > 7
  kHostOnlyEvent,    // PORT_ADD, PORT_REMOVE, CONSOLE_PORT, RESIZE, PORT_NAME from the driver
  kBadValue,         // DEVICE_READY / PORT_READY / PORT_OPEN with a value other than 0 or 1
  kBadId,            // a port id >= max_nr_ports (DEVICE_READY's id is not checked)
};
std::string_view to_string(ControlError error);

// A validated driver->device message.
struct DriverMessage {
  ControlEvent event = ControlEvent::kDeviceReady;
  uint32_t id = 0;
  bool value = false;
};

struct ParseResult {
  ControlError error = ControlError::kOk;
  ControlHeader header;  // as read, for the log line
  DriverMessage message;
};

// Parses and validates one message from the control transmitq (the bytes of one chain).
// Trailing bytes after the header are ignored (Linux never sends any).
ParseResult parse_driver_message(std::span<const uint8_t> bytes, uint32_t max_nr_ports);

// Port names become /sys/class/virtio-ports/vportNpM/name and the udev symlink
// /dev/virtio-ports/<name>: 1..255 bytes of printable ASCII without space, '/' or '\\', and not
// "." or "..". Returns the reason when `name` is not acceptable.
inline constexpr size_t kMaxPortNameLength = 255;
std::optional<std::string> port_name_error(std::string_view name);

}  // namespace pier::virtio::console
