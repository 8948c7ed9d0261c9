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
