/*
 * core/blob.h — the one binary format of the persisted state (backbone, slot table, archive meta, IVF
 * index): a writer that grows a buffer and a bounds-checked reader. docs/STORE.md has the layout.
 *
 * Layout, every integer and float little-endian whatever the host (a database moves between
 * architectures):
 *
 *     offset  size  field
 *     0       4     magic "MABL"
 *     4       4     u32 blob format (MA_BLOB_FORMAT = 1)
 *     8       4     u32 kind: which module wrote it (a four-character code, MA_BLOB_TAG("SLOT"))
 *     12      ...   sections, each: u32 tag, u32 version, u64 length, then `length` bytes of body
 *     len-8   8     u64 checksum (ma_blob_checksum) of every byte before it
 *
 * A module reads its sections in the order it wrote them and refuses a tag or version it does not know
 * (a newer writer bumps the section's version). Floats are their IEEE-754 bits as u32 (f32) or u64
 * (f64); strings are bytes with an explicit length.
 *
 * Errors: the writer records running out of memory and reports it once, at ma_blob_finish. The reader
 * keeps a sticky `bad` flag: a read past the end (or of a malformed section) returns zeros and sets it,
 * so a parser checks once after a group of reads. Both structs are small values on the caller's stack;
 * their fields are the module's own (use the functions).
 *
 * Threads: no shared state; a writer or reader belongs to one thread.
 */
#ifndef MA_BLOB_H
#define MA_BLOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MA_BLOB_FORMAT 1u
/* A four-character code as the u32 whose little-endian bytes spell it: MA_BLOB_TAG("SLOT"). */
#define MA_BLOB_TAG(s) ((uint32_t)(unsigned char)(s)[0] | (uint32_t)(unsigned char)(s)[1] << 8 | \
                        (uint32_t)(unsigned char)(s)[2] << 16 | (uint32_t)(unsigned char)(s)[3] << 24)

/* The checksum of the trailer: FNV-1a 64's offset basis and prime applied to 8-byte little-endian words
 * (the tail byte by byte), with an xor-shift after each multiply so high bits reach low ones. One
 * multiply per 8 bytes (the slot table is re-serialised on every commit). Detects corruption, not
 * forgery. */
uint64_t ma_blob_checksum(const void *data, size_t n);

/* ---- writer ---------------------------------------------------------------------------------- */

typedef struct {
    unsigned char *p;
    size_t len, cap;
    size_t section;            /* offset of the open section's length field, 0 if none */
    bool oom;
} ma_blob_writer;

/* Starts a blob of the given kind (writes the header). Never fails (an allocation failure is reported by
 * ma_blob_finish). */
void ma_blob_begin(ma_blob_writer *w, uint32_t kind);
/* Opens a section; the previous one, if open, must have been closed. */
void ma_blob_section_begin(ma_blob_writer *w, uint32_t tag, uint32_t version);
/* Closes the open section (writes its length). */
void ma_blob_section_end(ma_blob_writer *w);

void ma_blob_put_u8(ma_blob_writer *w, uint8_t x);
void ma_blob_put_u32(ma_blob_writer *w, uint32_t x);
void ma_blob_put_u64(ma_blob_writer *w, uint64_t x);
void ma_blob_put_f64(ma_blob_writer *w, double x);
void ma_blob_put_f32s(ma_blob_writer *w, const float *f, size_t n);
void ma_blob_put_bytes(ma_blob_writer *w, const void *p, size_t n);

/* Appends the checksum and hands the buffer over: *buf malloc'd (caller frees), *len its size. 0, or
 * MA_ENOMEM if any write ran out of memory (nothing handed over, the writer's memory freed). */
int ma_blob_finish(ma_blob_writer *w, void **buf, size_t *len);

/* ---- reader ---------------------------------------------------------------------------------- */

typedef struct {
    const unsigned char *p;
    size_t len, off;
    bool bad;
} ma_blob_reader;

/* True when buf starts with the blob magic (so a module tells its legacy formats from this one). */
bool ma_blob_is_blob(const void *buf, size_t len);

/* Opens a blob: checks magic, format, kind and checksum; r then reads the sections. 0 or MA_ECORRUPT. */
int ma_blob_open(ma_blob_reader *r, const void *buf, size_t len, uint32_t kind);

/* A reader over raw bytes, without header or checksum (for legacy formats). */
void ma_blob_reader_raw(ma_blob_reader *r, const void *buf, size_t len);

/* Reads the next section header of r: it must have tag `tag` and version `version` and fit in r; sec
 * then reads its body (r continues after it). 0 or MA_ECORRUPT (r marked bad). */
int ma_blob_section(ma_blob_reader *r, uint32_t tag, uint32_t version, ma_blob_reader *sec);

/* Next n bytes (a pointer into the buffer), or NULL (and bad) if fewer remain. */
const void *ma_blob_take(ma_blob_reader *r, size_t n);
uint8_t ma_blob_get_u8(ma_blob_reader *r);
uint32_t ma_blob_get_u32(ma_blob_reader *r);
uint64_t ma_blob_get_u64(ma_blob_reader *r);
double ma_blob_get_f64(ma_blob_reader *r);
/* n floats into f; false (and bad, f untouched) if fewer than 4n bytes remain. */
bool ma_blob_get_f32s(ma_blob_reader *r, float *f, size_t n);
size_t ma_blob_remaining(const ma_blob_reader *r);

/* 0 if every read succeeded and r was read to its end, else MA_ECORRUPT. */
int ma_blob_done(const ma_blob_reader *r);

#endif
