#include "vmm/kvm.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/ioctl.h>

#include <cstring>
#include <filesystem>

#include "vmm/error.hpp"
#include "vmm/kvm_abi.hpp"

namespace pier {
namespace {

template <class T>
void checked_ioctl(int fd, unsigned long request, T arg, const char* what) {
  if (::ioctl(fd, request, arg) < 0) throw system_error(what);
}

}  // namespace

Kvm::Kvm(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) {
      throw Error(
          fmt::format("{} does not exist: this host has no KVM (load kvm_intel or "
                      "kvm_amd, or enable nested virtualization). To try pier anyway, run it "
                      "in a nested KVM host from pier's source tree: "
                      "tools/kvm-host -- build/pier run ...",
                      path));
    }
    if (err == EACCES || err == EPERM) {
      throw Error(
          fmt::format("cannot open {}: permission denied (add your user to the 'kvm' "
                      "group or run as root)",
                      path));
    }
    throw system_error(fmt::format("cannot open {}", path), err);
  }
  fd_.reset(fd);
  const int version = ::ioctl(fd, KVM_GET_API_VERSION, 0);
  if (version != KVM_API_VERSION) {
    throw Error(fmt::format("{}: KVM API version {} is not the supported {}", path, version,
                            KVM_API_VERSION));
  }
  const int size = ::ioctl(fd, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (size <= 0) throw system_error("KVM_GET_VCPU_MMAP_SIZE");
  vcpu_mmap_size_ = static_cast<size_t>(size);
}

int Kvm::check_extension(long capability) const {
  const int r = ::ioctl(fd_.get(), KVM_CHECK_EXTENSION, capability);
  return r < 0 ? 0 : r;
}

unsigned Kvm::max_vcpus() const {
  int n = check_extension(KVM_CAP_MAX_VCPUS);
  if (n <= 0) n = check_extension(KVM_CAP_NR_VCPUS);
  return n > 0 ? static_cast<unsigned>(n) : 4;
}

std::vector<kvm_cpuid_entry2> Kvm::supported_cpuid() const {
  // KVM_GET_SUPPORTED_CPUID fails with E2BIG until the buffer is large enough.
  for (size_t count = 128; count <= 4096; count *= 2) {
    kvm_abi::ArrayBuffer<kvm_cpuid_entry2> buffer(count);
    if (::ioctl(fd_.get(), kvm_abi::kGetSupportedCpuid, buffer.arg()) == 0) {
      return buffer.entries();
    }
    if (errno != E2BIG) throw system_error("KVM_GET_SUPPORTED_CPUID");
  }
  throw Error("KVM_GET_SUPPORTED_CPUID: too many entries");
}

std::vector<std::string> Kvm::loaded_vendor_modules() {
  std::vector<std::string> found;
  for (const char* name : {"kvm_intel", "kvm_amd", "kvm_pvm"}) {
    std::error_code ec;
    if (std::filesystem::exists(std::string("/sys/module/") + name, ec)) found.emplace_back(name);
  }
  return found;
}

Vm::Vm(const Kvm& kvm) : kvm_(&kvm) {
  int fd = -1;
  // KVM_CREATE_VM can fail transiently with EINTR.
  do {
    fd = ::ioctl(kvm.fd(), KVM_CREATE_VM, 0);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) throw system_error("KVM_CREATE_VM");
  fd_.reset(fd);
}

void Vm::set_tss_address(uint64_t address) {
  checked_ioctl(fd(), KVM_SET_TSS_ADDR, static_cast<unsigned long>(address), "KVM_SET_TSS_ADDR");
}

void Vm::set_identity_map_address(uint64_t address) {
  uint64_t a = address;
  checked_ioctl(fd(), KVM_SET_IDENTITY_MAP_ADDR, &a, "KVM_SET_IDENTITY_MAP_ADDR");
}

void Vm::set_user_memory_region(uint32_t slot, uint64_t guest_phys, uint64_t size, void* host,
                                uint32_t flags) {
  kvm_userspace_memory_region region{};
  region.slot = slot;
  region.flags = flags;
  region.guest_phys_addr = guest_phys;
  region.memory_size = size;
  region.userspace_addr = reinterpret_cast<uint64_t>(host);
  if (::ioctl(fd(), KVM_SET_USER_MEMORY_REGION, &region) < 0) {
    throw system_error(fmt::format("KVM_SET_USER_MEMORY_REGION (slot {}, {} MiB at {:#x})", slot,
                                   size >> 20, guest_phys));
  }
}

void Vm::create_irqchip() {
  checked_ioctl(fd(), KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP");
}

void Vm::create_pit2() {
  kvm_pit_config config{};
  config.flags = KVM_PIT_SPEAKER_DUMMY;
  checked_ioctl(fd(), KVM_CREATE_PIT2, &config, "KVM_CREATE_PIT2");
}

int Vm::set_irq_line(uint32_t gsi, bool level) {
  kvm_irq_level irq{};
  irq.irq = gsi;
  irq.level = level ? 1 : 0;
  return ::ioctl(fd(), KVM_IRQ_LINE, &irq) < 0 ? errno : 0;
}

void Vm::assign_irqfd(int fd, uint32_t gsi) {
  kvm_irqfd irqfd{};
  irqfd.fd = static_cast<uint32_t>(fd);
  irqfd.gsi = gsi;
  if (::ioctl(fd_.get(), KVM_IRQFD, &irqfd) < 0) {
    throw system_error(fmt::format("KVM_IRQFD (GSI {})", gsi));
  }
}

void Vm::deassign_irqfd(int fd, uint32_t gsi) {
  kvm_irqfd irqfd{};
  irqfd.fd = static_cast<uint32_t>(fd);
  irqfd.gsi = gsi;
  irqfd.flags = KVM_IRQFD_FLAG_DEASSIGN;
  ::ioctl(fd_.get(), KVM_IRQFD, &irqfd);
}

namespace {
kvm_ioeventfd make_ioeventfd(int fd, uint64_t address, uint32_t len, bool pio) {
  kvm_ioeventfd io{};
  io.addr = address;
  io.len = len;
  io.fd = fd;
  io.flags = pio ? KVM_IOEVENTFD_FLAG_PIO : 0;
  return io;
}
}  // namespace

void Vm::assign_ioeventfd(int fd, uint64_t address, uint32_t len, bool pio) {
  kvm_ioeventfd io = make_ioeventfd(fd, address, len, pio);
  if (::ioctl(fd_.get(), KVM_IOEVENTFD, &io) < 0) {
    throw system_error(fmt::format("KVM_IOEVENTFD at {:#x}", address));
  }
}

void Vm::deassign_ioeventfd(int fd, uint64_t address, uint32_t len, bool pio) {
  kvm_ioeventfd io = make_ioeventfd(fd, address, len, pio);
  io.flags |= KVM_IOEVENTFD_FLAG_DEASSIGN;
  ::ioctl(fd_.get(), KVM_IOEVENTFD, &io);
}

Vcpu::Vcpu(const Vm& vm, unsigned index) : index_(index) {
  int fd = ::ioctl(vm.fd(), KVM_CREATE_VCPU, static_cast<unsigned long>(index));
  if (fd < 0) throw system_error(fmt::format("KVM_CREATE_VCPU {}", index));
  fd_.reset(fd);
  const size_t size = vm.kvm().vcpu_mmap_size();
  void* run = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (run == MAP_FAILED) throw system_error(fmt::format("mmap of vCPU {} run area", index));
  run_ = Mapping(run, size);
}

int Vcpu::run() {
  return ::ioctl(fd_.get(), KVM_RUN, 0) < 0 ? errno : 0;
}

void Vcpu::ioctl_or_throw(unsigned long request, void* arg, const char* what) const {
  if (::ioctl(fd_.get(), request, arg) < 0) {
    throw system_error(fmt::format("{} on vCPU {}", what, index_));
  }
}

kvm_regs Vcpu::regs() const {
  kvm_regs r{};
  ioctl_or_throw(KVM_GET_REGS, &r, "KVM_GET_REGS");
  return r;
}
void Vcpu::set_regs(const kvm_regs& r) {
  ioctl_or_throw(KVM_SET_REGS, const_cast<kvm_regs*>(&r), "KVM_SET_REGS");
}
kvm_sregs Vcpu::sregs() const {
  kvm_sregs s{};
  ioctl_or_throw(KVM_GET_SREGS, &s, "KVM_GET_SREGS");
  return s;
}
void Vcpu::set_sregs(const kvm_sregs& s) {
  ioctl_or_throw(KVM_SET_SREGS, const_cast<kvm_sregs*>(&s), "KVM_SET_SREGS");
}
kvm_fpu Vcpu::fpu() const {
  kvm_fpu f{};
  ioctl_or_throw(KVM_GET_FPU, &f, "KVM_GET_FPU");
  return f;
}
void Vcpu::set_fpu(const kvm_fpu& f) {
  ioctl_or_throw(KVM_SET_FPU, const_cast<kvm_fpu*>(&f), "KVM_SET_FPU");
}

void Vcpu::set_cpuid(std::span<const kvm_cpuid_entry2> entries) {
  kvm_abi::ArrayBuffer<kvm_cpuid_entry2> buffer(entries);
  ioctl_or_throw(kvm_abi::kSetCpuid2, buffer.arg(), "KVM_SET_CPUID2");
}

void Vcpu::set_msrs(std::span<const kvm_msr_entry> entries) {
  kvm_abi::ArrayBuffer<kvm_msr_entry> buffer(entries);
  const int written = ::ioctl(fd_.get(), kvm_abi::kSetMsrs, buffer.arg());
  if (written < 0) throw system_error(fmt::format("KVM_SET_MSRS on vCPU {}", index_));
  if (static_cast<size_t>(written) != entries.size()) {
    throw Error(fmt::format("KVM_SET_MSRS on vCPU {}: MSR {:#x} rejected", index_,
                            entries[static_cast<size_t>(written)].index));
  }
}

std::vector<kvm_msr_entry> Vcpu::msrs(std::span<const uint32_t> indices) const {
  std::vector<kvm_msr_entry> out;
  for (uint32_t index : indices) {
    // One at a time so an MSR the host lacks does not hide the others.
    kvm_abi::ArrayBuffer<kvm_msr_entry> one(1);
    one.entries_data()[0] = kvm_msr_entry{};
    one.entries_data()[0].index = index;
    if (::ioctl(fd_.get(), kvm_abi::kGetMsrs, one.arg()) != 1) one.entries_data()[0].data = 0;
    out.push_back(one.entries_data()[0]);
  }
  return out;
}

kvm_lapic_state Vcpu::lapic() const {
  kvm_lapic_state s{};
  ioctl_or_throw(KVM_GET_LAPIC, &s, "KVM_GET_LAPIC");
  return s;
}
void Vcpu::set_lapic(const kvm_lapic_state& s) {
  ioctl_or_throw(KVM_SET_LAPIC, const_cast<kvm_lapic_state*>(&s), "KVM_SET_LAPIC");
}
kvm_vcpu_events Vcpu::events() const {
  kvm_vcpu_events e{};
  ioctl_or_throw(KVM_GET_VCPU_EVENTS, &e, "KVM_GET_VCPU_EVENTS");
  return e;
}
void Vcpu::set_events(const kvm_vcpu_events& e) {
  ioctl_or_throw(KVM_SET_VCPU_EVENTS, const_cast<kvm_vcpu_events*>(&e), "KVM_SET_VCPU_EVENTS");
}
kvm_mp_state Vcpu::mp_state() const {
  kvm_mp_state s{};
  ioctl_or_throw(KVM_GET_MP_STATE, &s, "KVM_GET_MP_STATE");
  return s;
}
void Vcpu::set_mp_state(uint32_t state) {
  kvm_mp_state s{};
  s.mp_state = state;
  ioctl_or_throw(KVM_SET_MP_STATE, &s, "KVM_SET_MP_STATE");
}
void Vcpu::set_guest_debug(const kvm_guest_debug& debug) {
  ioctl_or_throw(KVM_SET_GUEST_DEBUG, const_cast<kvm_guest_debug*>(&debug), "KVM_SET_GUEST_DEBUG");
}

std::string Vcpu::dump() const {
  std::string out;
  try {
    const kvm_regs r = regs();
    const kvm_sregs s = sregs();
    out += fmt::format("vCPU {}:\n", index_);
    out += fmt::format("  rip={:016x} rsp={:016x} rflags={:08x}\n", r.rip, r.rsp, r.rflags);
    out += fmt::format("  rax={:016x} rbx={:016x} rcx={:016x} rdx={:016x}\n", r.rax, r.rbx, r.rcx,
                       r.rdx);
    out += fmt::format("  rsi={:016x} rdi={:016x} rbp={:016x} r8 ={:016x}\n", r.rsi, r.rdi, r.rbp,
                       r.r8);
    out += fmt::format("  r9 ={:016x} r10={:016x} r11={:016x} r12={:016x}\n", r.r9, r.r10, r.r11,
                       r.r12);
    out += fmt::format("  r13={:016x} r14={:016x} r15={:016x}\n", r.r13, r.r14, r.r15);
    out += fmt::format("  cs={:04x} (dpl {} l {}) ds={:04x} ss={:04x} tr={:04x}\n", s.cs.selector,
                       s.cs.dpl, s.cs.l, s.ds.selector, s.ss.selector, s.tr.selector);
    out += fmt::format("  cr0={:x} cr2={:x} cr3={:x} cr4={:x} efer={:x}\n", s.cr0, s.cr2, s.cr3,
                       s.cr4, s.efer);
    out += fmt::format("  gdt={:x}/{:x} idt={:x}/{:x}", s.gdt.base, s.gdt.limit, s.idt.base,
                       s.idt.limit);
  } catch (const Error& e) {
    out += fmt::format("vCPU {}: registers unavailable: {}", index_, e.what());
  }
  return out;
}

}  // namespace pier
