#!/bin/bash
# `lsm-sync copy` over the image matrix (images.sh): every mode (raw and
# qcow2 outputs, -B with the own layer only, -n onto an existing file,
# --physical), each io backend forced in turn, checked with qemu-img compare,
# qemu-img check (qcow2 outputs), the own layer's allocation (-B) and the
# allocated size of raw outputs (sparse stays sparse).  NBD sources are in
# copy-nbd.sh, reflink/copy_file_range offload in copy-offload.sh: each
# skips as a whole (exit 77) where it cannot run.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/images.sh"
. "$TESTS_DIR/copy-lib.sh"
need_cmd qemu-img qemu-io python3

IOS=(${COPY_IOS:-uring aio psync})

# no_bigger CASE SRC DST: DST allocates no more than SRC (plus slack).
no_bigger() {
    local case=$1 src=$2 dst=$3
    local want have
    want=$(( $(stat -c %b "$src") * 512 ))
    have=$(( $(stat -c %b "$dst") * 512 ))
    if ((have > want + 1048576)); then
        fail "$case" "$dst allocates $have bytes, $src $want bytes"
        return 1
    fi
    return 0
}

# present_map IMG FMT: the present ranges of one layer (backing not opened).
present_map() {
    qemu-img map -U --output=json --image-opts \
        "driver=$2,file.driver=file,file.filename=$1,backing=" 2>/dev/null | python3 -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    p = e.get("present", True)
    if out and out[-1][2] == p and out[-1][0] + out[-1][1] == e["start"]:
        out[-1][1] += e["length"]
    else:
        out.append([e["start"], e["length"], p])
for s, l, p in out:
    print(s, l, p)'
}

backing_of() {  # backing_of IMG -> "name fmt"
    qemu-img info -U --output=json "$1" | python3 -c '
import json, sys
i = json.load(sys.stdin)
print(i.get("backing-filename", ""), i.get("backing-filename-format", ""))'
}

# backing_fmt_of IMG NAME FMT -> FMT, or the probed format of IMG's backing
# file NAME when IMG does not record one (-B requires -F, as in qemu-img).
backing_fmt_of() {
    [[ -n $3 ]] && { echo "$3"; return; }
    local p=$2
    [[ $p == /* ]] || p=$(dirname "$1")/$p
    qemu-img info -U --output=json "$p" | python3 -c 'import json,sys; print(json.load(sys.stdin)["format"])'
}

fmt_of() { [[ ${KIND[$1]} == raw* ]] && echo raw || echo qcow2; }

make_matrix
log "${#IMAGES[@]} source images, io backends: ${IOS[*]}"

n=0
for img in "${IMAGES[@]}"; do
    fmt=$(fmt_of "$img")
    big=0; has_tag "$img" big && big=1
    for io in "${IOS[@]}"; do
        # Only one backend for the 8 TiB image (it is about the map).
        ((big)) && [[ $io != "${IOS[0]}" ]] && continue
        n=$((n + 1))
        tag="$img/$io"

        # raw output: full guest content, sparse.
        rm -f o.raw
        if run "raw $tag" --io="$io" -f "$fmt" "$img" o.raw; then
            same "raw $tag" "$img" o.raw -F raw && sparse "raw $tag" "$img" o.raw && pass "raw $tag"
        fi
        rm -f o.raw

        # qcow2 output (guest order).
        rm -f o.qcow2
        if run "qcow2 $tag" --io="$io" --no-physical -O qcow2 "$img" o.qcow2; then
            same "qcow2 $tag" "$img" o.qcow2 && checked "qcow2 $tag" o.qcow2 && pass "qcow2 $tag"
        fi
        rm -f o.qcow2

        ((big)) && continue

        # -n onto an existing raw file full of 0xff: zero ranges must be zeroed.
        size=$(( (${VSIZE[$img]} + 511) / 512 * 512 ))   # raw sizes round up to 512 like QEMU
        head -c "$size" /dev/zero | tr '\0' '\377' >n.raw
        if run "-n $tag" --io="$io" -n "$img" n.raw; then
            same "-n $tag" "$img" n.raw -F raw && pass "-n $tag"
        fi
        rm -f n.raw

        # -n onto a larger existing file: the bytes past the source stay.
        if [[ $io == "${IOS[0]}" ]]; then
            head -c $((size + 8192)) /dev/zero | tr '\0' '\252' >n2.raw
            if run "-n-larger $tag" -n "$img" n2.raw; then
                if [[ $(tail -c 8192 n2.raw | tr -d '\252' | wc -c) != 0 ]]; then
                    fail "-n-larger $tag" "bytes past the source were changed"
                else
                    truncate -s "$size" n2.raw
                    same "-n-larger $tag" "$img" n2.raw -F raw && pass "-n-larger $tag"
                fi
            fi
            rm -f n2.raw
        fi

        # --physical: single qcow2 layers.
        if [[ $fmt == qcow2 ]] && ! has_tag "$img" chain; then
            rm -f p.qcow2
            if run "physical $tag" --io="$io" --physical -O qcow2 "$img" p.qcow2; then
                same "physical $tag" "$img" p.qcow2 && checked "physical $tag" p.qcow2 &&
                    no_bigger "physical $tag" "$img" p.qcow2 && pass "physical $tag"
            fi
            rm -f p.qcow2
        fi

        # -B: only the top layer, backing set; content over the backing equals
        # the source chain; the own layer's present ranges equal the source's.
        if has_tag "$img" chain; then
            read -r bname bfmt < <(backing_of "$img")
            bfmt=$(backing_fmt_of "$img" "$bname" "$bfmt")
            dir=$(dirname "$img")
            for phys in --no-physical --physical; do
                out=$dir/b-out.qcow2
                rm -f "$out"
                if run "-B $phys $tag" --io="$io" $phys -O qcow2 -B "$bname" -F "$bfmt" "$img" "$out"; then
                    if [[ "$(backing_of "$out")" != "$bname $bfmt" ]]; then
                        fail "-B $phys $tag" "backing of the output is '$(backing_of "$out")', want '$bname $bfmt'"
                    elif ! diff <(present_map "$img" qcow2) <(present_map "$out" qcow2) >map.diff; then
                        fail "-B $phys $tag" "own-layer allocation differs: $(head -n6 map.diff | tr '\n' ' ')"
                    else
                        same "-B $phys $tag" "$img" "$out" && checked "-B $phys $tag" "$out" && pass "-B $phys $tag"
                    fi
                fi
                rm -f "$out"
            done
        fi
    done
done

# The cluster size of a qcow2 output is the source's, 64K for raw sources.
for img in c1.1-cs4096.qcow2 c1.1-cs2097152.qcow2 holes.raw; do
    rm -f o.qcow2
    want=${CLUSTER[$img]}; ((want)) || want=65536
    if run "cluster-size $img" --no-physical -O qcow2 "$img" o.qcow2; then
        got=$(qemu-img info -U --output=json o.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["cluster-size"])')
        [[ $got == "$want" ]] && pass "cluster-size $img" || fail "cluster-size $img" "cluster size $got, want $want"
    fi
done
rm -f o.qcow2

# -B with a backing name different from the source's (an absolute path to
# the same file): the physical copy rewrites the header (qcow2_set_backing).
for phys in --physical --no-physical; do
    case="-B renamed $phys"
    rm -f d3/r.qcow2
    if run "$case" $phys -v -O qcow2 -B "$T/d2/mid.qcow2" -F qcow2 d3/top.qcow2 d3/r.qcow2; then
        if [[ "$(backing_of d3/r.qcow2)" != "$T/d2/mid.qcow2 qcow2" ]]; then
            fail "$case" "backing is '$(backing_of d3/r.qcow2)'"
        elif [[ $phys == --physical ]] && ! grep -q physical err.log; then
            fail "$case" "not a physical copy: $(cat err.log)"
        else
            same "$case" d3/top.qcow2 d3/r.qcow2 && checked "$case" d3/r.qcow2 && pass "$case"
        fi
    fi
    rm -f d3/r.qcow2
done

# -n onto an existing qcow2 (made by qemu-img): without backing, and with
# -B onto one that already names the backing file.
for img in c1.1-cs65536.qcow2 zlib-c1.1.qcow2 holes.raw; do
    rm -f n.qcow2
    qemu-img create -q -f qcow2 n.qcow2 "${VSIZE[$img]}"
    if run "-n qcow2 $img" -n -O qcow2 "$img" n.qcow2; then
        same "-n qcow2 $img" "$img" n.qcow2 && checked "-n qcow2 $img" n.qcow2 && pass "-n qcow2 $img"
    fi
done
rm -f n.qcow2 d3/n.qcow2
qemu-img create -q -f qcow2 -b ../d2/mid.qcow2 -F qcow2 d3/n.qcow2
if run "-n -B qcow2" -n -O qcow2 -B ../d2/mid.qcow2 -F qcow2 d3/top.qcow2 d3/n.qcow2; then
    same "-n -B qcow2" d3/top.qcow2 d3/n.qcow2 && checked "-n -B qcow2" d3/n.qcow2 && pass "-n -B qcow2"
fi
rm -f d3/n.qcow2

# Other destination cluster sizes than the source's: granules mix kinds
# and are read through the chain; with -B the own layer is rounded out to
# the larger clusters, so only content is compared there.
for img in "${IMAGES[@]}"; do
    has_tag "$img" big && continue
    for cs in 512 65536 2097152; do
        [[ ${CLUSTER[$img]} == "$cs" ]] && continue
        rm -f o.qcow2
        if run "-c $cs $img" -o cluster_size=$cs -O qcow2 "$img" o.qcow2; then
            same "-c $cs $img" "$img" o.qcow2 && checked "-c $cs $img" o.qcow2 && pass "-c $cs $img"
        fi
        if has_tag "$img" chain; then
            read -r bname bfmt < <(backing_of "$img")
            bfmt=$(backing_fmt_of "$img" "$bname" "$bfmt")
            out=$(dirname "$img")/c-out.qcow2
            rm -f "$out"
            if run "-c $cs -B $img" -o cluster_size=$cs -O qcow2 -B "$bname" -F "$bfmt" "$img" "$out"; then
                same "-c $cs -B $img" "$img" "$out" && checked "-c $cs -B $img" "$out" && pass "-c $cs -B $img"
            fi
            rm -f "$out"
        fi
    done
done
rm -f o.qcow2

# Automatic physical copy: a clean single qcow2 layer to a new qcow2; never
# with internal snapshots.
if run "auto-physical" -v -O qcow2 c1.1-cs65536.qcow2 o.qcow2; then
    grep -q physical err.log && pass "auto-physical" || fail "auto-physical" "not chosen: $(cat err.log)"
fi
rm -f o.qcow2
if run "auto-physical-snapshot" -v -O qcow2 snap.qcow2 o.qcow2; then
    grep -q physical err.log && fail "auto-physical-snapshot" "chosen for an image with snapshots" ||
        pass "auto-physical-snapshot"
fi
rm -f o.qcow2

# A sparse raw source of 1 GiB with a little data: output stays sparse, the
# copy does not touch the holes; small request size and few requests work.
truncate -s 1G sp.raw
qio sp.raw raw -- "write -P 0x5a 100M 1M" "write -P 0x5b 900M 3M" "write -P 0 500M 2M"
for args in "" "-m 1 --request-size=4k" "-m 64 --request-size=8M --buffer-size=16M" "--offload=never" "--direct=never"; do
    rm -f o.raw
    if run "sparse-raw [$args]" $args sp.raw o.raw; then
        same "sparse-raw [$args]" sp.raw o.raw && sparse "sparse-raw [$args]" sp.raw o.raw && pass "sparse-raw [$args]"
    fi
done
rm -f o.raw
# -n --target-is-zero onto a fresh sparse file: zero ranges left alone.
truncate -s 1G o.raw
if run "target-is-zero" -n --target-is-zero sp.raw o.raw; then
    same "target-is-zero" sp.raw o.raw && sparse "target-is-zero" sp.raw o.raw && pass "target-is-zero"
fi
rm -f o.raw

# Progress as JSON lines on stdout, the last one at 100%.
if "$LSM_SYNC" copy --progress=json --rate=20M sp.raw o.raw >prog.log 2>err.log; then
    if python3 - prog.log <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert len(lines) >= 2, lines
for l in lines:
    for k in ("bytes_done", "bytes_total", "percent", "rate", "eta_seconds"):
        assert k in l, (k, l)
last = lines[-1]
assert last["bytes_done"] == last["bytes_total"] > 0, last
assert last["percent"] == 100, last
EOF
    then pass "progress-json"; else fail "progress-json" "$(head -c 600 prog.log)"; fi
else
    fail "progress-json" "exit $?: $(cat err.log)"
fi
rm -f o.raw

# JSON summary.
if "$LSM_SYNC" copy --output=json --io=psync sp.raw o.raw >sum.log 2>err.log &&
   python3 -c 'import json,sys; d=json.load(open("sum.log")); assert d["io"]=="psync" and d["bytes_total"] > 0, d'; then
    pass "output-json"
else
    fail "output-json" "$(cat sum.log err.log | head -c 600)"
fi
rm -f o.raw sp.raw

# A raw source whose size is not a multiple of 512, all data: the tail
# comes back short from O_DIRECT and is read buffered.
head -c $((1048576 + 100)) /dev/urandom >tail.raw
for io in "${IOS[@]}"; do
    for out in raw qcow2; do
        rm -f o.$out
        if run "odd-tail $io $out" --io="$io" -O $out tail.raw o.$out; then
            same "odd-tail $io $out" tail.raw o.$out && pass "odd-tail $io $out"
        fi
    done
done
rm -f o.raw o.qcow2 tail.raw

# -n onto a block device (a loop device over a file full of garbage).
truncate -s 64M loop.img
if dev=$(losetup -f --show loop.img 2>/dev/null); then
    head -c 16M /dev/urandom | dd of="$dev" bs=1M iflag=fullblock oflag=direct status=none
    for img in c1.1-cs65536.qcow2 d3/top.qcow2 holes.raw; do
        if run "blockdev -n $img" -n "$img" "$dev"; then
            # The device is larger than the image: compare the image's extent.
            qemu-img convert -O raw "$img" ref.raw
            if cmp -n "$(stat -c %s ref.raw)" ref.raw "$dev" >/dev/null; then
                pass "blockdev -n $img"
            else
                fail "blockdev -n $img" "content differs"
            fi
            rm -f ref.raw
        fi
    done
    losetup -d "$dev"
else
    for img in c1.1-cs65536.qcow2 d3/top.qcow2 holes.raw; do
        skip_case "blockdev -n $img" "no loop device: losetup -f failed"
    done
fi
rm -f loop.img

# The 8 TiB empty image copies in well under a second.
elapsed_ms "$LSM_SYNC" copy -O qcow2 empty-8t.qcow2 o.qcow2
if ((RC == 0 && MS < 2000)); then pass "8t-empty ${MS}ms"; else fail "8t-empty" "rc=$RC ${MS}ms"; fi
rm -f o.qcow2

log "$n source/backend combinations"
finish
