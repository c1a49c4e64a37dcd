/* SCSI third-party copy: the pure parts (no I/O), shared by the XCOPY
 * offload backend (offload/xcopy.c), its unit test and its fuzz target.
 *
 * Everything here parses or builds the byte layouts of SPC-4: the standard
 * INQUIRY data, the Device Identification VPD page (0x83), the Third-party
 * Copy VPD page (0x8F), RECEIVE COPY RESULTS (operating parameters, copy
 * status), the EXTENDED COPY (LID1) parameter list with identification
 * CSCD descriptors (0xE4) and block-to-block segment descriptors (0x02),
 * and sense data.  Device data is untrusted: every parser checks every
 * length against the buffer it was given and returns -EINVAL (or -ENOENT
 * for "not there") rather than reading past it.  No function here prints
 * or records a message: these files are built into a plugin that uses only
 * the public offload header.
 */
#ifndef LSM_OFFLOAD_SCSI_H
#define LSM_OFFLOAD_SCSI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Operation codes and service actions used. */
#define SCSI_INQUIRY               0x12
#define SCSI_EXTENDED_COPY         0x83   /* service action 0x00: LID1 */
#define SCSI_RECEIVE_COPY_RESULTS  0x84
#define SCSI_RCR_COPY_STATUS       0x00
#define SCSI_RCR_OPERATING_PARAMS  0x03

/* Sense keys. */
#define SCSI_SK_NO_SENSE        0x0
#define SCSI_SK_RECOVERED       0x1
#define SCSI_SK_NOT_READY       0x2
#define SCSI_SK_MEDIUM_ERROR    0x3
#define SCSI_SK_HARDWARE_ERROR  0x4
#define SCSI_SK_ILLEGAL_REQUEST 0x5
#define SCSI_SK_UNIT_ATTENTION  0x6
#define SCSI_SK_DATA_PROTECT    0x7
#define SCSI_SK_ABORTED_COMMAND 0xb
#define SCSI_SK_COPY_ABORTED    0xa

/* Standard INQUIRY data: what the copy needs of it. */
struct scsi_inquiry {
    uint8_t peripheral_type;     /* 0: direct access block device */
    bool tpc;                    /* 3PC: the logical unit serves third-party copy */
    char vendor[9], product[17]; /* NUL-terminated, trailing blanks removed */
};
int scsi_parse_inquiry(const uint8_t *buf, size_t len, struct scsi_inquiry *out);

/* A logical unit's designator as it goes into an identification CSCD
 * descriptor: the designation descriptor's code set, designator type and
 * at most 16 bytes of designator (which is all 20 bytes of the CSCD
 * descriptor's field can hold). */
struct scsi_designator {
    uint8_t code_set;            /* 1: binary */
    uint8_t type;                /* 2: EUI-64, 3: NAA */
    uint8_t len;                 /* 8, 12 or 16 */
    uint8_t id[16];
};

/* Device Identification VPD page (0x83): the best designator of the
 * logical unit itself (association 0) that a copy manager can match: NAA
 * (16-byte IEEE Registered Extended first, then 8-byte forms), then EUI-64;
 * binary code set only.  0, -ENOENT (no usable designator) or -EINVAL. */
int scsi_parse_vpd83(const uint8_t *buf, size_t len, struct scsi_designator *out);

/* Whether a Supported VPD Pages page (0x00) lists page.  1, 0, -EINVAL. */
int scsi_vpd_lists_page(const uint8_t *buf, size_t len, uint8_t page);

/* A copy manager's limits, from the Third-party Copy VPD page (0x8F) or
 * from RECEIVE COPY RESULTS with OPERATING PARAMETERS.  0 in a field means
 * "not reported". */
struct scsi_tpc_limits {
    bool from_vpd;                   /* parsed from VPD 0x8F (else from RCR) */
    bool snlid;                      /* RCR: supports "no list identifier" */
    uint16_t max_cscd;               /* maximum CSCD (target) descriptor count */
    uint16_t max_segments;           /* maximum segment descriptor count */
    uint32_t max_desc_list;          /* maximum descriptor list length (bytes) */
    uint32_t max_segment_len;        /* maximum segment length (bytes) */
    uint8_t data_seg_gran_log2;      /* data segment granularity (log2 bytes) */
    uint32_t max_inactivity_s;       /* ROD limits: maximum inactivity time-out (s) */
    uint32_t default_inactivity_s;   /* ROD limits: default inactivity time-out (s) */
    bool have_descriptor_list;       /* the implemented descriptor codes were listed */
    bool b2b;                        /* segment descriptor 0x02 (block to block) */
    bool id_cscd;                    /* CSCD descriptor 0xE4 (identification) */
};
int scsi_parse_vpd8f(const uint8_t *buf, size_t len, struct scsi_tpc_limits *out);
int scsi_parse_rcr_opparams(const uint8_t *buf, size_t len, struct scsi_tpc_limits *out);

/* RECEIVE COPY RESULTS with COPY STATUS. */
struct scsi_copy_status {
    uint8_t status;              /* copy manager status: 0 in progress, 1 done, 2 done with errors, ... */
    uint16_t segments_processed;
    uint64_t transfer_bytes;     /* transfer count converted to bytes (saturating) */
};
int scsi_parse_copy_status(const uint8_t *buf, size_t len, struct scsi_copy_status *out);

/* One block-to-block segment. */
struct scsi_segment {
    uint64_t src_lba, dst_lba;
    uint16_t blocks;
};

/* Split nblocks from src_lba/dst_lba into the segments of one EXTENDED
 * COPY command within the limits (at most max_segments segments, each at
 * most 65535 blocks and max_segment_len bytes, the whole parameter list at
 * most max_desc_list bytes; a segment length is a multiple of the data
 * segment granularity where that is at least one block).  Fills segs[]
 * (room for cap) and returns the number of segments; *covered gets the
 * blocks they cover (all of nblocks or a prefix).  -EINVAL if the limits
 * allow no segment at all (or block_size is 0). */
int scsi_plan_segments(uint64_t src_lba, uint64_t dst_lba, uint64_t nblocks, uint32_t block_size,
                       const struct scsi_tpc_limits *lim, struct scsi_segment *segs, unsigned cap,
                       uint64_t *covered);

/* The EXTENDED COPY (LID1) parameter list: header, two identification
 * CSCD descriptors (0: source, 1: destination, both block devices of
 * block_size), the segment descriptors.  list_id and no_list_id (LIST ID
 * USAGE 11b) as the caller chooses.  Returns its length, or -E2BIG if it
 * does not fit into cap, -EINVAL for bad arguments. */
int scsi_build_xcopy(uint8_t *out, size_t cap, const struct scsi_designator *src,
                     const struct scsi_designator *dst, uint32_t block_size, uint8_t list_id,
                     bool no_list_id, const struct scsi_segment *segs, unsigned nsegs);
/* The CDBs. */
void scsi_cdb_inquiry(uint8_t cdb[6], bool evpd, uint8_t page, uint16_t alloc);
void scsi_cdb_xcopy(uint8_t cdb[16], uint32_t param_len);
void scsi_cdb_rcr(uint8_t cdb[16], uint8_t service_action, uint8_t list_id, uint32_t alloc);

/* Sense data, fixed (0x70/0x71) or descriptor (0x72/0x73) format. */
struct scsi_sense {
    uint8_t key, asc, ascq;
    bool deferred;
    bool info_valid;
    uint64_t info;               /* INFORMATION (fixed: bytes 3-6; descriptor: type 0x00) */
    bool csi_valid;
    uint64_t csi;                /* COMMAND-SPECIFIC INFORMATION (EXTENDED COPY: segment number) */
};
int scsi_parse_sense(const uint8_t *buf, size_t len, struct scsi_sense *out);
/* "COPY ABORTED: copy target device not reachable (ASC 0x0d, ASCQ 0x02)" */
void scsi_sense_str(const struct scsi_sense *s, char *buf, size_t len);
const char *scsi_sense_key_name(uint8_t key);

/* Whether a failed EXTENDED COPY means "this pair cannot be offloaded"
 * (the target does not serve the command, cannot reach the other device,
 * or refuses the descriptors) rather than a fault during the copy. */
bool scsi_sense_means_unsupported(const struct scsi_sense *s);

#endif
