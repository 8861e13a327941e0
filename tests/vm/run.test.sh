# `vfio-gate run -- CMD` on a real kernel (issue 5's "Done when"), under the default policy: the
# lease is tied to the frontend's connection. The device goes back when CMD exits normally, when
# it crashes, when the frontend is SIGKILLed while CMD runs (timed: # metric
# run_sigkill_release_ms), and — with a VM-like holder (vfio-probe hold) — once the holder lets go
# of the group, the helper retrying meanwhile. The exit status is CMD's; while CMD runs, list shows
# the tied lease.
. /test/lib.sh

metric uptime_at_start_s "$(uptime_s)"

NIC=01:00.0    # e1000e, alone in IOMMU group 8
BRIDGE=04:00.0 # } IOMMU group 11
E1000=05:01.0  # }
EDU=05:02.0    # }
STATE=/run/vfio-gate
LOG=/run/vfio-gated.log

# st ADDR: "driver/override".
st() {
    _d=/sys/bus/pci/devices/0000:$1
    if [ -e "$_d/driver" ]; then
        _l=$(readlink "$_d/driver")
        _l=${_l##*/}
    else
        _l=none
    fi
    read -r _o < "$_d/driver_override"
    echo "$_l/$_o"
}
nic_restored() { [ ! -e $STATE/group-8.lease ] && [ "$(st $NIC)" = "e1000e/(null)" ]; }
g11_restored() {
    [ ! -e $STATE/group-11.lease ] &&
        [ "$(st $BRIDGE) $(st $E1000) $(st $EDU)" = "none/(null) e1000/(null) none/(null)" ]
}
nic_state() { echo "$(st $NIC) node=$(node_owner 8) lease=$(test -e $STATE/group-8.lease && echo yes || echo no)"; }
g11_state() {
    echo "$(st $BRIDGE) $(st $E1000) $(st $EDU) node=$(node_owner 11) lease=$(test -e $STATE/group-11.lease && echo yes || echo no)"
}
NIC_RESTORED="e1000e/(null) node=gone lease=no"
NIC_HELD="vfio-pci/vfio-pci node=alice 600 lease=yes"
G11_RESTORED="none/(null) e1000/(null) none/(null) node=gone lease=no"
G11_HELD="none/(null) pci-stub/pci-stub vfio-pci/vfio-pci node=alice 600 lease=yes"

# poll_ms MAX_MS CMD...: runs CMD every 10 ms until it succeeds; prints the ms it took, or fails.
poll_ms() {
    _max=$1
    shift
    _t0=$(now_ms)
    while ! "$@"; do
        [ $(($(now_ms) - _t0)) -gt "$_max" ] && return 1
        usleep 10000
    done
    echo $(($(now_ms) - _t0))
}

# pid_of_child PARENT NAME: the pid of PARENT's child running NAME.
pid_of_child() {
    for _s in /proc/[0-9]*/stat; do
        read -r _pid _comm _st _ppid _rest < "$_s" 2> /dev/null || continue
        [ "$_ppid" = "$1" ] && [ "$_comm" = "($2)" ] && echo "$_pid" && return 0
    done
    return 1
}

check_equals "$NIC starts on e1000e" "$NIC_RESTORED" nic_state
check_equals "group 11 starts as documented" "$G11_RESTORED" g11_state

# --- CMD exits normally ---
check_status 0 "run -- true: exit status 0" runas alice vfio-gate run --device $NIC -- true
check_output_contains "the note names the device handed over" "$NIC" \
    runas alice vfio-gate run --device $NIC -- true
check_equals "$NIC is restored after CMD exited" "$NIC_RESTORED" nic_state
check_output_contains "CMD runs as alice" "uid=1000(alice)" \
    runas alice vfio-gate run --device $NIC -- id
check_output_contains "CMD sees its device on vfio-pci and the node as its own" \
    "vfio-pci alice" runas alice vfio-gate run --device $NIC -- \
    sh -c "echo \$(basename \$(readlink $(dev $NIC)/driver)) \$(stat -c %U /dev/vfio/8)"
check_output_contains "while CMD runs, list shows the tied lease: alice (run)" "alice (run)" \
    runas alice vfio-gate run --device $NIC -- sh -c "vfio-gate list | grep '^$NIC'"
check_output_contains "a VFIO program run by CMD gets the device" "device fd" \
    runas alice vfio-gate run --device $NIC -- vfio-probe open 8 0000:$NIC
check_status 7 "exit status is CMD's (7)" runas alice vfio-gate run --device $NIC -- sh -c 'exit 7'
check_equals "$NIC is restored" "$NIC_RESTORED" nic_state
check_status 127 "a CMD that does not exist: 127" \
    runas alice vfio-gate run --device $NIC -- /nonexistent/vm
check_equals "$NIC is restored" "$NIC_RESTORED" nic_state
check_status 3 "bob's run is refused (exit status 3), and CMD not run" \
    runas bob vfio-gate run --device $NIC -- touch /tmp/bob-ran
check "bob's CMD did not run" test ! -e /tmp/bob-ran

# --- CMD crashes ---
check_status 139 "CMD killed by SIGSEGV: exit status 139" \
    runas alice vfio-gate run --device $NIC -- sh -c 'kill -SEGV $$'
check_equals "$NIC is restored after the crash" "$NIC_RESTORED" nic_state
check_status 137 "CMD killed by SIGKILL: exit status 137" \
    runas alice vfio-gate run --device $NIC -- sh -c 'kill -KILL $$'
check_equals "$NIC is restored" "$NIC_RESTORED" nic_state

# --- SIGTERM to the frontend goes to CMD, which decides ---
runas alice vfio-gate run --device $NIC -- sleep 30 > /tmp/run-term 2>&1 &
fe=$!
check "run -- sleep 30: the device is handed over" wait_for 20 sh -c "[ \"\$(stat -c %U /dev/vfio/8 2>/dev/null)\" = alice ]"
kill -TERM $fe
wait $fe
check_equals "SIGTERM to vfio-gate is passed to CMD: exit status 143" 143 echo $?
check_equals "$NIC is restored" "$NIC_RESTORED" nic_state

# --- the frontend SIGKILLed while CMD runs ---
runas alice vfio-gate run --device $NIC -- sleep 30 > /tmp/run-kill 2>&1 &
fe=$!
check "run -- sleep 30 as alice: $NIC handed over" wait_for 20 sh -c "[ \"\$(stat -c %U /dev/vfio/8 2>/dev/null)\" = alice ]"
check_equals "$NIC is held" "$NIC_HELD" nic_state
check "the lease on disk is tied to the connection" grep -qx "tied=yes" $STATE/group-8.lease
check_output_contains "list shows alice (run)" "alice (run)" sh -c "runas bob vfio-gate list | grep '^$NIC'"
check_output_contains "bob is told alice holds it" "held by alice" runas bob vfio-gate release $NIC
sleeper=$(pid_of_child $fe sleep)
check "CMD (sleep) runs as a child of vfio-gate" test -n "$sleeper"
kill -KILL $fe
ms=$(poll_ms 5000 nic_restored)
check "after SIGKILL of vfio-gate, the helper releases $NIC" test -n "$ms"
metric run_sigkill_release_ms "${ms:-timeout}"
check "... within a second (${ms:-more than 5000} ms)" test "${ms:-99999}" -le 1000
check_equals "$NIC is fully restored" "$NIC_RESTORED" nic_state
check "CMD itself still runs (only the lease ended)" kill -0 "$sleeper"
kill "$sleeper" 2> /dev/null
check_output_contains "the audit log has the tied release" "event=tied-release group=8 owner_uid=1000 result=ok" \
    cat $LOG

# --- a VM-like holder: the helper retries until it lets go ---
runas alice vfio-gate run --device $EDU --group -- vfio-probe hold 11 0000:$EDU > /tmp/run-hold 2>&1 &
fe=$!
check "run --group -- vfio-probe hold: the probe holds group 11" wait_for 20 grep -q holding /tmp/run-hold
check_equals "group 11 is held by alice's run" "$G11_HELD" g11_state
check_output_contains "list shows alice (run) on $EDU" "alice (run)" \
    sh -c "runas alice vfio-gate list | grep '^$EDU'"
probe=$(pid_of_child $fe vfio-probe)
check "the probe is vfio-gate's child" test -n "$probe"
kill -KILL $fe
usleep 1500000
check_equals "1.5 s after SIGKILL of vfio-gate the group is still held (the probe holds it)" \
    "$G11_HELD" g11_state
check "the helper logged the pending release" grep -q "event=tied-release group=11 owner_uid=1000 result=pending" $LOG
check_output_contains "bob still cannot take it" "held by alice" runas bob vfio-gate release $EDU
check "the probe still holds it" kill -0 "$probe"
kill -KILL "$probe"
ms=$(poll_ms 6000 g11_restored)
check "once the probe is gone, the helper releases group 11" test -n "$ms"
metric run_holder_gone_release_ms "${ms:-timeout}"
check "... within about 2 s (${ms:-more than 6000} ms)" test "${ms:-99999}" -le 2500
check_equals "group 11 is fully restored" "$G11_RESTORED" g11_state
check "the audit log has the tied release done" grep -q "event=tied-release group=11 owner_uid=1000 result=ok" $LOG
check_equals "no lease records left" "" lease_files $STATE

finish
