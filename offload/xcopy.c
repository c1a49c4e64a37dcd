/* The SCSI EXTENDED COPY offload backend (lsm-offload-xcopy.so), written
 * against the public plugin header only: the reference implementation of
 * include/lsm-offload.h.
 *
 * A pair qualifies when both ends are SCSI block devices (SG_IO works on
 * them), the destination's standard INQUIRY data has the 3PC bit, both
 * have a logical-unit designator a copy manager can match (VPD page 0x83:
 * NAA or EUI-64), they have one logical block size, and the destination's
 * copy manager reports its limits (VPD page 0x8F, else RECEIVE COPY
 * RESULTS with OPERATING PARAMETERS) and implements block-to-block segment
 * descriptors and identification CSCD descriptors.  The EXTENDED COPY
 * (LID1) command goes to the destination (the source's descriptor is
 * only ever asked INQUIRY questions, through its read-only descriptor).
 * Whether the copy manager can reach the source is only known by trying:
 * COPY ABORTED "copy target device not reachable" on the first command
 * returns -EXDEV, and the caller stops offloading that pair.
 *
 * Sizes: each command carries as many segments as the copy manager takes
 * (maximum segment descriptor count and descriptor list length), each at
 * most the maximum segment length and 65535 blocks, rounded to the data
 * segment granularity.  Time-out of one command: the default inactivity
 * time-out the copy manager reports (VPD 0x8F ROD token limits), else its
 * maximum one, else XCOPY_DEFAULT_TIMEOUT_S (the Linux LIO target reports
 * neither).
 *
 * What is done is counted per command: a command that fails counts for
 * nothing unless RECEIVE COPY RESULTS with COPY STATUS (for targets that
 * track list identifiers) says how many of its segments were processed;
 * the caller writes the rest of the range itself.
 *
 * The copy manager reads and writes the devices below the host's page
 * cache.  probe therefore flushes both devices' dirty pages (fdatasync
 * works on the read-only source descriptor too), ranges are aligned to
 * the page size so that no cached page straddles a copied range, and the
 * destination's cached pages of a copied range are dropped afterwards.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <scsi/sg.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "lsm-offload.h"
#include "scsi.h"

#define XCOPY_DEFAULT_TIMEOUT_S 60
#define XCOPY_MAX_SEGS 64
#define SENSE_LEN 252

struct xcopy {
    int sfd, dfd;
    char *spath, *dpath;
    struct scsi_designator sid, did;
    uint32_t block_size;
    uint32_t page_blocks;       /* blocks per page */
    struct scsi_tpc_limits lim;
    unsigned timeout_ms;
    uint8_t list_id;
    volatile sig_atomic_t cancel;
    uint8_t plist[16 + 64 + XCOPY_MAX_SEGS * 28];
};

static void msgf(char *msg, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void msgf(char *msg, size_t len, const char *fmt, ...)
{
    if (!msg || !len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, len, fmt, ap);
    va_end(ap);
}

/* One SCSI command through SG_IO.  0: GOOD.  -EREMOTEIO: CHECK CONDITION
 * (*sense filled, *have_sense true) or another SCSI status; -EIO: a
 * transport or driver error; -errno: the ioctl failed (-ENOTTY/-EINVAL:
 * not a SCSI device).  msg describes any failure. */
static int sg_cmd(int fd, const uint8_t *cdb, unsigned cdb_len, int dir, void *buf, unsigned len,
                  unsigned timeout_ms, struct scsi_sense *sense, bool *have_sense, char *msg,
                  size_t msglen)
{
    uint8_t sb[SENSE_LEN];
    struct sg_io_hdr io;
    memset(&io, 0, sizeof io);
    memset(sb, 0, sizeof sb);
    io.interface_id = 'S';
    io.dxfer_direction = dir;
    io.cmd_len = (unsigned char)cdb_len;
    io.mx_sb_len = sizeof sb;
    io.dxfer_len = len;
    io.dxferp = buf;
    io.cmdp = (unsigned char *)cdb;
    io.sbp = sb;
    io.timeout = timeout_ms;
    if (have_sense)
        *have_sense = false;
    struct scsi_sense local;
    if (!sense)
        sense = &local;
    /* A unit attention (LUNs changed, a reset, mode parameters changed)
     * is reported once to whoever sends the next command: SG_IO hands it
     * to us, and the command was not executed.  Send it again. */
    for (int attempt = 0;; attempt++) {
        int r;
        do
            r = ioctl(fd, SG_IO, &io);
        while (r < 0 && errno == EINTR);
        if (r < 0) {
            int e = errno;
            msgf(msg, msglen, "SG_IO: %s", strerror(e));
            return -e;
        }
        if (attempt < 4 && io.status == 0x02 && io.sb_len_wr > 0 &&
            scsi_parse_sense(sb, io.sb_len_wr, sense) == 0 && sense->key == SCSI_SK_UNIT_ATTENTION) {
            memset(sb, 0, sizeof sb);
            continue;
        }
        break;
    }
    if (io.status == 0 && io.host_status == 0 && (io.driver_status & 0x0f) == 0)
        return 0;
    if (io.sb_len_wr > 0 && scsi_parse_sense(sb, io.sb_len_wr, sense) == 0) {
        if (have_sense)
            *have_sense = true;
        char s[160];
        scsi_sense_str(sense, s, sizeof s);
        msgf(msg, msglen, "%s", s);
        return -EREMOTEIO;
    }
    if (io.host_status == 0x03 || ((io.info & SG_INFO_CHECK) && io.duration >= timeout_ms)) {
        msgf(msg, msglen, "command timed out after %u ms", timeout_ms);
        return -ETIMEDOUT;
    }
    if (io.status) {
        msgf(msg, msglen, "SCSI status 0x%02x", io.status);
        return -EREMOTEIO;
    }
    msgf(msg, msglen, "transport error (host status 0x%02x, driver status 0x%02x)",
         io.host_status, io.driver_status);
    return -EIO;
}

static int inquiry(int fd, bool evpd, uint8_t page, uint8_t *buf, unsigned len, char *msg,
                   size_t msglen)
{
    uint8_t cdb[6];
    struct scsi_sense s;
    memset(buf, 0, len);
    scsi_cdb_inquiry(cdb, evpd, page, (uint16_t)len);
    return sg_cmd(fd, cdb, 6, SG_DXFER_FROM_DEV, buf, len, 10000, &s, NULL, msg, msglen);
}

/* The logical unit's designator and standard INQUIRY data; 1 usable,
 * 0 not (msg says why). */
static int identify(const struct lsm_offload_endpoint *e, bool need_3pc, struct scsi_designator *id,
                    char *msg, size_t msglen)
{
    uint8_t buf[512];
    char why[200];
    int r = inquiry(e->fd, false, 0, buf, 96, why, sizeof why);
    if (r < 0) {
        msgf(msg, msglen, "%s: not a SCSI device (INQUIRY: %s)", e->path, why);
        return 0;
    }
    struct scsi_inquiry inq;
    if (scsi_parse_inquiry(buf, 96, &inq) < 0) {
        msgf(msg, msglen, "%s: short INQUIRY data", e->path);
        return 0;
    }
    if (inq.peripheral_type != 0) {
        msgf(msg, msglen, "%s: not a block device (peripheral type 0x%02x)", e->path,
             inq.peripheral_type);
        return 0;
    }
    if (need_3pc && !inq.tpc) {
        msgf(msg, msglen, "%s (%s %s) does not advertise third-party copy (3PC)", e->path,
             inq.vendor, inq.product);
        return 0;
    }
    r = inquiry(e->fd, true, 0x83, buf, sizeof buf, why, sizeof why);
    if (r < 0) {
        msgf(msg, msglen, "%s: no device identification page (%s)", e->path, why);
        return 0;
    }
    r = scsi_parse_vpd83(buf, sizeof buf, id);
    if (r < 0) {
        msgf(msg, msglen, "%s: %s", e->path,
             r == -ENOENT ? "no NAA or EUI-64 designator of the logical unit"
                          : "malformed device identification page");
        return 0;
    }
    return 1;
}

static int limits(struct xcopy *x, const struct lsm_offload_endpoint *dst, char *msg, size_t msglen)
{
    uint8_t buf[1024];
    char why[200];
    bool have = false;
    if (inquiry(x->dfd, true, 0x00, buf, 255, why, sizeof why) == 0 &&
        scsi_vpd_lists_page(buf, 255, 0x8f) == 1 &&
        inquiry(x->dfd, true, 0x8f, buf, sizeof buf, why, sizeof why) == 0 &&
        scsi_parse_vpd8f(buf, sizeof buf, &x->lim) == 0)
        have = true;
    if (!have) {
        uint8_t cdb[16];
        struct scsi_sense s;
        memset(buf, 0, sizeof buf);
        scsi_cdb_rcr(cdb, SCSI_RCR_OPERATING_PARAMS, 0, 256);
        int r = sg_cmd(x->dfd, cdb, 16, SG_DXFER_FROM_DEV, buf, 256, 10000, &s, NULL, why,
                       sizeof why);
        if (r < 0) {
            msgf(msg, msglen, "%s: copy manager reports no limits (RECEIVE COPY RESULTS: %s)",
                 dst->path, why);
            return 0;
        }
        if (scsi_parse_rcr_opparams(buf, 256, &x->lim) < 0) {
            msgf(msg, msglen, "%s: malformed operating parameters", dst->path);
            return 0;
        }
    }
    if (x->lim.have_descriptor_list && (!x->lim.b2b || !x->lim.id_cscd)) {
        msgf(msg, msglen, "%s: copy manager lacks block-to-block or identification descriptors",
             dst->path);
        return 0;
    }
    struct scsi_segment seg;
    uint64_t cov;
    if (scsi_plan_segments(0, 0, 1, x->block_size, &x->lim, &seg, 1, &cov) < 0) {
        msgf(msg, msglen, "%s: copy manager limits allow no segment (%u CSCD, list %u bytes, "
             "segment %u bytes)", dst->path, x->lim.max_cscd, x->lim.max_desc_list,
             x->lim.max_segment_len);
        return 0;
    }
    unsigned s = x->lim.default_inactivity_s ? x->lim.default_inactivity_s
               : x->lim.max_inactivity_s     ? x->lim.max_inactivity_s
                                             : XCOPY_DEFAULT_TIMEOUT_S;
    if (s > 3600)
        s = 3600;
    x->timeout_ms = s * 1000;
    return 1;
}

/* 1 if fd is a whole SCSI disk; 0 (msg says why) otherwise.  SG_IO
 * addresses the logical unit, not the block device: on a partition or on a
 * device-mapper device that maps part of a LUN (an LV), root's SG_IO
 * reaches the whole LUN, and the LBAs of the copy would be the LV's
 * offsets applied to the LUN.  Only the disk itself qualifies. */
static int whole_scsi_disk(int fd, const char *path, char *msg, size_t msglen)
{
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISBLK(st.st_mode)) {
        msgf(msg, msglen, "%s is not a block device", path);
        return 0;
    }
    char p[128];
    snprintf(p, sizeof p, "/sys/dev/block/%u:%u/partition", major(st.st_rdev), minor(st.st_rdev));
    if (access(p, F_OK) == 0) {
        msgf(msg, msglen, "%s is a partition (EXTENDED COPY addresses the whole LUN)", path);
        return 0;
    }
    snprintf(p, sizeof p, "/sys/dev/block/%u:%u/device/scsi_disk", major(st.st_rdev),
             minor(st.st_rdev));
    if (access(p, F_OK) != 0) {
        msgf(msg, msglen, "%s is not a SCSI disk itself (a partition, LV or multipath device "
             "maps part of or more than one LUN)", path);
        return 0;
    }
    return 1;
}

static void xc_close(void *h)
{
    struct xcopy *x = h;
    if (!x)
        return;
    free(x->spath);
    free(x->dpath);
    free(x);
}

static int xc_probe(const struct lsm_offload_endpoint *src, const struct lsm_offload_endpoint *dst,
                    void **handle, struct lsm_offload_limits *lim, char *msg, size_t msglen)
{
    if (src->kind != LSM_OFFLOAD_KIND_BLOCK || dst->kind != LSM_OFFLOAD_KIND_BLOCK) {
        msgf(msg, msglen, "EXTENDED COPY needs two block devices");
        return 0;
    }
    if (!src->logical_block_size || src->logical_block_size != dst->logical_block_size) {
        msgf(msg, msglen, "%s and %s have different logical block sizes (%u, %u)", src->path,
             dst->path, src->logical_block_size, dst->logical_block_size);
        return 0;
    }
    if (!whole_scsi_disk(src->fd, src->path, msg, msglen) ||
        !whole_scsi_disk(dst->fd, dst->path, msg, msglen))
        return 0;
    struct xcopy *x = calloc(1, sizeof *x);
    if (!x)
        return -ENOMEM;
    x->sfd = src->fd;
    x->dfd = dst->fd;
    x->block_size = dst->logical_block_size;
    x->spath = strdup(src->path ? src->path : "source");
    x->dpath = strdup(dst->path ? dst->path : "destination");
    if (!x->spath || !x->dpath) {
        xc_close(x);
        return -ENOMEM;
    }
    int r = identify(dst, true, &x->did, msg, msglen);
    if (r == 1)
        r = identify(src, false, &x->sid, msg, msglen);
    if (r == 1 && x->sid.len == x->did.len && !memcmp(x->sid.id, x->did.id, x->sid.len)) {
        /* The copy manager finds the source by its designator: if the two
         * are equal it would read the destination.  (Designators are unique
         * by definition; a target that repeats one is misconfigured.) */
        struct stat a, b;
        if (fstat(x->sfd, &a) < 0 || fstat(x->dfd, &b) < 0 || a.st_rdev != b.st_rdev) {
            msgf(msg, msglen, "%s and %s report the same logical unit designator", src->path,
                 dst->path);
            r = 0;
        }
    }
    if (r == 1)
        r = limits(x, dst, msg, msglen);
    if (r != 1) {
        xc_close(x);
        return r;
    }
    /* The copy manager sees the devices, not the host's page cache. */
    if (fdatasync(x->sfd) < 0 || fdatasync(x->dfd) < 0) {
        int e = errno;
        msgf(msg, msglen, "cannot flush %s or %s before EXTENDED COPY: %s", x->spath, x->dpath,
             strerror(e));
        xc_close(x);
        return -e;
    }
    long page = sysconf(_SC_PAGESIZE);
    uint32_t align = x->block_size;
    if (page > 0 && (uint32_t)page > align)
        align = (uint32_t)page;
    x->page_blocks = align / x->block_size;
    lim->alignment = align;
    lim->min_bytes = align;
    lim->max_bytes = 0;
    lim->timeout_ms = x->timeout_ms;
    *handle = x;
    return 1;
}

static int64_t xc_copy(void *h, uint64_t src_off, uint64_t dst_off, uint64_t len, char *msg,
                       size_t msglen)
{
    struct xcopy *x = h;
    uint64_t bs = x->block_size;
    if (src_off % bs || dst_off % bs || len % bs) {
        msgf(msg, msglen, "range not aligned to the block size %u", x->block_size);
        return -EINVAL;
    }
    uint64_t done = 0;
    while (done < len) {
        if (x->cancel) {
            msgf(msg, msglen, "cancelled");
            break;
        }
        struct scsi_segment segs[XCOPY_MAX_SEGS];
        uint64_t covered;
        int n = scsi_plan_segments((src_off + done) / bs, (dst_off + done) / bs, (len - done) / bs,
                                   x->block_size, &x->lim, segs, XCOPY_MAX_SEGS, &covered);
        if (n <= 0) {
            msgf(msg, msglen, "copy manager limits allow no segment");
            return done ? (int64_t)done : -EOPNOTSUPP;
        }
        /* A command that leaves blocks for the next one ends on a page
         * boundary: what a failure leaves to the caller starts there. */
        uint64_t g = x->page_blocks;
        if (g > 1 && covered < (len - done) / bs && covered > g && covered % g) {
            uint64_t trim = covered % g;
            if (segs[n - 1].blocks > trim) {
                segs[n - 1].blocks = (uint16_t)(segs[n - 1].blocks - trim);
                covered -= trim;
            }
        }
        bool nolist = x->lim.snlid;
        uint8_t id = ++x->list_id;
        int plen = scsi_build_xcopy(x->plist, sizeof x->plist, &x->sid, &x->did, x->block_size, id,
                                    nolist, segs, (unsigned)n);
        if (plen < 0) {
            msgf(msg, msglen, "cannot build the EXTENDED COPY parameter list");
            return done ? (int64_t)done : plen;
        }
        uint8_t cdb[16];
        struct scsi_sense sense;
        bool have_sense = false;
        char why[200];
        scsi_cdb_xcopy(cdb, (uint32_t)plen);
        int r = sg_cmd(x->dfd, cdb, 16, SG_DXFER_TO_DEV, x->plist, (unsigned)plen, x->timeout_ms,
                       &sense, &have_sense, why, sizeof why);
        if (r < 0) {
            uint64_t part = 0;
            if (!nolist) {
                /* How many of this command's segments the copy manager
                 * finished, where it keeps the list's status. */
                uint8_t st[64];
                uint8_t rcdb[16];
                struct scsi_sense s2;
                struct scsi_copy_status cs;
                scsi_cdb_rcr(rcdb, SCSI_RCR_COPY_STATUS, id, sizeof st);
                if (sg_cmd(x->dfd, rcdb, 16, SG_DXFER_FROM_DEV, st, sizeof st, 10000, &s2, NULL,
                           NULL, 0) == 0 &&
                    scsi_parse_copy_status(st, sizeof st, &cs) == 0)
                    for (int i = 0; i < n && i < cs.segments_processed; i++)
                        part += (uint64_t)segs[i].blocks * bs;
            }
            if (part) {
                posix_fadvise(x->dfd, (off_t)(dst_off + done), (off_t)part, POSIX_FADV_DONTNEED);
                done += part;
            }
            msgf(msg, msglen, "EXTENDED COPY from %s to %s at offset %llu failed: %s", x->spath,
                 x->dpath, (unsigned long long)(dst_off + done), why);
            if (!done && have_sense && scsi_sense_means_unsupported(&sense))
                return -EXDEV;
            if (!done && r == -ENOTTY)
                return -EOPNOTSUPP;
            return done ? (int64_t)done : r;
        }
        uint64_t bytes = covered * bs;
        posix_fadvise(x->dfd, (off_t)(dst_off + done), (off_t)bytes, POSIX_FADV_DONTNEED);
        done += bytes;
    }
    return (int64_t)done;
}

static void xc_cancel(void *h)
{
    struct xcopy *x = h;
    x->cancel = 1;
}

static const struct lsm_offload_ops xcopy_ops = {
    .abi_version = LSM_OFFLOAD_ABI_VERSION,
    .size = sizeof(struct lsm_offload_ops),
    .name = "xcopy",
    .description = "SCSI EXTENDED COPY (LID1) between LUNs of one target, through SG_IO",
    .probe = xc_probe,
    .copy = xc_copy,
    .cancel = xc_cancel,
    .close = xc_close,
};

__attribute__((visibility("default")))
const struct lsm_offload_ops *lsm_offload_init(uint32_t abi_version)
{
    return abi_version == LSM_OFFLOAD_ABI_VERSION ? &xcopy_ops : NULL;
}
