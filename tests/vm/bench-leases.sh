# The cost of safety: a bind + release cycle of 01:00.0 through vfio-gate against the same sysfs
# writes done by hand, in one guest. Not a test (its name does not end in .test.sh, so
# `cargo xtask test` skips it): run it with
#
#   cargo xtask vm run --script tests/vm/bench-leases.sh [--kernel 6.12]
#
# N = 20 cycles each; another N through the guest's kernel command line:
#   VFIO_GATE_KERNEL_ARGS=bench_n=50 cargo xtask vm run --script tests/vm/bench-leases.sh
#
# Three ways of doing the same cycle (e1000e → vfio-pci → e1000e), N times each, medians in ms:
# - by hand, as root: `echo` to driver_override, unbind, drivers_probe, and back (one `sh -c`);
# - vfio-gate over the protocol, as alice (vfio-load: one connection per request): the helper's
#   whole path — peer credentials, policy, guards, the group plan, the lease written and fsynced
#   (intent, applied, releasing, removed), the writes in the sandbox, the wait for /dev/vfio/8 and
#   its chown, the re-reads that verify each step;
# - the CLI as a user runs it: `runas alice vfio-gate bind` then `… release` (two processes each,
#   the frontend's start-up included).
# Prints `# metric bench_*` lines and the ratios to the writes by hand. TCG timings: compare only
# within one run.
. /test/lib.sh

N=$(sed -n 's/.*\bbench_n=\([0-9][0-9]*\).*/\1/p' /proc/cmdline)
N=${N:-20}
NIC=01:00.0
S=/sys/bus/pci
D=$S/devices/0000:$NIC

metric bench_cycles "$N"
check_equals "$NIC starts on e1000e" e1000e driver_of $NIC
check "the helper is up (not timed)" runas alice vfio-gate list

check "by hand, as root: $N cycles" measure -n "$N" -- sh -c "
    echo vfio-pci > $D/driver_override &&
    echo 0000:$NIC > $D/driver/unbind &&
    echo 0000:$NIC > $S/drivers_probe &&
    echo > $D/driver_override &&
    echo 0000:$NIC > $S/drivers/vfio-pci/unbind &&
    echo 0000:$NIC > $S/drivers_probe"
by_hand=$(printf '%s\n' "$OUT" | tail -n 1)
check_equals "after the cycles by hand $NIC is on e1000e" e1000e driver_of $NIC

check "vfio-gate over the protocol, as alice: $N cycles" \
    vfio-load --user alice --devices $NIC --cycles "$N" --listers 0 --silent 0 --idle-lists 0
protocol=$(printf '%s\n' "$OUT" | sed -n 's/^# metric load_cycle_p50_ms=//p')
bind=$(printf '%s\n' "$OUT" | sed -n 's/^# metric load_bind_p50_ms=//p')
release=$(printf '%s\n' "$OUT" | sed -n 's/^# metric load_release_p50_ms=//p')
check_equals "after the cycles through the protocol $NIC is on e1000e" e1000e driver_of $NIC

check "the CLI, as alice: $N cycles" measure -n "$N" -- \
    runas alice vfio-gate bind $NIC --to vfio-pci --then runas alice vfio-gate release $NIC
cli=$(printf '%s\n' "$OUT" | tail -n 1)
check_equals "after the CLI cycles $NIC is on e1000e" e1000e driver_of $NIC
check_equals "no lease records left" "" lease_files

metric bench_by_hand_cycle_median_ms "$by_hand"
metric bench_vfio_gate_cycle_median_ms "$protocol"
metric bench_vfio_gate_bind_median_ms "$bind"
metric bench_vfio_gate_release_median_ms "$release"
metric bench_cli_cycle_median_ms "$cli"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f\n", a / b; else print "n/a" }'; }
metric bench_vfio_gate_to_by_hand_ratio "$(ratio "$protocol" "$by_hand")"
metric bench_cli_to_by_hand_ratio "$(ratio "$cli" "$by_hand")"
finish
