# `vfio-gate doctor` on a real kernel (issue 11), as alice: the IOMMU (the guest's emulated
# VT-d, intel_iommu=on), interrupt remapping (intremap=on), the modules and /dev/vfio/vfio pass;
# amd_iommu=on and an ACS override, added to the command line below, are warnings; the memlock
# limit the kernel gives everyone (8 MiB) fails --memory 1G, with the exact fix, and passes once
# raised as the fix says. Then `vfio-gate run` warns before a QEMU whose -m is above the limit.
# vm: kernel-args=amd_iommu=on pcie_acs_override=downstream
. /test/lib.sh

# The full text output goes into the log (and the closing note), as `#` lines.
show() { sed 's/^/# /' "$1"; }

check_output_contains "the kernel was booted with amd_iommu=on" amd_iommu=on cat /proc/cmdline
check_output_contains "which the kernel calls not a valid option" \
    "AMD-Vi: Unknown option - 'on'" dmesg

runas alice vfio-gate doctor --memory 1G > /tmp/doctor.out 2>&1
rc=$?
note "vfio-gate doctor --memory 1G, as alice, exit status $rc:"
show /tmp/doctor.out
check_equals "doctor --memory 1G fails as alice: exit status 10" 10 echo "$rc"
line() { grep -q "^$1 *$2 " /tmp/doctor.out; }
for name in kernel iommu_groups iommu_firmware interrupt_remapping vfio_node policy landlock \
    socket helper granted_devices; do
    check "$name is ok" line ok "$name"
done
check_output_contains "the IOMMU is Intel's, from the ACPI DMAR table" \
    "ACPI DMAR: an Intel VT-d IOMMU" cat /tmp/doctor.out
check "amd_iommu=on is a warning" line warn iommu_cmdline
check_output_contains "and the fix drops it" "fix: Drop amd_iommu=on from the kernel command line" \
    cat /tmp/doctor.out
check "the ACS override is a warning" line warn acs_override
check_output_contains "interrupts are remapped (IR- chips)" "on: interrupts go through IR-" \
    cat /tmp/doctor.out
check "the modules are loaded, but nothing loads them at boot: a warning" line warn modules
check "memlock fails for a 1 GiB guest" line fail memlock
check_output_contains "at the kernel's default of 8 MiB" \
    "your memlock limit (ulimit -l) is 8 MiB, below the 1 GiB a guest of 1 GiB pins" \
    cat /tmp/doctor.out
check_output_contains "the fix names alice's group in limits.d, in KiB" \
    "echo '@vm-users - memlock 2097152' > /etc/security/limits.d/vfio-gate.conf" \
    cat /tmp/doctor.out
check_output_contains "and systemd's LimitMEMLOCK=" "LimitMEMLOCK=2G" cat /tmp/doctor.out

check_output_contains "--json: schema 1" '"schema": 1' runas alice vfio-gate doctor --json --memory 1G
check_output_contains "--json: the exit code" '"exit_code": 10' \
    runas alice vfio-gate doctor --json --memory 1G

# Fixed as the fixes say: the modules at boot, alice's limit (root raises it for her session, as
# pam_limits would at her next login).
mkdir -p /etc/modules-load.d
printf 'vfio-pci\npci-stub\n' > /etc/modules-load.d/vfio-gate.conf
ulimit -l 2097152
runas alice vfio-gate doctor --memory 1G > /tmp/doctor.out 2>&1
rc=$?
note "after the fixes, exit status $rc:"
show /tmp/doctor.out
check_equals "with the fixes, doctor exits 0 (warnings alone)" 0 echo "$rc"
check "modules are ok" line ok modules
check "memlock is ok" line ok memlock
check_output_contains "nothing fails" "14 checks: 2 warnings, nothing failed." cat /tmp/doctor.out
ulimit -l 8192

# run: a QEMU (a stand-in that only exits) asking for more than the limit gets a warning, and runs.
printf '#!/bin/sh\necho started\n' > /tmp/qemu-system-x86_64
chmod 0755 /tmp/qemu-system-x86_64
check_output_contains "run warns before a QEMU with -m 1G under 8 MiB of memlock" \
    "warning: qemu-system-x86_64 asks for 1 GiB of guest RAM (-m 1G), which VFIO pins, but your memlock limit (ulimit -l) is 8 MiB" \
    runas alice vfio-gate run --device 01:00.0 -- /tmp/qemu-system-x86_64 -m 1G
check_output_contains "and starts it all the same" started \
    runas alice vfio-gate run --device 01:00.0 -- /tmp/qemu-system-x86_64 -m 1G
check_output_lacks "no warning for -m 4M" warning \
    runas alice vfio-gate run --device 01:00.0 -- /tmp/qemu-system-x86_64 -m 4M
check_equals "01:00.0 is back on e1000e" e1000e driver_of 01:00.0

finish
