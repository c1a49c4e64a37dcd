#!/bin/bash
# `lsm-sync map` against `qemu-img map` over the image matrix (images.sh):
# JSON output byte-identical for every image, for --start-offset/--max-length
# windows, and the human output for images without compressed clusters
# (qemu-img refuses those in human mode).
. "$(dirname "$0")/lib.sh"
. "$TESTS_DIR/images.sh"
need_cmd qemu-img qemu-io diff

# compare CASE QEMU_ARGS... -- LSM_ARGS...: outputs must be identical; when
# qemu-img fails, lsm-sync must fail too (exit 1 or 2) with one line.
#
# Both tools ask the host file where its holes are (QEMU does for every data
# cluster), and on ext4 the answer for fallocated-but-unwritten ranges can
# change from one moment to the next as writeback and the page cache move:
# qemu-img itself then prints two different maps a second apart.  So
# qemu-img runs before and after us, and our output must equal one of the
# two; a case is retried (3 rounds) before it counts as a difference.
compare() {
    local case=$1; shift
    local q=() l=()
    while [[ $1 != -- ]]; do q+=("$1"); shift; done
    shift
    l=("$@")
    local qrc lrc round
    for round in 1 2 3; do
        qrc=0 lrc=0
        qemu-img map -U "${q[@]}" >q.out 2>q.err || qrc=$?
        "$LSM_SYNC" map "${l[@]}" >l.out 2>l.err || lrc=$?
        qemu-img map -U "${q[@]}" >q2.out 2>/dev/null || true
        if ((qrc != 0)); then
            if ((lrc == 1 || lrc == 2)) && [[ $(wc -l <l.err) == 1 ]]; then
                pass "$case"
            else
                fail "$case" "qemu-img failed ($(head -n1 q.err)) but lsm-sync exited $lrc: $(head -n3 l.err)"
            fi
            return
        fi
        if ((lrc != 0)); then
            fail "$case" "lsm-sync exited $lrc: $(head -n3 l.err)"
            return
        fi
        if cmp -s q.out l.out || cmp -s q2.out l.out; then
            ((round == 1)) || log "note: $case matched qemu-img in round $round (host file holes moved)"
            pass "$case"
            return
        fi
        cmp -s q.out q2.out && break    # qemu-img was stable: a real difference
    done
    fail "$case" "output differs from qemu-img (- qemu-img, + lsm-sync):"
    diff -u --label qemu-img --label lsm-sync q.out l.out | head -n 40 || true
}

make_matrix
log "${#ALL_IMAGES[@]} images"

for img in "${ALL_IMAGES[@]}"; do
    compare "json $img" --output=json "$img" -- --output=json "$img"
    if ! has_tag "$img" compressed; then
        compare "human $img" "$img" -- "$img"
    fi
done

# Windows: aligned, unaligned, one byte, crossing and beyond the end.
for img in c1.1-cs4096.qcow2 c0.10-cs512.qcow2 el2-cs65536.qcow2 d3/top.qcow2 \
           grown.qcow2 shrunk.qcow2 holes.raw odd.raw empty-8t.qcow2 zlib-c1.1.qcow2; do
    [[ -n ${VSIZE[$img]:-} ]] || continue
    s=${VSIZE[$img]}
    c=${CLUSTER[$img]}
    ((c > 0)) || c=4096
    for w in "0 1" "1000 70000" "$((5 * c)) $((3 * c))" "$((c / 2)) $((c * 9 + 7))" \
             "$((s - 1000)) 5000" "$((s / 2)) $s" "$s 4096" "0 $((s * 2))"; do
        set -- $w
        compare "window $img +$1,$2" --output=json --start-offset="$1" --max-length="$2" "$img" \
            -- --output=json --start-offset="$1" --max-length="$2" "$img"
    done
    compare "window-start $img +$((s / 3))" --output=json --start-offset=$((s / 3)) "$img" \
        -- --output=json --start-offset=$((s / 3)) "$img"
    compare "window-len $img +0,$((s / 3))" --output=json --max-length=$((s / 3)) "$img" \
        -- --output=json --max-length=$((s / 3)) "$img"
    if ! has_tag "$img" compressed; then
        compare "window-human $img" --start-offset=1000 --max-length=$((s / 2)) "$img" \
            -- --start-offset=1000 --max-length=$((s / 2)) "$img"
    fi
done

# An explicit -f must give the same answer as probing.
compare "format-flag qcow2" --output=json -f qcow2 d3/top.qcow2 -- --output=json -f qcow2 d3/top.qcow2
compare "format-flag raw" --output=json -f raw holes.raw -- --output=json -f raw holes.raw
# A qcow2 read as raw is a raw file of its own size.
compare "format-flag qcow2-as-raw" --output=json -f raw c1.1-cs4096.qcow2 -- --output=json -f raw c1.1-cs4096.qcow2

finish
