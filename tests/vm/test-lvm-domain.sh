#!/bin/bash
# The LVM block domain (domains/domain-lvm.c) against real LVM, inside the
# test VM: create/exists/size/extend/remove, EEXIST, ENOSPC, ENOENT, bad
# names, and the paths where LVM fails after our own checks passed (another
# process won a race), driven through lsm_domain_lvm_ops by
# tests/vm/lvm-domain-driver.c.
#
# On the host: builds the driver (gcc, with ASan/UBSan when they link) into
# a temporary directory and runs itself in the VM with --inner.  Exit 77
# when the VM or a compiler is not available.
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

if [ "${1:-}" != --inner ]; then
    cc=${CC:-gcc}
    command -v "$cc" >/dev/null || { echo "SKIP: no C compiler ($cc)" >&2; exit 77; }
    tmp=$(mktemp -d /tmp/lsm-lvm-domain.XXXXXX) || exit 1
    trap 'rm -rf "$tmp"' EXIT
    srcs=("$repo/domains/domain-lvm.c" "$here/lvm-domain-driver.c" "$repo/common/error.c" "$repo/common/util.c")
    flags=(-std=gnu11 -g -O1 -Wall -Wextra -Werror -I"$repo/common" -I"$repo/domains")
    if ! "$cc" "${flags[@]}" -fsanitize=address,undefined -fno-sanitize-recover=undefined \
        "${srcs[@]}" -o "$tmp/driver" 2>/dev/null; then
        "$cc" "${flags[@]}" "${srcs[@]}" -o "$tmp/driver" || { echo "FAIL: cannot build the driver" >&2; exit 1; }
    fi
    "$here/vm-run.sh" --timeout "${LSM_VM_TIMEOUT:-900}" "$0" --inner "$tmp/driver"
    exit $?
fi

# ---- in the guest -------------------------------------------------------
driver=$2
# shellcheck source=tests/vm/lvm-helpers.sh
. "$here/lvm-helpers.sh"
trap vm_cleanup EXIT
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}

fails=0
vg=lsmtest
MiB=1048576

# Run the driver with STEPS; compare its output line by line with the
# expected lines given on stdin (each a prefix of the actual line).
check() {
    local what=$1 out i
    shift
    local -a exp act
    mapfile -t exp
    if ! out=$("$driver" "$vg" "$@" 2>&1); then
        echo "FAIL $what: driver exited with an error:" >&2
        printf '%s\n' "$out" | sed 's/^/    /' >&2
        fails=$((fails + 1))
        return
    fi
    mapfile -t act <<<"$out"
    for i in "${!exp[@]}"; do
        if [[ "${act[i]:-}" != "${exp[i]}"* ]]; then
            echo "FAIL $what: line $((i + 1))" >&2
            echo "    expected: ${exp[i]}..." >&2
            echo "    got:      ${act[i]:-<nothing>}" >&2
            fails=$((fails + 1))
            return
        fi
    done
    if [ "${#act[@]}" != "${#exp[@]}" ]; then
        echo "FAIL $what: ${#act[@]} lines, expected ${#exp[@]}:" >&2
        printf '%s\n' "$out" | sed 's/^/    /' >&2
        fails=$((fails + 1))
        return
    fi
    echo "ok $what"
}

check "no such volume group" <<EOF
open $vg: -ENOENT: cannot query volume group $vg: vgs: Volume group "$vg" not found
EOF

LSM_LVM=/nonexistent/lvm check "lvm missing" <<EOF
open $vg: -ENOENT: cannot run /nonexistent/lvm vgs: No such file or directory
EOF

vm_make_vg "$vg" 64M 4M || { echo "FAIL: cannot make the volume group" >&2; exit 1; }
# 64 MiB less the metadata area: 15 extents of 4 MiB, 60 MiB free.

check "create, exists, size, node" \
    exists vol1 create vol1 5M exists vol1 size vol1 path vol1 isblk vol1 <<EOF
open $vg: 0
extent_size: 4194304
exists vol1: 0
create vol1 5M: 0
exists vol1: 1
size vol1: $((8 * MiB))
path vol1: /dev/$vg/vol1
isblk vol1: 1
EOF

check "exists" create vol1 4M <<EOF
open $vg: 0
extent_size: 4194304
create vol1 4M: -EEXIST: cannot create $vg/vol1: a logical volume of that name exists
EOF

check "extend" \
    extend vol1 6M size vol1 extend vol1 8M extend vol1 9M size vol1 write vol1 8M 1M 0x5a <<EOF
open $vg: 0
extent_size: 4194304
extend vol1 6M: 0
size vol1: $((8 * MiB))
extend vol1 8M: 0
extend vol1 9M: 0
size vol1: $((12 * MiB))
write vol1 8M 1M 0x5a: 0
EOF

check "no space" create big 1G extend vol1 2G size vol1 <<EOF
open $vg: 0
extent_size: 4194304
create big 1G: -ENOSPC: cannot create $vg/big of 1 GiB: volume group $vg has only 48 MiB free
extend vol1 2G: -ENOSPC: cannot extend $vg/vol1 to 2 GiB: volume group $vg has 48 MiB free, 1.99 GiB more needed
size vol1: $((12 * MiB))
EOF

check "names" \
    create 'v.2+x_y-z' 1 size 'v.2+x_y-z' create 'bad/name' 1M create -lead 1M \
    create snapshot1 1M create 'a_mimage_b' 1M create .. 1M \
    create "$(printf 'n%.0s' {1..128})" 1M exists 'x y' <<EOF
open $vg: 0
extent_size: 4194304
create v.2+x_y-z 1: 0
size v.2+x_y-z: $((4 * MiB))
create bad/name 1M: -EINVAL: invalid logical volume name "bad/name" in $vg: only a-z A-Z 0-9 + _ . - are allowed
create -lead 1M: -EINVAL: invalid logical volume name "-lead" in $vg: it must not begin with a hyphen
create snapshot1 1M: -EINVAL: invalid logical volume name "snapshot1" in $vg: names beginning with
create a_mimage_b 1M: -EINVAL: invalid logical volume name "a_mimage_b" in $vg: it contains a suffix
create .. 1M: -EINVAL: invalid logical volume name ".." in $vg:
create $(printf 'n%.0s' {1..128}) 1M: -EINVAL: invalid logical volume name "nnnn
exists x y: -EINVAL: invalid logical volume name "x y" in $vg: only
EOF

# 60 MiB - 12 - 4 = 44 MiB left: fill the group exactly, then one byte more.
check "full group" create fill 44M create one 1 extend vol1 13M <<EOF
open $vg: 0
extent_size: 4194304
create fill 44M: 0
create one 1: -ENOSPC: cannot create $vg/one of 4 MiB: volume group $vg has only 0 B free
extend vol1 13M: -ENOSPC: cannot extend $vg/vol1 to 13 MiB: volume group $vg has 0 B free, 4 MiB more needed
EOF

check "remove" remove fill remove vol1 exists vol1 size vol1 remove vol1 extend vol1 16M <<EOF
open $vg: 0
extent_size: 4194304
remove fill: 0
remove vol1: 0
exists vol1: 0
size vol1: -ENOENT: cannot get the size of $vg/vol1: no such logical volume
remove vol1: -ENOENT: cannot remove $vg/vol1: lvremove: Failed to find logical volume
extend vol1 16M: -ENOENT: cannot extend $vg/vol1 to 16 MiB: no such logical volume
EOF
if [ -e "/dev/$vg/vol1" ]; then
    echo "FAIL remove: /dev/$vg/vol1 is still there" >&2
    fails=$((fails + 1))
fi

# LVM fails after our checks passed: a wrapper does the same change first,
# as another host or process would in between.
race=$(mktemp -d "$LSM_VM_SCRATCH/race.XXXXXX")
cat >"$race/lvm" <<'WRAP'
#!/bin/bash
case "$RACE:$1" in
exists:lvcreate | extended:lvextend) lvm "$@" >/dev/null 2>&1 ;;
nospace:lvcreate) lvm lvcreate --config "$LSM_LVM_CONFIG" -n hog -l 100%FREE -y -Wn -Zn "${@: -1}" >/dev/null 2>&1 ;;
esac
exec lvm "$@"
WRAP
chmod +x "$race/lvm"

RACE=exists LSM_LVM=$race/lvm check "race: created meanwhile" create r1 4M <<EOF
open $vg: 0
extent_size: 4194304
create r1 4M: -EEXIST: cannot create $vg/r1 of 4 MiB: lvcreate: Logical Volume "r1" already exists
EOF
RACE=extended LSM_LVM=$race/lvm check "race: extended meanwhile" extend r1 8M size r1 <<EOF
open $vg: 0
extent_size: 4194304
extend r1 8M: 0
size r1: $((8 * MiB))
EOF
RACE=nospace LSM_LVM=$race/lvm check "race: space taken meanwhile" create r2 4M <<EOF
open $vg: 0
extent_size: 4194304
create r2 4M: -ENOSPC: cannot create $vg/r2 of 4 MiB: lvcreate: Volume group "$vg" has insufficient free space
EOF
check "cleanup" remove hog remove r1 remove 'v.2+x_y-z' <<EOF
open $vg: 0
extent_size: 4194304
remove hog: 0
remove r1: 0
remove v.2+x_y-z: 0
EOF

# Not a pass/fail check: whether O_DIRECT works on dm over loop over tmpfs
# here (docs/vm-harness.md).
"$driver" "$vg" create dio 4M dio dio remove dio 2>&1 | sed -n 's/^dio dio: /info: O_DIRECT write on an LV over loop over tmpfs: /p'

if [ "$fails" != 0 ]; then
    echo "$fails check(s) failed" >&2
    exit 1
fi
echo "all LVM domain checks passed"
