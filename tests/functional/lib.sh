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
