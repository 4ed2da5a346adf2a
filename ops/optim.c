/*
** ops/optim.c -- fused optimizer updates and the global-norm helpers:
**
**   sgd_step_(p, g, buf|nil, step, lr, momentum, dampening, nesterov, wd)
**   adam_step_(p, g, m, v, step, lr, beta1, beta2, eps, wd, decoupled)
**   lamb_step_(p, g, m, v, step, lr, beta1, beta2, eps, wd) -> trust ratio
**   sum_sq({t, ...}) -> the sum of the squares of all elements (a number)
**   scale_({t, ...}, s)   multiplies every tensor of the list in place
**
** One call updates one parameter and its state in place in one pass over
** memory (LAMB takes two: its trust ratio needs both norms first). These
** are registry ops, not methods, for stdlib/glia/optim.lua, which calls them
** under no_grad: they record no autograd node and write parameters that
** require grad directly, bumping each storage version so that a tensor
** saved for backward before the step is still caught. The parameter and
** its state are contiguous f32 tensors of one shape on distinct storages;
** the gradient may have any strides (a contiguous copy is taken).
**
** Invariant: no result depends on the thread count. Work is cut into
** chunks whose boundaries depend only on the element count; every
** element's update is independent of the others; sums are taken in double,
** per chunk in LANES accumulators added in a fixed order, and the chunk
** partials are added in chunk order.
*/
#include "glia_impl.h"
#include "ops.h"

#include <math.h>
#ifdef __SSE__
#include <immintrin.h>
#endif

#define CHUNK ((int64_t)1 << 13) /* elements per chunk (at least), a multiple of BLOCK */
#define MAX_CHUNKS 1024          /* partial sums per tensor, kept on the stack */
#define GRAIN_CHUNKS 2           /* chunks per task: small tensors run inline */
#define BLOCK 256                /* elements per stack scratch block inside a chunk */
#define LANES 8                  /* double accumulators per sum */

/* Block bodies are inlined so that their loops see constant trip counts. */
#define INLINE static inline __attribute__((always_inline))

/* ======================================================== chunks */

/* Processes elements [begin, end), which form chunk k. */
typedef void (*chunk_fn)(int64_t begin, int64_t end, int64_t k, void *ud);

typedef struct {
  int64_t n, len;
  chunk_fn fn;
  void *ud;
} chunk_job;

/* CHUNK, or the multiple of it that keeps n elements in MAX_CHUNKS chunks. */
static int64_t chunk_len(int64_t n) {
  int64_t chunks = (n + CHUNK - 1) / CHUNK;
  int64_t mult = (chunks + MAX_CHUNKS - 1) / MAX_CHUNKS;
  return CHUNK * (mult > 1 ? mult : 1);
}

static void run_chunks(int64_t begin, int64_t end, void *ud) {
  const chunk_job *j = ud;
  for (int64_t k = begin; k < end; k++) {
    int64_t b = k * j->len, e = b + j->len;
    j->fn(b, e < j->n ? e : j->n, k, j->ud);
  }
}

/* Runs fn over the chunks of [0, n) on the pool; returns the chunk count
** (at most MAX_CHUNKS). */
static int64_t for_chunks(glia_ctx *G, int64_t n, chunk_fn fn, void *ud) {
  chunk_job j = {n, chunk_len(n), fn, ud};
  int64_t nchunks = (n + j.len - 1) / j.len;
  glia_parallel_for(G, nchunks, GRAIN_CHUNKS, run_chunks, &j);
  return nchunks;
}

/* Adds x[i]^2 for i < n into the lanes; the last n % LANES go to *rest.
** Chunks and blocks are multiples of LANES, so only a tensor's very end
** has a rest, whatever the split. */
INLINE void add_squares(double *restrict lane, double *restrict rest,
                               const float *restrict x, int64_t n) {
  int64_t full = n - n % LANES;
  for (int64_t b = 0; b < full; b += LANES)
    for (int l = 0; l < LANES; l++) lane[l] += (double)x[b + l] * x[b + l];
  for (int64_t i = full; i < n; i++) *rest += (double)x[i] * x[i];
}

static double lanes_total(const double *lane, double rest) {
  for (int l = 0; l < LANES; l++) rest += lane[l];
  return rest;
}

static double partials_total(const double *part, int64_t n) {
  double s = 0;
  for (int64_t k = 0; k < n; k++) s += part[k];
  return s;
}

/* x[i] = sqrt(x[i]) with the widest correctly rounded vector sqrt at hand,
** which gcc does not emit for sqrtf without -fno-math-errno (narrower
** tails give the same bits). */
INLINE void sqrt_block(float *x, int n) {
  int i = 0;
#ifdef __AVX512F__
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_sqrt_ps(_mm512_loadu_ps(x + i)));
#endif
#ifdef __AVX__
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_sqrt_ps(_mm256_loadu_ps(x + i)));
#endif
#ifdef __SSE__
  for (; i + 4 <= n; i += 4) _mm_storeu_ps(x + i, _mm_sqrt_ps(_mm_loadu_ps(x + i)));
#endif
  for (; i < n; i++) x[i] = sqrtf(x[i]);
}

/* ======================================================== kernels */

/* Calls BODY(a, i0, n) for the blocks of [b, e). Full blocks pass the
** constant BLOCK: once BODY is inlined, its loops have a known trip count,
** which gcc's -O2 vectorizer (the "very cheap" model) requires. Chunks are
** multiples of BLOCK, so only a tensor's very end takes the short path. */
#define FOR_BLOCKS(b, e, BODY, a)                                             \
  for (int64_t i0_ = (b); i0_ < (e); i0_ += BLOCK) {                          \
    if ((e) - i0_ >= BLOCK) BODY(a, i0_, BLOCK);                              \
    else BODY(a, i0_, (int)((e) - i0_));                                      \
  }

/* ---- SGD: d = g + wd p; with momentum, buf = d on the first step, else
** momentum buf + (1 - dampening) d, and d = nesterov ? d + momentum buf :
** buf; then p -= lr d. p, g, buf {N} contiguous. */
typedef struct {
  float *p, *buf; /* buf NULL: no momentum */
  const float *g;
  float lr, momentum, keep, wd; /* keep = 1 - dampening */
  int first, nesterov;
} sgd_arg;

/* One loop per combination of the constant flags. */
INLINE void sgd_loop(const sgd_arg *a, int64_t i0, int n, int first, int nesterov) {
  float *restrict p = a->p + i0, *restrict buf = a->buf + i0;
  const float *restrict g = a->g + i0;
  const float lr = a->lr, mu = a->momentum, keep = a->keep, wd = a->wd;
  _Pragma("GCC ivdep")
  for (int j = 0; j < n; j++) {
    float d = g[j] + wd * p[j];
    float m = first ? d : mu * buf[j] + keep * d;
    buf[j] = m;
    p[j] -= lr * (nesterov ? d + mu * m : m);
  }
}

INLINE void sgd_block(const sgd_arg *a, int64_t i0, int n) {
  if (!a->buf) {
    float *restrict p = a->p + i0;
    const float *restrict g = a->g + i0;
    const float lr = a->lr, wd = a->wd;
    _Pragma("GCC ivdep")
    for (int j = 0; j < n; j++) p[j] -= lr * (g[j] + wd * p[j]);
  } else if (a->first) {
    if (a->nesterov) sgd_loop(a, i0, n, 1, 1);
    else sgd_loop(a, i0, n, 1, 0);
  } else {
    if (a->nesterov) sgd_loop(a, i0, n, 0, 1);
    else sgd_loop(a, i0, n, 0, 0);
  }
}

static void sgd_chunk(int64_t b, int64_t e, int64_t k, void *ud) {
  (void)k;
  FOR_BLOCKS(b, e, sgd_block, (const sgd_arg *)ud);
}

/* ---- Adam moments, shared by Adam and LAMB: with g' = g + cwd p (Adam's
** coupled weight decay; 0 for AdamW and LAMB), m = b1 m + (1 - b1) g',
** v = b2 v + (1 - b2) g'^2; d receives sqrt(v). All {n}, n <= BLOCK. */
typedef struct {
  float *p, *m, *v;
  const float *g;
  float b1, b2, c1, c2; /* c = 1 - b, rounded once from double */
  float cwd;
  float rbc1, rbc2; /* 1 / (1 - b1^step), 1 / sqrt(1 - b2^step) */
  float eps;
} moments;

INLINE void moments_block(const moments *mo, int64_t i0, int n, float *restrict d) {
  const float *restrict p = mo->p + i0, *restrict g = mo->g + i0;
  float *restrict m = mo->m + i0, *restrict v = mo->v + i0;
  const float b1 = mo->b1, b2 = mo->b2, c1 = mo->c1, c2 = mo->c2, cwd = mo->cwd;
  _Pragma("GCC ivdep")
  for (int j = 0; j < n; j++) {
    float gj = g[j] + cwd * p[j];
    m[j] = b1 * m[j] + c1 * gj;
    d[j] = v[j] = b2 * v[j] + c2 * gj * gj;
  }
  sqrt_block(d, n);
}

/* ---- Adam / AdamW: p = p decay - lr/bc1 m / (sqrt(v)/sqrt(bc2) + eps),
** decay = 1 - lr wd for AdamW, else 1. */
typedef struct {
  moments mo;
  float step_size, decay; /* lr / bc1; 1 - lr wd or 1 */
} adam_arg;

INLINE void adam_block(const adam_arg *a, int64_t i0, int n) {
  float d[BLOCK];
  moments_block(&a->mo, i0, n, d);
  float *restrict p = a->mo.p + i0;
  const float *restrict m = a->mo.m + i0;
  const float step_size = a->step_size, decay = a->decay, rbc2 = a->mo.rbc2, eps = a->mo.eps;
  _Pragma("GCC ivdep")
  for (int j = 0; j < n; j++) p[j] = p[j] * decay - step_size * m[j] / (d[j] * rbc2 + eps);
}

static void adam_chunk(int64_t b, int64_t e, int64_t k, void *ud) {
  (void)k;
  FOR_BLOCKS(b, e, adam_block, (const adam_arg *)ud);
}

/* ---- LAMB (You et al. 2019, Algorithm 2): u = m/bc1 / (sqrt(v/bc2) + eps)
** + wd p, then p -= lr ratio u with ratio = ||p|| / ||u|| (1 when either
** is 0). Pass 1 updates the moments and sums p^2 and u^2 per chunk; pass 2
** recomputes u from the stored moments (the same bits) and applies it. */
typedef struct {
  moments mo;
  float wd, scale;   /* scale = lr ratio, set between the passes */
  double *psq, *usq; /* per-chunk partials */
} lamb_arg;

typedef struct {
  const lamb_arg *a;
  double pl[LANES], ul[LANES], pr, ur; /* this chunk's sums */
} lamb_sums;

/* d = sqrt(v) in, u out. */
INLINE void lamb_direction(const lamb_arg *a, int64_t i0, int n, float *restrict d) {
  const float *restrict p = a->mo.p + i0, *restrict m = a->mo.m + i0;
  const float rbc1 = a->mo.rbc1, rbc2 = a->mo.rbc2, eps = a->mo.eps, wd = a->wd;
  _Pragma("GCC ivdep")
  for (int j = 0; j < n; j++) d[j] = m[j] * rbc1 / (d[j] * rbc2 + eps) + wd * p[j];
}

INLINE void lamb_norms_block(lamb_sums *s, int64_t i0, int n) {
  float d[BLOCK];
  moments_block(&s->a->mo, i0, n, d);
  lamb_direction(s->a, i0, n, d);
  add_squares(s->pl, &s->pr, s->a->mo.p + i0, n);
  add_squares(s->ul, &s->ur, d, n);
}

static void lamb_norms_chunk(int64_t b, int64_t e, int64_t k, void *ud) {
  lamb_sums s = {.a = ud};
  FOR_BLOCKS(b, e, lamb_norms_block, &s);
  s.a->psq[k] = lanes_total(s.pl, s.pr);
  s.a->usq[k] = lanes_total(s.ul, s.ur);
}

INLINE void lamb_apply_block(const lamb_arg *a, int64_t i0, int n) {
  float d[BLOCK];
  memcpy(d, a->mo.v + i0, sizeof(float) * (size_t)n);
  sqrt_block(d, n);
  lamb_direction(a, i0, n, d);
  float *restrict p = a->mo.p + i0;
  const float scale = a->scale;
  _Pragma("GCC ivdep")
  for (int j = 0; j < n; j++) p[j] -= scale * d[j];
}

static void lamb_apply_chunk(int64_t b, int64_t e, int64_t k, void *ud) {
  (void)k;
  FOR_BLOCKS(b, e, lamb_apply_block, (const lamb_arg *)ud);
}

/* ---- sum of squares of one contiguous f32 array. */
typedef struct {
  const float *x;
  double *part;
} sumsq_arg;

static void sumsq_chunk(int64_t b, int64_t e, int64_t k, void *ud) {
  const sumsq_arg *a = ud;
  double lane[LANES] = {0}, rest = 0;
  add_squares(lane, &rest, a->x + b, e - b);
  a->part[k] = lanes_total(lane, rest);
}

static double sum_squares(glia_ctx *G, const float *x, int64_t n) {
  double part[MAX_CHUNKS];
  sumsq_arg a = {x, part};
  return partials_total(part, for_chunks(G, n, sumsq_chunk, &a));
}

/* ---- x *= s over any strides. */
static void scale_loop(int64_t n, char **p, const int64_t *s, void *ud) {
  const float f = *(const float *)ud;
  if (s[0] == sizeof(float)) {
    float *x = (float *)p[0];
    for (int64_t i = 0; i < n; i++) x[i] *= f;
    return;
  }
  for (int64_t i = 0; i < n; i++) *(float *)(p[0] + i * s[0]) *= f;
}

/* ======================================================== checks */

/* Fails unless t (the parameter p itself, or a state tensor named what) is
** a contiguous f32 tensor of p's shape. */
static glia_status check_dense(glia_ctx *G, const char *op, const char *what, const glia_tensor *t,
                               const glia_tensor *p) {
  TRY(glia_check_f32(G, op, what, t));
  if (!glia_tensor_is_contiguous(t))
    return glia_fail(G, GLIA_EARG, "%s: %s must be contiguous, got a strided %s", op, what,
                     glia_shape_str(t));
  if (!glia_has_shape(t, p->ndim, p->size))
    return glia_fail(G, GLIA_ESHAPE, "%s: %s %s does not match the parameter %s", op, what,
                     glia_shape_str(t), glia_shape_str(p));
  return GLIA_OK;
}

/* Sets *out to g as a contiguous f32 tensor (g itself, retained, when it
** is one; else a copy) after checking it is f32 of p's shape. The caller
** owns *out. */
static glia_status grad_of(glia_ctx *G, const char *op, glia_tensor *g, const glia_tensor *p,
                           glia_tensor **out) {
  TRY(glia_check_f32(G, op, "gradient", g));
  if (!glia_has_shape(g, p->ndim, p->size))
    return glia_fail(G, GLIA_ESHAPE, "%s: gradient %s does not match the parameter %s", op,
                     glia_shape_str(g), glia_shape_str(p));
  return glia_tensor_contiguous_as(G, g, GLIA_DTYPE_F32, out);
}

/* Fails when two of the n tensors (NULL entries skipped) share storage:
** the kernels read and write them as separate arrays. */
static glia_status check_apart(glia_ctx *G, const char *op, int n, glia_tensor *const *t,
                               const char *const *what) {
  for (int i = 0; i < n; i++)
    for (int j = i + 1; j < n; j++)
      if (t[i] && t[j] && t[i]->storage == t[j]->storage)
        return glia_fail(G, GLIA_EARG, "%s: %s and %s share storage", op, what[i], what[j]);
  return GLIA_OK;
}

/* Fails unless lo <= x <= hi (x < hi when hi_open) and x is finite. */
static glia_status check_range(glia_ctx *G, const char *op, const char *what, double x,
                               double lo, double hi, int hi_open) {
  if (isfinite(x) && x >= lo && (hi_open ? x < hi : x <= hi)) return GLIA_OK;
  if (isinf(hi))
    return glia_fail(G, GLIA_EARG, "%s: %s must be a finite number >= %g, got %g", op, what, lo, x);
  return glia_fail(G, GLIA_EARG, "%s: %s must be in [%g, %g%s, got %g", op, what, lo, hi,
                   hi_open ? ")" : "]", x);
}

static glia_status check_step(glia_ctx *G, const char *op, int64_t step) {
  if (step < 1) return glia_fail(G, GLIA_EARG, "%s: step must be >= 1, got %lld", op, (long long)step);
  return GLIA_OK;
}

/* The checks Adam and LAMB share: tensors, step and hyper-parameters. On
** success all[0..4) = p, g, m, v, where g (at *g too) is the gradient as a
** contiguous f32 tensor the caller releases. */
static glia_status adam_inputs(glia_ctx *G, const char *op, glia_value *args, glia_tensor **g,
                               glia_tensor *all[4]) {
  glia_tensor *p = arg_t(&args[0]);
  TRY(check_dense(G, op, "parameter", p, p));
  TRY(check_dense(G, op, "exp_avg", arg_t(&args[2]), p));
  TRY(check_dense(G, op, "exp_avg_sq", arg_t(&args[3]), p));
  TRY(check_step(G, op, arg_int(&args[4], 0)));
  TRY(check_range(G, op, "lr", arg_num(&args[5], 0), 0, INFINITY, 0));
  TRY(check_range(G, op, "beta1", arg_num(&args[6], 0), 0, 1, 1));
  TRY(check_range(G, op, "beta2", arg_num(&args[7], 0), 0, 1, 1));
  TRY(check_range(G, op, "eps", arg_num(&args[8], 0), 0, INFINITY, 0));
  TRY(check_range(G, op, "weight_decay", arg_num(&args[9], 0), 0, INFINITY, 0));
  TRY(grad_of(G, op, arg_t(&args[1]), p, g));
  all[0] = p, all[1] = *g, all[2] = arg_t(&args[2]), all[3] = arg_t(&args[3]);
  static const char *const names[4] = {"parameter", "gradient", "exp_avg", "exp_avg_sq"};
  glia_status st = check_apart(G, op, 4, all, names);
  if (st != GLIA_OK) glia_tensor_release(*g);
  return st;
}

/* Moments of p, g, m, v = args 0..3 at step args[4] with beta1, beta2, eps
** = args 6..8 and coupled decay cwd. */
static moments moments_of(glia_value *args, glia_tensor *g, double cwd) {
  double b1 = arg_num(&args[6], 0), b2 = arg_num(&args[7], 0);
  double step = (double)arg_int(&args[4], 1);
  moments mo = {
      .p = (float *)glia_ptr(arg_t(&args[0])),
      .m = (float *)glia_ptr(arg_t(&args[2])),
      .v = (float *)glia_ptr(arg_t(&args[3])),
      .g = (const float *)glia_ptr(g),
      .b1 = (float)b1,
      .b2 = (float)b2,
      .c1 = (float)(1 - b1),
      .c2 = (float)(1 - b2),
      .cwd = (float)cwd,
      .rbc1 = (float)(1 / (1 - pow(b1, step))),
      .rbc2 = (float)(1 / sqrt(1 - pow(b2, step))),
      .eps = (float)arg_num(&args[8], 0),
  };
  return mo;
}

/* Bumps the versions of the n tensors written (NULL entries skipped). */
static void bump_all(int n, glia_tensor *const *t) {
  for (int i = 0; i < n; i++)
    if (t[i]) glia_tensor_bump_version(t[i]);
}

/* ======================================================== registry ops */

/* sgd_step_(p, g, buf|nil, step, lr, momentum, dampening, nesterov, wd).
** buf is needed when momentum > 0 (and unused otherwise); step 1 copies
** the first direction into it. Returns nothing. */
static glia_status op_sgd_step_(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                glia_value *outs) {
  static const char op[] = "glia.sgd_step_";
  (void)nargs, (void)nouts, (void)outs;
  glia_tensor *p = arg_t(&args[0]), *buf = arg_t(&args[2]);
  int64_t step = arg_int(&args[3], 0);
  double lr = arg_num(&args[4], 0), mu = arg_num(&args[5], 0), damp = arg_num(&args[6], 0);
  double wd = arg_num(&args[8], 0);
  int nesterov = arg_bool(&args[7], 0);
  TRY(check_dense(G, op, "parameter", p, p));
  TRY(check_step(G, op, step));
  TRY(check_range(G, op, "lr", lr, 0, INFINITY, 0));
  TRY(check_range(G, op, "momentum", mu, 0, INFINITY, 0));
  TRY(check_range(G, op, "dampening", damp, 0, 1, 0));
  TRY(check_range(G, op, "weight_decay", wd, 0, INFINITY, 0));
  if (nesterov && (mu <= 0 || damp != 0))
    return glia_fail(G, GLIA_EARG, "%s: nesterov needs momentum > 0 and dampening 0", op);
  if (mu <= 0) buf = NULL;
  else if (!buf)
    return glia_fail(G, GLIA_EARG, "%s: momentum %g needs a momentum buffer", op, mu);
  else
    TRY(check_dense(G, op, "momentum buffer", buf, p));
  glia_tensor *g;
  TRY(grad_of(G, op, arg_t(&args[1]), p, &g));
  glia_tensor *all[3] = {p, g, buf};
  static const char *const names[3] = {"parameter", "gradient", "momentum buffer"};
  glia_status st = check_apart(G, op, 3, all, names);
  if (st == GLIA_OK) {
    sgd_arg a = {
        .p = (float *)glia_ptr(p),
        .buf = buf ? (float *)glia_ptr(buf) : NULL,
        .g = (const float *)glia_ptr(g),
        .lr = (float)lr,
        .momentum = (float)mu,
        .keep = (float)(1 - damp),
        .wd = (float)wd,
        .first = step == 1,
        .nesterov = nesterov,
    };
    for_chunks(G, glia_tensor_numel(p), sgd_chunk, &a);
    glia_tensor *written[2] = {p, buf};
    bump_all(2, written);
  }
  glia_tensor_release(g);
  return st;
}

/* adam_step_(p, g, m, v, step, lr, beta1, beta2, eps, wd, decoupled):
** Adam with L2 decay in the gradient, or AdamW (decoupled) shrinking p by
** 1 - lr wd. Returns nothing. */
static glia_status op_adam_step_(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                 glia_value *outs) {
  static const char op[] = "glia.adam_step_";
  (void)nargs, (void)nouts, (void)outs;
  glia_tensor *all[4], *g;
  TRY(adam_inputs(G, op, args, &g, all));
  glia_tensor *p = all[0];
  double lr = arg_num(&args[5], 0), wd = arg_num(&args[9], 0);
  int decoupled = arg_bool(&args[10], 0);
  adam_arg a = {.mo = moments_of(args, g, decoupled ? 0 : wd)};
  a.step_size = (float)(lr * a.mo.rbc1);
  a.decay = decoupled ? (float)(1 - lr * wd) : 1.0f;
  for_chunks(G, glia_tensor_numel(p), adam_chunk, &a);
  glia_tensor *written[3] = {p, all[2], all[3]};
  bump_all(3, written);
  glia_tensor_release(g);
  return GLIA_OK;
}

/* lamb_step_(p, g, m, v, step, lr, beta1, beta2, eps, wd) -> the trust
** ratio applied (a number). */
static glia_status op_lamb_step_(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                 glia_value *outs) {
  static const char op[] = "glia.lamb_step_";
  (void)nargs;
  glia_tensor *all[4], *g;
  TRY(adam_inputs(G, op, args, &g, all));
  glia_tensor *p = all[0];
  double lr = arg_num(&args[5], 0), ratio = 1;
  double psq[MAX_CHUNKS], usq[MAX_CHUNKS];
  lamb_arg a = {.mo = moments_of(args, g, 0), .wd = (float)arg_num(&args[9], 0),
                .psq = psq, .usq = usq};
  int64_t n = glia_tensor_numel(p), nchunks = for_chunks(G, n, lamb_norms_chunk, &a);
  double pn = sqrt(partials_total(psq, nchunks)), un = sqrt(partials_total(usq, nchunks));
  if (pn > 0 && un > 0) ratio = pn / un;
  a.scale = (float)(lr * ratio);
  for_chunks(G, n, lamb_apply_chunk, &a);
  glia_tensor *written[3] = {p, all[2], all[3]};
  bump_all(3, written);
  glia_tensor_release(g);
  *nouts = 1;
  outs[0].kind = GLIA_VAL_NUMBER;
  outs[0].u.num = ratio;
  return GLIA_OK;
}

/* Fails unless every tensor of the list is f32. */
static glia_status check_list_f32(glia_ctx *G, const char *op, const glia_value *list) {
  for (int i = 0; i < list->u.list.n; i++) {
    const glia_tensor *t = list->u.list.v[i];
    if (t->dtype != GLIA_DTYPE_F32)
      return glia_fail(G, GLIA_EDTYPE, "%s: element %d must be f32, got %s %s", op, i + 1,
                       glia_dtype_name(t->dtype), glia_shape_str(t));
  }
  return GLIA_OK;
}

/* sum_sq({t, ...}) -> sum over the list of the sum of squares, in double,
** tensors added in list order. Any strides. */
static glia_status op_sum_sq(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                             glia_value *outs) {
  (void)nargs;
  TRY(check_list_f32(G, "glia.sum_sq", &args[0]));
  double total = 0;
  for (int i = 0; i < args[0].u.list.n; i++) {
    glia_tensor *c;
    TRY(glia_tensor_contiguous_as(G, args[0].u.list.v[i], GLIA_DTYPE_F32, &c));
    total += sum_squares(G, (const float *)glia_ptr(c), glia_tensor_numel(c));
    glia_tensor_release(c);
  }
  *nouts = 1;
  outs[0].kind = GLIA_VAL_NUMBER;
  outs[0].u.num = total;
  return GLIA_OK;
}

/* scale_({t, ...}, s): t *= s for each tensor (any strides, not expanded).
** Like the step ops, it writes tensors that require grad. Returns nothing. */
static glia_status op_scale_(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                             glia_value *outs) {
  static const char op[] = "glia.scale_";
  (void)nargs, (void)nouts, (void)outs;
  const glia_value *list = &args[0];
  TRY(check_list_f32(G, op, list));
  for (int i = 0; i < list->u.list.n; i++) {
    const glia_tensor *t = list->u.list.v[i];
    for (int d = 0; d < t->ndim; d++)
      if (t->stride[d] == 0 && t->size[d] > 1)
        return glia_fail(G, GLIA_EARG, "%s: element %d is expanded %s (stride 0): in-place "
                         "scaling would repeat", op, i + 1, glia_shape_str(t));
  }
  float f = (float)arg_num(&args[1], 1);
  for (int i = 0; i < list->u.list.n; i++) {
    glia_tensor *t = list->u.list.v[i];
    glia_iter(G, 1, &t, scale_loop, &f, CHUNK * 4);
    glia_tensor_bump_version(t);
  }
  return GLIA_OK;
}

const glia_op glia_ops_optim[] = {
    {"sgd_step_", "TTtinnnbn", op_sgd_step_, 0},
    {"adam_step_", "TTTTinnnnnb", op_adam_step_, 0},
    {"lamb_step_", "TTTTinnnnn", op_lamb_step_, 0},
    {"sum_sq", "L", op_sum_sq, 0},
    {"scale_", "Ln", op_scale_, 0},
    {NULL, NULL, NULL, 0},
};
