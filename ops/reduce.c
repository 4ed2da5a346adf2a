/*
** ops/reduce.c -- reductions and softmax: sum, mean, var, std, logsumexp,
** norm, max/min (values and indices), argmax/argmin, softmax, log_softmax.
**
** One engine (reduce_into) runs every value reduction over any set of dims
** of an f32 tensor with any strides. It splits x's dims into kept dims (one
** per output element, in output order) and reduced dims, drops size-1 dims,
** merges dims that step evenly, and picks one of two layouts:
**   rows     the innermost reduced run is walked per output element (the
**            contiguous case, x[k, :], vectorizes; any stride works);
**   columns  the innermost kept dim is contiguous in x: whole rows of x are
**            accumulated into a block of outputs (bias gradients: the sum
**            over dim 1 of a {B*T, C} matrix), so the inner loop vectorizes.
** Sums accumulate in double (16 lanes in a row, one per output in columns).
** softmax and log_softmax walk rows the same two ways: one row at a time,
** or neighbouring rows side by side when the softmax dim is not innermost.
**
** Determinism: each output's reduction is cut into chunks whose bounds depend
** only on the shapes (CH elements of a row, CHR rows of a column), each chunk
** is reduced in a fixed order, and chunk results are combined in chunk order.
** Threads only decide who computes which chunk, so 1 and N threads give
** bit-identical results.
**
** Indices: the C entry points return 0-based i64 indices; the Lua-facing ops
** (max, min, argmax, argmin) return them 1-based, Torch7's convention, so
** they can be fed to the index ops as they are.
**
** Every differentiable op records a node whose backward sits next to its
** forward. Backward gradients come back in x's shape (sum and mean: an
** expanded view of the output gradient).
*/
#include "glia_impl.h"
#include "ops.h"

#include <math.h>
#include <stdlib.h>

#define LANES 16        /* accumulators per vectorized reduction */
#define CH (1 << 14)    /* row layout: elements per chunk */
#define CHR 1024        /* column layout: rows per chunk */
#define WB 8192         /* column layout: outputs per block */
#define GROUP4 1024     /* column layout: wider blocks add four rows at a time */
#define MAXOPS 3

#define INLINE static inline __attribute__((always_inline))

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* ======================================================== geometry */

/* A set of dims walked together by up to MAXOPS operands. */
typedef struct {
  int n;
  int64_t size[GLIA_MAX_DIMS];
  int64_t stride[MAXOPS][GLIA_MAX_DIMS]; /* in elements */
} dimset;

/* Drops size-1 dims and merges a dim into the one before it when every
** operand steps evenly across both. Sizes must be nonzero. */
static void dimset_coalesce(dimset *D, int nops) {
  int w = 0;
  for (int d = 0; d < D->n; d++) {
    if (D->size[d] == 1) continue;
    bool merge = w > 0;
    for (int k = 0; k < nops && merge; k++)
      merge = D->stride[k][w - 1] == D->stride[k][d] * D->size[d];
    if (merge) {
      D->size[w - 1] *= D->size[d];
      for (int k = 0; k < nops; k++) D->stride[k][w - 1] = D->stride[k][d];
    } else {
      D->size[w] = D->size[d];
      for (int k = 0; k < nops; k++) D->stride[k][w] = D->stride[k][d];
      w++;
    }
  }
  D->n = w;
}

/* Every dim but the last. */
static dimset dimset_outer(const dimset *D) {
  dimset o = *D;
  if (o.n > 0) o.n--;
  return o;
}

/* A multi-index into a dimset, with each operand's element offset. */
typedef struct {
  int64_t idx[GLIA_MAX_DIMS];
  int64_t off[MAXOPS];
} cursor;

static void cursor_seek(cursor *c, const dimset *D, int nops, int64_t k) {
  for (int o = 0; o < nops; o++) c->off[o] = 0;
  for (int d = D->n - 1; d >= 0; d--) {
    c->idx[d] = k % D->size[d];
    k /= D->size[d];
    for (int o = 0; o < nops; o++) c->off[o] += c->idx[d] * D->stride[o][d];
  }
}

/* Steps to the next index in row-major order (wrapping after the last). */
static void cursor_next(cursor *c, const dimset *D, int nops) {
  for (int d = D->n - 1; d >= 0; d--) {
    for (int o = 0; o < nops; o++) c->off[o] += D->stride[o][d];
    if (++c->idx[d] < D->size[d]) return;
    for (int o = 0; o < nops; o++) c->off[o] -= D->size[d] * D->stride[o][d];
    c->idx[d] = 0;
  }
}

/* ===================================================== lane loops */

/* NaN wins, so max/min propagate it. */
#define BETTER_MAX(a, b) ((a) > (b) || (a) != (a))
#define BETTER_MIN(a, b) ((a) < (b) || (a) != (a))

/* Loops below are written in blocks of LANES with a fixed inner loop:
** gcc's -O2 cost model vectorizes those, not loops of unknown length. */

/* RESULT = sum of EXPR (a float expression of the index J) for J in
** [0, n), in LANES double accumulators folded pairwise: a fixed order.
** Unlike GLIA_LANE_SUM (float lanes, for short rows) the lanes are double:
** a reduction may run over millions of elements. */
#define LANE_SUM(RESULT, n, J, EXPR)                                          \
  do {                                                                        \
    double l_[LANES] = {0}, t_ = 0;                                           \
    int64_t e_ = (n) - (n) % LANES;                                           \
    for (int64_t b_ = 0; b_ < e_; b_ += LANES) {                              \
      float v_[LANES];                                                        \
      for (int k_ = 0; k_ < LANES; k_++) {                                    \
        int64_t J = b_ + k_;                                                  \
        v_[k_] = (EXPR);                                                      \
      }                                                                       \
      for (int k_ = 0; k_ < LANES; k_++) l_[k_] += v_[k_];                    \
    }                                                                         \
    for (int64_t J = e_; J < (n); J++) t_ += (EXPR);                          \
    for (int w_ = LANES / 2; w_ > 0; w_ /= 2)                                 \
      for (int k_ = 0; k_ < w_; k_++) l_[k_] += l_[k_ + w_];                  \
    RESULT = l_[0] + t_;                                                      \
  } while (0)

/* The statement after J for J in [0, n). */
#define LANE_FOR(n, J, ...)                                                   \
  do {                                                                        \
    int64_t e_ = (n) - (n) % LANES;                                           \
    for (int64_t b_ = 0; b_ < e_; b_ += LANES)                                \
      for (int64_t J = b_; J < b_ + LANES; J++) __VA_ARGS__;                  \
    for (int64_t J = e_; J < (n); J++) __VA_ARGS__;                           \
  } while (0)

/* RESULT = the element of EXPR (a float expression of J) that BETTER picks,
** starting from INIT. */
#define LANE_PICK(RESULT, n, J, EXPR, INIT, BETTER)                           \
  do {                                                                        \
    float l_[LANES], t_ = (INIT);                                             \
    for (int k_ = 0; k_ < LANES; k_++) l_[k_] = (INIT);                       \
    int64_t e_ = (n) - (n) % LANES;                                           \
    for (int64_t b_ = 0; b_ < e_; b_ += LANES)                                \
      for (int k_ = 0; k_ < LANES; k_++) {                                    \
        int64_t J = b_ + k_;                                                  \
        float v_ = (EXPR);                                                    \
        l_[k_] = BETTER(v_, l_[k_]) ? v_ : l_[k_];                            \
      }                                                                       \
    for (int64_t J = e_; J < (n); J++) {                                      \
      float v_ = (EXPR);                                                      \
      t_ = BETTER(v_, t_) ? v_ : t_;                                          \
    }                                                                         \
    for (int w_ = LANES / 2; w_ > 0; w_ /= 2)                                 \
      for (int k_ = 0; k_ < w_; k_++)                                         \
        l_[k_] = BETTER(l_[k_ + w_], l_[k_]) ? l_[k_ + w_] : l_[k_];          \
    RESULT = BETTER(t_, l_[0]) ? t_ : l_[0];                                  \
  } while (0)

/* ================================================= the reduce engine */

/* What is accumulated per element v (c is the output's center, p the norm
** order), and how the total becomes the output. */
typedef enum {
  R_SUM,    /* v */
  R_SQDEV,  /* (v - c)^2 */
  R_ABS,    /* |v| */
  R_SQ,     /* v^2 */
  R_POW,    /* |v|^p */
  R_EXPDEV, /* exp(v - c) */
  R_EQ,     /* |v| == c (a count) */
  R_MAX,    /* max v */
  R_MIN,    /* min v */
  R_AMAX    /* max |v| */
} red_kind;

typedef enum {
  FIN_NONE, /* the total */
  FIN_MEAN, /* / N */
  FIN_VAR,  /* / max(0, N - corr) */
  FIN_STD,  /* sqrt of FIN_VAR */
  FIN_SQRT,
  FIN_ROOT, /* ^(1/p) */
  FIN_LSE   /* c + log(total), or c when c is infinite */
} fin_kind;

typedef struct {
  red_kind kind;
  fin_kind fin;
  double p, corr;
} red_spec;

static double identity(red_kind k) {
  return k == R_MAX ? -INFINITY : k == R_MIN ? INFINITY : 0.0;
}

static inline double combine(red_kind k, double acc, double v) {
  switch (k) {
  case R_MAX:
  case R_AMAX: return BETTER_MAX(v, acc) ? v : acc;
  case R_MIN: return BETTER_MIN(v, acc) ? v : acc;
  default: return acc + v;
  }
}

typedef struct {
  red_spec S;
  const float *x;
  const float *center; /* one per output, or NULL */
  float *out;          /* K outputs, contiguous in kept-dim order */
  double *part;        /* chunk results [q * K + k]; NULL for rows with Q = 1 */
  int64_t K, N, Q;     /* outputs, elements per output, chunks per output */
  dimset keep;         /* x strides of the kept dims */
  dimset red;          /* rows: reduced dims but the innermost; columns: all */
  /* rows */
  int64_t L, s, nseg;  /* innermost reduced run: length, stride; runs per output */
  int64_t cps, spc;    /* chunks per run (L >= CH) or runs per chunk (L < CH) */
  /* columns */
  dimset kouter;       /* kept dims but the innermost */
  int64_t W, nb;       /* innermost kept size, blocks of WB outputs */
} reduce_plan;

static inline float finish(const reduce_plan *P, double t, double c) {
  double den = fmax(0.0, (double)P->N - P->S.corr);
  switch (P->S.fin) {
  case FIN_MEAN: return (float)(t / (double)P->N);
  case FIN_VAR: return (float)(t / den);
  case FIN_STD: return (float)sqrt(t / den);
  case FIN_SQRT: return (float)sqrt(t);
  case FIN_ROOT: return (float)pow(t, 1.0 / P->S.p);
  case FIN_LSE: return (float)(isinf(c) ? c : c + log(t));
  default: return (float)t;
  }
}

/* Reduces n elements at stride s; inlined with s == 1 for the fast path. */
INLINE double run_reduce(red_kind kind, const float *x, int64_t n, int64_t s, double c,
                         double p) {
  double r = 0;
  float cf = (float)c, pf = (float)p, m;
  switch (kind) {
  case R_SUM: LANE_SUM(r, n, j, x[j * s]); break;
  case R_SQDEV: LANE_SUM(r, n, j, (x[j * s] - cf) * (x[j * s] - cf)); break;
  case R_ABS: LANE_SUM(r, n, j, fabsf(x[j * s])); break;
  case R_SQ: LANE_SUM(r, n, j, x[j * s] * x[j * s]); break;
  case R_POW: LANE_SUM(r, n, j, powf(fabsf(x[j * s]), pf)); break;
  case R_EXPDEV: LANE_SUM(r, n, j, glia_expf(x[j * s] - cf)); break;
  case R_EQ: LANE_SUM(r, n, j, fabsf(x[j * s]) == cf ? 1.0f : 0.0f); break;
  case R_MAX: LANE_PICK(m, n, j, x[j * s], -INFINITY, BETTER_MAX); r = m; break;
  case R_MIN: LANE_PICK(m, n, j, x[j * s], INFINITY, BETTER_MIN); r = m; break;
  case R_AMAX: LANE_PICK(m, n, j, fabsf(x[j * s]), 0.0f, BETTER_MAX); r = m; break;
  }
  return r;
}

static double reduce_run(red_kind kind, const float *x, int64_t n, int64_t s, double c,
                         double p) {
  return s == 1 ? run_reduce(kind, x, n, 1, c, p) : run_reduce(kind, x, n, s, c, p);
}

/* --- rows: chunk q of the output whose kept dims start at xk */
static double row_chunk(const reduce_plan *P, const float *xk, int64_t q, double c) {
  const red_spec *S = &P->S;
  cursor cur;
  if (P->cps > 0) { /* a piece of one run */
    int64_t start = (q % P->cps) * CH;
    cursor_seek(&cur, &P->red, 1, q / P->cps);
    return reduce_run(S->kind, xk + cur.off[0] + start * P->s, min64(CH, P->L - start), P->s,
                      c, S->p);
  }
  int64_t r0 = q * P->spc, r1 = min64(P->nseg, r0 + P->spc);
  cursor_seek(&cur, &P->red, 1, r0);
  double acc = reduce_run(S->kind, xk + cur.off[0], P->L, P->s, c, S->p);
  for (int64_t r = r0 + 1; r < r1; r++) {
    cursor_next(&cur, &P->red, 1);
    acc = combine(S->kind, acc, reduce_run(S->kind, xk + cur.off[0], P->L, P->s, c, S->p));
  }
  return acc;
}

/* Items are (output k, chunk q), k-major. */
static void row_range(int64_t b, int64_t e, void *ud) {
  const reduce_plan *P = ud;
  int64_t Q = P->Q, k = b / Q;
  cursor cur;
  cursor_seek(&cur, &P->keep, 1, k);
  for (int64_t i = b; i < e; k++, cursor_next(&cur, &P->keep, 1)) {
    double c = P->center ? P->center[k] : 0;
    for (int64_t q = i - k * Q; q < Q && i < e; q++, i++) {
      double v = row_chunk(P, P->x + cur.off[0], q, c);
      if (P->part)
        P->part[q * P->K + k] = v;
      else
        P->out[k] = finish(P, v, c);
    }
  }
}

/* --- columns: acc[j] = ADD(acc[j], F(x, j)) over the rows of a chunk, for
** w outputs whose elements start at xb. Past GROUP4
** outputs acc no longer fits in L1 and rows go four at a time (ADD-ed
** pairwise first): acc is then loaded and stored once per four rows. The
** grouping depends only on the shape. */
#define COL_LOOP(F, ADD)                                                      \
  do {                                                                        \
    int64_t r = r0;                                                           \
    for (; w > GROUP4 && r + 4 <= r1; r += 4) {                               \
      const float *x0 = xb + cur.off[0], *x1, *x2, *x3;                       \
      cursor_next(&cur, &P->red, 1), x1 = xb + cur.off[0];                    \
      cursor_next(&cur, &P->red, 1), x2 = xb + cur.off[0];                    \
      cursor_next(&cur, &P->red, 1), x3 = xb + cur.off[0];                    \
      cursor_next(&cur, &P->red, 1);                                          \
      LANE_FOR(w, j, {                                                        \
        double a_ = F(x0, j), b_ = F(x1, j), c_ = F(x2, j), d_ = F(x3, j);    \
        acc[j] = ADD(acc[j], ADD(ADD(a_, b_), ADD(c_, d_)));                  \
      });                                                                     \
    }                                                                         \
    for (; r < r1; r++, cursor_next(&cur, &P->red, 1)) {                      \
      const float *x0 = xb + cur.off[0];                                      \
      LANE_FOR(w, j, acc[j] = ADD(acc[j], F(x0, j)));                         \
    }                                                                         \
  } while (0)

#define F_SUM(x, j) ((double)x[j])
#define F_SQDEV(x, j) (((double)x[j] - cen[j]) * ((double)x[j] - cen[j]))
#define F_ABS(x, j) ((double)fabsf(x[j]))
#define F_SQ(x, j) ((double)x[j] * x[j])
#define F_POW(x, j) pow(fabs((double)x[j]), p)
#define F_EXPDEV(x, j) ((double)glia_expf(x[j] - cen[j]))
#define F_EQ(x, j) (fabsf(x[j]) == cen[j] ? 1.0 : 0.0)
#define F_AMAX F_ABS
#define ADD_SUM(a, b) ((a) + (b))
#define ADD_MAX(a, b) (BETTER_MAX(b, a) ? (b) : (a))
#define ADD_MIN(a, b) (BETTER_MIN(b, a) ? (b) : (a))

static void col_chunk(const reduce_plan *P, const float *xb, int64_t w, int64_t q,
                      const float *cen, double *restrict acc) {
  int64_t r0 = q * CHR, r1 = min64(P->N, r0 + CHR);
  cursor cur;
  cursor_seek(&cur, &P->red, 1, r0);
  double id = identity(P->S.kind), p = P->S.p;
  for (int64_t j = 0; j < w; j++) acc[j] = id;
  switch (P->S.kind) {
  case R_SUM: COL_LOOP(F_SUM, ADD_SUM); break;
  case R_SQDEV: COL_LOOP(F_SQDEV, ADD_SUM); break;
  case R_ABS: COL_LOOP(F_ABS, ADD_SUM); break;
  case R_SQ: COL_LOOP(F_SQ, ADD_SUM); break;
  case R_POW: COL_LOOP(F_POW, ADD_SUM); break;
  case R_EXPDEV: COL_LOOP(F_EXPDEV, ADD_SUM); break;
  case R_EQ: COL_LOOP(F_EQ, ADD_SUM); break;
  case R_MAX: COL_LOOP(F_SUM, ADD_MAX); break;
  case R_MIN: COL_LOOP(F_SUM, ADD_MIN); break;
  case R_AMAX: COL_LOOP(F_AMAX, ADD_MAX); break;
  }
}

/* Items are (outer kept index, block of WB outputs, chunk q), q fastest.
** Each accumulates straight into its slice of the chunk results. */
static void col_range(int64_t b, int64_t e, void *ud) {
  const reduce_plan *P = ud;
  for (int64_t i = b; i < e; i++) {
    int64_t q = i % P->Q, ob = i / P->Q, o = ob / P->nb, j0 = ob % P->nb * WB;
    int64_t w = min64(WB, P->W - j0), k0 = o * P->W + j0;
    cursor cur;
    cursor_seek(&cur, &P->kouter, 1, o);
    const float *cen = P->center ? P->center + k0 : NULL;
    col_chunk(P, P->x + cur.off[0] + j0, w, q, cen, P->part + q * P->K + k0);
  }
}

/* Combines each output's chunk results in chunk order. */
static void combine_range(int64_t b, int64_t e, void *ud) {
  const reduce_plan *P = ud;
  for (int64_t k = b; k < e; k++) {
    double t = P->part[k];
    for (int64_t q = 1; q < P->Q; q++) t = combine(P->S.kind, t, P->part[q * P->K + k]);
    P->out[k] = finish(P, t, P->center ? P->center[k] : 0);
  }
}

/* Orders reduced dims by decreasing stride (broadcast dims, stride 0,
** first) so that the smallest stride ends up innermost. */
static void sort_by_stride(dimset *D) {
  for (int i = 1; i < D->n; i++)
    for (int j = i; j > 0; j--) {
      int64_t a = D->stride[0][j - 1], b = D->stride[0][j];
      if (a == 0 || (b != 0 && llabs(a) >= llabs(b))) break;
      int64_t ts = D->size[j], tt = D->stride[0][j];
      D->size[j] = D->size[j - 1], D->stride[0][j] = a;
      D->size[j - 1] = ts, D->stride[0][j - 1] = tt;
    }
}

/* Reduces f32 x over the dims in mask (nonzero, checked) into out, a new
** contiguous f32 tensor of the reduced shape (keepdim or not: same layout).
** center, when given, holds one float per output. Fails only on memory. */
static glia_status reduce_into(glia_ctx *G, const char *name, const red_spec *S,
                               glia_tensor *x, unsigned mask, const float *center,
                               glia_tensor *out) {
  reduce_plan P;
  memset(&P, 0, sizeof P);
  P.S = *S;
  P.x = (const float *)glia_ptr(x);
  P.center = center;
  P.out = (float *)glia_ptr(out);
  P.K = P.N = 1;
  for (int d = 0; d < x->ndim; d++) {
    dimset *D = (mask >> d & 1) ? &P.red : &P.keep;
    D->size[D->n] = x->size[d];
    D->stride[0][D->n++] = x->stride[d];
    *((mask >> d & 1) ? &P.N : &P.K) *= x->size[d];
  }
  if (P.K == 0) return GLIA_OK;
  if (P.N == 0) {
    for (int64_t k = 0; k < P.K; k++)
      P.out[k] = finish(&P, identity(S->kind), center ? center[k] : 0);
    return GLIA_OK;
  }
  sort_by_stride(&P.red);
  dimset_coalesce(&P.red, 1);
  dimset_coalesce(&P.keep, 1);
  int kn = P.keep.n, rn = P.red.n;
  bool columns = kn > 0 && P.keep.stride[0][kn - 1] == 1 &&
                 (rn == 0 || P.red.stride[0][rn - 1] != 1);
  int64_t items, work; /* work: elements per item */
  glia_range_fn fn;
  if (columns) {
    P.W = P.keep.size[kn - 1];
    P.kouter = dimset_outer(&P.keep);
    P.nb = cdiv(P.W, WB);
    P.Q = cdiv(P.N, CHR);
    items = P.K / P.W * P.nb * P.Q;
    work = min64(P.N, CHR) * min64(P.W, WB);
    fn = col_range;
  } else {
    P.L = rn ? P.red.size[rn - 1] : 1;
    P.s = rn ? P.red.stride[0][rn - 1] : 0;
    P.red = dimset_outer(&P.red);
    P.nseg = P.N / P.L;
    if (P.L >= CH) {
      P.cps = cdiv(P.L, CH);
      P.Q = P.nseg * P.cps;
    } else {
      P.spc = CH / P.L;
      P.Q = cdiv(P.nseg, P.spc);
    }
    items = P.K * P.Q;
    work = min64(P.N, CH);
    fn = row_range;
  }
  size_t nbytes = 0;
  if (P.Q > 1 || columns) {
    nbytes = (size_t)(P.K * P.Q) * sizeof *P.part;
    P.part = glia_alloc(G, nbytes);
    if (!P.part) return glia_fail_nomem(G, nbytes, name);
  }
  glia_parallel_for(G, items, max64(1, GRAIN / work), fn, &P);
  if (P.part) {
    glia_parallel_for(G, P.K, max64(1, GRAIN / P.Q), combine_range, &P);
    glia_free(G, P.part, nbytes);
  }
  return GLIA_OK;
}

/* ============================================ arguments and shapes */

/* Checks a mask of dims against x; 0 means every dim. */
static glia_status norm_mask(glia_ctx *G, const char *name, const glia_tensor *x,
                             unsigned *mask) {
  unsigned all = x->ndim ? (unsigned)((1u << x->ndim) - 1) : 0;
  if (*mask & ~all)
    return glia_fail(G, GLIA_ERANGE, "%s: dims mask 0x%x out of range for a %d-D tensor %s",
                     name, *mask, x->ndim, glia_shape_str(x));
  if (*mask == 0) *mask = all;
  return GLIA_OK;
}

static glia_status check_dim(glia_ctx *G, const char *name, const glia_tensor *x, int dim) {
  if (dim < 0 || dim >= x->ndim)
    return glia_fail(G, GLIA_ERANGE, "%s: dim %d out of range for a %d-D tensor %s", name,
                     dim + 1, x->ndim, glia_shape_str(x));
  return GLIA_OK;
}

/* The shape of x reduced over mask: reduced dims kept as 1 or dropped. */
static int reduced_shape(const glia_tensor *x, unsigned mask, int keepdim, int64_t *size) {
  int n = 0;
  for (int d = 0; d < x->ndim; d++)
    if (!(mask >> d & 1))
      size[n++] = x->size[d];
    else if (keepdim)
      size[n++] = 1;
  return n;
}

static int64_t reduced_count(const glia_tensor *x, unsigned mask) {
  int64_t n = 1;
  for (int d = 0; d < x->ndim; d++)
    if (mask >> d & 1) n *= x->size[d];
  return n;
}

/* A view of t (shaped like x reduced over mask, keepdim or not) with x's
** dims: reduced dims get stride 0 and size 1, or x's size when expand. */
static glia_status keep_view(glia_ctx *G, glia_tensor *t, const glia_tensor *x, unsigned mask,
                             int keepdim, int expand, glia_tensor **out) {
  int64_t size[GLIA_MAX_DIMS], stride[GLIA_MAX_DIMS];
  for (int d = 0, td = 0; d < x->ndim; d++) {
    bool red = mask >> d & 1;
    size[d] = red && !expand ? 1 : x->size[d];
    stride[d] = red ? 0 : t->stride[td];
    if (!red || keepdim) td++;
  }
  return glia_tensor_view_raw(G, t, x->ndim, size, stride, t->offset, out);
}

/* A new f32 tensor of x reduced over mask, filled by spec S. */
static glia_status reduce_new(glia_ctx *G, const char *name, const red_spec *S, glia_tensor *x,
                              unsigned mask, int keepdim, const glia_tensor *center,
                              glia_tensor **out) {
  int64_t size[GLIA_MAX_DIMS];
  glia_tensor *r;
  TRY(glia_tensor_new(G, GLIA_DTYPE_F32, reduced_shape(x, mask, keepdim, size), size, &r));
  glia_status st = reduce_into(G, name, S, x, mask,
                               center ? (const float *)glia_ptr((glia_tensor *)center) : NULL, r);
  return glia_hand_out(st, r, out);
}

/* Gives r a node recording `name` on input x, saving save[0..nsave), with
** iarg {mask, keepdim, i2} and farg {f0, f1}; hands r to *out. On failure
** r is released. */
static glia_status record(glia_ctx *G, const char *name, glia_backward_fn bw, glia_tensor *x,
                          glia_tensor *const *save, int nsave, unsigned mask, int keepdim,
                          int64_t i2, double f0, double f1, glia_tensor *r, glia_tensor **out) {
  glia_status st;
  glia_node *node = glia_node_begin(G, name, bw, 1, &x, &st);
  if (node) {
    for (int i = 0; i < nsave && st == GLIA_OK; i++) st = glia_node_save(G, node, save[i]);
    node->iarg[0] = mask, node->iarg[1] = keepdim, node->iarg[2] = i2;
    node->farg[0] = f0, node->farg[1] = f1;
    st = glia_node_end(node, st, r);
  }
  return glia_hand_out(st, r, out);
}

/* Backward kernels that map (x, per-output c, per-output g) to dx, run with
** glia_iter over x's shape; c and g are keep_views. */
typedef enum { G_VAR, G_LSE, G_NORM1, G_NORM2, G_NORMP, G_NORMINF } grad_kind;

typedef struct {
  grad_kind kind;
  double a; /* var: 2 / den; std: 1 / den; normp: p */
} grad_arg;

static inline float sign(float v) { return (float)((v > 0) - (v < 0)); }

#define GRAD_LOOP(EXPR)                                                       \
  for (int64_t i = 0; i < n; i++) {                                           \
    float x = *(const float *)(p[1] + i * s[1]);                              \
    float c = *(const float *)(p[2] + i * s[2]);                              \
    float g = *(const float *)(p[3] + i * s[3]);                              \
    (void)c;                                                                  \
    *(float *)(p[0] + i * s[0]) = (EXPR);                                     \
  }

static void grad_loop(int64_t n, char **p, const int64_t *s, void *ud) {
  const grad_arg *A = ud;
  float a = (float)A->a;
  switch (A->kind) {
  case G_VAR: GRAD_LOOP((x - c) * g * a) break;
  case G_LSE: GRAD_LOOP(g * glia_expf(x - c)) break;
  case G_NORM1: GRAD_LOOP(g * sign(x)) break;
  case G_NORM2: GRAD_LOOP(c == 0 ? 0.0f : g * x / c) break;
  case G_NORMP:
    GRAD_LOOP(c == 0 ? 0.0f : (float)(g * sign(x) * pow(fabs(x) / c, A->a - 1)))
    break;
  case G_NORMINF: GRAD_LOOP(fabsf(x) == c ? g * sign(x) : 0.0f) break;
  }
}

/* dx (new, x's shape) from x, a per-output tensor c and the gradient g. */
static glia_status grad_apply(glia_ctx *G, glia_node *n, glia_tensor *x, glia_tensor *c,
                              glia_tensor *g, grad_kind kind, double a, glia_tensor **dx) {
  unsigned mask = (unsigned)n->iarg[0];
  int keepdim = (int)n->iarg[1];
  glia_tensor *ck = NULL, *gk = NULL, *r = NULL;
  glia_status st = keep_view(G, c, x, mask, keepdim, 0, &ck);
  if (st == GLIA_OK) st = keep_view(G, g, x, mask, keepdim, 0, &gk);
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_F32, x->ndim, x->size, &r);
  if (st == GLIA_OK) {
    grad_arg A = {kind, a};
    glia_tensor *ops[4] = {r, x, ck, gk};
    glia_iter(G, 4, ops, grad_loop, &A, GRAIN);
    *dx = r;
  }
  glia_tensor_release(ck);
  glia_tensor_release(gk);
  return st;
}

/* ======================================================== sum, mean */

/* The gradient of every output element spreads evenly over its inputs: g
** (times 1/N for mean) expanded back to x's shape, without a copy. */
static glia_status sum_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  glia_tensor *gs;
  if (n->farg[0] == 1.0)
    gs = glia_tensor_retain(g);
  else
    TRY(glia_ts(G, GLIA_BIN_MUL, g, n->farg[0], &gs));
  glia_status st = keep_view(G, gs, n->input[0], (unsigned)n->iarg[0], (int)n->iarg[1], 1,
                             &din[0]);
  glia_tensor_release(gs);
  return st;
}

static glia_status sum_mean(glia_ctx *G, const char *name, fin_kind fin, glia_tensor *x,
                            unsigned mask, int keepdim, glia_tensor **out) {
  TRY(glia_check_f32(G, name, "x", x));
  TRY(norm_mask(G, name, x, &mask));
  red_spec S = {R_SUM, fin, 0, 0};
  glia_tensor *r;
  TRY(reduce_new(G, name, &S, x, mask, keepdim, NULL, &r));
  double scale = fin == FIN_MEAN ? 1.0 / (double)reduced_count(x, mask) : 1.0;
  return record(G, name, sum_bwd, x, NULL, 0, mask, keepdim, 0, scale, 0, r, out);
}

glia_status glia_sum(glia_ctx *G, glia_tensor *x, unsigned mask, int keepdim,
                     glia_tensor **out) {
  return sum_mean(G, "glia.sum", FIN_NONE, x, mask, keepdim, out);
}

glia_status glia_mean(glia_ctx *G, glia_tensor *x, unsigned mask, int keepdim,
                      glia_tensor **out) {
  return sum_mean(G, "glia.mean", FIN_MEAN, x, mask, keepdim, out);
}

/* ========================================================= var, std */

/* Saved: x, the mean (output-shaped), and for std the output. farg[0] is
** the divisor max(0, N - correction), farg[1] says std.
** var: dx = 2 (x - mean) g / den;  std: dx = (x - mean) g / (den std). */
static glia_status var_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  glia_tensor *x, *mean, *sd;
  TRY(glia_node_saved(G, n, 0, &x));
  TRY(glia_node_saved(G, n, 1, &mean));
  if (n->farg[1] == 0) return grad_apply(G, n, x, mean, g, G_VAR, 2.0 / n->farg[0], &din[0]);
  TRY(glia_node_saved(G, n, 2, &sd));
  glia_tensor *gs;
  TRY(glia_tt(G, GLIA_BIN_DIV, g, sd, &gs));
  glia_status st = grad_apply(G, n, x, mean, gs, G_VAR, 1.0 / n->farg[0], &din[0]);
  glia_tensor_release(gs);
  return st;
}

/* Two passes: the mean, then the squared deviations from it. */
static glia_status var_std(glia_ctx *G, const char *name, int is_std, glia_tensor *x,
                           unsigned mask, int keepdim, double correction, glia_tensor **out) {
  TRY(glia_check_f32(G, name, "x", x));
  TRY(norm_mask(G, name, x, &mask));
  if (!isfinite(correction) || correction < 0)
    return glia_fail(G, GLIA_EARG, "%s: correction must be a number >= 0, got %g", name,
                     correction);
  red_spec Sm = {R_SUM, FIN_MEAN, 0, 0}, Sv = {R_SQDEV, is_std ? FIN_STD : FIN_VAR, 0, correction};
  glia_tensor *mean, *r = NULL;
  TRY(reduce_new(G, name, &Sm, x, mask, keepdim, NULL, &mean));
  glia_status st = reduce_new(G, name, &Sv, x, mask, keepdim, mean, &r);
  if (st == GLIA_OK) {
    double den = (double)reduced_count(x, mask) - correction;
    glia_tensor *save[3] = {x, mean, r};
    st = record(G, name, var_bwd, x, save, is_std ? 3 : 2, mask, keepdim, 0, den > 0 ? den : 0,
                is_std, r, out);
  }
  glia_tensor_release(mean);
  return st;
}

glia_status glia_var(glia_ctx *G, glia_tensor *x, unsigned mask, int keepdim, double correction,
                     glia_tensor **out) {
  return var_std(G, "glia.var", 0, x, mask, keepdim, correction, out);
}

glia_status glia_std(glia_ctx *G, glia_tensor *x, unsigned mask, int keepdim, double correction,
                     glia_tensor **out) {
  return var_std(G, "glia.std", 1, x, mask, keepdim, correction, out);
}

/* ======================================================= logsumexp */

/* dx = g exp(x - lse) */
static glia_status lse_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  glia_tensor *x, *y;
  TRY(glia_node_saved(G, n, 0, &x));
  TRY(glia_node_saved(G, n, 1, &y));
  return grad_apply(G, n, x, y, g, G_LSE, 0, &din[0]);
}

/* Stable: max first, then log(sum(exp(x - max))) + max. */
glia_status glia_logsumexp(glia_ctx *G, glia_tensor *x, unsigned mask, int keepdim,
                           glia_tensor **out) {
  static const char name[] = "glia.logsumexp";
  TRY(glia_check_f32(G, name, "x", x));
  TRY(norm_mask(G, name, x, &mask));
  red_spec Sm = {R_MAX, FIN_NONE, 0, 0}, Se = {R_EXPDEV, FIN_LSE, 0, 0};
  glia_tensor *m, *r = NULL;
  TRY(reduce_new(G, name, &Sm, x, mask, keepdim, NULL, &m));
  glia_status st = reduce_new(G, name, &Se, x, mask, keepdim, m, &r);
  glia_tensor_release(m);
  TRY(st);
  glia_tensor *save[2] = {x, r};
  return record(G, name, lse_bwd, x, save, 2, mask, keepdim, 0, 0, 0, r, out);
}

/* ============================================================ norm */

/* p = 1: g sign(x); p = 2: g x / norm; other p: g sign(x) (|x| / norm)^(p-1);
** p = inf: the gradient is shared evenly by the elements at the max. Zero
** where the norm is zero. */
static glia_status norm_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  glia_tensor *x, *y;
  TRY(glia_node_saved(G, n, 0, &x));
  TRY(glia_node_saved(G, n, 1, &y));
  double p = n->farg[0];
  if (p == 1) return grad_apply(G, n, x, y, g, G_NORM1, 0, &din[0]);
  if (p == 2) return grad_apply(G, n, x, y, g, G_NORM2, 0, &din[0]);
  if (!isinf(p)) return grad_apply(G, n, x, y, g, G_NORMP, p, &din[0]);
  unsigned mask = (unsigned)n->iarg[0];
  int keepdim = (int)n->iarg[1];
  red_spec S = {R_EQ, FIN_NONE, 0, 0};
  glia_tensor *count, *gc = NULL;
  TRY(reduce_new(G, "glia.norm", &S, x, mask, keepdim, y, &count));
  glia_status st = glia_tt(G, GLIA_BIN_DIV, g, count, &gc);
  if (st == GLIA_OK) st = grad_apply(G, n, x, y, gc, G_NORMINF, 0, &din[0]);
  glia_tensor_release(count);
  glia_tensor_release(gc);
  return st;
}

glia_status glia_norm(glia_ctx *G, glia_tensor *x, double p, unsigned mask, int keepdim,
                      glia_tensor **out) {
  static const char name[] = "glia.norm";
  TRY(glia_check_f32(G, name, "x", x));
  TRY(norm_mask(G, name, x, &mask));
  if (!(p > 0))
    return glia_fail(G, GLIA_EARG, "%s: p must be > 0 (or math.huge), got %g", name, p);
  red_spec S = {R_POW, FIN_ROOT, p, 0};
  if (p == 1) S = (red_spec){R_ABS, FIN_NONE, 0, 0};
  if (p == 2) S = (red_spec){R_SQ, FIN_SQRT, 0, 0};
  if (isinf(p)) S = (red_spec){R_AMAX, FIN_NONE, 0, 0};
  glia_tensor *r;
  TRY(reduce_new(G, name, &S, x, mask, keepdim, NULL, &r));
  glia_tensor *save[2] = {x, r};
  return record(G, name, norm_bwd, x, save, 2, mask, keepdim, 0, p, 0, r, out);
}

/* =================================================== max, min, arg* */

/* Extremes along one dim of length n (stride s), per output; the first of
** equal values wins and a NaN beats any number. Chunked like the rows
** layout so that long dims split across threads. */
typedef struct {
  dimset keep;
  const float *x;
  int64_t n, s, K, Q, base;
  int is_min;
  float *val;          /* K values, or NULL */
  int64_t *idx;        /* K indices (+ base) */
  int64_t *pidx;       /* chunk results [q * K + k] when Q > 1 */
  float *pval;
} arg_plan;

#define ARG_BETTER(is_min, v, m) \
  (((v) != (v) && (m) == (m)) || ((is_min) ? (v) < (m) : (v) > (m)))

/* The first extreme of n >= 1 elements at stride s: the extreme value by
** vectorized lanes, then its first position. */
INLINE void arg_chunk(const float *x, int64_t n, int64_t s, int is_min, float *value,
                      int64_t *at) {
  float m;
  if (is_min)
    LANE_PICK(m, n, j, x[j * s], INFINITY, BETTER_MIN);
  else
    LANE_PICK(m, n, j, x[j * s], -INFINITY, BETTER_MAX);
  int64_t j = 0; /* m is one of the elements: the searches stop at it */
  if (m != m)
    while (j < n - 1 && x[j * s] == x[j * s]) j++;
  else
    while (j < n - 1 && x[j * s] != m) j++;
  *value = m, *at = j;
}

static void arg_range(int64_t b, int64_t e, void *ud) {
  const arg_plan *A = ud;
  int64_t k = b / A->Q;
  cursor cur;
  cursor_seek(&cur, &A->keep, 1, k);
  for (int64_t i = b; i < e; k++, cursor_next(&cur, &A->keep, 1)) {
    const float *x = A->x + cur.off[0];
    for (int64_t q = i - k * A->Q; q < A->Q && i < e; q++, i++) {
      int64_t j0 = q * CH, at;
      float m;
      if (A->s == 1)
        arg_chunk(x + j0, min64(CH, A->n - j0), 1, A->is_min, &m, &at);
      else
        arg_chunk(x + j0 * A->s, min64(CH, A->n - j0), A->s, A->is_min, &m, &at);
      at += j0;
      if (A->pidx) {
        A->pval[q * A->K + k] = m, A->pidx[q * A->K + k] = at;
      } else {
        if (A->val) A->val[k] = m;
        A->idx[k] = at + A->base;
      }
    }
  }
}

static void arg_combine(int64_t b, int64_t e, void *ud) {
  const arg_plan *A = ud;
  for (int64_t k = b; k < e; k++) {
    float m = A->pval[k];
    int64_t at = A->pidx[k];
    for (int64_t q = 1; q < A->Q; q++) {
      float v = A->pval[q * A->K + k];
      if (ARG_BETTER(A->is_min, v, m)) m = v, at = A->pidx[q * A->K + k];
    }
    if (A->val) A->val[k] = m;
    A->idx[k] = at + A->base;
  }
}

/* Extremes of x along dim (dim < 0: over all elements, row-major indices)
** into val (may be NULL) and idx, contiguous with K elements. */
static glia_status arg_run(glia_ctx *G, const char *name, glia_tensor *x, int dim, int is_min,
                           int64_t base, float *val, int64_t *idx) {
  arg_plan A;
  memset(&A, 0, sizeof A);
  A.is_min = is_min, A.base = base, A.val = val, A.idx = idx;
  glia_tensor *flat = NULL;
  if (dim < 0) { /* one row: x itself when contiguous, else a copy */
    TRY(glia_tensor_contiguous_as(G, x, GLIA_DTYPE_F32, &flat));
    A.x = (const float *)glia_ptr(flat);
    A.n = glia_tensor_numel(x), A.s = 1;
  } else {
    A.x = (const float *)glia_ptr(x);
    A.n = x->size[dim], A.s = x->stride[dim];
    for (int d = 0; d < x->ndim; d++)
      if (d != dim) {
        A.keep.size[A.keep.n] = x->size[d];
        A.keep.stride[0][A.keep.n++] = x->stride[d];
      }
  }
  A.K = glia_numel_of(A.keep.n, A.keep.size);
  glia_status st = GLIA_OK;
  if (A.K > 0) {
    dimset_coalesce(&A.keep, 1);
    A.Q = cdiv(A.n, CH);
    size_t nb = (size_t)(A.K * A.Q) * (sizeof *A.pidx + sizeof *A.pval);
    if (A.Q > 1 && !(A.pidx = glia_alloc(G, nb))) st = glia_fail_nomem(G, nb, name);
    if (st == GLIA_OK) {
      if (A.pidx) A.pval = (float *)(A.pidx + A.K * A.Q);
      glia_parallel_for(G, A.K * A.Q, max64(1, GRAIN / min64(A.n, CH)), arg_range, &A);
      if (A.pidx) {
        glia_parallel_for(G, A.K, max64(1, GRAIN / A.Q), arg_combine, &A);
        glia_free(G, A.pidx, nb);
      }
    }
  }
  glia_tensor_release(flat);
  return st;
}

/* Saved: the index tensor, whose values are 0-based + iarg[2]. Over all
** elements (mask 0), iarg[2] is the flat index instead. The gradient goes
** to the chosen element of each output only. */
typedef struct {
  int64_t dstride, base, n; /* dx's stride along dim in bytes, index base, dim size */
} scatter_arg;

static void scatter_loop(int64_t n, char **p, const int64_t *s, void *ud) {
  const scatter_arg *A = ud;
  for (int64_t i = 0; i < n; i++) {
    int64_t j = *(const int64_t *)(p[1] + i * s[1]) - A->base;
    if ((uint64_t)j < (uint64_t)A->n) /* never trust a tensor the user could write */
      *(float *)(p[2] + i * s[2] + j * A->dstride) = *(const float *)(p[0] + i * s[0]);
  }
}

static glia_status extreme_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  glia_tensor *x = n->input[0], *dx, *idx, *gk = NULL, *ik = NULL, *dv = NULL;
  unsigned mask = (unsigned)n->iarg[0];
  TRY(glia_tensor_zeros(G, GLIA_DTYPE_F32, x->ndim, x->size, &dx));
  if (mask == 0) {
    ((float *)glia_ptr(dx))[n->iarg[2]] = *(const float *)glia_ptr(g);
    din[0] = dx;
    return GLIA_OK;
  }
  int dim = __builtin_ctz(mask), keepdim = (int)n->iarg[1];
  int64_t size[GLIA_MAX_DIMS];
  reduced_shape(x, mask, 1, size);
  glia_status st = glia_node_saved(G, n, 0, &idx);
  if (st == GLIA_OK) st = keep_view(G, g, x, mask, keepdim, 0, &gk);
  if (st == GLIA_OK) st = keep_view(G, idx, x, mask, keepdim, 0, &ik);
  if (st == GLIA_OK) st = glia_tensor_view_raw(G, dx, x->ndim, size, dx->stride, 0, &dv);
  if (st == GLIA_OK) {
    scatter_arg A = {dx->stride[dim] * (int64_t)sizeof(float), n->iarg[2], x->size[dim]};
    glia_tensor *ops[3] = {gk, ik, dv};
    glia_iter_shape(G, x->ndim, size, 3, ops, scatter_loop, &A, GRAIN);
    din[0] = glia_tensor_retain(dx);
  }
  glia_tensor_release(gk);
  glia_tensor_release(ik);
  glia_tensor_release(dv);
  glia_tensor_release(dx);
  return st;
}

/* Max (is_min = 0) or min of x along dim, or over all elements when dim < 0
** (a 0-d result; indices are then row-major positions). Indices are stored
** as 0-based + base. values (recorded for autograd) and indices may each be
** NULL when not wanted. */
static glia_status extreme(glia_ctx *G, const char *name, glia_tensor *x, int dim, int keepdim,
                           int is_min, int64_t base, glia_tensor **values,
                           glia_tensor **indices) {
  TRY(glia_check_f32(G, name, "x", x));
  if (dim >= 0) {
    TRY(check_dim(G, name, x, dim));
    if (x->size[dim] == 0)
      return glia_fail(G, GLIA_ESHAPE, "%s: cannot reduce over dim %d of size 0 in %s", name,
                       dim + 1, glia_shape_str(x));
  } else if (glia_tensor_numel(x) == 0) {
    return glia_fail(G, GLIA_ESHAPE, "%s: cannot reduce an empty tensor %s", name,
                     glia_shape_str(x));
  }
  unsigned mask = dim >= 0 ? 1u << dim : 0;
  int64_t size[GLIA_MAX_DIMS];
  int nd = dim >= 0 ? reduced_shape(x, mask, keepdim, size) : 0;
  glia_tensor *v = NULL, *ix = NULL;
  glia_status st = glia_tensor_new(G, GLIA_DTYPE_I64, nd, size, &ix);
  if (st == GLIA_OK && values) st = glia_tensor_new(G, GLIA_DTYPE_F32, nd, size, &v);
  if (st == GLIA_OK)
    st = arg_run(G, name, x, dim, is_min, base, v ? (float *)glia_ptr(v) : NULL,
                 (int64_t *)glia_ptr(ix));
  if (st == GLIA_OK && v) {
    int64_t i2 = dim >= 0 ? base : *(const int64_t *)glia_ptr(ix) - base;
    st = record(G, name, extreme_bwd, x, &ix, dim >= 0, mask, keepdim, i2, 0, 0, v, values);
    v = NULL; /* record took it */
  }
  glia_tensor_release(v);
  if (st == GLIA_OK && indices)
    *indices = ix;
  else
    glia_tensor_release(ix);
  return st;
}

glia_status glia_max(glia_ctx *G, glia_tensor *x, int dim, int keepdim, glia_tensor **values,
                     glia_tensor **indices) {
  return extreme(G, values ? "glia.max" : "glia.argmax", x, dim, keepdim, 0, 0, values, indices);
}

glia_status glia_min(glia_ctx *G, glia_tensor *x, int dim, int keepdim, glia_tensor **values,
                     glia_tensor **indices) {
  return extreme(G, values ? "glia.min" : "glia.argmin", x, dim, keepdim, 1, 0, values, indices);
}

/* ============================================= softmax, log_softmax */

/* Rows along one dim, walked by up to three operands. Two layouts, as for
** reductions: rows one at a time (contiguous rows vectorize), or, when
** neighbouring rows sit next to each other in every operand (softmax over
** a dim that is not innermost), SB of them side by side. */
typedef struct {
  dimset rows;
  int64_t n, s[MAXOPS]; /* row length; each operand's stride along the dim */
  int nops, is_log;
  float *o;             /* the result: y, or dx */
  const float *a, *b;   /* x; or y and g (backward) */
  /* columns */
  dimset outer;         /* rows but the innermost */
  int64_t W, nb;        /* innermost rows size, blocks of SB rows */
} soft_plan;

#define SB 256

/* y = exp(x - max) / sum, or log_softmax: x - max - log(sum). */
INLINE void softmax_row(float *restrict o, int64_t so, const float *restrict x, int64_t sx,
                        int64_t n, int is_log) {
  float m;
  double sum;
  LANE_PICK(m, n, j, x[j * sx], -INFINITY, BETTER_MAX);
  if (is_log) {
    LANE_SUM(sum, n, j, glia_expf(x[j * sx] - m));
    float ls = (float)log(sum); /* x - m is exact near the max: subtract it first */
    LANE_FOR(n, j, o[j * so] = x[j * sx] - m - ls);
    return;
  }
  LANE_SUM(sum, n, j, o[j * so] = glia_expf(x[j * sx] - m));
  float inv = (float)(1.0 / sum);
  LANE_FOR(n, j, o[j * so] *= inv);
}

/* softmax: dx = y (g - sum(g y));  log_softmax: dx = g - exp(y) sum(g). */
INLINE void softmax_bwd_row(float *restrict dx, int64_t sd, const float *restrict y, int64_t sy,
                            const float *restrict g, int64_t sg, int64_t n, int is_log) {
  double sum;
  if (is_log) {
    LANE_SUM(sum, n, j, g[j * sg]);
    float s = (float)sum;
    LANE_FOR(n, j, dx[j * sd] = g[j * sg] - glia_expf(y[j * sy]) * s);
    return;
  }
  LANE_SUM(sum, n, j, g[j * sg] * y[j * sy]);
  float s = (float)sum;
  LANE_FOR(n, j, dx[j * sd] = y[j * sy] * (g[j * sg] - s));
}

/* The same for w <= SB side-by-side rows, element i of each at i * stride;
** each row's sums run in order of i. */
static void softmax_cols(float *restrict o, int64_t so, const float *restrict x, int64_t sx,
                         int64_t n, int64_t w, int is_log) {
  float m[SB], f[SB];
  double sum[SB];
  LANE_FOR(w, j, m[j] = -INFINITY, sum[j] = 0);
  for (int64_t i = 0; i < n; i++) {
    const float *xi = x + i * sx;
    LANE_FOR(w, j, m[j] = BETTER_MAX(xi[j], m[j]) ? xi[j] : m[j]);
  }
  for (int64_t i = 0; i < n; i++) {
    const float *xi = x + i * sx;
    float *oi = o + i * so;
    LANE_FOR(w, j, f[j] = glia_expf(xi[j] - m[j]));
    LANE_FOR(w, j, sum[j] += f[j]);
    if (!is_log) memcpy(oi, f, (size_t)w * sizeof *f);
  }
  for (int64_t j = 0; j < w; j++) f[j] = (float)(is_log ? log(sum[j]) : 1.0 / sum[j]);
  for (int64_t i = 0; i < n; i++) {
    const float *xi = x + i * sx;
    float *oi = o + i * so;
    if (is_log)
      LANE_FOR(w, j, oi[j] = xi[j] - m[j] - f[j]);
    else
      LANE_FOR(w, j, oi[j] *= f[j]);
  }
}

static void softmax_bwd_cols(float *restrict dx, int64_t sd, const float *restrict y, int64_t sy,
                             const float *restrict g, int64_t sg, int64_t n, int64_t w,
                             int is_log) {
  double sum[SB];
  float s[SB];
  LANE_FOR(w, j, sum[j] = 0);
  for (int64_t i = 0; i < n; i++) {
    const float *yi = y + i * sy, *gi = g + i * sg;
    if (is_log)
      LANE_FOR(w, j, sum[j] += gi[j]);
    else
      LANE_FOR(w, j, sum[j] += gi[j] * yi[j]);
  }
  LANE_FOR(w, j, s[j] = (float)sum[j]);
  for (int64_t i = 0; i < n; i++) {
    const float *yi = y + i * sy, *gi = g + i * sg;
    float *di = dx + i * sd;
    if (is_log)
      LANE_FOR(w, j, di[j] = gi[j] - glia_expf(yi[j]) * s[j]);
    else
      LANE_FOR(w, j, di[j] = yi[j] * (gi[j] - s[j]));
  }
}

/* Items are rows. */
static void soft_rows_range(int64_t b, int64_t e, void *ud) {
  const soft_plan *P = ud;
  const int64_t *s = P->s;
  cursor cur;
  cursor_seek(&cur, &P->rows, P->nops, b);
  for (int64_t r = b; r < e; r++, cursor_next(&cur, &P->rows, P->nops)) {
    float *o = P->o + cur.off[0];
    const float *a = P->a + cur.off[1];
    if (!P->b && s[0] == 1 && s[1] == 1)
      softmax_row(o, 1, a, 1, P->n, P->is_log);
    else if (!P->b)
      softmax_row(o, s[0], a, s[1], P->n, P->is_log);
    else if (s[0] == 1 && s[1] == 1 && s[2] == 1)
      softmax_bwd_row(o, 1, a, 1, P->b + cur.off[2], 1, P->n, P->is_log);
    else
      softmax_bwd_row(o, s[0], a, s[1], P->b + cur.off[2], s[2], P->n, P->is_log);
  }
}

/* Items are (outer row index, block of SB rows). */
static void soft_cols_range(int64_t b, int64_t e, void *ud) {
  const soft_plan *P = ud;
  const int64_t *s = P->s;
  for (int64_t i = b; i < e; i++) {
    int64_t j0 = i % P->nb * SB, w = min64(SB, P->W - j0);
    cursor cur;
    cursor_seek(&cur, &P->outer, P->nops, i / P->nb);
    float *o = P->o + cur.off[0] + j0;
    const float *a = P->a + cur.off[1] + j0;
    if (P->b)
      softmax_bwd_cols(o, s[0], a, s[1], P->b + cur.off[2] + j0, s[2], P->n, w, P->is_log);
    else
      softmax_cols(o, s[0], a, s[1], P->n, w, P->is_log);
  }
}

/* Runs softmax (nops 2: y, x) or its backward (nops 3: dx, y, g) along dim;
** t[0] is a new contiguous tensor. */
static void soft_run(glia_ctx *G, glia_tensor *const *t, int nops, int dim, int is_log) {
  int64_t numel = glia_tensor_numel(t[0]);
  if (numel == 0) return;
  soft_plan P;
  memset(&P, 0, sizeof P);
  P.nops = nops, P.is_log = is_log;
  P.n = t[0]->size[dim];
  for (int d = 0; d < t[0]->ndim; d++) {
    if (d == dim) continue;
    P.rows.size[P.rows.n] = t[0]->size[d];
    for (int k = 0; k < nops; k++) P.rows.stride[k][P.rows.n] = t[k]->stride[d];
    P.rows.n++;
  }
  bool columns = P.n > 1;
  for (int k = 0; k < nops; k++) P.s[k] = t[k]->stride[dim];
  dimset_coalesce(&P.rows, nops);
  int last = P.rows.n - 1;
  for (int k = 0; k < nops; k++) columns = columns && last >= 0 && P.rows.stride[k][last] == 1;
  P.o = (float *)glia_ptr(t[0]);
  P.a = (const float *)glia_ptr(t[1]);
  P.b = nops > 2 ? (const float *)glia_ptr(t[2]) : NULL;
  int64_t rows = numel / P.n;
  if (!columns) {
    glia_parallel_for(G, rows, max64(1, GRAIN / P.n), soft_rows_range, &P);
    return;
  }
  P.W = P.rows.size[last];
  P.outer = dimset_outer(&P.rows);
  P.nb = cdiv(P.W, SB);
  glia_parallel_for(G, rows / P.W * P.nb, max64(1, GRAIN / (P.n * min64(P.W, SB))),
                    soft_cols_range, &P);
}

/* Saved: the output y; iarg[2] = dim, farg[0] = log. */
static glia_status softmax_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  glia_tensor *y, *dx;
  TRY(glia_node_saved(G, n, 0, &y));
  TRY(glia_tensor_new(G, GLIA_DTYPE_F32, y->ndim, y->size, &dx));
  glia_tensor *t[3] = {dx, y, g};
  soft_run(G, t, 3, (int)n->iarg[2], n->farg[0] != 0);
  din[0] = dx;
  return GLIA_OK;
}

static glia_status softmax_any(glia_ctx *G, const char *name, int is_log, glia_tensor *x, int dim,
                               glia_tensor **out) {
  TRY(glia_check_f32(G, name, "x", x));
  TRY(check_dim(G, name, x, dim));
  glia_tensor *y;
  TRY(glia_tensor_new(G, GLIA_DTYPE_F32, x->ndim, x->size, &y));
  glia_tensor *t[2] = {y, x};
  soft_run(G, t, 2, dim, is_log);
  return record(G, name, softmax_bwd, x, &y, 1, 0, 0, dim, is_log, 0, y, out);
}

glia_status glia_softmax(glia_ctx *G, glia_tensor *x, int dim, glia_tensor **out) {
  return softmax_any(G, "glia.softmax", 0, x, dim, out);
}

glia_status glia_log_softmax(glia_ctx *G, glia_tensor *x, int dim, glia_tensor **out) {
  return softmax_any(G, "glia.log_softmax", 1, x, dim, out);
}

/* ========================================================== registry */

/* The mask of a 'D' argument (dims already 0-based and range-checked);
** absent or {} means every dim. */
static glia_status dims_mask(glia_ctx *G, const char *name, const glia_value *a,
                             unsigned *mask) {
  *mask = 0;
  if (a->kind != GLIA_VAL_INTS) return GLIA_OK;
  for (int i = 0; i < a->u.ints.n; i++) {
    unsigned bit = 1u << a->u.ints.v[i];
    if (*mask & bit)
      return glia_fail(G, GLIA_EARG, "%s: dim %d given twice", name, (int)a->u.ints.v[i] + 1);
    *mask |= bit;
  }
  return GLIA_OK;
}

/* sum/mean/logsumexp(x [, dims [, keepdim]]) */
#define DIMS_OP(NAME, CALL)                                                   \
  static glia_status op_##NAME(glia_ctx *G, int nargs, glia_value *args, int *nouts, \
                               glia_value *outs) {                            \
    (void)nargs;                                                              \
    unsigned mask;                                                            \
    glia_tensor *r;                                                           \
    TRY(dims_mask(G, "glia." #NAME, &args[1], &mask));                        \
    TRY(CALL(G, args[0].u.t, mask, arg_bool(&args[2], 0), &r));              \
    return out1(nouts, outs, r);                                              \
  }
DIMS_OP(sum, glia_sum)
DIMS_OP(mean, glia_mean)
DIMS_OP(logsumexp, glia_logsumexp)

/* var/std(x [, dims [, keepdim [, correction = 1]]]) */
#define VAR_OP(NAME, CALL)                                                    \
  static glia_status op_##NAME(glia_ctx *G, int nargs, glia_value *args, int *nouts, \
                               glia_value *outs) {                            \
    (void)nargs;                                                              \
    unsigned mask;                                                            \
    glia_tensor *r;                                                           \
    TRY(dims_mask(G, "glia." #NAME, &args[1], &mask));                        \
    TRY(CALL(G, args[0].u.t, mask, arg_bool(&args[2], 0), arg_num(&args[3], 1), &r)); \
    return out1(nouts, outs, r);                                              \
  }
VAR_OP(var, glia_var)
VAR_OP(std, glia_std)

/* norm(x [, p = 2 [, dims [, keepdim]]]) */
static glia_status op_norm(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                           glia_value *outs) {
  (void)nargs;
  unsigned mask;
  glia_tensor *r;
  TRY(dims_mask(G, "glia.norm", &args[2], &mask));
  TRY(glia_norm(G, args[0].u.t, arg_num(&args[1], 2), mask, arg_bool(&args[3], 0), &r));
  return out1(nouts, outs, r);
}

/* max/min(x [, dim [, keepdim]]): without a dim, the 0-d extreme; with one,
** values and 1-based indices. argmax/argmin: the 1-based indices only
** (row-major positions without a dim). */
static glia_status op_extreme(glia_ctx *G, const char *name, int is_min, int want_values,
                              glia_value *args, int *nouts, glia_value *outs) {
  glia_tensor *x = args[0].u.t, *v = NULL, *ix = NULL;
  int dim = arg_present(&args[1]) ? (int)args[1].u.i : -1;
  int keepdim = arg_bool(&args[2], 0), both = want_values && dim >= 0;
  TRY(extreme(G, name, x, dim, keepdim, is_min, 1, want_values ? &v : NULL,
              want_values && dim < 0 ? NULL : &ix));
  if (!both) return out1(nouts, outs, v ? v : ix);
  return out2(nouts, outs, v, ix);
}

#define EXTREME_OP(NAME, IS_MIN, VALUES)                                      \
  static glia_status op_##NAME(glia_ctx *G, int nargs, glia_value *args, int *nouts, \
                               glia_value *outs) {                            \
    (void)nargs;                                                              \
    return op_extreme(G, "glia." #NAME, IS_MIN, VALUES, args, nouts, outs);   \
  }
EXTREME_OP(max, 0, 1)
EXTREME_OP(min, 1, 1)
EXTREME_OP(argmax, 0, 0)
EXTREME_OP(argmin, 1, 0)

/* softmax/log_softmax(x, dim) */
#define SOFTMAX_OP(NAME, CALL)                                                \
  static glia_status op_##NAME(glia_ctx *G, int nargs, glia_value *args, int *nouts, \
                               glia_value *outs) {                            \
    (void)nargs;                                                              \
    glia_tensor *r;                                                           \
    TRY(CALL(G, args[0].u.t, (int)args[1].u.i, &r));                          \
    return out1(nouts, outs, r);                                              \
  }
SOFTMAX_OP(softmax, glia_softmax)
SOFTMAX_OP(log_softmax, glia_log_softmax)

const glia_op glia_ops_reduce[] = {
    {"sum", "T|Db", op_sum, 1},
    {"mean", "T|Db", op_mean, 1},
    {"var", "T|Dbn", op_var, 1},
    {"std", "T|Dbn", op_std, 1},
    {"logsumexp", "T|Db", op_logsumexp, 1},
    {"norm", "T|nDb", op_norm, 1},
    {"max", "T|db", op_max, 1},
    {"min", "T|db", op_min, 1},
    {"argmax", "T|db", op_argmax, 1},
    {"argmin", "T|db", op_argmin, 1},
    {"softmax", "Td", op_softmax, 1},
    {"log_softmax", "Td", op_log_softmax, 1},
    {NULL, NULL, NULL, 0},
};
