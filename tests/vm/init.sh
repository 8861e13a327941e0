#!/bin/sh
# PID 1 of the vfio-gate test guest (busybox). `cargo xtask` installs this file as /init.
#
# Mounts the kernel filesystems, loads the modules listed in /etc/modules.load (resolved from the
# kernel's modules.dep by the xtask), mounts an ext2 filesystem from the NVMe disk on /mnt/nvme,
# brings the virtio-net interface up with 10.0.2.15/24 (its name in /run/virtio-net.if), creates
# the users' homes and the helper's state directory, starts socket activation of vfio-gated on /run/vfio-gate.sock, then either runs
# /test/script.sh as root (output on ttyS1, exit status on the console and through the
# isa-debug-exit device) or gives an interactive root shell. Then powers off.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
umask 022

log() { echo "init: $*"; }

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid devtmpfs /dev
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp

GUEST_MODE=run
GUEST_SCRIPT_NAME=script.sh
. /etc/guest.conf

n=0
while read -r module; do
    if insmod "$module"; then
        n=$((n + 1))
    else
        log "insmod $module failed"
    fi
done < /etc/modules.load
log "loaded $n modules at uptime $(cut -d' ' -f1 /proc/uptime) s"

hostname vfio-gate-guest
ip link set lo up

# Give the guards something to protect, as on a real host: a mounted filesystem on the NVMe disk
# (03:00.0) and the virtio-net interface (02:00.0) up with an address. The disk image is fresh
# zeros on every boot, so it gets a new ext2 filesystem (mounted by the ext4 driver).
i=0
while [ ! -b /dev/nvme0n1 ] && [ $i -lt 200 ]; do
    usleep 10000
    i=$((i + 1))
done
mkdir -p /mnt/nvme
if mke2fs -q /dev/nvme0n1 > /dev/null 2>&1 && mount -t ext2 /dev/nvme0n1 /mnt/nvme; then
    echo "vfio-gate test guest: this filesystem is on the NVMe disk 03:00.0" > /mnt/nvme/README
else
    log "could not put a mounted filesystem on /dev/nvme0n1"
fi
# virtio-net's interface hangs below the virtio device (…/0000:02:00.0/virtio0/net/eth1).
net_if=
for n in /sys/bus/pci/devices/0000:02:00.0/net/* /sys/bus/pci/devices/0000:02:00.0/virtio*/net/*; do
    [ -e "$n" ] && net_if=${n##*/} && break
done
if [ -n "$net_if" ] && ip addr add 10.0.2.15/24 dev "$net_if" && ip link set "$net_if" up; then
    echo "$net_if" > /run/virtio-net.if
else
    log "could not bring up the virtio-net interface of 02:00.0 (${net_if:-not found})"
fi

# Home directories for the users of /etc/passwd.
while IFS=: read -r _name _pw uid gid _gecos home _shell; do
    case $home in
    /home/*) mkdir -p "$home" && chown "$uid:$gid" "$home" && chmod 0700 "$home" ;;
    esac
done < /etc/passwd
chmod 0700 /root

# The helper's state directory, as systemd's StateDirectory/RuntimeDirectory would make it.
mkdir -p /run/vfio-gate
chmod 0700 /run/vfio-gate

# Socket activation "as under systemd": the socket lives as long as the guest; the helper is
# started on the first queued client and again after every exit (idle, crash, kill). Its stderr
# (the audit log) goes to /run/vfio-gated.log; socket-activate's own log to
# /run/socket-activate.log; the running helper's pid is in /run/vfio-gated.pid.
socket-activate --socket /run/vfio-gate.sock --mode 0666 --fdname vfio-gate.socket \
    --pidfile /run/vfio-gated.pid -- \
    /usr/bin/vfio-gated --policy /etc/vfio-gate/policy.toml --state-dir /run/vfio-gate \
    < /dev/null > /run/socket-activate.log 2>> /run/vfio-gated.log &
i=0
while [ ! -S /run/vfio-gate.sock ] && [ $i -lt 500 ]; do
    usleep 10000
    i=$((i + 1))
done
[ -S /run/vfio-gate.sock ] || log "socket-activate did not create /run/vfio-gate.sock"

dump_logs() {
    echo "==== /run/vfio-gated.log (the helper's stderr: audit lines) ===="
    cat /run/vfio-gated.log 2> /dev/null
    echo "==== /run/socket-activate.log ===="
    cat /run/socket-activate.log 2> /dev/null
    echo "==== end of logs ===="
}

if [ "$GUEST_MODE" = shell ]; then
    cat << 'EOF'

vfio-gate test guest. Users: root, alice (uid 1000, groups alice + vm-users), bob (uid 1001).
Try:  runas alice vfio-gate list        ls /sys/kernel/iommu_groups/*/devices
      runas bob vfio-gate bind 01:00.0 --to vfio-pci
Logs: /run/vfio-gated.log (helper audit), /run/socket-activate.log. `exit` powers off.

EOF
    export PS1='root@vfio-gate-guest:\w# '
    cd /root
    setsid cttyhack sh
    dump_logs
    poweroff -f
fi

stty -F /dev/ttyS1 -opost 2> /dev/null
log "running $GUEST_SCRIPT_NAME at uptime $(cut -d' ' -f1 /proc/uptime) s"
cd /tmp
GUEST_SCRIPT_NAME=$GUEST_SCRIPT_NAME sh /test/script.sh < /dev/null > /dev/ttyS1 2>&1
rc=$?
log "$GUEST_SCRIPT_NAME finished at uptime $(cut -d' ' -f1 /proc/uptime) s"
dump_logs
# The xtask reads this line; it must stay the last thing printed before power-off.
echo "vfio-gate-guest: script exit status $rc"
# isa-debug-exit makes QEMU exit with (byte << 1) | 1: keep the byte within 7 bits.
[ "$rc" -gt 127 ] && rc=127
printf "$(printf '\\%03o' "$rc")" | dd of=/dev/port bs=1 seek=244 count=1 conv=notrunc 2> /dev/null
poweroff -f
