# A running libvirtd + virtlogd with the QEMU driver for tests (sourced).
#
#     . "$SOURCE_DIR/tests/libvirt/libvirt-env.sh"
#     lvenv_start                  # exits 77 with a reason if it cannot run here
#     lvenv_at_exit "virsh -c qemu:///system destroy dom1"   # cleanups, run LIFO
#
# It installs nothing (scripts/deps.sh does: libvirt-daemon,
# libvirt-daemon-driver-qemu, libvirt-clients, qemu-system-x86, qemu-utils).
# As ../shared/ENVIRONMENT.md says works as root: it creates the kvm and
# libvirt-qemu group/user if missing, puts the settings QEMU needs here into
# /etc/libvirt/qemu.conf (a privileged libvirtd reads no other file: there is
# no private qemu.conf for root; the block is marked and rewritten in place, so
# running this twice changes nothing), starts virtlogd and libvirtd unless they
# already answer, waits until `virsh -c qemu:///system version` answers, and
# on exit runs the registered cleanups and stops only the daemons it started
# (by the pids in their pid files).  A lock serialises tests that use it.
#
# Needs lib.sh's log/skip/die (or defines minimal ones) and $T for its logs.

LVENV_URI=qemu:///system
LVENV_STARTED_LIBVIRTD=0
LVENV_STARTED_VIRTLOGD=0
LVENV_HOOKS=()
LVENV_DIR=${T:-$(mktemp -d "${TMPDIR:-/tmp}/lvenv.XXXXXX")}/libvirt-env

declare -F log >/dev/null || log() { printf '%s\n' "$*"; }
declare -F skip >/dev/null || skip() { log "SKIP: $*"; exit 77; }
declare -F die >/dev/null || die() { log "ERROR: $*" >&2; exit 1; }

lvenv_virsh() { virsh -q -c "$LVENV_URI" "$@"; }

# lvenv_at_exit CMD: run CMD (with eval) on exit, before the daemons stop.
lvenv_at_exit() { LVENV_HOOKS+=("$1"); }

_lvenv_exit() {
    local rc=$? i
    set +e
    for ((i = ${#LVENV_HOOKS[@]} - 1; i >= 0; i--)); do
        eval "${LVENV_HOOKS[i]}" >/dev/null 2>&1
    done
    LVENV_HOOKS=()
    lvenv_stop
    eval "$_LVENV_PREV_TRAP"
    exit $rc
}

# Stop what lvenv_start started (safe to call twice).
lvenv_stop() {
    local name pidfile pid i
    for name in libvirtd virtlogd; do
        if [[ $name == libvirtd ]]; then
            ((LVENV_STARTED_LIBVIRTD)) || continue
            LVENV_STARTED_LIBVIRTD=0
        else
            ((LVENV_STARTED_VIRTLOGD)) || continue
            LVENV_STARTED_VIRTLOGD=0
        fi
        pidfile=$LVENV_DIR/$name.pid
        pid=$(cat "$pidfile" 2>/dev/null) || continue
        [[ $pid =~ ^[0-9]+$ ]] || continue
        kill "$pid" 2>/dev/null || continue
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    done
    return 0
}

# Rewrite the marked block of settings in qemu.conf; comment out earlier
# uncommented lines setting the same keys.  Idempotent.
_lvenv_qemu_conf() {
    local conf=/etc/libvirt/qemu.conf begin='# BEGIN lsm-sync test settings' \
        end='# END lsm-sync test settings' key tmp
    mkdir -p /etc/libvirt
    touch "$conf"
    tmp=$(mktemp /etc/libvirt/.qemu.conf.XXXXXX)
    sed "/^$begin\$/,/^$end\$/d" "$conf" > "$tmp"
    for key in user group dynamic_ownership security_driver cgroup_controllers; do
        sed -i -E "s/^([[:space:]]*$key[[:space:]]*=)/#lsm-sync# \\1/" "$tmp"
    done
    cat >> "$tmp" <<EOF
$begin
# QEMU as root without dynamic ownership, security driver or cgroups: what
# works in the development containers (see ENVIRONMENT.md).
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
cgroup_controllers = [ ]
$end
EOF
    if cmp -s "$tmp" "$conf"; then
        rm -f "$tmp"
    else
        chmod 644 "$tmp"
        mv "$tmp" "$conf"
    fi
}

_lvenv_wait_answer() {
    local i
    for ((i = 0; i < ${1:-150}; i++)); do
        lvenv_virsh version >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

lvenv_start() {
    local c
    for c in libvirtd virtlogd virsh qemu-system-x86_64 qemu-img; do
        command -v "$c" >/dev/null 2>&1 ||
            skip "'$c' is not installed (scripts/deps.sh installs libvirt-daemon, libvirt-daemon-driver-qemu, libvirt-clients, qemu-system-x86, qemu-utils)"
    done
    [[ $(id -u) == 0 ]] || skip "libvirt tests need root (the system libvirtd and QEMU as root)"
    command -v flock >/dev/null 2>&1 || skip "'flock' not found (util-linux)"
    mkdir -p "$LVENV_DIR"

    _LVENV_PREV_TRAP=$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT\$/\\1/")
    trap _lvenv_exit EXIT
    trap 'exit 143' TERM
    trap 'exit 130' INT

    # One libvirt test at a time on this machine (they share the daemon).
    mkdir -p /run/lock
    exec {LVENV_LOCK_FD}>/run/lock/lsm-sync-libvirt-tests.lock
    flock -w 900 "$LVENV_LOCK_FD" || die "cannot take /run/lock/lsm-sync-libvirt-tests.lock"

    if lvenv_virsh version >/dev/null 2>&1; then
        log "using the libvirtd already running (its qemu.conf is its own)"
        return 0
    fi

    getent group kvm >/dev/null || groupadd -r kvm
    getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
    getent passwd libvirt-qemu >/dev/null || useradd -r -g libvirt-qemu -G kvm libvirt-qemu
    _lvenv_qemu_conf
    mkdir -p /var/log/libvirt/qemu /var/run/libvirt /var/lib/libvirt/qemu /var/cache/libvirt

    if [[ ! -S /var/run/libvirt/virtlogd-sock ]] || ! pgrep -x virtlogd >/dev/null; then
        virtlogd -d -p "$LVENV_DIR/virtlogd.pid" ||
            die "virtlogd did not start"
        LVENV_STARTED_VIRTLOGD=1
    fi
    LIBVIRT_LOG_OUTPUTS="3:file:$LVENV_DIR/libvirtd.log" \
        libvirtd -d -p "$LVENV_DIR/libvirtd.pid" ||
        die "libvirtd did not start: $(tail -5 "$LVENV_DIR/libvirtd.log" 2>/dev/null)"
    LVENV_STARTED_LIBVIRTD=1
    _lvenv_wait_answer 150 ||
        die "libvirtd does not answer on $LVENV_URI after 30 s: $(tail -5 "$LVENV_DIR/libvirtd.log" 2>/dev/null)"
    log "started virtlogd and libvirtd ($(lvenv_virsh version 2>/dev/null | grep -i 'running hypervisor' | sed 's/.*: *//'))"
}

# lvenv_kvm_works: may a domain use type kvm here?
lvenv_kvm_works() {
    [[ -c /dev/kvm && -r /dev/kvm && -w /dev/kvm ]] || return 1
    lvenv_virsh domcapabilities --virttype kvm >/dev/null 2>&1
}
