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
         * The PCI host bridge goes here (virtio-pci issue): Device (PCI0) with _HID PNP0A08,
         * _CID PNP0A03, _SEG/_BBN, _CRS (bus range, I/O 0xCF8-0xCFF, the 32-bit BAR window from
         * layout::kPciMmioStart..kPciMmioEnd) and _PRT for INTx. Once ACPI is on Linux takes PCI
         * only from here, not from a legacy bus scan. Parts that depend on the configuration
         * (window sizes, virtio-mmio LNRO0005 devices) are better built at run time as an SSDT
         * added to the XSDT than patched into this block.
         *
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
