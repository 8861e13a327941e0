# Adopting a device already on vfio-pci (issue 10): the guest boots with vfio-pci.ids=1234:11e8
# on its kernel command line, as hosts set up for passthrough the old way do, so both edu devices
# (00:06.0 and 05:02.0) are on vfio-pci before vfio-gate is asked anything. alice binds 00:06.0
# with its group: vfio-gate takes it as it is (no unbind, no probe: the group node is not even
# re-created), hands /dev/vfio/5 to her, and her release leaves it on vfio-pci. bob still cannot
# take it. Runs under systemd-adopt.policy.toml, on the shipped units.
# vm: kernel-args=vfio-pci.ids=1234:11e8
. /test/lib.sh
. /test/systemd-lib.sh

EDU=00:06.0     # edu, group 5, with the pci-testdev 00:06.1
TESTDEV=00:06.1
EDU2=05:02.0    # the other edu, group 11
udevadm settle

inode() { stat -c %i /dev/vfio/5; }

check_output_contains "the kernel command line has vfio-pci.ids=1234:11e8" \
    "vfio-pci.ids=1234:11e8" cat /proc/cmdline
check_equals "$EDU is on vfio-pci from boot" vfio-pci driver_of $EDU
check_equals "and so is $EDU2, by the same ids" vfio-pci driver_of $EDU2
check_equals "no driver_override: vfio-pci claimed it by its ids" "(null)" override_of $EDU
check_equals "/dev/vfio/5 is root's" "root 600" node_owner 5

check_output_contains "alice's dry run takes it as it is: no move" "yours as it is" \
    runas alice vfio-gate bind $EDU --group --dry-run
before=$(inode)
check "alice binds $EDU with its group" runas alice vfio-gate bind $EDU --group
check_equals "it is still on vfio-pci" vfio-pci driver_of $EDU
check_equals "the same group node: vfio-pci was never unbound from it" "$before" inode
check_equals "/dev/vfio/5 is alice's" "alice 600" node_owner 5
check_equals "$TESTDEV, driverless, stays so (it does not block the group)" none driver_of $TESTDEV
check "alice can open /dev/vfio/5" runas alice sh -c 'exec 3<> /dev/vfio/5'
check_output_contains "the list shows alice holding it" alice runas alice vfio-gate list
check_fails "bob cannot bind it" runas bob vfio-gate bind $EDU
check_fails "nor open its node" runas bob sh -c 'exec 3<> /dev/vfio/5'

check "alice releases it" runas alice vfio-gate release $EDU
check_equals "it stays on vfio-pci, where it was found" vfio-pci driver_of $EDU
check_equals "its override is untouched" "(null)" override_of $EDU
check_equals "the node was never re-created" "$before" inode
check_equals "/dev/vfio/5 is root's again" "root 600" node_owner 5
check_fails "bob still cannot take it" runas bob vfio-gate bind $EDU
check_equals "$EDU2, which nobody asked for, was never touched" vfio-pci driver_of $EDU2

finish
