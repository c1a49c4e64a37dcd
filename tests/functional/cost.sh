#!/bin/bash
# Cost bounds of the reader:
#   - `map --output=json` of a 1 TiB qcow2 with preallocation=metadata and
#     64 KiB clusters (16 Mi L2 entries, all allocated; the file is sparse)
#     peaks below 64 MiB of RSS (asserted), and its output equals qemu-img's;
#   - the wall time of mapping an empty 8 TiB image is printed, not asserted
#     (the < 50 ms target is measured by the benchmarks, not by a timed test).
# Under ASan the RSS bound is not meaningful (shadow memory): it is reported
# and not asserted.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img
[[ -x /usr/bin/time ]] || skip "/usr/bin/time not found (Debian package 'time'; scripts/deps.sh installs it)"
RSS_LIMIT_KIB=$((64 * 1024))

sanitized=0
if ldd "$LSM_SYNC" 2>/dev/null | grep -q 'libasan\|libubsan' ||
   nm "$LSM_SYNC" 2>/dev/null | grep -q '__asan_init\|__ubsan_handle'; then
    sanitized=1
fi

avail_kib=$(df -Pk "$T" | awk 'NR == 2 { print $4 }')
((avail_kib > 400 * 1024)) || skip "needs 400 MiB free in $T for the 1 TiB image's metadata"

qemu-img create -q -f qcow2 -o preallocation=metadata,cluster_size=65536 tb.qcow2 1T
log "1 TiB image: $(du -h tb.qcow2 | cut -f1) allocated on disk"

rc=0
/usr/bin/time -f '%M %e' -o time.txt "$LSM_SYNC" map --output=json tb.qcow2 >l.json 2>l.err || rc=$?
if ((rc != 0)); then
    fail "map 1 TiB metadata-preallocated" "exit $rc: $(head -n3 l.err)"
else
    read -r rss secs <time.txt
    log "map 1 TiB metadata-preallocated: max RSS $((rss / 1024)) MiB, ${secs}s"
    if ((sanitized)); then
        log "  (sanitizer build: RSS bound not asserted)"
        pass "rss 1 TiB"
    elif ((rss < RSS_LIMIT_KIB)); then
        pass "rss 1 TiB"
    else
        fail "rss 1 TiB" "max RSS $rss KiB >= $RSS_LIMIT_KIB KiB"
    fi
    qemu-img map -U --output=json tb.qcow2 >q.json
    if cmp -s q.json l.json; then
        pass "map 1 TiB equals qemu-img"
    else
        fail "map 1 TiB equals qemu-img" "output differs:"
        diff -u --label qemu-img --label lsm-sync q.json l.json | head -n 20 || true
    fi
fi
rm -f tb.qcow2

qemu-img create -q -f qcow2 empty.qcow2 8T
best=
for i in 1 2 3; do
    elapsed_ms "$LSM_SYNC" map --output=json empty.qcow2 >/dev/null 2>l.err
    if ((RC != 0)); then
        fail "map 8 TiB empty" "exit $RC: $(head -n3 l.err)"
        break
    fi
    if [[ -z $best ]] || ((MS < best)); then best=$MS; fi
done
if [[ -n $best ]] && ((RC == 0)); then
    log "map 8 TiB empty: best of 3 runs ${best} ms wall (target < 50 ms, shown by bench/, not asserted)"
    pass "map 8 TiB empty"
fi

finish
