/*
** ops/reduce.c -- reductions over dims: sum, mean, var, std, logsumexp,
** norm; and cumsum, the running sum along one dim.
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
** The geometry and lane loops live in ops/rows.h, shared with
** ops/softmax.c and ops/sort.c (max, min and the index-returning ops).
**
** Determinism: each output's reduction is cut into chunks whose bounds depend
** only on the shapes (CH elements of a row, CHR rows of a column), each chunk
** is reduced in a fixed order, and chunk results are combined in chunk order.
** Threads only decide who computes which chunk, so 1 and N threads give
** bit-identical results.
**
** Every differentiable op records a node whose backward sits next to its
** forward. Backward gradients come back in x's shape (sum and mean: an
** expanded view of the output gradient).
*/
#include "glia_impl.h"
#include "ops.h"
#include "rows.h"

#include <math.h>
#include <stdlib.h>

#define CHR 1024        /* column layout: rows per chunk */
#define WB 8192         /* column layout: outputs per block */
#define GROUP4 1024     /* column layout: wider blocks add four rows at a time */



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

/* Reduces g (a broadcast of shape `size`) back to `size` by summing: the
** leading dims g has beyond size, and the dims size keeps as 1. */
static glia_status sum_to_size(glia_ctx *G, glia_tensor *g, int ndim, const int64_t *size,
                               glia_tensor **out) {
  if (glia_has_shape(g, ndim, size)) {
    *out = glia_tensor_retain(g);
    return GLIA_OK;
  }
  int lead = g->ndim - ndim;
  unsigned mask = 0;
  for (int d = 0; d < g->ndim; d++)
    if (d < lead || (size[d - lead] == 1 && g->size[d] != 1)) mask |= 1u << d;
  glia_tensor *r = NULL, *c = NULL;
  glia_status st = mask ? glia_sum(G, g, mask, 1, &r) : glia_tensor_detach(G, g, &r);
  if (st == GLIA_OK) st = glia_tensor_contiguous_as(G, r, GLIA_DTYPE_F32, &c);
  glia_tensor_release(r);
  if (st != GLIA_OK) return st;
  /* same element count: reshape the contiguous result in place */
  c->ndim = ndim;
  if (ndim > 0) memcpy(c->size, size, (size_t)ndim * sizeof *size);
  glia_contiguous_strides(ndim, size, c->stride);
  *out = c;
  return GLIA_OK;
}

glia_status glia_grads_to_inputs(glia_ctx *G, const glia_node *n, glia_tensor **din) {
  for (int i = 0; i < n->ninputs; i++) {
    glia_tensor *in = n->input[i], *r;
    if (!n->needs[i] || !in || !din[i]) continue;
    TRY(sum_to_size(G, din[i], in->ndim, in->size, &r));
    glia_tensor_release(din[i]);
    din[i] = r;
  }
  return GLIA_OK;
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

/* ============================================================ cumsum */

/* Running sums along the middle axis of contiguous {outer, len, inner}:
** forward (out[j] = x[0] + ... + x[j]) or reversed (out[j] = x[j] + ... +
** x[len-1], cumsum's backward). Threads split the columns (o, c). */
typedef struct {
  const float *x;
  float *out;
  int64_t len, inner;
  int reverse;
} cumsum_job;

static void cumsum_columns(int64_t begin, int64_t end, void *ud) {
  const cumsum_job *J = ud;
  int64_t len = J->len, inner = J->inner;
  for (int64_t o = begin / inner; o * inner < end; o++) {
    int64_t c0, c1;
    column_span(o, inner, begin, end, &c0, &c1);
    const float *x = J->x + o * len * inner;
    float *y = J->out + o * len * inner;
    for (int64_t t = 0; t < len; t++) {
      int64_t j = J->reverse ? len - 1 - t : t, prev = J->reverse ? j + 1 : j - 1;
      if (t == 0)
        for (int64_t c = c0; c < c1; c++) y[j * inner + c] = x[j * inner + c];
      else
        for (int64_t c = c0; c < c1; c++) y[j * inner + c] = y[prev * inner + c] + x[j * inner + c];
    }
  }
}

/* A new tensor with the running sums of x along dim; no node. */
static glia_status cumsum_fwd(glia_ctx *G, glia_tensor *x, int dim, int reverse,
                              glia_tensor **out) {
  glia_tensor *xc, *r;
  TRY(glia_tensor_contiguous_as(G, x, GLIA_DTYPE_F32, &xc));
  glia_status st = glia_tensor_new(G, GLIA_DTYPE_F32, x->ndim, x->size, &r);
  if (st == GLIA_OK) {
    cumsum_job J = {(const float *)glia_ptr(xc), (float *)glia_ptr(r), x->size[dim], 0, reverse};
    int64_t outer;
    split_at(x->ndim, x->size, dim, &outer, &J.inner);
    /* an empty x may still have 1e12 columns of length 0: nothing to do */
    if (J.len > 0) glia_parallel_for(G, outer * J.inner, glia_grain_items(J.len), cumsum_columns, &J);
    *out = r;
  }
  glia_tensor_release(xc);
  return st;
}

static glia_status cumsum_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  return cumsum_fwd(G, g, (int)n->iarg[2], 1, &din[0]);
}

glia_status glia_cumsum(glia_ctx *G, glia_tensor *x, int dim, glia_tensor **out) {
  static const char name[] = "glia.cumsum";
  TRY(glia_check_f32(G, name, "x", x));
  TRY(glia_check_dim(G, name, x, dim, 0));
  glia_tensor *r;
  TRY(cumsum_fwd(G, x, dim, 0, &r));
  return record(G, name, cumsum_bwd, x, NULL, 0, 0, 0, dim, 0, 0, r, out);
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
      return glia_fail(G, GLIA_EARG, "%s: dim %lld given twice", name,
                       glia_shown(G, a->u.ints.v[i]));
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

/* cumsum(x, dim) */
static glia_status op_cumsum(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                             glia_value *outs) {
  (void)nargs;
  glia_tensor *r;
  TRY(glia_cumsum(G, args[0].u.t, (int)args[1].u.i, &r));
  return out1(nouts, outs, r);
}

const glia_op glia_ops_reduce[] = {
    {"sum", "T|Db", op_sum, 1},
    {"mean", "T|Db", op_mean, 1},
    {"var", "T|Dbn", op_var, 1},
    {"std", "T|Dbn", op_std, 1},
    {"logsumexp", "T|Db", op_logsumexp, 1},
    {"norm", "T|nDb", op_norm, 1},
    {"cumsum", "Td", op_cumsum, 1},
    {NULL, NULL, NULL, 0},
};
