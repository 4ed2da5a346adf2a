/*
** vm/safetensors.c -- reading and writing safetensors files.
**
** Format: an 8-byte little-endian header length N, N bytes of JSON
** {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...,
**  "__metadata__": {"key": "value"}}, then the data buffer; offsets are
** relative to the buffer. Loading never trusts the file: the header is
** parsed by a strict bounded JSON reader, and every dtype, shape, offset
** and size is checked against the file before a byte of data is read.
** Writing goes to a temporary file in the same directory, is fsynced, then
** renamed over the target: a crash mid-save leaves the old file intact.
** The temporary file is named <path>.tmp<pid>-XXXXXX; a process killed
** mid-save leaves it behind, and the next successful save of the same path
** removes every such file whose process is gone.
*/
#include "glia_impl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_HEADER ((uint64_t)100 << 20)
#define MAX_DEPTH 8

/* ====================================================== JSON reader */

/* A tiny strict JSON parser over a bounded buffer. Values are visited in
** place: strings are unescaped into a scratch buffer owned by the caller. */
typedef struct {
  const char *begin, *p, *end;
  glia_ctx *G;
  const char *path;
  glia_status st;
} jreader;

static glia_status jfail(jreader *r, const char *what) {
  if (r->st == GLIA_OK)
    r->st = glia_fail(r->G, GLIA_EFORMAT, "glia.load: %s: malformed header (%s at byte %ld)",
                      r->path, what, (long)(r->p - r->begin) + 8);
  return r->st;
}

static void jspace(jreader *r) {
  while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
    r->p++;
}

static bool jeat(jreader *r, char c) {
  jspace(r);
  if (r->p < r->end && *r->p == c) {
    r->p++;
    return true;
  }
  return false;
}

/* Reads a string into buf (NUL-terminated, at most cap-1 bytes). */
static glia_status jstring(jreader *r, char *buf, size_t cap) {
  jspace(r);
  if (r->p >= r->end || *r->p != '"') return jfail(r, "expected a string");
  r->p++;
  size_t n = 0;
  while (r->p < r->end && *r->p != '"') {
    unsigned char c = (unsigned char)*r->p++;
    if (c < 0x20) return jfail(r, "control character in string");
    if (c == '\\') {
      if (r->p >= r->end) return jfail(r, "truncated escape");
      char e = *r->p++;
      switch (e) {
      case '"': case '\\': case '/': c = (unsigned char)e; break;
      case 'b': c = '\b'; break;
      case 'f': c = '\f'; break;
      case 'n': c = '\n'; break;
      case 'r': c = '\r'; break;
      case 't': c = '\t'; break;
      case 'u': {
        if (r->end - r->p < 4) return jfail(r, "truncated \\u escape");
        unsigned v = 0;
        for (int i = 0; i < 4; i++) {
          char h = *r->p++;
          v <<= 4;
          if (h >= '0' && h <= '9') v |= (unsigned)(h - '0');
          else if (h >= 'a' && h <= 'f') v |= (unsigned)(h - 'a' + 10);
          else if (h >= 'A' && h <= 'F') v |= (unsigned)(h - 'A' + 10);
          else return jfail(r, "bad \\u escape");
        }
        /* encode as UTF-8 (surrogates passed through as-is) */
        char u[3];
        int k = 0;
        if (v < 0x80) u[k++] = (char)v;
        else if (v < 0x800) u[k++] = (char)(0xC0 | (v >> 6)), u[k++] = (char)(0x80 | (v & 0x3F));
        else
          u[k++] = (char)(0xE0 | (v >> 12)), u[k++] = (char)(0x80 | ((v >> 6) & 0x3F)),
          u[k++] = (char)(0x80 | (v & 0x3F));
        for (int i = 0; i < k; i++) {
          if (n + 1 >= cap) return jfail(r, "string too long");
          buf[n++] = u[i];
        }
        continue;
      }
      default: return jfail(r, "bad escape");
      }
    }
    if (n + 1 >= cap) return jfail(r, "string too long");
    buf[n++] = (char)c;
  }
  if (r->p >= r->end) return jfail(r, "unterminated string");
  r->p++;
  buf[n] = 0;
  return GLIA_OK;
}

static glia_status juint(jreader *r, uint64_t *out) {
  jspace(r);
  const char *s = r->p;
  uint64_t v = 0;
  while (r->p < r->end && *r->p >= '0' && *r->p <= '9') {
    if (v > (UINT64_MAX - 9) / 10) return jfail(r, "integer too large");
    v = v * 10 + (uint64_t)(*r->p++ - '0');
  }
  if (r->p == s) return jfail(r, "expected a non-negative integer");
  if (r->p < r->end && (*r->p == '.' || *r->p == 'e' || *r->p == 'E'))
    return jfail(r, "expected an integer");
  *out = v;
  return GLIA_OK;
}

/* Skips any JSON value (used for unknown keys), bounded in depth. */
static glia_status jskip(jreader *r, int depth) {
  if (depth > MAX_DEPTH) return jfail(r, "nesting too deep");
  jspace(r);
  if (r->p >= r->end) return jfail(r, "truncated value");
  char c = *r->p;
  if (c == '"') {
    char tmp[4096];
    return jstring(r, tmp, sizeof tmp);
  }
  if (c == '{' || c == '[') {
    char close = c == '{' ? '}' : ']';
    r->p++;
    if (jeat(r, close)) return GLIA_OK;
    do {
      if (c == '{') {
        char tmp[4096];
        TRY(jstring(r, tmp, sizeof tmp));
        if (!jeat(r, ':')) return jfail(r, "expected ':'");
      }
      TRY(jskip(r, depth + 1));
    } while (jeat(r, ','));
    if (!jeat(r, close)) return jfail(r, "expected a closing bracket");
    return GLIA_OK;
  }
  const char *s = r->p;
  while (r->p < r->end && (strchr("+-.eE0123456789", *r->p) || (*r->p >= 'a' && *r->p <= 'z')))
    r->p++;
  if (r->p == s) return jfail(r, "unexpected character");
  return GLIA_OK;
}

/* ================================================ dtypes on disk */

typedef enum { ST_F32, ST_F64, ST_I64, ST_I32, ST_U8, ST_BOOL, ST_F16, ST_BF16, ST_I8, ST_I16 } st_dtype;
static const struct {
  const char *name;
  size_t size;
  glia_dtype to; /* what it loads as */
} st_dtypes[] = {
    [ST_F32] = {"F32", 4, GLIA_DTYPE_F32}, [ST_F64] = {"F64", 8, GLIA_DTYPE_F64},
    [ST_I64] = {"I64", 8, GLIA_DTYPE_I64}, [ST_I32] = {"I32", 4, GLIA_DTYPE_I32},
    [ST_U8] = {"U8", 1, GLIA_DTYPE_U8},    [ST_BOOL] = {"BOOL", 1, GLIA_DTYPE_BOOL},
    [ST_F16] = {"F16", 2, GLIA_DTYPE_F32}, [ST_BF16] = {"BF16", 2, GLIA_DTYPE_F32},
    [ST_I8] = {"I8", 1, GLIA_DTYPE_I32},   [ST_I16] = {"I16", 2, GLIA_DTYPE_I32},
};
#define ST_NDTYPES ((int)(sizeof st_dtypes / sizeof st_dtypes[0]))

static const char *st_name_of(glia_dtype dt) {
  switch (dt) {
  case GLIA_DTYPE_F32: return "F32";
  case GLIA_DTYPE_F64: return "F64";
  case GLIA_DTYPE_I64: return "I64";
  case GLIA_DTYPE_I32: return "I32";
  case GLIA_DTYPE_U8: return "U8";
  default: return "BOOL";
  }
}

static float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
  if (exp == 0) {
    if (man == 0) bits = sign;
    else { /* subnormal: normalize */
      int e = -1;
      do { e++; man <<= 1; } while (!(man & 0x400));
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FF) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

/* ========================================================== reading */

typedef struct st_entry {
  char name[256];
  st_dtype dtype;
  int ndim;
  int64_t size[GLIA_MAX_DIMS];
  uint64_t begin, end;
} st_entry;

struct glia_st_file {
  int refs; /* the opener's, plus one per mapped tensor */
  int n, nmeta;
  st_entry *entries;
  char (*meta)[2][1024];
  unsigned char *data; /* the data buffer (inside the map) */
  uint64_t data_size;
  void *map;
  size_t map_size;
  char path[512];
};

static glia_status parse_entry(jreader *r, st_entry *e) {
  bool have_dtype = false, have_shape = false, have_off = false;
  if (!jeat(r, '{')) return jfail(r, "expected '{' for a tensor entry");
  if (jeat(r, '}')) return jfail(r, "empty tensor entry");
  do {
    char key[64];
    TRY(jstring(r, key, sizeof key));
    if (!jeat(r, ':')) return jfail(r, "expected ':'");
    if (strcmp(key, "dtype") == 0) {
      char dt[16];
      TRY(jstring(r, dt, sizeof dt));
      int k;
      for (k = 0; k < ST_NDTYPES; k++)
        if (strcmp(dt, st_dtypes[k].name) == 0) break;
      if (k == ST_NDTYPES)
        return r->st = glia_fail(r->G, GLIA_EFORMAT,
                                 "glia.load: %s: tensor '%s' has unsupported dtype %s", r->path,
                                 e->name, dt);
      e->dtype = (st_dtype)k;
      have_dtype = true;
    } else if (strcmp(key, "shape") == 0) {
      if (!jeat(r, '[')) return jfail(r, "expected '[' for shape");
      e->ndim = 0;
      if (!jeat(r, ']')) {
        do {
          uint64_t v;
          if (e->ndim >= GLIA_MAX_DIMS) return jfail(r, "more than 8 dims");
          TRY(juint(r, &v));
          if (v > ((uint64_t)1 << 48)) return jfail(r, "dimension too large");
          e->size[e->ndim++] = (int64_t)v;
        } while (jeat(r, ','));
        if (!jeat(r, ']')) return jfail(r, "expected ']' after shape");
      }
      have_shape = true;
    } else if (strcmp(key, "data_offsets") == 0) {
      if (!jeat(r, '[')) return jfail(r, "expected '[' for data_offsets");
      TRY(juint(r, &e->begin));
      if (!jeat(r, ',')) return jfail(r, "expected two data_offsets");
      TRY(juint(r, &e->end));
      if (!jeat(r, ']')) return jfail(r, "expected ']' after data_offsets");
      have_off = true;
    } else {
      TRY(jskip(r, 1));
    }
  } while (jeat(r, ','));
  if (!jeat(r, '}')) return jfail(r, "expected '}' after a tensor entry");
  if (!have_dtype || !have_shape || !have_off) return jfail(r, "tensor entry lacks a field");
  return GLIA_OK;
}

static glia_status parse_meta(jreader *r, glia_st_file *f) {
  if (!jeat(r, '{')) return jfail(r, "expected '{' for __metadata__");
  if (jeat(r, '}')) return GLIA_OK;
  do {
    void *m = glia_realloc(r->G, f->meta, (size_t)(f->nmeta + 1) * sizeof *f->meta);
    if (!m) return r->st = glia_fail_nomem(r->G, sizeof *f->meta, "safetensors metadata");
    f->meta = m;
    TRY(jstring(r, f->meta[f->nmeta][0], sizeof f->meta[0][0]));
    if (!jeat(r, ':')) return jfail(r, "expected ':'");
    TRY(jstring(r, f->meta[f->nmeta][1], sizeof f->meta[0][1]));
    f->nmeta++;
  } while (jeat(r, ','));
  if (!jeat(r, '}')) return jfail(r, "expected '}' after __metadata__");
  return GLIA_OK;
}

static int cmp_begin(const void *a, const void *b) {
  const st_entry *x = *(st_entry *const *)a, *y = *(st_entry *const *)b;
  return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* Checks sizes, offsets and overlaps of every entry against the buffer. */
static glia_status validate(glia_ctx *G, glia_st_file *f) {
  st_entry **order = glia_malloc(G, sizeof *order * (size_t)(f->n ? f->n : 1));
  if (!order) return glia_fail_nomem(G, 0, "safetensors index");
  for (int i = 0; i < f->n; i++) {
    st_entry *e = &f->entries[i];
    order[i] = e;
    /* span: the sizes' product with zeros as ones (the largest stride),
    ** bounded even when a zero size leaves nothing to read */
    uint64_t numel = 1, span = 1;
    for (int d = 0; d < e->ndim; d++) {
      uint64_t s = (uint64_t)e->size[d];
      if (s > 1 && span > ((uint64_t)1 << 50) / s) {
        free(order);
        return glia_fail(G, GLIA_EFORMAT, "glia.load: %s: tensor '%s' is too large", f->path,
                         e->name);
      }
      if (s > 1) span *= s;
      numel *= s;
    }
    if (e->begin > e->end || e->end > f->data_size ||
        e->end - e->begin != numel * st_dtypes[e->dtype].size) {
      free(order);
      return glia_fail(G, GLIA_EFORMAT,
                       "glia.load: %s: tensor '%s' %s %s has data_offsets [%llu, %llu] that do "
                       "not fit its size or the file (%llu data bytes)",
                       f->path, e->name, st_dtypes[e->dtype].name,
                       glia_sizes_str(e->ndim, e->size), (unsigned long long)e->begin,
                       (unsigned long long)e->end, (unsigned long long)f->data_size);
    }
    for (int j = 0; j < i; j++)
      if (strcmp(f->entries[j].name, e->name) == 0) {
        free(order);
        return glia_fail(G, GLIA_EFORMAT, "glia.load: %s: duplicate tensor name '%s'", f->path,
                         e->name);
      }
  }
  qsort(order, (size_t)f->n, sizeof *order, cmp_begin);
  for (int i = 1; i < f->n; i++)
    if (order[i]->begin < order[i - 1]->end) {
      glia_status st = glia_fail(G, GLIA_EFORMAT, "glia.load: %s: tensors '%s' and '%s' overlap",
                                 f->path, order[i - 1]->name, order[i]->name);
      free(order);
      return st;
    }
  free(order);
  return GLIA_OK;
}

void glia_safetensors_close(glia_st_file *f) {
  if (!f || --f->refs > 0) return;
  if (f->map) munmap(f->map, f->map_size);
  free(f->entries);
  free(f->meta);
  free(f);
}

glia_status glia_file_open(glia_ctx *G, const char *op, const char *path, int *fd,
                           uint64_t *size) {
  int f = open(path, O_RDONLY | O_CLOEXEC);
  if (f < 0) return glia_fail(G, GLIA_EIO, "%s: cannot open %s: %s", op, path, strerror(errno));
  struct stat sb;
  if (fstat(f, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    close(f);
    return glia_fail(G, GLIA_EIO, "%s: %s is not a regular file", op, path);
  }
  *fd = f;
  *size = (uint64_t)sb.st_size;
  return GLIA_OK;
}

glia_status glia_safetensors_open(glia_ctx *G, const char *path, glia_st_file **out) {
  int fd;
  uint64_t fsize;
  TRY(glia_file_open(G, "glia.load", path, &fd, &fsize));
  if (fsize < 8) {
    close(fd);
    return glia_fail(G, GLIA_EFORMAT, "glia.load: %s: truncated (%llu bytes, no header)", path,
                     (unsigned long long)fsize);
  }
  /* private and writable: tensors that map the file are copy-on-write */
  void *map = mmap(NULL, (size_t)fsize, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED)
    return glia_fail(G, GLIA_EIO, "glia.load: cannot map %s: %s", path, strerror(errno));
  glia_st_file *f = glia_malloc(G, sizeof *f);
  if (!f) {
    munmap(map, (size_t)fsize);
    return glia_fail_nomem(G, sizeof *f, "safetensors file");
  }
  memset(f, 0, sizeof *f);
  f->refs = 1;
  f->map = map;
  f->map_size = (size_t)fsize;
  snprintf(f->path, sizeof f->path, "%s", path);
  unsigned char *b = map;
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | b[i];
  if (hlen > MAX_HEADER || hlen > fsize - 8) {
    glia_status st = glia_fail(G, GLIA_EFORMAT,
                               "glia.load: %s: header length %llu exceeds the file (%llu bytes)",
                               path, (unsigned long long)hlen, (unsigned long long)fsize);
    glia_safetensors_close(f);
    return st;
  }
  f->data = b + 8 + hlen;
  f->data_size = fsize - 8 - hlen;
  jreader r = {(const char *)b + 8, (const char *)b + 8, (const char *)b + 8 + hlen, G, f->path,
               GLIA_OK};
  int cap = 0;
  if (!jeat(&r, '{')) jfail(&r, "expected '{'");
  else if (!jeat(&r, '}')) {
    do {
      char name[256];
      if (jstring(&r, name, sizeof name) != GLIA_OK) break;
      if (!jeat(&r, ':')) {
        jfail(&r, "expected ':'");
        break;
      }
      if (strcmp(name, "__metadata__") == 0) {
        if (parse_meta(&r, f) != GLIA_OK) break;
        continue;
      }
      if (f->n == cap) {
        cap = cap ? cap * 2 : 16;
        void *e = glia_realloc(G, f->entries, (size_t)cap * sizeof *f->entries);
        if (!e) {
          r.st = glia_fail_nomem(G, 0, "safetensors index");
          break;
        }
        f->entries = e;
      }
      st_entry *e = &f->entries[f->n];
      memset(e, 0, sizeof *e);
      memcpy(e->name, name, sizeof e->name);
      if (parse_entry(&r, e) != GLIA_OK) break;
      f->n++;
    } while (jeat(&r, ','));
    if (r.st == GLIA_OK && !jeat(&r, '}')) jfail(&r, "expected '}' at the end");
  }
  jspace(&r);
  if (r.st == GLIA_OK && r.p != r.end) jfail(&r, "trailing bytes after the header");
  glia_status st = r.st == GLIA_OK ? validate(G, f) : r.st;
  if (st != GLIA_OK) {
    glia_safetensors_close(f);
    return st;
  }
  *out = f;
  return GLIA_OK;
}

int glia_safetensors_count(const glia_st_file *f) { return f->n; }
const char *glia_safetensors_name(const glia_st_file *f, int i) { return f->entries[i].name; }
int glia_safetensors_meta_count(const glia_st_file *f) { return f->nmeta; }
const char *glia_safetensors_meta_key(const glia_st_file *f, int i) { return f->meta[i][0]; }
const char *glia_safetensors_meta_value(const glia_st_file *f, int i) { return f->meta[i][1]; }

static void unref_file(void *ud, void *data) {
  (void)data;
  glia_safetensors_close(ud);
}

glia_status glia_safetensors_tensor(glia_ctx *G, glia_st_file *f, int i, int map,
                                    glia_tensor **out) {
  const st_entry *e = &f->entries[i];
  glia_tensor *t;
  size_t es = st_dtypes[e->dtype].size;
  bool native = e->dtype <= ST_BOOL;
  if (map && native && ((uintptr_t)(f->data + e->begin) % es) == 0) {
    TRY(glia_tensor_wrap(G, (void *)(f->data + e->begin), st_dtypes[e->dtype].to, e->ndim,
                         e->size, NULL, unref_file, f, out));
    f->refs++;
    return GLIA_OK;
  }
  TRY(glia_tensor_new(G, st_dtypes[e->dtype].to, e->ndim, e->size, &t));
  const unsigned char *src = f->data + e->begin;
  int64_t n = glia_tensor_numel(t);
  char *dst = t->storage->data;
  switch (e->dtype) {
  case ST_F16:
  case ST_BF16:
    for (int64_t k = 0; k < n; k++) {
      uint16_t h = (uint16_t)(src[2 * k] | (src[2 * k + 1] << 8));
      float v;
      if (e->dtype == ST_F16) v = half_to_float(h);
      else {
        uint32_t bits = (uint32_t)h << 16;
        memcpy(&v, &bits, 4);
      }
      ((float *)dst)[k] = v;
    }
    break;
  case ST_I8:
    for (int64_t k = 0; k < n; k++) ((int32_t *)dst)[k] = (int8_t)src[k];
    break;
  case ST_I16:
    for (int64_t k = 0; k < n; k++) ((int32_t *)dst)[k] = (int16_t)(src[2 * k] | (src[2 * k + 1] << 8));
    break;
  case ST_BOOL:
    for (int64_t k = 0; k < n; k++) dst[k] = src[k] != 0;
    break;
  default: /* little-endian host: a plain copy */
    memcpy(dst, src, (size_t)(e->end - e->begin));
  }
  *out = t;
  return GLIA_OK;
}

/* ========================================================== writing */

typedef struct {
  glia_ctx *G;
  char *s;
  size_t n, cap;
  bool oom;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->n + n + 1 > b->cap) {
    size_t cap = (b->cap + n + 1) * 2;
    char *p = glia_realloc(b->G, b->s, cap);
    if (!p) {
      b->oom = true;
      return;
    }
    b->s = p;
    b->cap = cap;
  }
  memcpy(b->s + b->n, s, n);
  b->n += n;
  b->s[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

static void sb_json_string(sbuf *b, const char *s) {
  sb_add(b, "\"", 1);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    char esc[8];
    if (c == '"' || c == '\\') {
      esc[0] = '\\', esc[1] = (char)c;
      sb_add(b, esc, 2);
    } else if (c < 0x20) {
      snprintf(esc, sizeof esc, "\\u%04x", c);
      sb_str(b, esc);
    } else {
      sb_add(b, (const char *)&c, 1);
    }
  }
  sb_add(b, "\"", 1);
}

static glia_status write_all(glia_ctx *G, int fd, const void *p, size_t n, const char *path) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return glia_fail(G, GLIA_EIO, "glia.save: writing %s: %s", path, strerror(errno));
    }
    c += w;
    n -= (size_t)w;
  }
  return GLIA_OK;
}

/* Removes the temporary files of saves to base (a name in the directory
** dfd) whose process is gone: a save killed mid-write leaves its
** base.tmp<pid>-XXXXXX behind. Those of live processes (this one included)
** may be saves in progress and stay. Best effort: errors are ignored. */
static void remove_stale_temps(int dfd, const char *base) {
  int fd = dup(dfd);
  DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
  if (!d) {
    if (fd >= 0) close(fd);
    return;
  }
  size_t bl = strlen(base);
  struct dirent *e;
  while ((e = readdir(d))) {
    const char *name = e->d_name, *p = name + bl + 4;
    if (strncmp(name, base, bl) != 0 || strncmp(name + bl, ".tmp", 4) != 0) continue;
    char *end;
    long pid = strtol(p, &end, 10);
    if (end == p || *end != '-' || strlen(end + 1) != 6 || pid <= 0 || pid == (long)getpid())
      continue;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH) unlinkat(dirfd(d), name, 0);
  }
  closedir(d);
}

glia_status glia_safetensors_save(glia_ctx *G, const char *path, int n, const char *const *names,
                                  glia_tensor *const *tensors, int nmeta,
                                  const char *const *meta_keys, const char *const *meta_vals) {
  for (int i = 0; i < n; i++) {
    TRY(glia_check_live(G, "glia.save", tensors[i]));
    if (!*names[i] || strlen(names[i]) >= 256)
      return glia_fail(G, GLIA_EARG, "glia.save: tensor names must have 1..255 bytes");
    if (strcmp(names[i], "__metadata__") == 0)
      return glia_fail(G, GLIA_EARG, "glia.save: '__metadata__' is reserved");
  }
  /* header */
  sbuf h = {G, NULL, 0, 0, false};
  sb_str(&h, "{");
  if (nmeta > 0) {
    sb_str(&h, "\"__metadata__\":{");
    for (int i = 0; i < nmeta; i++) {
      if (i) sb_str(&h, ",");
      sb_json_string(&h, meta_keys[i]);
      sb_str(&h, ":");
      sb_json_string(&h, meta_vals[i]);
    }
    sb_str(&h, "}");
  }
  uint64_t off = 0;
  for (int i = 0; i < n; i++) {
    const glia_tensor *t = tensors[i];
    char num[64];
    if (i || nmeta > 0) sb_str(&h, ",");
    sb_json_string(&h, names[i]);
    sb_str(&h, ":{\"dtype\":\"");
    sb_str(&h, st_name_of(t->dtype));
    sb_str(&h, "\",\"shape\":[");
    for (int d = 0; d < t->ndim; d++) {
      snprintf(num, sizeof num, d ? ",%lld" : "%lld", (long long)t->size[d]);
      sb_str(&h, num);
    }
    uint64_t bytes = (uint64_t)glia_tensor_numel(t) * glia_dtype_size(t->dtype);
    snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
             (unsigned long long)(off + bytes));
    sb_str(&h, num);
    off += bytes;
  }
  sb_str(&h, "}");
  while (!h.oom && (h.n % 8) != 0) sb_str(&h, " ");
  if (h.oom) {
    free(h.s);
    return glia_fail_nomem(G, h.cap, "glia.save header");
  }
  /* temporary file next to the target, then fsync + rename */
  size_t tlen = strlen(path) + 40;
  char *tmp = glia_malloc(G, tlen);
  if (!tmp) {
    free(h.s);
    return glia_fail_nomem(G, tlen, "glia.save");
  }
  snprintf(tmp, tlen, "%s.tmp%ld-XXXXXX", path, (long)getpid());
  int fd = mkstemp(tmp);
  if (fd >= 0) { /* mkstemp makes 0600; give the file the usual 0666 & ~umask */
    mode_t mask = umask(0);
    umask(mask);
    fchmod(fd, 0666 & ~mask);
  }
  if (fd < 0) {
    glia_status st = glia_fail(G, GLIA_EIO, "glia.save: cannot create a file next to %s: %s",
                               path, strerror(errno));
    free(tmp);
    free(h.s);
    return st;
  }
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)h.n >> (8 * i));
  glia_status st = write_all(G, fd, len8, 8, path);
  if (st == GLIA_OK) st = write_all(G, fd, h.s, h.n, path);
  free(h.s);
  for (int i = 0; i < n && st == GLIA_OK; i++) {
    glia_tensor *c = NULL;
    st = glia_tensor_contiguous_as(G, tensors[i], tensors[i]->dtype, &c);
    if (st == GLIA_OK)
      st = write_all(G, fd, glia_ptr(c),
                     (size_t)glia_tensor_numel(c) * glia_dtype_size(c->dtype), path);
    glia_tensor_release(c);
  }
  if (st == GLIA_OK && fsync(fd) != 0)
    st = glia_fail(G, GLIA_EIO, "glia.save: fsync %s: %s", path, strerror(errno));
  if (close(fd) != 0 && st == GLIA_OK)
    st = glia_fail(G, GLIA_EIO, "glia.save: close %s: %s", path, strerror(errno));
  if (st == GLIA_OK && rename(tmp, path) != 0)
    st = glia_fail(G, GLIA_EIO, "glia.save: rename to %s: %s", path, strerror(errno));
  if (st != GLIA_OK) unlink(tmp);
  free(tmp);
  if (st == GLIA_OK) { /* make the rename durable; clear what killed saves left */
    char *dir = strdup(path);
    if (dir) {
      char *slash = strrchr(dir, '/');
      const char *d = slash ? (slash == dir ? "/" : (*slash = 0, dir)) : ".";
      const char *base = slash ? path + (slash - dir) + 1 : path;
      int dfd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (dfd >= 0) {
        fsync(dfd);
        remove_stale_temps(dfd, base);
        close(dfd);
      }
      free(dir);
    }
  }
  return st;
}
