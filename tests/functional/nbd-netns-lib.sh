# A second host for NBD tests and the benchmark (sourced, not a test):
# two network namespaces joined by a veth pair, with addresses of their
# own on that pair only (10.77.0.1/29 on the near side, 10.77.0.2/29 on
# the far side: private to the namespaces, so they clash with nothing).
# The TCP traffic between them crosses the kernel's real network stack.
#
#   netns_up            make them (NEAR, FAR, NEAR_IP, FAR_IP set); returns
#                       1 with NETNS_WHY set when this machine does not
#                       allow it (no root, no ip, no netns)
#   netns_down          remove both (the veth pair goes with them); safe to
#                       call twice, meant for an EXIT trap
#   on_near CMD... / on_far CMD...   run CMD inside one of them
#   netns_rate RATE     limit the far side's egress and the near side's
#                       egress to RATE (tc tbf, e.g. 1gbit); "none" removes it
NEAR_IP=10.77.0.1
FAR_IP=10.77.0.2

netns_up() {
    NETNS_WHY=""
    if ! command -v ip >/dev/null 2>&1; then
        NETNS_WHY="'ip' not found (iproute2)"
        return 1
    fi
    NEAR=lsm-near-$$
    FAR=lsm-far-$$
    local va=lsmn$$ vb=lsmf$$
    if ! ip netns add "$NEAR" 2>"$T/netns.err"; then
        NETNS_WHY="cannot make a network namespace: $(head -n1 "$T/netns.err")"
        NEAR=""
        return 1
    fi
    if ! ip netns add "$FAR" 2>"$T/netns.err" ||
       ! ip link add "$va" type veth peer name "$vb" 2>"$T/netns.err" ||
       ! ip link set "$va" netns "$NEAR" 2>"$T/netns.err" ||
       ! ip link set "$vb" netns "$FAR" 2>"$T/netns.err"; then
        NETNS_WHY="cannot make a veth pair between namespaces: $(head -n1 "$T/netns.err")"
        netns_down
        return 1
    fi
    NEAR_DEV=$va
    FAR_DEV=$vb
    ip -n "$NEAR" addr add "$NEAR_IP/29" dev "$va"
    ip -n "$FAR" addr add "$FAR_IP/29" dev "$vb"
    ip -n "$NEAR" link set lo up
    ip -n "$FAR" link set lo up
    ip -n "$NEAR" link set "$va" up
    ip -n "$FAR" link set "$vb" up
    return 0
}

netns_down() {
    [[ -n ${NEAR:-} ]] && ip netns del "$NEAR" 2>/dev/null
    [[ -n ${FAR:-} ]] && ip netns del "$FAR" 2>/dev/null
    NEAR=""
    FAR=""
    return 0
}

on_near() { ip netns exec "$NEAR" "$@"; }
on_far() { ip netns exec "$FAR" "$@"; }

netns_rate() {
    local rate=$1 ns dev
    for ns in near far; do
        if [[ $ns == near ]]; then dev=$NEAR_DEV; else dev=$FAR_DEV; fi
        local n=$NEAR
        [[ $ns == far ]] && n=$FAR
        if ip netns exec "$n" tc qdisc show dev "$dev" | grep -q tbf; then
            ip netns exec "$n" tc qdisc del dev "$dev" root
        fi
        if [[ $rate != none ]]; then
            ip netns exec "$n" tc qdisc add dev "$dev" root tbf rate "$rate" burst 1mb latency 50ms ||
                return 1
        fi
    done
    return 0
}

# alive PID: running, and not a zombie (a daemon that forked away from us,
# such as qemu-nbd --fork, is reaped by whoever inherited it, maybe late).
alive() {
    local st
    st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $st && $st != Z ]]
}

# ---- NBD servers for the tests (nbd-dest, nbd-image, nbd-faults,
# nbd-resume): started on Unix sockets under $T, stopped by stop_servers
# (meant for the EXIT trap: trap 'stop_servers; cleanup' EXIT).
#
#   nbdkit_on SOCK ARGS...    a foreground nbdkit (its pid in LAST_PID)
#   qemu_nbd_on SOCK ARGS...  a forked qemu-nbd (-t: it stays for many
#                             clients; its pid in LAST_PID)
#   uri NAME                  the URI of the socket $T/NAME
#   stop_servers              stop them all (resumed first if stopped) and
#                             wait until they are gone, with their locks
#   wait_file PATH            PATH appears within 5 s (a socket, or a file
#                             with something in it), else the test dies
PIDS=()
stop_servers() {
    local p
    for p in "${PIDS[@]}"; do
        kill -CONT "$p" 2>/dev/null && kill "$p" 2>/dev/null
    done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 100); do
            alive "$p" || break
            sleep 0.05
        done
    done
    PIDS=()
    return 0
}

wait_file() {
    local i
    for i in $(seq 100); do
        [[ -S $1 || -s $1 ]] && return 0
        sleep 0.05
    done
    die "server did not start: $1 missing"
}

nbdkit_on() {
    local sock=$1; shift
    rm -f "$sock" "$sock.pid"
    # In a subshell of its own, so that an nbdkit that dies of a signal is
    # reported (by that subshell) into server.log, never into the stderr
    # of whatever command the test runs at that moment.
    { nbdkit --exit-with-parent -f -U "$sock" -P "$sock.pid" "$@"; } 2>>"$T/server.log" &
    PIDS+=("$!")
    wait_file "$sock"
    wait_file "$sock.pid"
    LAST_PID=$(cat "$sock.pid")
    PIDS+=("$LAST_PID")
}

qemu_nbd_on() {
    local sock=$1; shift
    rm -f "$sock" "$sock.pid"
    qemu-nbd -t -k "$sock" --pid-file="$sock.pid" --fork "$@" 2>>"$T/server.log"
    wait_file "$sock.pid"
    wait_file "$sock"
    LAST_PID=$(cat "$sock.pid")
    PIDS+=("$LAST_PID")
}

uri() { echo "nbd+unix:///?socket=$T/$1"; }
