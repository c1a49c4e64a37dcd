#!/bin/bash
# The Debian package: `dpkg-buildpackage -us -uc -b` on a copy of the source
# tree (never in the tree itself: it writes debian/ and ../*.deb), then the
# .deb is unpacked into a scratch root with `dpkg -x` (no chroot) and
# checked, then installed with `dpkg -i` and purged again (below):
#   - its control fields (Package lsm-sync, the version of debian/changelog,
#     a Depends line filled by dh_shlibdeps);
#   - the binary, the modules, lsm-sync(1) and a page per command, and the
#     bash completion are in it where Debian puts them;
#   - the unpacked binary runs: --version prints the package's upstream
#     version, and it loads its NBD module from the unpacked module folder;
#   - the library packages: liblsm-sync0 holds the shared library (its
#     soname link and nothing of -dev), liblsm-sync-dev the headers, the
#     .so link and the pkg-config file, and depends on liblsm-sync0 of the
#     same version; examples/copy-example built with its Makefile against
#     the unpacked -dev (PKG_CONFIG_SYSROOT_DIR) runs against the unpacked
#     library and copies a qcow2 that qemu-img compare finds equal.
# Skipped (77) when dpkg-buildpackage or the build dependencies are missing
# (scripts/deps.sh --tests installs them).
. "$(dirname "$0")/lib.sh"
need_cmd dpkg-buildpackage dpkg-deb dpkg-checkbuilddeps dh tar make cc pkg-config qemu-img qemu-io

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
if [[ -e $MODS/lsm-endpoint-nbd.so ]]; then
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

# The library packages.
lib_debs=(liblsm-sync0_*.deb)
dev_debs=(liblsm-sync-dev_*.deb)
if [[ ! -f ${lib_debs[0]} || ! -f ${dev_debs[0]} ]]; then
    fail library-packages "no liblsm-sync0 or liblsm-sync-dev .deb: $(ls ./*.deb | tr '\n' ' ')"
else
    LDEB=${lib_debs[0]} DDEB=${dev_debs[0]}
    lib_files=$(dpkg-deb -c "$LDEB" | awk '{print $6}')
    dev_files=$(dpkg-deb -c "$DDEB" | awk '{print $6}')
    ddep=$(dpkg-deb -f "$DDEB" Depends)
    bad=""
    grep -q "^./usr/lib/$arch/liblsm-sync.so.0.1.0$" <<<"$lib_files" || bad+="liblsm-sync0 has no liblsm-sync.so.0.1.0; "
    grep -q "^./usr/lib/$arch/liblsm-sync.so.0$" <<<"$lib_files" || bad+="liblsm-sync0 has no soname link; "
    grep -q -e 'include/' -e 'pkgconfig' -e 'liblsm-sync.so$' <<<"$lib_files" && bad+="liblsm-sync0 has development files; "
    for f in usr/include/lsm-sync.h usr/include/lsm-offload.h "usr/lib/$arch/liblsm-sync.so" \
             "usr/lib/$arch/pkgconfig/lsm-sync.pc"; do
        grep -q "^./$f$" <<<"$dev_files" || bad+="liblsm-sync-dev has no $f; "
    done
    [[ $ddep == *"liblsm-sync0 (= $ver)"* ]] || bad+="liblsm-sync-dev Depends '$ddep'; "
    [[ -z $bad ]] && pass library-packages || fail library-packages "$bad"

    dpkg -x "$LDEB" root
    dpkg -x "$DDEB" root
    cp -r src/examples/copy-example ex
    set +e
    PKG_CONFIG_PATH= PKG_CONFIG_LIBDIR=$T/root/usr/lib/$arch/pkgconfig PKG_CONFIG_SYSROOT_DIR=$T/root \
        make -C ex CFLAGS="-O2 -Wall -Wextra -Werror" >make.log 2>&1
    rc=$?
    set -e
    if ((rc != 0)); then
        fail library-example "make (exit $rc): $(tail -5 make.log)"
    else
        qemu-img create -q -f qcow2 src.qcow2 32M
        qemu-io -f qcow2 -c 'write -P 0x5a 0 3M' -c 'write -P 0x5b 20M 2M' src.qcow2 >/dev/null
        set +e
        LD_LIBRARY_PATH=$T/root/usr/lib/$arch ex/copy-example -O qcow2 src.qcow2 dst.qcow2 >ex.out 2>ex.err
        rc=$?
        set -e
        resolved=$(LD_LIBRARY_PATH=$T/root/usr/lib/$arch ldd ex/copy-example | sed -n 's/^[[:space:]]*liblsm-sync.so.0 => \([^ ]*\).*/\1/p')
        if ((rc == 0)) && [[ $resolved == "$T/root/usr/lib/$arch/liblsm-sync.so.0" ]] &&
           qemu-img compare -q src.qcow2 dst.qcow2 && qemu-img check -q dst.qcow2; then
            pass library-example
        else
            fail library-example "exit $rc, library '$resolved': $(cat ex.err)"
        fi
    fi
fi

# Installed for real with dpkg -i (what a user of the packages does), when
# none of the three packages is installed here already (an operator's own
# installation is never replaced or removed): the installed binary runs a
# copy that qemu-img compare finds equal, pkg-config finds the library, and
# dpkg --purge takes everything away again (also when the test fails).
debs=(lsm-sync_*.deb liblsm-sync0_*.deb liblsm-sync-dev_*.deb)
installed=$(dpkg-query -W -f='${Package} ${Status}\n' lsm-sync liblsm-sync0 liblsm-sync-dev 2>/dev/null |
            grep -c ' installed$' || true)
if [[ $(id -u) != 0 ]]; then
    skip_case dpkg-install "not root: dpkg -i needs root"
elif ((installed > 0)); then
    skip_case dpkg-install "lsm-sync packages are installed on this machine already: not touched"
elif ! ls "${debs[@]}" >/dev/null 2>&1; then
    fail dpkg-install "missing .deb files: $(ls ./*.deb | tr '\n' ' ')"
else
    purge() { dpkg --purge lsm-sync liblsm-sync-dev liblsm-sync0 >>purge.log 2>&1; }
    trap 'purge; cleanup' EXIT
    if ! dpkg -i "${debs[@]}" >dpkg.log 2>&1; then
        fail dpkg-install "dpkg -i failed: $(tail -5 dpkg.log)"
    else
        qemu-img create -q -f qcow2 isrc.qcow2 16M
        qemu-io -f qcow2 -c 'write -P 0x6c 1M 2M' isrc.qcow2 >/dev/null
        why=""
        [[ $(/usr/bin/lsm-sync --version 2>&1) == "lsm-sync ${ver%%-*}" ]] || why+="--version '$(/usr/bin/lsm-sync --version 2>&1)'; "
        /usr/bin/lsm-sync copy -O qcow2 isrc.qcow2 idst.qcow2 >icopy.log 2>&1 &&
            qemu-img compare -q isrc.qcow2 idst.qcow2 || why+="copy by the installed binary: $(tail -3 icopy.log); "
        [[ $(pkg-config --modversion lsm-sync 2>&1) == "${ver%%-*}" ]] || why+="pkg-config says '$(pkg-config --modversion lsm-sync 2>&1)'; "
        [[ -z $why ]] && pass dpkg-install || fail dpkg-install "$why"
    fi
    purge
    if [[ -e /usr/bin/lsm-sync ]] || dpkg-query -W -f='${Status}\n' lsm-sync 2>/dev/null | grep -q ' installed$'; then
        fail dpkg-purge "still installed after dpkg --purge: $(tail -5 purge.log)"
    else
        pass dpkg-purge
    fi
    trap cleanup EXIT
fi

finish
