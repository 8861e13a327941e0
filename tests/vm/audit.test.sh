# Issue 6 on a real kernel: `policy report` and `explain` agree with what the helper actually
# decides (every row of the report is checked against a real bind as that user, every other
# (user, device, driver) against a dry run that must be refused); a bad drop-in makes the helper
# serve nothing while it is there; the audit log ties decisions to the policy's hash.
. /test/lib.sh

restart_helper() { # the next client starts a helper that reads the policy again
    pid=$(helper_pid)
    [ -n "$pid" ] && kill "$pid" 2> /dev/null
    wait_for 5 sh -c '! test -e /run/vfio-gated.pid' > /dev/null 2>&1 || true
}

# --- the report, as root, from the installed policy and this guest's sysfs ---
check "policy report runs" sh -c 'vfio-gate --pci-ids /dev/null policy report > /tmp/report.txt'
cat /tmp/report.txt | sed 's/^/#   /'
# Rows: USER UID DEVICE IDS DRIVER RULE… WHERE GUARD (no NAME column without a PCI ID database).
awk '$3 ~ /^[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]\.[0-7]$/ {
        print $1, $3, $5, ($0 ~ /refused:/ ? "guarded" : "free")
     }' /tmp/report.txt > /tmp/rows.txt
check "the report has rows" test -s /tmp/rows.txt
check_output_contains "alice may have the e1000e" "alice 01:00.0 vfio-pci free" cat /tmp/rows.txt
check_output_lacks "bob may have nothing" "bob " cat /tmp/rows.txt
check_output_lacks "nobody may have the NVMe" "03:00.0" cat /tmp/rows.txt

# Every row: a real bind as that user succeeds (or a guard refuses, as the report says), and
# both explains — online as that user, offline from the file as root — say ALLOWED.
while read -r user addr drv state; do
    if [ "$state" = free ]; then
        check "row $user $addr $drv: the bind succeeds" \
            runas "$user" vfio-gate bind "$addr" --to "$drv" --group
        check "row $user $addr $drv: and is released" runas "$user" vfio-gate release "$addr"
    else
        check_status 3 "row $user $addr $drv: a guard refuses it, as the report says" \
            runas "$user" vfio-gate bind "$addr" --to "$drv" --group
    fi
    check_output_contains "row $user $addr $drv: explain (online) says ALLOWED" "$drv  ALLOWED" \
        runas "$user" vfio-gate explain "$addr" --to "$drv"
    check_output_contains "row $user $addr $drv: explain --policy (offline) agrees" "$drv  ALLOWED" \
        vfio-gate explain "$addr" --to "$drv" --user "$user" --policy /etc/vfio-gate/policy.toml
done < /tmp/rows.txt

# Every other (user, endpoint, driver): refused by the helper too (a dry run changes nothing).
for user in alice bob; do
    for addr in 00:06.0 00:06.1 00:1b.0 01:00.0 02:00.0 03:00.0 05:01.0 05:02.0; do
        for drv in vfio-pci pci-stub; do
            grep -q "^$user $addr $drv " /tmp/rows.txt && continue
            check_status 3 "not in the report: $user $addr $drv is refused" \
                runas "$user" vfio-gate bind "$addr" --to "$drv" --group --dry-run
            check_output_contains "not in the report: explain says DENIED for $user $addr $drv" \
                "$drv  DENIED" runas "$user" vfio-gate explain "$addr" --to "$drv"
        done
    done
done

# --- the audit log ties decisions to the policy's text ---
hash=$(vfio-gate policy check --no-host --json | sed -n 's/.*"sha256": *"\([0-9a-f]*\)".*/\1/p' | head -n 1)
check "policy check reports the policy's sha256" test -n "$hash"
check_output_contains "the helper logged the same sha256 when it loaded the policy" \
    "event=policy-load policy=/etc/vfio-gate/policy.toml sha256=$hash" cat /run/vfio-gated.log
check_output_contains "request lines carry peer, request, devices, decision, rule, result, duration" \
    "peer_uid=1000 peer_gid=1000" cat /run/vfio-gated.log
for field in peer_pid= request=bind devices= decision=allow rule= result=ok duration_us=; do
    check_output_contains "audit field $field" "$field" cat /run/vfio-gated.log
done

# --- a bad drop-in: the whole policy is refused and nothing is served ---
mkdir -p /etc/vfio-gate/policy.d
bad_case() { # description, then a command that plants the bad drop-in as $f
    desc=$1
    shift
    rm -rf /etc/vfio-gate/policy.d/*
    f=/etc/vfio-gate/policy.d/50-bad.toml
    "$@"
    restart_helper
    check_status 5 "$desc: the helper serves nothing (exit 5)" runas alice vfio-gate list
    check_output_contains "$desc: the client is told which file" "50-bad.toml" \
        runas alice vfio-gate list
    check_status 9 "$desc: policy check refuses it (exit 9)" vfio-gate policy check --no-host
    check_equals "$desc: 01:00.0 was not touched" e1000e driver_of 01:00.0
}
plant_unparsable() { printf '[[rule]\nname = "x"\n' > "$f"; chmod 644 "$f"; }
plant_writable() {
    printf '[[deny]]\nname = "w"\ndevices = [{ class = "01" }]\n' > "$f"
    chmod 666 "$f"
}
plant_symlink() {
    printf '[[deny]]\nname = "s"\ndevices = [{ class = "01" }]\n' > /tmp/outside.toml
    ln -s /tmp/outside.toml "$f"
}
plant_unknown_key() {
    printf '[[deny]]\nname = "k"\ndevices = [{ class = "01" }]\ncolour = "red"\n' > "$f"
    chmod 644 "$f"
}
bad_case "a drop-in that does not parse" plant_unparsable
check_output_contains "the refusal names file:line" "50-bad.toml:1" runas alice vfio-gate list
bad_case "a world-writable drop-in" plant_writable
bad_case "a symlinked drop-in pointing outside" plant_symlink
bad_case "a drop-in with an unknown key" plant_unknown_key

# A good drop-in is read: a deny there takes the e1000e away from alice.
rm -rf /etc/vfio-gate/policy.d/*
printf '[[deny]]\nname = "not the e1000e today"\ndevices = [{ address = "01:00.0" }]\n' \
    > /etc/vfio-gate/policy.d/10-deny.toml
chmod 644 /etc/vfio-gate/policy.d/10-deny.toml
restart_helper
check_status 3 "a deny in a good drop-in applies" runas alice vfio-gate bind 01:00.0
check_output_contains "and is named with its own file" "10-deny.toml" \
    runas alice vfio-gate bind 01:00.0
rm -rf /etc/vfio-gate/policy.d
restart_helper
check "without the drop-in alice binds again" runas alice vfio-gate bind 01:00.0
check "and releases" runas alice vfio-gate release 01:00.0

finish
