/* qcow2 metadata identity: see qcow2-ident.h. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "error.h"
#include "fileio.h"
#include "qcow2.h"
#include "qcow2-ident.h"
#include "util.h"

#define ALIGN 4096u

/* FNV-1a over 64-bit words, then a final mix: fast, and any change of a
 * byte changes the result with overwhelming likelihood. */
static uint64_t hash_bytes(uint64_t h, const uint8_t *p, size_t n)
{
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0x100000001b3ULL;
    }
    for (; n; p++, n--)
        h = (h ^ *p) * 0x100000001b3ULL;
    return h;
}

#define HASH_INIT 0xcbf29ce484222325ULL

static uint64_t hash_final(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

/* Read [off, off+len) through aligned buffers, hashing it. */
static int hash_region(int fd, uint64_t off, uint64_t len, uint64_t *h)
{
    uint64_t a0 = align_down(off, ALIGN), a1 = align_up(off + len, ALIGN);
    size_t chunk = 1u << 20;
    void *buf = NULL;
    if (posix_memalign(&buf, ALIGN, chunk) != 0)
        return lsm_error(-ENOMEM, "out of memory");
    int r = 0;
    for (uint64_t p = a0; p < a1 && r == 0; p += chunk) {
        size_t n = (size_t)MIN((uint64_t)chunk, a1 - p);
        ssize_t got = lsm_pread_all(fd, buf, n, p);
        if (got < 0) {
            r = lsm_error_errno((int)got, "cannot read qcow2 metadata at 0x%" PRIx64, p);
            break;
        }
        memset((char *)buf + got, 0, n - (size_t)got);
        uint64_t s = MAX(p, off), e = MIN(p + n, off + len);
        if (s < e)
            *h = hash_bytes(*h, (uint8_t *)buf + (s - p), (size_t)(e - s));
    }
    free(buf);
    return r;
}

int qcow2_ident_hash(int fd, uint64_t *out)
{
    void *hb = NULL;
    if (posix_memalign(&hb, ALIGN, ALIGN) != 0)
        return lsm_error(-ENOMEM, "out of memory");
    ssize_t got = lsm_pread_all(fd, hb, ALIGN, 0);
    if (got < 0) {
        free(hb);
        return lsm_error_errno((int)got, "cannot read the qcow2 header");
    }
    const uint8_t *b = hb;
    if (got < 72 || be32_get(b) != QCOW2_MAGIC) {
        free(hb);
        return 0;
    }
    uint32_t cbits = be32_get(b + 20);
    uint32_t l1_size = be32_get(b + 36);
    uint64_t l1_off = be64_get(b + 40);
    free(hb);
    if (cbits < QCOW2_MIN_CLUSTER_BITS || cbits > QCOW2_MAX_CLUSTER_BITS)
        return lsm_error(-EINVAL, "invalid qcow2 cluster_bits %u", cbits);
    if (l1_size > QCOW2_MAX_L1_BYTES / 8 || l1_off > (1ULL << 56) || l1_off % (1u << cbits))
        return lsm_error(-EINVAL, "invalid qcow2 L1 table (0x%" PRIx64 ", %u entries)", l1_off, l1_size);
    uint64_t h = HASH_INIT;
    int r = hash_region(fd, 0, 1u << cbits, &h);
    if (r == 0 && l1_size)
        r = hash_region(fd, l1_off, (uint64_t)l1_size * 8, &h);
    if (r < 0)
        return r;
    *out = hash_final(h);
    return 1;
}

uint64_t qcow2_ident_hash_buffers(const void *hdr, size_t hdr_len, const void *l1, size_t l1_len)
{
    uint64_t h = hash_bytes(HASH_INIT, hdr, hdr_len);
    if (l1_len)
        h = hash_bytes(h, l1, l1_len);
    return hash_final(h);
}
