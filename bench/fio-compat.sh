#!/bin/bash
# fio job files carry over to 'lsm-sync bench': every job file in
# bench/jobs-compat/ is run by real fio and by lsm-sync bench on small files.
# Both must accept it; sections without stonewall must overlap in time and
# sections with stonewall must not (lsm-sync: the jobs' start and end times
# in its JSON; fio: the wall time against the jobs' runtimes, as fio's JSON
# has no start time); and the JSON fields fio-parsing tools read must be at
# the same paths in both (python3 walks both trees).
# Env: LSM_SYNC (the binary), FIO (default: fio).  Exit 0 pass, 1 fail, 77 skipped.
set -uo pipefail
export LC_ALL=C

: "${LSM_SYNC:=$(cd "$(dirname "$0")/.." && pwd)/build/lsm-sync}"
: "${FIO:=fio}"
JOBS=$(cd "$(dirname "$0")/jobs-compat" && pwd)
[[ -x $LSM_SYNC ]] || { echo "fio-compat: LSM_SYNC=$LSM_SYNC is not executable" >&2; exit 1; }
if ! "$LSM_SYNC" --help | grep -q '^  bench '; then
    echo "fio-compat: SKIP: this lsm-sync was built without the bench command"
    exit 77
fi
command -v "$FIO" >/dev/null || { echo "fio-compat: SKIP: fio is not installed"; exit 77; }
command -v python3 >/dev/null || { echo "fio-compat: SKIP: python3 is needed to read JSON"; exit 77; }

T=$(mktemp -d "${TMPDIR:-/var/tmp}/lsm-fio-compat.XXXXXX")
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
fails=0
ok() { echo "ok - $*"; }
bad() { echo "FAIL - $*"; fails=$((fails + 1)); }

# Wall time of a command in ms, its exit code in RC.
run_ms() {
    local t0 t1
    t0=$(date +%s%N)
    "$@"
    RC=$?
    t1=$(date +%s%N)
    MS=$(( (t1 - t0) / 1000000 ))
}

# python3 checks over both JSON trees: checks.py FIO.json LSM.json MODE
cat >checks.py <<'PY'
import json, sys

def load(path):
    text = open(path).read()
    return json.loads(text[text.index("{"):])   # fio prints notes before the JSON

fio, lsm, mode = load(sys.argv[1]), load(sys.argv[2]), sys.argv[3]
errors = []
PCT = ["%f" % p for p in (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99,
                          99.5, 99.9, 99.95, 99.99)]

def get(tree, path):
    for k in path:
        tree = tree[k]
    return tree

# the field paths fio-parsing tools read
paths = [("fio version",), ("timestamp",), ("timestamp_ms",), ("time",),
         ("global options",), ("jobs",)]
job_paths = [("jobname",), ("groupid",), ("error",), ("elapsed",), ("job options",),
             ("job_runtime",), ("usr_cpu",), ("sys_cpu",),
             ("sync", "total_ios"), ("sync", "lat_ns", "N"), ("sync", "lat_ns", "stddev")]
for d in ("read", "write", "trim"):
    for f in ("io_bytes", "io_kbytes", "bw_bytes", "bw", "iops", "runtime", "total_ios",
              "short_ios", "drop_ios"):
        job_paths.append((d, f))
    for lat in ("slat_ns", "clat_ns", "lat_ns"):
        for f in ("min", "max", "mean", "stddev", "N"):
            job_paths.append((d, lat, f))
    for p in PCT:
        job_paths.append((d, "clat_ns", "percentile", p))
for p in PCT:
    job_paths.append(("sync", "lat_ns", "percentile", p))

for name, tree in (("fio", fio), ("lsm-sync", lsm)):
    for p in paths:
        try:
            get(tree, p)
        except (KeyError, IndexError, TypeError):
            errors.append("%s: no %s" % (name, "/".join(p)))
    for j in tree.get("jobs", []):
        for p in job_paths:
            if "percentile" in p and get(j, p[:p.index("percentile")] + ("N",)) == 0:
                continue    # fio has no percentiles without samples, nor does lsm-sync
            try:
                get(j, p)
            except (KeyError, IndexError, TypeError):
                errors.append("%s: job %s: no %s" % (name, j.get("jobname"), "/".join(p)))
if not lsm["fio version"].startswith("lsm-sync-"):
    errors.append("lsm-sync: fio version is %r, not lsm-sync-*" % lsm["fio version"])
# disk_util where /proc/diskstats gives it: same fields when both have it
if "disk_util" in lsm and "disk_util" in fio:
    for key in fio["disk_util"][0]:
        if key not in lsm["disk_util"][0]:
            errors.append("lsm-sync: disk_util has no %s" % key)

# the same jobs, groups, and options as strings, as given
fj = {j["jobname"]: j for j in fio["jobs"]}
lj = {j["jobname"]: j for j in lsm["jobs"]}
if sorted(fj) != sorted(lj):
    errors.append("jobs differ: fio %s, lsm-sync %s" % (sorted(fj), sorted(lj)))
if fio["global options"] != lsm["global options"]:
    errors.append("global options differ: fio %s, lsm-sync %s"
                  % (fio["global options"], lsm["global options"]))
for n in set(fj) & set(lj):
    fo, lo = fj[n]["job options"], lj[n]["job options"]
    for k, v in fo.items():
        if k != "filename" and lo.get(k) != v:
            errors.append("job %s: option %s: fio %r, lsm-sync %r" % (n, k, v, lo.get(k)))
    if fj[n]["groupid"] != lj[n]["groupid"]:
        errors.append("job %s: groupid fio %d, lsm-sync %d" % (n, fj[n]["groupid"],
                                                              lj[n]["groupid"]))
    if "desc" in fj[n] and fj[n]["desc"] != lj[n].get("desc"):
        errors.append("job %s: desc differs" % n)
    if fj[n]["sync"]["total_ios"] > 0 and lj[n]["sync"]["total_ios"] == 0:
        errors.append("job %s: fio synced, lsm-sync did not" % n)

# concurrency from lsm-sync's start and end times
jobs = lsm["jobs"]
if mode in ("overlap", "serial") and len(jobs) >= 2:
    a, b = jobs[0]["lsm-sync"], jobs[1]["lsm-sync"]
    overlap = a["start_ms"] < b["end_ms"] and b["start_ms"] < a["end_ms"]
    if mode == "overlap" and not overlap:
        errors.append("lsm-sync: the sections did not overlap: %s %s" % (a, b))
    if mode == "serial" and overlap:
        errors.append("lsm-sync: the stonewalled sections overlapped: %s %s" % (a, b))
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PY

check() {   # check JOBFILE MODE: MODE is overlap or serial
    local job=$1 mode=$2 name
    name=$(basename "$job" .fio)
    cp "$job" .
    run_ms "$FIO" --output-format=json "$name.fio" >"fio-$name.json" 2>"fio-$name.err"
    local frc=$RC fms=$MS
    [[ $frc -eq 0 ]] || { bad "$name: fio failed: $(head -3 "fio-$name.err")"; return; }
    run_ms "$LSM_SYNC" bench --eta=never --output-format=json "$name.fio" \
        >"lsm-$name.json" 2>"lsm-$name.err"
    local lrc=$RC lms=$MS
    [[ $lrc -eq 0 ]] || { bad "$name: lsm-sync bench failed: $(head -3 "lsm-$name.err")"; return; }
    ok "$name: fio and lsm-sync bench both accept it (fio ${fms} ms, lsm-sync ${lms} ms)"
    # fio: the job runtimes (per clone) against the wall time
    local sum
    sum=$(python3 -c 'import json,sys
t=open(sys.argv[1]).read(); d=json.loads(t[t.index("{"):])
print(sum(max(j["read"]["runtime"], j["write"]["runtime"]) for j in d["jobs"]))' "fio-$name.json")
    if [[ $mode == overlap ]]; then
        (( fms < sum )) && ok "$name: fio ran the sections at the same time (${fms} ms < ${sum} ms)" ||
            bad "$name: fio wall ${fms} ms, runtimes ${sum} ms: expected overlap"
    else
        (( fms >= sum )) && ok "$name: fio ran the sections one after another" ||
            bad "$name: fio wall ${fms} ms, runtimes ${sum} ms: expected no overlap"
    fi
    if python3 checks.py "fio-$name.json" "lsm-$name.json" "$mode" >"check-$name.out"; then
        ok "$name: same JSON field paths, options, groups; lsm-sync sections: $mode"
    else
        bad "$name: $(cat "check-$name.out")"
    fi
}

check "$JOBS/concurrent.fio" overlap
check "$JOBS/stonewall.fio" serial

# psync at depth > 1: capped at 1 with fio's note
grep -q "queue depth will be capped at 1" lsm-concurrent.err &&
    ok "psync with iodepth=4: capped at 1, with a note" ||
    bad "psync with iodepth=4: no note: $(cat lsm-concurrent.err)"

# an unknown key is still refused, with file and line
printf '[j]\nfilename=x\nsize=1M\nthread\nnot_a_key=1\n' >unknown.fio
"$LSM_SYNC" bench unknown.fio >/dev/null 2>unknown.err
rc=$?
[[ $rc -eq 2 ]] && grep -q "unknown.fio:5: unknown key 'not_a_key'" unknown.err &&
    ok "unknown key refused: $(cat unknown.err)" || bad "unknown key: rc=$rc $(cat unknown.err)"

[[ $fails -eq 0 ]] || { echo "fio-compat: $fails failure(s)"; exit 1; }
echo "fio-compat: all passed"
