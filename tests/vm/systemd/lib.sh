# Additions to /test/lib.sh for the systemd guest (`. /test/systemd-lib.sh` after it).
# Under systemd, PID 1 owns the socket and runs the helper as vfio-gated.service: there is no
# pid file, and the helper's stderr (its audit lines) is in the journal.

# The running helper's pid (empty if none): the service's main process.
helper_pid() {
    _sd_pid=$(systemctl show -p MainPID --value vfio-gated.service 2> /dev/null)
    [ -n "$_sd_pid" ] && [ "$_sd_pid" != 0 ] && echo "$_sd_pid"
}

# The helper's audit log for this boot.
helper_log() { journalctl -b --no-pager -o cat -u vfio-gated.service; }

# One property of a unit: unit_prop UNIT NAME
unit_prop() { systemctl show -p "$2" --value "$1"; }
