/*
** ops/loss.c -- loss functions: cross_entropy (log-softmax and NLL fused in
** one pass per row, with ignore_index and label smoothing) and mse, each
** with its backward right after its forward.
**
** Shape letters: N rows (every leading dim of the logits, flattened), C
** classes (the last dim).
**
** Conventions every loss here keeps:
** - Class indices in a target tensor count from `base`: 1 from Lua, as
**   every index tensor built there, 0 for C callers (ops/index.c does the
**   same). ignore_index is compared with the stored value (default -100,
**   as in PyTorch); other values outside base..C-1+base are an error.
** - 'mean' divides by the rows that are not ignored. When none is left the
**   loss is 0 and so is its gradient (PyTorch gives NaN; a fully padded
**   batch must not poison the weights).
** - Reductions add per-row or per-block partial sums in one fixed serial
**   order, so a result never depends on the thread count.
*/
#include "glia_impl.h"
#include "ops.h"

#include <math.h>

#define SUM_BLOCK 8192     /* elements per partial sum (fixed: determinism) */

static glia_status parse_reduction(glia_ctx *G, const char *name, const glia_value *v,
                                   glia_loss_reduction *out) {
  const char *s = v->kind == GLIA_VAL_STRING ? v->u.s : "mean";
  if (v->kind != GLIA_VAL_NONE && v->kind != GLIA_VAL_STRING)
    return glia_fail(G, GLIA_EARG, "%s: reduction must be a string", name);
  if (strcmp(s, "mean") == 0) *out = GLIA_LOSS_MEAN;
  else if (strcmp(s, "sum") == 0) *out = GLIA_LOSS_SUM;
  else if (strcmp(s, "none") == 0) *out = GLIA_LOSS_NONE;
  else
    return glia_fail(G, GLIA_EARG, "%s: reduction must be 'mean', 'sum' or 'none', got '%s'",
                     name, s);
  return GLIA_OK;
}

/* A new 0-D f32 tensor holding v. */
static glia_status scalar_new(glia_ctx *G, double v, glia_tensor **out) {
  int64_t none[1] = {0};
  TRY(glia_tensor_new(G, GLIA_DTYPE_F32, 0, none, out));
  *(float *)glia_ptr(*out) = (float)v;
  return GLIA_OK;
}

/* ==================================================== cross_entropy */

typedef struct {
  const float *x;   /* {N, C} logits */
  const int64_t *y; /* {N} targets, counted from base */
  float *lse;       /* {N} out: log-sum-exp of each row */
  float *loss;      /* {N} out: each row's loss, 0 when ignored */
  int64_t C, base, ignore;
  double eps;       /* label smoothing */
} ce_fwd_arg;

/* The largest element of a row, in GLIA_LANES lanes like GLIA_LANE_SUM.
** NaNs are skipped here and propagate through the sum of exponentials. */
static float row_max(const float *x, int64_t C) {
  float lane[GLIA_LANES], m = -INFINITY;
  for (int j = 0; j < GLIA_LANES; j++) lane[j] = -INFINITY;
  int64_t c = 0;
  for (; c + GLIA_LANES <= C; c += GLIA_LANES)
    for (int j = 0; j < GLIA_LANES; j++) lane[j] = x[c + j] > lane[j] ? x[c + j] : lane[j];
  for (; c < C; c++) m = x[c] > m ? x[c] : m;
  for (int j = 0; j < GLIA_LANES; j++) m = lane[j] > m ? lane[j] : m;
  return m;
}

/* loss = (1-eps) * (lse - x[t]) + eps * mean_c(lse - x[c]), stable: the
** exponentials are taken after subtracting the row max. */
static void ce_fwd_rows(int64_t begin, int64_t end, void *ud) {
  const ce_fwd_arg *k = ud;
  const int64_t C = k->C;
  for (int64_t r = begin; r < end; r++) {
    const float *x = k->x + r * C;
    int64_t t = k->y[r] - k->base;
    float m = row_max(x, C), se, shifted = 0;
    GLIA_LANE_SUM(se, C, c, glia_expf(x[c] - m));
    float lse = m + logf(se);
    k->lse[r] = lse;
    if (k->y[r] == k->ignore) {
      k->loss[r] = 0.0f;
      continue;
    }
    /* mean_c(lse - x[c]) = lse - m - mean_c(x[c] - m): shifted for accuracy */
    if (k->eps > 0) GLIA_LANE_SUM(shifted, C, c, x[c] - m);
    float smooth = lse - m - shifted / (float)C;
    k->loss[r] = (float)((1 - k->eps) * (lse - x[t]) + k->eps * smooth);
  }
}

typedef struct {
  const float *x, *lse; /* {N, C}, {N} saved by forward */
  const int64_t *y;     /* {N} */
  const float *g;       /* {N} upstream gradient per row, or NULL */
  float gscale;         /* multiplies g (or replaces it when g is NULL) */
  float *dx;            /* {N, C} out */
  int64_t C, base, ignore;
  float eps;
} ce_bwd_arg;

/* dx[c] = (exp(x[c] - lse) - off) * s. Restrict parameters and chunks of
** GLIA_LANES let gcc -O2 vectorize it (no alias check, no peeling). */
static void softmax_grad_row(float *restrict dx, const float *restrict x, int64_t C,
                             float lse, float off, float s) {
  int64_t c = 0;
  for (; c + GLIA_LANES <= C; c += GLIA_LANES) {
    float v[GLIA_LANES];
    for (int j = 0; j < GLIA_LANES; j++) v[j] = (glia_expf(x[c + j] - lse) - off) * s;
    memcpy(dx + c, v, sizeof v);
  }
  for (; c < C; c++) dx[c] = (glia_expf(x[c] - lse) - off) * s;
}

/* dx = (softmax - smoothed one-hot) * g: softmax recomputed from the saved
** log-sum-exp, so forward keeps {N} floats instead of {N, C}. */
static void ce_bwd_rows(int64_t begin, int64_t end, void *ud) {
  const ce_bwd_arg *k = ud;
  const int64_t C = k->C;
  for (int64_t r = begin; r < end; r++) {
    float *dx = k->dx + r * C;
    if (k->y[r] == k->ignore) {
      memset(dx, 0, (size_t)C * sizeof *dx);
      continue;
    }
    float s = k->g ? k->g[r] * k->gscale : k->gscale;
    softmax_grad_row(dx, k->x + r * C, C, k->lse[r], k->eps / (float)C, s);
    dx[k->y[r] - k->base] -= (1 - k->eps) * s;
  }
}

static glia_status ce_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  if (!n->needs[0]) return GLIA_OK;
  glia_tensor *xc, *yc, *lse, *dx, *gc = NULL;
  TRY(glia_node_saved(G, n, 0, &xc));
  TRY(glia_node_saved(G, n, 1, &yc));
  TRY(glia_node_saved(G, n, 2, &lse));
  glia_loss_reduction red = (glia_loss_reduction)n->iarg[1];
  int64_t count = n->iarg[2], N = lse->size[0];
  TRY(glia_tensor_new_like(G, xc, GLIA_DTYPE_F32, &dx));
  ce_bwd_arg k = {(const float *)glia_ptr(xc), (const float *)glia_ptr(lse),
                  (const int64_t *)glia_ptr(yc), NULL, 1.0f, (float *)glia_ptr(dx),
                  xc->size[xc->ndim - 1], n->iarg[3], n->iarg[0], (float)n->farg[0]};
  if (red == GLIA_LOSS_NONE) {
    glia_status st = glia_tensor_contiguous_as(G, g, GLIA_DTYPE_F32, &gc);
    if (st != GLIA_OK) {
      glia_tensor_release(dx);
      return st;
    }
    k.g = (const float *)glia_ptr(gc);
  } else {
    float gv = *(const float *)glia_ptr(g);
    k.gscale = red == GLIA_LOSS_SUM ? gv : count > 0 ? gv / (float)count : 0.0f;
  }
  glia_parallel_for(G, N, glia_grain_items(k.C), ce_bwd_rows, &k);
  glia_tensor_release(gc);
  din[0] = dx;
  return GLIA_OK;
}

static glia_status ce_check(glia_ctx *G, glia_tensor *logits, glia_tensor *target,
                            double eps) {
  static const char name[] = "glia.cross_entropy";
  TRY(glia_check_f32(G, name, "logits", logits));
  if (logits->ndim < 1)
    return glia_fail(G, GLIA_ESHAPE, "%s: logits must have a class dim, got %s", name,
                     glia_shape_str(logits));
  if (target->dtype != GLIA_DTYPE_I64 && target->dtype != GLIA_DTYPE_I32)
    return glia_fail(G, GLIA_EDTYPE, "%s: target must hold i64 class indices, got %s %s",
                     name, glia_dtype_name(target->dtype), glia_shape_str(target));
  if (!glia_has_shape(target, logits->ndim - 1, logits->size))
    return glia_fail(G, GLIA_ESHAPE, "%s: target %s does not match logits %s (expected %s)",
                     name, glia_shape_str(target), glia_shape_str(logits),
                     glia_sizes_str(logits->ndim - 1, logits->size));
  if (!(eps >= 0 && eps <= 1))
    return glia_fail(G, GLIA_EARG, "%s: label_smoothing must be in [0, 1], got %g", name, eps);
  return GLIA_OK;
}

/* Checks every target against base..C-1+base (serially, so the first bad
** one is the one reported) and counts the rows that are not ignored. */
static glia_status ce_count(glia_ctx *G, const int64_t *y, int64_t N, int64_t C, int64_t base,
                            int64_t ignore, int64_t *count) {
  int64_t n = 0;
  for (int64_t r = 0; r < N; r++) {
    if (y[r] == ignore) continue;
    if (y[r] < base || y[r] >= C + base)
      return glia_fail(G, GLIA_ERANGE,
                       "glia.cross_entropy: target %lld (at position %lld) out of range for "
                       "%lld classes (class indices are %lld..%lld)",
                       (long long)y[r], (long long)r + base, (long long)C, (long long)base,
                       (long long)(C - 1 + base));
    n++;
  }
  *count = n;
  return GLIA_OK;
}

glia_status glia_cross_entropy(glia_ctx *G, glia_tensor *logits, glia_tensor *target,
                               int base, int64_t ignore_index, double label_smoothing,
                               glia_loss_reduction red, glia_tensor **out) {
  TRY(ce_check(G, logits, target, label_smoothing));
  glia_tensor *xc = NULL, *yc = NULL, *lse = NULL, *loss = NULL, *r = NULL;
  int64_t N = glia_tensor_numel(target), C = logits->size[logits->ndim - 1], count = 0;
  glia_status st = glia_tensor_contiguous_as(G, logits, GLIA_DTYPE_F32, &xc);
  if (st == GLIA_OK) st = glia_tensor_contiguous_as(G, target, GLIA_DTYPE_I64, &yc);
  if (st == GLIA_OK) st = ce_count(G, (const int64_t *)glia_ptr(yc), N, C, base, ignore_index,
                                       &count);
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_F32, 1, &N, &lse);
  /* 'none' writes the per-row losses straight into the result */
  if (st == GLIA_OK)
    st = red == GLIA_LOSS_NONE ? glia_tensor_new_like(G, target, GLIA_DTYPE_F32, &loss)
                               : glia_tensor_new(G, GLIA_DTYPE_F32, 1, &N, &loss);
  if (st != GLIA_OK) goto done;

  ce_fwd_arg k = {(const float *)glia_ptr(xc), (const int64_t *)glia_ptr(yc),
                  (float *)glia_ptr(lse), (float *)glia_ptr(loss), C, base, ignore_index,
                  label_smoothing};
  glia_parallel_for(G, N, glia_grain_items(C), ce_fwd_rows, &k);
  if (red == GLIA_LOSS_NONE) {
    r = glia_tensor_retain(loss);
  } else {
    double sum = 0;
    for (int64_t i = 0; i < N; i++) sum += k.loss[i];
    if (red == GLIA_LOSS_MEAN) sum = count > 0 ? sum / (double)count : 0.0;
    if ((st = scalar_new(G, sum, &r)) != GLIA_OK) goto done;
  }

  glia_tensor *in[2] = {logits, target};
  glia_node *node = glia_node_begin(G, "glia.cross_entropy", ce_bwd, 2, in, &st);
  if (node) {
    node->needs[1] = false; /* class indices have no gradient */
    node->iarg[0] = ignore_index;
    node->iarg[1] = red;
    node->iarg[2] = count;
    node->iarg[3] = base;
    node->farg[0] = label_smoothing;
    st = glia_node_save(G, node, xc);
    if (st == GLIA_OK) st = glia_node_save(G, node, yc);
    if (st == GLIA_OK) st = glia_node_save(G, node, lse);
    st = glia_node_end(node, st, r);
  }
  if (st == GLIA_OK) {
    *out = r;
    r = NULL;
  }
done:
  glia_tensor_release(r);
  glia_tensor_release(loss);
  glia_tensor_release(lse);
  glia_tensor_release(yc);
  glia_tensor_release(xc);
  return st;
}

/* ============================================================== mse */

typedef struct {
  float k;
} scale_arg;

static void diff_loop(int64_t n, char **p, const int64_t *s, void *ud) {
  (void)ud;
  for (int64_t i = 0; i < n; i++)
    *(float *)(p[0] + i * s[0]) =
        *(const float *)(p[1] + i * s[1]) - *(const float *)(p[2] + i * s[2]);
}

static void square_loop(int64_t n, char **p, const int64_t *s, void *ud) {
  (void)ud;
  for (int64_t i = 0; i < n; i++) {
    float d = *(const float *)(p[1] + i * s[1]);
    *(float *)(p[0] + i * s[0]) = d * d;
  }
}

/* out = k * diff * g */
static void scaled_mul_loop(int64_t n, char **p, const int64_t *s, void *ud) {
  const float k = ((const scale_arg *)ud)->k;
  for (int64_t i = 0; i < n; i++)
    *(float *)(p[0] + i * s[0]) =
        k * *(const float *)(p[1] + i * s[1]) * *(const float *)(p[2] + i * s[2]);
}

typedef struct {
  const float *v; /* contiguous values */
  int64_t n;
  double *part;   /* one partial sum of squares per SUM_BLOCK elements */
} sumsq_arg;

static void sumsq_blocks(int64_t begin, int64_t end, void *ud) {
  const sumsq_arg *k = ud;
  for (int64_t b = begin; b < end; b++) {
    int64_t lo = b * SUM_BLOCK, hi = lo + SUM_BLOCK < k->n ? lo + SUM_BLOCK : k->n;
    double s = 0;
    for (int64_t i = lo; i < hi; i++) s += (double)k->v[i] * k->v[i];
    k->part[b] = s;
  }
}

/* Sum of squares of a contiguous f32 tensor: fixed blocks summed in
** parallel, then the blocks in order. */
static glia_status sum_squares(glia_ctx *G, glia_tensor *v, double *out) {
  int64_t n = glia_tensor_numel(v), nb = (n + SUM_BLOCK - 1) / SUM_BLOCK;
  glia_tensor *part;
  TRY(glia_tensor_new(G, GLIA_DTYPE_F64, 1, &nb, &part));
  sumsq_arg k = {(const float *)glia_ptr(v), n, (double *)glia_ptr(part)};
  glia_parallel_for(G, nb, GRAIN / SUM_BLOCK, sumsq_blocks, &k);
  double s = 0;
  for (int64_t b = 0; b < nb; b++) s += k.part[b];
  glia_tensor_release(part);
  *out = s;
  return GLIA_OK;
}

/* d/da = k * diff * g, d/db = -k * diff * g, with k = 2 (or 2/numel for
** mean); g is 0-D for mean and sum and broadcasts. */
static glia_status mse_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  glia_tensor *diff;
  TRY(glia_node_saved(G, n, 0, &diff));
  int64_t numel = glia_tensor_numel(diff);
  float k = n->iarg[0] == GLIA_LOSS_MEAN ? (numel > 0 ? 2.0f / (float)numel : 0.0f) : 2.0f;
  for (int i = 0; i < 2; i++) {
    if (!n->needs[i]) continue;
    TRY(glia_tensor_new_like(G, diff, GLIA_DTYPE_F32, &din[i]));
    scale_arg sa = {i == 0 ? k : -k};
    glia_tensor *ops[3] = {din[i], diff, g};
    glia_iter(G, 3, ops, scaled_mul_loop, &sa, GRAIN);
  }
  return glia_grads_to_inputs(G, n, din); /* a and b broadcast together */
}

glia_status glia_mse(glia_ctx *G, glia_tensor *a, glia_tensor *b, glia_loss_reduction red,
                     glia_tensor **out) {
  static const char name[] = "glia.mse";
  glia_tensor *ab[2] = {a, b};
  for (int i = 0; i < 2; i++)
    if (ab[i]->dtype != GLIA_DTYPE_F32)
      return glia_fail(G, GLIA_EDTYPE, "%s: argument %d must be f32, got %s %s", name, i + 1,
                       glia_dtype_name(ab[i]->dtype), glia_shape_str(ab[i]));
  int nd;
  int64_t shape[GLIA_MAX_DIMS];
  TRY(glia_broadcast_shape(G, name, a->ndim, a->size, b->ndim, b->size, &nd, shape));
  glia_tensor *diff, *r = NULL;
  TRY(glia_tensor_new(G, GLIA_DTYPE_F32, nd, shape, &diff));
  glia_tensor *ops[3] = {diff, a, b};
  glia_iter(G, 3, ops, diff_loop, NULL, GRAIN);
  glia_status st;
  if (red == GLIA_LOSS_NONE) {
    st = glia_tensor_new(G, GLIA_DTYPE_F32, nd, shape, &r);
    if (st == GLIA_OK) {
      glia_tensor *sq[2] = {r, diff};
      glia_iter(G, 2, sq, square_loop, NULL, GRAIN);
    }
  } else {
    double s = 0;
    int64_t numel = glia_tensor_numel(diff);
    st = sum_squares(G, diff, &s);
    if (st == GLIA_OK && red == GLIA_LOSS_MEAN) s = numel > 0 ? s / (double)numel : 0.0;
    if (st == GLIA_OK) st = scalar_new(G, s, &r);
  }
  if (st == GLIA_OK) {
    glia_node *node = glia_node_begin(G, name, mse_bwd, 2, ab, &st);
    if (node) {
      node->iarg[0] = red;
      st = glia_node_save(G, node, diff);
      st = glia_node_end(node, st, r);
    }
  }
  glia_tensor_release(diff);
  return glia_hand_out(st, r, out);
}

/* ========================================================= registry */

/* cross_entropy(logits, target [, ignore_index [, label_smoothing [, reduction]]]) */
static glia_status op_cross_entropy(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                    glia_value *outs) {
  (void)nargs;
  glia_loss_reduction red;
  TRY(parse_reduction(G, "glia.cross_entropy", &args[4], &red));
  glia_tensor *r;
  TRY(glia_cross_entropy(G, args[0].u.t, args[1].u.t, glia_index_base(G),
                         arg_int(&args[2], -100), arg_num(&args[3], 0.0), red, &r));
  return out1(nouts, outs, r);
}

/* mse(a, b [, reduction]) */
static glia_status op_mse(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                          glia_value *outs) {
  (void)nargs;
  glia_loss_reduction red;
  TRY(parse_reduction(G, "glia.mse", &args[2], &red));
  glia_tensor *r;
  TRY(glia_mse(G, args[0].u.t, args[1].u.t, red, &r));
  return out1(nouts, outs, r);
}

const glia_op glia_ops_loss[] = {
    {"cross_entropy", "TT|ins", op_cross_entropy, 1},
    {"mse", "TT|s", op_mse, 1},
    {NULL, NULL, NULL, 0},
};
