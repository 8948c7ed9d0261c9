#include "vmm/irq_routing.hpp"

#include <gtest/gtest.h>

namespace pier {
namespace {

TEST(IrqRouting, PcRoutesSendIsaIrq0ToIoapicPin2AndSkipTheCascade) {
  const auto routes = pc_irqchip_routes();
  int pic = 0, ioapic = 0;
  for (const auto& r : routes) {
    ASSERT_EQ(r.type, static_cast<uint32_t>(KVM_IRQ_ROUTING_IRQCHIP));
    EXPECT_NE(r.gsi, 2u);
    if (r.u.irqchip.irqchip == KVM_IRQCHIP_IOAPIC) {
      ++ioapic;
      EXPECT_EQ(r.u.irqchip.pin, r.gsi == 0 ? 2u : r.gsi);
    } else {
      ++pic;
      EXPECT_LT(r.gsi, 16u);
      EXPECT_EQ(r.u.irqchip.pin, r.gsi % 8);
      EXPECT_EQ(r.u.irqchip.irqchip,
                static_cast<uint32_t>(r.gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE));
    }
  }
  EXPECT_EQ(pic, 15);
  EXPECT_EQ(ioapic, 23);
}

}  // namespace
}  // namespace pier

namespace pier {
namespace {

TEST(IrqRouting, MsiRoutesAreAddedReusedAndAlwaysSentWithTheIrqchipRoutes) {
  IrqRouting routing(nullptr);
  const uint32_t a = routing.allocate_msi_gsi();
  const uint32_t b = routing.allocate_msi_gsi();
  EXPECT_EQ(a, IrqRouting::kFirstMsiGsi);
  EXPECT_EQ(b, a + 1);
  routing.set_msi(b, 0xfee0'1000, 0x4031);
  auto table = routing.table();
  EXPECT_EQ(table.size(), pc_irqchip_routes().size() + 2);
  const auto& last = table.back();
  EXPECT_EQ(last.gsi, b);
  EXPECT_EQ(last.type, static_cast<uint32_t>(KVM_IRQ_ROUTING_MSI));
  EXPECT_EQ(last.u.msi.address_lo, 0xfee01000u);
  EXPECT_EQ(last.u.msi.data, 0x4031u);
  routing.release_msi_gsi(a);
  EXPECT_EQ(routing.table().size(), pc_irqchip_routes().size() + 1);
  EXPECT_EQ(routing.allocate_msi_gsi(), a);  // freed GSIs are reused
  routing.set_msi(5, 1, 2);                  // not an MSI GSI: ignored
  EXPECT_EQ(routing.table().size(), pc_irqchip_routes().size() + 2);
}

}  // namespace
}  // namespace pier
