#!/bin/bash
# Guest-visible content of every image of the matrix (images.sh), read
# through our reader (lsm_image_pread), must equal `qemu-img convert -O raw`
# of the image; where libqcow (an independent reader) supports the image, it
# is asked too (see tests/tools/readcmp.c for its limits: no extended L2, no
# zstd, qcow2 parents only, no parent shorter than the top, the v3 zero flag
# of allocated clusters ignored).  The pass/fail verdict is ours against
# qemu-img; the log says which images libqcow confirmed and where it differs.
. "$(dirname "$0")/lib.sh"
. "$TESTS_DIR/images.sh"
need_cmd qemu-img qemu-io
READCMP=$BUILD_DIR/tests/tools/readcmp
[[ -x $READCMP ]] || skip "tests/tools/readcmp not built (libqcow-dev missing at configure time)"

make_matrix
with_libqcow=() without=() disagree=() refused=()
for img in "${ALL_IMAGES[@]}"; do
    if has_tag "$img" big; then
        continue    # 8 TiB of zeroes: map-matrix covers it
    fi
    qemu-img convert -U -O raw "$img" ref.raw
    opt=()
    if has_tag "$img" qcow2 && ! has_tag "$img" el2 && ! has_tag "$img" zstd; then
        opt=(--libqcow)
    fi
    rc=0
    timeout 120 "$READCMP" "${opt[@]}" "$img" ref.raw >out.txt 2>err.txt || rc=$?
    last=$(tail -n1 out.txt)
    case $rc in
    0|3)
        case $last in
        *"libqcow: equal") with_libqcow+=("$img") ;;
        *"libqcow: disagrees"*) disagree+=("$img: ${last#*libqcow: disagrees }") ;;
        *"libqcow: refused") refused+=("$img: $(head -n1 err.txt)") ;;
        *) without+=("$img") ;;
        esac
        pass "$img" ;;
    *)
        fail "$img" "$(cat out.txt err.txt | head -n5)" ;;
    esac
    rm -f ref.raw
done

log "equal to qemu-img convert and to libqcow: ${with_libqcow[*]:-none}"
log "equal to qemu-img convert; libqcow not asked (raw layers, a shorter backing, extended L2, zstd): ${without[*]:-none}"
if ((${#disagree[@]})); then
    log "equal to qemu-img convert; libqcow 20201213 disagrees (it ignores the v3 zero flag of allocated clusters):"
    printf '  %s\n' "${disagree[@]}"
fi
if ((${#refused[@]})); then
    log "equal to qemu-img convert; libqcow refused:"
    printf '  %s\n' "${refused[@]}"
fi
finish
