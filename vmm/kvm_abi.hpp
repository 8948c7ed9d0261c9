#pragma once
// KVM structures with trailing arrays, laid out as the kernel does.
//
// Linux 6.1's uapi headers declare those arrays with __DECLARE_FLEX_ARRAY, which wraps them in a
// struct holding an empty struct. An empty struct has size 0 in C but 1 in C++, so compiled as C++
// `sizeof(kvm_cpuid2)` is 12 instead of 8, `entries` sits at offset 12, and the ioctl numbers
// that encode the size (KVM_SET_CPUID2, KVM_GET/SET_MSRS, KVM_SET_GSI_ROUTING, ...) are ones the
// kernel does not know (EINVAL). pier builds these buffers from a fixed 8-byte header and uses
// the ioctl numbers below, which are checked against the kernel's values.
#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace pier::kvm_abi {

// Header of kvm_cpuid2, kvm_msrs, kvm_msr_list-style and kvm_irq_routing buffers: a count and a
// 32-bit pad/flags word, then the entries at offset 8.
struct ArrayHeader {
  uint32_t count;
  uint32_t flags_or_padding;
};
static_assert(sizeof(ArrayHeader) == 8);

constexpr unsigned long kGetSupportedCpuid =
    _IOC(_IOC_READ | _IOC_WRITE, KVMIO, 0x05, sizeof(ArrayHeader));
constexpr unsigned long kSetCpuid2 = _IOC(_IOC_WRITE, KVMIO, 0x90, sizeof(ArrayHeader));
constexpr unsigned long kGetMsrs = _IOC(_IOC_READ | _IOC_WRITE, KVMIO, 0x88, sizeof(ArrayHeader));
constexpr unsigned long kSetMsrs = _IOC(_IOC_WRITE, KVMIO, 0x89, sizeof(ArrayHeader));
constexpr unsigned long kSetGsiRouting = _IOC(_IOC_WRITE, KVMIO, 0x6a, sizeof(ArrayHeader));
// The values the kernel defines (from a C compilation of the same headers).
static_assert(kGetSupportedCpuid == 0xc008ae05);
static_assert(kSetCpuid2 == 0x4008ae90);
static_assert(kGetMsrs == 0xc008ae88);
static_assert(kSetMsrs == 0x4008ae89);
static_assert(kSetGsiRouting == 0x4008ae6a);

// A header followed by `count` entries of T, 8-byte aligned, as one ioctl argument.
template <class T>
class ArrayBuffer {
 public:
  explicit ArrayBuffer(size_t count, uint32_t flags = 0)
      : storage_((sizeof(ArrayHeader) + count * sizeof(T) + 7) / 8) {
    header()->count = static_cast<uint32_t>(count);
    header()->flags_or_padding = flags;
  }
  explicit ArrayBuffer(std::span<const T> entries, uint32_t flags = 0)
      : ArrayBuffer(entries.size(), flags) {
    if (!entries.empty()) std::memcpy(entries_data(), entries.data(), entries.size_bytes());
  }
  ArrayHeader* header() { return reinterpret_cast<ArrayHeader*>(storage_.data()); }
  T* entries_data() { return reinterpret_cast<T*>(storage_.data() + 1); }
  std::vector<T> entries() {
    const T* first = entries_data();
    return {first, first + header()->count};
  }
  void* arg() { return storage_.data(); }

 private:
  std::vector<uint64_t> storage_;  // uint64_t keeps the entries 8-byte aligned
};

}  // namespace pier::kvm_abi
