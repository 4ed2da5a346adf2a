/*
** ops/conv.c -- 2-D convolution (conv2d; conv1d is conv2d over a unit
** height) and 2-D pooling (max_pool2d, avg_pool2d, adaptive_avg_pool2d),
** each forward with its backward beside it.
**
** Shape letters: B batch, C input channels, O output channels, G groups
** (Cg = C/G and Og = O/G per group), H W the input plane, Ho Wo the output
** plane, kh kw the kernel, K = Cg*kh*kw the length of one im2col column,
** P = Ho*Wo. x {B,C,H,W}, w {O,Cg,kh,kw}, bias {O}, y {B,O,Ho,Wo}.
**
** Semantics are PyTorch's: y[b,o,u,v] = bias[o] + the sum over the Cg input
** channels c of o's group and the taps (i,j) of
** w[o,c,i,j] * x[b, c, u*sh - ph + i*dh, v*sw - pw + j*dw], zero outside the
** input; Ho = (H + 2ph - dh*(kh-1) - 1) / sh + 1 (floor), Wo likewise.
**
** Two kernels:
**  - depth-wise (G = C, O any multiple of C): direct loops. With stride 1
**    (the common case) each source plane is copied into zero-padded
**    scratch, so every tap reads whole vectors with no bounds, and four
**    output rows accumulate in registers across all taps; forward and dx
**    are the same correlation (dx reads dy with the kernel flipped). Other
**    strides update, per tap, the output columns whose tap falls inside the
**    input (FOR_TAPS);
**  - every other case: im2col of one image and group into a {K, P} buffer,
**    then one sgemm {Og,K} x {K,P}; a 1x1 kernel with stride 1 and no
**    padding is its own im2col and skips the copy. Tasks take contiguous
**    ranges of images, each with its own buffers, with OpenBLAS
**    single-threaded inside them (one owner of the cores at a time; on the
**    2-core bench machine this was as fast as or faster than one image at
**    a time on OpenBLAS's threads, and it is deterministic). The weight
**    gradient is summed per task and the task sums are added in task
**    order, so results are the same run to run for a given thread count.
** Inputs of any strides are made contiguous first: the kernels see
** contiguous x, w and dy.
**
** Pooling walks one {H,W} plane per item; every output's window is a
** rectangle [hs,he) x [ws,we) clipped to the input, from bounds computed
** once per call: max_pool pads with -inf (so clipping is exact), avg_pool
** counts the padding (count_include_pad) and divides by kh*kw, adaptive
** pooling divides by the window's area. Max pool keeps the index of the
** first maximum of each window (NaN counts as the maximum) for backward.
*/
#include "glia_impl.h"
#include "ops.h"
#include "rows.h"

#include <limits.h>
#include <stdlib.h>
#include <math.h>

/* ==================================================== shared pieces */

/* The outputs o in [*lo, *hi) (a range of [0, out)) whose tap o*s + off
** falls inside [0, in). */
static void tap_range(int64_t in, int64_t out, int64_t s, int64_t off, int64_t *lo,
                      int64_t *hi) {
  int64_t l = off >= 0 ? 0 : cdiv(-off, s);
  int64_t h = in - off <= 0 ? 0 : min64(out, cdiv(in - off, s));
  *lo = min64(l, h), *hi = h;
}

/* Runs the statements after g for each tap (i, j) of geometry g, with
** t = i*kw + j, the tap's offsets offh, offw into the input and the output
** rows [h0, h1) and columns [w0, w1) whose tap falls inside the input. */
#define FOR_TAPS(g, ...)                                                  \
  for (int64_t i = 0; i < (g)->kh; i++) {                                 \
    int64_t offh = i * (g)->dh - (g)->ph, h0, h1;                         \
    tap_range((g)->H, (g)->Ho, (g)->sh, offh, &h0, &h1);                  \
    for (int64_t j = 0; j < (g)->kw; j++) {                               \
      int64_t offw = j * (g)->dw - (g)->pw, w0, w1, t = i * (g)->kw + j;  \
      tap_range((g)->W, (g)->Wo, (g)->sw, offw, &w0, &w1);                \
      __VA_ARGS__                                                         \
    }                                                                     \
  }

/* y[0..n) += a * x[0..n), in vectors of GLIA_VL. */
static inline void axpy(float *restrict y, const float *restrict x, float a, int64_t n) {
  glia_vf av = a + (glia_vf){0};
  int64_t i = 0;
  for (; i + GLIA_VL <= n; i += GLIA_VL) {
    glia_vf v = glia_vloadu(y + i) + av * glia_vloadu(x + i);
    memcpy(y + i, &v, sizeof v);
  }
  for (; i < n; i++) y[i] += a * x[i];
}

/* A {h, w} pair argument: none (or an empty list, Lua's nil) gives dflt for
** both, one integer both, two integers each. */
static glia_status pair_arg(glia_ctx *G, const char *name, const char *what,
                            const glia_value *a, int64_t dflt, int64_t *p) {
  if (a->kind == GLIA_VAL_NONE || (a->kind == GLIA_VAL_INTS && a->u.ints.n == 0)) {
    p[0] = p[1] = dflt;
    return GLIA_OK;
  }
  if (a->kind == GLIA_VAL_INTS && a->u.ints.n <= 2) {
    p[0] = a->u.ints.v[0], p[1] = a->u.ints.v[a->u.ints.n - 1];
    return GLIA_OK;
  }
  return glia_fail(G, GLIA_EARG, "%s: %s must be a number or a {h, w} pair", name, what);
}

/* ======================================================= convolution */

typedef struct {
  int64_t B, C, H, W, O, kh, kw, Ho, Wo;
  int64_t sh, sw, ph, pw, dh, dw, G;
} conv_geom;

/* col {K, P} = the taps of x {Cg, H, W} (one image, one group), 0 outside. */
static void im2col(const conv_geom *g, const float *x, float *col) {
  int64_t Cg = g->C / g->G, P = g->Ho * g->Wo, Wo = g->Wo;
  for (int64_t c = 0; c < Cg; c++)
    FOR_TAPS(g, {
      float *row = col + (c * g->kh * g->kw + t) * P;
      for (int64_t u = 0; u < g->Ho; u++) {
        float *r = row + u * Wo;
        if (u < h0 || u >= h1) {
          memset(r, 0, (size_t)Wo * sizeof *r);
          continue;
        }
        const float *xr = x + (c * g->H + u * g->sh + offh) * g->W;
        memset(r, 0, (size_t)w0 * sizeof *r);
        memset(r + w1, 0, (size_t)(Wo - w1) * sizeof *r);
        if (g->sw == 1)
          memcpy(r + w0, xr + w0 + offw, (size_t)(w1 - w0) * sizeof *r);
        else
          for (int64_t v = w0; v < w1; v++) r[v] = xr[v * g->sw + offw];
      }
    })
}

/* dx {Cg, H, W} += the taps of col {K, P} put back where im2col took them. */
static void col2im(const conv_geom *g, const float *col, float *dx) {
  int64_t Cg = g->C / g->G, P = g->Ho * g->Wo, Wo = g->Wo;
  for (int64_t c = 0; c < Cg; c++)
    FOR_TAPS(g, {
      const float *row = col + (c * g->kh * g->kw + t) * P;
      for (int64_t u = h0; u < h1; u++) {
        const float *r = row + u * Wo;
        float *dr = dx + (c * g->H + u * g->sh + offh) * g->W;
        if (g->sw == 1)
          axpy(dr + w0 + offw, r + w0, 1.0f, w1 - w0);
        else
          for (int64_t v = w0; v < w1; v++) dr[v * g->sw + offw] += r[v];
      }
    })
}

typedef struct {
  conv_geom g;
  const float *x, *w, *b; /* forward inputs (b may be NULL) */
  const float *dy;        /* backward: {B,O,Ho,Wo} */
  float *y, *dx, *dw, *db; /* outputs that are wanted, else NULL */
  float *work;             /* per slot: work_per floats */
  int64_t work_per;
  int64_t nslots;
  bool direct; /* 1x1, stride 1, no padding: x is its own im2col */
} conv_job;

/* Forward of the images of slots [s0, s1) (im2col + sgemm). */
static void gemm_fwd_slots(int64_t s0, int64_t s1, void *ud) {
  const conv_job *J = ud;
  const conv_geom *g = &J->g;
  int64_t Cg = g->C / g->G, Og = g->O / g->G, K = Cg * g->kh * g->kw, P = g->Ho * g->Wo;
  for (int64_t s = s0; s < s1; s++) {
    float *col = J->work + s * J->work_per;
    for (int64_t b = s * g->B / J->nslots; b < (s + 1) * g->B / J->nslots; b++)
      for (int64_t gi = 0; gi < g->G; gi++) {
        const float *xg = J->x + (b * g->C + gi * Cg) * g->H * g->W;
        float *yg = J->y + (b * g->O + gi * Og) * P;
        if (!J->direct) im2col(g, xg, col);
        if (J->b)
          for (int64_t o = 0; o < Og; o++)
            for (int64_t p = 0; p < P; p++) yg[o * P + p] = J->b[gi * Og + o];
        glia_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)Og, (int)P, (int)K, 1.0f,
                   J->w + gi * Og * K, (int)K, J->direct ? xg : col, (int)P,
                   J->b ? 1.0f : 0.0f, yg, (int)P);
      }
  }
}

/* Backward of the images of slots [s0, s1): dx (zeroed by the caller) and
** the slot's partial dw {O, K} (zeroed here). */
static void gemm_bwd_slots(int64_t s0, int64_t s1, void *ud) {
  const conv_job *J = ud;
  const conv_geom *g = &J->g;
  int64_t Cg = g->C / g->G, Og = g->O / g->G, K = Cg * g->kh * g->kw, P = g->Ho * g->Wo;
  for (int64_t s = s0; s < s1; s++) {
    float *col = J->work + s * J->work_per, *dcol = col + K * P;
    float *dwp = col + (J->direct ? 0 : 2 * K * P);
    if (J->dw) memset(dwp, 0, (size_t)(g->O * K) * sizeof *dwp);
    for (int64_t b = s * g->B / J->nslots; b < (s + 1) * g->B / J->nslots; b++)
      for (int64_t gi = 0; gi < g->G; gi++) {
        const float *xg = J->x + (b * g->C + gi * Cg) * g->H * g->W;
        const float *dyg = J->dy + (b * g->O + gi * Og) * P;
        const float *wg = J->w + gi * Og * K;
        if (J->dw) {
          if (!J->direct) im2col(g, xg, col);
          glia_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)Og, (int)K, (int)P, 1.0f,
                     dyg, (int)P, J->direct ? xg : col, (int)P, 1.0f, dwp + gi * Og * K,
                     (int)K);
        }
        if (J->dx) {
          float *dxg = J->dx + (b * g->C + gi * Cg) * g->H * g->W;
          glia_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)K, (int)P, (int)Og, 1.0f,
                     wg, (int)K, dyg, (int)P, 0.0f, J->direct ? dxg : dcol, (int)P);
          if (!J->direct) col2im(g, dcol, dxg);
        }
      }
  }
}

/* Depth-wise forward of planes [p0, p1) of y (item = b*O + o). */
static void dw_fwd_planes(int64_t p0, int64_t p1, void *ud) {
  const conv_job *J = ud;
  const conv_geom *g = &J->g;
  int64_t P = g->Ho * g->Wo, m = g->O / g->C;
  for (int64_t p = p0; p < p1; p++) {
    int64_t b = p / g->O, o = p % g->O;
    const float *xp = J->x + (b * g->C + o / m) * g->H * g->W, *wp = J->w + o * g->kh * g->kw;
    float *yp = J->y + p * P, bias = J->b ? J->b[o] : 0.0f;
    for (int64_t q = 0; q < P; q++) yp[q] = bias;
    FOR_TAPS(g, {
      float wv = wp[t];
      for (int64_t u = h0; u < h1; u++) {
      const float *xr = xp + (u * g->sh + offh) * g->W;
      float *yr = yp + u * g->Wo;
      if (g->sw == 1)
        axpy(yr + w0, xr + w0 + offw, wv, w1 - w0);
      else
        for (int64_t v = w0; v < w1; v++) yr[v] += wv * xr[v * g->sw + offw];
      }
    })
  }
}

/* Depth-wise dx for planes [p0, p1) of dx (item = b*C + c): the m output
** channels of input channel c, in order. */
static void dw_dx_planes(int64_t p0, int64_t p1, void *ud) {
  const conv_job *J = ud;
  const conv_geom *g = &J->g;
  int64_t P = g->Ho * g->Wo, m = g->O / g->C;
  for (int64_t p = p0; p < p1; p++) {
    int64_t b = p / g->C, c = p % g->C;
    float *dxp = J->dx + p * g->H * g->W;
    for (int64_t o = c * m; o < (c + 1) * m; o++) {
      const float *dyp = J->dy + (b * g->O + o) * P, *wp = J->w + o * g->kh * g->kw;
      FOR_TAPS(g, {
        float wv = wp[t];
        for (int64_t u = h0; u < h1; u++) {
          float *dr = dxp + (u * g->sh + offh) * g->W;
          const float *gr = dyp + u * g->Wo;
          if (g->sw == 1)
            axpy(dr + w0 + offw, gr + w0, wv, w1 - w0);
          else
            for (int64_t v = w0; v < w1; v++) dr[v * g->sw + offw] += wv * gr[v];
        }
      })
    }
  }
}

/* Depth-wise dw {O, kh*kw} for output channels [o0, o1), images in order. */
static void dw_dw_channels(int64_t o0, int64_t o1, void *ud) {
  const conv_job *J = ud;
  const conv_geom *g = &J->g;
  int64_t P = g->Ho * g->Wo, m = g->O / g->C;
  for (int64_t o = o0; o < o1; o++) {
    float *dwp = J->dw + o * g->kh * g->kw;
    for (int64_t b = 0; b < g->B; b++) {
      const float *xp = J->x + (b * g->C + o / m) * g->H * g->W;
      const float *dyp = J->dy + (b * g->O + o) * P;
      FOR_TAPS(g, {
        float s = 0;
        for (int64_t u = h0; u < h1; u++) {
          const float *xr = xp + (u * g->sh + offh) * g->W, *gr = dyp + u * g->Wo;
          if (g->sw == 1)
            s += glia_dot(gr + w0, xr + w0 + offw, w1 - w0);
          else
            for (int64_t v = w0; v < w1; v++) s += gr[v] * xr[v * g->sw + offw];
        }
        dwp[t] += s;
      })
    }
  }
}

/* Depth-wise with stride 1, the common case, runs on a zero-padded copy
** of each source plane in per-slot scratch: every tap then reads whole
** vectors without bounds, and an output vector stays in a register across
** all taps. Forward and dx are the same correlation (dx reads dy padded by
** the kernel's span less the padding, with the kernel flipped); dw is a
** dot product of dy with shifted windows of the padded x. */

/* buf {R, Wb}: buf[r][c] = src[r - ph][c - pw] for src {Hs, Ws}, else 0
** (ph, pw may be negative: the source is then cropped). */
static void pad_plane(const float *src, int64_t Hs, int64_t Ws, int64_t ph, int64_t pw,
                      float *buf, int64_t R, int64_t Wb) {
  int64_t lo = min64(max64(pw, 0), Wb), hi = max64(lo, min64(Wb, pw + Ws));
  for (int64_t r = 0; r < R; r++) {
    float *b = buf + r * Wb;
    int64_t sr = r - ph;
    if (sr < 0 || sr >= Hs) {
      memset(b, 0, (size_t)Wb * sizeof *b);
      continue;
    }
    memset(b, 0, (size_t)lo * sizeof *b);
    memcpy(b + lo, src + sr * Ws + (lo - pw), (size_t)(hi - lo) * sizeof *b);
    memset(b + hi, 0, (size_t)(Wb - hi) * sizeof *b);
  }
}

/* Output rows computed together: RB independent FMA chains per kernel
** weight (one chain would wait on the FMA latency at every tap). */
#define RB 4 /* the kernels below name its 4 accumulators */

/* out {Ho, Wo} += sum over taps (i, j) of k[i][j] * buf[u + i*dh][v + j*dw];
** buf {R, Wb} with R >= Ho rounded up to RB plus (kh-1)*dh and Wb >= Wo
** rounded up to GLIA_VL plus (kw-1)*dw (buf_rows, buf_width). */
static void corr_plane(const float *buf, int64_t Wb, const float *k, const conv_geom *g,
                       float *out, int64_t Ho, int64_t Wo) {
  for (int64_t u = 0; u < Ho; u += RB)
    for (int64_t v0 = 0; v0 < Wo; v0 += GLIA_VL) {
      glia_vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}; /* named: kept in registers */
      for (int64_t i = 0; i < g->kh; i++)
        for (int64_t j = 0; j < g->kw; j++) {
          const float *bp = buf + (u + i * g->dh) * Wb + v0 + j * g->dw;
          float wv = k[i * g->kw + j];
          a0 += wv * glia_vloadu(bp);
          a1 += wv * glia_vloadu(bp + Wb);
          a2 += wv * glia_vloadu(bp + 2 * Wb);
          a3 += wv * glia_vloadu(bp + 3 * Wb);
        }
      glia_vf acc[RB] = {a0, a1, a2, a3};
      for (int r = 0; r < RB && u + r < Ho; r++) {
        float *o = out + (u + r) * Wo + v0;
        if (v0 + GLIA_VL <= Wo) {
          glia_vf v = acc[r] + glia_vloadu(o);
          memcpy(o, &v, sizeof v);
        } else {
          for (int64_t e = 0; e < Wo - v0; e++) o[e] += acc[r][e];
        }
      }
    }
}

/* dk {kh, kw} += sum over (u, v) of gr[u][v] * buf[u + i*dh][v + j*dw],
** gr {Ho, Wo}; RB rows at a time, each with its own chain. */
static void corr_weight(const float *buf, int64_t Wb, const float *gr, const conv_geom *g,
                        float *dk) {
  int64_t Ho = g->Ho, Wo = g->Wo, Hb = Ho - Ho % RB, Wv = Wo - Wo % GLIA_VL;
  for (int64_t i = 0; i < g->kh; i++)
    for (int64_t j = 0; j < g->kw; j++) {
      glia_vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
      float s = 0;
      const float *b0 = buf + i * g->dh * Wb + j * g->dw;
      for (int64_t u = 0; u < Hb; u += RB)
        for (int64_t v = 0; v < Wv; v += GLIA_VL) {
          const float *x = gr + u * Wo + v, *y = b0 + u * Wb + v;
          a0 += glia_vloadu(x) * glia_vloadu(y);
          a1 += glia_vloadu(x + Wo) * glia_vloadu(y + Wb);
          a2 += glia_vloadu(x + 2 * Wo) * glia_vloadu(y + 2 * Wb);
          a3 += glia_vloadu(x + 3 * Wo) * glia_vloadu(y + 3 * Wb);
        }
      for (int64_t u = 0; u < Ho; u++) /* the rows and columns left over */
        for (int64_t v = u < Hb ? Wv : 0; v < Wo; v++) s += gr[u * Wo + v] * b0[u * Wb + v];
      dk[i * g->kw + j] += glia_hsum((a0 + a1) + (a2 + a3)) + s;
    }
}

/* The padded buffer's rows and width for an output plane {Ho, Wo}. */
static int64_t buf_rows(const conv_geom *g, int64_t Ho) {
  return cdiv(Ho, RB) * RB + (g->kh - 1) * g->dh;
}
static int64_t buf_width(const conv_geom *g, int64_t Wo) {
  return cdiv(Wo, GLIA_VL) * GLIA_VL + (g->kw - 1) * g->dw;
}

/* Items of slot s: [s*n/nslots, (s+1)*n/nslots). */
#define SLOT_ITEMS(J, s, n, it) \
  for (int64_t it = (s) * (n) / (J)->nslots; it < ((s) + 1) * (n) / (J)->nslots; it++)

/* Forward, items are output planes b*O + o. */
static void dw1_fwd_slots(int64_t s0, int64_t s1, void *ud) {
  const conv_job *J = ud;
  const conv_geom *g = &J->g;
  int64_t m = g->O / g->C, Wb = buf_width(g, g->Wo), R = buf_rows(g, g->Ho);
  for (int64_t s = s0; s < s1; s++) {
    float *buf = J->work + s * J->work_per;
    SLOT_ITEMS(J, s, g->B * g->O, p) {
      int64_t b = p / g->O, o = p % g->O;
      pad_plane(J->x + (b * g->C + o / m) * g->H * g->W, g->H, g->W, g->ph, g->pw, buf, R, Wb);
      float *y = J->y + p * g->Ho * g->Wo, bias = J->b ? J->b[o] : 0.0f;
      for (int64_t q = 0; q < g->Ho * g->Wo; q++) y[q] = bias;
      corr_plane(buf, Wb, J->w + o * g->kh * g->kw, g, y, g->Ho, g->Wo);
    }
  }
}

/* dx (zeroed by the caller), items are input planes b*C + c. */
static void dw1_dx_slots(int64_t s0, int64_t s1, void *ud) {
  const conv_job *J = ud;
  const conv_geom *g = &J->g;
  int64_t m = g->O / g->C, Wb = buf_width(g, g->W), R = buf_rows(g, g->H), T = g->kh * g->kw;
  int64_t qh = (g->kh - 1) * g->dh - g->ph, qw = (g->kw - 1) * g->dw - g->pw;
  for (int64_t s = s0; s < s1; s++) {
    float *flipped = J->work + s * J->work_per, *buf = flipped + T;
    SLOT_ITEMS(J, s, g->B * g->C, p) {
      int64_t b = p / g->C, c = p % g->C;
      for (int64_t o = c * m; o < (c + 1) * m; o++) {
        for (int64_t t = 0; t < T; t++) flipped[t] = J->w[o * T + T - 1 - t];
        pad_plane(J->dy + (b * g->O + o) * g->Ho * g->Wo, g->Ho, g->Wo, qh, qw, buf, R, Wb);
        corr_plane(buf, Wb, flipped, g, J->dx + p * g->H * g->W, g->H, g->W);
      }
    }
  }
}

/* dw, items are output channels o (images in order). */
static void dw1_dw_slots(int64_t s0, int64_t s1, void *ud) {
  const conv_job *J = ud;
  const conv_geom *g = &J->g;
  int64_t m = g->O / g->C, Wb = buf_width(g, g->Wo), R = buf_rows(g, g->Ho);
  for (int64_t s = s0; s < s1; s++) {
    float *buf = J->work + s * J->work_per;
    SLOT_ITEMS(J, s, g->O, o) {
      for (int64_t b = 0; b < g->B; b++) {
        pad_plane(J->x + (b * g->C + o / m) * g->H * g->W, g->H, g->W, g->ph, g->pw, buf, R, Wb);
        corr_weight(buf, Wb, J->dy + (b * g->O + o) * g->Ho * g->Wo, g, J->dw + o * g->kh * g->kw);
      }
    }
  }
}

/* db[o] = the sum of dy over images and the plane, for o in [o0, o1). */
static void bias_grad(int64_t o0, int64_t o1, void *ud) {
  const conv_job *J = ud;
  const conv_geom *g = &J->g;
  int64_t P = g->Ho * g->Wo;
  for (int64_t o = o0; o < o1; o++) {
    float s = 0;
    for (int64_t b = 0; b < g->B; b++) {
      const float *d = J->dy + (b * g->O + o) * P;
      float part;
      GLIA_LANE_SUM(part, P, q, d[q]);
      s += part;
    }
    J->db[o] = s;
  }
}

/* Slots (tasks with their own scratch) for n items of `work` elements
** each: one per thread when there is work enough to share, else one. */
static int64_t conv_slots(glia_ctx *G, int64_t n, int64_t work) {
  if (n * work < 2 * GRAIN) return 1;
  return max64(1, min64(G->nthreads, n));
}

/* Runs fn over the J->nslots slots of J, each with J->work_per floats of
** scratch (freed here). blas: fn calls OpenBLAS, single-threaded inside
** the slots when there are several (one owner of the cores); with one
** slot OpenBLAS keeps its own threads. */
static glia_status run_slots(glia_ctx *G, const char *name, conv_job *J, glia_range_fn fn,
                             bool blas) {
  size_t bytes = (size_t)(J->nslots * J->work_per) * sizeof(float);
  J->work = NULL;
  if (bytes) {
    J->work = glia_alloc(G, bytes);
    if (!J->work) return glia_fail_nomem(G, bytes, name);
  }
  if (blas && J->nslots > 1)
    glia_pool_blas_items(G, J->nslots, fn, J);
  else /* on the calling thread for one slot */
    glia_parallel_for(G, J->nslots, 1, fn, J);
  return GLIA_OK;
}

/* The im2col path's slots: threads share the images. */
static int64_t gemm_slots(glia_ctx *G, const conv_geom *g) {
  int64_t K = g->C / g->G * g->kh * g->kw;
  return conv_slots(G, g->B, g->O * g->Ho * g->Wo * K);
}

/* The scratch of one stride-1 depth-wise slot: a flipped kernel and the
** larger padded plane. */
static int64_t dw1_scratch(const conv_geom *g) {
  return g->kh * g->kw + max64(buf_rows(g, g->Ho) * buf_width(g, g->Wo),
                               buf_rows(g, g->H) * buf_width(g, g->W));
}

/* Runs a stride-1 depth-wise kernel over n items of `work` elements. */
static glia_status run_dw1(glia_ctx *G, const char *name, conv_job *J, glia_range_fn fn,
                           int64_t n, int64_t work) {
  J->nslots = conv_slots(G, n, work);
  J->work_per = dw1_scratch(&J->g);
  glia_status st = run_slots(G, name, J, fn, false);
  if (J->work) glia_free(G, J->work, (size_t)(J->nslots * J->work_per) * sizeof(float));
  return st;
}

static bool conv_is_direct(const conv_geom *g) {
  return g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0;
}

/* Inputs: x, w, bias. Saved: x and w (contiguous); iarg: the geometry. */
static glia_status conv2d_bwd(glia_ctx *G, glia_node *n, glia_tensor *gout, glia_tensor **din) {
  glia_tensor *xc, *wc, *dy;
  TRY(glia_node_saved(G, n, 0, &xc));
  TRY(glia_node_saved(G, n, 1, &wc));
  conv_job J;
  memset(&J, 0, sizeof J);
  memcpy(&J.g, n->iarg, sizeof J.g);
  const conv_geom *g = &J.g;
  bool need_x = n->needs[0], need_w = n->needs[1], need_b = n->ninputs > 2 && n->needs[2];
  TRY(glia_tensor_contiguous_as(G, gout, GLIA_DTYPE_F32, &dy));
  glia_status st = GLIA_OK;
  if (need_x) st = glia_tensor_zeros(G, GLIA_DTYPE_F32, 4, xc->size, &din[0]);
  if (st == GLIA_OK && need_w) st = glia_tensor_zeros(G, GLIA_DTYPE_F32, 4, wc->size, &din[1]);
  if (st == GLIA_OK && need_b) st = glia_tensor_new(G, GLIA_DTYPE_F32, 1, &g->O, &din[2]);
  if (st != GLIA_OK) goto done;
  J.x = (const float *)glia_ptr(xc), J.w = (const float *)glia_ptr(wc);
  J.dy = (const float *)glia_ptr(dy);
  J.dx = need_x ? (float *)glia_ptr(din[0]) : NULL;
  J.dw = need_w ? (float *)glia_ptr(din[1]) : NULL;
  J.db = need_b ? (float *)glia_ptr(din[2]) : NULL;
  int64_t P = g->Ho * g->Wo, K = g->C / g->G * g->kh * g->kw;
  if (J.db) glia_parallel_for(G, g->O, glia_grain_items(g->B * P), bias_grad, &J);
  if (g->G == g->C) { /* depth-wise */
    int64_t taps = g->kh * g->kw * P * (g->O / g->C);
    if (g->sh == 1 && g->sw == 1) {
      if (J.dx) st = run_dw1(G, n->name, &J, dw1_dx_slots, g->B * g->C, taps);
      if (st == GLIA_OK && J.dw) st = run_dw1(G, n->name, &J, dw1_dw_slots, g->O, taps * g->B);
      goto done;
    }
    if (J.dx) glia_parallel_for(G, g->B * g->C, glia_grain_items(taps), dw_dx_planes, &J);
    if (J.dw) glia_parallel_for(G, g->O, glia_grain_items(taps * g->B), dw_dw_channels, &J);
    goto done;
  }
  /* no products to run: the zeroed dx and dw are the gradients */
  if ((!J.dx && !J.dw) || g->B == 0 || g->O == 0 || K == 0 || P == 0) goto done;
  J.direct = conv_is_direct(g);
  J.nslots = gemm_slots(G, g);
  J.work_per = (J.direct ? 0 : 2 * K * P) + (J.dw ? g->O * K : 0);
  float *dw = J.dw;
  st = run_slots(G, n->name, &J, gemm_bwd_slots, true);
  if (st == GLIA_OK && dw) /* the slots' partial sums, in slot order */
    for (int64_t s = 0; s < J.nslots; s++) {
      const float *part = J.work + s * J.work_per + (J.direct ? 0 : 2 * K * P);
      for (int64_t e = 0; e < g->O * K; e++) dw[e] += part[e];
    }
  if (J.work) glia_free(G, J.work, (size_t)(J.nslots * J.work_per) * sizeof(float));
done:
  glia_tensor_release(dy);
  return st;
}

/* The output size along one dim, or -1 when the kernel does not fit (or
** its span or the padded size would overflow: sizes no input can have). */
static int64_t out_len(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  int64_t span, padded;
  if (__builtin_mul_overflow(d, k - 1, &span) || __builtin_add_overflow(span, 1, &span) ||
      __builtin_mul_overflow(p, 2, &padded) || __builtin_add_overflow(padded, in, &padded))
    return -1;
  return padded < span ? -1 : (padded - span) / s + 1;
}

/* Checks the arguments of name (conv2d or conv1d: x and w shown as given,
** xs and ws) and fills the geometry. */
static glia_status conv_check(glia_ctx *G, const char *name, glia_tensor *x, glia_tensor *w,
                              glia_tensor *b, const int64_t *st, const int64_t *pad,
                              const int64_t *dil, int64_t groups, const glia_tensor *xs,
                              const glia_tensor *ws, conv_geom *g) {
  TRY(glia_check_f32(G, name, "input", x));
  TRY(glia_check_f32(G, name, "weight", w));
  if (b) TRY(glia_check_f32(G, name, "bias", b));
  int nd = xs->ndim;
  if (groups < 1)
    return glia_fail(G, GLIA_EARG, "%s: groups must be >= 1, got %lld", name, (long long)groups);
  for (int k = 0; k < 2; k++) {
    if (st[k] < 1)
      return glia_fail(G, GLIA_EARG, "%s: stride must be >= 1, got %lld", name, (long long)st[k]);
    if (dil[k] < 1)
      return glia_fail(G, GLIA_EARG, "%s: dilation must be >= 1, got %lld", name,
                       (long long)dil[k]);
    if (pad[k] < 0)
      return glia_fail(G, GLIA_EARG, "%s: padding must be >= 0, got %lld", name,
                       (long long)pad[k]);
  }
  int64_t C = x->size[1], O = w->size[0];
  if (C % groups || O % groups)
    return glia_fail(G, GLIA_ESHAPE,
                     "%s: channels must be divisible by groups %lld: input %s, weight %s", name,
                     (long long)groups, glia_shape_str(xs), glia_shape_str(ws));
  if (w->size[1] != C / groups)
    return glia_fail(G, GLIA_ESHAPE,
                     "%s: weight %s needs C/groups = %lld input channels, input is %s", name,
                     glia_shape_str(ws), (long long)(C / groups), glia_shape_str(xs));
  if (b && (b->ndim != 1 || b->size[0] != O))
    return glia_fail(G, GLIA_ESHAPE, "%s: bias %s does not match weight %s", name,
                     glia_shape_str(b), glia_shape_str(ws));
  *g = (conv_geom){x->size[0], C, x->size[2], x->size[3], O, w->size[2], w->size[3], 0, 0,
                   st[0], st[1], pad[0], pad[1], dil[0], dil[1], groups};
  g->Ho = out_len(g->H, g->kh, g->sh, g->ph, g->dh);
  g->Wo = out_len(g->W, g->kw, g->sw, g->pw, g->dw);
  if (g->Ho < 1 || g->Wo < 1 || g->kh < 1 || g->kw < 1) {
    if (nd == 3) /* conv1d: its own numbers */
      return glia_fail(G, GLIA_ESHAPE,
                       "%s: kernel %s (dilation %lld) larger than the padded input %s "
                       "(padding %lld)", name, glia_shape_str(ws), (long long)dil[1],
                       glia_shape_str(xs), (long long)pad[1]);
    return glia_fail(G, GLIA_ESHAPE,
                     "%s: kernel %s (dilation {%lld,%lld}) larger than the padded input %s "
                     "(padding {%lld,%lld})", name, glia_shape_str(ws), (long long)dil[0],
                     (long long)dil[1], glia_shape_str(xs), (long long)pad[0], (long long)pad[1]);
  }
  int64_t K = C / groups * g->kh * g->kw;
  if (K > INT_MAX || O > INT_MAX || g->Ho > INT_MAX || g->Wo > INT_MAX ||
      g->Ho * g->Wo > INT_MAX)
    return glia_fail(G, GLIA_ESHAPE, "%s: input %s and weight %s too large for BLAS", name,
                     glia_shape_str(xs), glia_shape_str(ws));
  return GLIA_OK;
}

/* conv2d of 4-D x and w (conv1d passes its views, xs and ws as given). */
static glia_status conv_run(glia_ctx *G, const char *name, glia_tensor *x, glia_tensor *w,
                            glia_tensor *b, const conv_geom *g, glia_tensor **out) {
  glia_tensor *xc = NULL, *wc = NULL, *bc = NULL, *y = NULL;
  int64_t ysize[4] = {g->B, g->O, g->Ho, g->Wo};
  glia_status st = glia_tensor_contiguous_as(G, x, GLIA_DTYPE_F32, &xc);
  if (st == GLIA_OK) st = glia_tensor_contiguous_as(G, w, GLIA_DTYPE_F32, &wc);
  if (st == GLIA_OK && b) st = glia_tensor_contiguous_as(G, b, GLIA_DTYPE_F32, &bc);
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_F32, 4, ysize, &y);
  if (st != GLIA_OK) goto done;
  conv_job J;
  memset(&J, 0, sizeof J);
  J.g = *g;
  J.x = (const float *)glia_ptr(xc), J.w = (const float *)glia_ptr(wc);
  J.b = bc ? (const float *)glia_ptr(bc) : NULL;
  J.y = (float *)glia_ptr(y);
  if (glia_tensor_numel(y) > 0 && g->C > 0) {
    int64_t taps = g->kh * g->kw * g->Ho * g->Wo;
    if (g->G == g->C && g->sh == 1 && g->sw == 1) {
      st = run_dw1(G, name, &J, dw1_fwd_slots, g->B * g->O, taps);
    } else if (g->G == g->C) {
      glia_parallel_for(G, g->B * g->O, glia_grain_items(taps), dw_fwd_planes, &J);
    } else {
      J.direct = conv_is_direct(g);
      J.nslots = gemm_slots(G, g);
      J.work_per = J.direct ? 0 : g->C / g->G * g->kh * g->kw * g->Ho * g->Wo;
      st = run_slots(G, name, &J, gemm_fwd_slots, true);
      if (J.work) glia_free(G, J.work, (size_t)(J.nslots * J.work_per) * sizeof(float));
    }
  } else if (glia_tensor_numel(y) > 0) { /* no input channels: the bias alone */
    for (int64_t e = 0; e < glia_tensor_numel(y); e++)
      J.y[e] = J.b ? J.b[e / (g->Ho * g->Wo) % g->O] : 0.0f;
  }
  if (st == GLIA_OK) {
    glia_tensor *in[3] = {x, w, b};
    glia_node *node = glia_node_begin(G, name, conv2d_bwd, b ? 3 : 2, in, &st);
    if (node) {
      _Static_assert(sizeof(conv_geom) <= sizeof node->iarg, "the geometry fits in iarg");
      memcpy(node->iarg, g, sizeof *g);
      st = glia_node_save(G, node, xc);
      if (st == GLIA_OK) st = glia_node_save(G, node, wc);
      st = glia_node_end(node, st, y);
    }
  }
done:
  glia_tensor_release(xc);
  glia_tensor_release(wc);
  glia_tensor_release(bc);
  return glia_hand_out(st, y, out);
}

glia_status glia_conv2d(glia_ctx *G, glia_tensor *x, glia_tensor *w, glia_tensor *b,
                        const int64_t *stride, const int64_t *pad, const int64_t *dil,
                        int64_t groups, glia_tensor **out) {
  conv_geom g;
  if (x->ndim != 4 || w->ndim != 4)
    return glia_fail(G, GLIA_ESHAPE,
                     "glia.conv2d: expected input {B,C,H,W} and weight {O,C/groups,kh,kw}, "
                     "got %s and %s",
                     glia_shape_str(x), glia_shape_str(w));
  TRY(conv_check(G, "glia.conv2d", x, w, b, stride, pad, dil, groups, x, w, &g));
  return conv_run(G, "glia.conv2d", x, w, b, &g, out);
}

/* conv1d: x {B,C,L} and w {O,Cg,k} as {B,C,1,L} and {O,Cg,1,k} (views, so
** autograd goes through them), the result viewed back to {B,O,Lo}. */
static glia_status conv1d(glia_ctx *G, glia_tensor *x, glia_tensor *w, glia_tensor *b,
                          int64_t stride, int64_t pad, int64_t dil, int64_t groups,
                          glia_tensor **out) {
  const char *name = "glia.conv1d";
  if (x->ndim != 3 || w->ndim != 3)
    return glia_fail(G, GLIA_ESHAPE,
                     "%s: expected input {B,C,L} and weight {O,C/groups,k}, got %s and %s", name,
                     glia_shape_str(x), glia_shape_str(w));
  glia_tensor *x4 = NULL, *w4 = NULL, *y4 = NULL;
  int64_t s2[2] = {1, stride}, p2[2] = {0, pad}, d2[2] = {1, dil};
  conv_geom g;
  glia_status st = glia_unsqueeze(G, x, 2, &x4);
  if (st == GLIA_OK) st = glia_unsqueeze(G, w, 2, &w4);
  if (st == GLIA_OK) st = conv_check(G, name, x4, w4, b, s2, p2, d2, groups, x, w, &g);
  if (st == GLIA_OK) st = conv_run(G, name, x4, w4, b, &g, &y4);
  if (st == GLIA_OK) st = glia_select(G, y4, 2, 0, out);
  glia_tensor_release(x4);
  glia_tensor_release(w4);
  glia_tensor_release(y4);
  return st;
}

/* ============================================================ pooling */

enum { POOL_MAX, POOL_AVG, POOL_ADAPTIVE };

/* Window bounds along one dim: [lo[o], hi[o]) clipped to [0, in). */
static void pool_bounds(int kind, int64_t in, int64_t out, int64_t k, int64_t s, int64_t p,
                        int64_t *lo, int64_t *hi) {
  for (int64_t o = 0; o < out; o++) {
    int64_t a, e;
    if (kind == POOL_ADAPTIVE) {
      a = o * in / out, e = cdiv((o + 1) * in, out);
    } else {
      a = o * s - p, e = a + k;
    }
    lo[o] = max64(a, 0), hi[o] = min64(e, in);
  }
}

typedef struct {
  int kind;
  int64_t H, W, Ho, Wo;
  const int64_t *hs, *he, *ws, *we; /* {Ho}, {Ho}, {Wo}, {Wo} */
  double div;                       /* avg_pool: kh*kw; 0: the window's area */
  const float *x, *dy;
  float *y, *dx;
  int64_t *idx; /* max: per output, the index of the max in its plane */
} pool_job;

static void pool_fwd_planes(int64_t p0, int64_t p1, void *ud) {
  const pool_job *J = ud;
  for (int64_t p = p0; p < p1; p++) {
    const float *xp = J->x + p * J->H * J->W;
    float *yp = J->y + p * J->Ho * J->Wo;
    int64_t *ip = J->idx ? J->idx + p * J->Ho * J->Wo : NULL;
    for (int64_t u = 0; u < J->Ho; u++)
      for (int64_t v = 0; v < J->Wo; v++) {
        int64_t q = u * J->Wo + v;
        if (J->kind == POOL_MAX) {
          float m = -INFINITY;
          int64_t at = J->hs[u] * J->W + J->ws[v];
          for (int64_t h = J->hs[u]; h < J->he[u]; h++)
            for (int64_t w = J->ws[v]; w < J->we[v]; w++) {
              float e = xp[h * J->W + w];
              if (e > m || (e != e && m == m)) m = e, at = h * J->W + w;
            }
          yp[q] = m, ip[q] = at;
        } else {
          double s = 0;
          for (int64_t h = J->hs[u]; h < J->he[u]; h++)
            for (int64_t w = J->ws[v]; w < J->we[v]; w++) s += xp[h * J->W + w];
          double d = J->div ? J->div : (double)((J->he[u] - J->hs[u]) * (J->we[v] - J->ws[v]));
          yp[q] = (float)(s / d);
        }
      }
  }
}

/* dx (zeroed by the caller) of planes [p0, p1). */
static void pool_bwd_planes(int64_t p0, int64_t p1, void *ud) {
  const pool_job *J = ud;
  for (int64_t p = p0; p < p1; p++) {
    float *dxp = J->dx + p * J->H * J->W;
    const float *gp = J->dy + p * J->Ho * J->Wo;
    const int64_t *ip = J->idx ? J->idx + p * J->Ho * J->Wo : NULL;
    for (int64_t u = 0; u < J->Ho; u++)
      for (int64_t v = 0; v < J->Wo; v++) {
        int64_t q = u * J->Wo + v;
        if (J->kind == POOL_MAX) {
          dxp[ip[q]] += gp[q];
          continue;
        }
        double d = J->div ? J->div : (double)((J->he[u] - J->hs[u]) * (J->we[v] - J->ws[v]));
        float gv = (float)(gp[q] / d);
        for (int64_t h = J->hs[u]; h < J->he[u]; h++)
          for (int64_t w = J->ws[v]; w < J->we[v]; w++) dxp[h * J->W + w] += gv;
      }
  }
}

/* iarg of a pool node: kind, kh, kw, sh, sw, ph, pw, Ho, Wo. */
typedef struct {
  int64_t kind, kh, kw, sh, sw, ph, pw, Ho, Wo;
} pool_geom;

/* Runs job J (fwd: x, y and idx set; bwd: dy, dx and idx set) for the
** planes of a tensor shaped like x, allocating and freeing the bounds. */
static glia_status pool_run(glia_ctx *G, const char *name, const pool_geom *pg,
                            const glia_tensor *x, pool_job *J, bool fwd) {
  int nd = x->ndim;
  J->kind = (int)pg->kind;
  J->H = x->size[nd - 2], J->W = x->size[nd - 1], J->Ho = pg->Ho, J->Wo = pg->Wo;
  J->div = pg->kind == POOL_AVG ? (double)pg->kh * (double)pg->kw : 0;
  size_t bytes = (size_t)(2 * (J->Ho + J->Wo)) * sizeof(int64_t);
  int64_t *bd = glia_malloc(G, bytes ? bytes : 1);
  if (!bd) return glia_fail_nomem(G, bytes, name);
  pool_bounds(J->kind, J->H, J->Ho, pg->kh, pg->sh, pg->ph, bd, bd + J->Ho);
  pool_bounds(J->kind, J->W, J->Wo, pg->kw, pg->sw, pg->pw, bd + 2 * J->Ho,
              bd + 2 * J->Ho + J->Wo);
  J->hs = bd, J->he = bd + J->Ho, J->ws = bd + 2 * J->Ho, J->we = bd + 2 * J->Ho + J->Wo;
  int64_t plane = J->H * J->W, planes = plane > 0 ? glia_tensor_numel(x) / plane : 0;
  int64_t work = max64(J->H * J->W, J->Ho * J->Wo);
  glia_parallel_for(G, planes, glia_grain_items(work), fwd ? pool_fwd_planes : pool_bwd_planes, J);
  free(bd);
  return GLIA_OK;
}

static const char *const pool_names[] = {"glia.max_pool2d", "glia.avg_pool2d",
                                         "glia.adaptive_avg_pool2d"};

/* Inputs: x. Saved: the max indices (max pool); iarg: pool_geom. */
static glia_status pool_bwd(glia_ctx *G, glia_node *n, glia_tensor *gout, glia_tensor **din) {
  pool_geom pg;
  memcpy(&pg, n->iarg, sizeof pg);
  glia_tensor *idx = NULL, *dy, *x = n->input[0];
  if (pg.kind == POOL_MAX) TRY(glia_node_saved(G, n, 0, &idx));
  TRY(glia_tensor_contiguous_as(G, gout, GLIA_DTYPE_F32, &dy));
  glia_status st = glia_tensor_zeros(G, GLIA_DTYPE_F32, x->ndim, x->size, &din[0]);
  if (st == GLIA_OK) {
    pool_job J = {.dy = (const float *)glia_ptr(dy), .dx = (float *)glia_ptr(din[0]),
                  .idx = idx ? (int64_t *)glia_ptr(idx) : NULL};
    st = pool_run(G, pool_names[pg.kind], &pg, x, &J, false);
  }
  glia_tensor_release(dy);
  return st;
}

static glia_status pool2d(glia_ctx *G, const pool_geom *pg0, glia_tensor *x, glia_tensor **out) {
  pool_geom pg = *pg0;
  const char *name = pool_names[pg.kind];
  TRY(glia_check_f32(G, name, "input", x));
  if (x->ndim != 3 && x->ndim != 4)
    return glia_fail(G, GLIA_ESHAPE, "%s: expected input {B,C,H,W} or {C,H,W}, got %s", name,
                     glia_shape_str(x));
  int nd = x->ndim;
  int64_t H = x->size[nd - 2], W = x->size[nd - 1];
  if (pg.kind == POOL_ADAPTIVE) {
    if (pg.Ho < 1 || pg.Wo < 1)
      return glia_fail(G, GLIA_EARG, "%s: output size must be >= 1, got {%lld,%lld}", name,
                       (long long)pg.Ho, (long long)pg.Wo);
    if (H < 1 || W < 1)
      return glia_fail(G, GLIA_ESHAPE, "%s: input %s has an empty plane", name,
                       glia_shape_str(x));
  } else {
    for (int k = 0; k < 2; k++) {
      int64_t kk = k ? pg.kw : pg.kh, s = k ? pg.sw : pg.sh, p = k ? pg.pw : pg.ph;
      if (kk < 1)
        return glia_fail(G, GLIA_EARG, "%s: kernel size must be >= 1, got %lld", name,
                         (long long)kk);
      if (s < 1)
        return glia_fail(G, GLIA_EARG, "%s: stride must be >= 1, got %lld", name, (long long)s);
      if (p < 0 || p > kk / 2)
        return glia_fail(G, GLIA_EARG,
                         "%s: padding must be in [0, kernel/2], got %lld for kernel %lld", name,
                         (long long)p, (long long)kk);
    }
    pg.Ho = out_len(H, pg.kh, pg.sh, pg.ph, 1), pg.Wo = out_len(W, pg.kw, pg.sw, pg.pw, 1);
    if (pg.Ho < 1 || pg.Wo < 1)
      return glia_fail(G, GLIA_ESHAPE,
                       "%s: kernel {%lld,%lld} larger than the padded input %s "
                       "(padding {%lld,%lld})",
                       name, (long long)pg.kh, (long long)pg.kw, glia_shape_str(x),
                       (long long)pg.ph, (long long)pg.pw);
  }
  int64_t ysize[4];
  memcpy(ysize, x->size, sizeof ysize);
  ysize[nd - 2] = pg.Ho, ysize[nd - 1] = pg.Wo;
  glia_tensor *xc = NULL, *y = NULL, *idx = NULL;
  glia_status st = glia_tensor_contiguous_as(G, x, GLIA_DTYPE_F32, &xc);
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_F32, nd, ysize, &y);
  if (st == GLIA_OK && pg.kind == POOL_MAX)
    st = glia_tensor_new(G, GLIA_DTYPE_I64, nd, ysize, &idx);
  if (st == GLIA_OK) {
    pool_job J = {.x = (const float *)glia_ptr(xc), .y = (float *)glia_ptr(y),
                  .idx = idx ? (int64_t *)glia_ptr(idx) : NULL};
    st = pool_run(G, name, &pg, xc, &J, true);
  }
  if (st == GLIA_OK) {
    glia_node *node = glia_node_begin(G, name, pool_bwd, 1, &x, &st);
    if (node) {
      _Static_assert(sizeof(pool_geom) <= sizeof node->iarg, "the geometry fits in iarg");
      memcpy(node->iarg, &pg, sizeof pg);
      if (idx) st = glia_node_save(G, node, idx);
      st = glia_node_end(node, st, y);
    }
  }
  glia_tensor_release(xc);
  glia_tensor_release(idx);
  return glia_hand_out(st, y, out);
}

/* ========================================================= registry */

/* stride, padding and dilation from args[3..5], as pairs. */
static glia_status conv_pairs(glia_ctx *G, const char *name, const glia_value *args, int64_t *s,
                              int64_t *p, int64_t *d) {
  TRY(pair_arg(G, name, "stride", &args[3], 1, s));
  TRY(pair_arg(G, name, "padding", &args[4], 0, p));
  return pair_arg(G, name, "dilation", &args[5], 1, d);
}

/* conv2d(x, w [, bias [, stride [, padding [, dilation [, groups]]]]]) with
** stride, padding, dilation each one integer or {h, w}. */
static glia_status op_conv2d(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                             glia_value *outs) {
  (void)nargs;
  int64_t s[2], p[2], d[2];
  TRY(conv_pairs(G, "glia.conv2d", args, s, p, d));
  glia_tensor *r;
  TRY(glia_conv2d(G, args[0].u.t, args[1].u.t, arg_t(&args[2]), s, p, d, arg_int(&args[6], 1), &r));
  return out1(nouts, outs, r);
}

/* conv1d(x, w [, bias [, stride [, padding [, dilation [, groups]]]]]) */
static glia_status op_conv1d(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                             glia_value *outs) {
  (void)nargs;
  const char *name = "glia.conv1d";
  int64_t s[2], p[2], d[2];
  TRY(conv_pairs(G, name, args, s, p, d));
  if (s[0] != s[1] || p[0] != p[1] || d[0] != d[1])
    return glia_fail(G, GLIA_EARG, "%s: stride, padding and dilation are single numbers", name);
  glia_tensor *r;
  TRY(conv1d(G, args[0].u.t, args[1].u.t, arg_t(&args[2]), s[0], p[0], d[0],
             arg_int(&args[6], 1), &r));
  return out1(nouts, outs, r);
}

/* max_pool2d / avg_pool2d(x, kernel [, stride [, padding]]): stride
** defaults to the kernel, padding to 0. */
static glia_status op_pool(glia_ctx *G, int kind, glia_value *args, int *nouts,
                           glia_value *outs) {
  const char *name = pool_names[kind];
  int64_t k[2], s[2], p[2];
  TRY(pair_arg(G, name, "kernel size", &args[1], 0, k));
  TRY(pair_arg(G, name, "stride", &args[2], -1, s));
  TRY(pair_arg(G, name, "padding", &args[3], 0, p));
  if (s[0] == -1 && s[1] == -1 && !(args[2].kind == GLIA_VAL_INTS && args[2].u.ints.n))
    s[0] = k[0], s[1] = k[1]; /* stride left out */
  pool_geom pg = {kind, k[0], k[1], s[0], s[1], p[0], p[1], 0, 0};
  glia_tensor *r;
  TRY(pool2d(G, &pg, args[0].u.t, &r));
  return out1(nouts, outs, r);
}

static glia_status op_max_pool2d(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                 glia_value *outs) {
  (void)nargs;
  return op_pool(G, POOL_MAX, args, nouts, outs);
}

static glia_status op_avg_pool2d(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                 glia_value *outs) {
  (void)nargs;
  return op_pool(G, POOL_AVG, args, nouts, outs);
}

/* adaptive_avg_pool2d(x, out_size): out_size one integer or {Ho, Wo}. */
static glia_status op_adaptive_avg_pool2d(glia_ctx *G, int nargs, glia_value *args,
                                          int *nouts, glia_value *outs) {
  (void)nargs;
  int64_t o[2];
  TRY(pair_arg(G, pool_names[POOL_ADAPTIVE], "output size", &args[1], 0, o));
  pool_geom pg = {POOL_ADAPTIVE, 0, 0, 0, 0, 0, 0, o[0], o[1]};
  glia_tensor *r;
  TRY(pool2d(G, &pg, args[0].u.t, &r));
  return out1(nouts, outs, r);
}

const glia_op glia_ops_conv[] = {
    {"conv2d", "TTt|IIIi", op_conv2d, 0},
    {"conv1d", "TTt|IIIi", op_conv1d, 0},
    {"max_pool2d", "TI|II", op_max_pool2d, 0},
    {"avg_pool2d", "TI|II", op_avg_pool2d, 0},
    {"adaptive_avg_pool2d", "TI", op_adaptive_avg_pool2d, 0},
    {NULL, NULL, NULL, 0},
};
