/*
** ops/linear_attention.c -- ReLU-kernel linear attention (the "simplified
** linear attention" of SLAB, Guo et al. 2024), forward and backward. Op:
** linear_attention (differentiable).
**
** Shape letters: B batch, H heads, N query rows, M key rows, D head dim of
** q and k, E head dim of v. q {B,H,N,D}, k {B,H,M,D}, v {B,H,M,E}; out
** {B,H,N,E}. q, k and v have the same number of heads (no grouped k/v).
**
** What it computes, per (batch, head), with Qr = relu(q), Kr = relu(k):
**
**   A = Kr^T v {D,E},  s = sum_j Kr_j {D},  den_i = Qr_i . s + eps,
**   out_i = (Qr_i A) / den_i
**       = sum_j (Qr_i . Kr_j) v_j / (sum_j Qr_i . Kr_j + eps)
**
** in the linear association order: cost O((N + M) D E), extra memory
** O((N + M) D + D E) per running head, never an N x M matrix. v does not
** pass through the ReLU; there is no softmax scale. A query row whose Qr is
** all zero has den = eps and output 0 (no NaN).
**
** Backward, with Y = out, dnum = dY / den, dden = -rowsum(dY o Y) / den:
**
**   dQr = dnum A^T + dden s^T,   dA = Qr^T dnum,   ds = Qr^T dden,
**   dKr = v dA^T + 1 ds^T,       dv = Kr dA,
**   dq = dQr o [q > 0],          dk = dKr o [k > 0]
**
** (the ReLU derivative at 0 is taken as 0). Rows whose Qr is all zero get
** dnum = dden = 0: their true contribution to dA and ds is 0 and their dq
** is masked anyway, while dY / eps could overflow to inf and make 0 * inf.
**
** How it runs: the B*H heads are split into contiguous ranges, one per pool
** thread; each head is computed start to finish by one thread with its own
** scratch (relu'd copies of its q and k rows, A, s), its products through
** OpenBLAS sgemm run single-threaded. A head's arithmetic does not depend
** on which thread runs it, so results are the same bits for any thread
** count. Backward recomputes Qr, Kr, A, s and den (cheap next to the
** products) and saves only q, k, v and out.
*/
#include "glia_impl.h"
#include "ops.h"

#include <math.h>

/* Below this many flops (~0.1 ms on one core) a call stays on the calling
** thread: waking the pool would cost more than it gains. */
#define INLINE_FLOPS (1 << 22)

/* ======================================================== the plan */

/* One operand as the kernels read it: rows contiguous in the last dim, any
** batch/head/row strides (the BLAS leading dim is the row stride). */
typedef struct {
  glia_tensor *t; /* the input retained, or a contiguous copy; owned */
  const float *p;
  int64_t sb, sh, ld;
} rows_view;

typedef struct {
  int64_t B, H, N, M, D, E;
  float eps;
  rows_view q, k, v;
} la_plan;

static inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

/* Takes x {B,H,rows,cols} as an operand, copying it only when its rows are
** not contiguous. */
static glia_status rows_view_get(glia_ctx *G, glia_tensor *x, rows_view *o) {
  int64_t rows = x->size[2], cols = x->size[3];
  bool ok = (cols <= 1 || x->stride[3] == 1) && (rows <= 1 || x->stride[2] >= cols);
  if (ok) o->t = glia_tensor_retain(x);
  else TRY(glia_tensor_contiguous_as(G, x, GLIA_DTYPE_F32, &o->t));
  o->p = (const float *)glia_ptr(o->t);
  o->sb = o->t->stride[0];
  o->sh = o->t->stride[1];
  o->ld = rows <= 1 ? imax(cols, 1) : imax(o->t->stride[2], 1);
  return GLIA_OK;
}

static const float *head_of(const rows_view *o, int64_t b, int64_t h) {
  return o->p + b * o->sb + h * o->sh;
}

static void plan_release(la_plan *p) {
  glia_tensor_release(p->q.t);
  glia_tensor_release(p->k.t);
  glia_tensor_release(p->v.t);
  p->q.t = p->k.t = p->v.t = NULL;
}

static glia_status plan_new(glia_ctx *G, const char *name, glia_tensor *q, glia_tensor *k,
                            glia_tensor *v, double eps, la_plan *p) {
  memset(p, 0, sizeof *p);
  TRY(glia_check_qkv4(G, name, q, k, v));
  const char *what = NULL;
  if (k->size[0] != q->size[0] || v->size[0] != q->size[0]) what = "batch sizes differ";
  else if (k->size[1] != q->size[1] || v->size[1] != q->size[1])
    what = "head counts differ (q, k and v need the same heads)";
  else if (k->size[3] != q->size[3]) what = "q and k head dims differ";
  else if (k->size[2] != v->size[2]) what = "k and v lengths differ";
  if (what)
    return glia_fail(G, GLIA_ESHAPE, "%s: %s, q %s, k %s, v %s", name, what, glia_shape_str(q),
                     glia_shape_str(k), glia_shape_str(v));
  if (!(eps > 0) || !isfinite(eps) || (float)eps == 0)
    return glia_fail(G, GLIA_EARG, "%s: eps must be a positive finite number, got %g", name,
                     eps);
  p->B = q->size[0];
  p->H = q->size[1];
  p->N = q->size[2];
  p->M = k->size[2];
  p->D = q->size[3];
  p->E = v->size[3];
  p->eps = (float)eps;
  glia_status st = rows_view_get(G, q, &p->q);
  if (st == GLIA_OK) st = rows_view_get(G, k, &p->k);
  if (st == GLIA_OK) st = rows_view_get(G, v, &p->v);
  if (st != GLIA_OK) plan_release(p);
  return st;
}

/* ============================================================ BLAS */

/* C {m,n} (row stride ldc) = alpha op(A) op(B) for row-major operands;
** an empty inner dim gives zeros (BLAS would reject the leading dims). */
static void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                 const float *b, int64_t ldb, float *c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; i++) memset(c + i * ldc, 0, (size_t)n * sizeof *c);
    return;
  }
  glia_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
             (int)m, (int)n, (int)k, 1.0f, a, (int)lda, b, (int)ldb, 0.0f, c, (int)ldc);
}

/* ====================================================== vector loops */

/* Row loops over whole vectors, then a scalar tail; each element sees the
** same operations in the same order either way. (gcc -O2 would leave the
** plain loops scalar: it does not version them for aliasing.) */
#define VL GLIA_VL
typedef glia_vf vf;
typedef int32_t vi __attribute__((vector_size(VL * sizeof(int32_t))));

static inline void vstoreu(float *p, vf x) { memcpy(p, &x, sizeof x); }
static inline vf vsplat(float x) { return (vf){0} + x; }

/* y = relu(x) over n floats */
static void relu_row(float *y, const float *x, int64_t n) {
  int64_t i = 0;
  for (; i + VL <= n; i += VL) {
    vf v = glia_vloadu(x + i);
    vstoreu(y + i, (vf)((vi)v & (v > 0)));
  }
  for (; i < n; i++) y[i] = x[i] > 0 ? x[i] : 0.0f;
}

/* acc += a * x over n floats */
static void add_scaled(float *acc, const float *x, float a, int64_t n) {
  int64_t i = 0;
  for (; i + VL <= n; i += VL) vstoreu(acc + i, glia_vloadu(acc + i) + vsplat(a) * glia_vloadu(x + i));
  for (; i < n; i++) acc[i] += a * x[i];
}

/* y = x / d over n floats */
static void div_row(float *y, const float *x, float d, int64_t n) {
  int64_t i = 0;
  for (; i + VL <= n; i += VL) vstoreu(y + i, glia_vloadu(x + i) / vsplat(d));
  for (; i < n; i++) y[i] = x[i] / d;
}

/* g = r > 0 ? g + a * x : 0 over n floats: a gradient through the ReLU
** whose output r is, plus a rank-one term. */
static void relu_grad_row(float *g, const float *r, float a, const float *x, int64_t n) {
  int64_t i = 0;
  for (; i + VL <= n; i += VL) {
    vf v = glia_vloadu(g + i) + vsplat(a) * glia_vloadu(x + i);
    vstoreu(g + i, (vf)((vi)v & (glia_vloadu(r + i) > 0)));
  }
  for (; i < n; i++) g[i] = r[i] > 0 ? g[i] + a * x[i] : 0.0f;
}

/* dst {rows,D} contiguous = relu(src rows ld apart). */
static void relu_rows(const float *src, int64_t ld, int64_t rows, int64_t D, float *dst) {
  for (int64_t r = 0; r < rows; r++) relu_row(dst + r * D, src + r * ld, D);
}

/* ===================================================== head kernels */

/* Per-thread scratch of one head: the relu'd rows, A, s (and, backward
** only, dnum, dden, dA, ds). */
typedef struct {
  float *qr, *kr, *A, *s;
  float *dnum, *dden, *dA, *ds;
} head_ws;

static size_t ws_floats(const la_plan *p, bool backward) {
  size_t n = (size_t)(p->N * p->D + p->M * p->D + p->D * p->E + p->D);
  if (backward) n += (size_t)(p->N * p->E + p->N + p->D * p->E + p->D);
  return (n + 15) & ~(size_t)15; /* keep every slot 64-byte aligned */
}

static head_ws ws_carve(const la_plan *p, float *base, bool backward) {
  head_ws w = {0};
  w.qr = base;
  w.kr = w.qr + p->N * p->D;
  w.A = w.kr + p->M * p->D;
  w.s = w.A + p->D * p->E;
  if (backward) {
    w.dnum = w.s + p->D;
    w.dden = w.dnum + p->N * p->E;
    w.dA = w.dden + p->N;
    w.ds = w.dA + p->D * p->E;
  }
  return w;
}

/* Qr, Kr, s = colsum(Kr) and A = Kr^T v of head (b, h): the same code, in
** the same order, for forward and backward. */
static void head_prepare(const la_plan *p, int64_t b, int64_t h, head_ws *w) {
  int64_t N = p->N, M = p->M, D = p->D, E = p->E;
  relu_rows(head_of(&p->q, b, h), p->q.ld, N, D, w->qr);
  relu_rows(head_of(&p->k, b, h), p->k.ld, M, D, w->kr);
  memset(w->s, 0, (size_t)D * sizeof *w->s);
  for (int64_t j = 0; j < M; j++) add_scaled(w->s, w->kr + j * D, 1.0f, D);
  gemm(true, false, D, E, M, w->kr, D, head_of(&p->v, b, h), p->v.ld, w->A, E);
}

/* den_i = Qr_i . s + eps */
static float row_den(const la_plan *p, const head_ws *w, int64_t i) {
  return glia_dot(w->qr + i * p->D, w->s, p->D) + p->eps;
}

/* out {N,E} contiguous = (Qr A) / den, rowwise. */
static void head_forward(const la_plan *p, int64_t b, int64_t h, head_ws *w, float *out) {
  int64_t N = p->N, D = p->D, E = p->E;
  head_prepare(p, b, h, w);
  gemm(false, false, N, E, D, w->qr, D, w->A, E, out, E);
  for (int64_t i = 0; i < N; i++) div_row(out + i * E, out + i * E, row_den(p, w, i), E);
}

/* Gradients of head (b, h) into dq {N,D}, dk {M,D}, dv {M,E} (contiguous)
** from dY (rows ld_dy apart) and the saved out Y {N,E}. */
static void head_backward(const la_plan *p, int64_t b, int64_t h, head_ws *w, const float *dY,
                          int64_t ld_dy, const float *Y, float *dq, float *dk, float *dv) {
  int64_t N = p->N, M = p->M, D = p->D, E = p->E;
  head_prepare(p, b, h, w);
  for (int64_t i = 0; i < N; i++) {
    const float *qr = w->qr + i * D, *g = dY + i * ld_dy, *y = Y + i * E;
    float *dn = w->dnum + i * E;
    float mass;
    GLIA_LANE_SUM(mass, D, c, qr[c]); /* >= 0, and 0 only when all are */
    if (mass == 0) { /* den = eps, out = 0: nothing flows back (header) */
      memset(dn, 0, (size_t)E * sizeof *dn);
      w->dden[i] = 0;
      continue;
    }
    float den = row_den(p, w, i);
    div_row(dn, g, den, E);
    w->dden[i] = -glia_dot(g, y, E) / den;
  }
  /* dQr = dnum A^T + dden s^T, masked by q > 0 */
  gemm(false, true, N, D, E, w->dnum, E, w->A, E, dq, D);
  for (int64_t i = 0; i < N; i++) relu_grad_row(dq + i * D, w->qr + i * D, w->dden[i], w->s, D);
  /* dA = Qr^T dnum, ds = Qr^T dden */
  gemm(true, false, D, E, N, w->qr, D, w->dnum, E, w->dA, E);
  memset(w->ds, 0, (size_t)D * sizeof *w->ds);
  for (int64_t i = 0; i < N; i++) add_scaled(w->ds, w->qr + i * D, w->dden[i], D);
  /* dKr = v dA^T + 1 ds^T, masked by k > 0; dv = Kr dA */
  gemm(false, true, M, D, E, head_of(&p->v, b, h), p->v.ld, w->dA, E, dk, D);
  for (int64_t j = 0; j < M; j++) relu_grad_row(dk + j * D, w->kr + j * D, 1.0f, w->ds, D);
  gemm(false, false, M, E, D, w->kr, D, w->dA, E, dv, E);
}

/* ====================================================== threading */

typedef struct {
  const la_plan *p;
  float *ws;      /* nslots * per floats */
  size_t per;
  int nslots;
  bool backward;
  float *out;              /* forward: {B,H,N,E} */
  rows_view dy;            /* backward: dout */
  const float *y;          /* backward: saved out {B,H,N,E} */
  float *dq, *dk, *dv;     /* backward: contiguous gradients */
} la_job;

/* Slot `slot` owns heads [slot*BH/nslots, (slot+1)*BH/nslots). */
static void run_slots(int64_t begin, int64_t end, void *ud) {
  const la_job *j = ud;
  const la_plan *p = j->p;
  int64_t BH = p->B * p->H;
  for (int64_t slot = begin; slot < end; slot++) {
    head_ws w = ws_carve(p, j->ws + j->per * (size_t)slot, j->backward);
    for (int64_t bh = slot * BH / j->nslots; bh < (slot + 1) * BH / j->nslots; bh++) {
      int64_t b = bh / p->H, h = bh % p->H;
      if (!j->backward) {
        head_forward(p, b, h, &w, j->out + bh * p->N * p->E);
      } else {
        const float *dy = j->dy.p + b * j->dy.sb + h * j->dy.sh;
        head_backward(p, b, h, &w, dy, j->dy.ld, j->y + bh * p->N * p->E,
                      j->dq + bh * p->N * p->D, j->dk + bh * p->M * p->D,
                      j->dv + bh * p->M * p->E);
      }
    }
  }
}

/* Runs the job over every head. OpenBLAS stays single-threaded for the
** whole call, also on one slot, so that a head's products give the same
** bits whatever the pool's size. */
static glia_status run_job(glia_ctx *G, la_job *j) {
  const la_plan *p = j->p;
  int64_t BH = p->B * p->H;
  double flops = 2.0 * (double)BH * (double)(p->N + p->M) * (double)p->D * (double)p->E *
                 (j->backward ? 3 : 1);
  j->nslots = flops < INLINE_FLOPS ? 1 : (int)imax(1, BH < G->nthreads ? BH : G->nthreads);
  j->per = ws_floats(p, j->backward);
  size_t bytes = j->per * (size_t)j->nslots * sizeof(float);
  j->ws = glia_alloc(G, bytes ? bytes : 1);
  if (!j->ws) return glia_fail_nomem(G, bytes, "glia.linear_attention scratch");
  glia_pool_blas_items(G, j->nslots, run_slots, j);
  glia_free(G, j->ws, bytes ? bytes : 1);
  return GLIA_OK;
}

/* ===================================================== the op in C */

static glia_status linear_attention_bwd(glia_ctx *G, glia_node *n, glia_tensor *dout,
                                        glia_tensor **din);

static glia_status linear_attention(glia_ctx *G, glia_tensor *q, glia_tensor *k, glia_tensor *v,
                                    double eps, glia_tensor **out) {
  const char *name = "glia.linear_attention";
  la_plan p;
  TRY(plan_new(G, name, q, k, v, eps, &p));
  int64_t osz[4] = {p.B, p.H, p.N, p.E};
  glia_tensor *r = NULL;
  glia_status st = glia_tensor_new(G, GLIA_DTYPE_F32, 4, osz, &r);
  if (st == GLIA_OK) {
    la_job j = {.p = &p, .out = (float *)glia_ptr(r)};
    st = run_job(G, &j);
  }
  plan_release(&p);
  if (st == GLIA_OK) {
    glia_tensor *in[3] = {q, k, v};
    glia_node *node = glia_node_begin(G, name, linear_attention_bwd, 3, in, &st);
    if (node) {
      node->farg[0] = eps;
      glia_tensor *save[4] = {q, k, v, r};
      for (int i = 0; i < 4 && st == GLIA_OK; i++) st = glia_node_save(G, node, save[i]);
      st = glia_node_end(node, st, r);
    }
  }
  return glia_hand_out(st, r, out);
}

/* dq, dk, dv from the saved q, k, v and out. */
static glia_status linear_attention_bwd(glia_ctx *G, glia_node *n, glia_tensor *dout,
                                        glia_tensor **din) {
  glia_tensor *sv[4];
  for (int i = 0; i < 4; i++) TRY(glia_node_saved(G, n, i, &sv[i]));
  la_plan p;
  TRY(plan_new(G, n->name, sv[0], sv[1], sv[2], n->farg[0], &p));
  la_job j = {.p = &p, .backward = true, .y = (const float *)glia_ptr(sv[3])};
  glia_tensor *g[3] = {NULL, NULL, NULL};
  glia_status st = rows_view_get(G, dout, &j.dy);
  for (int i = 0; i < 3 && st == GLIA_OK; i++)
    st = glia_tensor_new(G, GLIA_DTYPE_F32, 4, sv[i]->size, &g[i]);
  if (st == GLIA_OK) {
    j.dq = (float *)glia_ptr(g[0]);
    j.dk = (float *)glia_ptr(g[1]);
    j.dv = (float *)glia_ptr(g[2]);
    st = run_job(G, &j);
  }
  glia_tensor_release(j.dy.t);
  plan_release(&p);
  for (int i = 0; i < 3; i++) {
    if (st == GLIA_OK && n->needs[i]) din[i] = g[i];
    else glia_tensor_release(g[i]);
  }
  return st;
}

/* ================================================== registry wrapper */

/* linear_attention(q, k, v [, eps]) */
static glia_status op_linear_attention(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                       glia_value *outs) {
  (void)nargs;
  glia_tensor *r;
  TRY(linear_attention(G, args[0].u.t, args[1].u.t, args[2].u.t, arg_num(&args[3], 1e-6), &r));
  return out1(nouts, outs, r);
}

const glia_op glia_ops_linear_attention[] = {
    {"linear_attention", "TTT|n", op_linear_attention, 0},
    {NULL, NULL, NULL, 0},
};
