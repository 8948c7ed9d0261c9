#pragma once
// RAII wrappers over the KVM ioctl API: the system (/dev/kvm), a VM and its vCPUs. Every ioctl
// failure at set-up throws pier::Error naming the call; run-time calls return errno to the caller.
#include <linux/kvm.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "vmm/fd.hpp"

namespace pier {

class Kvm {
 public:
  // Opens /dev/kvm (or `path`) and checks the API version. Throws with what to do when the device
  // is missing or not accessible.
  explicit Kvm(const std::string& path = "/dev/kvm");

  int fd() const { return fd_.get(); }
  int check_extension(long capability) const;
  size_t vcpu_mmap_size() const { return vcpu_mmap_size_; }
  // The largest vCPU count KVM accepts (KVM_CAP_MAX_VCPUS, else the recommended count).
  unsigned max_vcpus() const;
  // KVM_GET_SUPPORTED_CPUID.
  std::vector<kvm_cpuid_entry2> supported_cpuid() const;
  // Names of the loaded kvm vendor modules, e.g. "kvm_intel", "kvm_amd", "kvm_pvm".
  static std::vector<std::string> loaded_vendor_modules();

 private:
  UniqueFd fd_;
  size_t vcpu_mmap_size_ = 0;
};

class Vm {
 public:
  explicit Vm(const Kvm& kvm);

  int fd() const { return fd_.get(); }
  const Kvm& kvm() const { return *kvm_; }

  void set_tss_address(uint64_t address);
  void set_identity_map_address(uint64_t address);
  void set_user_memory_region(uint32_t slot, uint64_t guest_phys, uint64_t size, void* host,
                              uint32_t flags = 0);
  void create_irqchip();
  void create_pit2();
  // Raises (level 1) or lowers (0) an interrupt line on the in-kernel irqchip.
  int set_irq_line(uint32_t gsi, bool level);
  // Ties an eventfd to a GSI: a write to `fd` injects the GSI's interrupt in the kernel.
  void assign_irqfd(int fd, uint32_t gsi);
  void deassign_irqfd(int fd, uint32_t gsi);
  // A guest write of `len` bytes to `address` (MMIO, or a port when `pio`) signals `fd` in the
  // kernel without an exit to pier.
  void assign_ioeventfd(int fd, uint64_t address, uint32_t len, bool pio = false);
  void deassign_ioeventfd(int fd, uint64_t address, uint32_t len, bool pio = false);

 private:
  const Kvm* kvm_;
  UniqueFd fd_;
};

class Vcpu {
 public:
  Vcpu(const Vm& vm, unsigned index);

  unsigned index() const { return index_; }
  int fd() const { return fd_.get(); }
  kvm_run* run_data() const { return run_.as<kvm_run>(); }

  // KVM_RUN; returns 0 or the errno (EINTR when a signal kicked the thread out).
  int run();

  kvm_regs regs() const;
  void set_regs(const kvm_regs& regs);
  kvm_sregs sregs() const;
  void set_sregs(const kvm_sregs& sregs);
  kvm_fpu fpu() const;
  void set_fpu(const kvm_fpu& fpu);
  void set_cpuid(std::span<const kvm_cpuid_entry2> entries);
  void set_msrs(std::span<const kvm_msr_entry> entries);
  // Reads the given MSR indices; missing ones come back as 0 with ok=false.
  std::vector<kvm_msr_entry> msrs(std::span<const uint32_t> indices) const;
  kvm_lapic_state lapic() const;
  void set_lapic(const kvm_lapic_state& state);
  kvm_vcpu_events events() const;
  void set_events(const kvm_vcpu_events& events);
  kvm_mp_state mp_state() const;
  void set_mp_state(uint32_t state);
  void set_guest_debug(const kvm_guest_debug& debug);

  // Multi-line register dump for fatal errors.
  std::string dump() const;

 private:
  void ioctl_or_throw(unsigned long request, void* arg, const char* what) const;

  unsigned index_;
  UniqueFd fd_;
  Mapping run_;
};

}  // namespace pier
