/* Decompression of qcow2 compressed clusters: raw deflate (zlib, window
 * 2^12) and zstd.  The output must fill the cluster exactly. */
#include <string.h>
#include <zlib.h>

#include "config.h"
#include "error.h"
#include "qcow2.h"

#ifdef HAVE_ZSTD
#include <zstd.h>
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
