# The test bed itself: the guest has the kernel, devices, users, files and socket activation the
# other VM tests rely on. Independent of vfio-gate's own behaviour (a stand-in service,
# activation-probe, exercises socket activation), so a failure here is the harness's.
. /test/lib.sh

metric uptime_at_start_s "$(uptime_s)"

# --- kernel and modules ---
check_output_contains "the kernel was booted with intel_iommu=on" intel_iommu=on cat /proc/cmdline
for d in pci-stub vfio-pci e1000e e1000 virtio-pci nvme snd_hda_intel; do
    check "PCI driver $d is registered" test -d /sys/bus/pci/drivers/$d
done
check "vfio's type1 IOMMU backend is loaded" test -d /sys/module/vfio_iommu_type1
check "/dev/vfio/vfio exists" test -c /dev/vfio/vfio

# --- the PCI layout of docs/guest.md: address, vendor:device, driver, IOMMU group ---
group_of() { basename "$(readlink "$(dev "$1")/iommu_group")"; }
ids_of() { echo "$(cut -c3- "$(dev "$1")/vendor"):$(cut -c3- "$(dev "$1")/device")"; }
members() { ls "/sys/kernel/iommu_groups/$1/devices" | tr '\n' ' '; }

while read -r addr ids driver group; do
    check_equals "$addr is $ids" "$ids" ids_of "$addr"
    check_equals "$addr is driven by $driver" "$driver" driver_of "$addr"
    check_equals "$addr is in IOMMU group $group" "$group" group_of "$addr"
done << 'EOF'
01:00.0 8086:10d3 e1000e 8
02:00.0 1af4:1041 virtio-pci 9
03:00.0 1b36:0010 nvme 10
04:00.0 1b36:000e none 11
05:01.0 8086:100e e1000 11
05:02.0 1234:11e8 none 11
00:06.0 1234:11e8 none 5
00:06.1 1b36:0005 none 5
00:1b.0 8086:293e snd_hda_intel 6
EOF
check_equals "group 8 holds only 01:00.0" "0000:01:00.0 " members 8
check_equals "group 5 is the multifunction pair" "0000:00:06.0 0000:00:06.1 " members 5
check_equals "group 11 is the bridge and both devices behind it" \
    "0000:04:00.0 0000:05:01.0 0000:05:02.0 " members 11
check_equals "every override starts unset" "(null)" override_of 01:00.0

# --- users ---
check_equals "alice is uid 1000" 1000 runas alice id -u
check_equals "alice's groups are alice and vm-users" "1000 1100" runas alice id -G
check_equals "bob is uid 1001" 1001 runas bob id -u
check_equals "bob has no extra groups" 1001 runas bob id -G
check_equals "runas sets HOME" /home/alice runas alice sh -c 'echo $HOME'
check_equals "runas sets USER and LOGNAME" "bob bob" runas bob sh -c 'echo $USER $LOGNAME'
check_equals "alice's home is hers" "1000:1000 700" stat -c '%u:%g %a' /home/alice
check_fails "runas refuses an unknown user" runas mallory true
check_fails "alice cannot write sysfs" runas alice sh -c "echo vfio-pci > $(dev 01:00.0)/driver_override"
check_equals "alice can read sysfs" "(null)" runas alice cat "$(dev 01:00.0)/driver_override"

# --- installed files ---
for b in vfio-gate vfio-gated runas rawframe socket-activate activation-probe measure; do
    check "/usr/bin/$b is installed" test -x /usr/bin/$b
done
check_equals "the policy is root:root 0644" "0:0 644" stat -c '%u:%g %a' /etc/vfio-gate/policy.toml
check_equals "the state directory is root:root 0700" "0:0 700" stat -c '%u:%g %a' /run/vfio-gate
check "the helper's socket exists" test -S /run/vfio-gate.sock
check_equals "the helper's socket is mode 0666" 666 stat -c '%a' /run/vfio-gate.sock

# --- socket activation, with a stand-in service ---
lines() { if [ -e "$1" ]; then wc -l < "$1"; else echo 0; fi; }

socket-activate --socket /tmp/probe.sock --pidfile /tmp/probe.pid -- \
    /usr/bin/activation-probe --log /tmp/probe.log > /tmp/probe-sa.log 2>&1 &
sa1=$!
check "socket-activate creates the socket" wait_for 5 test -S /tmp/probe.sock
check_equals "nothing is started before the first client" 0 lines /tmp/probe.log
check_equals "the first client is served (probe accepts and closes)" closed \
    runas alice rawframe --socket /tmp/probe.sock --request list
check_output_contains "the service gets fd 3, LISTEN_FDS=1, LISTEN_PID=its pid, the fd name" \
    "listen_pid_ok=yes fds=1 names=vfio-gate.socket fd3_listening=yes" cat /tmp/probe.log
check_equals "the next client after the service exited starts it again" closed \
    runas bob rawframe --socket /tmp/probe.sock --request list
check_equals "two clients, two activations" 2 lines /tmp/probe.log
check "the socket survives the service's exits" test -S /tmp/probe.sock

socket-activate --socket /tmp/stay.sock --pidfile /tmp/stay.pid -- \
    /usr/bin/activation-probe --log /tmp/stay.log --stay > /tmp/stay-sa.log 2>&1 &
sa2=$!
wait_for 5 test -S /tmp/stay.sock
rawframe --socket /tmp/stay.sock --request list > /dev/null
check "a staying service keeps running" wait_for 5 test -s /tmp/stay.pid
pid1=$(cat /tmp/stay.pid)
check_equals "a second client is served by the same process" closed \
    rawframe --socket /tmp/stay.sock --request list
check_equals "still one activation" 1 lines /tmp/stay.log
kill -9 "$pid1"
check "socket-activate notices the kill" wait_for 5 test ! -e /tmp/stay.pid
check_equals "a client after kill -9 is served" closed rawframe --socket /tmp/stay.sock --request list
check "the service was started again" wait_for 5 test -s /tmp/stay.pid
check_fails "by a new process" test "$(cat /tmp/stay.pid)" = "$pid1"
check_output_contains "socket-activate logged the kill" "killed by SIGKILL" cat /tmp/stay-sa.log
kill "$sa1" "$sa2"

# --- the timing helper ---
check_output_contains "measure prints a median in ms" "." measure -n 3 -- true --then true
check_fails "measure fails when the command fails" measure -n 1 -- false

finish
