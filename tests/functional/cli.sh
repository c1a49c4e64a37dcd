#!/bin/bash
# The command line contract: --help/--version/COMMAND --help exit 0 with text
# on stdout; usage errors exit 2; operational errors exit 1 with exactly one
# line "lsm-sync: ..." on stderr and nothing on stdout.
. "$(dirname "$0")/lib.sh"

# expect CASE RC [STDERR_LINES] -- ARGS...: run lsm-sync ARGS, check the exit
# code and (if given) the number of stderr lines, which must then start with
# "lsm-sync: ".
expect() {
    local case=$1 want=$2 lines=
    shift 2
    if [[ $1 != -- ]]; then lines=$1; shift; fi
    shift
    local rc=0
    "$LSM_SYNC" "$@" >out 2>err || rc=$?
    if ((rc != want)); then
        fail "$case" "exit $rc, want $want; stderr: $(head -n3 err)"
    elif ((rc > 128)); then
        fail "$case" "killed by signal $((rc - 128))"
    elif [[ -n $lines ]] && [[ $(wc -l <err) != "$lines" ]]; then
        fail "$case" "want $lines line(s) on stderr, got: $(cat err)"
    elif [[ -n $lines ]] && ((lines > 0)) && ! grep -q '^lsm-sync: ' err; then
        fail "$case" "stderr does not start with 'lsm-sync: ': $(head -n1 err)"
    elif ((want == 0)) && [[ ! -s out ]]; then
        fail "$case" "exit 0 but nothing on stdout"
    elif ((want == 1)) && [[ -s out ]]; then
        fail "$case" "error but output on stdout: $(head -n2 out)"
    else
        pass "$case"
    fi
}

qemu-img create -q -f raw ok.raw 1M 2>/dev/null || truncate -s 1M ok.raw
mkdir adir

expect "--help" 0 0 -- --help
expect "help" 0 0 -- help
expect "--version" 0 0 -- --version
if ! grep -Eq '^lsm-sync [0-9]+\.[0-9]+\.[0-9]+' out; then
    fail "--version format" "want 'lsm-sync X.Y.Z', got: $(head -n1 out)"
else
    pass "--version format"
fi

# Every command listed by --help has its own --help.
"$LSM_SYNC" --help >help.txt
mapfile -t commands < <(sed -n '/^Commands:/,/^$/s/^  \([a-z][a-z-]*\) .*/\1/p' help.txt)
((${#commands[@]} >= 2)) || fail "--help lists commands" "found: ${commands[*]:-none}"
for c in "${commands[@]}"; do
    expect "$c --help" 0 0 -- "$c" --help
done

# One spelling across commands (docs/cli.md, "The letters"): every short
# letter a command's --help shows is in the table, listed there for that
# command, and its help line says what the table's "Help says" column says.
rules=$SOURCE_DIR/docs/cli.md
declare -A says=() users=()
while IFS='|' read -r _ letter _ _ word cmds _; do
    letter=$(sed -n 's/^ *`-\([A-Za-z]\)`.*/\1/p' <<<"$letter")
    [[ -n $letter ]] || continue
    says[$letter]=$(sed 's/^ *`\(.*\)` *$/\1/' <<<"$word")
    users[$letter]=",$(tr -d ' ' <<<"$cmds"),"
done < <(sed -n '/^## The letters/,/^## /p' "$rules")
if ((${#says[@]} < 10)); then
    fail "cli conventions: table" "found ${#says[@]} letters in $rules"
else
    bad=()
    for c in "${commands[@]}"; do
        # Option lines start with two spaces and a dash; the option column
        # ends at the first run of two spaces ("-t CACHE, -T CACHE").
        while IFS= read -r line; do
            col=${line#  }
            col=${col%%  *}
            for l in $(grep -oE '(^|, )-[A-Za-z]\b' <<<"$col" | sed 's/.*-//'); do
                if [[ -z ${says[$l]:-} ]]; then
                    bad+=("$c -$l: not in docs/cli.md")
                elif [[ ${users[$l]} != *",$c,"* ]]; then
                    bad+=("$c -$l: docs/cli.md gives -$l to ${users[$l]//,/ } only")
                elif ! grep -qiF -- "${says[$l]}" <<<"$line"; then
                    bad+=("$c -$l: help line does not say '${says[$l]}': $line")
                fi
            done
        done < <("$LSM_SYNC" "$c" --help | grep -E '^  -[A-Za-z]')
    done
    # And the other way: a command the table lists for a letter shows it.
    for l in "${!users[@]}"; do
        IFS=, read -ra cs <<<"${users[$l]#,}"
        for c in "${cs[@]}"; do
            [[ " ${commands[*]} " == *" $c "* ]] || continue   # not in this build
            "$LSM_SYNC" "$c" --help | grep -E '^  -[A-Za-z]' | sed 's/   .*//' |
                grep -qE -- "(^  |, )-$l\b" || bad+=("$c: docs/cli.md lists -$l, its --help does not")
        done
    done
    if ((${#bad[@]} == 0)); then pass "cli conventions: one meaning per letter"
    else fail "cli conventions: one meaning per letter" "$(printf '%s; ' "${bad[@]}")"; fi
fi
# The letters that had another meaning in one command are refused there
# (exit 2), not taken with a different meaning; the long spellings work.
for args in "copy -s 1M ok.raw x.raw" "sync --type=ALL -s 1M ok.raw x.raw" "map -s 0 ok.raw" \
            "map -l 1M ok.raw" "monitor -c test:///default dom" "monitor -o json dom" \
            "replicate status -c test:///default dom vda" "replicate status -o json dom vda" \
            "migrate -c test:///default dom" "migrate -o json dom"; do
    read -ra a <<<"$args"
    [[ " ${commands[*]} " == *" ${a[0]} "* ]] || continue
    expect "old letter refused: $args" 2 -- "${a[@]}"
done
[[ ! -e x.raw ]] || fail "old letter refused: no file" "x.raw was created"
expect "map --start-offset --max-length" 0 0 -- map --start-offset=0 --max-length=512 ok.raw
expect "copy --request-size" 0 0 -- copy --request-size=64K --output=json ok.raw rs.raw
# --progress[=bar|json] and -p are the same in every command with progress.
for c in copy sync migrate; do
    [[ " ${commands[*]} " == *" $c "* ]] || continue
    expect "$c --progress=xml" 2 -- "$c" --progress=xml
done
rm -f rs.raw
expect "copy --progress" 0 -- copy --progress ok.raw p1.raw
expect "copy --progress=bar" 0 -- copy --progress=bar ok.raw p2.raw
if grep -q '100.00/100%' out; then pass "copy --progress=bar is -p"
else fail "copy --progress=bar is -p" "no qemu-img record: $(head -c 200 out)"; fi

# Usage errors: exit 2.
expect "no arguments" 2 -- 
expect "unknown command" 2 -- frobnicate
expect "unknown global option" 2 -- --frobnicate
for c in info map; do
    expect "$c: missing IMAGE" 2 -- "$c"
    expect "$c: unknown option" 2 -- "$c" --frobnicate ok.raw
    expect "$c: two images" 2 -- "$c" ok.raw ok.raw
    expect "$c: bad --output" 2 -- "$c" --output=xml ok.raw
    expect "$c: --output without value" 2 -- "$c" ok.raw --output
    expect "$c: bad -f" 2 -- "$c" -f vmdk ok.raw
done
expect "map: bad --start-offset" 2 -- map --start-offset=abc ok.raw
expect "map: bad --max-length" 2 -- map --max-length=-5 ok.raw

# Operational errors: exit 1, one line.
for c in info map; do
    expect "$c: ok" 0 0 -- "$c" ok.raw
    expect "$c: nonexistent file" 1 1 -- "$c" "$T/does-not-exist.qcow2"
    expect "$c: directory" 1 1 -- "$c" adir
    expect "$c: --output=json nonexistent" 1 1 -- "$c" --output=json "$T/nope"
done
if [[ -w /dev/full ]]; then
    rc=0
    "$LSM_SYNC" map ok.raw >/dev/full 2>err || rc=$?
    if ((rc == 1)) && [[ $(wc -l <err) == 1 ]]; then pass "map >/dev/full"; else fail "map >/dev/full" "exit $rc: $(cat err)"; fi
fi

# The man pages of this build are those of the commands it has (docs/man).
if [[ -d $BUILD_DIR/docs/man ]]; then
    want=$("$LSM_SYNC" --help | awk '/^Commands:/{on=1; next} on && /^  [a-z]/{print "lsm-sync-" $1 ".1"}' | sort)
    have=$(cd "$BUILD_DIR/docs/man" && ls lsm-sync-*.1 2>/dev/null | sort)
    if [[ -n $want && $want == "$have" ]]; then pass "man pages: one per command"
    else fail "man pages: one per command" "commands: $(echo $want); pages: $(echo $have)"; fi
    if "$LSM_SYNC" copy --help | grep -o -- '--[a-z][a-z-]*' | sort -u | while read -r o; do
           grep -qF -- "${o//-/\\-}" "$BUILD_DIR/docs/man/lsm-sync-copy.1" || { echo "$o"; exit 1; }
       done >missing; then pass "man page: copy's options"
    else fail "man page: copy's options" "missing: $(cat missing)"; fi
else
    skip_case "man pages" "no docs/man in $BUILD_DIR"
fi

# replicate --bandwidth is in MiB/s as in virsh blockcopy: a suffix is
# refused, not guessed; --bytes takes bytes/s (with suffixes) and needs it.
if "$LSM_SYNC" --help | grep -q '^  replicate '; then
    expect "replicate --bandwidth 4M" 2 -- replicate start --bandwidth 4M dom vda x.qcow2
    expect "replicate --bandwidth -1" 2 -- replicate start --bandwidth -1 dom vda x.qcow2
    expect "replicate --bytes alone" 2 -- replicate start --bytes dom vda x.qcow2
    expect "replicate --bandwidth x --bytes" 2 -- replicate start --bandwidth x --bytes dom vda x.qcow2
    expect "replicate status --bandwidth" 2 -- replicate status --bandwidth 4 dom vda
fi

# A module from another build is refused before any of its code runs, with
# one line naming both interfaces, not called (it would share this program's
# structures); a module found first and refused is not replaced by another.
if [[ -e $BUILD_DIR/lsm-endpoint-nbd.so ]] && command -v cc >/dev/null; then
    mkdir -p oldmod
    printf '%s\n' 'const char lsm_module_abi[] = "0.0.1/0";' \
        'int lsm_ep_nbd_create(void) { return *(volatile int *)0; }' >oldmod/m.c
    if cc -shared -fPIC -o oldmod/lsm-endpoint-nbd.so oldmod/m.c; then
        rc=0
        LSM_MODULE_DIR=$PWD/oldmod "$LSM_SYNC" copy nbd://127.0.0.1:1/x m.raw >/dev/null 2>err || rc=$?
        if ((rc == 1)) && [[ $(wc -l <err) == 1 ]] && grep -q 'built for lsm-sync 0.0.1/0' err &&
           [[ ! -e m.raw ]]; then pass "module of another build refused"
        else fail "module of another build refused" "exit $rc: $(cat err)"; fi
    else
        fail "module of another build refused" "cc could not build the test module"
    fi
else
    skip_case "module of another build" "no NBD module in $BUILD_DIR or no cc"
fi

finish
