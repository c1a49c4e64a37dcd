/* Fuzz target: the SCSI third-party copy parsers (offload/scsi.c), which
 * read data a device returns: standard INQUIRY, VPD pages 0x00, 0x83 and
 * 0x8F, RECEIVE COPY RESULTS (operating parameters, copy status) and sense
 * data.  Every input goes through every parser; what they accept is then
 * fed to the segment planner and the EXTENDED COPY builder, and the results
 * are checked for the invariants the backend relies on. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "scsi.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A copy: parsers must not read past size (ASan sees overreads). */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);

    struct scsi_inquiry inq;
    scsi_parse_inquiry(buf, size, &inq);
    scsi_vpd_lists_page(buf, size, 0x8f);

    struct scsi_designator d;
    int have_d = scsi_parse_vpd83(buf, size, &d) == 0;
    if (have_d && (d.len == 0 || d.len > 16))
        abort();

    struct scsi_tpc_limits l1, l2;
    int have_l = scsi_parse_vpd8f(buf, size, &l1) == 0;
    if (scsi_parse_rcr_opparams(buf, size, &l2) == 0 && !have_l) {
        l1 = l2;
        have_l = 1;
    }
    struct scsi_copy_status cs;
    scsi_parse_copy_status(buf, size, &cs);

    struct scsi_sense s;
    if (scsi_parse_sense(buf, size, &s) == 0) {
        char m[160];
        scsi_sense_str(&s, m, sizeof m);
        if (!memchr(m, '\0', sizeof m))
            abort();
        scsi_sense_means_unsupported(&s);
    }

    if (have_l && have_d) {
        struct scsi_segment segs[64];
        uint64_t cov = 0;
        uint32_t bs = size > 8 ? 512u << (buf[size - 1] & 3) : 512;
        uint64_t nblocks = size > 4 ? ((uint64_t)buf[0] << 24 | (uint64_t)buf[1] << 8 | buf[2]) + 1 : 1;
        int n = scsi_plan_segments(UINT64_MAX - nblocks, 0, nblocks, bs, &l1, segs, 64, &cov);
        if (n > 0) {
            uint64_t sum = 0;
            for (int i = 0; i < n; i++) {
                if (!segs[i].blocks)
                    abort();
                sum += segs[i].blocks;
            }
            if (sum != cov || cov > nblocks)
                abort();
            uint8_t plist[16 + 64 + 64 * 28];
            int len = scsi_build_xcopy(plist, sizeof plist, &d, &d, bs, 1, false, segs, (unsigned)n);
            if (len != 16 + 64 + 28 * n)
                abort();
            if (l1.max_desc_list && (uint64_t)len - 16 > l1.max_desc_list)
                abort();
        }
    }
    free(buf);
    return 0;
}
