#pragma once
// The machine description pier hands the guest: a flattened device tree built with libfdt,
// passed through the boot protocol's setup_data (SETUP_DTB) and dumpable with
// `pier run --dump-dtb FILE` (`dtc -I dtb FILE` shows it). Linux kernels built with CONFIG_OF
// read it; the project's bare-metal guests find their devices in it. pier-specific facts use
// "pier," properties.
#include <cstdint>
#include <string>
#include <vector>

#include "vmm/guest_memory.hpp"

namespace pier::boot {

struct FdtPciDevice {
  unsigned slot = 0;
  uint16_t vendor = 0, device = 0;
  std::string name;
  uint64_t bar0 = 0, bar0_size = 0;
  uint64_t msix_bar = 0, msix_bar_size = 0;
  unsigned msix_vectors = 0;
  unsigned intx_gsi = 0;
};

struct FdtPort {
  uint32_t id = 0;
  std::string name;
  bool console = false;
  std::string backend;
};

struct MachineDescription {
  std::vector<MemoryRegion> memory;
  unsigned cpus = 1;
  std::string cmdline;
  std::vector<FdtPciDevice> pci;
  std::vector<FdtPort> console_ports;  // on the virtio-console device, if any
  unsigned console_max_ports = 0;
};

// Throws pier::Error if libfdt fails (it only can when the tree outgrows its buffer).
std::vector<uint8_t> build_fdt(const MachineDescription& machine);

// Linux's SETUP_DTB (arch/x86/include/uapi/asm/bootparam.h).
constexpr uint32_t kSetupDtb = 2;
// Writes a setup_data node {next = 0, type = SETUP_DTB, len} followed by the blob at `address`;
// returns the address for boot_params.hdr.setup_data. Throws when it does not fit `max_bytes`.
uint64_t write_setup_dtb(const GuestMemory& memory, uint64_t address, uint64_t max_bytes,
                         const std::vector<uint8_t>& dtb);

}  // namespace pier::boot
