#include <gtest/gtest.h>

#include "integration/pier_process.hpp"

namespace pier::test {
namespace {

TEST(BarePci, Type1ScanFindsTheHostBridgeAndTheDsdtDescribesIt) {
  PIER_REQUIRE_KVM();
  const PierResult r = run_bare("pci_scan");
  EXPECT_TRUE(guest_passed(r, "pci_scan")) << r.describe();
  EXPECT_NE(r.out.find("00:00.0 1b36:0008"), std::string::npos) << r.describe();
}

}  // namespace
}  // namespace pier::test
