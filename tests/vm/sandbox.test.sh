# The helper's confinement on a real kernel (issue 4), in the busybox guest: the capabilities and
# no_new_privs of the running, socket-activated helper, the landlock ABI its start line reports,
# and sandbox-probe, which applies the helper's own ruleset to a forked child with the real paths
# and tries what must fail and what the helper needs.
. /test/lib.sh

metric uptime_at_start_s "$(uptime_s)"

case $(uname -r) in
6.1.*) ABI=2 ;;
6.12.*) ABI=6 ;;
*) ABI=unknown ;;
esac
note "kernel $(uname -r): expecting landlock ABI $ABI"

check "a client activates the helper" runas alice vfio-gate list
pid=$(helper_pid)
check "the helper is running (pid $pid)" test -n "$pid"

# --- capabilities of the running helper: exactly CAP_CHOWN, nothing to inherit or regain ---
status_of() { grep "^$1:" /proc/$pid/status | cut -f2-; }
check_equals "CapEff = CAP_CHOWN only" 0000000000000001 status_of CapEff
check_equals "CapPrm = CAP_CHOWN only" 0000000000000001 status_of CapPrm
check_equals "CapBnd = CAP_CHOWN only" 0000000000000001 status_of CapBnd
check_equals "CapInh = none" 0000000000000000 status_of CapInh
check_equals "CapAmb = none" 0000000000000000 status_of CapAmb
check_equals "NoNewPrivs = 1" 1 status_of NoNewPrivs

# --- what it reported at start ---
start=$(grep 'event=start' /run/vfio-gated.log | tail -n 1)
note "$start"
check_output_contains "the start line reports landlock ABI $ABI" "landlock_abi=$ABI " echo "$start"
check_output_contains "a partial sandbox: the kernel is older than the helper's target ABI" \
    "sandbox=partial" echo "$start"
check_output_contains "it drops to CAP_CHOWN with the securebits locked" \
    "capabilities=\"effective=CAP_CHOWN permitted=CAP_CHOWN bounding=CAP_CHOWN inheritable=none ambient=none" \
    echo "$start"
check_output_contains "including no ambient raise (it had CAP_SETPCAP to set them)" \
    "securebits=0xef no_new_privs=true" echo "$start"
case $ABI in
2) check_output_contains "and names what ABI 2 lacks" "denial of TCP bind and connect (ABI 4)" \
    echo "$start" ;;
6) check_output_lacks "ABI 6 lacks neither TCP nor scoping" "(ABI 4)" echo "$start" ;;
esac

# --- the helper's ruleset, applied to a forked child with the real paths ---
check "sandbox-probe: every attempt as expected" sandbox-probe --expect-abi $ABI
probe=$OUT
printf '%s\n' "$probe" | sed 's/^/#   /'
has() { printf '%s\n' "$probe" | grep -q "^$1"; }
check "denied write /etc/passwd" has "denied write /etc/passwd: EACCES"
check "denied read /etc/vfio-gate/policy.toml" has "denied read /etc/vfio-gate/policy.toml: EACCES"
check "denied read /proc/1/environ" has "denied read /proc/1/environ: EACCES"
check "denied create in /tmp" has "denied create /tmp/sandbox-probe-[0-9]*: EACCES"
check "denied write /sys/bus/pci/rescan" has "denied write /sys/bus/pci/rescan: EACCES"
check "denied write a device's remove" has "denied write /sys/bus/pci/devices/.*/remove: EACCES"
check "denied write a device's reset (or no device has one)" \
    has "\(denied write /sys/bus/pci/devices/.*/reset: EACCES\|absent reset\)"
check "denied write sriov_numvfs (or no SR-IOV device)" \
    has "\(denied write /sys/bus/pci/devices/.*/sriov_numvfs: EACCES\|absent sriov_numvfs\)"
check "denied write a driver's bind" has "denied write /sys/bus/pci/drivers/.*/bind: EACCES"
check "denied exec /bin/sh" has "denied exec /bin/sh: EACCES"
if [ "$ABI" -ge 6 ] 2> /dev/null; then
    check "denied TCP connect (ABI >= 4)" has "denied tcp connect 127.0.0.1:[0-9]*: EACCES"
    check "denied TCP bind (ABI >= 4)" has "denied tcp bind 127.0.0.1:0: EACCES"
    check "denied abstract socket outside the domain (ABI >= 6)" has "denied connect to abstract socket .*: EPERM"
    check "denied signal to a process outside (ABI >= 6)" has "denied SIGCONT to pid [0-9]* outside the domain: EPERM"
    check "denied signal to PID 1 (ABI >= 6)" has "denied SIGCONT to pid 1: EPERM"
else
    check "TCP is not restricted on ABI $ABI (reported as such)" has "unrestricted tcp connect"
    check "nor signals" has "unrestricted SIGCONT"
fi
check "allowed read of a device's vendor" has "allowed read /sys/bus/pci/devices/0000:01:00.0/vendor: 0x8086"
check "allowed write of an unset driver_override (a newline: no-op)" \
    has "allowed write /sys/bus/pci/devices/.*/driver_override"
check "allowed write drivers_probe" has "allowed write /sys/bus/pci/drivers_probe"
check "allowed write a driver's unbind" has "allowed write /sys/bus/pci/drivers/.*/unbind"
check "allowed state directory writes" has "allowed write, rename and remove a file in /run/vfio-gate"
check "allowed read /proc/self/mountinfo" has "allowed read /proc/self/mountinfo"
check "allowed open /dev/vfio/vfio" has "allowed open /dev/vfio/vfio"
check_equals "the no-op left every override unset" "" \
    sh -c 'grep -L "^(null)$" /sys/bus/pci/devices/*/driver_override'

# --- and the helper still does its job inside its sandbox ---
check "alice binds 01:00.0 to vfio-pci" runas alice vfio-gate bind 01:00.0 --to vfio-pci
check_equals "/dev/vfio/8 is handed to alice" 1000 stat -c %u /dev/vfio/8
check "alice releases it" runas alice vfio-gate release 01:00.0
check_equals "e1000e is back" e1000e driver_of 01:00.0

finish
