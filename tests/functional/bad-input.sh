#!/bin/bash
# Corrupt, hostile and odd images (tests/tools/mkbad.py and chains made here).
# For each, `lsm-sync map` and `lsm-sync info` must, within 1 s:
#   refuse: exit 1 with exactly one stderr line "lsm-sync: ..."
#   qemu:   either refuse as above, or exit 0 where qemu-img also accepts the
#           image, with `map --output=json` identical to qemu-img's
#   accept: exit 0 and match qemu-img (valid input, e.g. an empty raw file)
# Never a signal, a hang (timeout 5 s) or more than one line.  Under ASan the
# same script catches memory errors in the reader.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img qemu-io python3 jq timeout
MKBAD=$SOURCE_DIR/tests/tools/mkbad.py
LIMIT_MS=${LIMIT_MS:-1000}
INFO_KEY='if type == "array" then map([.format, .["virtual-size"]]) else [.format, .["virtual-size"]] end'

# run_one CASE MODE FILE CMD [OPTION]: one command on one image.
run_one() {
    local case=$1 mode=$2 img=$3 cmd=$4 opt=("${@:5}")
    local qrc=0
    if [[ $mode != refuse ]]; then
        timeout 5 qemu-img "$cmd" -U "${opt[@]}" --output=json "$img" >q.out 2>q.err || qrc=$?
    fi
    elapsed_ms timeout 5 "$LSM_SYNC" "$cmd" "${opt[@]}" --output=json "$img" >l.out 2>l.err
    local rc=$RC
    if ((rc < 124 && MS > LIMIT_MS)); then
        # A busy machine can stall one run: a slow reader is slow twice.
        local first=$MS
        elapsed_ms timeout 5 "$LSM_SYNC" "$cmd" "${opt[@]}" --output=json "$img" >l.out 2>l.err
        rc=$RC
        log "note: $case took $first ms, then $MS ms"
    fi
    if ((rc == 124)); then
        fail "$case" "hangs (killed after 5 s)"; return
    elif ((rc > 128)); then
        fail "$case" "killed by signal $((rc - 128)): $(head -n5 l.err)"; return
    elif ((MS > LIMIT_MS)); then
        fail "$case" "took $MS ms (limit $LIMIT_MS ms)"; return
    fi
    case $rc in
    0)
        if [[ $mode == refuse ]]; then
            fail "$case" "accepted (exit 0), must be refused"
        elif ((qrc != 0)); then
            fail "$case" "accepted (exit 0) but qemu-img refuses it: $(head -n1 q.err)"
        elif [[ $cmd == map ]] && ! cmp -s q.out l.out; then
            fail "$case" "accepted but map differs from qemu-img:"
            diff -u --label qemu-img --label lsm-sync q.out l.out | head -n 20 || true
        elif [[ $cmd == info ]] && [[ $(jq -c "$INFO_KEY" q.out) != "$(jq -c "$INFO_KEY" l.out 2>/dev/null)" ]]; then
            fail "$case" "accepted but format/virtual-size differ from qemu-img: $(jq -c "$INFO_KEY" q.out) vs $(head -c 200 l.out)"
        else
            pass "$case"
        fi ;;
    1)
        if [[ $mode == accept ]]; then
            fail "$case" "refused valid input ($(head -n1 l.err)); qemu-img: exit $qrc"
        elif [[ $(wc -l <l.err) != 1 ]] || ! grep -q '^lsm-sync: ' l.err; then
            fail "$case" "want one line 'lsm-sync: ...' on stderr, got: $(head -n4 l.err)"
        else
            [[ ${VERBOSE:-0} == 1 ]] && log "  $case: $(cat l.err)"
            pass "$case"
        fi ;;
    *)
        fail "$case" "exit $rc: $(head -n3 l.err)" ;;
    esac
}

check() {  # check MODE FILE [NAME]
    run_one "map ${3:-$2}" "$1" "$2" map
    run_one "info ${3:-$2}" "$1" "$2" info
}

# check_chain MODE FILE NAME: map and info --backing-chain follow the chain
# and get MODE; plain info reads the top layer only (as qemu-img info does),
# so it may match qemu-img or refuse.
check_chain() {
    run_one "map $3" "$1" "$2" map
    run_one "info --backing-chain $3" "$1" "$2" info --backing-chain
    run_one "info $3" qemu "$2" info
}

# A good small qcow2 with data, a compressed and a zero cluster.
mkdir v
qemu-img create -q -f qcow2 -o cluster_size=4096 good.qcow2 1M
qio good.qcow2 -- "write -P 1 0 64k" "write -c -P 2 128k 4k" "write -z 256k 4k"
python3 "$MKBAD" variants good.qcow2 v >variants.txt
check accept good.qcow2

# Valid input that must be accepted; everything else: match qemu or refuse.
# (QEMU reads a file with the qcow2 magic but a version below 2, or too short
# for a version, as raw: matching or refusing such a damaged header are both
# fine.)
declare -A MODE=(
    [trunc-0.qcow2]=accept [random-bytes.img]=accept
    [compat-unknown-bit.qcow2]=accept
    [autoclear-unknown-bit.qcow2]=accept [incompat-dirty.qcow2]=accept
    [crypt-method-1.qcow2]=refuse [crypt-method-2.qcow2]=refuse
    [crypt-method-3.qcow2]=refuse [incompat-unknown-bit.qcow2]=refuse
)
while read -r name; do
    check "${MODE[$name]:-qemu}" "v/$name"
done <variants.txt

# Subcluster bitmaps of extended L2 entries.
mkdir e
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=65536 good-el2.qcow2 1M
qio good-el2.qcow2 -- "write -P 1 0 8k" "write -z 16k 4k"
check accept good-el2.qcow2
python3 "$MKBAD" el2-variants good-el2.qcow2 e >el2-variants.txt
while read -r name; do
    check qemu "e/$name"
done <el2-variants.txt

# Backing chains.
mkdir c && cd c
qemu-img create -q -u -f qcow2 -b b.qcow2 -F qcow2 a.qcow2 1M
qemu-img create -q -u -f qcow2 -b a.qcow2 -F qcow2 b.qcow2 1M
check_chain refuse a.qcow2 "loop a<-b<-a"
qemu-img create -q -u -f qcow2 -b placeholder-name.qcow2 -F qcow2 self.qcow2 1M
python3 "$MKBAD" set-backing self.qcow2 self.qcow2
check_chain refuse self.qcow2 "self loop"
qemu-img create -q -u -f qcow2 -b placeholder-name-longer.qcow2 -F qcow2 self2.qcow2 1M
python3 "$MKBAD" set-backing self2.qcow2 ./sub/../self2.qcow2
mkdir sub
check_chain refuse self2.qcow2 "self loop through another name"
qemu-img create -q -u -f qcow2 -b missing.qcow2 -F qcow2 orphan.qcow2 1M
check_chain qemu orphan.qcow2 "missing backing file"
qemu-img create -q -u -f qcow2 -b sub -F raw dirback.qcow2 1M
check_chain qemu dirback.qcow2 "backing file is a directory"
qemu-img create -q -u -f qcow2 -b 'json:{"driver":"raw","file":{"driver":"file","filename":"/dev/null"}}' \
    -F raw jsonback.qcow2 1M
check_chain refuse jsonback.qcow2 "json: backing name"
qemu-img create -q -u -f qcow2 -b nbd://127.0.0.1:1/export -F raw nbdback.qcow2 1M
check_chain refuse nbdback.qcow2 "nbd:// backing name"
: >empty.raw
qemu-img create -q -u -f qcow2 -b empty.raw -F raw over-empty.qcow2 1M
qio over-empty.qcow2 -- "write -P 9 64k 64k"
check_chain accept over-empty.qcow2 "qcow2 over an empty raw file"
qemu-img create -q -f raw ext-data.raw 1M
qemu-img create -q -f qcow2 -o data_file=ext-data.raw ext.qcow2 1M
qio ext.qcow2 -- "write -P 7 64k 128k"
check qemu ext.qcow2 "external data file"
rm ext-data.raw
check qemu ext.qcow2 "external data file missing"
cd ..

# Deep chains: 200 layers are fine, 301 are over the limit (256).
mkdir deep && cd deep
qemu-img create -q -u -f qcow2 -o cluster_size=4096 -b c000.qcow2 -F qcow2 template.qcow2 1M
python3 "$MKBAD" chain template.qcow2 . 300
qemu-img create -q -f qcow2 -o cluster_size=4096 c300.qcow2 1M
qio c300.qcow2 -- "write -P 3 0 4k"
qio c150.qcow2 -- "write -P 4 8k 4k"
check_chain refuse c000.qcow2 "chain 301 deep"
check_chain accept c100.qcow2 "chain 201 deep"
cd ..

finish
