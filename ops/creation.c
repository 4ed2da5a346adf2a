/*
** ops/creation.c -- tensors made from sizes or from another tensor: zeros,
** ones, empty, full, rand, randn, randint, arange, linspace, eye and the
** *_like forms; dtype conversion (to), copies (clone, copy_), detach, and
** the in-place fills fill_ and zero_.
**
** Random ops draw from the context's counter-based Philox stream: an op
** reserves a block of counters and each counter yields four 32-bit words.
** Element i of rand/randn uses counter first + i/4 (word i%4; randn pairs
** words 0-1 and 2-3 through Box-Muller), element i of randint uses counter
** first + i/2 (two words make 64 bits). Values therefore depend only on the
** (seed, offset) state, never on the thread count, and restoring that
** state reproduces every later draw. Uniforms have 24 bits (f64 draws hold
** the same values as f32 ones), so randn's tails stop near 5.8 sigma.
**
** Values given for integer dtypes must be integers that fit the dtype:
** converting NaN or an out-of-range double to an integer is undefined in C.
*/
#include "glia_impl.h"
#include "ops.h"

#include <math.h>

#define RNG_GRAIN (1 << 14)     /* Philox counters (2-4 elements each) per chunk */

/* ======================================================== helpers */

static glia_status parse_dtype(glia_ctx *G, const char *name, const glia_value *a,
                               glia_dtype dflt, glia_dtype *out) {
  if (!arg_present(a)) {
    *out = dflt;
    return GLIA_OK;
  }
  if (a->kind != GLIA_VAL_STRING || glia_dtype_parse(a->u.s, out) != GLIA_OK)
    return glia_fail(G, GLIA_EDTYPE, "%s: unknown dtype '%s' (f32, f64, i64, i32, u8, bool)",
                     name, a->kind == GLIA_VAL_STRING ? a->u.s : "?");
  return GLIA_OK;
}

static glia_status check_float_dtype(glia_ctx *G, const char *name, glia_dtype dt) {
  if (dt != GLIA_DTYPE_F32 && dt != GLIA_DTYPE_F64)
    return glia_fail(G, GLIA_EDTYPE, "%s: dtype must be f32 or f64, got %s", name,
                     glia_dtype_name(dt));
  return GLIA_OK;
}

/* Fails unless v can be stored in dt without undefined behaviour or silent
** truncation: integer dtypes need a finite integer within range. */
static glia_status check_fits(glia_ctx *G, const char *name, glia_dtype dt, double v) {
  double lo, hi; /* hi exclusive */
  switch (dt) {
  case GLIA_DTYPE_I64: lo = -0x1p63, hi = 0x1p63; break;
  case GLIA_DTYPE_I32: lo = -0x1p31, hi = 0x1p31; break;
  case GLIA_DTYPE_U8: lo = 0, hi = 256; break;
  default: return GLIA_OK;
  }
  if (!(v == floor(v) && v >= lo && v < hi))
    return glia_fail(G, GLIA_EARG, "%s: value %g does not fit in dtype %s", name, v,
                     glia_dtype_name(dt));
  return GLIA_OK;
}

/* Sizes from an I argument, checked with the op's name in messages. */
static glia_status sizes_of(glia_ctx *G, const char *name, const glia_value *a, int *ndim,
                            int64_t *size) {
  *ndim = a->kind == GLIA_VAL_INTS ? a->u.ints.n : 0;
  memcpy(size, a->u.ints.v, (size_t)*ndim * sizeof *size);
  return glia_check_sizes(G, name, *ndim, size);
}

/* ============================================================ fills */

/* The fill value as the dtype's bytes, so one loop per element width
** serves every dtype. */
typedef struct {
  size_t es;
  union {
    uint64_t u64;
    uint32_t u32;
    uint8_t u8;
  } v;
} fill_arg;

static void fill_loop(int64_t n, char **p, const int64_t *s, void *ud) {
  const fill_arg *a = ud;
#define FILL(T, V)                                                           \
  if (s[0] == (int64_t)sizeof(T)) {                                          \
    T *restrict o = (T *)p[0];                                               \
    for (int64_t i = 0; i < n; i++) o[i] = (V);                              \
  } else {                                                                   \
    for (int64_t i = 0; i < n; i++) *(T *)(p[0] + i * s[0]) = (V);           \
  }
  switch (a->es) {
  case 8: FILL(uint64_t, a->v.u64) break;
  case 4: FILL(uint32_t, a->v.u32) break;
  default: FILL(uint8_t, a->v.u8) break;
  }
#undef FILL
}

/* Writes v (already checked to fit) into every element of x, any geometry. */
static void fill_raw(glia_ctx *G, glia_tensor *x, double v) {
  fill_arg a;
  a.es = glia_dtype_size(x->dtype);
  char bytes[8];
  glia_elem_set(bytes, x->dtype, 0, v);
  memcpy(&a.v, bytes, a.es);
  glia_tensor *ops[1] = {x};
  glia_iter(G, 1, ops, fill_loop, &a, GRAIN);
}

/* In place: refused when x needs grad in grad mode; bumps the version. */
static glia_status fill_inplace(glia_ctx *G, const char *name, glia_tensor *x, double v) {
  TRY(glia_check_live(G, name, x));
  TRY(glia_check_inplace(G, name, x));
  TRY(check_fits(G, name, x->dtype, v));
  fill_raw(G, x, v);
  glia_tensor_bump_version(x);
  return GLIA_OK;
}

glia_status glia_fill_(glia_ctx *G, glia_tensor *x, double v) {
  return fill_inplace(G, "glia.fill_", x, v);
}

/* A new contiguous tensor of dtype dt filled with v. */
static glia_status new_full(glia_ctx *G, const char *name, glia_dtype dt, int ndim,
                            const int64_t *size, double v, glia_tensor **out) {
  TRY(check_fits(G, name, dt, v));
  glia_tensor *r;
  if (v == 0 && !signbit(v)) {
    TRY(glia_tensor_zeros(G, dt, ndim, size, &r));
  } else {
    TRY(glia_tensor_new(G, dt, ndim, size, &r));
    fill_raw(G, r, v);
  }
  *out = r;
  return GLIA_OK;
}

/* ========================================================== random */

typedef enum { DRAW_UNIFORM, DRAW_NORMAL, DRAW_INT } draw_kind;

typedef struct {
  draw_kind kind;
  glia_dtype dt;
  char *data;        /* contiguous output */
  int64_t numel;
  uint64_t seed, first; /* Philox key and first counter */
  int64_t low;       /* randint: [low, low + range) */
  uint64_t range;
} draw_job;

/* [0, 1) from the top 24 bits: exactly representable in f32. */
static inline float uniform24(uint32_t w) { return (float)(w >> 8) * 0x1p-24f; }

/* Two standard normals from two words (Box-Muller); u1 in (0, 1] keeps
** log finite. */
static inline void box_muller(uint32_t a, uint32_t b, float *z0, float *z1) {
  float u1 = (float)((a >> 8) + 1) * 0x1p-24f, u2 = uniform24(b);
  float r = sqrtf(-2.0f * logf(u1)), th = 6.2831853071795864769f * u2;
  *z0 = r * cosf(th);
  *z1 = r * sinf(th);
}

/* Counters [begin, end) of the job: each fills the elements it owns. */
static void draw_range(int64_t begin, int64_t end, void *ud) {
  const draw_job *J = ud;
  int per = J->kind == DRAW_INT ? 2 : 4; /* elements per counter */
  for (int64_t k = begin; k < end; k++) {
    uint32_t w[4];
    glia_philox(J->seed, J->first + (uint64_t)k, w);
    int64_t i0 = k * per, n = J->numel - i0 < per ? J->numel - i0 : per;
    if (J->kind == DRAW_INT) {
      for (int64_t j = 0; j < n; j++) {
        uint64_t x = (uint64_t)w[2 * j] << 32 | w[2 * j + 1];
        /* floor(x * range / 2^64): bias below range / 2^64 */
        uint64_t off = (uint64_t)(((unsigned __int128)x * J->range) >> 64);
        int64_t v = (int64_t)((uint64_t)J->low + off); /* wraps like the math */
        if (J->dt == GLIA_DTYPE_I64)
          ((int64_t *)J->data)[i0 + j] = v;
        else
          glia_elem_set(J->data, J->dt, i0 + j, (double)v);
      }
      continue;
    }
    float v[4];
    if (J->kind == DRAW_NORMAL) {
      box_muller(w[0], w[1], &v[0], &v[1]);
      box_muller(w[2], w[3], &v[2], &v[3]);
    } else {
      for (int j = 0; j < 4; j++) v[j] = uniform24(w[j]);
    }
    for (int64_t j = 0; j < n; j++) glia_elem_set(J->data, J->dt, i0 + j, v[j]);
  }
}

/* Fills the new contiguous tensor r from the context's stream. */
static void draw(glia_ctx *G, glia_tensor *r, draw_kind kind, int64_t low, uint64_t range) {
  draw_job J = {kind, r->dtype, glia_ptr(r), glia_tensor_numel(r), G->seed, 0, low, range};
  int per = kind == DRAW_INT ? 2 : 4;
  int64_t blocks = (J.numel + per - 1) / per;
  J.first = glia_rng_reserve(G, (uint64_t)blocks);
  glia_parallel_for(G, blocks, RNG_GRAIN, draw_range, &J);
}

static glia_status new_random(glia_ctx *G, const char *name, draw_kind kind, glia_dtype dt,
                              int ndim, const int64_t *size, glia_tensor **out) {
  TRY(check_float_dtype(G, name, dt));
  glia_tensor *r;
  TRY(glia_tensor_new(G, dt, ndim, size, &r));
  draw(G, r, kind, 0, 0);
  *out = r;
  return GLIA_OK;
}

/* ============================================ ops: from sizes */

/* zeros/ones/empty/rand/randn(sizes [, dtype]) */
typedef enum { MAKE_ZEROS, MAKE_ONES, MAKE_EMPTY, MAKE_RAND, MAKE_RANDN } make_kind;

static glia_status make(glia_ctx *G, const char *name, make_kind kind, glia_dtype dt,
                        int ndim, const int64_t *size, glia_tensor **out) {
  switch (kind) {
  case MAKE_ZEROS: return glia_tensor_zeros(G, dt, ndim, size, out);
  case MAKE_ONES: return new_full(G, name, dt, ndim, size, 1.0, out);
  case MAKE_EMPTY: return glia_tensor_new(G, dt, ndim, size, out);
  case MAKE_RAND: return new_random(G, name, DRAW_UNIFORM, dt, ndim, size, out);
  default: return new_random(G, name, DRAW_NORMAL, dt, ndim, size, out);
  }
}

static glia_status make_from_sizes(glia_ctx *G, const char *name, make_kind kind,
                                   glia_value *args, int *nouts, glia_value *outs) {
  int ndim;
  int64_t size[GLIA_MAX_DIMS];
  glia_dtype dt;
  TRY(sizes_of(G, name, &args[0], &ndim, size));
  TRY(parse_dtype(G, name, &args[1], GLIA_DTYPE_F32, &dt));
  glia_tensor *r;
  TRY(make(G, name, kind, dt, ndim, size, &r));
  return out1(nouts, outs, r);
}

/* zeros_like/ones_like/...(x [, dtype]); the dtype defaults to x's. */
static glia_status make_from_like(glia_ctx *G, const char *name, make_kind kind,
                                  glia_value *args, int *nouts, glia_value *outs) {
  glia_tensor *x = args[0].u.t, *r;
  glia_dtype dt;
  TRY(parse_dtype(G, name, &args[1], x->dtype, &dt));
  TRY(make(G, name, kind, dt, x->ndim, x->size, &r));
  return out1(nouts, outs, r);
}

#define MAKE_OPS(NAME, KIND)                                                  \
  static glia_status op_##NAME(glia_ctx *G, int nargs, glia_value *args, int *nouts, \
                               glia_value *outs) {                            \
    (void)nargs;                                                              \
    return make_from_sizes(G, "glia." #NAME, KIND, args, nouts, outs);       \
  }                                                                           \
  static glia_status op_##NAME##_like(glia_ctx *G, int nargs, glia_value *args, \
                                      int *nouts, glia_value *outs) {         \
    (void)nargs;                                                              \
    return make_from_like(G, "glia." #NAME "_like", KIND, args, nouts, outs); \
  }
MAKE_OPS(zeros, MAKE_ZEROS)
MAKE_OPS(ones, MAKE_ONES)
MAKE_OPS(empty, MAKE_EMPTY)
MAKE_OPS(rand, MAKE_RAND)
MAKE_OPS(randn, MAKE_RANDN)

/* full(sizes, value [, dtype]) */
static glia_status op_full(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                           glia_value *outs) {
  (void)nargs;
  static const char name[] = "glia.full";
  int ndim;
  int64_t size[GLIA_MAX_DIMS];
  glia_dtype dt;
  TRY(sizes_of(G, name, &args[0], &ndim, size));
  TRY(parse_dtype(G, name, &args[2], GLIA_DTYPE_F32, &dt));
  glia_tensor *r;
  TRY(new_full(G, name, dt, ndim, size, arg_num(&args[1], 0), &r));
  return out1(nouts, outs, r);
}

/* full_like(x, value [, dtype]) */
static glia_status op_full_like(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                glia_value *outs) {
  (void)nargs;
  static const char name[] = "glia.full_like";
  glia_tensor *x = args[0].u.t, *r;
  glia_dtype dt;
  TRY(parse_dtype(G, name, &args[2], x->dtype, &dt));
  TRY(new_full(G, name, dt, x->ndim, x->size, arg_num(&args[1], 0), &r));
  return out1(nouts, outs, r);
}

/* randint(low, high, sizes [, dtype]): uniform integers in [low, high),
** i64 by default. */
static glia_status op_randint(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                              glia_value *outs) {
  (void)nargs;
  static const char name[] = "glia.randint";
  int64_t low = args[0].u.i, high = args[1].u.i;
  int ndim;
  int64_t size[GLIA_MAX_DIMS];
  glia_dtype dt;
  TRY(sizes_of(G, name, &args[2], &ndim, size));
  TRY(parse_dtype(G, name, &args[3], GLIA_DTYPE_I64, &dt));
  if (high <= low)
    return glia_fail(G, GLIA_EARG, "%s: empty range [%lld, %lld) (high must exceed low)", name,
                     (long long)low, (long long)high);
  if (dt == GLIA_DTYPE_BOOL)
    return glia_fail(G, GLIA_EDTYPE, "%s: dtype bool is not an integer range", name);
  TRY(check_fits(G, name, dt, (double)low));
  TRY(check_fits(G, name, dt, (double)(high - 1)));
  glia_tensor *r;
  TRY(glia_tensor_new(G, dt, ndim, size, &r));
  draw(G, r, DRAW_INT, low, (uint64_t)high - (uint64_t)low);
  return out1(nouts, outs, r);
}

/* =========================================== ops: ranges and eye */

typedef struct {
  glia_dtype dt;
  char *data;
  double start, step;
  int64_t last_index; /* linspace: this element is exactly `end` */
  double end;
} range_job;

static void range_fill(int64_t begin, int64_t end, void *ud) {
  const range_job *J = ud;
  for (int64_t i = begin; i < end; i++)
    glia_elem_set(J->data, J->dt, i, i == J->last_index ? J->end : J->start + (double)i * J->step);
}

static glia_status new_range(glia_ctx *G, const char *name, glia_dtype dt, int64_t n,
                             double start, double step, int64_t last_index, double end,
                             glia_tensor **out) {
  TRY(glia_check_sizes(G, name, 1, &n));
  if (n > 0) {
    TRY(check_fits(G, name, dt, start));
    TRY(check_fits(G, name, dt, n - 1 == last_index ? end : start + (double)(n - 1) * step));
  }
  glia_tensor *r;
  TRY(glia_tensor_new(G, dt, 1, &n, &r));
  range_job J = {dt, glia_ptr(r), start, step, last_index, end};
  glia_parallel_for(G, n, GRAIN, range_fill, &J);
  *out = r;
  return GLIA_OK;
}

/* arange(stop) | arange(start, stop [, step [, dtype]]): start, start+step,
** ... while < stop (> stop for a negative step), as in NumPy; f32 unless a
** dtype is given. An empty range gives a 0-element tensor. */
static glia_status op_arange(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                             glia_value *outs) {
  (void)nargs;
  static const char name[] = "glia.arange";
  double start = 0, stop = arg_num(&args[0], 0), step = arg_num(&args[2], 1);
  if (arg_present(&args[1])) start = stop, stop = arg_num(&args[1], 0);
  glia_dtype dt;
  TRY(parse_dtype(G, name, &args[3], GLIA_DTYPE_F32, &dt));
  if (!isfinite(start) || !isfinite(stop) || !isfinite(step) || step == 0)
    return glia_fail(G, GLIA_EARG, "%s: need finite start, stop and a nonzero step, got %g, %g, %g",
                     name, start, stop, step);
  TRY(check_fits(G, name, dt, step)); /* integer dtypes step by integers */
  double count = ceil((stop - start) / step);
  if (count > 0x1p62)
    return glia_fail(G, GLIA_ESHAPE, "%s: %g elements are too many", name, count);
  int64_t n = count > 0 ? (int64_t)count : 0;
  glia_tensor *r;
  TRY(new_range(G, name, dt, n, start, step, -1, 0, &r));
  return out1(nouts, outs, r);
}

/* linspace(a, b, n [, dtype]): n evenly spaced values from a to b inclusive. */
static glia_status op_linspace(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                               glia_value *outs) {
  (void)nargs;
  static const char name[] = "glia.linspace";
  double a = arg_num(&args[0], 0), b = arg_num(&args[1], 0);
  int64_t n = args[2].u.i;
  glia_dtype dt;
  TRY(parse_dtype(G, name, &args[3], GLIA_DTYPE_F32, &dt));
  if (n < 0) return glia_fail(G, GLIA_EARG, "%s: count must be >= 0, got %lld", name, (long long)n);
  if (!isfinite(a) || !isfinite(b))
    return glia_fail(G, GLIA_EARG, "%s: need finite ends, got %g and %g", name, a, b);
  glia_tensor *r;
  TRY(new_range(G, name, dt, n, a, n > 1 ? (b - a) / (double)(n - 1) : 0, n > 1 ? n - 1 : -1, b,
                &r));
  return out1(nouts, outs, r);
}

/* eye(n [, m [, dtype]]): ones on the main diagonal of an n x m matrix. */
static glia_status op_eye(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                          glia_value *outs) {
  (void)nargs;
  static const char name[] = "glia.eye";
  int64_t size[2] = {args[0].u.i, arg_int(&args[1], args[0].u.i)};
  glia_dtype dt;
  TRY(parse_dtype(G, name, &args[2], GLIA_DTYPE_F32, &dt));
  TRY(glia_check_sizes(G, name, 2, size));
  glia_tensor *r;
  TRY(glia_tensor_zeros(G, dt, 2, size, &r));
  int64_t k = size[0] < size[1] ? size[0] : size[1];
  for (int64_t i = 0; i < k; i++) glia_elem_set(glia_ptr(r), dt, i * size[1] + i, 1.0);
  return out1(nouts, outs, r);
}

/* ================================== ops: fills, copies, conversion */

/* fill_(x, value): in place, any dtype; returns x. */
static glia_status op_fill_(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                            glia_value *outs) {
  (void)nargs;
  TRY(glia_fill_(G, args[0].u.t, arg_num(&args[1], 0)));
  return out1(nouts, outs, glia_tensor_retain(args[0].u.t));
}

static glia_status op_zero_(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                            glia_value *outs) {
  (void)nargs;
  TRY(fill_inplace(G, "glia.zero_", args[0].u.t, 0));
  return out1(nouts, outs, glia_tensor_retain(args[0].u.t));
}

/* to(x, dtype): x itself when the dtype already matches, else a converted
** contiguous copy with no autograd history (only f32 carries gradients). */
static glia_status op_to(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                         glia_value *outs) {
  (void)nargs;
  glia_tensor *x = args[0].u.t, *r;
  glia_dtype dt;
  TRY(parse_dtype(G, "glia.to", &args[1], x->dtype, &dt));
  if (dt == x->dtype) return out1(nouts, outs, glia_tensor_retain(x));
  TRY(glia_tensor_new(G, dt, x->ndim, x->size, &r));
  glia_status st = glia_copy_into(G, r, x);
  if (st != GLIA_OK) {
    glia_tensor_release(r);
    return st;
  }
  return out1(nouts, outs, r);
}

static glia_status clone_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  (void)G, (void)n;
  din[0] = glia_tensor_retain(g);
  return GLIA_OK;
}

/* clone(x): a contiguous copy that passes gradients through. */
static glia_status op_clone(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                            glia_value *outs) {
  (void)nargs;
  static const char name[] = "glia.clone";
  glia_tensor *x = args[0].u.t, *r;
  TRY(glia_tensor_new(G, x->dtype, x->ndim, x->size, &r));
  glia_status st = glia_copy_into(G, r, x);
  glia_node *node = st == GLIA_OK ? glia_node_begin(G, name, clone_bwd, 1, &x, &st) : NULL;
  if (node) glia_node_finish(node, r);
  if (st != GLIA_OK) {
    glia_tensor_release(r);
    return st;
  }
  return out1(nouts, outs, r);
}

/* copy_(dst, src): src broadcast and converted into dst, in place; records
** no history. Returns dst. */
static glia_status op_copy_(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                            glia_value *outs) {
  (void)nargs;
  glia_tensor *dst = args[0].u.t;
  TRY(glia_check_inplace(G, "glia.copy_", dst));
  TRY(glia_copy_into(G, dst, args[1].u.t));
  glia_tensor_bump_version(dst);
  return out1(nouts, outs, glia_tensor_retain(dst));
}

/* detach(x): the same view of the same storage, without history. */
static glia_status op_detach(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                             glia_value *outs) {
  (void)nargs;
  glia_tensor *r;
  TRY(glia_tensor_detach(G, args[0].u.t, &r));
  return out1(nouts, outs, r);
}

/* ========================================================== registry */

const glia_op glia_ops_creation[] = {
    {"zeros", "I|s", op_zeros, 0},
    {"ones", "I|s", op_ones, 0},
    {"empty", "I|s", op_empty, 0},
    {"full", "In|s", op_full, 0},
    {"rand", "I|s", op_rand, 0},
    {"randn", "I|s", op_randn, 0},
    {"randint", "iiI|s", op_randint, 0},
    {"arange", "n|nns", op_arange, 0},
    {"linspace", "nni|s", op_linspace, 0},
    {"eye", "i|is", op_eye, 0},
    {"zeros_like", "T|s", op_zeros_like, 0},
    {"ones_like", "T|s", op_ones_like, 0},
    {"empty_like", "T|s", op_empty_like, 0},
    {"rand_like", "T|s", op_rand_like, 0},
    {"randn_like", "T|s", op_randn_like, 0},
    {"full_like", "Tn|s", op_full_like, 0},
    {"fill_", "Tn", op_fill_, 1},
    {"zero_", "T", op_zero_, 1},
    {"to", "Ts", op_to, 1},
    {"clone", "T", op_clone, 1},
    {"copy_", "TT", op_copy_, 1},
    {"detach", "T", op_detach, 1},
    {NULL, NULL, NULL, 0},
};
