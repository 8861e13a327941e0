# The narrated tour of `cargo xtask demo`, run as root in the test guest. Every command is shown
# with the user who runs it; narration lines start with "#". Exits non-zero if any step did not
# behave as the narration says.

NIC=0000:01:00.0
SYS=/sys/bus/pci/devices/$NIC
surprises=0

say() {
    echo
    for line in "$@"; do echo "# $line"; done
}

# as USER [--expect STATUS] CMD...: show and run CMD as USER (root runs it directly).
as() {
    user=$1
    shift
    want=0
    if [ "$1" = --expect ]; then
        want=$2
        shift 2
    fi
    if [ "$user" = root ]; then
        echo "root# $*"
        "$@"
    else
        echo "$user\$ $*"
        runas "$user" "$@"
    fi
    got=$?
    if [ "$got" -ne "$want" ]; then
        echo "!! expected exit status $want, got $got"
        surprises=$((surprises + 1))
    elif [ "$got" -ne 0 ]; then
        echo "(exit status $got)"
    fi
}

show_nic() {
    as root readlink $SYS/driver
    as root cat $SYS/driver_override
}

say "vfio-gate demo, in a QEMU guest running Debian's stock $(uname -r) kernel with an" \
    "emulated Intel IOMMU. Nothing privileged is running yet: the helper, vfio-gated, is" \
    "started by socket activation when the first client connects to /run/vfio-gate.sock." \
    "Users: alice (in group vm-users) and bob. The policy is /etc/vfio-gate/policy.toml."

say "alice lists the PCI devices. ALLOWED is what the policy lets *her* bind each one to."
as alice vfio-gate list

say "01:00.0 is an Intel 82574L (e1000e) network card, alone in IOMMU group 8." \
    "Right now the host's e1000e driver has it, and no driver_override is set:"
show_nic

say "alice asks for it for her VM: vfio-gated checks the policy, records a lease, sets" \
    "driver_override, unbinds e1000e and re-probes, then checks that vfio-pci really took it."
as alice vfio-gate bind 01:00.0 --to vfio-pci

say "The kernel now shows vfio-pci as the driver, the override in place, and the VFIO" \
    "group node /dev/vfio/8 that her VM (QEMU, cloud-hypervisor...) opens:"
show_nic
as root ls -l /dev/vfio/

say "bob tries to take the same card. No rule grants bob anything, so the default applies:" \
    "denied (exit status 3), and nothing in sysfs changes."
as bob --expect 3 vfio-gate bind 01:00.0 --to vfio-pci

say "bob tries the NVMe storage controller, 03:00.0. The denial names the deciding rule" \
    "and where it is written:"
as bob --expect 3 vfio-gate bind 03:00.0 --to vfio-pci

say "Every request is audited on the helper's stderr (the journal, under systemd);" \
    "here are the bind requests:"
as root grep 'request=bind' /run/vfio-gated.log

say "alice is done: she releases the card. vfio-gated restores the recorded override," \
    "unbinds vfio-pci, re-probes and checks that the original driver is back."
as alice vfio-gate release 01:00.0

say "e1000e drives the card again and the override is cleared ((null)):"
show_nic
as alice vfio-gate list

say "VFIO hands out whole IOMMU groups. 05:02.0 (an edu test device) sits behind a" \
    "PCIe-to-PCI bridge with an e1000 NIC, 05:01.0, that the host's e1000 driver has: all" \
    "three are IOMMU group 11. Binding 05:02.0 alone would leave the group unusable, so" \
    "vfio-gate refuses (exit status 3) and shows the plan that would work:"
as alice --expect 3 vfio-gate bind 05:02.0

say "With --group, the e1000 goes to pci-stub (the policy lists pci-stub as a companion" \
    "driver: it keeps the group usable without giving alice that NIC), 05:02.0 to vfio-pci," \
    "and the bridge stays as it is. /dev/vfio/11 is handed to alice:"
as alice vfio-gate bind 05:02.0 --group
as root ls -l /dev/vfio/

say "vfio-probe does what a VMM does: open the container and the group, check that the" \
    "kernel says the group is viable, attach it, pick the IOMMU type, get a device fd." \
    "It works for alice; bob cannot even open the group (EACCES):"
as alice vfio-probe open 11 0000:05:02.0
as bob --expect 1 vfio-probe status 11

say "While alice's \"VM\" holds the group, a release would block in the kernel: vfio-gate" \
    "refuses it at once instead (exit status 6)."
runas alice vfio-probe hold 11 0000:05:02.0 > /tmp/demo-hold.out 2>&1 &
holder=$!
i=0
while ! grep -q holding /tmp/demo-hold.out 2> /dev/null && [ $i -lt 100 ]; do
    usleep 50000
    i=$((i + 1))
done
as alice --expect 6 vfio-gate release 05:02.0

say "The VM stops; now the release goes through and e1000 gets its NIC back:"
kill "$holder"
wait "$holder" 2> /dev/null
as alice vfio-gate release 05:02.0
as root readlink /sys/bus/pci/devices/0000:05:01.0/driver

if [ "$surprises" -eq 0 ]; then
    say "End of the demo: every step behaved as described."
    exit 0
fi
say "End of the demo: $surprises step(s) did not behave as described (see '!!' above)."
exit 1
