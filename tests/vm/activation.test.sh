# Socket activation of the real helper, as under systemd: it starts on the first client, exits by
# itself after its idle timeout (1 s in activation.policy.toml), and the next clients start it
# again, including several arriving at once while no helper runs.
. /test/lib.sh

metric uptime_at_start_s "$(uptime_s)"
activations() { grep -c 'activated /usr/bin/vfio-gated' /run/socket-activate.log; }
not_running() { test ! -e /run/vfio-gated.pid; }

check_equals "no helper runs before the first client" 0 activations
check "alice lists: the first client starts the helper" runas alice vfio-gate list
check_equals "one activation" 1 activations
check "the helper exits by itself after its idle timeout" wait_for 10 not_running
check_output_contains "with exit status 0" "exit status 0" grep 'ended after' /run/socket-activate.log
check "the socket outlives the helper" test -S /run/vfio-gate.sock
check "the next client starts it again" runas bob vfio-gate list
check_equals "two activations" 2 activations

wait_for 10 not_running
for i in 1 2 3 4 5; do
    (runas alice vfio-gate list > /tmp/client$i.out 2>&1; echo $? > /tmp/client$i.rc) &
done
wait
check_equals "five clients arriving at once while no helper runs are all served" "0 0 0 0 0" \
    sh -c 'echo $(cat /tmp/client1.rc /tmp/client2.rc /tmp/client3.rc /tmp/client4.rc /tmp/client5.rc)'
check_output_contains "each got the device list" "01:00.0" cat /tmp/client3.out

check "a bind under this policy works too" runas alice vfio-gate bind 01:00.0 --to vfio-pci
check "and the release" runas alice vfio-gate release 01:00.0
check_equals "e1000e is back" e1000e driver_of 01:00.0
note "activations: $(activations)"

finish
