/*
** ops/softmax.c -- softmax and log_softmax along one dim, fused and stable
** (the row's max is subtracted first), each with its backward.
**
** Rows along the dim are walked two ways, as ops/reduce.c walks its
** reductions: one row at a time (contiguous rows vectorize), or, when the
** dim is not innermost, SB neighbouring rows side by side so that the inner
** loop runs over contiguous memory. Each row sums in a fixed order: results
** do not depend on the thread count. The output is contiguous.
*/
#include "glia_impl.h"
#include "ops.h"
#include "rows.h"

#include <math.h>

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
  TRY(glia_check_dim(G, name, x, dim, 0));
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

const glia_op glia_ops_softmax[] = {
    {"softmax", "Td", op_softmax, 1},
    {"log_softmax", "Td", op_log_softmax, 1},
    {NULL, NULL, NULL, 0},
};
