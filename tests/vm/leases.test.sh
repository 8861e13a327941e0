# Leases on a real kernel (issue 5's "Done when", the VM half), under leases.policy.toml.
#
# Crash consistency: with the fault-injection build of the helper installed as /usr/bin/vfio-gated,
# the helper is stopped dead (SIGKILL) at every named step of a bind and of a release, for two
# plans — 01:00.0 alone (e1000e → vfio-pci) and group 11 with --group (05:02.0 → vfio-pci,
# 05:01.0 e1000 → pci-stub, the bridge left alone) — and also for a `vfio-gate run` lease. The
# next client activates a fresh helper, which reconciles before serving; every device must then
# be either fully assigned (target driver and driver_override, an applied lease on disk, the group
# node alice's) or fully restored (original driver, no override, no lease, the node root's or
# gone). Then ownership: bob cannot release alice's device, an admin (root, or carol through the
# policy) can; release --all and --user; two users racing for one group.
. /test/lib.sh

metric uptime_at_start_s "$(uptime_s)"

NIC=01:00.0    # e1000e, alone in IOMMU group 8
BRIDGE=04:00.0 # PCIe-to-PCI bridge, no driver      } IOMMU group 11
E1000=05:01.0  # e1000 behind it, on e1000          }
EDU=05:02.0    # edu behind it, no driver           }
TESTDEV=00:06.1
STATE=/run/vfio-gate
FAULT=$STATE/fault-injection
LOG=/run/vfio-gated.log

# st ADDR: "driver/override" of a device (shell built-ins but one readlink: many calls per case).
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

# lease GROUP: the lease record's phase, tie and members on one line, or "none".
lease() {
    _f=$STATE/group-$1.lease
    if [ -e "$_f" ]; then
        grep -E '^(owner_uid|phase|tied|member)=' "$_f" | tr '\n' ' ' | sed 's/ $//'
    else
        echo none
    fi
}

NIC_ASSIGNED="vfio-pci/vfio-pci lease=owner_uid=1000 phase=applied tied=no member=0000:01:00.0 vfio-pci e1000e - 8086:10d3 node=alice 600"
NIC_RESTORED="e1000e/(null) lease=none node=gone"
G11_ASSIGNED="none/(null) pci-stub/pci-stub vfio-pci/vfio-pci lease=owner_uid=1000 phase=applied tied=no member=0000:05:01.0 pci-stub e1000 - 8086:100e member=0000:05:02.0 vfio-pci - - 1234:11e8 node=alice 600"
G11_RESTORED="none/(null) e1000/(null) none/(null) lease=none node=gone"

nic_state() { echo "$(st $NIC) lease=$(lease 8) node=$(node_owner 8)"; }
g11_state() { echo "$(st $BRIDGE) $(st $E1000) $(st $EDU) lease=$(lease 11) node=$(node_owner 11)"; }

# verdict PLAN: assigned, restored, or INCONSISTENT with the state found. A group node left
# root:root 0600 counts as restored as well as a node that is gone.
verdict() {
    case $1 in
    nic) _s=$(nic_state) _a=$NIC_ASSIGNED _r=$NIC_RESTORED ;;
    g11) _s=$(g11_state) _a=$G11_ASSIGNED _r=$G11_RESTORED ;;
    esac
    if [ "$_s" = "$_a" ]; then
        echo assigned
    elif [ "$_s" = "$_r" ] || [ "$_s" = "${_r%node=gone}node=root 600" ]; then
        echo restored
    else
        echo "INCONSISTENT: $_s"
    fi
}

bind_args() {
    case $1 in
    nic) echo "$NIC --to vfio-pci" ;;
    g11) echo "$EDU --group" ;;
    esac
}
primary() {
    case $1 in
    nic) echo $NIC ;;
    g11) echo $EDU ;;
    esac
}

# stopped_at STEP COUNT_BEFORE: the helper logged its fault-injection stop at STEP once more,
# and consumed the trigger file.
stopped_at() {
    [ "$(grep -c "event=fault-injection step=$1" $LOG)" -gt "$2" ] && [ ! -e $FAULT ]
}

# A fresh helper (the previous one was killed) is activated by this client and reconciles first.
next_client() {
    check "a new helper serves the next client (it reconciled first)" runas alice vfio-gate list
}

# Back to the starting layout after a case that ended assigned.
give_back() { # PLAN
    if [ "$(verdict "$1")" = assigned ]; then
        check "[$1] alice releases what the killed helper left assigned" \
            runas alice vfio-gate release "$(primary "$1")"
        check_equals "[$1] and it is restored" restored verdict "$1"
    fi
}

# bind_case PLAN STEP EXPECTED: kill the helper at STEP of alice's bind.
bind_case() {
    _n=$(grep -c "event=fault-injection step=$2" $LOG)
    echo "$2" > $FAULT
    # shellcheck disable=SC2046
    check_fails "[$1] alice's bind: the helper dies at $2, the client sees the connection close" \
        runas alice vfio-gate bind $(bind_args "$1")
    [ "$1 $2" = "nic bind:lease-written" ] && note "what the client said (exit $STATUS): $OUT"
    check "[$1] the helper logged its stop at $2" stopped_at "$2" "$_n"
    next_client
    check_equals "[$1] killed at $2, then reconciled: $3" "$3" verdict "$1"
    give_back "$1"
}

# host_netdev PLAN: the ifindex of the network interface of the plan's member that has a host
# driver (e1000e on 01:00.0, e1000 on 05:01.0), or "none" while it is off that driver. A new
# ifindex means the driver was unbound and probed again.
host_netdev() {
    case $1 in
    nic) _h=$NIC ;;
    g11) _h=$E1000 ;;
    esac
    for _i in /sys/bus/pci/devices/0000:$_h/net/*/ifindex; do
        [ -e "$_i" ] && cat "$_i" && return
    done
    echo none
}

# release_case PLAN STEP: alice binds, then the helper dies at STEP of her release.
release_case() {
    # shellcheck disable=SC2046
    check "[$1] alice binds (for $2)" runas alice vfio-gate bind $(bind_args "$1")
    check_equals "[$1] assigned" assigned verdict "$1"
    _n=$(grep -c "event=fault-injection step=$2" $LOG)
    echo "$2" > $FAULT
    check_fails "[$1] alice's release: the helper dies at $2" \
        runas alice vfio-gate release "$(primary "$1")"
    check "[$1] the helper logged its stop at $2" stopped_at "$2" "$_n"
    _if=$(host_netdev "$1")
    next_client
    check_equals "[$1] killed at $2, then reconciled: restored" restored verdict "$1"
    if [ "$_if" != none ]; then
        # The host driver was already back when the helper died: finishing the release has
        # nothing left to do to that member, and must not take the host's NIC down and up again.
        check_equals "[$1] killed at $2 with the host NIC already back: the reconcile leaves it alone (no unbind and re-probe: same ifindex)" \
            "$_if" host_netdev "$1"
    fi
    give_back "$1"
}

# --- the fault-injection helper replaces the release build, for this test only ---
check "the fault-injection build is in the guest" test -x /usr/lib/vfio-gate/vfio-gated-faults
cp /usr/lib/vfio-gate/vfio-gated-faults /usr/bin/vfio-gated.new
mv /usr/bin/vfio-gated.new /usr/bin/vfio-gated
pid=$(helper_pid)
[ -n "$pid" ] && kill -9 "$pid"
check "alice lists devices through it" runas alice vfio-gate list
check "the helper says it is a fault-injection test build" grep -q "event=TEST-BUILD" $LOG
check_equals "01:00.0 starts restored" restored verdict nic
check_equals "group 11 starts restored" restored verdict g11
check_equals "no lease records at start" "" lease_files $STATE

# --- crash consistency: every step of bind and of release, two plans ---
for plan in nic g11; do
    for step in bind:lease-written bind:override-set bind:unbound bind:probed \
        bind:members-bound bind:node-handed-over; do
        bind_case $plan $step restored
    done
    # The lease says applied before this point: the bind is complete, only the answer was lost.
    bind_case $plan bind:lease-applied assigned
    for step in release:lease-releasing release:override-restored release:unbound \
        release:probed release:node-reset; do
        release_case $plan $step
    done
done

# --- the same for a lease tied to a connection (vfio-gate run) ---
n=$(grep -c "event=fault-injection step=bind:lease-applied" $LOG)
echo bind:lease-applied > $FAULT
check_fails "[run] the helper dies at bind:lease-applied of a run's bind" \
    runas alice vfio-gate run --device $NIC -- touch /tmp/run-ran
check "[run] the helper logged its stop" stopped_at bind:lease-applied "$n"
check "[run] the command was not run" test ! -e /tmp/run-ran
next_client
check_equals "[run] the tied lease was released at start: restored" restored verdict nic
check_output_contains "[run] the audit log says the tied lease was released" "event=tied-release" \
    cat $LOG

n=$(grep -c "event=fault-injection step=release:unbound" $LOG)
echo release:unbound > $FAULT
check_status 0 "[run] the helper dies at release:unbound after the command: exit status is the command's" \
    runas alice vfio-gate run --device $NIC -- true
check "[run] the helper logged its stop" stopped_at release:unbound "$n"
next_client
check_equals "[run] killed during the run's release, then reconciled: restored" restored verdict nic
check_equals "no lease records left" "" lease_files $STATE
check "the helper logged a reconcile line" grep -q "event=reconcile" $LOG

# --- ownership ---
check "alice binds $NIC" runas alice vfio-gate bind $NIC --to vfio-pci
check_output_contains "list shows alice as the holder" "alice" sh -c "runas bob vfio-gate list | grep '^$NIC'"
check_status 3 "bob cannot release alice's device (exit status 3)" runas bob vfio-gate release $NIC
check_output_contains "he is told who holds it" "held by alice" runas bob vfio-gate release $NIC
check_status 3 "bob cannot release everything of alice's (--user alice)" \
    runas bob vfio-gate release --user alice
check_status 3 "bob cannot bind it either" runas bob vfio-gate bind $NIC --to vfio-pci
check_equals "after all that $NIC is still alice's" assigned verdict nic
check "carol, an admin through the policy, releases alice's device" runas carol vfio-gate release $NIC
check_equals "and it is restored" restored verdict nic
check "alice binds $NIC again" runas alice vfio-gate bind $NIC --to vfio-pci
check "root releases it (root is always an admin)" vfio-gate release $NIC
check_equals "and it is restored" restored verdict nic

check "alice binds $NIC" runas alice vfio-gate bind $NIC --to vfio-pci
check "alice parks $TESTDEV on pci-stub" runas alice vfio-gate bind $TESTDEV --to pci-stub
check "bob binds group 11 with --group" runas bob vfio-gate bind $EDU --group
check_output_contains "list shows bob holding group 11" "bob" sh -c "runas alice vfio-gate list | grep '^$EDU'"
check "alice releases all of hers (--all)" runas alice vfio-gate release --all
check_equals "$NIC is restored" restored verdict nic
check_equals "$TESTDEV is restored" "none/(null)" st $TESTDEV
check "and no lease of hers is left" test ! -e $STATE/group-5.lease -a ! -e $STATE/group-8.lease
g11_devices() { echo "$(st $BRIDGE) $(st $E1000) $(st $EDU) node=$(node_owner 11)"; }
check_equals "bob's group 11 is untouched" "none/(null) pci-stub/pci-stub vfio-pci/vfio-pci node=bob 600" \
    g11_devices
check_status 0 "alice's release --all with nothing held succeeds" runas alice vfio-gate release --all
check "carol releases everything of bob's (--user bob)" runas carol vfio-gate release --user bob
check_equals "group 11 is restored" restored verdict g11
check_equals "no lease records left" "" lease_files $STATE

# --- two users race for one group: exactly one wins, the other is told who holds it ---
race() { # ROUND ARGS...
    _r=$1
    shift
    rm -f /tmp/race.*
    # Who is started first alternates from round to round.
    if [ $((_r % 2)) = 1 ]; then _first=alice _second=bob; else _first=bob _second=alice; fi
    for _u in $_first $_second; do
        (
            runas $_u vfio-gate bind "$@" > /tmp/race.$_u 2>&1
            echo $? > /tmp/race.$_u.rc
        ) &
    done
    wait
    _a=$(cat /tmp/race.alice.rc) _b=$(cat /tmp/race.bob.rc)
    if [ "$_a" = 0 ] && [ "$_b" = 3 ]; then
        _w=alice _l=bob
    elif [ "$_b" = 0 ] && [ "$_a" = 3 ]; then
        _w=bob _l=alice
    else
        _w= _l=
    fi
    check "race $_r ($*): exactly one of alice and bob wins (exit 0), the other is refused (exit 3)" \
        sh -c '[ -n "$1" ] || { printf "%s\n" "$2"; exit 1; }' - "$_w" \
        "alice: exit $_a: $(cat /tmp/race.alice); bob: exit $_b: $(cat /tmp/race.bob)"
    if [ -n "$_w" ]; then
        note "race $_r: $_w won"
        check_output_contains "race $_r: $_l is told $_w holds it" "held by $_w" cat /tmp/race.$_l
        check "race $_r: $_w releases" runas $_w vfio-gate release "$1"
    fi
}
race 1 $EDU --group
check_equals "after race 1 group 11 is restored" restored verdict g11
race 2 $EDU --group
check_equals "after race 2 group 11 is restored" restored verdict g11
race 3 $NIC --to vfio-pci
check_equals "after race 3 $NIC is restored" restored verdict nic
race 4 $NIC --to vfio-pci
check_equals "after race 4 $NIC is restored" restored verdict nic
check_equals "no lease records left" "" lease_files $STATE

finish
