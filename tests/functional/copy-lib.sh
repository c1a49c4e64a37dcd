# Helpers shared by the copy tests (copy-matrix, copy-nbd, copy-offload).
# Source it after lib.sh.

# run CASE ARGS...: lsm-sync copy must succeed.
run() {
    local case=$1; shift
    local rc=0
    "$LSM_SYNC" copy "$@" >out.log 2>err.log || rc=$?
    if ((rc != 0)); then
        fail "$case" "lsm-sync copy $* exited $rc: $(head -n3 err.log)"
        return 1
    fi
    return 0
}

# same CASE SRC DST [qemu-img compare args]: identical content.
same() {
    local case=$1 src=$2 dst=$3; shift 3
    if ! qemu-img compare -U "$@" "$src" "$dst" >cmp.log 2>&1; then
        fail "$case" "qemu-img compare $src $dst: $(head -n2 cmp.log)"
        return 1
    fi
    return 0
}

checked() {
    local case=$1 img=$2
    if ! qemu-img check -U "$img" >chk.log 2>&1; then
        fail "$case" "qemu-img check $img: $(grep -v '^$' chk.log | head -n4 | tr '\n' ' ')"
        return 1
    fi
    return 0
}

# data_bytes IMG [image-opts]: bytes qemu-img map reports as data.
data_bytes() {
    qemu-img map -U --output=json "$@" | python3 -c '
import json, sys
print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))'
}

# sparse CASE SRC DST: a raw output allocates at most the source's data plus slack.
sparse() {
    local case=$1 src=$2 dst=$3
    local want have
    want=$(data_bytes "$src")
    have=$(( $(stat -c %b "$dst") * 512 ))
    if ((have > want + 1048576)); then
        fail "$case" "$dst allocates $have bytes, source data is $want bytes"
        return 1
    fi
    return 0
}
