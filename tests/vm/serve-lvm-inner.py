#!/usr/bin/env python3
"""lsm-sync serve on real LVM (run by serve-lvm-inner.sh inside the test VM,
on a volume group VG with two 32 MiB LVs, gen and plain):

- volume generations kept in LV tags (serve/generation.c): a copyVolume with
  the wrong generation is refused, with the right one it finishes and the
  LV's tag becomes lsm_gen_N+1 (checked with lvs), a request with the stale
  generation is refused; the LV is found by its device number whichever
  path names it (/dev/mapper/VG-LV or /dev/VG/LV); two generation tags make
  the service refuse rather than guess;
- a copy onto an LV by /dev/VG/LV, compared with qemu-img compare.

    serve-lvm-inner.py WORKDIR VG PV

The client and the service wrapper are those of tests/functional/serve_test.py.
"""
import os
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "functional"))
sys.dont_write_bytecode = True      # no __pycache__ in the source tree (written over 9p from the guest)
import serve_test as t  # noqa: E402

MiB = t.MiB
CFG = os.environ["LSM_LVM_CONFIG"]


LVM_SECONDS = [0.0, 0]


def lvm(*args):
    t0 = time.monotonic()
    try:
        return t.run("lvm", args[0], "--config", CFG, *args[1:]).stdout
    finally:
        LVM_SECONDS[0] += time.monotonic() - t0
        LVM_SECONDS[1] += 1


def tags(vg, lv):
    out = lvm("lvs", "--noheadings", "-o", "lv_tags", "%s/%s" % (vg, lv)).strip()
    return sorted(x for x in out.split(",") if x)


def main(w, vg, pv):
    src = os.path.join(w, "src.qcow2")
    t.make_qcow2(src, 32 * MiB, [(0x11, 0, 2 * MiB), (0x22, 9 * MiB, 1 * MiB), (0x33, 20 * MiB, 64 * 1024)])
    src2 = os.path.join(w, "src2.qcow2")
    t.make_qcow2(src2, 32 * MiB, [(0x44, 1 * MiB, 3 * MiB)])
    gen_dev = "/dev/%s/gen" % vg
    gen_mapper = "/dev/mapper/%s-gen" % vg
    plain_dev = "/dev/%s/plain" % vg

    # the state dir on the guest's tmpfs (WORKDIR is under LSM_VM_SCRATCH)
    svc = t.Service(w)
    c = svc.start()
    try:
        e = c.error("copyVolume", t.copy_params(src, gen_mapper, generation=1))
        t.check(e["code"] == -32002 and "generation 0" in e["message"] and "expected 1" in e["message"],
                "generation 1 on an LV without a tag (generation 0): refused with -32002 naming both (%s)"
                % e["message"])
        r = c.call("copyVolume", t.copy_params(src, gen_mapper, generation=0))
        st = c.wait(r["taskId"])
        t.check(st["state"] == "finished" and st["result"]["generation"] == 1,
                "generation 0 through /dev/mapper/VG-LV: finished, generation now 1 (%s)" % st.get("error"))
        t.check(tags(vg, "gen") == ["lsm_gen_1"], "lvs shows the LV's one tag lsm_gen_1")
        same, out = t.qemu_compare(src, "qcow2", gen_dev, "raw")
        t.check(same, "the LV holds the source (qemu-img compare): %s" % out)

        e = c.error("copyVolume", t.copy_params(src2, gen_dev, generation=0))
        t.check(e["code"] == -32002 and "generation 1" in e["message"],
                "the stale generation 0 again, through /dev/VG/LV: refused with -32002")
        same, out = t.qemu_compare(src, "qcow2", gen_dev, "raw")
        t.check(same, "the refused request did not write the LV")

        # another tag of someone else's is left alone by the bump
        lvm("lvchange", "--addtag", "owner_test", "%s/gen" % vg)
        r = c.call("copyVolume", t.copy_params(src2, gen_dev, generation=1))
        st = c.wait(r["taskId"])
        t.check(st["state"] == "finished" and st["result"]["generation"] == 2,
                "generation 1 (so the stale request left 1) through /dev/VG/LV: finished, generation now 2 (%s)"
                % st.get("error"))
        t.check(tags(vg, "gen") == ["lsm_gen_2", "owner_test"],
                "lvs shows lsm_gen_2 and owner_test (lsm_gen_1 deleted in the same lvchange)")
        same, out = t.qemu_compare(src2, "qcow2", gen_dev, "raw")
        t.check(same, "the LV holds the second source: %s" % out)

        # two generation tags are not guessed between
        lvm("lvchange", "--addtag", "lsm_gen_5", "%s/gen" % vg)
        e = c.error("copyVolume", t.copy_params(src, gen_dev, generation=2))
        t.check(e["code"] == -32000 and "more than one generation tag" in e["message"],
                "two generation tags on the LV: refused with -32000 (%s)" % e["message"])

        # a copy onto an LV by path, no generation: no tag made
        r = c.call("copyVolume", t.copy_params(src, plain_dev, checksum="sha256"))
        st = c.wait(r["taskId"])
        t.check(st["state"] == "finished" and "generation" not in st["result"],
                "copy onto /dev/VG/LV without a generation: finished (%s)" % st.get("error"))
        same, out = t.qemu_compare(src, "qcow2", plain_dev, "raw")
        t.check(same, "qemu-img compare: the LV is identical to the source: %s" % out)
        t.check(tags(vg, "plain") == [], "no generation asked: no tag on the LV")

        # a block device that is no LV: its loop PV
        e = c.error("copyVolume", t.copy_params(src, pv, generation=0))
        t.check(e["code"] == -32000 and "not an active logical volume" in e["message"],
                "a generation on a block device that is no LV (%s): refused, -32000" % pv)
    finally:
        rc = svc.stop()
    t.check(rc == 0, "SIGTERM: exit 0")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
    print("%d passed (the test's own %d lvm commands took %.1f s)" % (t.passed, LVM_SECONDS[1], LVM_SECONDS[0]))
