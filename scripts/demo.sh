#!/bin/bash
# Quick start, command 1: install what is missing, build lsm-sync into build/,
# then run the built-in demo on a small backing chain made with qemu-img.
#
# Each step is one function; later features add a step and a line in main().
set -euo pipefail
trap 'echo "demo: failed: $BASH_COMMAND" >&2' ERR

cd "$(dirname "$0")/.."
REPO=$PWD
BUILD=$REPO/build
DEMO=$REPO/_demo
# Commands run from the top of the tree with short relative names.
LSM_SYNC=build/lsm-sync
LEAF=_demo/leaf.qcow2

say() { printf '\n== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step_deps() {
    say "dependencies"
    bash "$REPO/scripts/deps.sh"
}

step_build() {
    say "build (meson + ninja) into build/"
    if [[ -f $BUILD/build.ninja ]]; then
        meson setup --reconfigure "$BUILD" -Dwerror=true >/dev/null
    else
        meson setup "$BUILD" -Dwerror=true >/dev/null
    fi
    ninja -C "$BUILD" >/dev/null
    run "$LSM_SYNC" --version
}

# A three-layer chain in one directory, with relative backing names:
#   base.raw  <-  snap.qcow2  <-  leaf.qcow2
# Each layer holds data of its own, some of it shadowing the layer below,
# plus one zeroed range in the leaf.
step_make_chain() {
    say "make a chain in _demo/ with qemu-img and qemu-io"
    rm -rf "$DEMO"
    mkdir -p "$DEMO"
    (
        cd "$DEMO"
        run qemu-img create -q -f raw base.raw 64M
        run qemu-io -f raw -c 'write -P 0x11 0 4M' -c 'write -P 0x12 32M 2M' base.raw >/dev/null
        run qemu-img create -q -f qcow2 -b base.raw -F raw snap.qcow2
        run qemu-io -f qcow2 -c 'write -P 0x21 2M 4M' -c 'write -P 0x22 40M 1M' snap.qcow2 >/dev/null
        run qemu-img create -q -f qcow2 -b snap.qcow2 -F qcow2 leaf.qcow2
        run qemu-io -f qcow2 -c 'write -P 0x31 5M 2M' -c 'write -z 32M 512k' leaf.qcow2 >/dev/null
    )
}

step_info() {
    say "lsm-sync info: the backing chain, top first"
    run "$LSM_SYNC" info --backing-chain "$LEAF"
}

step_map() {
    say "lsm-sync map: which layer answers for each guest range"
    run "$LSM_SYNC" map "$LEAF"
    say "lsm-sync map --output=json (same meaning as qemu-img map --output=json)"
    run "$LSM_SYNC" map --output=json "$LEAF"
}

# The storage pool manager's half of a live storage migration, on file
# domains: re-create the chain empty in another directory, copy the data
# layer by layer (never flattened), and check the result against QEMU.
step_clone() {
    say "lsm-sync clone-structure: the same chain, empty, in _demo/dst/"
    mkdir -p "$DEMO/dst"
    run "$LSM_SYNC" clone-structure "$LEAF" --dst-dir "$DEMO/dst"
    run "$LSM_SYNC" info --backing-chain "$DEMO/dst/leaf.qcow2"
}

step_sync() {
    say "lsm-sync sync --type=ALL: each destination volume gets its own layer"
    run "$LSM_SYNC" sync --type=ALL -p "$LEAF" "$DEMO/dst/leaf.qcow2"
    say "the destination chain: each range answered by the same layer as in the source"
    run "$LSM_SYNC" map "$DEMO/dst/leaf.qcow2"
}

step_compare() {
    say "lsm-sync compare and qemu-img compare: what the guest sees is identical"
    run "$LSM_SYNC" compare "$LEAF" "$DEMO/dst/leaf.qcow2"
    run qemu-img compare "$LEAF" "$DEMO/dst/leaf.qcow2"
    run qemu-img check -q "$DEMO/dst/leaf.qcow2"
    run qemu-img check -q "$DEMO/dst/snap.qcow2"
}

main() {
    step_deps
    step_build
    step_make_chain
    step_info
    step_map
    step_clone
    step_sync
    step_compare
    say "demo done; the images are in _demo/ and the copy in _demo/dst/"
}

main "$@"
