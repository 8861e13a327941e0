# The walking skeleton on a real kernel (issue 2's "Done when"): non-root users list, bind and
# release through the socket-activated helper; the policy's denials name their rule; hostile
# frames get typed errors; a killed helper is activated again. Plus the latencies of the closing
# note, as `# metric` lines.
. /test/lib.sh

metric uptime_at_start_s "$(uptime_s)"

NIC=01:00.0     # e1000e, alone in IOMMU group 8
TESTDEV=00:06.1 # pci-testdev, no driver, group 5 with edu 00:06.0
NVME=03:00.0    # storage: denied by the policy's [[deny]] rule

# --- list ---
check "alice lists devices as a non-root user" runas alice vfio-gate list
check_output_contains "the list shows $NIC" "$NIC" runas alice vfio-gate list
check_output_contains "the list shows its driver" e1000e runas alice vfio-gate list
check_output_contains "list --json works" '"address"' runas alice vfio-gate list --json
check_output_contains "list --json is a versioned document from the helper" '"source": "helper"' \
    runas alice vfio-gate list --json
check "the helper was started by socket activation" test -s /run/vfio-gated.pid

# --- alice binds the NIC to vfio-pci and releases it ---
check "alice binds $NIC to vfio-pci" runas alice vfio-gate bind $NIC --to vfio-pci
check_equals "$NIC is now driven by vfio-pci" vfio-pci driver_of $NIC
check_equals "$NIC's driver_override is vfio-pci" vfio-pci override_of $NIC
check "/dev/vfio/8 exists for its group" test -c /dev/vfio/8
check_output_contains "the list shows alice holding it" alice runas alice vfio-gate list
check "alice releases $NIC" runas alice vfio-gate release $NIC
check_equals "e1000e is back on $NIC" e1000e driver_of $NIC
check_equals "$NIC's driver_override is cleared" "(null)" override_of $NIC

# --- alice binds the test device to pci-stub and releases it ---
check "alice binds $TESTDEV to pci-stub" runas alice vfio-gate bind $TESTDEV --to pci-stub
check_equals "$TESTDEV is now driven by pci-stub" pci-stub driver_of $TESTDEV
check_equals "$TESTDEV's driver_override is pci-stub" pci-stub override_of $TESTDEV
check "alice releases $TESTDEV" runas alice vfio-gate release $TESTDEV
check_equals "$TESTDEV is driver-less again, as before" none driver_of $TESTDEV
check_equals "$TESTDEV's driver_override is cleared" "(null)" override_of $TESTDEV

# --- denials ---
check_status 3 "bob's bind of $NIC is denied (exit status 3)" \
    runas bob vfio-gate bind $NIC --to vfio-pci
check_output_contains "the denial says no rule allows it (deny by default)" \
    "no policy rule lets you bind" runas bob vfio-gate bind $NIC --to vfio-pci
check_output_contains "on the wire: Denied by the policy, decided by no rule" "Denied { why: Policy, rule: None" \
    runas bob rawframe --request bind $NIC vfio-pci
check_equals "after bob's attempts $NIC is still on e1000e" e1000e driver_of $NIC
check_equals "and its driver_override is untouched" "(null)" override_of $NIC

check_status 3 "alice's bind of $NVME is denied (exit status 3)" \
    runas alice vfio-gate bind $NVME --to vfio-pci
check_output_contains "the denial names the deny rule" "storage is never handed out" \
    runas alice vfio-gate bind $NVME --to vfio-pci
check_output_contains "on the wire: Denied by the deny rule" \
    'Denied { why: Policy, rule: Some(RuleRef { name: "storage is never handed out"' \
    runas alice rawframe --request bind $NVME vfio-pci
check_equals "$NVME is still on nvme" nvme driver_of $NVME
check_status 3 "alice may not put $NIC on pci-stub (only vfio-pci is allowed)" \
    runas alice vfio-gate bind $NIC --to pci-stub
check_status 4 "an absent device is not found (exit status 4)" \
    runas alice vfio-gate bind 0000:42:00.0 --to vfio-pci

# --- hostile frames ---
# The current protocol version, then a Bind variant tag and garbage: not a request.
check_output_contains "a malformed frame gets a typed BadRequest" "Error(BadRequest" \
    runas bob rawframe --after-version "01ffffff"
check_output_contains "an oversized frame gets a typed BadRequest" "Error(BadRequest" \
    runas bob rawframe --len-only 1000000
# A well-formed frame of protocol version 7.
check_output_contains "another protocol version gets VersionMismatch" "VersionMismatch" \
    runas bob rawframe --hex "04000000 07000000"
check_output_contains "the helper keeps serving: list works" "$NIC" runas alice vfio-gate list

# --- a killed helper is activated again by the next client ---
pid=$(helper_pid)
check "the helper is running" test -n "$pid"
kill -9 "$pid"
check "the socket survives the killed helper" test -S /run/vfio-gate.sock
check_output_contains "the next client is served" "$NIC" runas alice vfio-gate list
check_fails "by a new helper process" test "$(helper_pid)" = "$pid"
check_output_contains "the killed helper is in socket-activate's log" "killed by SIGKILL" \
    cat /run/socket-activate.log
check_output_contains "the audit log (helper stderr) names the deciding rule of a denial" \
    "storage is never handed out" cat /run/vfio-gated.log

# --- latencies (TCG: compare only within one run) ---
measure_metric list_median_ms 10 runas alice vfio-gate list
measure_metric bind_release_median_ms 5 \
    runas alice vfio-gate bind $NIC --to vfio-pci --then runas alice vfio-gate release $NIC
S=/sys/bus/pci
measure_metric bind_release_by_hand_median_ms 5 sh -c "
    echo vfio-pci > $S/devices/0000:$NIC/driver_override &&
    echo 0000:$NIC > $S/devices/0000:$NIC/driver/unbind &&
    echo 0000:$NIC > $S/drivers_probe &&
    echo > $S/devices/0000:$NIC/driver_override &&
    echo 0000:$NIC > $S/drivers/vfio-pci/unbind &&
    echo 0000:$NIC > $S/drivers_probe"
check_equals "after the measurements $NIC is on e1000e" e1000e driver_of $NIC
check_equals "with no override" "(null)" override_of $NIC

finish
