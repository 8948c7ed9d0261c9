#!/bin/sh
# Runs inside the Debian test guest (tests/integration/debian_console_test.cpp): many checks per
# boot, because a boot is expensive on slow hosts. Prints "GUEST-CHECK <what>: ok|FAILED".
ok() { echo "GUEST-CHECK $1: ok"; }
bad() { echo "GUEST-CHECK $1: FAILED ($2)"; }
check() { what=$1; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what" "$*"; fi; }

# Facts the host test compares with the machine it asked for.
echo "GUEST-FACT release=$(uname -r)"
echo "GUEST-FACT online=$(cat /sys/devices/system/cpu/online)"
echo "GUEST-FACT memtotal_kib=$(awk '$1 == "MemTotal:" { print $2 }' /proc/meminfo)"
echo "GUEST-FACT ram_above_4g=$(awk -F'[- :]+' '/System RAM/ { if (length($1) > 8) n = 1 } END { print n + 0 }' /proc/iomem)"

# virtio-rng on virtio-pci: the device, MSI-X, a vector per queue, real data, module reloads.
rng=$(grep -l 0x1044 /sys/bus/pci/devices/*/device 2>/dev/null | head -n 1)
rngdev=${rng%/device}
check "virtio-rng in /sys/bus/pci (1af4:1044)" test -n "$rng"
check "virtio-rng bound to virtio-pci" test -e "$rngdev/driver"
irqs=$(grep -c 'virtio[0-9]*-' /proc/interrupts)
check "virtio MSI-X vectors in /proc/interrupts" test "$irqs" -ge 1
grep -E 'virtio|PCI-MSI' /proc/interrupts | sed 's/^/GUEST-INFO /'
check "MSI-X enabled for virtio-rng" test -n "$(ls "$rngdev/msi_irqs" 2>/dev/null)"
n=$(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | wc -c)
check "/dev/hwrng gives data" test "$n" -eq 64
rng_ko=$(awk '$1 == "virtio_rng" { print $2 }' /etc/pier/modules)
for i in 1 2; do
  check "rmmod virtio_rng ($i)" rmmod virtio_rng
  check "insmod virtio_rng ($i)" insmod "$rng_ko"
done
n=$(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | wc -c)
check "/dev/hwrng after two reloads" test "$n" -eq 64

# virtio-console: hvc0 exists, the named ports have their links, the pty port works.
check "hvc0 exists" test -c /dev/hvc0
for p in org.pier.api org.pier.pty; do check "/dev/virtio-ports/$p" test -e /dev/virtio-ports/$p; done
echo "GUEST-API pty-port hello" > /dev/virtio-ports/org.pier.pty &
# The guest API rows, driven by the host.
pier-vport-api org.pier.api
# Hot-plug through the runtime API, and removal under a blocked read (ENODEV).
pier-vport-api --unplug org.pier.hot
echo "GUEST-CHECKS DONE"
