/* Decompression of qcow2 compressed clusters: raw deflate (zlib, window
 * 2^12) and zstd.  The output must fill the cluster exactly.
 * Compression (the writer's): what QEMU writes, raw deflate at zlib's
 * default level with a 2^12 window and memLevel 9, or one zstd frame at
 * zstd's default level. */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "config.h"
#include "error.h"
#include "qcow2.h"

#ifdef HAVE_ZSTD
#include <zstd.h>
#include <zstd_errors.h>
#endif

static int zlib_decompress(const uint8_t *src, size_t src_len, uint8_t *dst, size_t dst_len)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, -12) != Z_OK)
        return lsm_error(-ENOMEM, "cannot initialise zlib");
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)src_len;
    z.next_out = dst;
    z.avail_out = (uInt)dst_len;
    int ret = inflate(&z, Z_FINISH);
    bool ok = (ret == Z_STREAM_END || ret == Z_BUF_ERROR) && z.avail_out == 0;
    inflateEnd(&z);
    if (!ok)
        return lsm_error(-EIO, "corrupt image: zlib data does not decompress to a full cluster");
    return 0;
}

#ifdef HAVE_ZSTD
static int zstd_decompress(const uint8_t *src, size_t src_len, uint8_t *dst, size_t dst_len)
{
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    if (!dctx)
        return lsm_error(-ENOMEM, "cannot initialise zstd");
    ZSTD_inBuffer in = { src, src_len, 0 };
    ZSTD_outBuffer out = { dst, dst_len, 0 };
    int r = 0;
    while (out.pos < out.size) {
        size_t last_in = in.pos, last_out = out.pos;
        size_t ret = ZSTD_decompressStream(dctx, &out, &in);
        if (ZSTD_isError(ret)) {
            r = lsm_error(-EIO, "corrupt image: zstd: %s", ZSTD_getErrorName(ret));
            break;
        }
        if (ret == 0 && out.pos < out.size) {   /* frame ended early */
            r = lsm_error(-EIO, "corrupt image: zstd data does not decompress to a full cluster");
            break;
        }
        if (in.pos == last_in && out.pos == last_out) {
            r = lsm_error(-EIO, "corrupt image: zstd data is truncated");
            break;
        }
    }
    ZSTD_freeDCtx(dctx);
    return r;
}
#endif

int qcow2_decompress(unsigned type, const uint8_t *src, size_t src_len,
                     uint8_t *dst, size_t dst_len)
{
    switch (type) {
    case QCOW2_COMPRESSION_ZLIB:
        return zlib_decompress(src, src_len, dst, dst_len);
    case QCOW2_COMPRESSION_ZSTD:
#ifdef HAVE_ZSTD
        return zstd_decompress(src, src_len, dst, dst_len);
#else
        return lsm_error(-ENOTSUP, "built without zstd: cannot read zstd-compressed clusters");
#endif
    default:
        return lsm_error(-ENOTSUP, "unknown compression type %u", type);
    }
}

/* ---- compression -------------------------------------------------------- */

struct qcow2_compressor {
    unsigned type;
    bool zinit;
    z_stream z;
#ifdef HAVE_ZSTD
    ZSTD_CCtx *cctx;
#endif
};

int qcow2_compressor_new(unsigned type, struct qcow2_compressor **out)
{
    if (type != QCOW2_COMPRESSION_ZLIB && type != QCOW2_COMPRESSION_ZSTD)
        return lsm_error(-ENOTSUP, "unknown compression type %u", type);
#ifndef HAVE_ZSTD
    if (type == QCOW2_COMPRESSION_ZSTD)
        return lsm_error(-ENOTSUP, "built without zstd: cannot write zstd-compressed clusters");
#endif
    struct qcow2_compressor *c = calloc(1, sizeof *c);
    if (!c)
        return lsm_error(-ENOMEM, "cannot allocate a compressor");
    c->type = type;
    if (type == QCOW2_COMPRESSION_ZLIB) {
        /* QEMU's parameters (block/qcow2-threads.c): level 6, raw deflate,
         * window 2^12 (what the reader inflates with), memLevel 9. */
        if (deflateInit2(&c->z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK) {
            free(c);
            return lsm_error(-ENOMEM, "cannot initialise zlib");
        }
        c->zinit = true;
    }
#ifdef HAVE_ZSTD
    if (type == QCOW2_COMPRESSION_ZSTD && !(c->cctx = ZSTD_createCCtx())) {
        free(c);
        return lsm_error(-ENOMEM, "cannot initialise zstd");
    }
#endif
    *out = c;
    return 0;
}

void qcow2_compressor_free(struct qcow2_compressor *c)
{
    if (!c)
        return;
    if (c->zinit)
        deflateEnd(&c->z);
#ifdef HAVE_ZSTD
    ZSTD_freeCCtx(c->cctx);
#endif
    free(c);
}

ssize_t qcow2_compress(struct qcow2_compressor *c, const uint8_t *src, size_t len,
                       uint8_t *dst, size_t cap)
{
    if (c->type == QCOW2_COMPRESSION_ZLIB) {
        if (deflateReset(&c->z) != Z_OK)
            return -EIO;
        c->z.next_in = (Bytef *)src;
        c->z.avail_in = (uInt)len;
        c->z.next_out = dst;
        c->z.avail_out = (uInt)cap;
        int ret = deflate(&c->z, Z_FINISH);
        if (ret == Z_STREAM_END)
            return (ssize_t)(cap - c->z.avail_out);
        return ret == Z_OK || ret == Z_BUF_ERROR ? 0 : -EIO;   /* 0: does not fit */
    }
#ifdef HAVE_ZSTD
    size_t n = ZSTD_compressCCtx(c->cctx, dst, cap, src, len, ZSTD_CLEVEL_DEFAULT);
    if (ZSTD_isError(n))
        return ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall ? 0 : -EIO;
    return (ssize_t)n;
#else
    return -ENOTSUP;
#endif
}
