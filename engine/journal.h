/* The journal of one copy job: what is durable on the destination, so that
 * a run killed (SIGKILL, power loss) can be resumed without redoing it.
 *
 * Contents: the guest size and a bitmap of done granules (a granule counts
 * only when all of it is recorded; the last one may be short), the job's
 * options (an opaque JSON object the caller compares on resume), the
 * identity of every source and destination file (struct lsm_journal_file),
 * and the frontier: the guest offset the job had reached at the checkpoint.
 * Ranges the job records are pending until it commits them (after its
 * flush); only committed ranges are saved.
 *
 * On disk: one JSON document (docs/resume.md), written atomically by
 * lsm_journal_save (a temporary file in the same directory, fsync, rename,
 * fsync of the directory); after it, "reached" lines the running job
 * appends without syncing (lsm_journal_note_reached), so that a resume
 * knows how far the killed run had gone past the checkpoint.  A torn or
 * corrupt last line is ignored; the document itself is validated in full
 * (lsm_journal_parse: every field, ranges sorted and inside the bitmap).
 *
 * Library code: never prints; -errno with a message (common/error.h).
 * Not thread-safe: one job, one thread.
 */
#ifndef LSM_JOURNAL_H
#define LSM_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <json-c/json.h>

#define LSM_JOURNAL_VERSION 1
/* Bound on the bitmap (bits), so that a hostile journal cannot make the
 * loader allocate more than 128 MiB. */
#define LSM_JOURNAL_MAX_BITS (1ULL << 30)
#define LSM_JOURNAL_MAX_FILES 512
/* Probes of one file (an NBD export: docs/resume.md, "NBD ends"). */
#define LSM_JOURNAL_MAX_PROBES 8

/* One file of the job as it was at the checkpoint. */
struct lsm_journal_file {
    char *role;             /* "source", "backing 1", ..., "destination" */
    char *path;             /* as given (informative: identity is dev/ino) */
    uint64_t dev, ino;      /* st_dev/st_ino (block devices: st_rdev/0) */
    uint64_t size;          /* bytes (file size or device size) */
    int64_t mtime_ns;       /* modification time; -1: not compared */
    bool has_hash;
    uint64_t hash;          /* qcow2: header cluster and L1 table (qcow2_ident_hash) */
    /* During a checkpoint: the hash the file will have once the checkpoint
     * has written its metadata (a kill in between leaves either). */
    bool has_hash_next;
    uint64_t hash_next;
    /* A file without an identity of its own (an NBD export: dev and ino 0):
     * the offsets of the blocks whose contents `hash` covers, so that a
     * resume can read them again (at most LSM_JOURNAL_MAX_PROBES, each
     * below size). */
    unsigned nprobes;
    uint64_t probes[LSM_JOURNAL_MAX_PROBES];
};

struct lsm_journal {
    char *path;
    uint64_t size;          /* guest size */
    uint64_t granule;       /* power of two */
    uint64_t nbits;
    uint64_t *bits;         /* done granules (durable: what save writes) */
    uint64_t (*pending)[2]; /* marked since the last commit: [start, end) */
    size_t npending, pending_cap;
    json_object *options;   /* owned */
    struct lsm_journal_file *files;
    size_t nfiles;
    uint64_t frontier;      /* guest offset reached at the last checkpoint */
    uint64_t reached;       /* loaded: the largest valid "reached" line (>= frontier) */
    uint64_t noted;         /* running: the last offset appended */
    int append_fd;          /* the saved file, for "reached" lines (-1: none) */
    bool saved;             /* this process wrote the file now at path */
    uint64_t saved_dev, saved_ino;
};

/* A new, empty journal (nothing done) for path.  options is taken over
 * (json_object_put on failure too).  granule: a power of two. */
int lsm_journal_new(const char *path, uint64_t size, uint64_t granule, json_object *options,
                    struct lsm_journal **out);
/* Parse and validate a journal's bytes (the document and its "reached"
 * lines).  path may be NULL (the fuzz target).  -EINVAL with a message
 * naming what is wrong. */
int lsm_journal_parse(const char *path, const void *data, size_t len, struct lsm_journal **out);
/* Read and parse the file at path: -ENOENT (with a message) when there is
 * none. */
int lsm_journal_load(const char *path, struct lsm_journal **out);
void lsm_journal_free(struct lsm_journal *j);

/* Replace the file identities (copied). */
int lsm_journal_set_files(struct lsm_journal *j, const struct lsm_journal_file *f, size_t n);
/* 0 if every file in f matches the journal's (same roles, same dev/ino,
 * size, mtime where both have one, hash where both have one); else -ESTALE
 * with a message naming the first file that changed and how. */
int lsm_journal_check_files(const struct lsm_journal *j, const struct lsm_journal_file *f,
                            size_t n);
void lsm_journal_file_clear(struct lsm_journal_file *f);

/* Record [start, start+len) as written: pending until lsm_journal_commit
 * (after the flush that makes it durable), then done: the granules it
 * covers entirely (and the last, short granule when it reaches the size).
 * -ENOMEM with a message. */
int lsm_journal_mark(struct lsm_journal *j, uint64_t start, uint64_t len);
/* The pending ranges are durable now: into the done bitmap. */
void lsm_journal_commit(struct lsm_journal *j);
/* Whether the granule at off is done, and the end (guest offset, at most
 * size) of the run of granules from off with that state. */
bool lsm_journal_done_at(const struct lsm_journal *j, uint64_t off, uint64_t *run_end);
/* Bytes marked done. */
uint64_t lsm_journal_done_bytes(const struct lsm_journal *j);

/* Write the journal atomically at its path (see above): the committed done
 * ranges only.  Afterwards "reached" lines go to the new file, starting
 * with the last one noted if it is past the frontier. */
int lsm_journal_save(struct lsm_journal *j);
/* Append "the job has started work up to off" (not synced: it survives a
 * kill of the process, not always a power loss).  Only increasing offsets
 * are written.  -errno with a message. */
int lsm_journal_note_reached(struct lsm_journal *j, uint64_t off);
/* Remove the journal file, only if it is the one this process last saved
 * (the path still leads to it).  Returns true if removed. */
bool lsm_journal_remove(struct lsm_journal *j);

#endif
