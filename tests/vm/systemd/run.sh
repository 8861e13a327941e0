#!/bin/sh
# The systemd guest's test runner, started by vfio-gate-test.service once the system is up:
# waits for udev to settle, runs /test/script.sh as root with its output on ttyS1, dumps the
# helper's journal on the console, reports the exit status (a console line and the
# isa-debug-exit device) and powers off. With `shell` it gives a root shell on the console.

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
# Plain output in the logs: no colours, no pager.
export SYSTEMD_COLORS=0 SYSTEMD_PAGER= SYSTEMD_URLIFY=0
GUEST_MODE=run
GUEST_SCRIPT_NAME=script.sh
. /etc/vfio-gate-guest.conf
# Straight to the console: the unit's journal+console goes through journald, which may not have
# passed the last lines on when the guest is switched off.
[ "$GUEST_MODE" = run ] && exec > /dev/ttyS0 2>&1
uptime_s() { cut -d' ' -f1 /proc/uptime; }

echo "runner: started at uptime $(uptime_s) s"
# The runner starts before udev's coldplug has settled (network and sound drivers still probing).
udevadm settle --timeout=60
echo "runner: udev settled at uptime $(uptime_s) s"

dump_logs() {
    echo "==== journal: vfio-gate.socket, vfio-gated.service ===="
    journalctl -b --no-pager -o short-monotonic -u vfio-gate.socket -u vfio-gated.service
    echo "==== failed units ===="
    systemctl --no-pager --failed
    echo "==== end of logs ===="
}

if [ "$GUEST_MODE" = shell ]; then
    cat << 'BANNER'

vfio-gate systemd test guest. Users: root, alice (uid 1000, groups alice + vm-users), bob (1001).
Try:  runas alice vfio-gate list       systemctl status vfio-gate.socket vfio-gated.service
      journalctl -u vfio-gated         systemd-analyze security vfio-gated.service
`exit` powers off.

BANNER
    cd /root
    PS1='root@vfio-gate-systemd:\w# ' bash --norc -i
    dump_logs
    systemctl poweroff --force --force
fi

stty -F /dev/ttyS1 -opost 2> /dev/null
echo "runner: running $GUEST_SCRIPT_NAME at uptime $(uptime_s) s"
cd /tmp
GUEST_SCRIPT_NAME=$GUEST_SCRIPT_NAME GUEST_INIT=systemd sh /test/script.sh < /dev/null > /dev/ttyS1 2>&1
rc=$?
echo "runner: $GUEST_SCRIPT_NAME finished at uptime $(uptime_s) s"
dump_logs
# The xtask reads this line; it must stay the last thing printed before power-off.
echo "vfio-gate-guest: script exit status $rc"
# Let the serial lines drain before QEMU exits.
sleep 0.3
[ "$rc" -gt 127 ] && rc=127
printf "$(printf '\\%03o' "$rc")" | dd of=/dev/port bs=1 seek=244 count=1 conv=notrunc 2> /dev/null
systemctl poweroff --force --force
