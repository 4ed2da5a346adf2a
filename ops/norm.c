/*
** ops/norm.c -- normalization over the last dim (layer_norm, rms_norm),
** each with its backward right after its forward.
**
** Shape letters: R rows (every leading dim, flattened), C features (the
** last dim).
**
** layer_norm and rms_norm share one row kernel: rms_norm is layer_norm
** without centering and without bias. Forward saves the per-row mean (layer
** norm only) and rstd, so backward never recomputes statistics. Backward
** sums dweight/dbias per fixed block of NORM_BLOCK rows, then adds the
** blocks in order: results do not depend on the thread count.
*/
#include "glia_impl.h"
#include "ops.h"

#include <math.h>

#define NORM_BLOCK 64   /* rows per dweight/dbias partial (fixed: determinism) */

/* ============================================== layer_norm, rms_norm */

typedef struct {
  const float *x;     /* {R, C} */
  const float *w, *b; /* {C}, or NULL for 1 and 0 */
  float *y;           /* {R, C} out */
  bool center;        /* layer_norm; rms_norm does not center */
  float *mean, *rstd; /* {R} out (mean: layer_norm only), or NULL: not kept */
  int64_t C;
  double eps;
} norm_fwd_arg;

/* Kernels work in chunks of GLIA_LANES elements staged in a local array:
** with a constant chunk length and no possible aliasing, gcc -O2 vectorizes
** them. n <= GLIA_LANES; the last chunk of a row may be shorter. */

/* y = (x - m) * rs [* w] [+ b] */
static inline void affine_chunk(float *y, const float *x, const float *w, const float *b,
                                int n, float m, float rs) {
  float v[GLIA_LANES];
  for (int j = 0; j < n; j++) v[j] = (x[j] - m) * rs;
  if (w)
    for (int j = 0; j < n; j++) v[j] *= w[j];
  if (b)
    for (int j = 0; j < n; j++) v[j] += b[j];
  memcpy(y, v, (size_t)n * sizeof *v);
}

/* dx = rs * (dy [* w] - a - (x - m) * rs * bb) */
static inline void dx_chunk(float *dx, const float *x, const float *dy, const float *w, int n,
                            float m, float rs, float a, float bb) {
  float v[GLIA_LANES];
  for (int j = 0; j < n; j++) v[j] = dy[j];
  if (w)
    for (int j = 0; j < n; j++) v[j] *= w[j];
  for (int j = 0; j < n; j++) v[j] = rs * (v[j] - a - (x[j] - m) * rs * bb);
  memcpy(dx, v, (size_t)n * sizeof *v);
}

/* acc += dy * (x - m) * rs when x is given, else acc += dy */
static inline void acc_chunk(float *acc, const float *x, const float *dy, int n, float m,
                             float rs) {
  float v[GLIA_LANES];
  memcpy(v, acc, (size_t)n * sizeof *v);
  if (x)
    for (int j = 0; j < n; j++) v[j] += dy[j] * (x[j] - m) * rs;
  else
    for (int j = 0; j < n; j++) v[j] += dy[j];
  memcpy(acc, v, (size_t)n * sizeof *v);
}

/* Calls CHUNK(offset, length) over a row of C elements: full chunks with a
** constant length (so the inlined body vectorizes), then the tail. */
#define FOR_CHUNKS(C, CHUNK)                                                  \
  do {                                                                        \
    int64_t c_ = 0;                                                           \
    for (; c_ + GLIA_LANES <= (C); c_ += GLIA_LANES) CHUNK(c_, GLIA_LANES);   \
    if (c_ < (C)) CHUNK(c_, (int)((C) - c_));                                 \
  } while (0)

static void norm_fwd_rows(int64_t begin, int64_t end, void *ud) {
  const norm_fwd_arg *k = ud;
  const int64_t C = k->C;
  const float *w = k->w, *b = k->b;
  for (int64_t r = begin; r < end; r++) {
    const float *x = k->x + r * C;
    float *y = k->y + r * C;
    float m = 0, ss;
    if (k->center) {
      GLIA_LANE_SUM(m, C, c, x[c]);
      m /= (float)C;
    }
    GLIA_LANE_SUM(ss, C, c, (x[c] - m) * (x[c] - m));
    float rs = (float)(1.0 / sqrt((double)ss / (double)C + k->eps));
    if (k->mean) k->mean[r] = m;
    if (k->rstd) k->rstd[r] = rs;
#define AFFINE(c, n) affine_chunk(y + (c), x + (c), w ? w + (c) : NULL, b ? b + (c) : NULL, n, m, rs)
    FOR_CHUNKS(C, AFFINE);
#undef AFFINE
  }
}

typedef struct {
  const float *x, *w, *dy; /* {R, C}, {C} or NULL, {R, C} */
  const float *mean, *rstd; /* {R} (mean NULL for rms_norm) */
  float *dx;                /* {R, C} out, or NULL */
  float *dw, *db;           /* {nblocks, C} partials out, or NULL */
  int64_t R, C;
} norm_bwd_arg;

/* With h = (x - mean) * rstd and dh = dy * w:
**   dx = rstd * (dh - mean(dh) - h * mean(dh * h))   (no mean(dh) for rms)
**   dw += dy * h,  db += dy */
static void norm_bwd_blocks(int64_t begin, int64_t end, void *ud) {
  const norm_bwd_arg *k = ud;
  const int64_t C = k->C;
  const float *w = k->w;
  for (int64_t blk = begin; blk < end; blk++) {
    float *pw = k->dw ? k->dw + blk * C : NULL, *pb = k->db ? k->db + blk * C : NULL;
    if (pw) memset(pw, 0, (size_t)C * sizeof *pw);
    if (pb) memset(pb, 0, (size_t)C * sizeof *pb);
    int64_t hi = (blk + 1) * NORM_BLOCK < k->R ? (blk + 1) * NORM_BLOCK : k->R;
    for (int64_t r = blk * NORM_BLOCK; r < hi; r++) {
      const float *x = k->x + r * C, *dy = k->dy + r * C;
      float m = k->mean ? k->mean[r] : 0.0f, rs = k->rstd[r];
      if (k->dx) {
        float *dx = k->dx + r * C, sdh, sdhx; /* sums of dh and dh * (x - m) */
        if (w) {
          GLIA_LANE_SUM(sdh, C, c, dy[c] * w[c]);
          GLIA_LANE_SUM(sdhx, C, c, dy[c] * w[c] * (x[c] - m));
        } else {
          GLIA_LANE_SUM(sdh, C, c, dy[c]);
          GLIA_LANE_SUM(sdhx, C, c, dy[c] * (x[c] - m));
        }
        float a = k->mean ? sdh / (float)C : 0.0f, bb = sdhx * rs / (float)C;
#define DX(c, n) dx_chunk(dx + (c), x + (c), dy + (c), w ? w + (c) : NULL, n, m, rs, a, bb)
        FOR_CHUNKS(C, DX);
#undef DX
      }
#define DW(c, n) acc_chunk(pw + (c), x + (c), dy + (c), n, m, rs)
#define DB(c, n) acc_chunk(pb + (c), NULL, dy + (c), n, m, rs)
      if (pw) FOR_CHUNKS(C, DW);
      if (pb) FOR_CHUNKS(C, DB);
#undef DW
#undef DB
    }
  }
}

/* Sums the nb rows of part {nb, C} into a new {C} tensor, in row order. */
static glia_status sum_partials(glia_ctx *G, const float *part, int64_t nb, int64_t C,
                                glia_tensor **out) {
  TRY(glia_tensor_zeros(G, GLIA_DTYPE_F32, 1, &C, out));
  float *o = (float *)glia_ptr(*out);
  for (int64_t b = 0; b < nb; b++)
    for (int64_t c = 0; c < C; c++) o[c] += part[b * C + c];
  return GLIA_OK;
}

/* Inputs: x, weight, bias. Saved: x (contiguous), weight (contiguous or
** NULL), mean (NULL for rms_norm), rstd. */
static glia_status norm_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  glia_tensor *xc, *wc, *mean, *rstd, *dy, *part = NULL;
  TRY(glia_node_saved(G, n, 0, &xc));
  TRY(glia_node_saved(G, n, 1, &wc));
  TRY(glia_node_saved(G, n, 2, &mean));
  TRY(glia_node_saved(G, n, 3, &rstd));
  int64_t C = xc->size[xc->ndim - 1], R = rstd->size[0];
  int64_t nb = (R + NORM_BLOCK - 1) / NORM_BLOCK, psize[2] = {nb, C};
  bool need_w = n->needs[1], need_b = n->ninputs > 2 && n->needs[2];
  TRY(glia_tensor_contiguous_as(G, g, GLIA_DTYPE_F32, &dy));
  glia_status st = GLIA_OK;
  if (n->needs[0]) st = glia_tensor_new_like(G, xc, GLIA_DTYPE_F32, &din[0]);
  if (st == GLIA_OK && (need_w || need_b)) {
    psize[0] = nb * (need_w + need_b);
    st = glia_tensor_new(G, GLIA_DTYPE_F32, 2, psize, &part);
  }
  if (st == GLIA_OK) {
    float *pw = need_w ? (float *)glia_ptr(part) : NULL;
    float *pb = need_b ? (float *)glia_ptr(part) + (need_w ? nb * C : 0) : NULL;
    norm_bwd_arg k = {(const float *)glia_ptr(xc), wc ? (const float *)glia_ptr(wc) : NULL,
                      (const float *)glia_ptr(dy),
                      mean ? (const float *)glia_ptr(mean) : NULL,
                      (const float *)glia_ptr(rstd),
                      n->needs[0] ? (float *)glia_ptr(din[0]) : NULL, pw, pb, R, C};
    glia_parallel_for(G, nb, glia_grain_items(C * NORM_BLOCK), norm_bwd_blocks, &k);
    if (need_w) st = sum_partials(G, pw, nb, C, &din[1]);
    if (st == GLIA_OK && need_b) st = sum_partials(G, pb, nb, C, &din[2]);
  }
  glia_tensor_release(part);
  glia_tensor_release(dy);
  return st;
}

/* Checks that p (weight or bias) is an f32 {C} for x's last dim. */
static glia_status check_param(glia_ctx *G, const char *name, const char *what,
                               glia_tensor *p, glia_tensor *x) {
  if (!p) return GLIA_OK;
  TRY(glia_check_f32(G, name, what, p));
  if (p->ndim != 1 || p->size[0] != x->size[x->ndim - 1])
    return glia_fail(G, GLIA_ESHAPE, "%s: %s %s does not match the last dim of input %s",
                     name, what, glia_shape_str(p), glia_shape_str(x));
  return GLIA_OK;
}

/* The shared forward: layer norm when center, rms norm (bias NULL) when not. */
static glia_status norm_fwd(glia_ctx *G, const char *name, bool center, glia_tensor *x,
                            glia_tensor *w, glia_tensor *b, double eps, glia_tensor **out) {
  TRY(glia_check_f32(G, name, "input", x));
  if (x->ndim < 1)
    return glia_fail(G, GLIA_ESHAPE, "%s: input must have at least 1 dim, got %s", name,
                     glia_shape_str(x));
  TRY(check_param(G, name, "weight", w, x));
  TRY(check_param(G, name, "bias", b, x));
  if (!(eps >= 0))
    return glia_fail(G, GLIA_EARG, "%s: eps must be >= 0, got %g", name, eps);
  int64_t C = x->size[x->ndim - 1], R = C > 0 ? glia_tensor_numel(x) / C : 0;
  glia_tensor *xc = NULL, *wc = NULL, *bc = NULL, *y = NULL, *mean = NULL, *rstd = NULL;
  glia_status st = glia_tensor_contiguous_as(G, x, GLIA_DTYPE_F32, &xc);
  if (st == GLIA_OK && w) st = glia_tensor_contiguous_as(G, w, GLIA_DTYPE_F32, &wc);
  if (st == GLIA_OK && b) st = glia_tensor_contiguous_as(G, b, GLIA_DTYPE_F32, &bc);
  if (st == GLIA_OK) st = glia_tensor_new_like(G, x, GLIA_DTYPE_F32, &y);
  if (st == GLIA_OK && center) st = glia_tensor_new(G, GLIA_DTYPE_F32, 1, &R, &mean);
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_F32, 1, &R, &rstd);
  if (st == GLIA_OK) {
    norm_fwd_arg k = {(const float *)glia_ptr(xc), wc ? (const float *)glia_ptr(wc) : NULL,
                      bc ? (const float *)glia_ptr(bc) : NULL, (float *)glia_ptr(y), center,
                      mean ? (float *)glia_ptr(mean) : NULL, (float *)glia_ptr(rstd), C, eps};
    glia_parallel_for(G, R, glia_grain_items(C), norm_fwd_rows, &k);
    glia_tensor *in[3] = {x, w, b};
    glia_node *node = glia_node_begin(G, name, norm_bwd, center ? 3 : 2, in, &st);
    if (node) {
      glia_tensor *save[4] = {xc, wc, mean, rstd};
      for (int i = 0; i < 4 && st == GLIA_OK; i++) st = glia_node_save(G, node, save[i]);
      st = glia_node_end(node, st, y);
    }
  }
  glia_tensor_release(xc);
  glia_tensor_release(wc);
  glia_tensor_release(bc);
  glia_tensor_release(mean);
  glia_tensor_release(rstd);
  return glia_hand_out(st, y, out);
}

void glia_layer_norm_rows(const float *x, const float *w, const float *b, float *y, int64_t R,
                          int64_t C, double eps) {
  norm_fwd_arg k = {x, w, b, y, true, NULL, NULL, C, eps};
  norm_fwd_rows(0, R, &k);
}

glia_status glia_layer_norm(glia_ctx *G, glia_tensor *x, glia_tensor *weight,
                            glia_tensor *bias, double eps, glia_tensor **out) {
  return norm_fwd(G, "glia.layer_norm", true, x, weight, bias, eps, out);
}

glia_status glia_rms_norm(glia_ctx *G, glia_tensor *x, glia_tensor *weight, double eps,
                          glia_tensor **out) {
  return norm_fwd(G, "glia.rms_norm", false, x, weight, NULL, eps, out);
}

/* ========================================================= registry */

/* layer_norm(x [, weight [, bias [, eps]]]) */
static glia_status op_layer_norm(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                 glia_value *outs) {
  (void)nargs;
  glia_tensor *r;
  TRY(glia_layer_norm(G, args[0].u.t, arg_t(&args[1]), arg_t(&args[2]), arg_num(&args[3], 1e-5),
                      &r));
  return out1(nouts, outs, r);
}

/* rms_norm(x [, weight [, eps]]) */
static glia_status op_rms_norm(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                               glia_value *outs) {
  (void)nargs;
  glia_tensor *r;
  TRY(glia_rms_norm(G, args[0].u.t, arg_t(&args[1]), arg_num(&args[2], 1e-6), &r));
  return out1(nouts, outs, r);
}

const glia_op glia_ops_norm[] = {
    {"layer_norm", "Ttt|n", op_layer_norm, 1},
    {"rms_norm", "Tt|n", op_rms_norm, 1},
    {NULL, NULL, NULL, 0},
};
