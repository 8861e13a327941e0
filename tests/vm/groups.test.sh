# IOMMU groups on a real kernel (issue 3's "Done when", the VM half), under groups.policy.toml:
# binding one endpoint of a shared group is refused with the plan; --dry-run writes nothing;
# --group makes group 11 viable (e1000 parked on pci-stub, the bridge left alone) and the kernel
# agrees; /dev/vfio/11 is alice's and her VFIO program gets a device fd; bob can neither open the
# node nor bind any member; release restores e1000 and the node; the guards refuse what the host
# uses and non-endpoints even though a rule allows them; a release while alice's program holds the
# group is refused at once while other clients are served. Plus vfio-gate's viability verdict
# beside the kernel's in viable and not-viable states (and `list --by-group`'s, from the helper and
# from /sys), and `# metric` lines.
. /test/lib.sh

metric uptime_at_start_s "$(uptime_s)"

BRIDGE=04:00.0 # PCIe-to-PCI bridge, no driver      } IOMMU group 11
E1000=05:01.0  # e1000 behind it, on e1000          }
EDU=05:02.0    # edu behind it, no driver           }
NIC=01:00.0    # e1000e, alone in group 8
NVME=03:00.0   # /mnt/nvme is mounted from it (tests/vm/init.sh)
VNET=02:00.0   # virtio-net, up with 10.0.2.15/24 (tests/vm/init.sh)
LPC=00:1f.0    # ICH9 LPC bridge (group 7)
S=/sys/bus/pci

# Driver and driver_override of each member of group 11.
group11_drivers() {
    for a in $BRIDGE $E1000 $EDU; do
        echo "$a driver=$(driver_of $a) override=$(override_of $a)"
    done
}
# ... and the VFIO nodes: what a bind could change.
group11_state() {
    group11_drivers
    ls -l /dev/vfio
}
INITIAL="$BRIDGE driver=none override=(null)
$E1000 driver=e1000 override=(null)
$EDU driver=none override=(null)"

# Runs CMD, recording its output, exit status and wall time (ms) in $BG_OUT, $BG_STATUS, $BG_MS.
timed() {
    _t0=$(now_ms)
    BG_OUT=$("$@" 2>&1)
    BG_STATUS=$?
    BG_MS=$(($(now_ms) - _t0))
}

# --- the starting layout ---
check_equals "group 11 starts as documented" "$INITIAL" group11_drivers
check "there is no /dev/vfio/11 yet" test ! -e /dev/vfio/11
check_output_contains "the guest has /mnt/nvme mounted from the NVMe disk" "/dev/nvme0n1 /mnt/nvme" \
    cat /proc/mounts
check_output_contains "the virtio-net interface has 10.0.2.15" "10.0.2.15/24" \
    ip addr show dev "$(cat /run/virtio-net.if)"

# --- viability, by hand as root: vfio-gate's verdict beside the kernel's ---
# edu on vfio-pci while e1000 keeps e1000: not viable.
echo vfio-pci > "$(dev $EDU)/driver_override"
echo "0000:$EDU" > $S/drivers_probe
check_equals "by hand: edu is on vfio-pci" vfio-pci driver_of $EDU
check_equals "the kernel reports group 11 not viable (e1000 still on e1000)" "not viable" \
    vfio-probe status 11
check_output_contains "vfio-gate's verdict agrees: not viable" "agree not-viable" vfio-viability 11
check_output_contains "list --by-group says so, naming the e1000 in the way" \
    "IOMMU group 11: not viable: $E1000 is on the host driver e1000" \
    runas alice vfio-gate list --by-group --group 11
check_output_contains "and so does list read from /sys when the helper is unreachable" \
    "IOMMU group 11: not viable: $E1000 is on the host driver e1000" \
    runas alice vfio-gate --socket /nonexistent.sock list --by-group --group 11
check_output_contains "a VFIO program stops at the viability check" "not viable" \
    vfio-probe open 11 "0000:$EDU"
# e1000 without any driver: viable (a driver-less member claims no DMA ownership).
echo "0000:$E1000" > $S/drivers/e1000/unbind
check_equals "by hand: e1000 is driver-less" none driver_of $E1000
check_equals "the kernel reports group 11 viable with e1000 driver-less" viable vfio-probe status 11
check_output_contains "vfio-gate's verdict agrees: viable" "agree viable" vfio-viability 11
check_output_contains "list --by-group says viable" "IOMMU group 11: viable" \
    runas alice vfio-gate list --by-group --group 11
check_output_contains "list --by-group --json too" '"viable": true' \
    runas alice vfio-gate list --by-group --group 11 --json
check_output_contains "and from /sys without the helper (exit 0, source sysfs)" '"source": "sysfs"' \
    runas alice vfio-gate --socket /nonexistent.sock list --by-group --group 11 --json
check "the fallback exits 0" runas alice vfio-gate --socket /nonexistent.sock list
# Restore: e1000 back on e1000, edu off vfio-pci with its override cleared (a newline clears it).
echo "0000:$E1000" > $S/drivers_probe
echo > "$(dev $EDU)/driver_override"
echo "0000:$EDU" > $S/drivers/vfio-pci/unbind
check_equals "restored by hand: group 11 is as it was" "$INITIAL" group11_drivers
check "and /dev/vfio/11 is gone" test ! -e /dev/vfio/11

# --- one endpoint of a shared group: refused, with the plan ---
before=$(group11_state)
check_status 3 "alice's bind of $EDU alone is refused (exit status 3)" \
    runas alice vfio-gate bind $EDU --to vfio-pci
check_output_contains "the refusal names the endpoint on a host driver" "$E1000 (e1000)" \
    runas alice vfio-gate bind $EDU --to vfio-pci
check_output_contains "the refusal shows the plan: e1000 to pci-stub" "→ pci-stub" \
    runas alice vfio-gate bind $EDU --to vfio-pci
check_output_contains "the plan leaves the bridge alone" "stays without a driver" \
    runas alice vfio-gate bind $EDU --to vfio-pci
check_output_contains "the refusal gives the command to re-run with --group" \
    "vfio-gate bind $EDU --to vfio-pci --group" runas alice vfio-gate bind $EDU --to vfio-pci
check_equals "the refusals changed nothing" "$before" group11_state

# --- --dry-run writes nothing ---
check "alice's --group --dry-run succeeds" runas alice vfio-gate bind $EDU --group --dry-run
check_output_contains "it prints the plan" "Plan for IOMMU group 11" \
    runas alice vfio-gate bind $EDU --group --dry-run
check_output_contains "and says nothing was changed" "nothing was changed" \
    runas alice vfio-gate bind $EDU --group --dry-run
check_equals "after --dry-run: drivers, overrides and /dev/vfio are unchanged" "$before" group11_state
check_output_lacks "and nobody holds group 11" alice runas alice vfio-gate list

# --- --group: the whole group, viable, handed to alice ---
check "alice binds $EDU with --group" runas alice vfio-gate bind $EDU --to vfio-pci --group
check_equals "$EDU is on vfio-pci" vfio-pci driver_of $EDU
check_equals "$E1000 is on pci-stub" pci-stub driver_of $E1000
check_equals "$E1000's override is pci-stub" pci-stub override_of $E1000
check_equals "the bridge $BRIDGE is left alone (no driver)" none driver_of $BRIDGE
check_equals "and its override is untouched" "(null)" override_of $BRIDGE
check_equals "the kernel reports group 11 viable" viable vfio-probe status 11
check_output_contains "vfio-gate's verdict agrees: viable" "agree viable" vfio-viability 11
check_output_contains "list --by-group: group 11 is viable and alice's" \
    "IOMMU group 11: viable; held by alice" runas bob vfio-gate list --by-group --group 11
check_output_contains "alice's list --mine has the e1000 she did not name" "$E1000" \
    runas alice vfio-gate list --mine
check_output_contains "bob's list --mine has nothing" "No device matches --mine." \
    runas bob vfio-gate list --mine
check_equals "/dev/vfio/11 is alice's, mode 0600" "alice 600" node_owner 11
check_output_contains "alice's VFIO program gets a device fd for $EDU" "device fd" \
    runas alice vfio-probe open 11 "0000:$EDU"
check_output_contains "the e1000 on pci-stub is not hers to open" "VFIO_GROUP_GET_DEVICE_FD" \
    runas alice vfio-probe open 11 "0000:$E1000"
check_output_contains "the list shows alice holding $EDU" "alice" runas bob vfio-gate list

# --- bob: no access to the node, no member of the group ---
check_status 1 "bob cannot open /dev/vfio/11" runas bob vfio-probe status 11
check_output_contains "the kernel says EACCES" EACCES runas bob vfio-probe status 11
check_output_contains "bob's full VFIO sequence fails at the group open with EACCES" \
    "open /dev/vfio/11: EACCES" runas bob vfio-probe open 11 "0000:$EDU"
check_status 3 "bob cannot bind $EDU (exit status 3)" runas bob vfio-gate bind $EDU --group
check_output_contains "the refusal says who holds the group since when" "held by alice since" \
    runas bob vfio-gate bind $EDU --group
check_status 3 "bob cannot bind $E1000 (exit status 3)" runas bob vfio-gate bind $E1000 --group
check_output_contains "held by alice, again" "held by alice" runas bob vfio-gate bind $E1000 --group
check_status 3 "bob cannot bind the bridge $BRIDGE (exit status 3)" \
    runas bob vfio-gate bind $BRIDGE --group
check_status 3 "bob cannot release alice's group" runas bob vfio-gate release $EDU
check_equals "after bob's attempts $EDU is still on vfio-pci" vfio-pci driver_of $EDU
check_equals "and /dev/vfio/11 still alice's" "alice 600" node_owner 11

# --- release while alice's VFIO program holds the group: refused at once ---
runas alice vfio-probe hold 11 "0000:$EDU" > /tmp/hold.out 2>&1 &
holder=$!
check "alice's VFIO program holds group 11 (a running VM)" wait_for 10 grep -q holding /tmp/hold.out
check_output_contains "the kernel answers EBUSY to another open of the group" EBUSY \
    vfio-probe status 11
# The release runs in the background while bob lists: a second client is served meanwhile.
runas alice vfio-gate release $EDU > /tmp/release.out 2>&1 &
releaser=$!
check_output_contains "bob's list is served meanwhile" "$EDU" runas bob vfio-gate list
wait $releaser
STATUS=$?
OUT=$(cat /tmp/release.out)
_lib_cmd="runas alice vfio-gate release $EDU (in the background)"
[ "$STATUS" -eq 6 ]
_lib_result $? "the release is refused as busy (exit status 6)" "expected exit status 6"
case $OUT in *"in use"*) true ;; *) false ;; esac
_lib_result $? "the refusal says the group is in use" "expected: in use"
timed runas alice vfio-gate release $EDU
metric busy_release_refusal_ms "$BG_MS"
check "the refusal came in well under a second ($BG_MS ms)" test "$BG_MS" -lt 1000 -a "$BG_STATUS" -eq 6
check_output_contains "and tells alice to stop the VM first" "stop the VM first" \
    runas alice vfio-gate release $EDU
check_equals "$EDU stayed on vfio-pci" vfio-pci driver_of $EDU
check_equals "$E1000 stayed on pci-stub" pci-stub driver_of $E1000
check_equals "/dev/vfio/11 is still alice's" "alice 600" node_owner 11
check_output_contains "the helper keeps serving: list as alice" "$EDU" runas alice vfio-gate list
kill "$holder"
wait "$holder" 2> /dev/null

# Holding only the device fd (group and container closed) still holds the group.
runas alice vfio-probe hold --device-only 11 "0000:$EDU" > /tmp/hold2.out 2>&1 &
holder=$!
check "alice's program holds only a device fd of group 11" wait_for 10 grep -q holding /tmp/hold2.out
check_status 6 "a release is refused as busy then too" runas alice vfio-gate release $EDU
kill "$holder"
wait "$holder" 2> /dev/null

# --- release once the holder is gone ---
check "alice releases group 11 once her program has exited" runas alice vfio-gate release $EDU
check_equals "e1000 is back on $E1000" e1000 driver_of $E1000
check_equals "$E1000's override is cleared" "(null)" override_of $E1000
check_equals "$EDU is driver-less again" none driver_of $EDU
check_equals "$EDU's override is cleared" "(null)" override_of $EDU
check_equals "the bridge is still driver-less" none driver_of $BRIDGE
check "/dev/vfio/11 is gone or root's" sh -c 'o=$(stat -c "%U %a" /dev/vfio/11 2> /dev/null) || exit 0; [ "$o" = "root 600" ]'
check_output_lacks "nobody holds group 11 any more" alice runas bob vfio-gate list

# --- both endpoints named: both to vfio-pci, no --group needed ---
check "alice binds $EDU and $E1000 together to vfio-pci" \
    runas alice vfio-gate bind $EDU $E1000 --to vfio-pci
check_equals "$E1000 is on vfio-pci" vfio-pci driver_of $E1000
check_output_contains "the kernel agrees the group is viable" "agree viable" vfio-viability 11
check_output_contains "alice's VFIO program gets a device fd for $E1000 too" "device fd" \
    runas alice vfio-probe open 11 "0000:$E1000"
check "alice releases them" runas alice vfio-gate release $E1000
check_equals "e1000 is back on $E1000" e1000 driver_of $E1000
check_equals "/dev/vfio/11 is gone" gone node_owner 11

# --- guards that no policy can override (groups.policy.toml allows all four to alice) ---
check_status 3 "binding the NVMe disk with a mounted filesystem is refused" \
    runas alice vfio-gate bind $NVME --to vfio-pci
check_output_contains "the refusal is a built-in guard" "built-in guard" \
    runas alice vfio-gate bind $NVME --to vfio-pci
check_output_contains "it names the mount" "nvme0n1 is mounted on /mnt/nvme" \
    runas alice vfio-gate bind $NVME --to vfio-pci
check_status 3 "even a --dry-run is refused" runas alice vfio-gate bind $NVME --dry-run
check_equals "$NVME is still on nvme" nvme driver_of $NVME
check "and /mnt/nvme is still readable" test -s /mnt/nvme/README

check_status 3 "binding the virtio-net NIC that is up with an address is refused" \
    runas alice vfio-gate bind $VNET --to vfio-pci
check_output_contains "the refusal names the interface and its address" "is up with address 10.0.2.15/24" \
    runas alice vfio-gate bind $VNET --to vfio-pci
check_equals "$VNET is still on virtio-pci" virtio-pci driver_of $VNET

check_status 3 "binding the bridge $BRIDGE is refused" runas alice vfio-gate bind $BRIDGE --to vfio-pci
check_output_contains "the refusal says it is not an endpoint" "only hands out endpoints" \
    runas alice vfio-gate bind $BRIDGE --to vfio-pci
check_status 3 "binding the LPC bridge $LPC is refused" runas alice vfio-gate bind $LPC --to vfio-pci
check_output_contains "the refusal says it is not an endpoint" "only hands out endpoints" \
    runas alice vfio-gate bind $LPC --to pci-stub
check_equals "after the refusals group 11 is as it was" "$before" group11_state

# The guards refuse the use, not the device: once the host stops using them, the plan is allowed
# (dry runs only: nothing is moved).
umount /mnt/nvme
check "unmounted, the NVMe disk may be bound (dry run)" runas alice vfio-gate bind $NVME --dry-run
mount -t ext2 /dev/nvme0n1 /mnt/nvme
check_status 3 "mounted again, it is refused again" runas alice vfio-gate bind $NVME --dry-run
IF=$(cat /run/virtio-net.if)
ip addr flush dev "$IF"
ip link set "$IF" down
check "down without an address, the NIC may be bound (dry run)" \
    runas alice vfio-gate bind $VNET --dry-run
ip addr add 10.0.2.15/24 dev "$IF"
ip link set "$IF" up
check_status 3 "up with its address again, it is refused again" \
    runas alice vfio-gate bind $VNET --dry-run

# --- a device alone in its group: no --group needed ---
check "alice binds $NIC alone, without --group" runas alice vfio-gate bind $NIC --to vfio-pci
check_equals "$NIC is on vfio-pci" vfio-pci driver_of $NIC
check_equals "/dev/vfio/8 is alice's, mode 0600" "alice 600" node_owner 8
check_output_contains "the kernel agrees group 8 is viable" "agree viable" vfio-viability 8
check_output_contains "alice's VFIO program gets a device fd for $NIC" "device fd" \
    runas alice vfio-probe open 8 "0000:$NIC"
check_status 1 "bob cannot open /dev/vfio/8" runas bob vfio-probe status 8
check "alice releases $NIC" runas alice vfio-gate release $NIC
check_equals "e1000e is back on $NIC" e1000e driver_of $NIC
check_equals "/dev/vfio/8 is gone" gone node_owner 8

# --- timings (TCG: compare only within one run) ---
measure_metric group_bind_release_median_ms 3 \
    runas alice vfio-gate bind $EDU --to vfio-pci --group --then runas alice vfio-gate release $EDU
measure_metric group_dry_run_median_ms 3 runas alice vfio-gate bind $EDU --to vfio-pci --group --dry-run
check_equals "after the measurements group 11 is as it was" "$before" group11_state

finish
