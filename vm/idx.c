/*
** vm/idx.c -- reading IDX files, the format of MNIST and Fashion-MNIST.
**
** Format: two zero bytes, an element type byte, a dim count n, then n
** big-endian u32 sizes, then the elements in row-major order, big-endian.
** Files are usually gzipped; zlib's gzread reads compressed and plain files
** alike. The header is never trusted: the data size it promises is checked
** against the file before anything is allocated (exactly for a plain file,
** against deflate's best compression ratio for a gzip file), and reading
** stops at that size, so a truncated or corrupt file ends in an error that
** names the file, never in an overread or a huge allocation.
*/
#include "glia_impl.h"

#include <unistd.h>
#include <zlib.h>

/* Deflate never compresses better than about 1032:1; a gzip file promising
** more data than this bound allows is corrupt. */
#define DEFLATE_MAX_RATIO 1032
#define CHUNK (1 << 16)

/* ====================================================== element types */

typedef struct {
  uint8_t code;     /* the type byte of the header */
  const char *name; /* as the format calls it */
  int width;        /* bytes per element in the file */
  glia_dtype dtype; /* what it becomes */
} idx_type;

static const idx_type idx_types[] = {
    {0x08, "u8", 1, GLIA_DTYPE_U8},   {0x09, "i8", 1, GLIA_DTYPE_I32},
    {0x0B, "i16", 2, GLIA_DTYPE_I32}, {0x0C, "i32", 4, GLIA_DTYPE_I32},
    {0x0D, "f32", 4, GLIA_DTYPE_F32}, {0x0E, "f64", 8, GLIA_DTYPE_F64},
};

static const idx_type *find_type(uint8_t code) {
  for (size_t i = 0; i < sizeof idx_types / sizeof idx_types[0]; i++)
    if (idx_types[i].code == code) return &idx_types[i];
  return NULL;
}

static uint64_t be(const uint8_t *p, int width) {
  uint64_t v = 0;
  for (int i = 0; i < width; i++) v = v << 8 | p[i];
  return v;
}

/* Converts n big-endian file elements at src into dst (of the type's dtype). */
static void decode(const idx_type *ty, const uint8_t *src, void *dst, size_t n) {
  switch (ty->code) {
  case 0x08:
    memcpy(dst, src, n);
    break;
  case 0x09:
    for (size_t i = 0; i < n; i++) ((int32_t *)dst)[i] = (int8_t)src[i];
    break;
  case 0x0B:
    for (size_t i = 0; i < n; i++) ((int32_t *)dst)[i] = (int16_t)be(src + 2 * i, 2);
    break;
  case 0x0C:
    for (size_t i = 0; i < n; i++) ((int32_t *)dst)[i] = (int32_t)(uint32_t)be(src + 4 * i, 4);
    break;
  case 0x0D:
    for (size_t i = 0; i < n; i++) {
      uint32_t u = (uint32_t)be(src + 4 * i, 4);
      memcpy((float *)dst + i, &u, 4);
    }
    break;
  case 0x0E:
    for (size_t i = 0; i < n; i++) {
      uint64_t u = be(src + 8 * i, 8);
      memcpy((double *)dst + i, &u, 8);
    }
    break;
  }
}

/* ====================================================== reading */

/* One open file and what is known about it, for messages. */
typedef struct {
  glia_ctx *G;
  const char *path;
  gzFile f;
  uint64_t file_bytes; /* on disk (compressed for a gzip file) */
} reader;

/* Reads exactly n bytes, or fails naming what was being read. */
static glia_status read_exact(reader *r, void *buf, size_t n, const char *what) {
  int got = gzread(r->f, buf, (unsigned)n);
  int zerr;
  const char *zmsg = gzerror(r->f, &zerr);
  if (got < 0 || (zerr != Z_OK && zerr != Z_BUF_ERROR))
    return glia_fail(r->G, GLIA_EFORMAT, "glia.read_idx: %s: corrupt (%s)", r->path, zmsg);
  if ((size_t)got < n)
    return glia_fail(r->G, GLIA_EFORMAT, "glia.read_idx: %s: truncated in the %s", r->path, what);
  return GLIA_OK;
}

/* The header: element type, dims, and the number of data bytes it promises. */
static glia_status read_header(reader *r, const idx_type **ty, int *ndim, int64_t *size,
                               uint64_t *data_bytes) {
  uint8_t magic[4], dims[4 * GLIA_MAX_DIMS];
  TRY(read_exact(r, magic, 4, "header"));
  if (magic[0] != 0 || magic[1] != 0)
    return glia_fail(r->G, GLIA_EFORMAT,
                     "glia.read_idx: %s: not an IDX file (starts with %02x %02x %02x %02x)",
                     r->path, magic[0], magic[1], magic[2], magic[3]);
  if (!(*ty = find_type(magic[2])))
    return glia_fail(r->G, GLIA_EFORMAT, "glia.read_idx: %s: unknown element type 0x%02x",
                     r->path, magic[2]);
  if (magic[3] < 1 || magic[3] > GLIA_MAX_DIMS)
    return glia_fail(r->G, GLIA_EFORMAT, "glia.read_idx: %s: %d dims (1 to %d supported)",
                     r->path, magic[3], GLIA_MAX_DIMS);
  *ndim = magic[3];
  TRY(read_exact(r, dims, 4 * (size_t)*ndim, "header"));
  uint64_t n = 1;
  bool overflow = false;
  for (int d = 0; d < *ndim; d++) {
    size[d] = (int64_t)be(dims + 4 * d, 4);
    overflow |= __builtin_mul_overflow(n, (uint64_t)size[d], &n);
  }
  overflow |= __builtin_mul_overflow(n, (uint64_t)(*ty)->width, data_bytes);
  if (overflow || *data_bytes > (uint64_t)INT64_MAX)
    return glia_fail(r->G, GLIA_EFORMAT, "glia.read_idx: %s: corrupt header (%s %s is too large)",
                     r->path, glia_sizes_str(*ndim, size), (*ty)->name);
  return GLIA_OK;
}

/* Checks the promised data size against the file before allocating. */
static glia_status check_size(reader *r, int ndim, const int64_t *size, const idx_type *ty,
                              uint64_t data_bytes) {
  uint64_t header = 4 + 4 * (uint64_t)ndim;
  if (gzdirect(r->f)) {
    if (r->file_bytes - header != data_bytes)
      return glia_fail(r->G, GLIA_EFORMAT,
                       "glia.read_idx: %s: %s (header says %s %s: %llu data bytes, the "
                       "file has %llu)",
                       r->path, r->file_bytes - header < data_bytes ? "truncated" : "too long",
                       glia_sizes_str(ndim, size), ty->name, (unsigned long long)data_bytes,
                       (unsigned long long)(r->file_bytes - header));
  } else if (data_bytes / DEFLATE_MAX_RATIO > r->file_bytes) {
    return glia_fail(r->G, GLIA_EFORMAT,
                     "glia.read_idx: %s: corrupt header (%s %s: %llu data bytes cannot come "
                     "from %llu compressed bytes)",
                     r->path, glia_sizes_str(ndim, size), ty->name,
                     (unsigned long long)data_bytes, (unsigned long long)r->file_bytes);
  }
  return GLIA_OK;
}

/* Decodes the data into t chunk by chunk, then insists on the end of file. */
static glia_status read_data(reader *r, const idx_type *ty, glia_tensor *t) {
  uint8_t buf[CHUNK];
  size_t n = (size_t)glia_tensor_numel(t), per = CHUNK / (size_t)ty->width;
  char *dst = glia_tensor_data(t);
  size_t esize = glia_dtype_size(ty->dtype);
  for (size_t done = 0; done < n;) {
    size_t k = n - done < per ? n - done : per;
    TRY(read_exact(r, buf, k * (size_t)ty->width, "data"));
    decode(ty, buf, dst + done * esize, k);
    done += k;
  }
  /* one more byte must hit a clean end: this also checks a gzip file's
  ** trailer (CRC and length) */
  int got = gzread(r->f, buf, 1), zerr;
  const char *zmsg = gzerror(r->f, &zerr);
  if (zerr == Z_BUF_ERROR)
    return glia_fail(r->G, GLIA_EFORMAT, "glia.read_idx: %s: truncated after the data", r->path);
  if (got < 0 || zerr != Z_OK)
    return glia_fail(r->G, GLIA_EFORMAT, "glia.read_idx: %s: corrupt (%s)", r->path, zmsg);
  if (got > 0)
    return glia_fail(r->G, GLIA_EFORMAT,
                     "glia.read_idx: %s: too long (bytes follow the %s %s of the header)",
                     r->path, glia_shape_str(t), ty->name);
  return GLIA_OK;
}

static glia_status read_file(reader *r, glia_tensor **out) {
  const idx_type *ty = NULL;
  int ndim = 0;
  int64_t size[GLIA_MAX_DIMS];
  uint64_t data_bytes = 0;
  TRY(read_header(r, &ty, &ndim, size, &data_bytes));
  TRY(check_size(r, ndim, size, ty, data_bytes));
  glia_tensor *t;
  TRY(glia_tensor_new(r->G, ty->dtype, ndim, size, &t));
  glia_status st = read_data(r, ty, t);
  return glia_hand_out(st, t, out);
}

glia_status glia_idx_read(glia_ctx *G, const char *path, glia_tensor **out) {
  int fd;
  uint64_t fsize;
  TRY(glia_file_open(G, "glia.read_idx", path, &fd, &fsize));
  reader r = {G, path, gzdopen(fd, "rb"), fsize};
  if (!r.f) {
    close(fd);
    return glia_fail_nomem(G, 0, "glia.read_idx");
  }
  gzbuffer(r.f, 1 << 17);
  glia_status st = read_file(&r, out);
  gzclose_r(r.f);
  return st;
}
