# The image matrix shared by map-matrix.sh, info.sh and libqcow-read.sh.
# Source after lib.sh; call make_matrix.  It creates the images under $T and
# fills:
#   IMAGES          names, relative to $T, top images only (chains included)
#   ALL_IMAGES      IMAGES plus the lower layers of chains (mapped on their own too)
#   KIND[name]      space separated tags: qcow2 raw v2 v3 compressed zstd el2
#                   snapshot chain prealloc big
#   CLUSTER[name]   cluster size (0 for raw)
#   VSIZE[name]     virtual size
# make_matrix is idempotent within one test run.

declare -a IMAGES=() ALL_IMAGES=()
declare -A KIND=() CLUSTER=() VSIZE=()

_add() {  # _add NAME CLUSTER VSIZE TAGS [top|lower]
    KIND[$1]=$4
    CLUSTER[$1]=$2
    VSIZE[$1]=$3
    ALL_IMAGES+=("$1")
    [[ ${5:-top} == top ]] && IMAGES+=("$1")
    return 0
}

has_tag() { [[ " ${KIND[$1]} " == *" $2 "* ]]; }

# Standard write pattern for cluster size C on an image of virtual size S:
# data, a zero cluster over nothing, a partial cluster, zero over data (kept
# allocated and unmapped), a discard, runs that merge, and data in the last
# (partial) cluster.
_pattern() {
    local img=$1 C=$2 S=$3
    qio "$img" -- \
        "write -P 0x11 0 $((3 * C))" \
        "write -z $((4 * C)) $C" \
        "write -P 0x22 $((8 * C)) $((C / 2))" \
        "write -P 0x33 $((6 * C)) $C" "write -z $((6 * C)) $C" \
        "write -P 0x44 $((10 * C)) $C" "write -z -u $((10 * C)) $C" \
        "write -P 0x55 $((12 * C)) $((2 * C))" "discard $((12 * C)) $C" \
        "write -P 0x66 $((20 * C)) $((5 * C))" "write -z -u $((21 * C)) $C" \
        "write -P 0x77 $((S - 1536)) 1536"
}

# Subcluster pattern for extended L2 (32 subclusters per cluster).
_pattern_el2() {
    local img=$1 C=$2 sc=$(($2 / 32))
    qio "$img" -- \
        "write -P 0x11 0 $((4 * sc))" \
        "write -P 0x12 $((8 * sc)) $((sc / 2))" \
        "write -z $((16 * sc)) $((2 * sc))" \
        "write -z -u $((C + 3 * sc)) $sc" \
        "write -P 0x13 $((2 * C)) $C" "discard $((2 * C + 4 * sc)) $((4 * sc))" \
        "write -P 0x14 $((3 * C)) $C" "write -z $((3 * C + sc)) $((30 * sc))" \
        "write -z $((4 * C)) $((2 * C))" \
        "write -P 0x15 $((7 * C)) $((2 * C))" "write -z -u $((7 * C)) $((C + 5 * sc))"
}

make_matrix() {
    ((${#ALL_IMAGES[@]} == 0)) || return 0
    local compat cs size name

    # compat x cluster size, with the standard pattern.
    for compat in 0.10 1.1; do
        for cs in 512 4096 65536 2097152; do
            size=$((64 * cs + 1536))
            name=c$compat-cs$cs.qcow2
            qcow2 "$name" "$size" "compat=$compat,cluster_size=$cs"
            _pattern "$name" "$cs" "$size"
            _add "$name" "$cs" "$size" "qcow2 $([[ $compat == 0.10 ]] && echo v2 || echo v3)"
        done
    done

    # refcount widths.
    for rb in 1 64; do
        name=rb$rb.qcow2
        size=$((64 * 65536))
        qcow2 "$name" "$size" "refcount_bits=$rb"
        _pattern "$name" 65536 "$size"
        _add "$name" 65536 "$size" "qcow2 v3"
    done

    # extended L2: subcluster allocation and zero bits.
    for cs in 65536 2097152; do
        name=el2-cs$cs.qcow2
        size=$((16 * cs))
        qcow2 "$name" "$size" "extended_l2=on,cluster_size=$cs"
        _pattern_el2 "$name" "$cs"
        _add "$name" "$cs" "$size" "qcow2 v3 el2"
    done

    # compressed clusters: zlib written by qemu-io, mixed with plain data.
    for compat in 0.10 1.1; do
        name=zlib-c$compat.qcow2
        qcow2 "$name" 1M "compat=$compat,cluster_size=4096"
        qio "$name" -- "write -c -P 0x31 0 16k" "write -P 0x32 16k 8k" \
            "write -c -P 0x33 64k 4k" "write -c -z 128k 4k" "write -c -P 0x34 1020k 4k"
        _add "$name" 4096 $((1 << 20)) "qcow2 $([[ $compat == 0.10 ]] && echo v2 || echo v3) compressed"
    done
    # zstd: written by qemu-io and by qemu-img convert -c.
    if qemu_has_zstd; then
        name=zstd-io.qcow2
        qcow2 "$name" 1M "compression_type=zstd,cluster_size=65536"
        qio "$name" -- "write -c -P 0x41 0 128k" "write -P 0x42 128k 64k" "write -c -P 0x43 512k 64k"
        _add "$name" 65536 $((1 << 20)) "qcow2 v3 compressed zstd"
        qemu-img create -q -f raw zsrc.raw 2M
        qio zsrc.raw raw -- "write -P 0x44 0 512k" "write -P 0x45 1M 300k"
        name=zstd-conv.qcow2
        qemu-img convert -c -O qcow2 -o compression_type=zstd,cluster_size=4096 zsrc.raw "$name"
        _add "$name" 4096 $((2 << 20)) "qcow2 v3 compressed zstd"
        rm -f zsrc.raw
    fi

    # internal snapshots: the active L1 maps, the snapshots keep old clusters.
    name=snap.qcow2
    qcow2 "$name" 4M "cluster_size=65536"
    qio "$name" -- "write -P 0x51 0 1M"
    qemu-img snapshot -c s1 "$name"
    qio "$name" -- "write -P 0x52 256k 128k" "discard 512k 64k" "write -z 768k 64k"
    qemu-img snapshot -c s2 "$name"
    qio "$name" -- "write -P 0x53 2M 64k" "write -z -u 0 64k"
    _add "$name" 65536 $((4 << 20)) "qcow2 v3 snapshot"

    # preallocation modes (v3; metadata also in v2).
    for p in metadata falloc full; do
        name=prealloc-$p.qcow2
        qcow2 "$name" 4M "preallocation=$p,cluster_size=65536"
        qio "$name" -- "write -P 0x61 64k 128k" "write -z 1M 64k" "write -z -u 2M 64k" "discard 3M 64k"
        _add "$name" 65536 $((4 << 20)) "qcow2 v3 prealloc"
    done
    name=prealloc-metadata-v2.qcow2
    qcow2 "$name" 4M "preallocation=metadata,compat=0.10,cluster_size=4096"
    qio "$name" -- "write -P 0x62 8k 12k"
    _add "$name" 4096 $((4 << 20)) "qcow2 v2 prealloc"

    # 3-deep chain over a raw base, relative names across directories.
    mkdir -p d1 d2 d3
    qemu-img create -q -f raw d1/base.raw 4M
    qio d1/base.raw raw -- "write -P 0x71 0 1M" "write -P 0x72 3M 512k"
    qemu-img create -q -f qcow2 -b ../d1/base.raw -F raw d2/mid.qcow2
    qio d2/mid.qcow2 -- "write -P 0x73 512k 1M" "write -z 3M 128k"
    qemu-img create -q -f qcow2 -o cluster_size=4096 -b ../d2/mid.qcow2 -F qcow2 d3/top.qcow2
    qio d3/top.qcow2 -- "write -P 0x74 1M 1M" "write -z 3200k 64k" "write -z -u 0 8k" "discard 2M 64k"
    _add d1/base.raw 0 $((4 << 20)) "raw" lower
    _add d2/mid.qcow2 65536 $((4 << 20)) "qcow2 v3 chain" lower
    _add d3/top.qcow2 4096 $((4 << 20)) "qcow2 v3 chain"
    # A top larger and a top smaller than its backing.
    qcow2 small-base.qcow2 1M "cluster_size=4096"
    qio small-base.qcow2 -- "write -P 0x81 0 1M"
    qemu-img create -q -f qcow2 -b small-base.qcow2 -F qcow2 grown.qcow2 4M
    qio grown.qcow2 -- "write -P 0x82 512k 64k" "write -P 0x83 3M 64k"
    _add small-base.qcow2 4096 $((1 << 20)) "qcow2 v3" lower
    _add grown.qcow2 65536 $((4 << 20)) "qcow2 v3 chain"
    qcow2 big-base.qcow2 4M "cluster_size=4096"
    qio big-base.qcow2 -- "write -P 0x84 0 4M"
    qemu-img create -q -f qcow2 -b big-base.qcow2 -F qcow2 shrunk.qcow2 1M
    qio shrunk.qcow2 -- "write -P 0x85 256k 64k"
    _add big-base.qcow2 4096 $((4 << 20)) "qcow2 v3" lower
    _add shrunk.qcow2 65536 $((1 << 20)) "qcow2 v3 chain"

    # Raw files with holes, and one whose size is not a multiple of 512.
    truncate -s 8M holes.raw
    dd if=/dev/urandom of=holes.raw bs=4096 count=3 seek=16 conv=notrunc status=none
    dd if=/dev/urandom of=holes.raw bs=65536 count=2 seek=64 conv=notrunc status=none
    dd if=/dev/zero of=holes.raw bs=4096 count=1 seek=2047 conv=notrunc status=none
    _add holes.raw 0 $((8 << 20)) "raw"
    truncate -s 100000 odd.raw
    dd if=/dev/urandom of=odd.raw bs=1000 count=3 seek=20 conv=notrunc status=none
    _add odd.raw 0 100000 "raw"
    head -c 70000 /dev/urandom >dense.raw
    _add dense.raw 0 70000 "raw"

    # An 8 TiB empty image.
    qcow2 empty-8t.qcow2 8T
    _add empty-8t.qcow2 65536 $((8 << 40)) "qcow2 v3 big"

    # Map output depends on the holes of the image files (QEMU asks the file
    # about every data cluster), and on ext4 the holes inside fallocated
    # ranges can change while writeback runs: settle them before comparing.
    sync -f "$T" 2>/dev/null || sync
}
