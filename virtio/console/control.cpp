#include "virtio/console/control.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace pier::virtio::console {
namespace {

void put16(uint8_t* at, uint16_t v) {
  std::memcpy(at, &v, 2);  // little-endian host (static_assert in virtio/virtio.hpp)
}
void put32(uint8_t* at, uint32_t v) {
  std::memcpy(at, &v, 4);
}

}  // namespace

std::string_view to_string(ControlEvent event) {
  switch (event) {
    case ControlEvent::kDeviceReady: return "DEVICE_READY";
    case ControlEvent::kPortAdd: return "PORT_ADD";
    case ControlEvent::kPortRemove: return "PORT_REMOVE";
    case ControlEvent::kPortReady: return "PORT_READY";
    case ControlEvent::kConsolePort: return "CONSOLE_PORT";
    case ControlEvent::kResize: return "RESIZE";
    case ControlEvent::kPortOpen: return "PORT_OPEN";
    case ControlEvent::kPortName: return "PORT_NAME";
  }
  return "unknown";
}

std::string_view to_string(ControlError error) {
  switch (error) {
    case ControlError::kOk: return "ok";
    case ControlError::kShort: return "shorter than the 8-byte header";
    case ControlError::kUnknownEvent: return "unknown event";
    case ControlError::kHostOnlyEvent: return "event only the device sends";
    case ControlError::kBadValue: return "value other than 0 or 1";
    case ControlError::kBadId: return "port id out of range";
  }
  return "unknown";
}

size_t encoded_size(const ControlMessage& message) {
  switch (message.event) {
    case ControlEvent::kPortName: return kControlHeaderSize + message.name.size();
    case ControlEvent::kResize: return kControlHeaderSize + 4;
    default: return kControlHeaderSize;
  }
}

size_t encode(const ControlMessage& message, ResizeLayout layout, std::span<uint8_t> out) {
  // Build the whole message in a small local first for the fixed-size kinds, then copy; names
  // are copied straight from the string.
  uint8_t fixed[kControlHeaderSize + 4];
  put32(fixed, message.id);
  put16(fixed + 4, static_cast<uint16_t>(message.event));
  put16(fixed + 6, message.value);
  size_t fixed_len = kControlHeaderSize;
  if (message.event == ControlEvent::kResize) {
    const bool rows_first = layout == ResizeLayout::kRowsCols;
    put16(fixed + 8, rows_first ? message.rows : message.cols);
    put16(fixed + 10, rows_first ? message.cols : message.rows);
    fixed_len += 4;
  }
  size_t n = std::min(fixed_len, out.size());
  std::memcpy(out.data(), fixed, n);
  if (message.event == ControlEvent::kPortName && n == kControlHeaderSize) {
    const size_t name_len = std::min(message.name.size(), out.size() - n);
    std::memcpy(out.data() + n, message.name.data(), name_len);
    n += name_len;
  }
  return n;
}

ParseResult parse_driver_message(std::span<const uint8_t> bytes, uint32_t max_nr_ports) {
  ParseResult r;
  if (bytes.size() < kControlHeaderSize) {
    r.error = ControlError::kShort;
    return r;
  }
  // One copy out of guest memory; only the copy is looked at (the guest may rewrite the buffer).
  std::memcpy(&r.header.id, bytes.data(), 4);
  std::memcpy(&r.header.event, bytes.data() + 4, 2);
  std::memcpy(&r.header.value, bytes.data() + 6, 2);
  if (r.header.event > kMaxControlEvent) {
    r.error = ControlError::kUnknownEvent;
    return r;
  }
  const auto event = static_cast<ControlEvent>(r.header.event);
  switch (event) {
    case ControlEvent::kDeviceReady:
    case ControlEvent::kPortReady:
    case ControlEvent::kPortOpen:
      break;
    default:
      r.error = ControlError::kHostOnlyEvent;
      return r;
  }
  if (r.header.value > 1) {
    r.error = ControlError::kBadValue;
    return r;
  }
  if (event != ControlEvent::kDeviceReady && r.header.id >= max_nr_ports) {
    r.error = ControlError::kBadId;
    return r;
  }
  r.message.event = event;
  r.message.id = r.header.id;
  r.message.value = r.header.value == 1;
  return r;
}

std::optional<std::string> port_name_error(std::string_view name) {
  if (name.empty()) return std::string("a port name cannot be empty");
  if (name.size() > kMaxPortNameLength) {
    return fmt::format("port name is {} bytes long; at most {} are allowed", name.size(),
                       kMaxPortNameLength);
  }
  if (name == "." || name == "..") {
    return fmt::format("port name '{}' is not usable as /dev/virtio-ports/{}", name, name);
  }
  for (const char c : name) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f || c == '/' || c == '\\') {
      return fmt::format(
          "port name contains byte {:#04x}: use printable ASCII without spaces, '/' or '\\' "
          "(e.g. org.pier.agent.0)",
          u);
    }
  }
  return std::nullopt;
}

}  // namespace pier::virtio::console
