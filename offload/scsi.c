/* SCSI third-party copy: parsers and builders (see scsi.h).  Byte
 * offsets are those of SPC-4 (spc4r37): standard INQUIRY data 6.6.2,
 * Device Identification VPD page 7.8.6, Third-party Copy VPD page 7.8.17,
 * EXTENDED COPY (LID1) 6.4 with CSCD descriptors 6.4.5 and segment
 * descriptors 6.4.6, RECEIVE COPY RESULTS 6.18, sense data 4.5. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "scsi.h"

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static uint64_t be64(const uint8_t *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)(v >> 32)); put32(p + 4, (uint32_t)v); }

static void copy_ascii(char *dst, const uint8_t *src, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        dst[k++] = (src[i] >= 0x20 && src[i] < 0x7f) ? (char)src[i] : '?';
    while (k && dst[k - 1] == ' ')
        k--;
    dst[k] = '\0';
}

int scsi_parse_inquiry(const uint8_t *buf, size_t len, struct scsi_inquiry *out)
{
    memset(out, 0, sizeof *out);
    if (!buf || len < 36)
        return -EINVAL;
    out->peripheral_type = buf[0] & 0x1f;
    out->tpc = (buf[5] & 0x08) != 0;
    copy_ascii(out->vendor, buf + 8, 8);
    copy_ascii(out->product, buf + 16, 16);
    return 0;
}

/* The end of a VPD page's payload within len bytes, or 0 if malformed.
 * A page longer than the buffer (a short allocation length) is parsed
 * as far as the buffer goes. */
static size_t vpd_end(const uint8_t *buf, size_t len, uint8_t page)
{
    if (!buf || len < 4 || buf[1] != page)
        return 0;
    size_t end = 4 + (size_t)be16(buf + 2);
    return end < len ? end : len;
}

static int designator_rank(uint8_t code_set, uint8_t assoc, uint8_t type, uint8_t dlen,
                           const uint8_t *id)
{
    if (code_set != 1 || assoc != 0)
        return 0;
    if (type == 3) {            /* NAA */
        uint8_t naa = id[0] >> 4;
        if (dlen == 16 && naa == 6)
            return 4;
        if (dlen == 8 && (naa == 2 || naa == 3 || naa == 5))
            return 3;
        return 0;
    }
    if (type == 2 && (dlen == 8 || dlen == 12 || dlen == 16))   /* EUI-64 based */
        return 2;
    return 0;
}

int scsi_parse_vpd83(const uint8_t *buf, size_t len, struct scsi_designator *out)
{
    memset(out, 0, sizeof *out);
    size_t end = vpd_end(buf, len, 0x83);
    if (!end)
        return -EINVAL;
    int best = 0;
    size_t off = 4;
    while (off < end) {
        if (end - off < 4)
            return -EINVAL;
        const uint8_t *d = buf + off;
        uint8_t dlen = d[3];
        if ((size_t)dlen > end - off - 4)
            return -EINVAL;
        if (dlen) {
            int rank = designator_rank(d[0] & 0x0f, (d[1] >> 4) & 3, d[1] & 0x0f, dlen, d + 4);
            if (rank > best) {
                best = rank;
                out->code_set = d[0] & 0x0f;
                out->type = d[1] & 0x0f;
                out->len = dlen;
                memcpy(out->id, d + 4, dlen);
            }
        }
        off += 4 + (size_t)dlen;
    }
    return best ? 0 : -ENOENT;
}

int scsi_vpd_lists_page(const uint8_t *buf, size_t len, uint8_t page)
{
    size_t end = vpd_end(buf, len, 0x00);
    if (!end)
        return -EINVAL;
    for (size_t i = 4; i < end; i++)
        if (buf[i] == page)
            return 1;
    return 0;
}

static void note_codes(struct scsi_tpc_limits *l, const uint8_t *codes, size_t n)
{
    l->have_descriptor_list = true;
    for (size_t i = 0; i < n; i++) {
        if (codes[i] == 0x02)
            l->b2b = true;
        else if (codes[i] == 0xe4)
            l->id_cscd = true;
    }
}

int scsi_parse_vpd8f(const uint8_t *buf, size_t len, struct scsi_tpc_limits *out)
{
    memset(out, 0, sizeof *out);
    size_t end = vpd_end(buf, len, 0x8f);
    if (!end)
        return -EINVAL;
    out->from_vpd = true;
    bool params = false;
    size_t off = 4;
    while (off < end) {
        if (end - off < 4)
            return -EINVAL;
        const uint8_t *d = buf + off;
        uint16_t type = be16(d);
        size_t dlen = be16(d + 2);
        if (dlen > end - off - 4)
            return -EINVAL;
        size_t total = 4 + dlen;    /* bytes of this descriptor */
        switch (type) {
        case 0x0000:                /* Block Device ROD Token Limits (SBC-3) */
            if (total >= 20) {
                out->max_inactivity_s = be32(d + 12);
                out->default_inactivity_s = be32(d + 16);
            }
            break;
        case 0x0004:                /* Parameter Data */
            if (total >= 20) {
                out->max_cscd = be16(d + 8);
                out->max_segments = be16(d + 10);
                out->max_desc_list = be32(d + 12);
                params = true;
            }
            break;
        case 0x0008:                /* Supported Descriptors */
            if (total >= 5) {
                size_t n = d[4];
                if (n > total - 5)
                    return -EINVAL;
                note_codes(out, d + 5, n);
            }
            break;
        case 0x8001:                /* General Copy Operations */
            if (total >= 18) {
                out->max_segment_len = be32(d + 12);
                out->data_seg_gran_log2 = d[16];
                params = true;
            }
            break;
        default:
            break;
        }
        off += total;
    }
    return params ? 0 : -ENOENT;
}

int scsi_parse_rcr_opparams(const uint8_t *buf, size_t len, struct scsi_tpc_limits *out)
{
    memset(out, 0, sizeof *out);
    if (!buf || len < 44)
        return -EINVAL;
    uint64_t avail = (uint64_t)be32(buf) + 4;
    if (avail < 44)
        return -EINVAL;
    size_t end = avail < len ? (size_t)avail : len;
    out->snlid = buf[4] & 1;
    out->max_cscd = be16(buf + 8);
    out->max_segments = be16(buf + 10);
    out->max_desc_list = be32(buf + 12);
    out->max_segment_len = be32(buf + 16);
    out->data_seg_gran_log2 = buf[37];
    size_t n = buf[43];
    if (n > end - 44)
        return -EINVAL;
    note_codes(out, buf + 44, n);
    return 0;
}

int scsi_parse_copy_status(const uint8_t *buf, size_t len, struct scsi_copy_status *out)
{
    memset(out, 0, sizeof *out);
    if (!buf || len < 12 || (uint64_t)be32(buf) + 4 < 12)
        return -EINVAL;
    out->status = buf[4] & 0x7f;
    out->segments_processed = be16(buf + 5);
    uint8_t units = buf[7];
    if (units > 6)
        return -EINVAL;
    uint64_t count = be32(buf + 8);
    unsigned shift = 10u * units;
    out->transfer_bytes = (shift && count > (UINT64_MAX >> shift)) ? UINT64_MAX : count << shift;
    return 0;
}

int scsi_plan_segments(uint64_t src_lba, uint64_t dst_lba, uint64_t nblocks, uint32_t block_size,
                       const struct scsi_tpc_limits *lim, struct scsi_segment *segs, unsigned cap,
                       uint64_t *covered)
{
    *covered = 0;
    if (!block_size || !cap || (lim->max_cscd && lim->max_cscd < 2))
        return -EINVAL;
    uint64_t per = 65535;
    if (lim->max_segment_len) {
        uint64_t m = lim->max_segment_len / block_size;
        if (m < per)
            per = m;
    }
    if (lim->data_seg_gran_log2 && lim->data_seg_gran_log2 < 32 &&
        ((uint64_t)1 << lim->data_seg_gran_log2) > block_size) {
        uint64_t g = ((uint64_t)1 << lim->data_seg_gran_log2) / block_size;
        per -= per % g;
    }
    if (!per)
        return -EINVAL;
    uint64_t nmax = lim->max_segments ? lim->max_segments : 1;
    if (lim->max_desc_list) {
        if (lim->max_desc_list < 64 + 28)
            return -EINVAL;
        uint64_t fit = (lim->max_desc_list - 64) / 28;
        if (fit < nmax)
            nmax = fit;
    }
    if (cap < nmax)
        nmax = cap;
    unsigned n = 0;
    uint64_t done = 0;
    while (done < nblocks && n < nmax) {
        uint64_t b = nblocks - done < per ? nblocks - done : per;
        segs[n].src_lba = src_lba + done;
        segs[n].dst_lba = dst_lba + done;
        segs[n].blocks = (uint16_t)b;
        done += b;
        n++;
    }
    *covered = done;
    return (int)n;
}

static void put_cscd(uint8_t *d, const struct scsi_designator *id, uint32_t block_size)
{
    memset(d, 0, 32);
    d[0] = 0xe4;            /* identification CSCD descriptor */
    d[1] = 0x00;            /* LU ID TYPE 00b, NUL 0, peripheral device type 0 (block) */
    /* bytes 2-3: relative initiator port identifier 0 (any) */
    d[4] = id->code_set;    /* designation descriptor: protocol 0, code set */
    d[5] = id->type;        /* PIV 0, association 0 (the logical unit), designator type */
    d[7] = id->len;
    memcpy(d + 8, id->id, id->len);
    /* device type specific parameters (block devices): PAD 0, disk block length */
    d[29] = (uint8_t)(block_size >> 16);
    d[30] = (uint8_t)(block_size >> 8);
    d[31] = (uint8_t)block_size;
}

int scsi_build_xcopy(uint8_t *out, size_t cap, const struct scsi_designator *src,
                     const struct scsi_designator *dst, uint32_t block_size, uint8_t list_id,
                     bool no_list_id, const struct scsi_segment *segs, unsigned nsegs)
{
    if (!nsegs || !block_size || block_size > 0xffffff || src->len > 16 || dst->len > 16 ||
        !src->len || !dst->len)
        return -EINVAL;
    size_t need = 16 + 64 + (size_t)nsegs * 28;
    if (need > cap || need > 0x7fffffff)
        return -E2BIG;
    memset(out, 0, need);
    out[0] = no_list_id ? 0 : list_id;
    out[1] = no_list_id ? 0x18 : 0x10;   /* LIST ID USAGE 11b (none) or 10b (no held data) */
    put16(out + 2, 64);
    put32(out + 8, (uint32_t)nsegs * 28);
    put_cscd(out + 16, src, block_size);
    put_cscd(out + 48, dst, block_size);
    for (unsigned i = 0; i < nsegs; i++) {
        uint8_t *s = out + 80 + (size_t)i * 28;
        s[0] = 0x02;          /* block device to block device */
        s[1] = 0x00;          /* DC 0: NUMBER OF BLOCKS in source blocks; CAT 0 */
        put16(s + 2, 0x0018);
        put16(s + 4, 0);      /* source CSCD descriptor index */
        put16(s + 6, 1);      /* destination CSCD descriptor index */
        put16(s + 10, segs[i].blocks);
        put64(s + 12, segs[i].src_lba);
        put64(s + 20, segs[i].dst_lba);
    }
    return (int)need;
}

void scsi_cdb_inquiry(uint8_t cdb[6], bool evpd, uint8_t page, uint16_t alloc)
{
    memset(cdb, 0, 6);
    cdb[0] = SCSI_INQUIRY;
    cdb[1] = evpd ? 1 : 0;
    cdb[2] = evpd ? page : 0;
    put16(cdb + 3, alloc);
}

void scsi_cdb_xcopy(uint8_t cdb[16], uint32_t param_len)
{
    memset(cdb, 0, 16);
    cdb[0] = SCSI_EXTENDED_COPY;
    cdb[1] = 0x00;            /* LID1 */
    put32(cdb + 10, param_len);
}

void scsi_cdb_rcr(uint8_t cdb[16], uint8_t service_action, uint8_t list_id, uint32_t alloc)
{
    memset(cdb, 0, 16);
    cdb[0] = SCSI_RECEIVE_COPY_RESULTS;
    cdb[1] = service_action & 0x1f;
    cdb[2] = list_id;
    put32(cdb + 10, alloc);
}

int scsi_parse_sense(const uint8_t *buf, size_t len, struct scsi_sense *out)
{
    memset(out, 0, sizeof *out);
    if (!buf || len < 1)
        return -EINVAL;
    uint8_t code = buf[0] & 0x7f;
    if (code == 0x70 || code == 0x71) {
        if (len < 3)
            return -EINVAL;
        out->deferred = code == 0x71;
        out->key = buf[2] & 0x0f;
        if (len >= 7 && (buf[0] & 0x80)) {
            out->info_valid = true;
            out->info = be32(buf + 3);
        }
        /* The additional sense length bounds what follows byte 7. */
        size_t end = len;
        if (len >= 8 && (size_t)8 + buf[7] < end)
            end = (size_t)8 + buf[7];
        if (end >= 12) {
            out->csi_valid = true;
            out->csi = be32(buf + 8);
        }
        if (end >= 13)
            out->asc = buf[12];
        if (end >= 14)
            out->ascq = buf[13];
        return 0;
    }
    if (code == 0x72 || code == 0x73) {
        if (len < 4)
            return -EINVAL;
        out->deferred = code == 0x73;
        out->key = buf[1] & 0x0f;
        out->asc = buf[2];
        out->ascq = buf[3];
        if (len < 8)
            return 0;
        size_t end = (size_t)8 + buf[7];
        if (end > len)
            end = len;
        size_t off = 8;
        while (off + 2 <= end) {
            const uint8_t *d = buf + off;
            size_t dl = (size_t)2 + d[1];
            if (dl > end - off)
                break;   /* truncated: keep what was parsed */
            if ((d[0] == 0x00 || d[0] == 0x01) && dl >= 12) {
                if (d[0] == 0x00 && (d[2] & 0x80)) {
                    out->info_valid = true;
                    out->info = be64(d + 4);
                } else if (d[0] == 0x01) {
                    out->csi_valid = true;
                    out->csi = be64(d + 4);
                }
            }
            off += dl;
        }
        return 0;
    }
    return -EINVAL;
}

const char *scsi_sense_key_name(uint8_t key)
{
    static const char *const names[16] = {
        "NO SENSE", "RECOVERED ERROR", "NOT READY", "MEDIUM ERROR", "HARDWARE ERROR",
        "ILLEGAL REQUEST", "UNIT ATTENTION", "DATA PROTECT", "BLANK CHECK", "VENDOR SPECIFIC",
        "COPY ABORTED", "ABORTED COMMAND", "RESERVED (0xc)", "VOLUME OVERFLOW", "MISCOMPARE",
        "COMPLETED",
    };
    return names[key & 0x0f];
}

static const struct {
    uint8_t asc, ascq;
    const char *text;
} asc_table[] = {
    { 0x00, 0x00, "no additional sense information" },
    { 0x03, 0x00, "peripheral device write fault" },
    { 0x04, 0x00, "logical unit not ready" },
    { 0x08, 0x00, "logical unit communication failure" },
    { 0x08, 0x01, "logical unit communication time-out" },
    { 0x0c, 0x00, "write error" },
    { 0x0d, 0x00, "error detected by third party temporary initiator" },
    { 0x0d, 0x01, "third party device failure" },
    { 0x0d, 0x02, "copy target device not reachable" },
    { 0x0d, 0x03, "incorrect copy target device type" },
    { 0x0d, 0x04, "copy target device data underrun" },
    { 0x0d, 0x05, "copy target device data overrun" },
    { 0x11, 0x00, "unrecovered read error" },
    { 0x1a, 0x00, "parameter list length error" },
    { 0x20, 0x00, "invalid command operation code" },
    { 0x21, 0x00, "logical block address out of range" },
    { 0x24, 0x00, "invalid field in CDB" },
    { 0x25, 0x00, "logical unit not supported" },
    { 0x26, 0x00, "invalid field in parameter list" },
    { 0x26, 0x01, "parameter not supported" },
    { 0x26, 0x06, "too many target descriptors" },
    { 0x26, 0x07, "unsupported target descriptor type code" },
    { 0x26, 0x08, "too many segment descriptors" },
    { 0x26, 0x09, "unsupported segment descriptor type code" },
    { 0x26, 0x0a, "unexpected inexact segment" },
    { 0x26, 0x0b, "inline data length exceeded" },
    { 0x26, 0x0c, "invalid operation for copy source or destination" },
    { 0x26, 0x0d, "copy segment granularity violation" },
    { 0x27, 0x00, "write protected" },
    { 0x29, 0x00, "power on, reset, or bus device reset occurred" },
    { 0x2a, 0x01, "mode parameters changed" },
    { 0x3f, 0x0e, "reported LUNs data has changed" },
    { 0x44, 0x00, "internal target failure" },
};

void scsi_sense_str(const struct scsi_sense *s, char *buf, size_t len)
{
    if (!len)
        return;
    const char *text = NULL;
    for (size_t i = 0; i < sizeof asc_table / sizeof asc_table[0]; i++)
        if (asc_table[i].asc == s->asc && asc_table[i].ascq == s->ascq)
            text = asc_table[i].text;
    if (text)
        snprintf(buf, len, "%s%s: %s (ASC 0x%02x, ASCQ 0x%02x)", s->deferred ? "deferred " : "",
                 scsi_sense_key_name(s->key), text, s->asc, s->ascq);
    else
        snprintf(buf, len, "%s%s (ASC 0x%02x, ASCQ 0x%02x)", s->deferred ? "deferred " : "",
                 scsi_sense_key_name(s->key), s->asc, s->ascq);
}

bool scsi_sense_means_unsupported(const struct scsi_sense *s)
{
    if (s->key == SCSI_SK_ILLEGAL_REQUEST)
        return s->asc == 0x20 || s->asc == 0x24 || s->asc == 0x26 || s->asc == 0x1a ||
               s->asc == 0x25;
    if (s->key == SCSI_SK_COPY_ABORTED)
        return s->asc == 0x0d && (s->ascq == 0x02 || s->ascq == 0x03);
    return false;
}
