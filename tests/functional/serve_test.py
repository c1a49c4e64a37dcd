#!/usr/bin/env python3
"""Functional tests of `lsm-sync serve`, driven from outside the service:
a JSON-RPC client made of python3's socket and json only, real images made
and checked with qemu-img/qemu-io.

    serve_test.py SCENARIO WORKDIR     (SCENARIO: tasks, robust, security, restart)

Every check raises on failure (exit 1); "ok N - what" lines say what passed.
"""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

LSM = os.environ.get("LSM_SYNC", "lsm-sync")
MiB = 1 << 20
passed = 0


def ok(what):
    global passed
    passed += 1
    print("ok %d - %s" % (passed, what), flush=True)


def fail(what):
    print("not ok - " + what, flush=True)
    sys.exit(1)


def check(cond, what):
    if not cond:
        fail(what)
    ok(what)


def run(*args, **kw):
    return subprocess.run(list(args), check=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, **kw)


def qemu_compare(a, fa, b, fb):
    r = subprocess.run(["qemu-img", "compare", "-f", fa, "-F", fb, a, b],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True)
    return r.returncode == 0, r.stdout.strip()


def make_qcow2(path, size, writes, backing=None, backing_fmt=None):
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing:
        cmd += ["-b", backing, "-F", backing_fmt]
    run(*(cmd + [path, str(size)]))
    if writes:
        args = ["qemu-io", "-f", "qcow2"]
        for pat, off, ln in writes:
            args += ["-c", "write -P 0x%02x %d %d" % (pat, off, ln)]
        run(*(args + [path]))


class Client:
    """One connection; requests and replies are newline-delimited JSON."""

    def __init__(self, path, timeout=30):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""
        self.next_id = 1

    def send_raw(self, data):
        self.s.sendall(data)

    def read_reply(self):
        while b"\n" not in self.buf:
            chunk = self.s.recv(1 << 16)
            if not chunk:
                raise EOFError("the service closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line.decode())

    def call_full(self, method, params=None):
        i = self.next_id
        self.next_id += 1
        rq = {"jsonrpc": "2.0", "id": i, "method": method}
        if params is not None:
            rq["params"] = params
        self.send_raw((json.dumps(rq) + "\n").encode())
        rep = self.read_reply()
        if rep.get("id") != i or rep.get("jsonrpc") != "2.0":
            fail("reply %r does not answer request %d" % (rep, i))
        return rep

    def call(self, method, params=None):
        rep = self.call_full(method, params)
        if "error" in rep:
            fail("%s %r: error %r" % (method, params, rep["error"]))
        return rep["result"]

    def error(self, method, params=None):
        rep = self.call_full(method, params)
        if "error" not in rep:
            fail("%s %r: expected an error, got %r" % (method, params, rep))
        return rep["error"]

    def status(self, tid):
        return self.call("getTaskStatus", {"taskId": tid})

    def wait(self, tid, timeout=120, states=("finished", "failed", "aborted")):
        end = time.time() + timeout
        while time.time() < end:
            st = self.status(tid)
            if st["state"] in states:
                return st
            time.sleep(0.05)
        fail("task %s still %s after %ds" % (tid, self.status(tid)["state"], timeout))

    def close(self):
        self.s.close()


def die_with_parent():
    """The service gets SIGKILL when this script dies (a test killed by its
    time-out must not leave services running)."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG


class Service:
    def __init__(self, work, *extra):
        self.work = work
        self.sock = os.path.join(work, "s.sock")
        self.state = os.path.join(work, "state")
        self.extra = list(extra)
        self.proc = None
        self.log = open(os.path.join(work, "serve.log"), "a")

    def start(self):
        self.proc = subprocess.Popen([LSM, "serve", "--socket", self.sock, "--state-dir", self.state]
                                     + self.extra, stdout=self.log, stderr=self.log,
                                     preexec_fn=die_with_parent)
        end = time.time() + 10
        while time.time() < end:
            if self.proc.poll() is not None:
                fail("the service exited at start (%d): %s" % (self.proc.returncode, self.logtext()))
            try:
                c = Client(self.sock)
                c.call("ping")
                return c
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.05)
        fail("the service does not answer")

    def logtext(self):
        with open(os.path.join(self.work, "serve.log")) as f:
            return f.read()

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                fail("the service did not stop within 20 s of SIGTERM")
            return rc
        return None


def copy_params(src, dst, **kw):
    p = {"source": src, "sourceFormat": "qcow2", "destination": dst, "destinationFormat": "raw"}
    p.update(kw)
    return p


# ---------------------------------------------------------------- scenarios

def scenario_tasks(w):
    """8 concurrent copies under a global limit; stop; bandwidth; clear."""
    limit = 128 * MiB
    svc = Service(w, "--max-tasks", "16", "--max-bandwidth", str(limit), "--memory", "256")
    c = svc.start()
    try:
        caps = c.call("getCapabilities")
        check("copyVolume" in caps["methods"] and caps["maxTasks"] == 16, "getCapabilities lists the methods and the limits")

        # 8 sources of 48 MiB data each: 384 MiB under 128 MiB/s takes >= 2.6 s
        n, data = 8, 48 * MiB
        srcs = []
        for i in range(n):
            s = os.path.join(w, "src%d.qcow2" % i)
            make_qcow2(s, 256 * MiB, [(0x10 + i, 0, data // 2), (0x80 + i, 128 * MiB, data // 2)])
            srcs.append(s)
        t0 = time.time()
        ids = []
        for i, s in enumerate(srcs):
            fmt = "raw" if i % 2 == 0 else "qcow2"
            r = c.call("copyVolume", copy_params(s, os.path.join(w, "dst%d.%s" % (i, fmt)), destinationFormat=fmt))
            ids.append((r["taskId"], s, os.path.join(w, "dst%d.%s" % (i, fmt)), fmt))
        check(len(set(t for t, _, _, _ in ids)) == n, "8 copyVolume requests answered at once with 8 task ids")
        running = [st for st in c.call("getAllTasksStatuses")["tasks"] if st["state"] == "running"]
        check(len(running) == n, "getAllTasksStatuses: all 8 running together")
        for tid, s, d, fmt in ids:
            st = c.wait(tid, 120)
            if st["state"] != "finished":
                fail("task %s: %r" % (tid, st))
        elapsed = time.time() - t0
        total = n * data
        rate = total / elapsed
        ok("8 tasks finished in %.2f s: %.1f MiB/s aggregate under a %d MiB/s limit" % (elapsed, rate / MiB, limit // MiB))
        # the burst of the bucket (a tenth of a second) and the copy's requests in flight
        check(rate <= limit * 1.10, "aggregate rate within 10%% of the global limit (%.1f MiB/s)" % (rate / MiB))
        check(rate >= limit * 0.5, "aggregate rate not far below the limit")
        for tid, s, d, fmt in ids:
            same, out = qemu_compare(s, "qcow2", d, fmt)
            if not same:
                fail("%s differs from %s: %s" % (d, s, out))
        ok("qemu-img compare: all 8 destinations identical to their sources")
        st = c.status(ids[0][0])
        check(st["progress"]["percent"] == 100 and st["progress"]["bytes_done"] == st["progress"]["bytes_total"] > 0,
              "a finished task reports 100% and bytes_done == bytes_total")

        # stopTask within a second
        big = os.path.join(w, "big.qcow2")
        make_qcow2(big, 1024 * MiB, [(0x33, 0, 512 * MiB)])
        r = c.call("copyVolume", copy_params(big, os.path.join(w, "stop.raw"), bandwidth=32 * MiB))
        tid = r["taskId"]
        time.sleep(1.0)
        check(c.status(tid)["state"] == "running", "a throttled copy is running")
        t1 = time.time()
        r = c.call("stopTask", {"taskId": tid})
        check(r["state"] == "aborting", "stopTask answers at once with state aborting")
        st = c.wait(tid, 5)
        dt = time.time() - t1
        check(st["state"] == "aborted" and dt < 1.0, "the task is aborted %.2f s after stopTask" % dt)
        check(st["error"]["name"] in ("ECANCELED", "EINTR"), "an aborted task says why (%s)" % st["error"]["name"])
        journal = os.path.join(svc.state, "journals", tid + ".journal")
        check(os.path.exists(os.path.join(w, "stop.raw")) and os.path.exists(journal),
              "the stopped copy keeps its destination and journal, for the same request to continue it")
        e = c.error("stopTask", {"taskId": tid})
        check(e["code"] == -32005, "stopTask of an ended task: error -32005")
        c.call("clearTask", {"taskId": tid})
        check(not os.path.exists(os.path.join(w, "stop.raw")) and not os.path.exists(journal),
              "clearTask removes the destination the stopped copy created, and its journal")
        # the same request again runs the stopped task again
        r = c.call("copyVolume", copy_params(big, os.path.join(w, "stop.raw"), bandwidth=32 * MiB))
        check(r["taskId"] != tid, "a new request without a taskId is a new task")
        c.call("stopTask", {"taskId": r["taskId"]})
        c.wait(r["taskId"], 5)
        c.call("clearTask", {"taskId": r["taskId"]})
        p = copy_params(big, os.path.join(w, "again.raw"), bandwidth=32 * MiB, taskId="again")
        c.call("copyVolume", p)
        time.sleep(0.5)
        c.call("stopTask", {"taskId": "again"})
        check(c.wait("again", 5)["state"] == "aborted", "task 'again' stopped")
        p["bandwidth"] = 32 * MiB
        r = c.call("copyVolume", p)
        st = c.status("again")
        check(r["taskId"] == "again" and st["state"] == "running" and st["runs"] == 2 and "submitted again" in st["note"],
              "the same request for a stopped task runs it again (runs 2)")
        c.call("setTaskBandwidth", {"taskId": "again", "bandwidth": 0})
        st = c.wait("again", 60)
        same, out = qemu_compare(big, "qcow2", os.path.join(w, "again.raw"), "raw")
        check(st["state"] == "finished" and same, "and it finishes, identical")
        c.call("clearTask", {"taskId": "again"})

        # setTaskBandwidth within a second
        r = c.call("copyVolume", copy_params(big, os.path.join(w, "bw.raw"), bandwidth=16 * MiB))
        tid = r["taskId"]
        time.sleep(1.0)

        def rate_over(seconds):
            a = c.status(tid)["progress"]["bytes_written"]
            t = time.time()
            time.sleep(seconds)
            b = c.status(tid)["progress"]["bytes_written"]
            return (b - a) / (time.time() - t)

        slow = rate_over(1.5)
        check(slow <= 16 * MiB * 1.25, "at 16 MiB/s the task writes %.1f MiB/s" % (slow / MiB))
        r = c.call("setTaskBandwidth", {"taskId": tid, "bandwidth": 64 * MiB})
        check(r["bandwidth"] == 64 * MiB, "setTaskBandwidth answers the new limit")
        time.sleep(0.5)
        fast = rate_over(1.5)
        check(fast >= max(2 * slow, 64 * MiB * 0.5) and fast <= 64 * MiB * 1.25,
              "half a second after setTaskBandwidth 64 MiB/s the task writes %.1f MiB/s" % (fast / MiB))
        check(c.status(tid)["bandwidth"] == 64 * MiB, "getTaskStatus shows the new limit")
        c.call("setTaskBandwidth", {"taskId": tid, "bandwidth": 0})
        st = c.wait(tid, 60)
        check(st["state"] == "finished", "after setTaskBandwidth 0 (unlimited) the copy finishes")
        same, out = qemu_compare(big, "qcow2", os.path.join(w, "bw.raw"), "raw")
        check(same, "its destination is identical: " + out)

        # clearTask
        rec = os.path.join(svc.state, "tasks", tid + ".json")
        check(os.path.exists(rec), "a task has its record in the state directory")
        r = c.call("clearTask", {"taskId": tid})
        check(r["taskId"] == tid, "clearTask answers the task id")
        check(not os.path.exists(rec), "clearTask removes the record")
        e = c.error("getTaskStatus", {"taskId": tid})
        check(e["code"] == -32001, "a cleared task is unknown (-32001)")
        r = c.call("copyVolume", copy_params(big, os.path.join(w, "clr.raw"), bandwidth=8 * MiB))
        e = c.error("clearTask", {"taskId": r["taskId"]})
        check(e["code"] == -32005, "clearTask of a running task: error -32005")
        c.call("stopTask", {"taskId": r["taskId"]})
        c.wait(r["taskId"], 5)
        c.call("clearTask", {"taskId": r["taskId"]})
        for tid, s, d, fmt in ids:
            c.call("clearTask", {"taskId": tid})
        check(c.call("getAllTasksStatuses")["tasks"] == [], "every task cleared: none listed")
        check(os.listdir(os.path.join(svc.state, "tasks")) == [], "cleared tasks leave nothing in the state directory")

        # the same taskId again: a retry gets the same task, other params are refused
        p = copy_params(srcs[0], os.path.join(w, "retry.raw"), taskId="retry-1")
        r1 = c.call("copyVolume", p)
        r2 = c.call("copyVolume", p)
        check(r1["taskId"] == r2["taskId"] == "retry-1", "a retried request with its taskId gets the same task")
        e = c.error("copyVolume", copy_params(srcs[1], os.path.join(w, "retry2.raw"), taskId="retry-1"))
        check(e["code"] == -32004, "the same taskId with other parameters: error -32004")
        c.wait("retry-1")

        # checksumVolume
        r = c.call("checksumVolume", {"volume": srcs[0], "format": "qcow2"})
        st = c.wait(r["taskId"])
        ref = run(LSM, "checksum", "-f", "qcow2", "--output=json", srcs[0]).stdout
        check(st["state"] == "finished" and st["result"]["checksum"] == json.loads(ref)["checksum"],
              "checksumVolume gives the checksum of `lsm-sync checksum`")
        r = c.call("checksumVolume", {"volume": big, "format": "qcow2", "bandwidth": 32 * MiB})
        time.sleep(1.0)
        st = c.status(r["taskId"])
        p = st["progress"]
        check(st["state"] == "running" and 0 < p["bytes_done"] < p["bytes_total"],
              "a throttled checksumVolume reports progress (%.1f%%)" % p["percent"])
        t1 = time.time()
        c.call("stopTask", {"taskId": r["taskId"]})
        st = c.wait(r["taskId"], 5)
        check(st["state"] == "aborted" and time.time() - t1 < 1.0, "and stops within a second")
        r = c.call("copyVolume", copy_params(srcs[1], os.path.join(w, "ck.raw"), checksum="sha256"))
        st = c.wait(r["taskId"])
        ref = json.loads(run(LSM, "checksum", "-f", "qcow2", "--output=json", srcs[1]).stdout)["checksum"]
        check(st["result"]["checksum"]["checksum"] == ref, "copyVolume with checksum: the digest of the source")

        # the command-line client
        out = run(LSM, "task", "--socket", svc.sock, "list").stdout
        check(r["taskId"] in out and "finished" in out, "lsm-sync task list shows the tasks")
        out = json.loads(run(LSM, "task", "--socket", svc.sock, "--output=json", "status", r["taskId"]).stdout)
        check(out["state"] == "finished", "lsm-sync task --output=json status")
        r2 = c.call("copyVolume", copy_params(srcs[2], os.path.join(w, "cli.raw"), bandwidth=8 * MiB))
        run(LSM, "task", "--socket", svc.sock, "bandwidth", r2["taskId"], "0")
        p = run(LSM, "task", "--socket", svc.sock, "wait", r2["taskId"])
        check("finished" in p.stdout, "lsm-sync task bandwidth and wait")
        run(LSM, "task", "--socket", svc.sock, "clear", r2["taskId"])
        q = subprocess.run([LSM, "task", "--socket", svc.sock, "status", r2["taskId"]],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        check(q.returncode == 1 and q.stderr.count("\n") == 1, "lsm-sync task status of a cleared task: one line, exit 1")

        # cloneImageStructure
        base = os.path.join(w, "dom", "base.raw")
        os.makedirs(os.path.dirname(base), exist_ok=True)
        run("qemu-img", "create", "-q", "-f", "raw", base, str(64 * MiB))
        top = os.path.join(w, "dom", "top.qcow2")
        make_qcow2(top, 64 * MiB, [(0x44, 0, MiB)], backing="base.raw", backing_fmt="raw")
        os.makedirs(os.path.join(w, "dom2"))
        r = c.call("cloneImageStructure", {"source": top, "format": "qcow2", "destinationDir": os.path.join(w, "dom2")})
        st = c.wait(r["taskId"])
        check(st["state"] == "finished" and len(st["result"]["volumes"]) == 2, "cloneImageStructure made the chain's 2 volumes")
        info = json.loads(run("qemu-img", "info", "--output=json", os.path.join(w, "dom2", "top.qcow2")).stdout)
        check(info.get("backing-filename") == "base.raw", "the clone's top has the same backing name")
        # the same with an explicit layout (a job description): other names, another directory
        d3 = os.path.join(w, "dom3")
        os.makedirs(d3)
        layout = [{"source": {"path": top, "format": "qcow2"},
                   "destination": {"path": os.path.join(d3, "leaf.qcow2"), "format": "qcow2"}},
                  {"source": {"path": base, "format": "raw"},
                   "destination": {"path": os.path.join(d3, "root.raw"), "format": "raw"}}]
        r = c.call("cloneImageStructure", {"volumes": layout})
        st = c.wait(r["taskId"])
        check(st["state"] == "finished" and [v["path"] for v in st["result"]["volumes"]] ==
              [os.path.join(d3, "leaf.qcow2"), os.path.join(d3, "root.raw")],
              "cloneImageStructure with \"volumes\": the layout's names")
        r = c.call("syncImageData", {"volumes": layout, "syncType": "ALL", "generation": 0})
        st = c.wait(r["taskId"])
        same, out = qemu_compare(top, "qcow2", os.path.join(d3, "leaf.qcow2"), "qcow2")
        check(st["state"] == "finished" and same and st["result"]["generation"] == 1,
              "syncImageData with \"volumes\": identical chain, generation of the top 1")
        bad = [dict(layout[0]), layout[1]]
        bad[0] = {"source": {"path": top}, "destination": layout[0]["destination"]}
        e = c.error("syncImageData", {"volumes": bad, "syncType": "ALL"})
        check(e["code"] == -32602 and "volumes[0]" in e["message"], "a layout without a format: -32602 naming the entry")
        e = c.error("syncImageData", {"volumes": layout, "syncType": "ALL", "source": top})
        check(e["code"] == -32602, "\"volumes\" with \"source\": -32602")
    finally:
        rc = svc.stop()
    check(rc == 0, "SIGTERM stops the service with exit 0")
    check(not os.path.exists(svc.sock), "the service removes its socket")

    # socket activation: the listening socket from LISTEN_FDS (systemd-socket-activate)
    sa = shutil.which("systemd-socket-activate")
    if sa:
        asock = os.path.join(w, "act.sock")
        p = subprocess.Popen([sa, "-l", asock, LSM, "serve", "--state-dir", os.path.join(w, "state2")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        try:
            for _ in range(100):
                if os.path.exists(asock):
                    break
                time.sleep(0.05)
            k = Client(asock)
            check(k.call("ping")["version"], "socket activation: the service answers on the socket it was given")
            caps = k.call("getCapabilities")
            check(caps["persistent"], "and keeps its records")
            k.close()
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=20)
    else:
        print("# systemd-socket-activate not installed: socket activation not tried")
    # the units as shipped
    an = shutil.which("systemd-analyze")
    unit_dir = os.path.join(os.environ.get("BUILD_DIR", ""), "serve")
    if an and os.path.exists(os.path.join(unit_dir, "lsm-sync.service")):
        vd = os.path.join(w, "units")
        os.makedirs(vd)
        for u in ("lsm-sync.service", "lsm-sync.socket"):
            src = os.path.join(unit_dir if u.endswith("service") else os.environ["SOURCE_DIR"] + "/serve", u)
            text = open(src).read()
            text = text.replace(text.split("ExecStart=")[1].split()[0], LSM) if "ExecStart=" in text else text
            open(os.path.join(vd, u), "w").write(text)
        r = subprocess.run([an, "verify", os.path.join(vd, "lsm-sync.socket"), os.path.join(vd, "lsm-sync.service")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        problems = [l for l in r.stdout.splitlines() if "lsm-sync" in l and "Command 'man " not in l]
        check(not problems, "systemd-analyze verify: the units are clean (%s)" % "; ".join(problems))
    else:
        print("# systemd-analyze not installed: the units not verified")


def scenario_robust(w):
    """Malformed, oversized and random requests while tasks run."""
    svc = Service(w, "--max-request", "65536", "--stall-timeout", "2")
    c = svc.start()
    try:
        srcs, ids = [], []
        for i in range(2):
            s = os.path.join(w, "src%d.qcow2" % i)
            make_qcow2(s, 256 * MiB, [(0x20 + i, 0, 64 * MiB)])
            d = os.path.join(w, "dst%d.raw" % i)
            r = c.call("copyVolume", copy_params(s, d, bandwidth=8 * MiB))
            ids.append((r["taskId"], s, d))
        bad = Client(svc.sock)
        fixed = [
            (b"{", -32700), (b"not json", -32700), (b'{"jsonrpc":"2.0","id":1,"method":"ping"} x', -32700),
            (b"[]", -32600), (b"42", -32600), (b'"ping"', -32600), (b'{"id":1,"method":"ping"}', -32600),
            (b'{"jsonrpc":"2.0","id":1}', -32600), (b'{"jsonrpc":"2.0","id":{},"method":"ping"}', -32600),
            (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":[1,2]}', -32600),
            (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', -32600),
            (b'{"jsonrpc":"2.0","id":1,"method":"noSuchMethod"}', -32601),
            (b'{"jsonrpc":"2.0","id":1,"method":"getTaskStatus","params":{}}', -32602),
            (b'{"jsonrpc":"2.0","id":1,"method":"getTaskStatus","params":{"taskId":5}}', -32602),
            (b'{"jsonrpc":"2.0","id":1,"method":"getTaskStatus","params":{"taskId":"x","more":1}}', -32602),
            (b'{"jsonrpc":"2.0","id":1,"method":"setTaskBandwidth","params":{"taskId":"x","bandwidth":-5}}', -32602),
            (b'{"jsonrpc":"2.0","id":1,"method":"setTaskBandwidth","params":{"taskId":"x","bandwidth":"fast"}}', -32602),
            (b'{"jsonrpc":"2.0","id":1,"method":"copyVolume","params":{"source":"/x"}}', -32602),
            (b'{"jsonrpc":"2.0","id":1,"method":"copyVolume","params":{"source":"rel","sourceFormat":"raw",'
             b'"destination":"/tmp/x","destinationFormat":"raw"}}', -32602),
            (b'{"jsonrpc":"2.0","id":1,"method":"copyVolume","params":{"source":"/dev/null","sourceFormat":"vmdk",'
             b'"destination":"/tmp/x","destinationFormat":"raw"}}', -32602),
            (b'{"jsonrpc":"2.0","id":1,"method":"copyVolume","params":{"source":"/no/such","sourceFormat":"raw",'
             b'"destination":"/tmp/x","destinationFormat":"raw"}}', -32000),
            (b'{"jsonrpc":"2.0","id":1,"method":"copyVolume","params":{"taskId":"../../etc/x"}}', -32602),
            (b'\xff\xfe\x00garbage', -32700),
        ]
        for line, code in fixed:
            bad.send_raw(line + b"\n")
            rep = bad.read_reply()
            if rep.get("error", {}).get("code") != code:
                fail("%r: %r, expected code %d" % (line, rep, code))
        ok("%d malformed requests: each answered with its JSON-RPC error code" % len(fixed))
        # a batch (JSON array): batches are not supported, so the whole array is
        # one Invalid Request: one reply (an object, not an array), id null,
        # and none of its requests is carried out
        before = len(c.call("getAllTasksStatuses")["tasks"])
        batch = [{"jsonrpc": "2.0", "id": 7, "method": "copyVolume",
                  "params": copy_params(ids[0][1], os.path.join(w, "batch.raw"))},
                 {"jsonrpc": "2.0", "id": 8, "method": "ping"}]
        bad.send_raw(json.dumps(batch).encode() + b"\n")
        rep = bad.read_reply()
        check(isinstance(rep, dict) and rep.get("jsonrpc") == "2.0" and rep.get("id", 0) is None
              and rep.get("error", {}).get("code") == -32600 and "result" not in rep,
              "a batch of two requests: one -32600 Invalid Request reply with id null (%r)" % rep)
        nxt = bad.call_full("ping")
        check(nxt.get("id") is not None and "result" in nxt,
              "the next reply on the connection is the next request's (the batch got exactly one)")
        check(len(c.call("getAllTasksStatuses")["tasks"]) == before and not os.path.exists(os.path.join(w, "batch.raw")),
              "and nothing in the batch was carried out (no task, no destination)")
        # oversized: one answer, then the connection goes on
        bad.send_raw(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"' + b"a" * 300000 + b'"}}\n')
        rep = bad.read_reply()
        check(rep["error"]["code"] == -32600 and "larger" in rep["error"]["message"],
              "a 300 kB request (limit 64 kB): error -32600")
        check(bad.call("ping")["version"], "the same connection answers the next request")
        # random requests: bytes, and JSON of random shape
        rnd = random.Random(1234)
        methods = ["ping", "getTaskStatus", "copyVolume", "stopTask", "clearTask", "setTaskBandwidth",
                   "syncImageData", "checksumVolume", "cloneImageStructure", "getAllTasksInfo", "x" * 40]

        def rvalue(depth=0):
            k = rnd.randrange(8 if depth < 3 else 5)
            if k == 0:
                return rnd.randrange(-2**40, 2**40)
            if k == 1:
                return rnd.choice(["", "/etc/passwd", "..", "raw", "qcow2", "ALL", "\u00e9\u4e2d", "a" * 300])
            if k == 2:
                return rnd.random() * 1e6
            if k == 3:
                return rnd.choice([True, False, None])
            if k == 4:
                return ids[0][0]
            if k == 5:
                return [rvalue(depth + 1) for _ in range(rnd.randrange(4))]
            keys = ["taskId", "source", "destination", "bandwidth", "sourceFormat", "format", "volume", "z"]
            return {rnd.choice(keys): rvalue(depth + 1) for _ in range(rnd.randrange(5))}

        answered = 0
        for i in range(300):
            kind = rnd.randrange(3)
            if kind == 0:
                line = bytes(rnd.randrange(1, 256) for _ in range(rnd.randrange(1, 200))).replace(b"\n", b" ")
                if not line.strip():
                    line = b"?"
            else:
                rq = {"jsonrpc": "2.0", "id": i, "method": rnd.choice(methods)}
                if kind == 2 or rnd.random() < 0.5:
                    rq["params"] = rvalue()
                if rnd.random() < 0.2:
                    rq[rnd.choice(["jsonrpc", "method", "id"])] = rvalue(2)
                line = json.dumps(rq).encode()
            bad.send_raw(line + b"\n")
            rep = bad.read_reply()
            if "error" in rep:
                e = rep["error"]
                if not isinstance(e.get("code"), int) or not isinstance(e.get("message"), str):
                    fail("%r: malformed error %r" % (line, rep))
            else:
                # the few random requests that are valid must be harmless reads
                m = json.loads(line.decode()).get("method")
                if m not in ("ping", "getAllTasksInfo", "getTaskStatus"):
                    fail("%r was accepted: %r" % (line, rep))
            answered += 1
        check(answered == 300, "300 random requests: every one answered, errors well formed")
        stopped = [t for t, _, _ in ids if c.status(t)["state"] not in ("running", "finished")]
        check(not stopped, "the running tasks were not disturbed")
        # a client that sends half a request and goes away
        half = Client(svc.sock)
        half.send_raw(b'{"jsonrpc":"2.0","id":1,"met')
        half.close()
        check(c.call("ping")["version"], "a client gone mid-request does not disturb the service")
        c.call("setTaskBandwidth", {"taskId": ids[0][0], "bandwidth": 0})
        c.call("setTaskBandwidth", {"taskId": ids[1][0], "bandwidth": 0})
        for tid, s, d in ids:
            st = c.wait(tid)
            if st["state"] != "finished":
                fail("task %s: %r" % (tid, st))
            same, out = qemu_compare(s, "qcow2", d, "raw")
            if not same:
                fail("%s: %s" % (d, out))
        ok("both tasks finished, destinations identical (qemu-img compare)")
        # a task that cannot be recorded is refused, not run unrecorded
        tasks_dir = os.path.join(svc.state, "tasks")
        if os.geteuid() == 0 and shutil.which("chattr") and \
                subprocess.run(["chattr", "+i", tasks_dir], stderr=subprocess.DEVNULL).returncode == 0:
            try:
                e = c.error("copyVolume", copy_params(ids[0][1], os.path.join(w, "unrecorded.raw")))
            finally:
                subprocess.run(["chattr", "-i", tasks_dir], check=True)
            check(e["code"] == -32000 and "cannot record" in e["message"]
                  and not os.path.exists(os.path.join(w, "unrecorded.raw")),
                  "a state directory that cannot be written: the task is refused, nothing copied")
            check(len(c.call("getAllTasksStatuses")["tasks"]) == 2, "and not listed")
        else:
            print("# chattr +i not possible here: the unwritable state directory is not tried")
        # a backing file without a format in its image is not probed
        nb = os.path.join(w, "nofmt-base.raw")
        run("qemu-img", "create", "-q", "-f", "raw", nb, str(4 * MiB))
        nt = os.path.join(w, "nofmt-top.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", nb, "-F", "raw", nt, str(4 * MiB))
        d = bytearray(open(nt, "rb").read())
        i = d.index(b"\xe2\x79\x2a\xca", 72, 65536)     # the backing format extension
        d[i:i + 4] = bytes(4)                               # -> the end of the extensions
        open(nt, "wb").write(d)
        for method, params in (("copyVolume", copy_params(nt, os.path.join(w, "nofmt.raw"))),
                               ("checksumVolume", {"volume": nt, "format": "qcow2"})):
            r = c.call(method, params)
            st = c.wait(r["taskId"])
            if not (st["state"] == "failed" and st["error"]["name"] == "EINVAL" and "no format" in st["error"]["message"]):
                fail("%s of a chain whose backing has no format: %r" % (method, st))
        check(not os.path.exists(os.path.join(w, "nofmt.raw")),
              "a backing file without a format in the image: copy and checksum fail with EINVAL, nothing created")
        # liveness: a task that makes no progress fails with a reason
        stall_src = os.path.join(w, "stall.qcow2")
        make_qcow2(stall_src, 64 * MiB, [(0x70, 0, 16 * MiB)])
        r = c.call("checksumVolume", {"volume": stall_src, "format": "qcow2", "bandwidth": 1})
        t1 = time.time()
        st = c.wait(r["taskId"], 10)
        check(st["state"] == "failed" and st["error"]["name"] == "ETIMEDOUT" and "no progress" in st["error"]["message"],
              "a task held at 1 byte/s fails after --stall-timeout 2 with ETIMEDOUT (%.1f s)" % (time.time() - t1))
        # many clients at once
        cs = [Client(svc.sock) for _ in range(50)]
        for k in cs:
            k.send_raw(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
        check(all("result" in k.read_reply() for k in cs), "50 clients connected at once all answered")
        for k in cs:
            k.close()
    finally:
        svc.stop()


def scenario_security(w):
    """Other uids, domain roots (symlinks, backing files), generations."""
    dom = os.path.join(w, "dom")
    out = os.path.join(w, "outside")
    os.makedirs(dom)
    os.makedirs(out)
    os.chmod(w, 0o755)
    svc = Service(w, "--domain-root", dom)
    c = svc.start()
    try:
        st = os.stat(svc.sock)
        check(st.st_mode & 0o777 == 0o600, "the socket is mode 0600")
        nobody_client = (
            "import socket,json,sys\n"
            "s=socket.socket(socket.AF_UNIX)\n"
            "try:\n"
            "  s.connect(sys.argv[1])\n"
            "except PermissionError:\n"
            "  print('EACCES'); sys.exit(0)\n"
            "d=b''\n"
            "try:\n"
            "  s.sendall(b'{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\\n')\n"
            "except (ConnectionResetError, BrokenPipeError):\n"
            "  pass\n"
            "try:\n"
            "  while True:\n"
            "    x=s.recv(4096)\n"
            "    if not x: break\n"
            "    d+=x\n"
            "    if b'\\n' in d: break\n"
            "except ConnectionResetError:\n"
            "  pass\n"
            "print(d.decode().strip() or 'CLOSED')\n")
        as_nobody = ["timeout", "20", "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "python3", "-c", nobody_client, svc.sock]
        r = run(*as_nobody)
        check(r.stdout.strip() == "EACCES", "uid nobody cannot connect to the 0600 socket")
        os.chmod(svc.sock, 0o666)       # let it connect: the service's own check must refuse it
        r = run(*as_nobody)
        rep = r.stdout.strip()
        check('"code":-32003' in rep and '"result"' not in rep,
              "uid nobody on a 0666 socket: refused by the peer credential check with -32003 (%s)" % rep[:80])
        check("uid 65534 refused" in svc.logtext(), "the service logs the refused uid")
        os.chmod(svc.sock, 0o600)
        # --group: 0660 and that group; --allow-uid: nobody may then talk to it
        w2 = os.path.join(w, "second")
        os.makedirs(w2)
        os.chmod(w2, 0o755)
        svc2 = Service(w2, "--group", "nogroup", "--allow-uid", "nobody")
        svc2.start().close()
        try:
            st = os.stat(svc2.sock)
            import grp
            check(st.st_mode & 0o777 == 0o660 and st.st_gid == grp.getgrnam("nogroup").gr_gid,
                  "--group nogroup: the socket is 0660, group nogroup")
            r = run(*(as_nobody[:-1] + [svc2.sock]))
            check('"result"' in r.stdout and '"version"' in r.stdout, "--allow-uid nobody: uid nobody in group nogroup is answered")
        finally:
            svc2.stop()

        # domain roots
        src_in = os.path.join(dom, "src.qcow2")
        make_qcow2(src_in, 64 * MiB, [(0x11, 0, 4 * MiB)])
        src_out = os.path.join(out, "src.qcow2")
        make_qcow2(src_out, 64 * MiB, [(0x12, 0, 4 * MiB)])
        e = c.error("copyVolume", copy_params(src_out, os.path.join(dom, "d1.raw")))
        check(e["code"] == -32003, "a source outside the domain roots: error -32003")
        e = c.error("copyVolume", copy_params(src_in, os.path.join(out, "d2.raw")))
        check(e["code"] == -32003 and not os.path.exists(os.path.join(out, "d2.raw")),
              "a destination outside the domain roots: error -32003, nothing created")
        link = os.path.join(dom, "link.qcow2")
        os.symlink(src_out, link)
        e = c.error("copyVolume", copy_params(link, os.path.join(dom, "d3.raw")))
        check(e["code"] == -32003 and "outside" in e["message"], "a symlink inside a root to a file outside: refused")
        dlink = os.path.join(dom, "dlink")
        os.symlink(out, dlink)
        e = c.error("copyVolume", copy_params(src_in, os.path.join(dlink, "d4.raw")))
        check(e["code"] == -32003 and not os.path.exists(os.path.join(out, "d4.raw")),
              "a destination through a symlinked directory outside: refused")
        dangling = os.path.join(dom, "dangling.raw")
        os.symlink(os.path.join(out, "new.raw"), dangling)
        e = c.error("copyVolume", copy_params(src_in, dangling))
        check(e["code"] in (-32003, -32000) and not os.path.exists(os.path.join(out, "new.raw")),
              "a dangling symlink as destination: refused, nothing created outside")
        top = os.path.join(dom, "top.qcow2")
        make_qcow2(top, 64 * MiB, [(0x13, MiB, MiB)], backing=src_out, backing_fmt="qcow2")
        r = c.call("copyVolume", copy_params(top, os.path.join(dom, "d5.raw")))
        st = c.wait(r["taskId"])
        check(st["state"] == "failed" and st["error"]["name"] == "EACCES" and "backing" in st["error"]["message"],
              "a chain whose backing file is outside the roots: the task fails with EACCES naming the backing file")
        check(not os.path.exists(os.path.join(dom, "d5.raw")), "and nothing was written")
        r = c.call("checksumVolume", {"volume": top, "format": "qcow2"})
        st = c.wait(r["taskId"])
        check(st["state"] == "failed" and st["error"]["name"] == "EACCES", "checksumVolume of that chain: EACCES too")
        top2 = os.path.join(dom, "top2.qcow2")
        make_qcow2(top2, 64 * MiB, [(0x14, MiB, MiB)], backing="link.qcow2", backing_fmt="qcow2")
        r = c.call("copyVolume", copy_params(top2, os.path.join(dom, "d6.raw")))
        st = c.wait(r["taskId"])
        check(st["state"] == "failed" and st["error"]["name"] == "EACCES",
              "a backing file that is a symlink inside the root to a file outside: EACCES")
        top3 = os.path.join(dom, "top3.qcow2")
        make_qcow2(top3, 64 * MiB, [(0x15, MiB, MiB)], backing="src.qcow2", backing_fmt="qcow2")
        r = c.call("copyVolume", copy_params(top3, os.path.join(dom, "d7.raw")))
        st = c.wait(r["taskId"])
        same, o = qemu_compare(top3, "qcow2", os.path.join(dom, "d7.raw"), "raw")
        check(st["state"] == "finished" and same, "a chain inside the roots copies, identical")

        e = c.error("syncImageData", {"syncType": "ALL", "volumes": [
            {"source": {"path": src_in, "format": "qcow2"}, "destination": {"path": src_out, "format": "qcow2"}}]})
        check(e["code"] == -32003, "a layout (\"volumes\") with a destination outside the roots: -32003")
        # generations
        gfile = os.path.join(dom, "g.raw.generation")
        r = c.call("copyVolume", copy_params(src_in, os.path.join(dom, "g.raw"), generation=0))
        st = c.wait(r["taskId"])
        check(st["state"] == "finished" and st["result"]["generation"] == 1, "copy with generation 0: finished, generation now 1")
        check(open(gfile).read() == "1\n", "the generation file beside the volume holds 1")
        e = c.error("copyVolume", copy_params(src_in, os.path.join(dom, "g.raw"), create=False, generation=0))
        check(e["code"] == -32002 and "generation 1" in e["message"], "expected generation 0 but it is 1: error -32002")
        r = c.call("copyVolume", copy_params(src_in, os.path.join(dom, "g.raw"), create=False, generation=1))
        st = c.wait(r["taskId"])
        check(st["state"] == "finished" and open(gfile).read() == "2\n", "expected generation 1: finished, now 2")
        e = c.error("copyVolume", copy_params(src_in, os.path.join(dom, "g.raw"), create=False, generation=7))
        check(e["code"] == -32002, "generation 7 on a volume at 2: refused")
        # two tasks racing on one generation: one wins
        slow_src = os.path.join(dom, "slow.qcow2")
        make_qcow2(slow_src, 64 * MiB, [(0x16, 0, 12 * MiB)])
        r1 = c.call("copyVolume", copy_params(slow_src, os.path.join(dom, "g.raw"), create=False, generation=2,
                                              bandwidth=4 * MiB))
        r2 = c.call("copyVolume", copy_params(src_in, os.path.join(dom, "g2.raw"), generation=0))
        c.wait(r2["taskId"])
        check(c.status(r1["taskId"])["state"] == "running", "(the first copy is still running)")
        os.replace(os.path.join(dom, "g2.raw.generation"), gfile)   # another writer bumped g.raw to 1
        st = c.wait(r1["taskId"])
        check(st["state"] == "failed" and st["error"]["name"] == "ESTALE",
              "a generation changed while the task ran: the task fails with ESTALE at the end")
        check(open(gfile).read() == "1\n", "and the generation is not incremented")
    finally:
        svc.stop()


def scenario_restart(w):
    """SIGKILL the service mid-copy; restart; the tasks are listed and complete,
    copies from their journals."""
    interval = 8 * MiB
    # What a resume may redo (docs/resume.md): one interval, plus the
    # requests in flight when the checkpoint began draining (a copy's
    # default 16 of 1 MiB) and the one that crossed the interval.  The
    # status's bytes_redone is the copy's own count since it is taken from
    # the copy's result (it read 0 before, so this bound went untested).
    redo_bound = interval + 17 * MiB
    svc = Service(w, "--checkpoint-interval", "8M,0.25")
    c = svc.start()
    src = os.path.join(w, "src.qcow2")
    make_qcow2(src, 1024 * MiB, [(0x51, 0, 96 * MiB), (0x52, 512 * MiB, 96 * MiB)])
    existing = os.path.join(w, "existing.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", existing, str(1024 * MiB))
    done_before = os.path.join(w, "done.raw")
    rd = c.call("copyVolume", copy_params(src, done_before, taskId="done-before"))
    c.wait("done-before")
    r1 = c.call("copyVolume", copy_params(src, os.path.join(w, "new.raw"), bandwidth=48 * MiB, taskId="kill-new"))
    r2 = c.call("copyVolume", copy_params(src, existing, destinationFormat="qcow2", create=False,
                                          bandwidth=48 * MiB, taskId="kill-existing"))
    r3 = c.call("copyVolume", copy_params(src, os.path.join(w, "stopped.raw"), bandwidth=8 * MiB, taskId="stopped"))
    time.sleep(1.5)
    c.call("stopTask", {"taskId": "stopped"})
    c.wait("stopped", 5)
    p1 = c.status("kill-new")["progress"]
    p2 = c.status("kill-existing")["progress"]
    check(c.status("kill-new")["state"] == "running" and 0 < p1["bytes_done"] < p1["bytes_total"],
          "mid-copy: %d of %d bytes" % (p1["bytes_done"], p1["bytes_total"]))
    svc.kill()
    ok("the service is killed with SIGKILL")
    c2 = svc.start()
    tasks = {t["taskId"]: t for t in c2.call("getAllTasksStatuses")["tasks"]}
    check(set(tasks) == {"done-before", "kill-new", "kill-existing", "stopped"}, "after the restart every task is listed")
    check(tasks["done-before"]["state"] == "finished" and tasks["stopped"]["state"] == "aborted",
          "ended tasks keep their state (finished, aborted)")
    check(tasks["kill-new"]["state"] == "running" and tasks["kill-new"]["runs"] == 2,
          "the interrupted copies run again (runs: 2)")
    check("continued from its journal" in tasks["kill-new"].get("note", ""), "the status says the copy continued from its journal")
    c2.call("setTaskBandwidth", {"taskId": "kill-new", "bandwidth": 0})
    c2.call("setTaskBandwidth", {"taskId": "kill-existing", "bandwidth": 0})
    data = 192 * MiB
    for tid, d, f, before in (("kill-new", os.path.join(w, "new.raw"), "raw", p1),
                              ("kill-existing", existing, "qcow2", p2)):
        st = c2.wait(tid, 120)
        if st["state"] != "finished":
            fail("%s after restart: %r" % (tid, st))
        same, out = qemu_compare(src, "qcow2", d, f)
        if not same:
            fail("%s: %s" % (d, out))
        again = st["progress"]["bytes_written"]
        left = data - before["bytes_written"]
        check(again <= left + redo_bound and st["progress"]["bytes_redone"] <= redo_bound,
              "%s: %d MiB written before the kill, %d MiB after the restart (%d MiB were left; redone %d MiB; "
              "one checkpoint interval: 8 MiB, with the requests in flight 25 MiB)" % (tid, before["bytes_written"] // MiB, again // MiB, left // MiB,
                                                   st["progress"]["bytes_redone"] // MiB))
    ok("both interrupted copies finished after the restart, identical to the source (qemu-img compare)")
    check(os.listdir(os.path.join(svc.state, "journals")) == [] or
          set(os.listdir(os.path.join(svc.state, "journals"))) == {"stopped.journal"},
          "a finished copy's journal is gone")
    # the stopped copy kept its destination and journal: the same request continues it
    check(os.path.exists(os.path.join(w, "stopped.raw")), "a copy stopped after a checkpoint keeps its destination")
    r3 = c2.call("copyVolume", copy_params(src, os.path.join(w, "stopped.raw"), bandwidth=8 * MiB, taskId="stopped"))
    st = c2.status("stopped")
    check(st["state"] == "running" and st["runs"] == 2, "the same request for the stopped task runs it again")
    c2.call("setTaskBandwidth", {"taskId": "stopped", "bandwidth": 0})
    st = c2.wait("stopped", 60)
    same, out = qemu_compare(src, "qcow2", os.path.join(w, "stopped.raw"), "raw")
    check(st["state"] == "finished" and same and st["progress"]["bytes_written"] < data,
          "it continues from its journal (%d MiB written) and finishes identical" % (st["progress"]["bytes_written"] // MiB))
    # a stopped copy cleared: its destination and journal go
    c2.call("copyVolume", copy_params(src, os.path.join(w, "cleared.raw"), bandwidth=16 * MiB, taskId="cleared"))
    time.sleep(1.0)
    c2.call("stopTask", {"taskId": "cleared"})
    c2.wait("cleared", 5)
    had = os.path.exists(os.path.join(w, "cleared.raw"))
    c2.call("clearTask", {"taskId": "cleared"})
    check(had and not os.path.exists(os.path.join(w, "cleared.raw"))
          and "cleared.journal" not in os.listdir(os.path.join(svc.state, "journals")),
          "clearTask of a stopped copy removes the destination it created and its journal")
    chk = subprocess.run(["qemu-img", "check", existing], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    check(chk.returncode == 0, "the qcow2 destination is clean (qemu-img check)")
    # a destination that appeared under the name of a created one is not replaced
    r = c2.call("copyVolume", copy_params(src, os.path.join(w, "race.raw"), bandwidth=16 * MiB, taskId="race"))
    time.sleep(1.0)
    svc.kill()
    os.unlink(os.path.join(w, "race.raw"))
    with open(os.path.join(w, "race.raw"), "w") as f:
        f.write("someone else's file\n")
    c3 = svc.start()
    st = c3.wait("race", 20)
    check(st["state"] == "failed" and st["error"]["name"] in ("EEXIST", "ESTALE"),
          "after a restart, a destination that is not the file the task created is left alone (%s: %s)"
          % (st["error"]["name"], st["error"]["message"][:100]))
    check(open(os.path.join(w, "race.raw")).read() == "someone else's file\n", "and its content is untouched")
    # SIGKILL mid-sync: a 3-layer chain, its structure cloned by the service
    sd, dd = os.path.join(w, "sd"), os.path.join(w, "dd")
    os.makedirs(sd)
    os.makedirs(dd)
    base = os.path.join(sd, "base.raw")
    run("qemu-img", "create", "-q", "-f", "raw", base, str(512 * MiB))
    run("qemu-io", "-f", "raw", "-c", "write -P 0x61 0 64M", base)
    mid = os.path.join(sd, "mid.qcow2")
    make_qcow2(mid, 512 * MiB, [(0x62, 32 * MiB, 64 * MiB)], backing="base.raw", backing_fmt="raw")
    top = os.path.join(sd, "top.qcow2")
    make_qcow2(top, 512 * MiB, [(0x63, 256 * MiB, 64 * MiB)], backing="mid.qcow2", backing_fmt="qcow2")
    r = c3.call("cloneImageStructure", {"source": top, "format": "qcow2", "destinationDir": dd})
    check(c3.wait(r["taskId"])["state"] == "finished", "cloneImageStructure of a 3-layer chain")
    dtop = os.path.join(dd, "top.qcow2")
    r = c3.call("syncImageData", {"source": top, "destination": dtop, "syncType": "ALL", "format": "qcow2",
                                  "bandwidth": 32 * MiB, "generation": 0, "taskId": "sync-kill"})
    # a checksum running at the kill: it has no durable state, so it restarts
    have_sum = "checksumVolume" in c3.call("getCapabilities")["methods"]
    if have_sum:
        c3.call("checksumVolume", {"volume": src, "format": "qcow2", "bandwidth": 8 * MiB, "taskId": "sum-kill"})
    time.sleep(1.5)
    st = c3.status("sync-kill")
    check(st["state"] == "running" and 0 < st["progress"]["bytes_written"], "mid-sync: %d bytes written" % st["progress"]["bytes_written"])
    svc.kill()
    sync_before = st["progress"]
    c4 = svc.start()
    st = c4.status("sync-kill")
    check(st["state"] == "running" and st["runs"] == 2,
          "after SIGKILL and restart the sync runs again (%s, runs %s)" % (st["state"], st.get("runs")))
    check("continued from its journal" in st.get("note", ""),
          "the status says the sync continued from its journal (%r)" % st.get("note"))
    c4.call("setTaskBandwidth", {"taskId": "sync-kill", "bandwidth": 0})
    st = c4.wait("sync-kill", 120)
    check(st["state"] == "finished" and len(st["result"]["volumes"]) == 3 and st["result"]["generation"] == 1,
          "the sync finished: 3 volumes, generation 1 (%s: %s)" % (st["state"], st.get("error", st.get("result"))))
    # from the journal, not from zero: at most one interval (plus the
    # requests in flight) redone per volume, so at most that more than was left
    sync_data, per_volume = 3 * 64 * MiB, redo_bound
    again, redone = st["progress"]["bytes_written"], st["progress"]["bytes_redone"]
    left = sync_data - sync_before["bytes_written"]
    check(st["result"]["resumed"] and redone == st["result"]["bytes_redone"] and redone <= 3 * per_volume
          and again <= left + 3 * per_volume and again < sync_data,
          "the sync resumed: %d MiB written before the kill, %d MiB after the restart (%d MiB were left; "
          "redone %d MiB, the status and the result agree; bound 3 x %d MiB)"
          % (sync_before["bytes_written"] // MiB, again // MiB, left // MiB, redone // MiB, per_volume // MiB))
    check(not [f for f in os.listdir(os.path.join(svc.state, "journals")) if f.startswith("sync-kill.journal")],
          "the finished sync's journal and its volumes' journals are gone")
    same, out = qemu_compare(top, "qcow2", dtop, "qcow2")
    check(same, "qemu-img compare of the chains' guest views: identical")
    for name, fmt in (("mid.qcow2", "qcow2"), ("base.raw", "raw")):
        same, out = qemu_compare(os.path.join(sd, name), fmt, os.path.join(dd, name), fmt)
        if not same:
            fail("layer %s: %s" % (name, out))
    ok("and layer by layer (mid, base)")
    for name in ("top.qcow2", "mid.qcow2"):
        chk = subprocess.run(["qemu-img", "check", os.path.join(dd, name)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if chk.returncode != 0:
            fail("qemu-img check %s: %s" % (name, chk.stdout))
    ok("qemu-img check: the destination layers are clean")
    # a stopped sync keeps its journals; the same request sent again continues it
    dd2 = os.path.join(w, "dd2")
    os.makedirs(dd2)
    r = c4.call("cloneImageStructure", {"source": top, "format": "qcow2", "destinationDir": dd2})
    check(c4.wait(r["taskId"])["state"] == "finished", "cloneImageStructure again, for a stopped sync")
    stop_rq = {"source": top, "destination": os.path.join(dd2, "top.qcow2"), "syncType": "ALL",
               "format": "qcow2", "bandwidth": 32 * MiB, "taskId": "sync-stop"}
    c4.call("syncImageData", stop_rq)
    time.sleep(1.5)
    c4.call("stopTask", {"taskId": "sync-stop"})
    st = c4.wait("sync-stop", 5)
    kept = sorted(f for f in os.listdir(os.path.join(svc.state, "journals")) if f.startswith("sync-stop.journal"))
    check(st["state"] == "aborted" and "sync-stop.journal" in kept and len(kept) > 1,
          "a stopped sync keeps its journal and its volumes' (%s)" % " ".join(kept))
    c4.call("syncImageData", stop_rq)
    c4.call("setTaskBandwidth", {"taskId": "sync-stop", "bandwidth": 0})
    st = c4.wait("sync-stop", 120)
    same, out = qemu_compare(top, "qcow2", os.path.join(dd2, "top.qcow2"), "qcow2")
    check(st["state"] == "finished" and st["runs"] == 2 and st["result"]["resumed"] and same
          and not [f for f in os.listdir(os.path.join(svc.state, "journals")) if f.startswith("sync-stop.journal")],
          "sent again, it continues from its journal (runs 2, resumed, redone %d MiB) and finishes identical, "
          "its journals gone" % (st["result"]["bytes_redone"] // MiB))
    if have_sum:
        st = c4.status("sum-kill")
        check(st["runs"] == 2 and "restarted from the beginning" in st.get("note", ""),
              "a checksumVolume running at the kill runs again from the beginning (%r)" % st.get("note"))
        c4.call("setTaskBandwidth", {"taskId": "sum-kill", "bandwidth": 0})
        st = c4.wait("sum-kill", 120)
        ref = json.loads(run(LSM, "checksum", "-f", "qcow2", "--output=json", src).stdout)["checksum"]
        check(st["state"] == "finished" and st["result"]["checksum"] == ref,
              "and finishes with the checksum of `lsm-sync checksum`")
    else:
        print("# checksumVolume not in this build (no libsodium): its restart not tested")
    e = c4.error("syncImageData", {"source": top, "destination": dtop, "syncType": "ALL", "format": "qcow2", "generation": 0})
    check(e["code"] == -32002, "syncImageData with a stale generation: -32002")
    e = c4.error("syncImageData", {"source": top, "destination": dtop, "syncType": "SOME", "format": "qcow2"})
    check(e["code"] == -32602, "an unknown syncType: -32602")
    r = c4.call("syncImageData", {"source": top, "destination": dtop, "syncType": "LEAF", "format": "raw"})
    st = c4.wait(r["taskId"])
    check(st["state"] == "failed" and "not raw" in st["error"]["message"], "a format the image does not have: the task fails, nothing probed")

    # a second service on the same state directory is refused
    p = subprocess.run([LSM, "serve", "--socket", os.path.join(w, "s2.sock"), "--state-dir", svc.state],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=10)
    check(p.returncode == 1 and "another service" in p.stderr, "a second service on the same state directory: refused")
    rc = svc.stop()
    check(rc == 0, "SIGTERM: exit 0")


if __name__ == "__main__":
    name, work = sys.argv[1], sys.argv[2]
    {"tasks": scenario_tasks, "robust": scenario_robust, "security": scenario_security,
     "restart": scenario_restart}[name](work)
    print("%d passed" % passed)
