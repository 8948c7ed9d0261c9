/*
 * pier's DSDT, compiled by iasl at build time into pier::acpi::aml::kdsdt (boot/compile_asl.cmake)
 * and copied unchanged into the guest by boot/acpi.cpp.
 *
 * Addresses, ports and IRQs here must match boot/layout.hpp; tests/unit/boot/acpi_test.cpp checks
 * the ones that appear (COM1 port/IRQ, \_S5 sleep type) against it.
 */
DefinitionBlock ("", "DSDT", 2, "PIER  ", "PIERDSDT", 1)
{
    Scope (\_SB)
    {
        /*
         * COM1 (layout::kCom1 / kCom1Irq). With a hardware-reduced FADT Linux uses no legacy PIC
         * and maps no ISA IRQs to IOAPIC pins by itself, so the 8250's IRQ 4 is set up only when a
         * device claims it here (8250_pnp maps it through acpi_register_gsi). Cloud Hypervisor
         * saw "ttyS0 ... irq = 0" in hardware-reduced mode; Firecracker describes COM1 this way.
         */
        Device (COM1)
        {
            Name (_HID, EisaId ("PNP0501") /* 16550A-compatible COM port */)
            Name (_UID, One)
            Name (_CRS, ResourceTemplate ()
            {
                IO (Decode16, 0x03F8, 0x03F8, 0x01, 0x08)
                IRQNoFlags () {4}
            })
        }

        /*
         * PCI bus 0 behind the type-1 mechanism at 0xCF8 (devices/pci/bus.cpp). Once ACPI is on,
         * Linux takes PCI only from here, not from a legacy scan. PNP0A03 (conventional PCI)
         * rather than PNP0A08: there is no PCIe and no _OSC to negotiate. _CRS must match
         * boot/layout.hpp: bus 0 only, the config ports, all other I/O ports, and the 32-bit BAR
         * window kPciMmioStart..kPciMmioEnd.
         */
        Device (PCI0)
        {
            Name (_HID, EisaId ("PNP0A03") /* PCI Bus */)
            Name (_UID, Zero)
            Name (_SEG, Zero)
            Name (_BBN, Zero)
            Name (_CRS, ResourceTemplate ()
            {
                WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,
                    0x0000, 0x0000, 0x0000, 0x0000, 0x0001)
                IO (Decode16, 0x0CF8, 0x0CF8, 0x01, 0x08)
                WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange,
                    0x0000, 0x0000, 0x0CF7, 0x0000, 0x0CF8)
                WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange,
                    0x0000, 0x0D00, 0xFFFF, 0x0000, 0xF300)
                DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable,
                    ReadWrite, 0x00000000, 0xC0000000, 0xFEBFFFFF, 0x00000000, 0x3EC00000)
            })
            /*
             * INTx: slot S pin P (0 = INTA#) -> IOAPIC GSI 16 + (S + P) % 8, level, active low
             * (a _PRT entry with a zero Source names a GSI directly). Used only when a device's
             * MSI-X is off.
             */
            Name (_PRT, Package ()
            {
                Package () { 0x0001FFFF, 0, Zero, 17 },
                Package () { 0x0001FFFF, 1, Zero, 18 },
                Package () { 0x0001FFFF, 2, Zero, 19 },
                Package () { 0x0001FFFF, 3, Zero, 20 },
                Package () { 0x0002FFFF, 0, Zero, 18 },
                Package () { 0x0002FFFF, 1, Zero, 19 },
                Package () { 0x0002FFFF, 2, Zero, 20 },
                Package () { 0x0002FFFF, 3, Zero, 21 },
                Package () { 0x0003FFFF, 0, Zero, 19 },
                Package () { 0x0003FFFF, 1, Zero, 20 },
                Package () { 0x0003FFFF, 2, Zero, 21 },
                Package () { 0x0003FFFF, 3, Zero, 22 },
                Package () { 0x0004FFFF, 0, Zero, 20 },
                Package () { 0x0004FFFF, 1, Zero, 21 },
                Package () { 0x0004FFFF, 2, Zero, 22 },
                Package () { 0x0004FFFF, 3, Zero, 23 },
                Package () { 0x0005FFFF, 0, Zero, 21 },
                Package () { 0x0005FFFF, 1, Zero, 22 },
                Package () { 0x0005FFFF, 2, Zero, 23 },
                Package () { 0x0005FFFF, 3, Zero, 16 },
                Package () { 0x0006FFFF, 0, Zero, 22 },
                Package () { 0x0006FFFF, 1, Zero, 23 },
                Package () { 0x0006FFFF, 2, Zero, 16 },
                Package () { 0x0006FFFF, 3, Zero, 17 },
                Package () { 0x0007FFFF, 0, Zero, 23 },
                Package () { 0x0007FFFF, 1, Zero, 16 },
                Package () { 0x0007FFFF, 2, Zero, 17 },
                Package () { 0x0007FFFF, 3, Zero, 18 },
                Package () { 0x0008FFFF, 0, Zero, 16 },
                Package () { 0x0008FFFF, 1, Zero, 17 },
                Package () { 0x0008FFFF, 2, Zero, 18 },
                Package () { 0x0008FFFF, 3, Zero, 19 },
                Package () { 0x0009FFFF, 0, Zero, 17 },
                Package () { 0x0009FFFF, 1, Zero, 18 },
                Package () { 0x0009FFFF, 2, Zero, 19 },
                Package () { 0x0009FFFF, 3, Zero, 20 },
                Package () { 0x000AFFFF, 0, Zero, 18 },
                Package () { 0x000AFFFF, 1, Zero, 19 },
                Package () { 0x000AFFFF, 2, Zero, 20 },
                Package () { 0x000AFFFF, 3, Zero, 21 },
                Package () { 0x000BFFFF, 0, Zero, 19 },
                Package () { 0x000BFFFF, 1, Zero, 20 },
                Package () { 0x000BFFFF, 2, Zero, 21 },
                Package () { 0x000BFFFF, 3, Zero, 22 },
                Package () { 0x000CFFFF, 0, Zero, 20 },
                Package () { 0x000CFFFF, 1, Zero, 21 },
                Package () { 0x000CFFFF, 2, Zero, 22 },
                Package () { 0x000CFFFF, 3, Zero, 23 },
                Package () { 0x000DFFFF, 0, Zero, 21 },
                Package () { 0x000DFFFF, 1, Zero, 22 },
                Package () { 0x000DFFFF, 2, Zero, 23 },
                Package () { 0x000DFFFF, 3, Zero, 16 },
                Package () { 0x000EFFFF, 0, Zero, 22 },
                Package () { 0x000EFFFF, 1, Zero, 23 },
                Package () { 0x000EFFFF, 2, Zero, 16 },
                Package () { 0x000EFFFF, 3, Zero, 17 },
                Package () { 0x000FFFFF, 0, Zero, 23 },
                Package () { 0x000FFFFF, 1, Zero, 16 },
                Package () { 0x000FFFFF, 2, Zero, 17 },
                Package () { 0x000FFFFF, 3, Zero, 18 },
                Package () { 0x0010FFFF, 0, Zero, 16 },
                Package () { 0x0010FFFF, 1, Zero, 17 },
                Package () { 0x0010FFFF, 2, Zero, 18 },
                Package () { 0x0010FFFF, 3, Zero, 19 },
                Package () { 0x0011FFFF, 0, Zero, 17 },
                Package () { 0x0011FFFF, 1, Zero, 18 },
                Package () { 0x0011FFFF, 2, Zero, 19 },
                Package () { 0x0011FFFF, 3, Zero, 20 },
                Package () { 0x0012FFFF, 0, Zero, 18 },
                Package () { 0x0012FFFF, 1, Zero, 19 },
                Package () { 0x0012FFFF, 2, Zero, 20 },
                Package () { 0x0012FFFF, 3, Zero, 21 },
                Package () { 0x0013FFFF, 0, Zero, 19 },
                Package () { 0x0013FFFF, 1, Zero, 20 },
                Package () { 0x0013FFFF, 2, Zero, 21 },
                Package () { 0x0013FFFF, 3, Zero, 22 },
                Package () { 0x0014FFFF, 0, Zero, 20 },
                Package () { 0x0014FFFF, 1, Zero, 21 },
                Package () { 0x0014FFFF, 2, Zero, 22 },
                Package () { 0x0014FFFF, 3, Zero, 23 },
                Package () { 0x0015FFFF, 0, Zero, 21 },
                Package () { 0x0015FFFF, 1, Zero, 22 },
                Package () { 0x0015FFFF, 2, Zero, 23 },
                Package () { 0x0015FFFF, 3, Zero, 16 },
                Package () { 0x0016FFFF, 0, Zero, 22 },
                Package () { 0x0016FFFF, 1, Zero, 23 },
                Package () { 0x0016FFFF, 2, Zero, 16 },
                Package () { 0x0016FFFF, 3, Zero, 17 },
                Package () { 0x0017FFFF, 0, Zero, 23 },
                Package () { 0x0017FFFF, 1, Zero, 16 },
                Package () { 0x0017FFFF, 2, Zero, 17 },
                Package () { 0x0017FFFF, 3, Zero, 18 },
                Package () { 0x0018FFFF, 0, Zero, 16 },
                Package () { 0x0018FFFF, 1, Zero, 17 },
                Package () { 0x0018FFFF, 2, Zero, 18 },
                Package () { 0x0018FFFF, 3, Zero, 19 },
                Package () { 0x0019FFFF, 0, Zero, 17 },
                Package () { 0x0019FFFF, 1, Zero, 18 },
                Package () { 0x0019FFFF, 2, Zero, 19 },
                Package () { 0x0019FFFF, 3, Zero, 20 },
                Package () { 0x001AFFFF, 0, Zero, 18 },
                Package () { 0x001AFFFF, 1, Zero, 19 },
                Package () { 0x001AFFFF, 2, Zero, 20 },
                Package () { 0x001AFFFF, 3, Zero, 21 },
                Package () { 0x001BFFFF, 0, Zero, 19 },
                Package () { 0x001BFFFF, 1, Zero, 20 },
                Package () { 0x001BFFFF, 2, Zero, 21 },
                Package () { 0x001BFFFF, 3, Zero, 22 },
                Package () { 0x001CFFFF, 0, Zero, 20 },
                Package () { 0x001CFFFF, 1, Zero, 21 },
                Package () { 0x001CFFFF, 2, Zero, 22 },
                Package () { 0x001CFFFF, 3, Zero, 23 },
                Package () { 0x001DFFFF, 0, Zero, 21 },
                Package () { 0x001DFFFF, 1, Zero, 22 },
                Package () { 0x001DFFFF, 2, Zero, 23 },
                Package () { 0x001DFFFF, 3, Zero, 16 },
                Package () { 0x001EFFFF, 0, Zero, 22 },
                Package () { 0x001EFFFF, 1, Zero, 23 },
                Package () { 0x001EFFFF, 2, Zero, 16 },
                Package () { 0x001EFFFF, 3, Zero, 17 },
                Package () { 0x001FFFFF, 0, Zero, 23 },
                Package () { 0x001FFFFF, 1, Zero, 16 },
                Package () { 0x001FFFFF, 2, Zero, 17 },
                Package () { 0x001FFFFF, 3, Zero, 18 }
            })
        }

        /*
         * No PNP0303 (i8042) device on purpose: pier emulates only the 0xFE reset command, and the
         * FADT says "no 8042" so Linux's i8042 driver does not probe it.
         */
    }

    /*
     * Soft-off. In hardware-reduced mode Linux powers off by writing (SLP_TYP << 2) | SLP_EN to the
     * FADT's SLEEP_CONTROL_REG (layout::kAcpiSleepControl), taking SLP_TYP from element 0 here:
     * (5 << 2) | (1 << 5) = 0x34. Elements 1-3 (SLP_TYPb, reserved) are unused.
     */
    Name (\_S5, Package (0x04) { 0x05, Zero, Zero, Zero })
}
