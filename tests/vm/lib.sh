# Assertions for the VM tests (busybox sh). In the guest: `. /test/lib.sh`.
#
# Each check runs a command, records its output (stdout + stderr) in $OUT and its exit status in
# $STATUS, and prints one TAP-like line: `ok N - description`, or `not ok N - description`
# followed by `#`-prefixed lines with the command, its status and its output. `finish` prints
# `N passed, M failed` and exits 1 if any check failed. A script that ends without `finish`
# counts as one more failure.
#
#   check "description" CMD...                    CMD exits 0
#   check_fails "description" CMD...              CMD exits non-zero
#   check_status N "description" CMD...           CMD exits N
#   check_output_contains "description" TEXT CMD...  CMD's output contains TEXT (any status)
#   check_output_lacks "description" TEXT CMD...  CMD's output does not contain TEXT
#   check_equals "description" TEXT CMD...        CMD's output is exactly TEXT (any status)
#   metric NAME VALUE                             prints `# metric NAME=VALUE`
#   measure_metric NAME N CMD... [--then CMD...]  median of N runs, as metric NAME (ms)
#   note TEXT                                     a `# TEXT` comment line
#   finish
#
# Helpers: driver_of ADDR (driver name or "none"), override_of ADDR (driver_override), dev ADDR
# (sysfs path), helper_pid (the running helper's pid, empty if none), uptime_s,
# wait_for SECONDS CMD... (poll until CMD succeeds), now_ms (uptime in ms),
# node_owner GROUP (`alice 600` for /dev/vfio/GROUP, or `gone`), lease_files [DIR] (the lease
# records in the state directory).

_lib_n=0
_lib_passed=0
_lib_failed=0
_lib_finished=
OUT=
STATUS=0

_lib_run() {
    _lib_cmd=$*
    OUT=$("$@" 2>&1)
    STATUS=$?
}

_lib_result() { # 0|1 description [detail lines]
    _lib_n=$((_lib_n + 1))
    if [ "$1" = 0 ]; then
        _lib_passed=$((_lib_passed + 1))
        echo "ok $_lib_n - $2"
    else
        _lib_failed=$((_lib_failed + 1))
        echo "not ok $_lib_n - $2"
        shift 2
        for line in "$@"; do echo "#   $line"; done
        echo "#   command: $_lib_cmd"
        echo "#   exit status: $STATUS"
        if [ -n "$OUT" ]; then
            echo "#   output:"
            printf '%s\n' "$OUT" | sed 's/^/#     /'
        fi
    fi
}

check() {
    _lib_d=$1
    shift
    _lib_run "$@"
    [ "$STATUS" -eq 0 ]
    _lib_result $? "$_lib_d"
}

check_fails() {
    _lib_d=$1
    shift
    _lib_run "$@"
    [ "$STATUS" -ne 0 ]
    _lib_result $? "$_lib_d" "expected a non-zero exit status"
}

check_status() {
    _lib_want=$1 _lib_d=$2
    shift 2
    _lib_run "$@"
    [ "$STATUS" -eq "$_lib_want" ]
    _lib_result $? "$_lib_d" "expected exit status $_lib_want"
}

check_output_contains() {
    _lib_d=$1 _lib_text=$2
    shift 2
    _lib_run "$@"
    case $OUT in *"$_lib_text"*) true ;; *) false ;; esac
    _lib_result $? "$_lib_d" "expected the output to contain: $_lib_text"
}

check_output_lacks() {
    _lib_d=$1 _lib_text=$2
    shift 2
    _lib_run "$@"
    case $OUT in *"$_lib_text"*) false ;; *) true ;; esac
    _lib_result $? "$_lib_d" "expected the output not to contain: $_lib_text"
}

check_equals() {
    _lib_d=$1 _lib_text=$2
    shift 2
    _lib_run "$@"
    [ "$OUT" = "$_lib_text" ]
    _lib_result $? "$_lib_d" "expected the output to be exactly: $_lib_text"
}

note() { echo "# $*"; }

metric() { echo "# metric $1=$2"; }

measure_metric() {
    _lib_name=$1 _lib_runs=$2
    shift 2
    _lib_run measure -n "$_lib_runs" -- "$@"
    if [ "$STATUS" -eq 0 ]; then
        metric "$_lib_name" "$(printf '%s\n' "$OUT" | tail -n 1)"
    else
        _lib_result 1 "measuring $_lib_name"
    fi
}

finish() {
    _lib_finished=1
    echo "1..$_lib_n"
    echo "$_lib_passed passed, $_lib_failed failed"
    [ "$_lib_failed" -eq 0 ] && exit 0
    exit 1
}

_lib_at_exit() {
    _lib_rc=$?
    [ -n "$_lib_finished" ] && return
    _lib_cmd="(end of script)"
    OUT=
    STATUS=$_lib_rc
    _lib_result 1 "the script reached its end without calling finish"
    finish
}
trap _lib_at_exit EXIT

# --- helpers ---

dev() { echo "/sys/bus/pci/devices/0000:$1"; }

driver_of() {
    if [ -e "$(dev "$1")/driver" ]; then
        basename "$(readlink "$(dev "$1")/driver")"
    else
        echo none
    fi
}

override_of() { cat "$(dev "$1")/driver_override"; }

helper_pid() { cat /run/vfio-gated.pid 2> /dev/null; }

# wait_for SECONDS CMD...: runs CMD every 50 ms until it succeeds; fails after SECONDS.
wait_for() {
    _lib_t=$(($1 * 20))
    shift
    while ! "$@" 2> /dev/null; do
        _lib_t=$((_lib_t - 1))
        [ $_lib_t -le 0 ] && return 1
        usleep 50000
    done
}

uptime_s() { cut -d' ' -f1 /proc/uptime; }

# now_ms: guest uptime in milliseconds (10 ms resolution: /proc/uptime has centiseconds).
now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }

# node_owner GROUP: "USER MODE" of /dev/vfio/GROUP (`alice 600`), or "gone" when it does not exist.
node_owner() {
    if [ -e "/dev/vfio/$1" ]; then
        stat -c '%U %a' "/dev/vfio/$1"
    else
        echo gone
    fi
}

# lease_files [DIR]: the lease records in the helper's state directory (default /run/vfio-gate),
# one per line; its other files (the mutation lock) are not leases.
lease_files() { ls "${1:-/run/vfio-gate}" 2> /dev/null | grep '\.lease$'; }
