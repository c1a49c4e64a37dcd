#!/bin/bash
# `meson install --destdir`: the binary, the modules, the man pages and the
# bash completion land where the build's own options say (prefix, bindir,
# libdir/lsm-sync, mandir/man1, datadir/bash-completion/completions), and
# each of them works from there:
#   - the installed binary runs (--version, --help) and finds its modules in
#     the installed module folder (an NBD source loads lsm-endpoint-nbd.so: the
#     error must be about the server, not about a missing module);
#   - every command --help lists has its man page, and each page renders
#     (man -l, or groff) with the command's name in it;
#   - the completion script, sourced into bash, registers a completion for
#     lsm-sync that offers the commands;
#   - the worker service's systemd units (lsm-sync.socket, lsm-sync.service
#     starting the installed binary's serve) are in PREFIX/lib/systemd/system;
#   - the library liblsm-sync (docs/library.md): its header, shared library
#     (with the soname link) and pkg-config file are installed, and
#     examples/copy-example, built with its own Makefile against them alone
#     (PKG_CONFIG_PATH and PKG_CONFIG_SYSROOT_DIR into the destdir), runs
#     against the installed library (LD_LIBRARY_PATH; ldd says which) and
#     copies a qcow2 that qemu-img compare finds equal to its source; from
#     an NBD source it loads the installed lsm-endpoint-nbd.so, which the
#     library looks for in its own LIBDIR/lsm-sync;
#   - the offload plugin interface: examples/offload-example, built with its
#     own Makefile against the installed <lsm-offload.h> alone, is loaded by
#     the installed binary (LSM_MODULE_DIR) and copies a raw file with -C.
. "$(dirname "$0")/lib.sh"
need_cmd meson python3 pkg-config make cc qemu-img qemu-io qemu-nbd

D=$T/root
if ! meson install -C "$BUILD_DIR" --destdir "$D" --no-rebuild --quiet >install.log 2>&1; then
    die "meson install --destdir failed: $(tail -5 install.log)"
fi

# The install locations from the build's options.
opt() {
    meson introspect "$BUILD_DIR" --buildoptions | python3 -c '
import json, sys
print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == sys.argv[1]))' "$1"
}
prefix=$(opt prefix)
under() { case $2 in /*) echo "$2" ;; *) echo "$1/$2" ;; esac; }
bindir=$(under "$prefix" "$(opt bindir)")
libdir=$(under "$prefix" "$(opt libdir)")
mandir=$(under "$prefix" "$(opt mandir)")
datadir=$(under "$prefix" "$(opt datadir)")
includedir=$(under "$prefix" "$(opt includedir)")
BIN=$D$bindir/lsm-sync
MODS=$D$libdir/lsm-sync
log "prefix $prefix: binary $bindir, modules $libdir/lsm-sync, man $mandir/man1"

# Everything the build says it installs is there.
missing=$(meson introspect "$BUILD_DIR" --installed | python3 -c '
import json, os, sys
for dst in json.load(sys.stdin).values():
    if not os.path.exists(sys.argv[1] + dst):
        print(dst)' "$D")
[[ -z $missing ]] && pass installed-files || fail installed-files "missing: $missing"

# The binary.
if [[ -x $BIN ]] && "$BIN" --version >ver.txt 2>&1 && grep -q '^lsm-sync [0-9]' ver.txt; then
    pass binary-version
else
    fail binary-version "$BIN --version: $(head -c 200 ver.txt 2>/dev/null)"
fi
"$BIN" --help >help.txt 2>&1 || true
mapfile -t commands < <(sed -n '/^Commands:/,/^$/s/^  \([a-z][a-z-]*\) .*/\1/p' help.txt)
((${#commands[@]} >= 3)) && pass binary-help || fail binary-help "commands listed: ${commands[*]:-none}"

# The modules: every lsm-*.so the build made is installed, and the binary
# loads from the installed folder.
mods_built=$(cd "$BUILD_DIR" && ls lsm-*.so 2>/dev/null | sort | tr '\n' ' ')
mods_inst=$(cd "$MODS" 2>/dev/null && ls lsm-*.so 2>/dev/null | sort | tr '\n' ' ')
if [[ -n $mods_built && $mods_built == "$mods_inst" ]]; then
    pass modules-installed
elif [[ -z $mods_built ]]; then
    skip_case modules-installed "this build has no modules (no libnbd, libvirt, devmapper)"
else
    fail modules-installed "built: $mods_built, installed: $mods_inst"
fi
if [[ -e $MODS/lsm-endpoint-nbd.so ]]; then
    # A copy of the binary in a folder of its own, so that the module can
    # only come from LSM_MODULE_DIR (the compiled-in folder is not in $D).
    mkdir alone && cp "$BIN" alone/lsm-sync
    set +e
    LSM_MODULE_DIR=$MODS alone/lsm-sync copy --timeout=2 'nbd+unix:///?socket='"$T"'/none.sock' out.raw >/dev/null 2>with.err
    rc_with=$?
    LSM_MODULE_DIR=$T/empty alone/lsm-sync copy --timeout=2 'nbd+unix:///?socket='"$T"'/none.sock' out.raw >/dev/null 2>without.err
    rc_without=$?
    set -e
    if [[ -e $prefix/$(opt libdir)/lsm-sync/lsm-endpoint-nbd.so || -e $libdir/lsm-sync/lsm-endpoint-nbd.so ]]; then
        skip_case module-load "a lsm-sync is installed on this machine ($libdir/lsm-sync): the load could come from there"
    elif ((rc_with != 0)) && ! grep -q 'module' with.err && grep -q 'module lsm-endpoint-nbd.so not found' without.err; then
        pass module-load
    else
        fail module-load "with the installed modules (exit $rc_with): $(head -c 200 with.err); without: $(head -c 200 without.err)"
    fi
else
    skip_case module-load "this build has no NBD module"
fi

# The library: header, shared library, pkg-config file, and the example
# built with its Makefile against them alone.
LIBD=$D$libdir
if [[ -s $D$includedir/lsm-sync.h && -e $LIBD/liblsm-sync.so && -e $LIBD/liblsm-sync.so.0 &&
      -s $LIBD/pkgconfig/lsm-sync.pc ]]; then
    pass library-installed
else
    fail library-installed "in $D: $(ls "$D$includedir" "$LIBD" "$LIBD/pkgconfig" 2>&1 | tr '\n' ' ')"
fi
# The worker service's systemd units (socket activation), the service
# starting the installed binary.
units=$D$prefix/lib/systemd/system
if [[ -s $units/lsm-sync.socket ]] && grep -q '^ListenStream=/' "$units/lsm-sync.socket" &&
   grep -q "^ExecStart=$bindir/lsm-sync serve " "$units/lsm-sync.service" 2>/dev/null; then
    pass systemd-units
else
    fail systemd-units "in $units: $(ls "$units" 2>&1 | tr '\n' ' ') $(grep -h '^ExecStart' "$units/lsm-sync.service" 2>&1)"
fi
cp -r "$SOURCE_DIR/examples/copy-example" ex
set +e
PKG_CONFIG_PATH=$LIBD/pkgconfig PKG_CONFIG_LIBDIR=$LIBD/pkgconfig PKG_CONFIG_SYSROOT_DIR=$D \
    make -C ex CFLAGS="-O2 -Wall -Wextra -Werror" >make.log 2>&1
rc_make=$?
set -e
if ((rc_make != 0)) || [[ ! -x ex/copy-example ]]; then
    fail example-build "make (exit $rc_make): $(tail -5 make.log)"
elif ! grep -q -- "-I$D$includedir" make.log || ! grep -q -- "-L$LIBD" make.log; then
    fail example-build "not built against the destdir: $(tail -2 make.log)"
else
    pass example-build
    qemu-img create -q -f qcow2 src.qcow2 32M
    qemu-io -f qcow2 -c 'write -P 0x5a 0 3M' -c 'write -z 8M 1M' -c 'write -P 0x5b 20M 2M' src.qcow2 >/dev/null
    resolved=$(LD_LIBRARY_PATH=$LIBD ldd ex/copy-example | sed -n 's/^[[:space:]]*liblsm-sync.so.0 => \([^ ]*\).*/\1/p')
    set +e
    LD_LIBRARY_PATH=$LIBD ex/copy-example -O qcow2 src.qcow2 dst.qcow2 >ex.out 2>ex.err
    rc_ex=$?
    set -e
    if [[ $resolved != "$LIBD/liblsm-sync.so.0" ]]; then
        fail example-run "liblsm-sync.so.0 resolves to '$resolved', not the installed $LIBD/liblsm-sync.so.0"
    elif ((rc_ex != 0)); then
        fail example-run "exit $rc_ex: $(cat ex.err)"
    elif ! qemu-img compare -q src.qcow2 dst.qcow2 || ! qemu-img check -q dst.qcow2; then
        fail example-run "the copy differs from its source or does not check clean"
    else
        pass example-run
    fi
    if [[ ! -e $MODS/lsm-endpoint-nbd.so ]]; then
        skip_case example-module "this build has no NBD module"
    elif [[ -e $libdir/lsm-sync/lsm-endpoint-nbd.so ]]; then
        skip_case example-module "a lsm-sync is installed on this machine ($libdir/lsm-sync): the load could come from there"
    else
        qemu-nbd -r -t -f qcow2 -k "$T/ex.sock" src.qcow2 &
        nbd_pid=$!
        for _ in $(seq 50); do [[ -S $T/ex.sock ]] && break; sleep 0.1; done
        set +e
        env -u LSM_MODULE_DIR LD_LIBRARY_PATH=$LIBD ex/copy-example "nbd+unix:///?socket=$T/ex.sock" nbd.raw >nbd.out 2>nbd.err
        rc_nbd=$?
        set -e
        kill "$nbd_pid"
        wait "$nbd_pid" 2>/dev/null || true   # killed: its status is not the test's
        if ((rc_nbd == 0)) && qemu-img compare -q -f qcow2 -F raw src.qcow2 nbd.raw; then
            pass example-module
        else
            fail example-module "exit $rc_nbd: $(cat nbd.err)"
        fi
    fi
fi

# The offload plugin interface: examples/offload-example built with its own
# Makefile against the installed <lsm-offload.h> alone (docs/offload.md,
# "Writing a plugin"), then loaded by the installed binary for a copy.
cp -r "$SOURCE_DIR/examples/offload-example" plug
set +e
make -C plug PREFIX="$D$prefix" CFLAGS="-O2 -Wall -Wextra -Werror" >plug.log 2>&1
rc_make=$?
set -e
if [[ ! -s $D$includedir/lsm-offload.h ]]; then
    fail plugin-build "$includedir/lsm-offload.h is not installed"
elif ((rc_make != 0)) || [[ ! -e plug/lsm-offload-example.so ]]; then
    fail plugin-build "make (exit $rc_make): $(tail -5 plug.log)"
elif ! grep -q -- "-I$D$prefix/include" plug.log; then
    fail plugin-build "not built against the destdir: $(tail -2 plug.log)"
else
    pass plugin-build
    head -c 3M /dev/urandom >plug-src.raw
    set +e
    LSM_MODULE_DIR=$T/plug "$BIN" copy --output=json --offload=example -C -f raw plug-src.raw plug-dst.raw >plug.json 2>plug.err
    rc_plug=$?
    set -e
    done_plugin=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["offload_paths"]["plugin"])' plug.json 2>/dev/null)
    if ((rc_plug != 0)); then
        fail plugin-run "exit $rc_plug: $(cat plug.err)"
    elif ! cmp -s plug-src.raw plug-dst.raw; then
        fail plugin-run "the copy differs from its source"
    elif [[ $done_plugin != $((3 << 20)) ]]; then
        fail plugin-run "the plugin did $done_plugin bytes of 3 MiB: $(cat plug.json)"
    else
        pass plugin-run
    fi
fi

# Man pages: lsm-sync(1) and one per command, each rendering.
render() {
    if command -v man >/dev/null 2>&1; then
        MANWIDTH=100 man -l "$1" 2>/dev/null
    else
        groff -man -Tutf8 "$1" 2>/dev/null
    fi
}
if ! command -v man >/dev/null 2>&1 && ! command -v groff >/dev/null 2>&1; then
    skip_case man-pages "neither man nor groff is installed"
else
    bad=""
    for page in lsm-sync "${commands[@]/#/lsm-sync-}"; do
        f=$D$mandir/man1/$page.1
        if [[ ! -s $f ]]; then
            bad+="$page.1 missing; "
        elif ! render "$f" | grep -q "${page#lsm-sync-}"; then
            bad+="$page.1 does not render with its name; "
        fi
    done
    [[ -z $bad ]] && pass man-pages || fail man-pages "$bad"
fi

# Bash completion: sourced into bash with the installed binary first in
# PATH (the script asks the program for its commands and options), it
# registers a function for lsm-sync that completes commands, a command's
# options, and file names.
comp=$D$datadir/bash-completion/completions/lsm-sync
if [[ ! -s $comp ]]; then
    fail bash-completion "$comp missing"
else
    # complete_words WORDS...: what the completion offers for the last word.
    complete_words() {
        PATH="$D$bindir:$PATH" bash -c '
            comp=$1
            shift
            source "$comp" || exit 1
            spec=$(complete -p lsm-sync) || exit 2
            fn=$(sed -n "s/.*-F \([^ ]*\).*/\1/p" <<<"$spec")
            [[ -n $fn ]] || exit 3
            COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
            "$fn" lsm-sync "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
            printf "%s\n" "${COMPREPLY[@]}"' _ "$comp" "$@" 2>&1
    }
    set +e
    c_out=$(complete_words lsm-sync c)
    rc_c=$?
    co_out=$(complete_words lsm-sync co)
    opt_out=$(complete_words lsm-sync copy --targ)
    touch comp-file.qcow2
    file_out=$(complete_words lsm-sync copy comp-fi)
    set -e
    want=$(printf '%s\n' "${commands[@]}" | grep '^c' | sort | tr '\n' ' ')
    got=$(grep -x '[a-z-]*' <<<"$c_out" | sort | tr '\n' ' ')
    if ((rc_c != 0)); then
        fail bash-completion "sourcing it or complete -p lsm-sync failed (exit $rc_c): $c_out"
    elif [[ -z $want || $got != "$want" ]]; then
        fail bash-completion "completing 'lsm-sync c' gave '$got', want '$want' ($c_out)"
    elif [[ $(sort <<<"$co_out" | tr '\n' ' ') != "compare copy " ]]; then
        fail bash-completion "completing 'lsm-sync co' gave '$co_out', want copy and compare"
    elif [[ $opt_out != --target-is-zero ]]; then
        fail bash-completion "completing 'lsm-sync copy --targ' gave '$opt_out'"
    elif [[ $file_out != comp-file.qcow2 ]]; then
        fail bash-completion "completing a file name gave '$file_out'"
    else
        pass bash-completion
    fi
fi

finish
