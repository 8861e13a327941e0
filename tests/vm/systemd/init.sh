#!/bin/sh
# PID 1 of the systemd guest's first stage (busybox). `cargo xtask vm run --init systemd` installs
# this file as the initramfs's /init.
#
# Loads the AHCI, SCSI-disk, ext4 and overlay modules (/etc/modules.load, resolved from the
# kernel's modules.dep by the xtask), mounts the Debian root disk (q35's built-in AHCI, 00:1f.2)
# read-only under a tmpfs overlay (nothing is ever written to the disk), copies this run's
# files into it (/root-overlay: the product and dist/ as a package installs them, the policy, the
# test runner unit, masks), adds the test users, enables the socket as a package's postinst
# would (`systemctl enable vfio-gate.socket`), and hands over to systemd with switch_root.

export PATH=/bin
log() { echo "shim: $*"; }
die() {
    log "$*"
    echo "vfio-gate-guest: script exit status 125"
    printf '\175' | dd of=/dev/port bs=1 seek=244 count=1 conv=notrunc 2> /dev/null
    poweroff -f
}

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid devtmpfs /dev

while read -r module; do
    insmod "$module" || log "insmod $module failed"
done < /etc/modules.load

i=0
while [ ! -b /dev/sda ] && [ $i -lt 1000 ]; do
    usleep 10000
    i=$((i + 1))
done
# The disk is only ever read: the root is an overlay of it (read-only) and a tmpfs. QEMU's AHCI
# under TCG now and then loses a write (the guest then stalls 30 s until libata resets the
# link), and its non-queued DMA path can abort QEMU; reads have never failed. Writes land in RAM.
mkdir -p /lower /upper /newroot
mount -t ext4 -o ro /dev/sda /lower || die "cannot mount the root disk /dev/sda"
mount -t tmpfs -o mode=0755 tmpfs /upper && mkdir /upper/data /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay /newroot ||
    die "cannot mount the overlay root"

# This run's files. Paths under usr/ only: /bin, /lib and /sbin are merged-usr symlinks.
cp -a /root-overlay/. /newroot/ || die "cannot copy the run's files into the root"

# The test users (tests/vm/etc/passwd and group), added beside Debian's system accounts.
add_entries() { # SOURCE TARGET
    while IFS= read -r line; do
        name=${line%%:*}
        grep -q "^$name:" "$2" || echo "$line" >> "$2"
    done < "$1"
}
add_entries /users/passwd /newroot/etc/passwd
add_entries /users/group /newroot/etc/group
while IFS=: read -r _name _pw uid gid _gecos home _shell; do
    case $home in
    /home/*) mkdir -p "/newroot$home" && chown "$uid:$gid" "/newroot$home" && chmod 0700 "/newroot$home" ;;
    esac
done < /users/passwd

# As a package's maintainer scripts do: enable the socket (its [Install] section decides where
# the symlink goes). systemctl works offline in a chroot.
mount --bind /proc /newroot/proc
chroot /newroot /usr/bin/systemctl enable vfio-gate.socket vfio-gate-reserve.service 2>&1 | sed 's/^/shim: /'
umount /newroot/proc

# Keep the disk's mount visible in the new root's mount table: the in-use guard must find the
# root filesystem's device mounted (the AHCI controller is then refused).
mkdir -p /newroot/media/root-disk /newroot/media/root-rw
mount --move /lower /newroot/media/root-disk
mount --move /upper /newroot/media/root-rw

log "switching to systemd at uptime $(cut -d' ' -f1 /proc/uptime) s"
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
