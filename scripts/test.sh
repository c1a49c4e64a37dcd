#!/bin/bash
# Quick start, command 2, and what CI runs (.ci/run): install what is missing,
# then
#   1. build/       -Dwerror=true, whole suite
#   2. build-asan/  ASan + UBSan, whole suite again
#   3. build-fuzz/  clang + libFuzzer, the fuzz targets for a bounded time
# and print one closing line "N passed, N failed, N skipped" (totals over all
# runs).  Exits non-zero if anything failed.
#
# Environment: FUZZ_SECONDS (default 20) per fuzz target; SKIP_ASAN=1 and
# SKIP_FUZZ=1 leave out stages 2 and 3 (for quick local runs only).
set -uo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
JOBS=$(nproc 2>/dev/null || echo 2)
LOGS=$(mktemp -d /tmp/lsm-test.XXXXXX)
trap 'rm -rf "$LOGS"' EXIT

passed=0 failed=0 skipped=0
failures=()

say() { printf '\n== %s\n' "$*"; }
fail_step() { failed=$((failed + 1)); failures+=("$1"); echo "test.sh: FAILED: $1" >&2; }

# setup DIR [meson options...]: configure DIR (or reconfigure it with these options).
setup() {
    local dir=$1; shift
    if [[ -f $dir/build.ninja ]]; then
        meson setup --reconfigure "$dir" "$@" >"$LOGS/$dir.setup.log" 2>&1
    else
        rm -rf "$dir"
        meson setup "$dir" "$@" >"$LOGS/$dir.setup.log" 2>&1
    fi || { cat "$LOGS/$dir.setup.log" >&2; return 1; }
}

# count DIR: add the results of DIR's last meson test run to the totals.
count() {
    local log=$1/meson-logs/testlog.json
    if [[ ! -s $log ]]; then
        fail_step "$1: no test log"
        return
    fi
    local p f s
    read -r p f s < <(jq -rs '
        [ .[] | .result ] as $r
        | [ ($r | map(select(. == "OK" or . == "EXPECTEDFAIL")) | length),
            ($r | map(select(. != "OK" and . != "EXPECTEDFAIL" and . != "SKIP")) | length),
            ($r | map(select(. == "SKIP")) | length) ] | @tsv' "$log")
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    if ((f > 0)); then
        failures+=("$1: $(jq -rs '[.[] | select(.result != "OK" and .result != "EXPECTEDFAIL" and .result != "SKIP") | .name] | join(", ")' "$log")")
    fi
}

# suite DIR [meson test options...]: build DIR and run the whole suite in it.
suite() {
    local dir=$1; shift
    if ! ninja -C "$dir" >"$LOGS/$dir.ninja.log" 2>&1; then
        cat "$LOGS/$dir.ninja.log" >&2
        fail_step "$dir: build"
        return
    fi
    rm -f "$dir/meson-logs/testlog.json"
    meson test -C "$dir" --print-errorlogs --num-processes "$JOBS" "$@"
    count "$dir"
}

stage_deps() {
    say "dependencies"
    bash "$REPO/scripts/deps.sh" --tests || { fail_step "deps"; return 1; }
}

stage_plain() {
    say "build/ (-Dwerror=true): whole suite"
    if setup build -Dwerror=true; then suite build; else fail_step "build: meson setup"; fi
}

ASAN_OPTS=(-Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false)
FUZZ_OPTS=(-Dfuzzing=true -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false
           -Dc_args=-fsanitize=fuzzer-no-link)

# While build/'s suite runs (its tests wait on sleeps, rates, libvirtd and
# TCG guests much of the time), build-asan/ and build-fuzz/ are configured
# and compiled at the lowest CPU and I/O priority, so that stages 2 and 3
# start with nothing to build (about 2 minutes of CI saved).  Only a head
# start: each stage still runs its own setup and ninja and reports their
# errors; what fails here is left for that stage to redo and report.
prebuild() {
    if [[ ${SKIP_ASAN:-0} != 1 ]]; then
        setup build-asan "${ASAN_OPTS[@]}" && ninja -C build-asan -j 2 >"$LOGS/prebuild-asan.log" 2>&1
    fi
    if [[ ${SKIP_FUZZ:-0} != 1 ]]; then
        CC=clang setup build-fuzz "${FUZZ_OPTS[@]}" && ninja -C build-fuzz -j 2 >"$LOGS/prebuild-fuzz.log" 2>&1
    fi
    return 0
}

stage_asan() {
    say "build-asan/ (ASan + UBSan): whole suite"
    if ! setup build-asan "${ASAN_OPTS[@]}"; then
        fail_step "build-asan: meson setup"; return
    fi
    # The vm suite boots a kernel under TCG and runs the binaries emulated,
    # and the guest suite (migrate, monitor-extend) boots a writing TCG guest
    # whose boot is most of its time: both run once, in build/, not again
    # under the sanitizers (their flows' unit tests do run there).  (A comment
    # must not sit inside the continued command below: it would end it, and
    # the sanitizer options would become unexported shell variables.)
    # KILLS: resume.sh and sync-resume.sh kill 4 copies per case here, not
    # 12 and 11: the random kill points are build/'s to cover; here the
    # journal and resume paths need only run under the sanitizers.
    KILLS=4 \
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        suite build-asan --timeout-multiplier 3 --no-suite vm --no-suite packaging --no-suite guest
}

# Every fuzz target found in build-fuzz/tests/fuzz runs FUZZ_SECONDS over a
# scratch copy of its seed corpus (the committed corpus is not modified);
# crashes go to build-fuzz/fuzz-artifacts/.
stage_fuzz() {
    say "build-fuzz/ (clang, libFuzzer, ASan + UBSan): ${FUZZ_SECONDS}s per target"
    if ! CC=clang setup build-fuzz "${FUZZ_OPTS[@]}"; then
        fail_step "build-fuzz: meson setup"; return
    fi
    if ! ninja -C build-fuzz >"$LOGS/build-fuzz.ninja.log" 2>&1; then
        cat "$LOGS/build-fuzz.ninja.log" >&2
        fail_step "build-fuzz: build"; return
    fi
    local found=0 t name
    mkdir -p build-fuzz/fuzz-artifacts
    for t in build-fuzz/tests/fuzz/fuzz-*; do
        [[ -x $t && -f $t && $t != *-replay ]] || continue
        name=${t##*/}
        found=1
        local seeds=tests/fuzz/corpus scratch=build-fuzz/fuzz-corpus/$name
        # a target with its own seeds (fuzz-scsi: corpus-scsi/)
        [[ -d tests/fuzz/corpus-${name#fuzz-} ]] && seeds=tests/fuzz/corpus-${name#fuzz-}
        rm -rf "$scratch"; mkdir -p "$scratch"
        echo "$name: ${FUZZ_SECONDS}s over $seeds"
        if ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
           UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
           "$t" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
                -max_len=131072 -print_final_stats=1 \
                -artifact_prefix=build-fuzz/fuzz-artifacts/"$name"- \
                "$scratch" "$seeds" </dev/null >build-fuzz/"$name".log 2>&1; then
            passed=$((passed + 1))
            echo "$name: OK ($(grep -c '' build-fuzz/"$name".log) log lines, stats: $(grep -m1 'stat::number_of_executed_units' build-fuzz/"$name".log | awk '{print $2}') runs)"
        else
            tail -n 60 build-fuzz/"$name".log >&2
            fail_step "fuzz: $name (see build-fuzz/$name.log, build-fuzz/fuzz-artifacts/)"
        fi
    done
    ((found)) || fail_step "fuzz: no fuzz target was built"
}

start=$SECONDS
if stage_deps; then
    (renice -n 19 -p "$BASHPID" && ionice -c 3 -p "$BASHPID"; prebuild) >/dev/null 2>&1 &
    prebuild_pid=$!
    stage_plain
    wait "$prebuild_pid"
    [[ ${SKIP_ASAN:-0} == 1 ]] || stage_asan
    [[ ${SKIP_FUZZ:-0} == 1 ]] || stage_fuzz
fi

say "summary ($(( (SECONDS - start) / 60 ))m$(( (SECONDS - start) % 60 ))s)"
for f in "${failures[@]}"; do echo "  failed: $f"; done
echo "$passed passed, $failed failed, $skipped skipped"
((failed == 0))
