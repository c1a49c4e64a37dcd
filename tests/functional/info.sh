#!/bin/bash
# `lsm-sync info --output=json` against `qemu-img info --output=json` over the
# image matrix (images.sh): the fields both must print are compared with jq
# (present in one and absent in the other is a difference, too), and
# --backing-chain must list the same layers, top first, with the same fields.
. "$(dirname "$0")/lib.sh"
. "$TESTS_DIR/images.sh"
need_cmd qemu-img qemu-io jq diff

# The fields of issue 2, in a canonical form.  Only keys that are present are
# kept, so "absent" and "null" stay different.
PICK='
def pick($ks): . as $o | reduce $ks[] as $k ({}; if ($o | has($k)) then .[$k] = $o[$k] else . end);
def layer:
  pick(["filename", "format", "virtual-size", "actual-size", "cluster-size",
        "backing-filename", "full-backing-filename", "backing-filename-format",
        "dirty-flag", "format-specific"])
  | if has("format-specific") then
      .["format-specific"] |= (pick(["type", "data"])
        | if has("data") then .data |= pick(["compat", "lazy-refcounts", "refcount-bits",
                                              "corrupt", "extended-l2", "compression-type"])
          else . end)
    else . end;
if type == "array" then map(layer) else layer end'

# check CASE ARGS...: compare qemu-img info ARGS with lsm-sync info ARGS.
check() {
    local case=$1; shift
    local qrc=0 lrc=0
    qemu-img info -U --output=json "$@" >q.json 2>q.err || qrc=$?
    "$LSM_SYNC" info --output=json "$@" >l.json 2>l.err || lrc=$?
    if ((qrc != 0)); then
        fail "$case" "qemu-img info failed: $(head -n1 q.err)"
        return
    fi
    if ((lrc != 0)); then
        fail "$case" "lsm-sync exited $lrc: $(head -n3 l.err)"
        return
    fi
    if ! jq -S "$PICK" l.json >l.pick 2>l.jqerr; then
        fail "$case" "lsm-sync printed invalid JSON: $(head -n1 l.jqerr)"
        return
    fi
    jq -S "$PICK" q.json >q.pick
    if [[ $* == *--backing-chain* ]]; then
        local ql ll
        ql=$(jq length q.json)
        ll=$(jq 'if type == "array" then length else -1 end' l.json)
        if [[ $ql != "$ll" ]]; then
            fail "$case" "backing chain has $ll layers (-1: not an array), qemu-img $ql"
            return
        fi
        if [[ $(jq -c 'map(.filename)' q.json) != "$(jq -c 'map(.filename)' l.json)" ]]; then
            fail "$case" "layer filenames differ: qemu-img $(jq -c 'map(.filename)' q.json), lsm-sync $(jq -c 'map(.filename)' l.json)"
            return
        fi
    fi
    if cmp -s q.pick l.pick; then
        pass "$case"
    else
        fail "$case" "fields differ (- qemu-img, + lsm-sync):"
        diff -u --label qemu-img --label lsm-sync q.pick l.pick | head -n 40 || true
    fi
}

make_matrix
log "${#ALL_IMAGES[@]} images"

for img in "${ALL_IMAGES[@]}"; do
    check "info $img" "$img"
done
for img in d3/top.qcow2 d2/mid.qcow2 grown.qcow2 shrunk.qcow2 c1.1-cs4096.qcow2 holes.raw; do
    check "backing-chain $img" --backing-chain "$img"
done
check "format-flag qcow2" -f qcow2 d3/top.qcow2
check "format-flag raw" -f raw c0.10-cs4096.qcow2

# Absolute paths: filename and full-backing-filename follow the argument.
check "absolute path" --backing-chain "$T/d3/top.qcow2"

finish
