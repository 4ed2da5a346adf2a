/*
** ops/matmul.c -- matrix products: matmul (NumPy semantics), addmm and
** linear, forward and backward: OpenBLAS cblas_sgemm, and for products
** with one row or column a matrix-vector kernel of our own (see below).
**
** Every product here is one batched GEMM problem
**     C[b] = alpha * A[b] B[b] + beta * C[b]      A[b]: m x k, B[b]: k x n
** over a batch shape that the operands broadcast to (stride 0 where an
** operand is broadcast). Operands are described as strided matrix views
** (mview) of tensors, never copied when a transpose flag and a leading
** dimension can express their strides; a view that BLAS cannot read (e.g.
** an expanded matrix) is made contiguous first. Backward is the same
** problem with other views: dA = G B^T, dB = A^T G, where a gradient whose
** operand was broadcast over a batch dim accumulates over that dim (beta 1
** after the first visit), so it arrives already in the input's shape.
**
** Shape letters: N rows of a, K the inner size, M columns of b; batch dims
** lead. The invariant: an mview handed to gemm_run is BLAS-readable
** (blas_layout succeeds on it), which operand_of guarantees.
*/
#include "glia_impl.h"
#include "ops.h"

#include <limits.h>

/* ================================================= strided matrices */

/* Element [b][i][j] of a batched matrix sits at
** p + sum_d idx_d * bs[d] + i * rs + j * cs   (in floats). */
typedef struct {
  float *p;
  int64_t rows, cols, rs, cs;
  int64_t bs[GLIA_MAX_DIMS]; /* per batch dim of the problem; 0 = broadcast */
} mview;

static mview mview_t(mview v) {
  int64_t r = v.rows, s = v.rs;
  v.rows = v.cols, v.rs = v.cs;
  v.cols = r, v.cs = s;
  return v;
}

/* A view of t as a batch of matrices aligned to the problem's nb batch dims
** (t's batch dims aligned right). has_rows/has_cols say whether t's last
** dims carry rows and columns: a 1-D a is one row {1,K}, a 1-D b one column
** {K,1}, and the result loses those dims. `trans` swaps rows and columns. */
static mview mview_of(glia_tensor *t, bool has_rows, bool has_cols, bool trans, int nb) {
  mview v;
  int nm = has_rows + has_cols, tb = t->ndim - nm;
  v.p = (float *)glia_ptr(t);
  v.rows = has_rows ? t->size[tb] : 1;
  v.rs = has_rows ? t->stride[tb] : 0;
  v.cols = has_cols ? t->size[t->ndim - 1] : 1;
  v.cs = has_cols ? t->stride[t->ndim - 1] : 0;
  for (int d = 0; d < nb; d++) {
    int td = d - (nb - tb);
    v.bs[d] = td >= 0 && t->size[td] != 1 ? t->stride[td] : 0;
  }
  return trans ? mview_t(v) : v;
}

/* How BLAS reads an r x c matrix with strides (rs, cs): row-major with
** leading dimension ld (NoTrans), or as the transpose of a row-major c x r
** matrix (Trans). A size-1 dim may have any stride. False when neither
** works (an expanded or overlapping matrix): the caller copies. */
static bool blas_layout(int64_t r, int64_t c, int64_t rs, int64_t cs, CBLAS_TRANSPOSE *tr,
                        int64_t *ld) {
  int64_t c1 = c > 1 ? c : 1, r1 = r > 1 ? r : 1;
  if (r == 0 || c == 0 || ((c <= 1 || cs == 1) && (r <= 1 || rs >= c1))) {
    *tr = CblasNoTrans;
    *ld = r <= 1 || c == 0 ? c1 : rs;
    return true;
  }
  if ((r <= 1 || rs == 1) && (c <= 1 || cs >= r1)) {
    *tr = CblasTrans;
    *ld = c <= 1 ? r1 : cs;
    return true;
  }
  return false;
}

/* Sets *v to the view of t (see mview_of), first replacing t with a
** contiguous copy held in *hold when BLAS cannot read its strides. The
** caller releases *hold (NULL when no copy was made). */
static glia_status operand_of(glia_ctx *G, glia_tensor *t, bool has_rows, bool has_cols,
                              bool trans, int nb, mview *v, glia_tensor **hold) {
  CBLAS_TRANSPOSE tr;
  int64_t ld;
  *hold = NULL;
  *v = mview_of(t, has_rows, has_cols, trans, nb);
  if (blas_layout(v->rows, v->cols, v->rs, v->cs, &tr, &ld)) return GLIA_OK;
  TRY(glia_tensor_contiguous_as(G, t, GLIA_DTYPE_F32, hold));
  *v = mview_of(*hold, has_rows, has_cols, trans, nb);
  return GLIA_OK;
}

/* ========================================================= the GEMM */

typedef struct {
  glia_ctx *G;
  int nb;
  int64_t bsize[GLIA_MAX_DIMS], nbatch;
  int64_t m, n, k;
  float alpha, beta;
  mview a, b, c;
  CBLAS_TRANSPOSE ta, tb;
  int64_t lda, ldb, ldc;
  bool accumulates; /* c is broadcast over some batch dim */
} gemm_plan;

/* Element offsets of batch i in a, b, c; *first says whether this is the
** first batch writing its block of c (the others add to it). */
static void batch_offsets(const gemm_plan *P, int64_t i, int64_t *oa, int64_t *ob,
                          int64_t *oc, bool *first) {
  *oa = *ob = *oc = 0;
  *first = true;
  for (int d = P->nb - 1; d >= 0; d--) {
    int64_t x = i % P->bsize[d];
    i /= P->bsize[d];
    *oa += x * P->a.bs[d];
    *ob += x * P->b.bs[d];
    *oc += x * P->c.bs[d];
    if (P->c.bs[d] == 0 && x != 0) *first = false;
  }
}

/* C = beta C, without reading C when beta is 0 (it may hold NaNs). */
static void scale_c(const gemm_plan *P, float *c, float beta) {
  for (int64_t r = 0; r < P->m; r++)
    for (int64_t j = 0; j < P->n; j++)
      c[r * P->ldc + j] = beta == 0.0f ? 0.0f : beta * c[r * P->ldc + j];
}

/* ============================================ matrix-vector products */

/* A product with one row or one column of C is a matrix-vector product,
** bound by reading the matrix once: decoding's linear layers. When the
** matrix is read along its rows (linear's weight {out,in} times a token, or
** A {m,k} times a column), each output is a dot product and rowdot_rows
** below computes them, each thread of our pool taking a fixed run of rows.
** Against OpenBLAS's threaded sgemv it keeps the work on threads that are
** already spinning and adds the bias as it goes: the GPT decode step ran
** 10% faster on it than on sgemv, and 9% faster again once it read one row
** at a time (alternating runs; bench/ops.lua and bench/gemm_c.c
** decode_linears time the 16 layers of that step on both sides). Other
** layouts go to sgemv when the matrix has at least 2^17 elements (sgemv
** reads the matrix once where sgemm packs it first); below that sgemm is
** as fast or faster. The rows go to the pool only when each thread reads
** at least ROWDOT_GRAIN elements (256 KB): a matrix below twice that is
** read in about 1.6 us from L2 on one core, and splitting it rarely paid:
** a k = 1 ACM token (two dependent 256 KB products, bench/acm.lua) ran 6 us
** on one thread and 7 on two; 1024 x 256 and larger still split. */
#define GEMV_MIN_ELEMS ((int64_t)1 << 17)
#define ROWDOT_GRAIN (1 << 16) /* matrix elements per thread, at least */

/* y[r * incy] = alpha * (w[r,:] . x) + beta * y[r * incy] (y not read when
** beta is 0), w row-major with row stride ldw, x contiguous of k floats. */
typedef struct {
  const float *w, *x;
  float *y;
  const float *bias; /* added to y[r] (linear's bias), or NULL */
  int64_t rows, k, ldw, incy;
  float alpha, beta;
} rowdot;

/* Rows [r0, r1), one at a time: each row is one sequential stream, which
** the prefetchers follow best (4 rows interleaved ran 10% slower), summed by
** glia_dot in the same order whichever thread takes it: the bits do not
** depend on the thread count. */
static void rowdot_rows(int64_t r0, int64_t r1, void *ud) {
  const rowdot *d = ud;
  for (int64_t r = r0; r < r1; r++) {
    float *y = d->y + r * d->incy, v = d->alpha * glia_dot(d->w + r * d->ldw, d->x, d->k);
    if (d->bias) v += d->bias[r];
    *y = d->beta == 0.0f ? v : v + d->beta * *y;
  }
}

static void rowdot_run(glia_ctx *G, rowdot *d) {
  int64_t grain = ROWDOT_GRAIN / (d->k > 0 ? d->k : 1);
  glia_parallel_for(G, d->rows, grain > 0 ? grain : 1, rowdot_rows, d);
}

void glia_matvec(glia_ctx *G, const float *w, const float *x, const float *bias, float *y,
                 int64_t rows, int64_t k) {
  glia_matvec_ld(G, w, k, x, bias, y, rows, k);
}

void glia_matvec_ld(glia_ctx *G, const float *w, int64_t ldw, const float *x, const float *bias,
                    float *y, int64_t rows, int64_t k) {
  rowdot d = {.w = w, .x = x, .y = y, .bias = bias, .rows = rows, .k = k, .ldw = ldw, .incy = 1,
              .alpha = 1.0f};
  rowdot_run(G, &d);
}

void glia_pool_blas_items(glia_ctx *G, int64_t n, void (*fn)(int64_t, int64_t, void *),
                          void *ud) {
  glia_blas_set_threads(1);
  if (n == 1 || G->nthreads < 2) fn(0, n, ud);
  else glia_parallel_for(G, n, 1, fn, ud);
  glia_blas_set_threads(G->nthreads);
}

/* linear(x, w, bias) of one contiguous row x with contiguous w and bias,
** straight into r: decoding's case, without a GEMM plan or a pass to copy
** the bias in first. False when the operands are not of that form. */
static bool linear_row(glia_ctx *G, glia_tensor *x, glia_tensor *w, glia_tensor *bias,
                       glia_tensor *r) {
  int64_t k = w->size[1];
  if (glia_tensor_numel(r) != w->size[0] || glia_tensor_numel(x) != k || /* one row of x */
      !glia_tensor_is_contiguous(x) ||
      !glia_tensor_is_contiguous(w) || (bias && !glia_tensor_is_contiguous(bias)))
    return false;
  glia_matvec(G, (const float *)glia_ptr(w), (const float *)glia_ptr(x),
              bias ? (const float *)glia_ptr(bias) : NULL, (float *)glia_ptr(r), w->size[0], k);
  return true;
}

/* The row-dot form of batch item (a, b, c), when its vector is contiguous:
** true when done. */
static bool gemv_rowdot(const gemm_plan *P, const float *a, const float *b, float *c,
                        float beta) {
  rowdot d = {.alpha = P->alpha, .beta = beta, .k = P->k};
  if (P->m == 1 && P->tb != CblasNoTrans && (P->ta == CblasNoTrans || P->lda == 1)) {
    d.w = b, d.ldw = P->ldb, d.rows = P->n, d.x = a, d.y = c, d.incy = 1;
  } else if (P->n == 1 && P->ta == CblasNoTrans && (P->tb != CblasNoTrans || P->ldb == 1)) {
    d.w = a, d.ldw = P->lda, d.rows = P->m, d.x = b, d.y = c, d.incy = P->ldc;
  } else {
    return false;
  }
  rowdot_run(P->G, &d);
  return true;
}

static void gemv_batch(const gemm_plan *P, const float *a, const float *b, float *c,
                       float beta) {
  if (beta == 0.0f) scale_c(P, c, 0.0f); /* some OpenBLAS versions read y at beta 0 */
  if (P->m == 1) { /* c^T = B^T a^T, a a row of k */
    int inca = P->ta == CblasNoTrans ? 1 : (int)P->lda;
    if (P->tb == CblasNoTrans)
      glia_sgemv(CblasRowMajor, CblasTrans, (int)P->k, (int)P->n, P->alpha, b, (int)P->ldb, a,
                  inca, beta, c, 1);
    else
      glia_sgemv(CblasRowMajor, CblasNoTrans, (int)P->n, (int)P->k, P->alpha, b, (int)P->ldb,
                  a, inca, beta, c, 1);
  } else { /* c = A b, b a column of k */
    int incb = P->tb == CblasNoTrans ? (int)P->ldb : 1;
    if (P->ta == CblasNoTrans)
      glia_sgemv(CblasRowMajor, CblasNoTrans, (int)P->m, (int)P->k, P->alpha, a, (int)P->lda,
                  b, incb, beta, c, (int)P->ldc);
    else
      glia_sgemv(CblasRowMajor, CblasTrans, (int)P->k, (int)P->m, P->alpha, a, (int)P->lda, b,
                  incb, beta, c, (int)P->ldc);
  }
}

static void gemm_batch(const gemm_plan *P, int64_t i) {
  int64_t oa, ob, oc;
  bool first;
  batch_offsets(P, i, &oa, &ob, &oc, &first);
  float beta = first ? P->beta : 1.0f;
  float *c = P->c.p + oc;
  if (P->k == 0) /* an empty sum */
    scale_c(P, c, beta);
  else if ((P->m == 1 || P->n == 1) && gemv_rowdot(P, P->a.p + oa, P->b.p + ob, c, beta))
    ;
  else if ((P->m == 1 || P->n == 1) && P->k * (P->m == 1 ? P->n : P->m) >= GEMV_MIN_ELEMS)
    gemv_batch(P, P->a.p + oa, P->b.p + ob, c, beta);
  else
    glia_sgemm(CblasRowMajor, P->ta, P->tb, (int)P->m, (int)P->n, (int)P->k, P->alpha,
                P->a.p + oa, (int)P->lda, P->b.p + ob, (int)P->ldb, beta, c, (int)P->ldc);
}

static void gemm_range(int64_t begin, int64_t end, void *ud) {
  for (int64_t i = begin; i < end; i++) gemm_batch(ud, i);
}

/* Folds the innermost batch dim into the rows of A and C (B broadcast over
** it, A and C rows continuing across it) or into the inner size (C
** broadcast over it: the batch sum becomes a longer dot product). */
static bool fold_last(gemm_plan *P) {
  int d = P->nb - 1;
  int64_t s = P->bsize[d];
  if (P->b.bs[d] == 0 && P->ta == CblasNoTrans && P->a.bs[d] == P->m * P->lda &&
      P->c.bs[d] == P->m * P->ldc && P->m * s <= INT_MAX) {
    P->m *= s;
  } else if (P->c.bs[d] == 0 && P->ta == CblasTrans && P->a.bs[d] == P->k * P->lda &&
             P->tb == CblasNoTrans && P->b.bs[d] == P->k * P->ldb && P->k * s <= INT_MAX) {
    P->k *= s;
  } else {
    return false;
  }
  P->nb--;
  return true;
}

/* Whether nbatch GEMMs split over nt threads keep every thread busy to
** within 1/8. Then one GEMM per thread beats one GEMM at a time on
** OpenBLAS's threads, by up to 2x for small or thin matrices (attention's
** per-head products) and evenly for large ones; with an uneven split
** (3 GEMMs on 2 threads) OpenBLAS's threads win. Measured with
** bench/ops.lua bmm_* on 2 cores. */
static bool balanced(int64_t nbatch, int nt) {
  int64_t per_thread = (nbatch + nt - 1) / nt;
  return nt > 1 && nbatch > 1 && per_thread * nt * 8 <= nbatch * 9;
}

/* C = alpha A B + beta C over the batch shape (nb, bsize), where every
** operand is BLAS-readable (see operand_of) and C does not overlap A or B.
** Fails only when a matrix exceeds BLAS's int sizes. */
static glia_status gemm_run(glia_ctx *G, const char *name, int nb, const int64_t *bsize,
                            double alpha, double beta, mview a, mview b, mview c) {
  gemm_plan P;
  CBLAS_TRANSPOSE tc;
  int64_t ldc;
  blas_layout(c.rows, c.cols, c.rs, c.cs, &tc, &ldc);
  if (tc == CblasTrans) { /* BLAS writes row-major C: compute C^T = B^T A^T */
    mview t = a;
    a = mview_t(b), b = mview_t(t), c = mview_t(c);
  }
  P.G = G;
  P.a = a, P.b = b, P.c = c;
  P.m = c.rows, P.n = c.cols, P.k = a.cols;
  P.alpha = (float)alpha, P.beta = (float)beta;
  blas_layout(a.rows, a.cols, a.rs, a.cs, &P.ta, &P.lda);
  blas_layout(b.rows, b.cols, b.rs, b.cs, &P.tb, &P.ldb);
  blas_layout(c.rows, c.cols, c.rs, c.cs, &tc, &P.ldc);
  /* keep the batch dims that are not 1; an empty batch computes nothing */
  P.nb = 0;
  P.nbatch = 1;
  for (int d = 0; d < nb; d++) {
    P.nbatch *= bsize[d];
    if (bsize[d] == 1) continue;
    P.bsize[P.nb] = bsize[d];
    P.a.bs[P.nb] = a.bs[d], P.b.bs[P.nb] = b.bs[d], P.c.bs[P.nb] = c.bs[d];
    P.nb++;
  }
  if (P.nbatch == 0 || P.m == 0 || P.n == 0) return GLIA_OK;
  if (P.m > INT_MAX || P.n > INT_MAX || P.k > INT_MAX || P.lda > INT_MAX ||
      P.ldb > INT_MAX || P.ldc > INT_MAX)
    return glia_fail(G, GLIA_ESHAPE, "%s: matrices too large for BLAS (%lld x %lld x %lld)",
                     name, (long long)P.m, (long long)P.k, (long long)P.n);
  while (P.nb > 0 && fold_last(&P)) P.nbatch /= P.bsize[P.nb];
  P.accumulates = false;
  for (int d = 0; d < P.nb; d++) P.accumulates |= P.c.bs[d] == 0;
  if (!P.accumulates && balanced(P.nbatch, G->nthreads))
    glia_pool_blas_items(G, P.nbatch, gemm_range, &P); /* one owner of the cores: our pool */
  else
    gemm_range(0, P.nbatch, &P);
  return GLIA_OK;
}

/* ============================================== shapes of a product */

typedef enum { MM_MATMUL, MM_ADDMM, MM_LINEAR } mm_kind;

static const char *const mm_names[] = {"glia.matmul", "glia.addmm", "glia.linear"};

/* The geometry of a @ b (for linear, b is the weight {out,in}, used
** transposed): which operand dims exist, the broadcast batch shape, the
** result's shape. */
typedef struct {
  bool a_rows, b_cols, b_trans;
  int nb;
  int64_t bsize[GLIA_MAX_DIMS];
  int out_ndim;
  int64_t out_size[GLIA_MAX_DIMS];
} mm_geom;

static glia_status mm_shape(glia_ctx *G, mm_kind kind, glia_tensor *a, glia_tensor *b,
                            mm_geom *g) {
  const char *name = mm_names[kind];
  if (a->dtype != GLIA_DTYPE_F32 || b->dtype != GLIA_DTYPE_F32)
    return glia_fail(G, GLIA_EDTYPE, "%s: expected f32 tensors, got %s %s x %s %s", name,
                     glia_dtype_name(a->dtype), glia_shape_str(a), glia_dtype_name(b->dtype),
                     glia_shape_str(b));
  if (a->ndim == 0 || b->ndim == 0)
    return glia_fail(G, GLIA_ESHAPE, "%s: operands must be at least 1-D, got %s x %s", name,
                     glia_shape_str(a), glia_shape_str(b));
  if (kind == MM_ADDMM && (a->ndim != 2 || b->ndim != 2))
    return glia_fail(G, GLIA_ESHAPE, "%s: expected 2-D matrices, got %s x %s", name,
                     glia_shape_str(a), glia_shape_str(b));
  if (kind == MM_LINEAR && b->ndim != 2)
    return glia_fail(G, GLIA_ESHAPE, "%s: weight must be 2-D {out,in}, got %s for input %s",
                     name, glia_shape_str(b), glia_shape_str(a));
  g->a_rows = a->ndim >= 2;
  g->b_cols = b->ndim >= 2; /* always, for linear's 2-D weight */
  g->b_trans = kind == MM_LINEAR;
  int ka = a->ndim - 1; /* a's inner dim; b's is its first matrix dim, or 1 for linear */
  int kb = kind == MM_LINEAR ? 1 : b->ndim >= 2 ? b->ndim - 2 : 0;
  if (a->size[ka] != b->size[kb])
    return glia_fail(G, GLIA_ESHAPE, "%s: size mismatch, %s x %s", name, glia_shape_str(a),
                     glia_shape_str(b));
  int nba = a->ndim - 1 - g->a_rows, nbb = g->b_trans ? 0 : b->ndim - 1 - g->b_cols;
  g->nb = nba > nbb ? nba : nbb;
  for (int d = 0; d < g->nb; d++) {
    int da = d - (g->nb - nba), db = d - (g->nb - nbb);
    int64_t sa = da >= 0 ? a->size[da] : 1, sb = db >= 0 ? b->size[db] : 1;
    if (sa != sb && sa != 1 && sb != 1)
      return glia_fail(G, GLIA_ESHAPE, "%s: batch dims do not broadcast, %s x %s", name,
                       glia_shape_str(a), glia_shape_str(b));
    g->bsize[d] = sa == 1 ? sb : sa;
  }
  memcpy(g->out_size, g->bsize, (size_t)g->nb * sizeof *g->bsize);
  g->out_ndim = g->nb;
  if (g->a_rows) g->out_size[g->out_ndim++] = a->size[a->ndim - 2];
  if (g->b_cols) g->out_size[g->out_ndim++] = b->size[g->b_trans ? 0 : b->ndim - 1];
  return GLIA_OK;
}

/* out = alpha * a @ b + beta * out over geometry g; out has g's result shape. */
static glia_status mm_run(glia_ctx *G, mm_kind kind, const mm_geom *g, glia_tensor *a,
                          glia_tensor *b, glia_tensor *out, double alpha, double beta) {
  mview va, vb;
  glia_tensor *ha = NULL, *hb = NULL;
  glia_status st = operand_of(G, a, g->a_rows, true, false, g->nb, &va, &ha);
  if (st == GLIA_OK) st = operand_of(G, b, true, g->b_cols, g->b_trans, g->nb, &vb, &hb);
  if (st == GLIA_OK)
    st = gemm_run(G, mm_names[kind], g->nb, g->bsize, alpha, beta, va, vb,
                  mview_of(out, g->a_rows, g->b_cols, false, g->nb));
  glia_tensor_release(ha);
  glia_tensor_release(hb);
  return st;
}

/* ======================================================== backward */

/* Column sums of a contiguous g {rows, cols}, threaded over columns: each
** column is summed in row order whatever the thread count. */
typedef struct {
  const float *g;
  float *db;
  int64_t rows, cols;
} colsum_arg;

static void colsum_range(int64_t j0, int64_t j1, void *ud) {
  const colsum_arg *k = ud;
  float *restrict db = k->db;
  for (int64_t j = j0; j < j1; j++) db[j] = 0;
  for (int64_t r = 0; r < k->rows; r++) {
    const float *restrict row = k->g + r * k->cols;
    for (int64_t j = j0; j < j1; j++) db[j] += row[j];
  }
}

/* The bias gradient of linear, {out}: g summed over all its leading dims. */
static glia_status bias_grad(glia_ctx *G, glia_tensor *g, glia_tensor **db) {
  int64_t cols = g->ndim ? g->size[g->ndim - 1] : 1;
  TRY(glia_tensor_new(G, GLIA_DTYPE_F32, 1, &cols, db));
  colsum_arg k = {(const float *)glia_ptr(g), (float *)glia_ptr(*db), 0, cols};
  k.rows = cols ? glia_tensor_numel(g) / cols : 0;
  int64_t grain = k.rows ? (1 << 15) / k.rows : cols;
  glia_parallel_for(G, cols, grain > 16 ? grain : 16, colsum_range, &k);
  return GLIA_OK;
}

/* Gradients of out = alpha a @ b + beta c (b transposed for linear):
**     da = alpha g @ b^T        db = alpha a^T @ g        dc = beta g
** da and db are computed straight into the inputs' shapes. */
static glia_status mm_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  mm_kind kind = (mm_kind)n->iarg[0];
  const char *name = mm_names[kind];
  double alpha = n->farg[0], beta = n->farg[1];
  glia_tensor *a, *b;
  TRY(glia_node_saved(G, n, 0, &a));
  TRY(glia_node_saved(G, n, 1, &b));
  mm_geom geo;
  TRY(mm_shape(G, kind, n->input[0], n->input[1], &geo));
  mview vg;
  glia_tensor *hg = NULL, *h = NULL;
  TRY(operand_of(G, g, geo.a_rows, geo.b_cols, false, geo.nb, &vg, &hg));
  glia_status st = GLIA_OK;
  if (n->needs[0]) { /* needs b */
    mview vb;
    st = glia_tensor_new(G, GLIA_DTYPE_F32, n->input[0]->ndim, n->input[0]->size, &din[0]);
    if (st == GLIA_OK) st = operand_of(G, b, true, geo.b_cols, geo.b_trans, geo.nb, &vb, &h);
    if (st == GLIA_OK)
      st = gemm_run(G, name, geo.nb, geo.bsize, alpha, 0.0, vg, mview_t(vb),
                    mview_of(din[0], geo.a_rows, true, false, geo.nb));
    glia_tensor_release(h);
    h = NULL;
  }
  if (st == GLIA_OK && n->needs[1]) { /* needs a */
    mview va;
    st = glia_tensor_new(G, GLIA_DTYPE_F32, n->input[1]->ndim, n->input[1]->size, &din[1]);
    if (st == GLIA_OK) st = operand_of(G, a, geo.a_rows, true, false, geo.nb, &va, &h);
    if (st == GLIA_OK)
      st = gemm_run(G, name, geo.nb, geo.bsize, alpha, 0.0, mview_t(va), vg,
                    mview_of(din[1], true, geo.b_cols, geo.b_trans, geo.nb));
    glia_tensor_release(h);
  }
  if (st == GLIA_OK && n->ninputs > 2 && n->needs[2]) {
    if (kind == MM_LINEAR && glia_tensor_is_contiguous(g))
      st = bias_grad(G, g, &din[2]);
    else /* the engine sums it to c's shape */
      st = beta == 1.0 ? (din[2] = glia_tensor_retain(g), GLIA_OK)
                       : glia_ts(G, GLIA_BIN_MUL, g, beta, &din[2]);
  }
  glia_tensor_release(hg);
  if (st == GLIA_OK) st = glia_grads_to_inputs(G, n, din); /* broadcast batch dims, addmm's c */
  return st;
}

/* ========================================================= forward */

/* out = alpha * (a @ b) + beta * c, with c (optional, broadcast to the
** result) and b transposed for linear. Records the node. */
static glia_status mm_forward(glia_ctx *G, mm_kind kind, glia_tensor *a, glia_tensor *b,
                              glia_tensor *c, double alpha, double beta, glia_tensor **out) {
  const char *name = mm_names[kind];
  mm_geom geo;
  TRY(glia_check_live(G, name, a));
  TRY(glia_check_live(G, name, b));
  TRY(mm_shape(G, kind, a, b, &geo));
  if (c) {
    TRY(glia_check_live(G, name, c));
    if (c->dtype != GLIA_DTYPE_F32)
      return glia_fail(G, GLIA_EDTYPE, "%s: expected an f32 %s, got %s %s", name,
                       kind == MM_LINEAR ? "bias" : "input", glia_dtype_name(c->dtype),
                       glia_shape_str(c));
    int nd;
    int64_t bshape[GLIA_MAX_DIMS];
    bool fits = kind == MM_LINEAR ? c->ndim == 1 && c->size[0] == b->size[0]
              : glia_broadcast_shape(G, name, c->ndim, c->size, geo.out_ndim, geo.out_size,
                                     &nd, bshape) == GLIA_OK &&
                    nd == geo.out_ndim &&
                    memcmp(bshape, geo.out_size, (size_t)nd * sizeof *bshape) == 0;
    if (!fits)
      return glia_fail(G, GLIA_ESHAPE, "%s: %s %s does not match the product %s x %s", name,
                       kind == MM_LINEAR ? "bias" : "input", glia_shape_str(c),
                       glia_shape_str(a), glia_shape_str(b));
  }
  glia_tensor *r;
  TRY(glia_tensor_new(G, GLIA_DTYPE_F32, geo.out_ndim, geo.out_size, &r));
  bool add_c = c && beta != 0.0; /* beta 0 ignores c, even its NaNs */
  glia_status st = GLIA_OK;
  if (!(kind == MM_LINEAR && linear_row(G, a, b, c, r))) {
    if (add_c) st = glia_copy_into(G, r, c);
    if (st == GLIA_OK) st = mm_run(G, kind, &geo, a, b, r, alpha, add_c ? beta : 0.0);
  }
  glia_tensor *in[3] = {a, b, c};
  glia_node *node = st == GLIA_OK ? glia_node_begin(G, name, mm_bwd, c ? 3 : 2, in, &st) : NULL;
  if (node) {
    node->iarg[0] = kind;
    node->farg[0] = alpha;
    node->farg[1] = beta;
    /* da needs b and db needs a: save only what backward will read */
    st = glia_node_save(G, node, node->needs[1] ? a : NULL);
    if (st == GLIA_OK) st = glia_node_save(G, node, node->needs[0] ? b : NULL);
    st = glia_node_end(node, st, r);
  }
  return glia_hand_out(st, r, out);
}

glia_status glia_matmul(glia_ctx *G, glia_tensor *a, glia_tensor *b, glia_tensor **out) {
  return mm_forward(G, MM_MATMUL, a, b, NULL, 1.0, 0.0, out);
}

glia_status glia_addmm(glia_ctx *G, glia_tensor *c, glia_tensor *a, glia_tensor *b,
                       double beta, double alpha, glia_tensor **out) {
  return mm_forward(G, MM_ADDMM, a, b, c, alpha, beta, out);
}

glia_status glia_linear(glia_ctx *G, glia_tensor *x, glia_tensor *w, glia_tensor *bias,
                        glia_tensor **out) {
  return mm_forward(G, MM_LINEAR, x, w, bias, 1.0, 1.0, out);
}

/* ======================================================== registry */

/* matmul(a, b) */
static glia_status op_matmul(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                             glia_value *outs) {
  (void)nargs;
  glia_tensor *r;
  TRY(glia_matmul(G, args[0].u.t, args[1].u.t, &r));
  return out1(nouts, outs, r);
}

/* addmm(c, a, b [, beta [, alpha]]) = beta c + alpha a @ b */
static glia_status op_addmm(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                            glia_value *outs) {
  glia_tensor *r;
  double beta = nargs > 3 ? arg_num(&args[3], 1.0) : 1.0;
  double alpha = nargs > 4 ? arg_num(&args[4], 1.0) : 1.0;
  TRY(glia_addmm(G, args[0].u.t, args[1].u.t, args[2].u.t, beta, alpha, &r));
  return out1(nouts, outs, r);
}

/* linear(x, w [, bias]) = x @ w^T + bias */
static glia_status op_linear(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                             glia_value *outs) {
  glia_tensor *r;
  TRY(glia_linear(G, args[0].u.t, args[1].u.t, nargs > 2 ? arg_t(&args[2]) : NULL, &r));
  return out1(nouts, outs, r);
}

const glia_op glia_ops_matmul[] = {
    {"matmul", "TT", op_matmul, 1},
    {"addmm", "TTT|nn", op_addmm, 1},
    {"linear", "TT|t", op_linear, 0},
    {NULL, NULL, NULL, 0},
};
