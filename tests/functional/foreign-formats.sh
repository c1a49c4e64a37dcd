#!/bin/bash
# Images in formats that lsm-sync does not read (VPC, VHDX, VDI, VMDK,
# Parallels, QED, qcow v1, LUKS, Bochs, cloop, DMG) are refused by name,
# whether they are the image, a backing file or a sync destination, and
# nothing is written; `-f raw` reads them as raw, as qemu-img does.  Then
# JSON: names that are not UTF-8 decode as qemu-img's do (U+FFFD), and
# copy's JSON summary parses whatever the bytes of its paths.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img qemu-io python3 sha256sum

# refused CASE WORD WANT_RC CMD...: exit WANT_RC, one line on stderr that
# names WORD.
refused() {
    local case=$1 word=$2 want=$3 rc=0
    shift 3
    "$@" >out.log 2>err.log || rc=$?
    if ((rc != want)); then
        fail "$case" "exit $rc, want $want: $(head -c 300 err.log)"
    elif [[ $(wc -l <err.log) != 1 ]]; then
        fail "$case" "want one line on stderr, got: $(head -n5 err.log)"
    elif ! grep -qF -- "$word" err.log; then
        fail "$case" "message does not name '$word': $(cat err.log)"
    else
        pass "$case"
    fi
}

# qemu_format FILE: the format qemu-img probes ("" when it cannot open it).
qemu_format() {
    local out
    if out=$(qemu-img info --output=json "$1" 2>/dev/null); then
        python3 -c 'import json,sys; print(json.loads(sys.argv[1])["format"])' "$out"
    else
        echo ""
    fi
}

# ---- the images -----------------------------------------------------------
# Guest data at 0 and 512 KiB, so that reading the container as raw could
# not pass for the guest's disk.
write_guest() {
    qio "$1" "$2" -- 'write -P 0x11 0 64k' 'write -P 0x22 512k 64k'
}
for f in vpc vhdx vdi parallels qed qcow; do
    qemu-img create -q -f $f x.$f 1M
    write_guest x.$f $f
done
qemu-img create -q -f vmdk -o subformat=monolithicSparse sparse.vmdk 1M
write_guest sparse.vmdk vmdk
qemu-img create -q -f vmdk -o subformat=monolithicFlat flat.vmdk 1M
write_guest flat.vmdk vmdk
# QEMU times its PBKDF with the thread's CPU clock and gives up ("Unable to
# get accurate CPU usage") when a round reads as 0 ms: try a few times.
for try in 1 2 3 4 5 6; do
    qemu-img create -q -f luks --object secret,id=sec0,data=abc \
        -o key-secret=sec0,iter-time=10 x.luks 1M 2>luks.err && break
    ((try < 6)) || die "cannot create a LUKS image: $(cat luks.err)"
done

python3 - <<'EOF'
import struct, zlib
# A descriptor with CRLF line ends, comment lines and a line of spaces
# before "version=" (QEMU's vmdk probe accepts all three).
open('crlf.vmdk', 'wb').write(
    b'# Disk DescriptorFile\r\n# made by the test\r\n   \r\nversion=1\r\n'
    b'CID=fffffffe\r\nparentCID=ffffffff\r\ncreateType="monolithicFlat"\r\n\r\n'
    b'RW 2048 FLAT "flat-flat.vmdk" 0\r\n')
# Bochs growing redolog: header, catalog (all unallocated), some bytes.
disk, extent = 1 << 20, 64 << 10
cat = disk // extent
h = bytearray(512)
h[0:23] = b'Bochs Virtual HD Image\0'
h[32:40] = b'Redolog\0'
h[48:56] = b'Growing\0'
struct.pack_into('<IIIIIIQ', h, 64, 0x00020000, 512, cat, 512, extent, 0, disk)
open('x.bochs', 'wb').write(bytes(h) + struct.pack('<%dI' % cat, *([0xffffffff] * cat))
                            + b'\x55' * 4096)
# cloop 2.0: the shell-script magic, block size, one zlib block.
magic = b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
block = zlib.compress(b'\xab' * 512)
c = bytearray(128)
c[:len(magic)] = magic
c += struct.pack('>II', 512, 1)
first = len(c) + 16
c += struct.pack('>QQ', first, first + len(block))
open('x.cloop', 'wb').write(bytes(c) + block)
# DMG: data, then the 512-byte UDIF trailer ("koly", version 4, size 512).
koly = bytearray(512)
koly[0:4] = b'koly'
struct.pack_into('>II', koly, 4, 4, 512)
open('x.dmg', 'wb').write(b'\x5a' * 65536 + bytes(koly))
EOF

# file:what qemu-img calls it:the name in our message
images=(x.vpc:vpc:VPC x.vhdx:vhdx:VHDX x.vdi:vdi:VDI sparse.vmdk:vmdk:VMDK
        flat.vmdk:vmdk:VMDK crlf.vmdk:vmdk:VMDK x.parallels:parallels:Parallels
        x.qed:qed:QED "x.qcow:qcow:qcow (version 1)" x.luks:luks:LUKS
        x.bochs:bochs:Bochs x.cloop:cloop:cloop x.dmg::DMG)

qemu-img create -q -f qcow2 src.qcow2 1M
qio src.qcow2 -- 'write -P 0x33 0 128k'
qemu-img convert -O raw src.qcow2 good.raw

for spec in "${images[@]}"; do
    IFS=: read -r img qfmt word <<<"$spec"
    # The fixture is what we say it is: qemu-img probes it as that format.
    # (QEMU's DMG probe goes by the name; it cannot open our crafted one,
    # which has no partition table, but it does not take it for raw.)
    got=$(qemu_format "$img")
    if [[ $got != "$qfmt" ]]; then
        fail "$img fixture" "qemu-img probes it as '$got', want '$qfmt'"
        continue
    fi
    before=$(sha256sum "$img" flat-flat.vmdk)

    refused "$img info" "$word" 1 "$LSM_SYNC" info "$img"
    refused "$img info json" "$word" 1 "$LSM_SYNC" info --output=json "$img"
    refused "$img map" "$word" 1 "$LSM_SYNC" map "$img"
    refused "$img map json" "$word" 1 "$LSM_SYNC" map --output=json "$img"
    refused "$img copy" "$word" 1 "$LSM_SYNC" copy "$img" out.raw
    [[ -e out.raw ]] && fail "$img copy" "out.raw was created"
    refused "$img copy qcow2" "$word" 1 "$LSM_SYNC" copy -O qcow2 "$img" out.qcow2
    [[ -e out.qcow2 ]] && fail "$img copy qcow2" "out.qcow2 was created"
    # compare's error status is 2 (1 means "different", as for qemu-img).
    refused "$img compare A" "$word" 2 "$LSM_SYNC" compare "$img" good.raw
    refused "$img compare B" "$word" 2 "$LSM_SYNC" compare good.raw "$img"
    refused "$img sync destination" "$word" 1 "$LSM_SYNC" sync --type=ALL src.qcow2 "$img"

    # As a backing file named without a format: probed, and refused.
    qemu-img create -q -f qcow2 -u -b "$img" -F raw top.qcow2 1M
    python3 - top.qcow2 <<'EOF'
import sys
d = bytearray(open(sys.argv[1], 'rb').read())
i = d.index(b'\xe2\x79\x2a\xca', 72, 65536)     # backing format extension
d[i:i + 4] = bytes(4)                            # -> end of extensions
open(sys.argv[1], 'wb').write(d)
EOF
    refused "$img as backing, map" "$word" 1 "$LSM_SYNC" map top.qcow2
    refused "$img as backing, copy" "$word" 1 "$LSM_SYNC" copy top.qcow2 out.raw
    [[ -e out.raw ]] && fail "$img as backing, copy" "out.raw was created"
    rm -f top.qcow2

    after=$(sha256sum "$img" flat-flat.vmdk)
    if [[ $before == "$after" ]]; then pass "$img unchanged"; else fail "$img unchanged" "it was written"; fi

    # -f raw: the file's bytes, exactly as qemu-img reads them with -f raw.
    if diff <("$LSM_SYNC" map -f raw --output=json "$img") \
            <(qemu-img map -f raw --output=json "$img") >diff.log; then
        pass "$img -f raw map"
    else
        fail "$img -f raw map" "$(head -n5 diff.log)"
    fi
    "$LSM_SYNC" copy -f raw "$img" raw.out
    if qemu-img compare -q -f raw -F raw "$img" raw.out; then
        pass "$img -f raw copy"
    else
        fail "$img -f raw copy" "the copy differs from the file's bytes"
    fi
    rm -f raw.out
done

# A fixed VHD has only a footer, which QEMU does not probe: it is raw to
# both (its guest data, then the 512-byte footer).
qemu-img create -q -f vpc -o subformat=fixed fixed.vhd 1M
if [[ $(qemu_format fixed.vhd) == raw ]] &&
   diff <("$LSM_SYNC" map --output=json fixed.vhd) <(qemu-img map --output=json fixed.vhd) >diff.log; then
    pass "fixed VHD is raw, as in QEMU"
else
    fail "fixed VHD is raw, as in QEMU" "$(head -n5 diff.log)"
fi

# ---- JSON: names whatever their bytes ----------------------------------
mkdir d
long=$(printf 'x%.0s' {1..80})        # room for the name written below
qemu-img create -q -f raw "d/$long" 1M
img=$'d/img\xff\xc3(.qcow2'
qemu-img create -q -f qcow2 -b "$long" -F raw "$img"
qemu-img snapshot -c $'snap\xed\xa0\x80\xe2\x82' "$img"
python3 - "$img" <<'EOF'
import os, struct, sys
path = os.fsencode(sys.argv[1])
d = bytearray(open(path, 'rb').read())
off, size = struct.unpack('>QI', d[8:20])
# Every kind of invalid sequence QEMU replaces, plus characters that JSON
# must escape and a valid 4-byte character.
name = (b'b\xffa\x80\x80s\xc3(e\xe2\x82x\xc0\xaf\xed\xa0\x80\xef\xbf\xbf\xf4\x90\x80\x80'
        b'\xf8\x88\x80\x80\x80"q\\\n\t\xf0\x9f\x98\x80.raw')
assert len(name) <= size
d[off:off + size] = name + bytes(size - len(name))
struct.pack_into('>I', d, 16, len(name))
open(path, 'wb').write(d)
EOF
"$LSM_SYNC" info --output=json "$img" >ours.json
qemu-img info --output=json "$img" >qemu.json
if python3 - <<'EOF' >diff.log; then
import json
ours = json.load(open('ours.json', 'rb'))
qemu = json.load(open('qemu.json', 'rb'))
bad = []
for k in ('filename', 'format', 'virtual-size', 'cluster-size', 'backing-filename',
          'full-backing-filename', 'backing-filename-format', 'dirty-flag'):
    if ours.get(k) != qemu.get(k):
        bad.append('%s: ours %r, qemu %r' % (k, ours.get(k), qemu.get(k)))
on = [(s['id'], s['name']) for s in ours.get('snapshots', [])]
qn = [(s['id'], s['name']) for s in qemu.get('snapshots', [])]
if on != qn:
    bad.append('snapshots: ours %r, qemu %r' % (on, qn))
if '\ufffd' not in ours['backing-filename']:
    bad.append('no U+FFFD in %r' % ours['backing-filename'])
print('\n'.join(bad))
raise SystemExit(1 if bad else 0)
EOF
    pass "info json with invalid UTF-8 equals qemu-img's"
else
    fail "info json with invalid UTF-8 equals qemu-img's" "$(cat diff.log)"
fi
# The human output prints the bytes as they are, as qemu-img info does.
if [[ "$("$LSM_SYNC" info "$img" | grep -a '^backing file:')" == \
      "$(qemu-img info "$img" | grep -a '^backing file:')" ]]; then
    pass "info human backing name as qemu-img prints it"
else
    fail "info human backing name as qemu-img prints it"
fi

# copy --output=json with quotes, backslashes, newlines and invalid UTF-8
# in both paths.
src=$'s"q\\b\nn.qcow2'
dst=$'o"q\\b\nn\xff.raw'
cp src.qcow2 "$src"
"$LSM_SYNC" copy --output=json "$src" "$dst" >summary.json
if python3 - "$src" <<'EOF' >diff.log; then
import json, sys
s = json.load(open('summary.json', 'rb'))
want = {'source': sys.argv[1], 'destination': 'o"q\\b\nn\ufffd.raw'}
bad = ['%s: %r, want %r' % (k, s.get(k), v) for k, v in want.items() if s.get(k) != v]
if s.get('bytes_total', 0) <= 0:
    bad.append('bytes_total %r' % s.get('bytes_total'))
print('\n'.join(bad))
raise SystemExit(1 if bad else 0)
EOF
    pass "copy json summary with odd paths"
else
    fail "copy json summary with odd paths" "$(cat diff.log)"
fi
if qemu-img compare -q "$src" "$dst"; then
    pass "copy to an odd path"
else
    fail "copy to an odd path" "the copy differs"
fi

finish
