#!/bin/bash
# qemu-img convert command lines run unchanged by `lsm-sync copy` (issue 15):
# vdsm's exact invocations, each run twice on the same inputs, once as
# `qemu-img convert ARGS DST` and once as `lsm-sync copy ARGS DST`, and the
# results compared with QEMU's own tools:
#   - qemu-img compare (the guest content),
#   - qemu-img info fields (format, virtual size, cluster size, backing file
#     and its format, and every qcow2 field of format-specific: compat,
#     lazy-refcounts, refcount-bits, extended-l2, compression-type, corrupt),
#   - qemu-img map: what qemu-img's output allocates, ours allocates too
#     (judge.py says where ours may allocate more),
#   - qemu-img check (no errors, no leaks) for qcow2.
# The -p output (stdout is a file here, not a terminal) must parse with
# vdsm's regular expression \s*\(([\d.]+)/100%\)\s*: every \r-separated
# record, rising, from 0.00 to 100.00; qemu-img's own output is parsed the
# same way, so the parser is checked too.
# What lsm-sync does not support yet must fail with exactly one line on
# stderr (a usage error, exit 2, adds the "Try ... --help" hint) and a
# non-zero exit, and leave no destination it created.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img qemu-io python3

L=$LSM_SYNC

# ---- inputs --------------------------------------------------------------
# base.raw (64M) <- top.qcow2: data in both, a zero range over the base's
# data, unallocated ranges; src.qcow2 is top's content in one qcow2 with
# data, a zero cluster range, unallocated ranges and a partial zero cluster;
# src.raw is a sparse raw file.
qemu-img create -q -f raw base.raw 64M
qio base.raw raw -- 'write -P 0x11 0 16M' 'write -P 0x12 40M 1M'
qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2
qio top.qcow2 -- 'write -P 0x21 1M 1M' 'write -z 4M 2M' 'write -P 0x22 30M 3M' 'write -P 0 31M 64k'
qcow2 src.qcow2 64M
qio src.qcow2 -- 'write -P 0x31 0 1M' 'write -z 8M 1M' 'write -P 0x32 20M 8k' 'write -P 0 20M 4k' \
    'write -P 0x33 33M 5M' 'write -P 0x34 63M 1M'
qemu-img create -q -f raw src.raw 48M
qio src.raw raw -- 'write -P 0x41 0 2M' 'write -P 0x42 17M 1M' 'write -P 0x43 47M 512k'

# ---- comparisons ---------------------------------------------------------
# One python3 run judges a pair (python3's start-up is most of this test's
# time when it runs per check): judge.py pair QIMG LIMG [progress] and
# judge.py alloc QIMG LIMG print what is wrong, one piece per line, and exit 1
# if anything is.
#   pair: the same format; qemu-img compare (the content); the info fields
#     (format, virtual size, cluster size, backing file and its format, and
#     every qcow2 field of format-specific); map_covers (what qemu-img's
#     output has, ours has too: its present ranges, its allocated ranges
#     (data) and its written ones (data and not zero) lie within ours.  Ours
#     may allocate more around them: lsm-sync leaves zero runs shorter than
#     64K (raw) or one cluster (qcow2, even with extended L2) inside data
#     written, where qemu-img's sparse detection works per 4K (-S) and per
#     subcluster; qemu-img compare has checked the content); qemu-img check
#     (qcow2); with progress, both -p outputs (QIMG.out, LIMG.out) parsed as
#     vdsm parses them: every \r-separated record matches vdsm's expression
#     \s*\(([\d.]+)/100%\)\s*, rising from 0.00 to 100.00, and a final
#     newline (qemu-img's own output checks the parser).
#   alloc: the same allocation, exactly (the -S 0 forms, where nothing is
#     left to sparse detection): qemu-img map's depth/present/zero/data
#     flags per range, adjacent ranges with the same flags merged (host
#     offsets differ); for raw the same bytes in extents (FIEMAP: not the
#     file system's extent-tree blocks, which st_blocks counts); for qcow2 the same
#     allocated and compressed cluster counts (qemu-img check).
cat >judge.py <<'EOF'
import json, os, re, subprocess, sys

def run(*args):
    return subprocess.run(args, capture_output=True, text=True)

def info(img):
    return json.loads(run("qemu-img", "info", "--output=json", img).stdout)

def info_fields(j):
    out = ["%s %s" % (k, json.dumps(j.get(k))) for k in
           ("format", "virtual-size", "cluster-size", "backing-filename",
            "backing-filename-format", "encrypted")]
    fs = j.get("format-specific", {})
    out.append("format-specific.type %s" % json.dumps(fs.get("type")))
    out += ["format-specific.%s %s" % (k, json.dumps(v)) for k, v in sorted(fs.get("data", {}).items())]
    return out

def qmap(img, fmt):
    return json.loads(run("qemu-img", "map", "--output=json", "-f", fmt, img).stdout)

def merge(rs):
    out = []
    for a, b in sorted(rs):
        if out and a <= out[-1][1]: out[-1][1] = max(out[-1][1], b)
        else: out.append([a, b])
    return out

def kinds(m):
    sets = {"present": [], "data": [], "written": []}
    for e in m:
        if e["depth"] != 0:
            continue
        r = (e["start"], e["start"] + e["length"])
        if e["present"]: sets["present"].append(r)
        if e["data"]: sets["data"].append(r)
        if e["data"] and not e["zero"]: sets["written"].append(r)
    return sets

def missing(qs, ls):
    ls = merge(ls)
    return [(a, b) for a, b in merge(qs) if not any(x <= a and b <= y for x, y in ls)]

def flags(m):
    runs = []
    for e in m:
        k = (e["depth"], e["present"], e["zero"], e["data"])
        if runs and runs[-1][2] == k and runs[-1][0] + runs[-1][1] == e["start"]:
            runs[-1][1] += e["length"]
        else:
            runs.append([e["start"], e["length"], k])
    return ["%d %d depth=%d present=%s zero=%s data=%s" % ((s, n) + k) for s, n, k in runs]

def data_bytes(path):
    """Bytes in the file's extents (FIEMAP; written and unwritten alike),
    so that the file system's own extent-tree blocks, which st_blocks also
    counts and which depend on how fragmented the writes left the file, are
    not compared; st_blocks * 512 where FIEMAP is not offered."""
    import fcntl, struct
    FS_IOC_FIEMAP, EXTENT_LAST, N = 0xC020660B, 0x1, 128
    total, start = 0, 0
    with open(path, "rb") as f:
        while True:
            req = bytearray(struct.pack("=QQLLLL", start, (1 << 64) - 1 - start, 0, 0, N, 0)
                            + bytes(56 * N))
            try:
                fcntl.ioctl(f.fileno(), FS_IOC_FIEMAP, req)
            except OSError:
                return os.stat(path).st_blocks * 512
            n = struct.unpack_from("=L", req, 20)[0]
            if n == 0:
                return total
            for i in range(n):
                logical, _, length = struct.unpack_from("=QQQ", req, 32 + 56 * i)
                flags = struct.unpack_from("=L", req, 32 + 56 * i + 40)[0]
                total += length
                start = logical + length
                if flags & EXTENT_LAST:
                    return total

def counts(img):
    j = json.loads(run("qemu-img", "check", "--output=json", img).stdout)
    return "allocated-clusters=%s compressed-clusters=%s" % (j.get("allocated-clusters"),
                                                           j.get("compressed-clusters", 0))

RX = re.compile(rb"\s*\(([\d.]+)/100%\)\s*")
def progress(path):
    data = open(path, "rb").read()
    if not data.endswith(b"\n"):
        return "no final newline: %r" % data[-40:]
    records = [r for r in data.split(b"\r") if r.strip()]
    if not records:
        return "no progress records"
    vals = []
    for r in records:
        m = RX.fullmatch(r)
        if not m:
            return "record %r does not match vdsm's expression" % r
        vals.append(float(m.group(1)))
    if vals[0] != 0.0:
        return "first record %s, not 0.00" % vals[0]
    if vals[-1] != 100.0:
        return "last record %s, not 100.00" % vals[-1]
    if any(a > b for a, b in zip(vals, vals[1:])):
        return "records go down: %s" % vals
    return None

def diff(a, b):
    return ["< " + x for x in a if x not in b] + ["> " + x for x in b if x not in a]

mode, q, l = sys.argv[1:4]
qi, li = info(q), info(l)
fmt = qi["format"]
why = []
if mode == "pair":
    if li["format"] != fmt:
        why.append("format %s instead of %s" % (li["format"], fmt))
    if run("qemu-img", "compare", "-q", "-f", fmt, "-F", fmt, q, l).returncode:
        why.append("content differs (qemu-img compare)")
    d = diff(info_fields(qi), info_fields(li))
    if d:
        why.append("info differs: " + " ".join(d))
    kq, kl = kinds(qmap(q, fmt)), kinds(qmap(l, fmt))
    errs = ["%s %s not in ours" % (k, missing(kq[k], kl[k])[:3]) for k in kq if missing(kq[k], kl[k])]
    if errs:
        why.append("map: " + "; ".join(errs))
    if fmt == "qcow2":
        c = run("qemu-img", "check", "-q", l)
        if c.returncode:
            why.append("qemu-img check: " + " ".join((c.stdout + c.stderr).splitlines()[:3]))
    if sys.argv[4:] == ["progress"]:
        e = progress(q + ".out")
        if e:
            why.append("qemu-img's own -p output does not parse: " + e)
        e = progress(l + ".out")
        if e:
            why.append("-p output: " + e)
else:
    d = diff(flags(qmap(q, fmt)), flags(qmap(l, fmt)))
    if d:
        why.append("map differs from qemu-img's: " + " ".join(d[:6]))
    if fmt == "raw" and data_bytes(q) != data_bytes(l):
        why.append("%d bytes allocated, qemu-img's output %d" % (data_bytes(l), data_bytes(q)))
    if fmt == "qcow2" and counts(q) != counts(l):
        why.append("qemu-img check: %s, qemu-img's output %s" % (counts(l), counts(q)))
for w in why:
    print(w)
sys.exit(1 if why else 0)
EOF
# same_alloc NAME QIMG LIMG: judge.py alloc as a case.
same_alloc() {
    local why
    if why=$(python3 judge.py alloc "$2" "$3"); then pass "$1"; else fail "$1" "$(echo "$why" | tr '\n' ';')"; fi
}
# one_line_failure NAME RC ERRFILE DST: lsm-sync refused as it must: one
# 'lsm-sync: ...' line (a usage error, exit 2, adds the --help hint).
one_line_failure() {
    local name=$1 rc=$2 err=$3 dst=$4 lines
    mapfile -t lines <"$err"
    if ((${#lines[@]} > 1)) && [[ ${lines[1]} == "Try 'lsm-sync copy --help'"* ]]; then
        lines=("${lines[0]}" "${lines[@]:2}")
    fi
    if ((rc == 0)); then
        fail "$name" "lsm-sync exited 0 for something it does not support"
    elif ((${#lines[@]} != 1)) || [[ ${lines[0]} != "lsm-sync: "* ]]; then
        fail "$name" "not one 'lsm-sync: ...' line on stderr: $(head -c 400 "$err")"
    elif [[ -n $dst && -e $dst ]]; then
        fail "$name" "a refused copy left $dst"
    else
        pass "$name"
    fi
}

# pair NAME PREP ARGS...: qemu-img convert ARGS q-NAME and lsm-sync copy ARGS
# l-NAME (PREP, if not -, makes each destination first: the -n form), then
# compare.  Sets PAIR_OK=1 when both ran.
pair() {
    local name=$1 prep=$2
    shift 2
    local qd=q-$name ld=l-$name
    rm -f "$qd" "$ld"
    if [[ $prep != - ]]; then
        $prep "$qd"
        $prep "$ld"
    fi
    PAIR_OK=0
    if ! qemu-img convert "$@" "$qd" >"$qd.out" 2>"$qd.err"; then
        fail "$name" "qemu-img convert $* failed: $(head -c 300 "$qd.err")"
        return 0
    fi
    set +e
    "$L" copy "$@" "$ld" >"$ld.out" 2>"$ld.err"
    local rc=$?
    set -e
    if ((rc != 0)); then
        fail "$name" "lsm-sync copy $* failed (exit $rc): $(head -c 300 "$ld.err")"
        return 0
    fi
    PAIR_OK=1
    local why
    if why=$(python3 judge.py pair "$qd" "$ld" $([[ " $* " == *" -p "* ]] && echo progress)); then
        pass "$name"
    else
        fail "$name" "$(echo "$why" | tr '\n' ';')"
    fi
}

# The common prefix of vdsm's convert command lines.
V=(-p -t none -T none)

# ---- vdsm's convert invocations, new destination -------------------------
pair qcow2-raw - "${V[@]}" -f qcow2 src.qcow2 -O raw
pair raw-raw - "${V[@]}" -f raw src.raw -O raw
# --salvage on a readable source is a plain copy (salvage.sh has the
# unreadable ranges, through a failing NBD server)
pair salvage - "${V[@]}" --salvage -f qcow2 src.qcow2 -O raw
pair raw-qcow2-11 - "${V[@]}" -f raw src.raw -O qcow2 -o compat=1.1
pair qcow2-qcow2-11 - "${V[@]}" -f qcow2 src.qcow2 -O qcow2 -o compat=1.1
pair qcow2-qcow2-010 - "${V[@]}" -f qcow2 src.qcow2 -O qcow2 -o compat=0.10
pair raw-qcow2-010 - "${V[@]}" -f raw src.raw -O qcow2 -o compat=0.10
# (compat=0.10 with preallocation=off is qcow2-qcow2-010.)
for m in off metadata falloc full; do
    pair "qcow2-11-prealloc-$m" - "${V[@]}" -f qcow2 src.qcow2 -O qcow2 -o "compat=1.1,preallocation=$m"
    [[ $m == off ]] ||
        pair "qcow2-010-prealloc-$m" - "${V[@]}" -f qcow2 src.qcow2 -O qcow2 -o "compat=0.10,preallocation=$m"
done
for m in off falloc full; do
    pair "raw-prealloc-$m" - "${V[@]}" -f qcow2 src.qcow2 -O raw -o "preallocation=$m"
done
# One layer onto a backing file, as vdsm copies a snapshot: -o backing_file
# (qemu-img treats it as -B) with compat 1.1 and 0.10 (no zero clusters in
# version 2: the zero range becomes zero data), and -B -F.
pair top-11-backing - "${V[@]}" -f qcow2 top.qcow2 -O qcow2 -o compat=1.1,backing_file=base.raw,backing_fmt=raw
pair top-010-backing - "${V[@]}" -f qcow2 top.qcow2 -O qcow2 -o compat=0.10,backing_file=base.raw,backing_fmt=raw
pair top-B - "${V[@]}" -f qcow2 top.qcow2 -O qcow2 -B base.raw -F raw
# The chain flattened.
pair top-flat - "${V[@]}" -f qcow2 top.qcow2 -O raw
# Optional -W.
pair qcow2-raw-W - "${V[@]}" -W -f qcow2 src.qcow2 -O raw
pair qcow2-qcow2-W - "${V[@]}" -W -f qcow2 src.qcow2 -O qcow2 -o compat=1.1
# --bitmaps --skip-broken-bitmaps on a source without bitmaps: nothing to copy.
pair bitmaps-none - "${V[@]}" -f qcow2 src.qcow2 -O qcow2 -o compat=1.1 --bitmaps --skip-broken-bitmaps

# ---- the other creation options, each against qemu-img's image -------------
pair lazy-refcounts - -f qcow2 src.qcow2 -O qcow2 -o compat=1.1,lazy_refcounts=on
for b in 1 8 16 64; do
    pair "refcount-bits-$b" - -f qcow2 src.qcow2 -O qcow2 -o "refcount_bits=$b"
done
pair extended-l2 - -f qcow2 src.qcow2 -O qcow2 -o extended_l2=on,cluster_size=128k
if qemu_has_zstd; then
    pair compression-zstd - -f qcow2 src.qcow2 -O qcow2 -o compression_type=zstd
else
    skip_case compression-zstd "this qemu-img has no zstd"
fi
pair cluster-4k-010 - -f qcow2 src.qcow2 -O qcow2 -o compat=0.10,cluster_size=4k
# -c: compressed clusters (docs/copy.md), vdsm's form with compat 1.1 and
# 0.10, from raw, onto a backing file, and zstd.
pair compress-11 - "${V[@]}" -c -f qcow2 src.qcow2 -O qcow2 -o compat=1.1
pair compress-010 - "${V[@]}" -c -f qcow2 src.qcow2 -O qcow2 -o compat=0.10
pair compress-raw-W - "${V[@]}" -c -W -f raw src.raw -O qcow2 -o compat=1.1
pair compress-backing - "${V[@]}" -c -f qcow2 top.qcow2 -O qcow2 -o compat=1.1,backing_file=base.raw,backing_fmt=raw
# -c -S 0: every cluster compressed, zero ones too (and onto a backing
# file: only SRC's layer), as qemu-img.  (A raw source's holes are zero runs
# like src.qcow2's unallocated ranges, and compat 0.10 compressed clusters
# are compress-010's: their product is not a case of its own.)
pair compress-S0 - -c -S 0 -f qcow2 src.qcow2 -O qcow2
((PAIR_OK)) && same_alloc compress-S0-alloc q-compress-S0 l-compress-S0
pair compress-S0-B - -c -S 0 -f qcow2 top.qcow2 -O qcow2 -B base.raw -F raw
((PAIR_OK)) && same_alloc compress-S0-B-alloc q-compress-S0-B l-compress-S0-B
if qemu_has_zstd; then
    pair compress-zstd - -c -f qcow2 src.qcow2 -O qcow2 -o compression_type=zstd
else
    skip_case compress-zstd "this qemu-img has no zstd"
fi
# -S: 0 allocates everything (raw and qcow2), other sizes as sparse detection.
pair sparse-0-raw - -S 0 -f qcow2 src.qcow2 -O raw
((PAIR_OK)) && same_alloc sparse-0-raw-alloc q-sparse-0-raw l-sparse-0-raw
pair sparse-0-qcow2 - -S 0 -f qcow2 src.qcow2 -O qcow2
((PAIR_OK)) && same_alloc sparse-0-qcow2-alloc q-sparse-0-qcow2 l-sparse-0-qcow2
pair sparse-4k-raw - -S 4k -f qcow2 src.qcow2 -O raw
pair sparse-64k-qcow2 - -S 64k -f qcow2 src.qcow2 -O qcow2

# -l: an internal snapshot's view (s1 before a resize and more writes, s2
# after), by id or name as qemu-img looks them up.
qcow2 sn.qcow2 32M
qio sn.qcow2 -- 'write -P 0x51 0 2M' 'write -P 0x52 10M 1M'
qemu-img snapshot -c s1 sn.qcow2
qio sn.qcow2 -- 'write -P 0x53 1M 2M' 'write -z 10M 64k'
qemu-img resize -q sn.qcow2 48M
qemu-img snapshot -c s2 sn.qcow2
qio sn.qcow2 -- 'write -P 0x54 40M 1M' 'write -P 0x55 0 64k'
pair snapshot-l-name - "${V[@]}" -l s1 -f qcow2 sn.qcow2 -O qcow2 -o compat=1.1
pair snapshot-l-id - "${V[@]}" -l 2 -f qcow2 sn.qcow2 -O raw
pair snapshot-l-name-form - -l snapshot.name=s1 -f qcow2 sn.qcow2 -O raw
pair snapshot-l-id-form - -l snapshot.id=2 -f qcow2 sn.qcow2 -O qcow2

# info lists persistent bitmaps as qemu-img info does (human output byte
# for byte, JSON equal as data): flags in-use/auto, name, granularity.
qcow2 bmi.qcow2 64M
qemu-img bitmap --add bmi.qcow2 b0
qemu-img bitmap --add -g 128k --disable bmi.qcow2 second-one
if diff <(qemu-img info bmi.qcow2) <("$L" info bmi.qcow2) >info.diff &&
    python3 - bmi.qcow2 "$L" <<'EOF'
import json, subprocess, sys
q = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", sys.argv[1]]))
l = json.loads(subprocess.check_output([sys.argv[2], "info", "--output=json", sys.argv[1]]))
assert q == l, (q, l)
assert len(l["format-specific"]["data"]["bitmaps"]) == 2
EOF
then pass info-bitmaps; else fail info-bitmaps "$(head -c 400 info.diff)"; fi
# A directory entry of an unknown type: qemu-img refuses the image, info
# refuses it with one line.
cp bmi.qcow2 bmbad.qcow2
python3 - bmbad.qcow2 <<'EOF'
import struct, sys
f = open(sys.argv[1], "r+b")
h = f.read(65536)
pos = struct.unpack(">I", h[100:104])[0]
while True:
    t, l = struct.unpack(">II", h[pos:pos + 8])
    assert t != 0, "no bitmaps extension"
    if t == 0x23852875:
        doff = struct.unpack(">Q", h[pos + 24:pos + 32])[0]
        break
    pos += 8 + (l + 7) // 8 * 8
f.seek(doff + 16)
f.write(b"\x07")
EOF
set +e
qemu-img info bmbad.qcow2 >/dev/null 2>&1
rcq=$?
"$L" info bmbad.qcow2 >/dev/null 2>bmbad.err
rcl=$?
set -e
if ((rcq == 0)); then fail info-bitmaps-corrupt "qemu-img accepted the corrupt directory: the case is wrong"
else one_line_failure info-bitmaps-corrupt "$rcl" bmbad.err ""; fi

# ---- the -n form: existing volumes -----------------------------------------
mk_raw() { truncate -s 64M "$1"; }
mk_qcow2() { qemu-img create -q -f qcow2 -o compat=1.1 "$1" 64M; }
mk_qcow2_backed() { qemu-img create -q -f qcow2 -o compat=1.1 -b base.raw -F raw "$1" 64M; }
pair n-raw mk_raw "${V[@]}" -f qcow2 src.qcow2 -O raw -n
pair n-raw-tiz mk_raw "${V[@]}" -f qcow2 src.qcow2 -O raw -n --target-is-zero
pair n-qcow2 mk_qcow2 "${V[@]}" -f qcow2 src.qcow2 -O qcow2 -n
pair n-qcow2-tiz mk_qcow2 "${V[@]}" -f qcow2 src.qcow2 -O qcow2 -n --target-is-zero
pair n-qcow2-B mk_qcow2_backed "${V[@]}" -f qcow2 top.qcow2 -O qcow2 -n -B base.raw -F raw
pair n-qcow2-W mk_qcow2 "${V[@]}" -W -f qcow2 src.qcow2 -O qcow2 -n
# Existing compat=0.10 volumes (old storage domains): empty, holding data
# where the source is zero or unallocated (version 2 has no zero clusters:
# those ranges get zeroes), and one layer over a backing file.  The result
# stays compat=0.10 (info fields).
mk_qcow2_v2() { qemu-img create -q -f qcow2 -o compat=0.10 "$1" 64M; }
mk_qcow2_v2_used() {
    mk_qcow2_v2 "$1"
    qio "$1" -- 'write -P 0x71 0 64M'
}
mk_qcow2_v2_backed() { qemu-img create -q -f qcow2 -o compat=0.10 -b base.raw -F raw "$1" 64M; }
pair n-qcow2-v2 mk_qcow2_v2 "${V[@]}" -f qcow2 src.qcow2 -O qcow2 -n
pair n-qcow2-v2-used mk_qcow2_v2_used "${V[@]}" -f qcow2 src.qcow2 -O qcow2 -n
pair n-qcow2-v2-B mk_qcow2_v2_backed "${V[@]}" -f qcow2 top.qcow2 -O qcow2 -n -B base.raw -F raw
# -B with a source that has no backing file: where the source is
# unallocated it reads as zero, and qemu-img writes that, it does not leave
# the destination's backing file (which holds data there) showing.
qcow2 flat.qcow2 64M
qio flat.qcow2 -- 'write -P 0x72 1M 1M'
pair n-qcow2-B-flat mk_qcow2_backed "${V[@]}" -f qcow2 flat.qcow2 -O qcow2 -n -B base.raw -F raw
pair n-qcow2-v2-B-flat mk_qcow2_v2_backed "${V[@]}" -f qcow2 flat.qcow2 -O qcow2 -n -B base.raw -F raw
# -S 0 -n: every range of the guest view written, zeroes as data, into
# existing raw, compat 1.1 (also with --target-is-zero: qemu-img still
# writes everything) and compat 0.10 volumes: allocated exactly as
# qemu-img's (data everywhere, no holes in the raw file).
for v in raw qcow2 qcow2_v2; do
    f=${v%_v2}
    pair "sparse-0-n-$v" "mk_$v" -S 0 -f qcow2 src.qcow2 -O "$f" -n
    ((PAIR_OK)) && same_alloc "sparse-0-n-$v-alloc" "q-sparse-0-n-$v" "l-sparse-0-n-$v"
done
pair sparse-0-n-tiz mk_qcow2 -S 0 -f qcow2 src.qcow2 -O qcow2 -n --target-is-zero
((PAIR_OK)) && same_alloc sparse-0-n-tiz-alloc q-sparse-0-n-tiz l-sparse-0-n-tiz
# -S 0 with a backing file (-B, or vdsm's -o backing_file with compat
# 0.10), new and -n: what SRC's layer has (its zero clusters and the zeroes
# it wrote too) is written as data, what the backing file provides stays
# unallocated.  (A source without a backing file under -B is
# n-qcow2-B-flat's, its zero runs under -S 0 sparse-0-qcow2's.)
pair sparse-0-B - -S 0 -f qcow2 top.qcow2 -O qcow2 -B base.raw -F raw
((PAIR_OK)) && same_alloc sparse-0-B-alloc q-sparse-0-B l-sparse-0-B
pair sparse-0-B-010 - -S 0 -f qcow2 top.qcow2 -O qcow2 -o compat=0.10,backing_file=base.raw,backing_fmt=raw
((PAIR_OK)) && same_alloc sparse-0-B-010-alloc q-sparse-0-B-010 l-sparse-0-B-010
pair sparse-0-n-B mk_qcow2_backed -S 0 -f qcow2 top.qcow2 -O qcow2 -n -B base.raw -F raw
((PAIR_OK)) && same_alloc sparse-0-n-B-alloc q-sparse-0-n-B l-sparse-0-n-B
# -c -n: compressed clusters into an existing empty volume (compat 1.1
# and 0.10).  Into one with allocated clusters qemu-img fails (compressed
# writes never overwrite): lsm-sync refuses it before writing anything.
pair compress-n mk_qcow2 "${V[@]}" -c -f qcow2 src.qcow2 -O qcow2 -n
pair compress-n-v2 mk_qcow2_v2 "${V[@]}" -c -f qcow2 src.qcow2 -O qcow2 -n
pair compress-n-S0 mk_qcow2 -c -S 0 -f qcow2 src.qcow2 -O qcow2 -n
((PAIR_OK)) && same_alloc compress-n-S0-alloc q-compress-n-S0 l-compress-n-S0
mk_qcow2_used() {
    mk_qcow2 "$1"
    qio "$1" -- 'write -P 0x73 0 64M'
}
mk_qcow2_used q-compress-n-used
mk_qcow2_used l-compress-n-used
cp l-compress-n-used compress-n-used.before
set +e
qemu-img convert -c -n -f qcow2 -O qcow2 src.qcow2 q-compress-n-used >/dev/null 2>&1
rcq=$?
"$L" copy -c -n -f qcow2 -O qcow2 src.qcow2 l-compress-n-used >/dev/null 2>l-compress-n-used.err
rcl=$?
set -e
if ((rcq == 0)); then fail compress-n-used "qemu-img accepted it: the case is wrong"
elif ! cmp -s compress-n-used.before l-compress-n-used; then fail compress-n-used "the refused destination changed"
else one_line_failure compress-n-used "$rcl" l-compress-n-used.err ""; fi

# ---- what lsm-sync does not do yet: one line, non-zero exit ----------------
# refused NAME PREP ARGS...: qemu-img must succeed (the command line is
# valid), lsm-sync must fail as one_line_failure says.
refused() {
    local name=$1 prep=$2
    shift 2
    local qd=q-$name ld=l-$name
    rm -f "$qd" "$ld"
    if [[ $prep != - ]]; then
        $prep "$qd"
        $prep "$ld"
    fi
    if ! qemu-img convert "$@" "$qd" >/dev/null 2>"$qd.err"; then
        fail "$name" "qemu-img convert $* failed: $(head -c 300 "$qd.err")"
        return 0
    fi
    set +e
    "$L" copy "$@" "$ld" >/dev/null 2>"$ld.err"
    local rc=$?
    set -e
    one_line_failure "$name" "$rc" "$ld.err" "$([[ $prep == - ]] && echo "$ld")"
}
refused offload-C - -C -f raw src.raw -O raw
# --journal (lsm-sync's own) with compat=0.10: refused before anything is
# made (a resumed copy would finish a version 3 image), saying what to use.
set +e
"$L" copy --journal=j010.journal -f qcow2 src.qcow2 -O qcow2 -o compat=0.10 l-journal-010 \
    >/dev/null 2>l-journal-010.err
rc=$?
set -e
if [[ -e j010.journal ]] || ! grep -q 'compat=1.1' l-journal-010.err; then
    fail journal-010 "a journal was left, or the message does not say what to use: $(head -c 300 l-journal-010.err)"
else
    one_line_failure journal-010 "$rc" l-journal-010.err l-journal-010
fi

# ---- what qemu-img refuses, lsm-sync refuses too (non-zero, one line) ------
both_refuse() {
    local name=$1
    shift
    local rcq rcl
    set +e
    qemu-img convert "$@" "q-$name" >/dev/null 2>&1
    rcq=$?
    "$L" copy "$@" "l-$name" >/dev/null 2>"l-$name.err"
    rcl=$?
    set -e
    if ((rcq == 0)); then
        fail "$name" "qemu-img accepted it: the case is wrong"
    else
        one_line_failure "$name" "$rcl" "l-$name.err" "l-$name"
    fi
}
both_refuse v2-lazy -f qcow2 src.qcow2 -O qcow2 -o compat=0.10,lazy_refcounts=on
both_refuse v2-refcount8 -f qcow2 src.qcow2 -O qcow2 -o compat=0.10,refcount_bits=8
both_refuse v2-extl2 -f qcow2 src.qcow2 -O qcow2 -o compat=0.10,extended_l2=on
both_refuse raw-prealloc-metadata -f qcow2 src.qcow2 -O raw -o preallocation=metadata
both_refuse prealloc-bogus -f qcow2 src.qcow2 -O qcow2 -o preallocation=bogus
both_refuse sparse-odd -S 1000 -f qcow2 src.qcow2 -O raw
both_refuse n-with-o -n -f qcow2 src.qcow2 -O qcow2 -o compat=1.1
both_refuse compat-bogus -f qcow2 src.qcow2 -O qcow2 -o compat=2.0
both_refuse snapshot-missing -l nosuch -f qcow2 sn.qcow2 -O raw
both_refuse compress-raw -c -f qcow2 src.qcow2 -O raw
both_refuse compress-prealloc -c -f qcow2 src.qcow2 -O qcow2 -o preallocation=metadata
both_refuse snapshot-id-is-no-name -l snapshot.id=s1 -f qcow2 sn.qcow2 -O raw
both_refuse snapshot-raw-source -l s1 -f raw src.raw -O raw

# ---- bitmaps ----------------------------------------------------------------
# --bitmaps: SRC's persistent bitmaps (an enabled one that guest writes
# dirtied, a disabled one with another granularity) copied: the same list in
# qemu-img info, and the same dirty ranges, read through qemu-nbd -B and
# nbdinfo --map=qemu:dirty-bitmap:NAME, as in qemu-img's copy.
qcow2 bsrc.qcow2 64M
qemu-img bitmap --add bsrc.qcow2 b0
qemu-img bitmap --add -g 128k bsrc.qcow2 b1
qio bsrc.qcow2 -- 'write -P 0x61 0 1M' 'write -P 0x62 10M 64k'
qemu-img bitmap --disable bsrc.qcow2 b1
qio bsrc.qcow2 -- 'write -P 0x63 30M 200k'
bitmaps_of() {
    qemu-img info --output=json "$1" | python3 -c '
import json, sys
print(json.dumps(json.load(sys.stdin)["format-specific"]["data"].get("bitmaps")))'
}
# bitmap_map IMG NAME: the bitmap's dirty ranges as qemu-nbd exports them.
bitmap_map() {
    local sock=$T/bm.sock pid
    rm -f "$sock"
    qemu-nbd -r -f qcow2 -B "$2" -k "$sock" --pid-file="$T/bm.pid" "$1" &
    pid=$!
    for _ in $(seq 50); do [[ -S $sock ]] && break; sleep 0.1; done
    nbdinfo --map="qemu:dirty-bitmap:$2" "nbd+unix:///?socket=$sock" || echo "nbdinfo failed"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
bitmaps_same() {
    local name=$1 q=$2 l=$3 b why=""
    [[ $(bitmaps_of "$q") == "$(bitmaps_of "$l")" ]] || why+="bitmaps $(bitmaps_of "$l"), qemu-img: $(bitmaps_of "$q"); "
    for b in $(bitmaps_of "$q" | python3 -c 'import json,sys; [print(b["name"]) for b in json.load(sys.stdin) or []]'); do
        [[ $(bitmap_map "$q" "$b") == "$(bitmap_map "$l" "$b")" ]] || why+="bitmap $b differs: $(bitmap_map "$l" "$b" | tr '\n' ' '); "
    done
    if [[ -n $why ]]; then fail "$name" "$why"; else pass "$name"; fi
}
if command -v qemu-nbd >/dev/null && command -v nbdinfo >/dev/null; then
    [[ $(bitmap_map bsrc.qcow2 b0) == *dirty* ]] || fail bitmaps-source "the source bitmap b0 has nothing dirty: the case is wrong"
    pair bitmaps - "${V[@]}" -f qcow2 bsrc.qcow2 -O qcow2 -o compat=1.1 --bitmaps --skip-broken-bitmaps
    ((PAIR_OK)) && bitmaps_same bitmaps-content q-bitmaps l-bitmaps
    pair bitmaps-4k - --bitmaps -f qcow2 bsrc.qcow2 -O qcow2 -o cluster_size=4k
    ((PAIR_OK)) && bitmaps_same bitmaps-4k-content q-bitmaps-4k l-bitmaps-4k
    pair n-bitmaps mk_qcow2 "${V[@]}" -f qcow2 bsrc.qcow2 -O qcow2 -n --bitmaps
    ((PAIR_OK)) && bitmaps_same n-bitmaps-content q-n-bitmaps l-n-bitmaps
    # An in-use bitmap (its holder killed): both refuse without
    # --skip-broken-bitmaps, both skip it with.
    cp bsrc.qcow2 binuse.qcow2
    qemu-io -f qcow2 -c 'sleep 20000' binuse.qcow2 &
    holder=$!
    # the in-use flag is written when qemu-io opens the image for writing
    for _ in $(seq 100); do
        qemu-img info -U binuse.qcow2 2>/dev/null | grep -q in-use && break
        sleep 0.1
    done
    kill -9 "$holder"
    wait "$holder" 2>/dev/null || true
    if qemu-img info binuse.qcow2 | grep -q in-use; then
        both_refuse bitmaps-in-use --bitmaps -f qcow2 binuse.qcow2 -O qcow2
        pair bitmaps-in-use-skipped - --bitmaps --skip-broken-bitmaps -f qcow2 binuse.qcow2 -O qcow2
        ((PAIR_OK)) && bitmaps_same bitmaps-in-use-skipped-content q-bitmaps-in-use-skipped l-bitmaps-in-use-skipped
    else
        skip_case bitmaps-in-use "qemu-io killed with SIGKILL left no in-use bitmap"
    fi
else
    skip_case bitmaps "qemu-nbd or nbdinfo missing"
fi
both_refuse bitmaps-raw --bitmaps -f qcow2 bsrc.qcow2 -O raw

finish
