#!/bin/bash
# The worker service against what vdsm runs (docs/benchmarks.md):
#
#   bench/serve-bench.sh [--lsm-sync PATH] [--dir DIR] [--runs N]
#
# Moving a 3-layer chain (raw base, qcow2, qcow2 top) and 4 independent
# qcow2 disks:
#   vdsm     one `nice -n 19 ionice -c 3 qemu-img convert -p -t none -T none
#            -n [-B BACKING -F FMT]` per volume, one after the other, as the
#            engine runs them (the destination volumes exist: the chain's
#            structure is made beforehand, as cloneImageStructure would);
#            also run without nice/ionice, to see what the priorities cost
#   service  one `lsm-sync serve`: syncImageData ALL for the chain and one
#            copyVolume per disk, all submitted at once, then polled
# Then the rework after a kill at 50%: a disk's copyVolume (checkpoints
# every 64 MiB or 1 s), the service SIGKILLed when the task reports 50%,
# restarted; the data the second run writes, against a full restart (what
# vdsm's engine does).
# Every run: destinations made empty again, page cache dropped, the two
# interleaved in each round; medians of N rounds (default 3).  Needs root
# (drop_caches), qemu-img, qemu-io, python3.
set -euo pipefail
export LC_ALL=C

LSM=${LSM_SYNC:-}
DIR=${BENCH_DIR:-/var/tmp/lsm-serve-bench}
RUNS=${RUNS:-3}
while (($#)); do
    case $1 in
    --lsm-sync) LSM=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "serve-bench: unknown option $1" >&2; exit 2 ;;
    esac
done
HERE=$(cd "$(dirname "$0")" && pwd)
[[ -n $LSM ]] || LSM=$HERE/../build/lsm-sync
[[ -x $LSM ]] || { echo "serve-bench: no lsm-sync at $LSM (--lsm-sync PATH)" >&2; exit 2; }
[[ $(id -u) == 0 ]] || { echo "serve-bench: needs root (drop_caches)" >&2; exit 2; }
for c in qemu-img qemu-io python3; do
    command -v $c >/dev/null || { echo "serve-bench: $c not found" >&2; exit 2; }
done
mkdir -p "$DIR"
LSM_SYNC=$LSM RUNS=$RUNS exec python3 - "$DIR" <<'PYEOF'
import json, os, signal, socket, statistics, subprocess, sys, time

D = sys.argv[1]
LSM = os.environ["LSM_SYNC"]
RUNS = int(os.environ["RUNS"])
MiB = 1 << 20
GiB = 1 << 30


def sh(*a):
    subprocess.run(list(a), check=True, stdout=subprocess.DEVNULL)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def writes(path, fmt, runs):
    a = ["qemu-io", "-f", fmt]
    for pat, off, ln in runs:
        a += ["-c", "write -P 0x%02x %d %d" % (pat, off, ln)]
    sh(*(a + [path]))


src = os.path.join(D, "src")
os.makedirs(src, exist_ok=True)
base, mid, top = (os.path.join(src, n) for n in ("base.raw", "mid.qcow2", "top.qcow2"))
disks = [os.path.join(src, "disk%d.qcow2" % i) for i in range(4)]
stamp = os.path.join(src, ".made")
if not os.path.exists(stamp):
    sh("qemu-img", "create", "-q", "-f", "raw", base, str(4 * GiB))
    writes(base, "raw", [(0x11, i * 256 * MiB, 96 * MiB) for i in range(8)])          # 768 MiB
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", mid, str(4 * GiB))
    writes(mid, "qcow2", [(0x22, 64 * MiB + i * 512 * MiB, 48 * MiB) for i in range(8)])  # 384 MiB
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top, str(4 * GiB))
    writes(top, "qcow2", [(0x33, 128 * MiB + i * 512 * MiB, 32 * MiB) for i in range(8)])  # 256 MiB
    for i, d in enumerate(disks):
        sh("qemu-img", "create", "-q", "-f", "qcow2", d, str(4 * GiB))
        writes(d, "qcow2", [(0x40 + i, j * 512 * MiB, 64 * MiB) for j in range(8)])       # 512 MiB
    open(stamp, "w").close()
data = 768 * MiB + 384 * MiB + 256 * MiB + 4 * 512 * MiB


def fresh_dst(name):
    """An empty destination: the chain's structure, no disks."""
    d = os.path.join(D, name)
    subprocess.run(["rm", "-rf", d], check=True)
    os.makedirs(d)
    sh("qemu-img", "create", "-q", "-f", "raw", os.path.join(d, "base.raw"), str(4 * GiB))
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", os.path.join(d, "mid.qcow2"), str(4 * GiB))
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", os.path.join(d, "top.qcow2"), str(4 * GiB))
    return d


def run_vdsm(prio=True):
    d = fresh_dst("dst-vdsm")
    for i in range(4):
        sh("qemu-img", "create", "-q", "-f", "qcow2", os.path.join(d, "disk%d.qcow2" % i), str(4 * GiB))
    drop_caches()
    t = time.time()
    q = (["nice", "-n", "19", "ionice", "-c", "3"] if prio else []) + \
        ["qemu-img", "convert", "-p", "-t", "none", "-T", "none", "-n"]
    sh(*(q + ["-f", "raw", "-O", "raw", base, os.path.join(d, "base.raw")]))
    sh(*(q + ["-B", "base.raw", "-F", "raw", "-f", "qcow2", "-O", "qcow2", mid, os.path.join(d, "mid.qcow2")]))
    sh(*(q + ["-B", "mid.qcow2", "-F", "qcow2", "-f", "qcow2", "-O", "qcow2", top, os.path.join(d, "top.qcow2")]))
    for i, s in enumerate(disks):
        sh(*(q + ["-f", "qcow2", "-O", "qcow2", s, os.path.join(d, "disk%d.qcow2" % i)]))
    return time.time() - t, d


class Svc:
    def __init__(self, state, *extra):
        self.sock = os.path.join(D, "s.sock")
        self.state = state
        self.extra = list(extra)
        self.p = None

    def start(self):
        self.p = subprocess.Popen([LSM, "serve", "--socket", self.sock, "--state-dir", self.state] + self.extra,
                                  stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                self.c = socket.socket(socket.AF_UNIX)
                self.c.connect(self.sock)
                self.f = self.c.makefile("rwb")
                self.call("ping")
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("the service does not answer")

    def call(self, m, p=None):
        self.f.write((json.dumps({"jsonrpc": "2.0", "id": 1, "method": m, "params": p or {}}) + "\n").encode())
        self.f.flush()
        r = json.loads(self.f.readline())
        if "error" in r:
            raise SystemExit("%s: %r" % (m, r["error"]))
        return r["result"]

    def wait(self, ids):
        while True:
            sts = [self.call("getTaskStatus", {"taskId": t}) for t in ids]
            if all(s["state"] in ("finished", "failed", "aborted") for s in sts):
                bad = [s for s in sts if s["state"] != "finished"]
                if bad:
                    raise SystemExit("task failed: %r" % bad[0])
                return sts
            time.sleep(0.05)

    def kill(self):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait()


def run_service():
    d = fresh_dst("dst-serve")
    state = os.path.join(D, "state")
    subprocess.run(["rm", "-rf", state], check=True)
    s = Svc(state)
    s.start()
    drop_caches()
    t = time.time()
    ids = [s.call("syncImageData", {"source": top, "destination": os.path.join(d, "top.qcow2"),
                                    "syncType": "ALL", "format": "qcow2"})["taskId"]]
    for i, src_disk in enumerate(disks):
        ids.append(s.call("copyVolume", {"source": src_disk, "sourceFormat": "qcow2",
                                         "destination": os.path.join(d, "disk%d.qcow2" % i),
                                         "destinationFormat": "qcow2"})["taskId"])
    s.wait(ids)
    el = time.time() - t
    s.stop()
    return el, d


def same(a, b, fa="qcow2", fb="qcow2"):
    return subprocess.run(["qemu-img", "compare", "-q", "-f", fa, "-F", fb, a, b]).returncode == 0


tv, tp, ts = [], [], []
for r in range(RUNS):
    a, dv = run_vdsm()
    c, dv = run_vdsm(prio=False)
    b, dsv = run_service()
    tv.append(a)
    tp.append(c)
    ts.append(b)
    print("round %d: vdsm-style %.2f s, the same without nice/ionice %.2f s, service %.2f s" % (r + 1, a, c, b), flush=True)
for d in (dv, dsv):
    assert same(top, os.path.join(d, "top.qcow2")), "chain differs in " + d
    for i, s in enumerate(disks):
        assert same(s, os.path.join(d, "disk%d.qcow2" % i)), "disk differs in " + d
print("all destinations identical to their sources (qemu-img compare)")
mv, mp, ms = statistics.median(tv), statistics.median(tp), statistics.median(ts)
print("data %.2f GiB; medians: vdsm-style %.2f s (%.0f MiB/s), without nice/ionice %.2f s (%.0f MiB/s), "
      "service %.2f s (%.0f MiB/s): %.2fx and %.2fx"
      % (data / GiB, mv, data / mv / MiB, mp, data / mp / MiB, ms, data / ms / MiB, mv / ms, mp / ms))

# Rework after a kill at 50 %
d = os.path.join(D, "dst-kill")
subprocess.run(["rm", "-rf", d], check=True)
os.makedirs(d)
state = os.path.join(D, "state-kill")
subprocess.run(["rm", "-rf", state], check=True)
s = Svc(state, "--checkpoint-interval", "64M,1")
s.start()
dst = os.path.join(d, "disk0.qcow2")
tid = s.call("copyVolume", {"source": disks[0], "sourceFormat": "qcow2", "destination": dst,
                            "destinationFormat": "qcow2", "bandwidth": 256 * MiB})["taskId"]
while s.call("getTaskStatus", {"taskId": tid})["progress"]["percent"] < 50:
    time.sleep(0.02)
before = s.call("getTaskStatus", {"taskId": tid})["progress"]["bytes_written"]
s.kill()
s.start()
s.call("setTaskBandwidth", {"taskId": tid, "bandwidth": 0})
st = s.wait([tid])[0]
after = st["progress"]["bytes_written"]
s.stop()
assert same(disks[0], dst), "killed copy differs"
print("kill at 50%% (checkpoints every 64 MiB or 1 s): %d MiB written before the kill; after the restart "
      "%d MiB written (of 512 MiB: %.0f%%; a full restart writes 100%%), %d MiB of it redone; runs=%d; identical"
      % (before // MiB, after // MiB, 100.0 * after / (512 * MiB), st["progress"]["bytes_redone"] // MiB, st["runs"]))
PYEOF
