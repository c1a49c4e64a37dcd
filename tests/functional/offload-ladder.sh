#!/bin/bash
# The offload ladder on the host: the example plugin (lsm-offload-example.so,
# built from examples/offload-example against the public header) and
# --offload-cmd with real scripts.  Data is compared with qemu-img compare,
# the bytes each path reports with what was asked (qemu-img map's data).
. "$(dirname "$0")/lib.sh"
. "$TESTS_DIR/copy-lib.sh"
need_cmd qemu-img qemu-io jq dd

# The example plugin is built (not installed) in build/examples/; the other
# modules are still found beside the program.
export LSM_MODULE_DIR=$BUILD_DIR/examples
[[ -e $LSM_MODULE_DIR/lsm-offload-example.so ]] ||
    skip "$LSM_MODULE_DIR/lsm-offload-example.so was not built"

# A raw source with three data runs, and a qcow2 leaf over a raw base.
truncate -s 16M src.raw
qio src.raw raw -- "write -P 0x61 0 3M" "write -P 0x62 6M 1M" "write -P 0x63 15M 512k"
qemu-img create -q -f raw base.raw 8M
qio base.raw raw -- "write -P 0x71 0 2M"
qemu-img create -q -f qcow2 -b base.raw -F raw leaf.qcow2 8M
qio leaf.qcow2 -- "write -P 0x72 1M 2M" "write -P 0x73 6M 64k"
raw_data=$(data_bytes -f raw src.raw)
leaf_data=$(data_bytes leaf.qcow2)

# jcopy CASE ARGS...: copy with --output=json into out.json; fails the case
# on a non-zero exit.
jcopy() {
    local case=$1; shift
    rm -f dst.raw
    if ! run "$case" --output=json "$@"; then return 1; fi
    cp out.log out.json
}
field() { jq -r "$1" out.json; }

# one_line CASE RC: the copy must have failed with exit RC and one line.
one_line() {
    local case=$1 want=$2 rc=0; shift 2
    "$LSM_SYNC" copy "$@" >out.log 2>err.log || rc=$?
    if ((rc != want)); then
        fail "$case" "exit $rc, want $want: $(head -n3 err.log)"
        return 1
    elif [[ $(wc -l <err.log) != 1 ]]; then
        fail "$case" "want one line on stderr, got: $(cat err.log)"
        return 1
    fi
    return 0
}

# 1. The example plugin moves everything: raw and a qcow2 chain.
if jcopy plugin-raw --offload=example -f raw src.raw dst.raw && same plugin-raw src.raw dst.raw -f raw -F raw; then
    if [[ $(field .offload_paths.plugin) != "$raw_data" || $(field .offload_paths.plugin_name) != example ||
          $(field .offload_paths.software) != 0 ]]; then
        fail plugin-raw "want $raw_data bytes by the plugin: $(cat out.json)"
    else pass plugin-raw; fi
fi
if jcopy plugin-chain --offload=example leaf.qcow2 dst.raw && same plugin-chain leaf.qcow2 dst.raw -F raw; then
    if [[ $(field .offload_paths.plugin) != "$leaf_data" ]]; then
        fail plugin-chain "want $leaf_data bytes by the plugin: $(cat out.json)"
    else pass plugin-chain; fi
fi

# 2. A plugin limit (max_bytes): many calls, same result.
if LSM_OFFLOAD_EXAMPLE_MAX=65536 jcopy plugin-max --offload=example -f raw src.raw dst.raw &&
    same plugin-max src.raw dst.raw -f raw -F raw; then
    [[ $(field .offload_paths.plugin) == "$raw_data" ]] && pass plugin-max ||
        fail plugin-max "$(cat out.json)"
fi

# 3. A plugin that fails half-way through an extent (and leaves garbage
#    after what it reports): the rest goes through the pipeline.
if LSM_OFFLOAD_EXAMPLE_FAIL_AT=$((1536 * 1024)) jcopy plugin-partial --offload=example -f raw src.raw dst.raw &&
    same plugin-partial src.raw dst.raw -f raw -F raw; then
    p=$(field .offload_paths.plugin) s=$(field .offload_paths.software)
    if ((p != 1536 * 1024 || p + s != raw_data)); then
        fail plugin-partial "plugin $p + software $s, want 1572864 + $((raw_data - 1572864))"
    else pass plugin-partial; fi
fi

# 4. A plugin that declines the pair: fallback; with -C exit 1.
if LSM_OFFLOAD_EXAMPLE_REFUSE=1 jcopy plugin-refuse --offload=example -f raw src.raw dst.raw &&
    same plugin-refuse src.raw dst.raw -f raw -F raw; then
    [[ $(field .offload_paths.plugin) == 0 && $(field .offload_fallback) == *"told to refuse"* ]] &&
        pass plugin-refuse || fail plugin-refuse "$(cat out.json)"
fi
rm -f dst.raw
if LSM_OFFLOAD_EXAMPLE_REFUSE=1 one_line plugin-refuse-C 1 -C --offload=example -f raw src.raw dst.raw; then
    grep -q "told to refuse" err.log && [[ ! -e dst.raw ]] && pass plugin-refuse-C ||
        fail plugin-refuse-C "$(cat err.log); dst.raw left: $(ls dst.raw 2>&1)"
fi

# 5. Interface version and missing modules: one line, nothing created.
rm -f dst.raw
if LSM_OFFLOAD_EXAMPLE_ABI=2 one_line plugin-abi 1 --offload=example -f raw src.raw dst.raw; then
    grep -q "interface version 2" err.log && [[ ! -e dst.raw ]] && pass plugin-abi ||
        fail plugin-abi "$(cat err.log)"
fi
if one_line plugin-missing 1 --offload=nosuch -f raw src.raw dst.raw; then
    grep -q "lsm-offload-nosuch.so not found" err.log && pass plugin-missing || fail plugin-missing "$(cat err.log)"
fi
# usage errors: exit 2
for bad in --offload=../x "--offload=never --offload-cmd=true" --offload-timeout=0 \
           "--offload=example --offload-cmd=true"; do
    rc=0
    # shellcheck disable=SC2086
    "$LSM_SYNC" copy $bad src.raw dst.raw >out.log 2>err.log || rc=$?
    ((rc == 2)) && [[ ! -e dst.raw ]] && pass "usage $bad" || fail "usage $bad" "exit $rc: $(cat err.log)"
done

# 6. --offload-cmd: a vendor tool made of dd.
cat >tool.sh <<'TOOL'
#!/bin/sh
# lsm-sync --offload-cmd protocol: copy SRC SOFF DST DOFF LEN
[ "$1" = copy ] || exit 2
case ${MODE:-all} in
refuse) echo "not my array" >&2; exit 3 ;;
fail) echo "array error 42" >&2; exit 1 ;;
silent) exit 0 ;;
hang) sleep 60 ;;
esac
len=$6
[ "${MODE:-all}" = half ] && len=$((len / 2 / 512 * 512))
dd if="$2" of="$4" bs=64k iflag=skip_bytes,count_bytes oflag=seek_bytes conv=notrunc \
    skip="$3" seek="$5" count="$len" status=none || exit 1
echo "copied $len"
TOOL
chmod +x tool.sh
if jcopy cmd-all --offload-cmd="$T/tool.sh" -f raw src.raw dst.raw && same cmd-all src.raw dst.raw -f raw -F raw; then
    [[ $(field .offload_paths.command) == "$raw_data" && $(field .offload_paths.software) == 0 ]] &&
        pass cmd-all || fail cmd-all "$(cat out.json)"
fi
if MODE=half jcopy cmd-half --offload=command --offload-cmd="$T/tool.sh" -f raw src.raw dst.raw &&
    same cmd-half src.raw dst.raw -f raw -F raw; then
    c=$(field .offload_paths.command) s=$(field .offload_paths.software)
    ((c > 0 && c < raw_data && c + s == raw_data)) && pass cmd-half || fail cmd-half "$(cat out.json)"
fi
for mode in refuse fail silent; do
    if MODE=$mode jcopy "cmd-$mode" --offload-cmd="$T/tool.sh" -f raw src.raw dst.raw &&
        same "cmd-$mode" src.raw dst.raw -f raw -F raw; then
        [[ $(field .offload_paths.command) == 0 && $(field .offload_paths.software) == "$raw_data" ]] &&
            pass "cmd-$mode" || fail "cmd-$mode" "$(cat out.json)"
    fi
done
grep -q "array error 42" <<<"$(MODE=fail "$LSM_SYNC" copy -v --offload-cmd="$T/tool.sh" -f raw src.raw dst2.raw 2>&1)" &&
    pass cmd-fail-reason || fail cmd-fail-reason "the tool's message is not in the verbose output"
rm -f dst.raw
if MODE=refuse one_line cmd-refuse-C 1 -C --offload=command --offload-cmd="$T/tool.sh" -f raw src.raw dst.raw; then
    grep -q "not my array" err.log && pass cmd-refuse-C || fail cmd-refuse-C "$(cat err.log)"
fi
t0=$(date +%s)
if MODE=hang jcopy cmd-timeout --offload-timeout=1 --offload-cmd="$T/tool.sh" -f raw src.raw dst.raw &&
    same cmd-timeout src.raw dst.raw -f raw -F raw; then
    t=$(($(date +%s) - t0))
    # one time-out drops the command for the pair: one second, not one per extent
    ((t < 10)) && [[ $(field .offload_fallback) == *"within 1 s"* ]] && pass cmd-timeout ||
        fail cmd-timeout "took ${t}s: $(cat out.json)"
fi

# 7. -C where offload cannot happen at all.
rm -f dst.raw dst.qcow2
one_line never-C 1 -C --offload=never -f raw src.raw dst.raw && pass never-C
one_line qcow2-dst-C 1 -C -O qcow2 -f raw src.raw dst.qcow2 && grep -q "raw destinations" err.log &&
    pass qcow2-dst-C || fail qcow2-dst-C "$(cat err.log)"

# 8. sync offloads each volume as copy does: a raw base under a qcow2 top,
# the base's data through the vendor tool, the qcow2 top through the host.
rm -rf sync-src sync-dst; mkdir sync-src sync-dst
cp src.raw sync-src/base.raw
qemu-img create -q -f qcow2 -b base.raw -F raw sync-src/top.qcow2
qemu-io -f qcow2 -c "write -P 9 1M 1M" sync-src/top.qcow2 >/dev/null
"$LSM_SYNC" clone-structure sync-src/top.qcow2 --dst-dir sync-dst >/dev/null
if "$LSM_SYNC" sync --type=ALL --output=json --offload-cmd="$T/tool.sh" sync-src/top.qcow2 \
        sync-dst/top.qcow2 >sync.json 2>err.log &&
   qemu-img compare -q sync-src/top.qcow2 sync-dst/top.qcow2; then
    base=$(jq -r '.volumes[] | select(.destination|endswith("base.raw")) | .offload_paths.command' sync.json)
    top=$(jq -r '.volumes[] | select(.destination|endswith("top.qcow2")) | .bytes_offloaded' sync.json)
    [[ $base == "$raw_data" && $top == 0 ]] && pass sync-cmd || fail sync-cmd "$(cat sync.json)"
else
    fail sync-cmd "sync failed or differs: $(head -n3 err.log)"
fi

finish
