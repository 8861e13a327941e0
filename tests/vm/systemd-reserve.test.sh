# Held from power-on (issue 10), under the shipped units with real udev coldplug: the policy
# reserves 01:00.0 (e1000e) for pci-stub, and 05:02.0 (edu) for vfio-pci with its group's
# companions on pci-stub. vfio-gate-reserve.service holds them before udev loads host drivers, so
# e1000e and e1000 never bind them; a lease moves a reserved device and its release returns it to
# the reservation; a device that is removed and found again by a rescan is claimed again (by the
# udev rule starting the helper) before any host driver binds it. Runs under
# systemd-reserve.policy.toml.
. /test/lib.sh
. /test/systemd-lib.sh

NIC=01:00.0   # e1000e, alone in IOMMU group 8
E1000=05:01.0 # e1000, group 11
EDU=05:02.0   # edu, group 11
udevadm settle

reserve_log() { journalctl -b --no-pager -o cat -u vfio-gate-reserve.service; }
klog() { journalctl -b -k --no-pager -o cat; }
netdev_of() { # the network interfaces below a PCI device (none: empty)
    for n in /sys/class/net/*; do
        case $(readlink -f "$n/device" 2> /dev/null) in */0000:$1) basename "$n" ;; esac
    done
}

# --- after boot ---
check_equals "vfio-gate-reserve.service ran at boot and is done" "active exited" \
    sh -c 'echo $(systemctl show -p ActiveState --value vfio-gate-reserve.service) $(systemctl show -p SubState --value vfio-gate-reserve.service)'
check_equals "it ran before udev's coldplug (After= of systemd-udev-trigger)" yes \
    sh -c 'systemctl show -p After --value systemd-udev-trigger.service | tr " " "\n" | grep -qx vfio-gate-reserve.service && echo yes'
check_equals "$NIC is on pci-stub after boot" pci-stub driver_of $NIC
check_equals "its driver_override is pci-stub" pci-stub override_of $NIC
check_output_lacks "e1000e never probed it (no e1000e line for 0000:$NIC in the kernel log)" \
    "e1000e 0000:$NIC" klog
check_equals "no network interface for it ever appeared" "" netdev_of $NIC
check "and the e1000e module was never even loaded (udev loads no host driver for a held device)" \
    test ! -d /sys/module/e1000e
check_output_contains "the reservation was applied early, not late" \
    "device=0000:$NIC driver=pci-stub rule=\"the lab NIC, parked from boot\"" reserve_log
check_output_lacks "nothing was reserved late" "result=late" reserve_log
check_equals "$EDU is on vfio-pci after boot" vfio-pci driver_of $EDU
check_equals "$E1000, its group's companion, is on pci-stub" pci-stub driver_of $E1000
check_output_lacks "e1000 never probed $E1000" "e1000 0000:$E1000" klog
check_output_contains "the companion hold names the reserved device" \
    "device=0000:$E1000 driver=pci-stub rule=\"group 11, held from boot\" rule_at=/etc/vfio-gate/policy.toml:25 companion_of=0000:$EDU result=held" \
    reserve_log
check_equals "/dev/vfio/11 exists, root's (nobody holds the group)" "root 600" node_owner 11
check_output_contains "alice's list shows $NIC RESERVED on pci-stub" "pci-stub" \
    runas alice vfio-gate list
check_output_contains "and names the reservation" "the lab NIC, parked from boot" \
    runas alice vfio-gate list
check_output_contains "explain says so too" "the lab NIC, parked from boot" \
    runas alice vfio-gate explain $NIC

# --- boot-config: what a host whose drivers bind before userspace would need ---
bc() { runas alice vfio-gate boot-config "$@"; }
check "alice may ask for the boot configuration (it only reads)" bc
check_output_contains "softdep for e1000e, the host driver of $NIC (from modules.alias)" \
    "softdep e1000e pre: pci-stub" bc
check_output_contains "softdep for e1000, the companion's host driver" \
    "softdep e1000 pre: pci-stub" bc
check_output_contains "the kernel command line for both drivers' ids" \
    "vfio-pci.ids=1234:11e8 pci-stub.ids=8086:100e,8086:10d3" bc
check_output_lacks "no options lines unless asked for" "options vfio-pci ids=1234" bc
check_output_contains "with --ids, the options line for vfio-pci" \
    "options vfio-pci ids=1234:11e8" bc --ids
check_output_contains "and for pci-stub" "options pci-stub ids=8086:100e,8086:10d3" bc --ids
check_output_contains "the same-ids warning names the other edu, 00:06.0" \
    "claims every 1234:11e8 device of this host, not only 05:02.0: also 00:06.0" bc
check_output_contains "the initramfs commands for Debian, Fedora and Arch" "mkinitcpio -P" bc
check_output_contains "it says nothing was written" "Nothing was written" bc
check_status 3 "alice may not --write it (root only)" bc --write
check "root writes /etc/modprobe.d/vfio-gate.conf" vfio-gate boot-config --write
check_output_contains "which holds the softdep lines" "softdep e1000e pre: pci-stub" \
    cat /etc/modprobe.d/vfio-gate.conf
check_equals "mode 0644, root's" "644 root:root" stat -c '%a %U:%G' /etc/modprobe.d/vfio-gate.conf
check "modprobe reads it without complaint" sh -c 'modprobe -c | grep -q "^softdep e1000e pre: pci-stub"'
check_output_contains "policy check lists what each reservation holds here" \
    "holds 0000:01:00.0 [8086:10d3] on pci-stub from boot" vfio-gate policy check

# --- a lease moves it; the release returns it to the reservation ---
check "alice binds $NIC to vfio-pci" runas alice vfio-gate bind $NIC
check_equals "$NIC is on vfio-pci" vfio-pci driver_of $NIC
check_equals "/dev/vfio/8 is alice's" "alice 600" node_owner 8
check "alice releases it" runas alice vfio-gate release $NIC
check_equals "it went back to pci-stub, the reservation" pci-stub driver_of $NIC
check_equals "its override is pci-stub again" pci-stub override_of $NIC
check_output_lacks "e1000e still never bound it" "e1000e 0000:$NIC" klog
check_fails "bob may not bind it" runas bob vfio-gate bind $NIC

# --- group 11: held from boot, adopted by alice, kept on release ---
inode() { stat -c %i /dev/vfio/11; }
before=$(inode)
check "alice binds $EDU with its group" runas alice vfio-gate bind $EDU --group
check_equals "/dev/vfio/11 is alice's" "alice 600" node_owner 11
check_equals "the same node: vfio-pci was not unbound (no re-created node)" "$before" inode
check_equals "$E1000 stays on pci-stub" pci-stub driver_of $E1000
check "alice releases it" runas alice vfio-gate release $EDU
check_equals "$EDU stays on vfio-pci (its reservation)" vfio-pci driver_of $EDU
check_equals "$E1000 stays on pci-stub" pci-stub driver_of $E1000
check_equals "/dev/vfio/11 is root's again" "root 600" node_owner 11

# --- remove and rescan: claimed again before any host driver binds it ---
echo 1 > "$(dev $NIC)/remove"
check "$NIC is gone" test ! -e "$(dev $NIC)"
echo 1 > /sys/bus/pci/rescan
udevadm settle
check "$NIC is back after the rescan" test -e "$(dev $NIC)"
check_equals "and on pci-stub again" pci-stub driver_of $NIC
check_equals "with its override" pci-stub override_of $NIC
check_output_lacks "e1000e never probed it, even now" "e1000e 0000:$NIC" klog
check_equals "no network interface for it" "" netdev_of $NIC
check_output_contains "the udev rule started the helper for it (vfio-gate-reserve@, --reserve-device)" \
    "event=reserve-start" sh -c "journalctl -b --no-pager -o cat | grep 'devices=0000:$NIC'"
check_output_contains "which held it" "event=reserve device=0000:$NIC driver=pci-stub" \
    sh -c "journalctl -b --no-pager -o cat | grep 'event=reserve device=0000:$NIC' | tail -n 1"
check_output_contains "not late" "result=held" \
    sh -c "journalctl -b --no-pager -o cat | grep 'event=reserve device=0000:$NIC' | tail -n 1"

finish
