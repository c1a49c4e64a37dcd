#!/bin/bash
# The JSON the commands print fits together (issue 15):
#   - clone-structure --output=json is a valid job file: sync --job takes it
#     unchanged, and the synced chain equals the source (qemu-img compare);
#   - sync --output=json and copy --output=json use the same field names for
#     the same things (bytes_total, bytes_read, bytes_written, bytes_zeroed,
#     bytes_skipped, io, direct, physical, seconds, source, destination),
#     as do the progress lines (bytes_done, bytes_total);
#   - a volume sync could not copy carries its error text ("error"), the
#     others say synced (copied beside it) or not-started, bytes_done counts
#     the synced ones, and the exit status is 1.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img qemu-io python3

qemu-img create -q -f raw base.raw 32M
qio base.raw raw -- 'write -P 0x11 0 4M' 'write -P 0x12 20M 1M'
qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2
qio mid.qcow2 -- 'write -P 0x21 1M 2M' 'write -z 20M 64k'
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
qio top.qcow2 -- 'write -P 0x31 8M 1M'

# clone-structure's JSON as sync's job.
mkdir dst
if "$LSM_SYNC" clone-structure --output=json top.qcow2 --dst-dir dst >job.json 2>err; then
    pass clone-json
else
    fail clone-json "exit $?: $(head -c 300 err)"
fi
if "$LSM_SYNC" sync --type=ALL --output=json --job job.json >sync.json 2>err; then
    if qemu-img compare -q top.qcow2 dst/top.qcow2 && qemu-img check -q dst/top.qcow2 &&
        qemu-img check -q dst/mid.qcow2; then
        pass clone-json-is-job
    else
        fail clone-json-is-job "the chain synced from the job differs from the source"
    fi
else
    fail clone-json-is-job "sync --job refused clone-structure's output: $(head -c 300 err)"
fi

# The same names in copy's and sync's JSON.
"$LSM_SYNC" copy -O qcow2 --output=json top.qcow2 flat.qcow2 >copy.json
"$LSM_SYNC" copy -O raw --progress=json top.qcow2 flat.raw >progress.json
if python3 - copy.json sync.json progress.json <<'EOF'
import json, sys
copy = json.load(open(sys.argv[1]))
sync = json.load(open(sys.argv[2]))
prog = [json.loads(l) for l in open(sys.argv[3]) if l.strip()]
shared = ["source", "destination", "bytes_total", "bytes_read", "bytes_written",
          "bytes_zeroed", "bytes_skipped", "io", "direct", "physical", "seconds"]
for k in shared:
    assert k in copy, "copy has no %s: %s" % (k, sorted(copy))
for v in sync["volumes"]:
    assert v["status"] == "synced", v
    for k in shared:
        assert k in v, "a sync volume has no %s: %s" % (k, sorted(v))
        assert type(v[k]) == type(copy[k]), "%s: %s in sync, %s in copy" % (k, type(v[k]), type(copy[k]))
for k in ("bytes_total", "bytes_done", "seconds"):
    assert k in sync, "sync has no %s: %s" % (k, sorted(sync))
assert sync["bytes_done"] == sync["bytes_total"] == sum(v["bytes_total"] for v in sync["volumes"])
assert prog and "bytes_done" in prog[-1] and "bytes_total" in prog[-1], prog[-1:]
assert not [k for k in list(copy) + list(sync) if "-" in k], "a field name with '-'"
EOF
then pass json-field-names; else fail json-field-names; fi

# A failed volume carries its error text.
mkdir dst2
"$LSM_SYNC" clone-structure top.qcow2 --dst-dir dst2 >/dev/null
qemu-io -f raw -c 'sleep 20000' dst2/base.raw &
holder=$!
sleep 0.5
set +e
"$LSM_SYNC" sync --type=ALL --output=json top.qcow2 dst2/top.qcow2 >fail.json 2>fail.err
rc=$?
set -e
kill "$holder" 2>/dev/null || true
wait "$holder" 2>/dev/null || true
if ((rc != 1)); then
    fail failed-volume-error "exit $rc with a locked destination volume, want 1"
elif python3 - fail.json fail.err <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
err = open(sys.argv[2]).read()
vols = j["volumes"]
failed = [v for v in vols if v["status"] == "failed"]
assert len(failed) == 1 and failed[0]["destination"] == "dst2/base.raw", vols
assert "lock" in failed[0]["error"], failed[0]
assert failed[0]["error"] in err, (failed[0]["error"], err)
# the others ran beside it (--parallel) or never started
others = [v for v in vols if v is not failed[0]]
assert all(v["status"] in ("synced", "not-started") for v in others), vols
assert j["bytes_done"] == sum(v["bytes_total"] for v in others if v["status"] == "synced"), j
EOF
then pass failed-volume-error; else fail failed-volume-error "$(cat fail.json | head -c 600)"; fi

finish
