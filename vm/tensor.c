/*
** vm/tensor.c -- storage, tensors (views), copies and dtype conversion.
**
** A tensor is a view: dtype, sizes, strides and offset over a refcounted
** storage. Views share storage and cost O(1). A tensor holds one reference
** to its storage, its grad and its grad_fn; releasing the last reference
** drops all three. Tensor structs are recycled through a per-context list
** to keep the cost of a tiny op low.
*/
#include "glia_impl.h"

#include <stdlib.h>

/* ======================================================== geometry */

int64_t glia_numel_of(int ndim, const int64_t *size) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= size[i];
  return n;
}

void glia_contiguous_strides(int ndim, const int64_t *size, int64_t *stride) {
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    stride[i] = s;
    s *= size[i] > 1 ? size[i] : 1;
  }
}

glia_status glia_check_sizes(glia_ctx *G, const char *op, int ndim, const int64_t *size) {
  if (ndim < 0 || ndim > GLIA_MAX_DIMS)
    return glia_fail(G, GLIA_ESHAPE, "%s: at most %d dims are supported, got %d", op,
                     GLIA_MAX_DIMS, ndim);
  /* The bound is on the product of the sizes with zeros counted as ones:
  ** that is the largest stride (glia_contiguous_strides), which must not
  ** overflow even when a zero size makes the tensor empty. */
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) {
    if (size[i] < 0)
      return glia_fail(G, GLIA_ESHAPE, "%s: negative size %lld in dim %d", op,
                       (long long)size[i], i + 1);
    if (size[i] > 1 && n > (INT64_MAX >> 4) / size[i])
      return glia_fail(G, GLIA_ESHAPE, "%s: size %s is too large", op,
                       glia_sizes_str(ndim, size));
    if (size[i] > 1) n *= size[i];
  }
  return GLIA_OK;
}

/* ========================================================= storage */

static glia_storage *storage_new(glia_ctx *G, size_t nbytes) {
  glia_storage *s = glia_malloc(G, sizeof *s);
  if (!s) return NULL;
  void *data = glia_alloc(G, nbytes);
  if (!data) {
    free(s);
    return NULL;
  }
  *s = (glia_storage){.refcount = 1, .nbytes = nbytes, .data = data, .G = G};
  return s;
}

static void storage_release(glia_storage *s) {
  if (!s || --s->refcount > 0) return;
  if (s->from_host) {
    if (s->host_release) s->host_release(s->host_ud, s->data);
  } else {
    glia_free(s->G, s->data, s->nbytes);
  }
  free(s);
}

/* ========================================================= tensors */

static glia_tensor *tensor_struct(glia_ctx *G) {
  glia_tensor *t = G->free_tensors;
  if (t) {
    G->free_tensors = t->free_next;
    G->nfree_tensors--;
  } else {
    t = glia_malloc(G, sizeof *t);
    if (!t) return NULL;
  }
  memset(t, 0, sizeof *t);
  t->refcount = 1;
  t->G = G;
  return t;
}

glia_status glia_tensor_new(glia_ctx *G, glia_dtype dt, int ndim, const int64_t *size,
                            glia_tensor **out) {
  if ((unsigned)dt >= GLIA_DTYPE_COUNT)
    return glia_fail(G, GLIA_EDTYPE, "glia.tensor: unknown dtype %d", (int)dt);
  TRY(glia_check_sizes(G, "glia.tensor", ndim, size));
  size_t nbytes = (size_t)glia_numel_of(ndim, size) * glia_dtype_size(dt);
  glia_tensor *t = tensor_struct(G);
  if (!t) return glia_fail_nomem(G, sizeof *t, "a tensor");
  t->storage = storage_new(G, nbytes);
  if (!t->storage) {
    glia_tensor_release(t);
    return glia_fail_nomem(G, nbytes, "a tensor");
  }
  t->dtype = dt;
  t->ndim = ndim;
  if (ndim > 0) memcpy(t->size, size, (size_t)ndim * sizeof *size);
  glia_contiguous_strides(ndim, size, t->stride);
  *out = t;
  return GLIA_OK;
}

glia_status glia_tensor_new_like(glia_ctx *G, const glia_tensor *like, glia_dtype dt,
                                 glia_tensor **out) {
  return glia_tensor_new(G, dt, like->ndim, like->size, out);
}

glia_status glia_tensor_zeros(glia_ctx *G, glia_dtype dt, int ndim, const int64_t *size,
                              glia_tensor **out) {
  glia_tensor *t;
  TRY(glia_tensor_new(G, dt, ndim, size, &t));
  memset(t->storage->data, 0, (size_t)glia_numel_of(ndim, size) * glia_dtype_size(dt));
  *out = t;
  return GLIA_OK;
}

glia_status glia_tensor_wrap(glia_ctx *G, void *data, glia_dtype dt, int ndim,
                             const int64_t *size, const int64_t *stride,
                             void (*release)(void *ud, void *data), void *ud,
                             glia_tensor **out) {
  if ((unsigned)dt >= GLIA_DTYPE_COUNT)
    return glia_fail(G, GLIA_EDTYPE, "glia_tensor_wrap: unknown dtype %d", (int)dt);
  if (!data) return glia_fail(G, GLIA_EARG, "glia_tensor_wrap: data is NULL");
  TRY(glia_check_sizes(G, "glia_tensor_wrap", ndim, size));
  int64_t span = 1; /* elements reachable from data */
  for (int i = 0; i < ndim; i++) {
    if (stride && stride[i] < 0)
      return glia_fail(G, GLIA_EARG, "glia_tensor_wrap: negative stride in dim %d", i);
    if (size[i] == 0) span = 0;
  }
  if (span) {
    int64_t last = 0;
    for (int i = 0; i < ndim; i++)
      last += (size[i] - 1) * (stride ? stride[i] : 1);
    span = last + 1;
  }
  glia_tensor *t = tensor_struct(G);
  glia_storage *s = t ? glia_malloc(G, sizeof *s) : NULL;
  if (!s) {
    if (t) glia_tensor_release(t);
    return glia_fail_nomem(G, sizeof *s, "a wrapped tensor");
  }
  *s = (glia_storage){.refcount = 1, .nbytes = (size_t)span * glia_dtype_size(dt), .data = data,
                      .G = G, .host_release = release, .host_ud = ud, .from_host = 1};
  t->storage = s;
  t->dtype = dt;
  t->ndim = ndim;
  if (ndim > 0) memcpy(t->size, size, (size_t)ndim * sizeof *size);
  if (stride && ndim > 0)
    memcpy(t->stride, stride, (size_t)ndim * sizeof *stride);
  else if (!stride)
    glia_contiguous_strides(ndim, size, t->stride);
  *out = t;
  return GLIA_OK;
}

glia_tensor *glia_tensor_retain(glia_tensor *t) {
  if (t) t->refcount++;
  return t;
}

void glia_tensor_release(glia_tensor *t) {
  if (!t || --t->refcount > 0) return;
  glia_ctx *G = t->G;
  storage_release(t->storage);
  glia_tensor_release(t->grad);
  glia_node_release(t->grad_fn);
  if (t->grad_hook && G->grad_hook_drop) G->grad_hook_drop(G->grad_hook_ud, t);
  if (G->nfree_tensors < 1024) {
    t->free_next = G->free_tensors;
    G->free_tensors = t;
    G->nfree_tensors++;
  } else {
    free(t);
  }
}

glia_status glia_tensor_view_raw(glia_ctx *G, glia_tensor *t, int ndim, const int64_t *size,
                                 const int64_t *stride, int64_t offset, glia_tensor **out) {
  glia_tensor *v = tensor_struct(G);
  if (!v) return glia_fail_nomem(G, sizeof *v, "a view");
  v->storage = t->storage;
  if (v->storage) v->storage->refcount++;
  v->dtype = t->dtype;
  v->ndim = ndim;
  if (ndim > 0) {
    memcpy(v->size, size, (size_t)ndim * sizeof *size);
    memcpy(v->stride, stride, (size_t)ndim * sizeof *stride);
  }
  v->offset = offset;
  *out = v;
  return GLIA_OK;
}

glia_status glia_tensor_detach(glia_ctx *G, glia_tensor *t, glia_tensor **out) {
  return glia_tensor_view_raw(G, t, t->ndim, t->size, t->stride, t->offset, out);
}

glia_dtype glia_tensor_dtype(const glia_tensor *t) { return t->dtype; }
int glia_tensor_ndim(const glia_tensor *t) { return t->ndim; }
int64_t glia_tensor_size(const glia_tensor *t, int dim) {
  return dim >= 0 && dim < t->ndim ? t->size[dim] : -1;
}
int64_t glia_tensor_stride(const glia_tensor *t, int dim) {
  return dim >= 0 && dim < t->ndim ? t->stride[dim] : 0;
}
int64_t glia_tensor_numel(const glia_tensor *t) { return glia_numel_of(t->ndim, t->size); }

int glia_tensor_is_contiguous(const glia_tensor *t) {
  int64_t s = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->size[i] == 1) continue;
    if (t->stride[i] != s) return 0;
    s *= t->size[i];
  }
  return 1;
}

void *glia_tensor_data(glia_tensor *t) { return t->storage ? glia_ptr(t) : NULL; }

glia_status glia_check_live(glia_ctx *G, const char *op, const glia_tensor *t) {
  if (GLIA_UNLIKELY(!t->storage))
    return glia_fail(G, GLIA_EARG, "%s: tensor was freed", op);
  return GLIA_OK;
}

glia_status glia_check_f32(glia_ctx *G, const char *op, const char *what, const glia_tensor *t) {
  if (t->dtype != GLIA_DTYPE_F32)
    return glia_fail(G, GLIA_EDTYPE, "%s: %s must be f32, got %s %s", op, what,
                     glia_dtype_name(t->dtype), glia_shape_str(t));
  return GLIA_OK;
}

void glia_tensor_bump_version(glia_tensor *t) {
  if (t->storage) t->storage->version++;
}

/* ===================================================== copy / convert */

typedef struct {
  glia_dtype dst, src;
} convert_arg;

#define CONVERT_LOOP(DT, ST, EXPR)                                           \
  for (int64_t i = 0; i < n; i++) {                                          \
    ST v = *(const ST *)(p[1] + i * s[1]);                                   \
    *(DT *)(p[0] + i * s[0]) = (DT)(EXPR);                                   \
  }

/* Float to integer saturates (NaN gives 0): a plain C cast of an
** out-of-range float is undefined behaviour. Integer sources pass through. */
static inline double sat(double v, double lo, double hi) {
  return v != v ? 0 : v < lo ? lo : v > hi ? hi : v;
}
#define TO_INT(T, v, lo, hi) ((T)sat((double)(v), (lo), (hi)))

#define CONVERT_FROM(ST)                                                     \
  switch (a->dst) {                                                          \
  case GLIA_DTYPE_F32: CONVERT_LOOP(float, ST, v) break;                     \
  case GLIA_DTYPE_F64: CONVERT_LOOP(double, ST, v) break;                    \
  case GLIA_DTYPE_I64:                                                       \
    CONVERT_LOOP(int64_t, ST, TO_INT(int64_t, v, -9.2233720368547758e18, 9.2233720368547748e18)) break; \
  case GLIA_DTYPE_I32: CONVERT_LOOP(int32_t, ST, TO_INT(int32_t, v, -2147483648.0, 2147483647.0)) break; \
  case GLIA_DTYPE_U8: CONVERT_LOOP(uint8_t, ST, TO_INT(uint8_t, v, 0.0, 255.0)) break; \
  case GLIA_DTYPE_BOOL: CONVERT_LOOP(uint8_t, ST, v != 0) break;             \
  default: break;                                                            \
  }

static void convert_loop(int64_t n, char **p, const int64_t *s, void *ud) {
  const convert_arg *a = ud;
  if (a->dst == a->src) {
    size_t es = glia_dtype_size(a->dst);
    if (s[0] == (int64_t)es && s[1] == (int64_t)es) {
      memcpy(p[0], p[1], (size_t)n * es);
      return;
    }
    switch (es) {
    case 8: CONVERT_LOOP(uint64_t, uint64_t, v) return;
    case 4: CONVERT_LOOP(uint32_t, uint32_t, v) return;
    default: CONVERT_LOOP(uint8_t, uint8_t, v) return;
    }
  }
  switch (a->src) {
  case GLIA_DTYPE_F32: CONVERT_FROM(float) break;
  case GLIA_DTYPE_F64: CONVERT_FROM(double) break;
  case GLIA_DTYPE_I64: CONVERT_FROM(int64_t) break;
  case GLIA_DTYPE_I32: CONVERT_FROM(int32_t) break;
  case GLIA_DTYPE_U8:
  case GLIA_DTYPE_BOOL: CONVERT_FROM(uint8_t) break;
  default: break;
  }
}

static glia_status copy_new(glia_ctx *G, glia_tensor *t, glia_dtype dt, glia_tensor **out);

glia_status glia_tensor_clone(glia_ctx *G, glia_tensor *t, glia_tensor **out) {
  return copy_new(G, t, t->dtype, out);
}

/* The bytes [lo, hi) that t's elements span in its storage. */
static void byte_span(const glia_tensor *t, int64_t *lo, int64_t *hi) {
  int64_t es = (int64_t)glia_dtype_size(t->dtype), a = t->offset, b = t->offset;
  for (int d = 0; d < t->ndim; d++) {
    if (t->size[d] == 0) {
      *lo = *hi = 0;
      return;
    }
    int64_t reach = (t->size[d] - 1) * t->stride[d];
    if (reach < 0) a += reach;
    else b += reach;
  }
  *lo = a * es, *hi = (b + 1) * es;
}

bool glia_tensor_overlaps(const glia_tensor *dst, const glia_tensor *src) {
  if (!dst->storage || dst->storage != src->storage) return false;
  if (dst->offset == src->offset && dst->ndim == src->ndim && dst->dtype == src->dtype &&
      memcmp(dst->size, src->size, (size_t)dst->ndim * sizeof *dst->size) == 0 &&
      memcmp(dst->stride, src->stride, (size_t)dst->ndim * sizeof *dst->stride) == 0)
    return false; /* the very same view: each element is read before it is written */
  int64_t a0, a1, b0, b1;
  byte_span(dst, &a0, &a1);
  byte_span(src, &b0, &b1);
  return a0 < b1 && b0 < a1;
}

glia_status glia_copy_into(glia_ctx *G, glia_tensor *dst, glia_tensor *src) {
  TRY(glia_check_live(G, "glia.copy_", dst));
  TRY(glia_check_live(G, "glia.copy_", src));
  if (glia_tensor_overlaps(dst, src)) { /* x:copy_(x:t()): read a copy, not x as it changes */
    glia_tensor *c;
    TRY(glia_tensor_clone(G, src, &c));
    glia_status st = glia_copy_into(G, dst, c);
    glia_tensor_release(c);
    return st;
  }
  int nd;
  int64_t shape[GLIA_MAX_DIMS];
  TRY(glia_broadcast_shape(G, "glia.copy_", dst->ndim, dst->size, src->ndim, src->size,
                           &nd, shape));
  if (!glia_has_shape(dst, nd, shape))
    return glia_fail(G, GLIA_ESHAPE, "glia.copy_: cannot copy %s into %s",
                     glia_shape_str(src), glia_shape_str(dst));
  convert_arg a = {dst->dtype, src->dtype};
  glia_tensor *ops[2] = {dst, src};
  glia_iter(G, 2, ops, convert_loop, &a, 1 << 16);
  return GLIA_OK;
}

/* A new contiguous copy of t in dtype dt. */
static glia_status copy_new(glia_ctx *G, glia_tensor *t, glia_dtype dt, glia_tensor **out) {
  glia_tensor *c;
  TRY(glia_tensor_new(G, dt, t->ndim, t->size, &c));
  return glia_hand_out(glia_copy_into(G, c, t), c, out);
}

glia_status glia_tensor_contiguous_as(glia_ctx *G, glia_tensor *t, glia_dtype dt,
                                      glia_tensor **out) {
  TRY(glia_check_live(G, "glia.contiguous", t));
  if (t->dtype == dt && glia_tensor_is_contiguous(t)) {
    *out = glia_tensor_retain(t);
    return GLIA_OK;
  }
  return copy_new(G, t, dt, out);
}

/* ================================================== grads helpers */

static void add_into_loop(int64_t n, char **p, const int64_t *s, void *ud) {
  (void)ud;
  for (int64_t i = 0; i < n; i++)
    *(float *)(p[0] + i * s[0]) += *(const float *)(p[1] + i * s[1]);
}

glia_status glia_accumulate(glia_ctx *G, glia_tensor **acc, glia_tensor *src) {
  if (!*acc && src->refcount == 1 && src->storage->refcount == 1 && !src->grad_fn &&
      src->dtype == GLIA_DTYPE_F32 && glia_tensor_is_contiguous(src)) {
    /* the caller's reference is the only one: adopt it instead of copying */
    *acc = glia_tensor_retain(src);
    return GLIA_OK;
  }
  if (!*acc) return copy_new(G, src, GLIA_DTYPE_F32, acc);
  glia_tensor *ops[2] = {*acc, src};
  glia_iter(G, 2, ops, add_into_loop, NULL, 1 << 15);
  return GLIA_OK;
}
