#include <gtest/gtest.h>

#include "integration/pier_process.hpp"

namespace pier::test {
namespace {

TEST(BareVirtio, RngOverVirtioPciWithMsixAndIoeventfdNotify) {
  PIER_REQUIRE_KVM();
  const PierResult r = run_bare("virtio_rng", {"--log-level", "info"});
  EXPECT_TRUE(guest_passed(r, "virtio_rng")) << r.describe();
  // Every kick went through the queue's ioeventfd: none reached pier as an MMIO exit.
  EXPECT_NE(r.err.find("virtio-rng: status 0xf, 0 queue notifies reached pier"), std::string::npos)
      << r.describe();
  std::printf("[   INFO   ] %s\n", line_after(r.out, "64 requests").c_str());
}

TEST(BareVirtio, NoRngDeviceWhenDisabled) {
  PIER_REQUIRE_KVM();
  const PierResult r = run_bare("pci_scan", {"--rng", "false"});
  EXPECT_TRUE(guest_passed(r, "pci_scan")) << r.describe();
  EXPECT_EQ(r.out.find("1af4:1044"), std::string::npos) << r.describe();
}

}  // namespace
}  // namespace pier::test
