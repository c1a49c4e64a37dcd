# Shared helpers of the functional tests.  Source it first thing:
#     . "$(dirname "$0")/lib.sh"
# It sets `set -euo pipefail`, checks LSM_SYNC, makes a private scratch
# directory $T (removed on exit) and cd's into it, so image names in output
# and diffs are short and relative.
#
# Exit codes: 0 pass, 1 fail, 77 skip (meson shows SKIP; the reason is printed).
set -euo pipefail

# The folder of the test scripts (absolute: we cd away below).
TESTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${SOURCE_DIR:=$(cd "$TESTS_DIR/../.." && pwd)}"
: "${BUILD_DIR:=$SOURCE_DIR/build}"
: "${LSM_SYNC:=$BUILD_DIR/lsm-sync}"
export LC_ALL=C

TEST_NAME=$(basename "$0" .sh)
CASES=0
FAILED=0
FAILED_NAMES=()

log() { printf '%s: %s\n' "$TEST_NAME" "$*"; }

skip() {
    log "SKIP: $*"
    exit 77
}

die() {
    log "ERROR: $*" >&2
    exit 1
}

# need_cmd CMD...: skip the whole test if a tool is missing.
need_cmd() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || skip "'$c' not found (install it with scripts/deps.sh)"
    done
}

[[ -x $LSM_SYNC ]] || die "LSM_SYNC=$LSM_SYNC is not an executable"

T=$(mktemp -d "${TMPDIR:-/tmp}/lsm-$TEST_NAME.XXXXXX")
cleanup() {
    cd /
    rm -rf "$T"
}
trap cleanup EXIT
cd "$T"

# pass NAME / fail NAME [why]: count one case.
pass() {
    CASES=$((CASES + 1))
    [[ ${VERBOSE:-0} == 1 ]] && log "ok   $1"
    return 0
}
fail() {
    CASES=$((CASES + 1))
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$1")
    log "FAIL $1${2:+: $2}"
    return 0
}

# skip_case NAME WHY: a case that cannot run here.  It is not a pass: it is
# counted and named, with its reason, in the summary that finish prints.
SKIPPED=0
SKIPPED_NAMES=()
skip_case() {
    SKIPPED=$((SKIPPED + 1))
    SKIPPED_NAMES+=("$1 ($2)")
    log "SKIP $1: $2"
    return 0
}

# finish: print the counts and exit 1 if any case failed, 77 if none ran
# (every case skipped, or none was tried).
finish() {
    local skipped=""
    if ((SKIPPED > 0)); then
        skipped=", $SKIPPED skipped: $(printf '%s; ' "${SKIPPED_NAMES[@]}")"
        skipped=${skipped%; }
    fi
    if ((CASES == 0)); then
        skip "no case could run${skipped}"
    fi
    if ((FAILED > 0)); then
        log "$FAILED of $CASES cases failed: ${FAILED_NAMES[*]}${skipped}"
        exit 1
    fi
    log "all $CASES cases passed${skipped}"
    exit 0
}

# Image helpers.  qcow2 NAME SIZE [OPTIONS] creates a qcow2 image;
# qio NAME [FMT] -- CMD... runs qemu-io commands on it.
qcow2() {
    local name=$1 size=$2 opts=${3:-}
    qemu-img create -q -f qcow2 ${opts:+-o "$opts"} "$name" "$size"
}
qio() {
    local name=$1 fmt=qcow2
    shift
    if [[ ${1:-} != -- ]]; then fmt=$1; shift; fi
    shift
    local args=() c
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io -f "$fmt" "${args[@]}" "$name" >/dev/null
}

# qemu_has_zstd: does this qemu-img write zstd-compressed qcow2?
qemu_has_zstd() {
    qemu-img create -q -f qcow2 -o compression_type=zstd "$T/.zstd-probe.qcow2" 1M >/dev/null 2>&1
    local rc=$?
    rm -f "$T/.zstd-probe.qcow2"
    return $rc
}

# elapsed_ms CMD...: run CMD, store its exit code in RC and its wall time in
# milliseconds in MS; never fails (for use under set -e).
elapsed_ms() {
    local t0 t1
    t0=$(date +%s%N)
    set +e
    "$@"
    RC=$?
    set -e
    t1=$(date +%s%N)
    MS=$(( (t1 - t0) / 1000000 ))
}

# after_kill OUT ERR CMD...: run CMD (stdout in OUT, stderr in ERR) right
# after a SIGKILLed run on the same destination, running it again while it
# is refused because that destination's lock is still held: the kernel
# drops the killed run's locks when its io_uring lets go of the
# descriptors, up to about a second after the process is reaped
# (docs/copy.md).  RC is CMD's exit code from its last try.
after_kill() {
    local out=$1 err=$2 n; shift 2
    for n in 1 2 3 4 5 6 7 8 9 10; do
        RC=0
        "$@" >"$out" 2>"$err" || RC=$?
        ((RC == 1)) && grep -q 'Failed to get .* lock' "$err" || return 0
        sleep 0.3
    done
}

# killed_run LOG CMD...: run CMD --progress=json in the background (its
# lines in LOG, its stderr in LOG.err) and SIGKILL it at a random point:
# after a random time under a second, or (every other call) once its JSON
# progress says a random number of bytes is done, between KILL_MIN_MB and
# KILL_MIN_MB + KILL_SPAN_MB MiB (defaults 4 and 120; at most 20 s).
# KILLED=1 if it was killed before it finished; its exit status is not
# kept (SIGKILL's 137, or the command's own: callers judge by what it left).
KIND=0
killed_run() {
    local log=$1; shift
    "$@" --progress=json >"$log" 2>"$log.err" &
    local pid=$! t0 target
    KIND=$((KIND + 1))
    if ((KIND % 2)); then
        sleep "0.$((RANDOM % 9 + 1))"
    else
        target=$(( (RANDOM % ${KILL_SPAN_MB:-120} + ${KILL_MIN_MB:-4}) * 1024 * 1024 ))
        t0=$SECONDS
        while kill -0 "$pid" 2>/dev/null && ((SECONDS - t0 < 20)); do
            local done
            done=$(tail -n1 "$log" 2>/dev/null | jq -r '.bytes_done // 0' 2>/dev/null || echo 0)
            [[ $done =~ ^[0-9]+$ ]] && ((done >= target)) && break
            sleep 0.02
        done
    fi
    KILLED=0
    kill -KILL "$pid" 2>/dev/null && KILLED=1
    wait "$pid" 2>/dev/null || :
}
