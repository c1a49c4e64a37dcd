#!/bin/bash
# The Debian package: `dpkg-buildpackage -us -uc -b` on a copy of the source
# tree (never in the tree itself: it writes debian/ and ../*.deb), then the
# .deb is unpacked into a scratch root with `dpkg -x` (no chroot, nothing
# installed on this machine) and checked:
#   - its control fields (Package lsm-sync, the version of debian/changelog,
#     a Depends line filled by dh_shlibdeps);
#   - the binary, the modules, lsm-sync(1) and a page per command, and the
#     bash completion are in it where Debian puts them;
#   - the unpacked binary runs: --version prints the package's upstream
#     version, and it loads its NBD module from the unpacked module folder.
# Skipped (77) when dpkg-buildpackage or the build dependencies are missing
# (scripts/deps.sh --tests installs them).
. "$(dirname "$0")/lib.sh"
need_cmd dpkg-buildpackage dpkg-deb dpkg-checkbuilddeps dh tar

mkdir src
# The source tree without build folders, VCS data or demo output.
tar -C "$SOURCE_DIR" --exclude='./build*' --exclude=./.git --exclude=./_demo \
    --exclude='./debian/lsm-sync' --exclude='./debian/.debhelper' --exclude='./obj-*' \
    -cf - . | tar -C src -xf -
[[ -f src/debian/control ]] || die "no debian/control in the copied tree"
if ! (cd src && dpkg-checkbuilddeps) >deps.log 2>&1; then
    skip "build dependencies missing: $(head -c 300 deps.log)"
fi

log "dpkg-buildpackage -us -uc -b (a full build; a few minutes)"
elapsed_ms bash -c 'cd src && DEB_BUILD_OPTIONS="nocheck parallel=2" dpkg-buildpackage -us -uc -b >../build.log 2>&1'
if ((RC != 0)); then
    die "dpkg-buildpackage failed (exit $RC): $(tail -15 build.log)"
fi
log "built in $((MS / 1000)) s"
debs=(lsm-sync_*.deb)
[[ -f ${debs[0]} ]] || die "no lsm-sync_*.deb next to the tree: $(ls)"
DEB=${debs[0]}
pass package-built

# Control fields.
pkg=$(dpkg-deb -f "$DEB" Package)
ver=$(dpkg-deb -f "$DEB" Version)
dep=$(dpkg-deb -f "$DEB" Depends)
want_ver=$(sed -n '1s/^lsm-sync (\([^)]*\)).*/\1/p' src/debian/changelog)
if [[ $pkg == lsm-sync && $ver == "$want_ver" && $dep == *libc6* ]]; then
    pass control-fields
else
    fail control-fields "Package '$pkg', Version '$ver' (changelog: '$want_ver'), Depends '$dep'"
fi

# Contents, unpacked without installing.
dpkg -x "$DEB" root
arch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
bad=""
for f in usr/bin/lsm-sync usr/share/man/man1/lsm-sync.1.gz usr/share/man/man1/lsm-sync-copy.1.gz \
         usr/share/bash-completion/completions/lsm-sync; do
    [[ -e root/$f ]] || bad+="$f; "
done
[[ -z $bad ]] && pass package-contents || fail package-contents "missing: $bad (has: $(dpkg-deb -c "$DEB" | awk '{print $6}' | tr '\n' ' '))"

# The unpacked binary.
BIN=root/usr/bin/lsm-sync
if "$BIN" --version >ver.txt 2>&1 && [[ $(cat ver.txt) == "lsm-sync ${ver%%-*}" ]]; then
    pass binary-version
else
    fail binary-version "'$(cat ver.txt)', want 'lsm-sync ${ver%%-*}'"
fi
"$BIN" --help >help.txt 2>&1 || true
mapfile -t commands < <(sed -n '/^Commands:/,/^$/s/^  \([a-z][a-z-]*\) .*/\1/p' help.txt)
bad=""
for c in "${commands[@]}"; do
    [[ -e root/usr/share/man/man1/lsm-sync-$c.1.gz ]] || bad+="lsm-sync-$c.1.gz; "
done
((${#commands[@]} >= 3)) && [[ -z $bad ]] && pass man-per-command || fail man-per-command "commands: ${commands[*]:-none}; missing: $bad"
MODS=root/usr/lib/$arch/lsm-sync
if [[ -e $MODS/lsm-source-nbd.so ]]; then
    set +e
    LSM_MODULE_DIR=$MODS "$BIN" copy --timeout=2 "nbd+unix:///?socket=$T/none.sock" out.raw >/dev/null 2>nbd.err
    rc=$?
    set -e
    if ((rc != 0)) && ! grep -q module nbd.err && grep -q 'cannot connect' nbd.err; then
        pass module-load
    else
        fail module-load "exit $rc: $(head -c 300 nbd.err)"
    fi
else
    skip_case module-load "the package has no NBD module (built without libnbd?): $(ls "$MODS" 2>&1 | tr '\n' ' ')"
fi

finish
