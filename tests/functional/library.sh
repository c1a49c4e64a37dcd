#!/bin/bash
# liblsm-sync (docs/library.md) as a program of one's own uses it: the
# example program examples/copy-example, built in the tree against
# include/lsm-sync.h and the shared library only, copies images and the
# results are checked with qemu-img:
#   - a qcow2 with data, zero clusters and unallocated ranges over a backing
#     file, to qcow2 and to raw: qemu-img compare says identical to the
#     source, qemu-img check is clean, and the checksum the example prints
#     (lsm_checksum) is the one `lsm-sync checksum` prints;
#   - an NBD source (qemu-nbd): the library, not the program, loads
#     lsm-endpoint-nbd.so (found beside the library: LSM_MODULE_DIR unset),
#     and the module resolves the functions it needs from the library, also
#     when the library was loaded with dlopen(RTLD_LOCAL) (Python ctypes);
#   - bad input: the destination the source itself (under another name) and
#     an unknown format fail with one message and exit 1, the source intact;
#   - a copy cancelled by SIGINT (a slow one: -r) stops within a few
#     seconds, exits 1 and removes the destination it created;
#   - tests/tools/libapi-check drives the interface itself: bad arguments
#     (-EINVAL with a message), a copy under the context's bandwidth (still
#     running after a second, the memory limit refused meanwhile, the
#     status filled as far as its size says), the context freed before its
#     transfer, the transfer's own bandwidth changed while it runs (seen in
#     its status), a sync from a job file's JSON text and again from its
#     path (the destination chain then equal to the source by qemu-img
#     compare), a job text that is not JSON and a job path that does not
#     exist failing with their message, a qcow2 copy with the cluster size
#     asked for (qemu-img info), an image held by qemu-io refused and then
#     read with force-share;
#   - the library exports exactly the names of lib/liblsm-sync.map (nm -D
#     --defined-only), the public ones being those include/lsm-sync.h
#     declares, and every lsm_* name the modules a copy may load need is
#     among them.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img qemu-io qemu-nbd nm
EX=$BUILD_DIR/examples/copy-example
LIB=$BUILD_DIR/liblsm-sync.so
[[ -x $EX ]] || die "$EX was not built"
[[ -e $LIB ]] || die "$LIB was not built"
unset LSM_MODULE_DIR
MB=$((1 << 20))

qcow2 base.qcow2 64M
qio base.qcow2 -- 'write -P 0x11 0 8M' 'write -P 0x12 40M 4M'
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 src.qcow2 64M
qio src.qcow2 -- 'write -P 0x21 4M 2M' 'write -z 40M 1M' 'write -P 0x22 60M 3M' 'discard 0 64k'
# Without libsodium there is no checksum: the example says so and the
# checksum is not compared.
if "$LSM_SYNC" --help | grep -q '^  checksum '; then
    src_sum=$("$LSM_SYNC" checksum src.qcow2 | cut -d' ' -f1)
else
    src_sum=none
fi

# run_ex NAME ARGS...: the example, its output in NAME.out/.err, exit in rc.
run_ex() {
    local name=$1
    shift
    set +e
    "$EX" "$@" >"$name.out" 2>"$name.err"
    rc=$?
    set -e
}

for fmt in qcow2 raw; do
    run_ex to-$fmt -O $fmt src.qcow2 dst.$fmt
    sum=$(sed -n 's/^checksum sha256 //p' to-$fmt.out)
    [[ $src_sum == none ]] && grep -q '^checksum not available: .*libsodium' to-$fmt.out && sum=none
    if ((rc != 0)); then
        fail copy-to-$fmt "exit $rc: $(cat to-$fmt.err)"
    elif ! qemu-img compare -q -f qcow2 -F $fmt src.qcow2 dst.$fmt; then
        fail copy-to-$fmt "qemu-img compare: the copy differs from the source"
    elif [[ $fmt == qcow2 ]] && ! qemu-img check -q dst.qcow2; then
        fail copy-to-$fmt "qemu-img check found errors"
    elif [[ $sum != "$src_sum" ]]; then
        fail copy-to-$fmt "checksum '$sum', lsm-sync checksum of the source says '$src_sum'"
    elif ! grep -q '^finished 100.00% ' to-$fmt.out; then
        fail copy-to-$fmt "no final status line: $(tail -2 to-$fmt.out)"
    else
        pass copy-to-$fmt
    fi
done

# NBD: the module is loaded by the library.
qemu-nbd -r -t -f qcow2 -k "$T/nbd.sock" src.qcow2 &
nbd_pid=$!
for _ in $(seq 50); do [[ -S $T/nbd.sock ]] && break; sleep 0.1; done
run_ex nbd "nbd+unix:///?socket=$T/nbd.sock" nbd.raw
if ((rc != 0)); then
    fail nbd-source "exit $rc: $(cat nbd.err)"
elif ! qemu-img compare -q -f qcow2 -F raw src.qcow2 nbd.raw; then
    fail nbd-source "qemu-img compare: the copy differs from the source"
else
    pass nbd-source
fi
# The same from a program that loaded the library with dlopen(RTLD_LOCAL)
# (Python's ctypes does): the module still finds the library's functions.
cat >local.py <<'PY'
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_LOCAL)
lib.lsm_last_error.restype = ctypes.c_char_p
lib.lsm_transfer_error.restype = ctypes.c_char_p
ctx, t = ctypes.c_void_p(), ctypes.c_void_p()
if lib.lsm_ctx_new(ctypes.byref(ctx)) != 0 or \
   lib.lsm_copy_start(ctx, sys.argv[2].encode(), None, sys.argv[3].encode(), b"raw", None,
                      ctypes.byref(t)) != 0:
    sys.exit("start: " + lib.lsm_last_error().decode())
lib.lsm_transfer_wait(t, -1)
r = lib.lsm_transfer_result(t)
if r != 0:
    sys.exit("copy: %d %s" % (r, lib.lsm_transfer_error(t).decode()))
lib.lsm_transfer_free(t)
lib.lsm_ctx_free(ctx)
PY
libdeps=$(ldd "$LIB")   # (not piped into grep -q: with pipefail, ldd's SIGPIPE fails the test)
if [[ $libdeps == *libasan* ]]; then
    skip_case nbd-dlopen-local "a sanitizer build: python3 cannot load it (the ASan runtime must come first)"
elif python3 local.py "$LIB" "nbd+unix:///?socket=$T/nbd.sock" local.raw >local.out 2>&1 &&
     qemu-img compare -q -f qcow2 -F raw src.qcow2 local.raw; then
    pass nbd-dlopen-local
else
    fail nbd-dlopen-local "$(tail -3 local.out)"
fi
kill "$nbd_pid"
wait "$nbd_pid" 2>/dev/null || true   # killed: its status is not the test's

# Bad input: one message, exit 1, nothing harmed.
ln -s src.qcow2 alias.qcow2
before=$(md5sum <src.qcow2)
run_ex alias -O qcow2 src.qcow2 alias.qcow2
if ((rc == 1)) && [[ $(wc -l <alias.err) == 1 ]] && grep -q 'same file' alias.err &&
   [[ $(md5sum <src.qcow2) == "$before" ]] && qemu-img check -q src.qcow2; then
    pass refuse-alias
else
    fail refuse-alias "exit $rc: $(cat alias.err)"
fi
run_ex badfmt -f vmdk src.qcow2 never.raw
if ((rc == 1)) && [[ $(wc -l <badfmt.err) == 1 ]] && grep -q "format 'vmdk'" badfmt.err && [[ ! -e never.raw ]]; then
    pass bad-format
else
    fail bad-format "exit $rc: $(cat badfmt.err)"
fi

# Cancel: 64 MiB of data at 8 MiB/s, SIGINT after a second.
qemu-img create -q -f raw big.raw 64M
qio big.raw raw -- 'write -P 0x33 0 64M'
"$EX" -r $((8 * MB)) -f raw big.raw cancelled.raw >cancel.out 2>cancel.err &
pid=$!
sleep 1
kill -INT "$pid"
start=$(date +%s%N)
set +e
wait "$pid"
rc=$?
set -e
ms=$(( ($(date +%s%N) - start) / 1000000 ))
if ((rc == 1)) && ((ms < 3000)) && [[ ! -e cancelled.raw ]] && grep -q '^cancelled ' cancel.out; then
    pass cancel
    log "cancel: stopped $ms ms after SIGINT"
else
    fail cancel "exit $rc after $ms ms, destination $( [[ -e cancelled.raw ]] && echo left || echo removed): $(tail -1 cancel.out) $(cat cancel.err)"
fi

# The interface itself (tests/tools/libapi-check).
qemu-img create -q -f raw api-src.raw 32M
qio api-src.raw raw -- 'write -P 0x44 0 24M'
qcow2 chain-base.qcow2 16M
qio chain-base.qcow2 -- 'write -P 0x55 0 2M'
qemu-img create -q -f qcow2 -b chain-base.qcow2 -F qcow2 chain-top.qcow2 16M
qio chain-top.qcow2 -- 'write -P 0x56 1M 2M' 'write -z 8M 64k'
mkdir chain-dst
"$LSM_SYNC" clone-structure --output=json chain-top.qcow2 --dst-dir chain-dst >job.json 2>clone.err ||
    die "clone-structure: $(cat clone.err)"
# An image held for writing by another process (QEMU's lock) while
# libapi-check reads it, refused, then with force-share.
qemu-img create -q -f raw api-held.raw 4M
qio api-held.raw raw -- 'write -P 0x45 0 1M'
qemu-io -f raw -c 'sleep 60000' api-held.raw &
holder=$!
for _ in $(seq 50); do qemu-img info api-held.raw >/dev/null 2>&1 || break; sleep 0.1; done
set +e
"$BUILD_DIR/tests/tools/libapi-check" api-src.raw api-dst.raw job.json api-held.raw >api.out 2>api.err
rc=$?
set -e
kill "$holder"
wait "$holder" 2>/dev/null || :
while read -r word name rest; do
    case $word in
    ok) pass "api-$name" ;;
    FAIL) fail "api-${name%:}" "$rest" ;;
    esac
done <api.out
((rc == 0)) || fail api-exit "libapi-check exit $rc: $(tail -3 api.err)"
grep -q '^ok journal-resumed' api.out && qemu-img compare -q -f raw -F raw api-src.raw api-dst.raw.resumed &&
    pass api-resume-equal || fail api-resume-equal "the resumed copy differs from its source (or did not finish)"
grep -q '^ok copy-finished' api.out && qemu-img compare -q -f raw -F raw api-src.raw api-dst.raw &&
    pass api-copy-equal || fail api-copy-equal "the limited copy differs from its source (or did not finish)"
[[ $(qemu-img info --output=json api-dst.raw.128k.qcow2 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["cluster-size"])') == 131072 ]] &&
    qemu-img compare -q -f raw api-src.raw api-dst.raw.128k.qcow2 &&
    pass api-cluster-size-image || fail api-cluster-size-image "api-dst.raw.128k.qcow2 has not 128 KiB clusters, or differs from its source"
qemu-img compare -q -U -f raw -F raw api-held.raw api-dst.raw.held &&
    pass api-held-equal || fail api-held-equal "the force-share copy differs from the held image (or is missing)"
if grep -q '^ok sync-finished' api.out && qemu-img compare -q chain-top.qcow2 chain-dst/chain-top.qcow2 &&
   qemu-img compare -q chain-base.qcow2 chain-dst/chain-base.qcow2 && qemu-img check -q chain-dst/chain-top.qcow2; then
    pass api-sync-equal
else
    fail api-sync-equal "the synced chain differs from its source (or the sync did not finish)"
fi

# Exports: exactly the map's names; the public ones exactly the header's.
map=$SOURCE_DIR/lib/liblsm-sync.map
map_names=$(sed 's|/\*.*\*/||; /\/\*/,/\*\//d' "$map" | grep -o '^ *lsm_[a-z0-9_]*;' | tr -d ' ;' | sort)
exported=$(nm -D --defined-only "$LIB" | awk '$2 ~ /^[TDBRVW]$/ {print $3}' | sed 's/@.*//' | sort)
public_map=$(sed -n '/^LSM_SYNC_0.1 {/,/^}/p' "$map" | grep -o '^ *lsm_[a-z0-9_]*;' | tr -d ' ;' | sort)
header=$(grep -o '\blsm_[a-z0-9_]*(' "$SOURCE_DIR/include/lsm-sync.h" | tr -d '(' | sort -u)
if [[ -n $map_names && $exported == "$map_names" ]]; then
    pass exports-are-the-map
else
    fail exports-are-the-map "differences (< map, > exported): $(diff <(echo "$map_names") <(echo "$exported") | grep '^[<>]' | tr '\n' ' ')"
fi
if [[ $public_map == "$header" ]]; then
    pass public-is-the-header
else
    fail public-is-the-header "differences (< map's LSM_SYNC_0.1, > header): $(diff <(echo "$public_map") <(echo "$header") | grep '^[<>]' | tr '\n' ' ')"
fi
missing=""
# The modules a program using the library can load (the monitor, mirror and
# snapshot modules serve the lsm-sync program's own commands only).
mods=0
for so in "$BUILD_DIR"/lsm-endpoint-*.so "$BUILD_DIR"/lsm-formats-*.so "$BUILD_DIR"/lsm-offload-*.so; do
    [[ -e $so ]] || continue
    m=$(basename "$so" .so)
    mods=$((mods + 1))
    for s in $(nm -u "$so" | awk '{print $2}' | grep '^lsm_' | sed 's/@.*//'); do
        grep -qx "$s" <<<"$exported" || missing+="$m needs $s; "
    done
done
if ((mods == 0)); then
    skip_case modules-resolve "this build has no modules"
elif [[ -z $missing ]]; then
    pass modules-resolve
else
    fail modules-resolve "$missing"
fi

finish
