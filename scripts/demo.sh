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
        meson setup --reconfigure "$BUILD" >/dev/null
    else
        meson setup "$BUILD" >/dev/null
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

main() {
    step_deps
    step_build
    step_make_chain
    step_info
    step_map
    say "demo done; the images are in _demo/"
}

main "$@"
