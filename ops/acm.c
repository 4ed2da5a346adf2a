/*
** ops/acm.c -- Adaptive Computation Modules (Wojcik et al. 2023): a chain
** of N small two-layer "learners" whose outputs are summed, each token
** running only its first k of them. Ops: acm (the gated, bucketed forward:
** inference and training) and acm_all (every prefix at once, for
** distillation), both differentiable; acm_gate, the gate's eval path fused.
**
** Shape letters: T tokens, d features, N learners of width w, H = N*w.
** x {T,d}; the learners packed as nn.Linear weights, learner n (0-based)
** owning hidden units [n*w, (n+1)*w): w1 {H,d}, b1 {H}, w2 {d,H}.
**
**   h_n(x) = act(x W1_n^T + b1_n) W2_n^T,   o_0 = 0,   o_k = sum_{n<k} h_n
**
** so o_k is one two-layer network over the hidden prefix [0, k*w): a
** contiguous run of w1's rows, b1, and of w2's columns (row stride H).
**
** acm(x, k): k {T} (i64 or i32) gives each token's count 0..N; out {T,d}
** is o_{k_t}(x_t). The schedule: a counting sort of the tokens by k
** (descending, token order kept within a count: `perm`), then per bucket
** K >= 1 one GEMM pair over the prefix [0, K*w) on its gathered rows, and
** a scatter back. Tokens with k = 0 cost nothing and get 0. A bucket is cut
** into tasks of about TASK_WORK multiply-adds (the cut depends only on K,
** w and d, never on the thread count), the tasks are dealt to the pool in
** contiguous runs of about equal work (rows x K), and OpenBLAS runs
** single-threaded inside them: a token's result is the same bits for any
** thread count. With fewer than MATVEC_ROWS tokens to run (decoding),
** each runs as two matrix-vector products instead (glia_matvec_ld: the
** pool only when the rows are many enough to pay), with no sort, task
** list or zero-fill. The second result is the learner FLOPs run:
** K * (4 d w + 2 w) per token of bucket K (the two products, the bias and
** the activation). schedule "tier" runs the same FLOPs learner by
** learner instead (see forward_tier); the backward is the same either way.
**
** acm(x, k) backward: per task, recompute pre = x W1_K^T + b1_K, then
** dpre = (dy W2_K) o act'(pre), hid = act(pre), dx = dpre W1_K; then per
** learner l, one pool task (single-threaded BLAS) sums over the buckets
** K > l in order: dW1_l += dpre_l^T xs, dW2_l += dy^T hid_l, db1_l +=
** colsum dpre_l, so the weight gradients are the same bits on any thread
** count too. Learners a token did not run get nothing from it.
**
** acm_all(x): out {N+1,T,d}, out[k] = o_k(x). Backward with detach (the
** default, as the reference code runs): o_k = h_k + stopgrad(o_{k-1}), so
** learner n gets gradient from out[n+1] only; without: from every prefix
** that contains it, dh_n = sum_{k>n} dout[k].
*/
#include "glia_impl.h"
#include "ops.h"

#include <math.h>
#include <stdlib.h>

#define ACT_IDENTITY (-1)         /* act: a glia_unop, or this */
#define TASK_WORK ((int64_t)1 << 26) /* multiply-adds per gated product, about */
#define TASK_MIN_ROWS 32
#define MATVEC_ROWS 4
#define ROWS_STACK 2048 /* floats of hidden units the rows path keeps on the stack */
#define SLOTS_MAX 256 /* pool slots a gated call uses, at most */
#define GATE_MAX 64   /* acm_gate's hidden width, at most (stack rows) */

/* ======================================================== the plan */

typedef struct {
  int64_t T, d, N, w, H;
  int act;
  glia_tensor *x, *w1, *b1, *w2; /* contiguous f32 copies or the inputs; owned */
  const float *px, *pw1, *pb1, *pw2;
  /* acm only: tokens sorted by k, descending; bucket K holds the rows
  ** [start[K], start[K] + count[K]) of perm */
  int64_t *perm, *count, *start; /* one block from glia_malloc */
  int64_t active;                /* tokens with k > 0 */
} acm_plan;

typedef struct {
  int64_t K, r0, nr; /* bucket, first row of perm, rows */
} acm_task;

static void plan_release(acm_plan *p) {
  glia_tensor_release(p->x);
  glia_tensor_release(p->w1);
  glia_tensor_release(p->b1);
  glia_tensor_release(p->w2);
  free(p->perm);
  memset(p, 0, sizeof *p);
}

static const char *act_names[] = {"identity", "relu", "gelu", "gelu_tanh"};
static const int act_ops[] = {ACT_IDENTITY, GLIA_UN_RELU, GLIA_UN_GELU_ERF, GLIA_UN_GELU};

/* The activation named s ("gelu" when absent), as a glia_unop or
** ACT_IDENTITY. */
static glia_status act_parse(glia_ctx *G, const char *name, const glia_value *a, int *act) {
  if (a->kind != GLIA_VAL_STRING) {
    *act = GLIA_UN_GELU_ERF;
    return GLIA_OK;
  }
  const char *s = a->u.s;
  for (size_t i = 0; i < sizeof act_names / sizeof *act_names; i++)
    if (strcmp(s, act_names[i]) == 0) {
      *act = act_ops[i];
      return GLIA_OK;
    }
  return glia_fail(G, GLIA_EARG,
                   "%s: activation must be \"gelu\", \"gelu_tanh\", \"relu\" or \"identity\", "
                   "got \"%s\"", name, s);
}

/* Checks the shapes (x {T,d}, w1 {N*w,d}, b1 {N*w}, w2 {d,N*w}) and takes
** contiguous views of the four. */
static glia_status plan_new(glia_ctx *G, const char *name, glia_tensor *x, glia_tensor *w1,
                            glia_tensor *b1, glia_tensor *w2, int64_t N, int act, acm_plan *p) {
  memset(p, 0, sizeof *p);
  TRY(glia_check_f32(G, name, "x", x));
  TRY(glia_check_f32(G, name, "w1", w1));
  TRY(glia_check_f32(G, name, "b1", b1));
  TRY(glia_check_f32(G, name, "w2", w2));
  if (N < 1)
    return glia_fail(G, GLIA_EARG, "%s: learners must be at least 1, got %lld", name,
                     (long long)N);
  if (x->ndim != 2 || w1->ndim != 2 || b1->ndim != 1 || w2->ndim != 2 ||
      w1->size[1] != x->size[1] || b1->size[0] != w1->size[0] || w2->size[0] != x->size[1] ||
      w2->size[1] != w1->size[0])
    return glia_fail(G, GLIA_ESHAPE,
                     "%s: expected x {T,d}, w1 {H,d}, b1 {H}, w2 {d,H}, got x %s, w1 %s, b1 %s, "
                     "w2 %s", name, glia_shape_str(x), glia_shape_str(w1), glia_shape_str(b1),
                     glia_shape_str(w2));
  if (w1->size[0] % N != 0 || w1->size[0] == 0)
    return glia_fail(G, GLIA_ESHAPE,
                     "%s: the packed width %lld (w1 %s) does not divide into %lld learners", name,
                     (long long)w1->size[0], glia_shape_str(w1), (long long)N);
  p->T = x->size[0];
  p->d = x->size[1];
  p->N = N;
  p->H = w1->size[0];
  p->w = p->H / N;
  p->act = act;
  glia_status st = glia_tensor_contiguous_as(G, x, GLIA_DTYPE_F32, &p->x);
  if (st == GLIA_OK) st = glia_tensor_contiguous_as(G, w1, GLIA_DTYPE_F32, &p->w1);
  if (st == GLIA_OK) st = glia_tensor_contiguous_as(G, b1, GLIA_DTYPE_F32, &p->b1);
  if (st == GLIA_OK) st = glia_tensor_contiguous_as(G, w2, GLIA_DTYPE_F32, &p->w2);
  if (st != GLIA_OK) {
    plan_release(p);
    return st;
  }
  p->px = (const float *)glia_ptr(p->x);
  p->pw1 = (const float *)glia_ptr(p->w1);
  p->pb1 = (const float *)glia_ptr(p->b1);
  p->pw2 = (const float *)glia_ptr(p->w2);
  return GLIA_OK;
}

/* k {T} checked (an integer tensor, each 0..N, else GLIA_ERANGE) into *kc,
** a contiguous i64 tensor the caller releases; *active its tokens with
** k > 0. */
static glia_status plan_k(glia_ctx *G, const char *name, const acm_plan *p, glia_tensor *k,
                          glia_tensor **kc, int64_t *active) {
  if ((k->dtype != GLIA_DTYPE_I64 && k->dtype != GLIA_DTYPE_I32) || k->ndim != 1 ||
      k->size[0] != p->T)
    return glia_fail(G, GLIA_ESHAPE, "%s: k must be an integer tensor {T} = {%lld}, got %s %s",
                     name, (long long)p->T, glia_dtype_name(k->dtype), glia_shape_str(k));
  TRY(glia_tensor_contiguous_as(G, k, GLIA_DTYPE_I64, kc));
  const int64_t *kv = (const int64_t *)glia_ptr(*kc);
  int64_t n = 0;
  for (int64_t t = 0; t < p->T; t++) {
    if (kv[t] < 0 || kv[t] > p->N) {
      glia_tensor_release(*kc);
      *kc = NULL;
      return glia_fail(G, GLIA_ERANGE, "%s: k[%lld] = %lld is out of range 0..%lld (learners)",
                       name, glia_shown(G, t), (long long)kv[t], (long long)p->N);
    }
    n += kv[t] > 0;
  }
  *active = n;
  return GLIA_OK;
}

/* The counting sort of the tokens by k, checked as plan_k does. */
static glia_status plan_sort(glia_ctx *G, const char *name, acm_plan *p, glia_tensor *k) {
  glia_tensor *kc;
  TRY(plan_k(G, name, p, k, &kc, &p->active));
  const int64_t *kv = (const int64_t *)glia_ptr(kc);
  int64_t T = p->T, N = p->N;
  size_t n = (size_t)(T + 2 * (N + 1));
  p->perm = glia_malloc(G, n * sizeof(int64_t));
  if (!p->perm) {
    glia_tensor_release(kc);
    return glia_fail_nomem(G, n * sizeof(int64_t), "glia.acm token order");
  }
  p->count = p->perm + T;
  p->start = p->count + N + 1;
  memset(p->count, 0, (size_t)(N + 1) * sizeof(int64_t));
  for (int64_t t = 0; t < T; t++) p->count[kv[t]]++;
  int64_t at = 0;
  for (int64_t K = N; K >= 0; K--) {
    p->start[K] = at;
    at += p->count[K];
  }
  for (int64_t t = 0; t < T; t++) p->perm[p->start[kv[t]]++] = t;
  for (int64_t K = N, a = 0; K >= 0; K--) { /* the pass moved start: restore */
    p->start[K] = a;
    a += p->count[K];
  }
  glia_tensor_release(kc);
  return GLIA_OK;
}

/* Learner FLOPs of one token running K learners (counted in the header). */
static double token_flops(const acm_plan *p, int64_t K) {
  return (double)K * (4.0 * (double)p->d * (double)p->w + 2.0 * (double)p->w);
}

/* Rows per task of bucket K: about TASK_WORK multiply-adds per product. */
static int64_t task_rows(const acm_plan *p, int64_t K) {
  int64_t per = K * p->w * p->d;
  int64_t r = per > 0 ? TASK_WORK / per : TASK_MIN_ROWS;
  return r < TASK_MIN_ROWS ? TASK_MIN_ROWS : r;
}

/* The tasks of the gated schedule, into *tasks (glia_malloc'd, or NULL
** when there are none); *n their count. */
static glia_status plan_tasks(glia_ctx *G, const acm_plan *p, acm_task **tasks, int64_t *n) {
  int64_t cnt = 0;
  for (int64_t K = 1; K <= p->N; K++) {
    int64_t r = task_rows(p, K);
    cnt += (p->count[K] + r - 1) / r;
  }
  *n = cnt;
  *tasks = NULL;
  if (cnt == 0) return GLIA_OK;
  acm_task *t = glia_malloc(G, (size_t)cnt * sizeof *t);
  if (!t) return glia_fail_nomem(G, (size_t)cnt * sizeof *t, "glia.acm tasks");
  int64_t i = 0;
  for (int64_t K = p->N; K >= 1; K--) { /* largest first, as perm runs */
    int64_t r = task_rows(p, K);
    for (int64_t r0 = 0; r0 < p->count[K]; r0 += r)
      t[i++] = (acm_task){K, p->start[K] + r0, p->count[K] - r0 < r ? p->count[K] - r0 : r};
  }
  *tasks = t;
  return GLIA_OK;
}

/* ============================================================ BLAS */

/* C {m,n} (row stride ldc) = op(A) op(B) + beta C, row-major. */
static void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                 const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < n; j++) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  glia_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
             (int)m, (int)n, (int)k, 1.0f, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

/* pre {rows,n} (row stride ld) = x {rows,d} W1[0:n]^T + b1[0:n] */
static void hidden_pre(const acm_plan *p, const float *x, int64_t rows, int64_t n, float *pre,
                       int64_t ld) {
  for (int64_t r = 0; r < rows; r++) memcpy(pre + r * ld, p->pb1, (size_t)n * sizeof *pre);
  gemm(false, true, rows, n, p->d, x, p->d, p->pw1, p->d, 1.0f, pre, ld);
}

/* the activation over n contiguous floats, in place */
static void act_rows(const acm_plan *p, float *h, int64_t n) {
  if (p->act != ACT_IDENTITY) glia_act_rows((glia_unop)p->act, h, h, n);
}

/* g *= act'(pre) over n contiguous floats */
static void act_grad_rows(const acm_plan *p, float *g, const float *pre, int64_t n) {
  if (p->act != ACT_IDENTITY) glia_act_grad_rows((glia_unop)p->act, g, g, pre, n);
}

/* acc[0:n] += the column sums of rows {rows,n} (row stride ld), row by row */
static void col_sums(float *acc, const float *rows_, int64_t rows, int64_t n, int64_t ld) {
  for (int64_t r = 0; r < rows; r++) {
    const float *s = rows_ + r * ld;
    for (int64_t j = 0; j < n; j++) acc[j] += s[j];
  }
}

/* ================================================== gated: forward */

typedef struct {
  const acm_plan *p;
  const acm_task *tasks;
  int64_t ntasks, nslots;
  float *ws;
  size_t per; /* floats of scratch per slot */
  float *out; /* forward: {T,d}, zero where k = 0 */
  /* backward */
  const float *dy; /* {T,d} contiguous */
  float *xs, *dys; /* {active,d}, rows in perm order */
  float *hid, *dpre; /* packed per bucket: bucket K at off[K], {count[K], K*w} */
  const int64_t *off;
  float *dx; /* {T,d} or NULL */
  int64_t first[SLOTS_MAX + 1]; /* slot s runs tasks first[s] .. first[s+1]-1 */
} gated_job;

static void gather_rows(const acm_plan *p, const float *src, const int64_t *perm, int64_t nr,
                        float *dst) {
  for (int64_t r = 0; r < nr; r++)
    memcpy(dst + r * p->d, src + perm[r] * p->d, (size_t)p->d * sizeof *dst);
}

static void scatter_rows(const acm_plan *p, const float *src, const int64_t *perm, int64_t nr,
                         float *dst) {
  for (int64_t r = 0; r < nr; r++)
    memcpy(dst + perm[r] * p->d, src + r * p->d, (size_t)p->d * sizeof *dst);
}

/* Forward of one task in the slot's scratch: gather, the two products, scatter. */
static void task_forward(const gated_job *j, const acm_task *t, float *ws) {
  const acm_plan *p = j->p;
  int64_t n = t->K * p->w, d = p->d;
  float *xs = ws, *hid = xs + t->nr * d, *ys = hid + t->nr * n;
  gather_rows(p, p->px, p->perm + t->r0, t->nr, xs);
  hidden_pre(p, xs, t->nr, n, hid, n);
  act_rows(p, hid, t->nr * n);
  gemm(false, true, t->nr, d, n, hid, n, p->pw2, p->H, 0.0f, ys, d);
  scatter_rows(p, ys, p->perm + t->r0, t->nr, j->out);
}

/* Backward of one task: the rows' dpre and hid into the packed buffers, dx. */
static void task_backward(const gated_job *j, const acm_task *t, float *ws) {
  const acm_plan *p = j->p;
  int64_t n = t->K * p->w, d = p->d;
  float *xs = j->xs + t->r0 * d, *dys = j->dys + t->r0 * d;
  int64_t at = j->off[t->K] + (t->r0 - p->start[t->K]) * n;
  float *hid = j->hid + at, *dpre = j->dpre + at;
  gather_rows(p, p->px, p->perm + t->r0, t->nr, xs);
  gather_rows(p, j->dy, p->perm + t->r0, t->nr, dys);
  hidden_pre(p, xs, t->nr, n, hid, n);
  gemm(false, false, t->nr, n, d, dys, d, p->pw2, p->H, 0.0f, dpre, n);
  act_grad_rows(p, dpre, hid, t->nr * n);
  act_rows(p, hid, t->nr * n);
  if (j->dx) {
    gemm(false, false, t->nr, d, n, dpre, n, p->pw1, d, 0.0f, ws, d);
    scatter_rows(p, ws, p->perm + t->r0, t->nr, j->dx);
  }
}

/* Slot s runs the tasks [first[s], first[s+1]): runs of about equal work. */
static void run_slots(int64_t begin, int64_t end, void *ud) {
  const gated_job *j = ud;
  for (int64_t s = begin; s < end; s++) {
    float *ws = j->ws + j->per * (size_t)s;
    for (int64_t i = j->first[s]; i < j->first[s + 1]; i++) {
      if (j->dy) task_backward(j, &j->tasks[i], ws);
      else task_forward(j, &j->tasks[i], ws);
    }
  }
}

/* Runs every task on the pool, with per-slot scratch. */
static glia_status run_tasks(glia_ctx *G, gated_job *j) {
  const acm_plan *p = j->p;
  size_t per = 0;
  for (int64_t i = 0; i < j->ntasks; i++) {
    const acm_task *t = &j->tasks[i];
    size_t need = j->dy ? (size_t)(t->nr * p->d)
                        : (size_t)(t->nr * (2 * p->d + t->K * p->w));
    if (need > per) per = need;
  }
  j->per = (per + 15) & ~(size_t)15;
  j->nslots = j->ntasks < G->nthreads ? j->ntasks : G->nthreads;
  if (j->nslots > SLOTS_MAX) j->nslots = SLOTS_MAX;
  if (j->nslots < 1) j->nslots = 1;
  /* cut the task list where the running work crosses s/nslots of the total
  ** (a task's work is rows x K); which slot runs a task never changes its bits */
  double total = 0, at = 0;
  for (int64_t i = 0; i < j->ntasks; i++) total += (double)(j->tasks[i].nr * j->tasks[i].K);
  int64_t s = 1;
  j->first[0] = 0;
  for (int64_t i = 0; i < j->ntasks && s < j->nslots; i++) {
    at += (double)(j->tasks[i].nr * j->tasks[i].K);
    while (s < j->nslots && at >= total * (double)s / (double)j->nslots) j->first[s++] = i + 1;
  }
  while (s <= j->nslots) j->first[s++] = j->ntasks;
  size_t bytes = j->per * (size_t)j->nslots * sizeof(float);
  j->ws = glia_alloc(G, bytes ? bytes : 1);
  if (!j->ws) return glia_fail_nomem(G, bytes, "glia.acm scratch");
  glia_pool_blas_items(G, j->nslots, run_slots, j);
  glia_free(G, j->ws, bytes ? bytes : 1);
  return GLIA_OK;
}

/* Decoding's path: each token's two products as matrix-vector products,
** straight into out {T,d} (every row written: 0 where k = 0). Needs no
** sort, no task list and no zero-fill first: what one token pays besides
** reading its prefix of the weights. At k = 1 of bench/acm.lua that is
** 256 KB of w1 rows and 256 pieces of 1 KB of w2 rows at a 4 KB stride,
** from L2: about 1.5 + 2.1 us on one core (Zen 5). The pieces cost 0.7 us
** over a contiguous 256 KB: any gap of 512 B or more between them does (a
** padded stride costs the same, so not L2 set conflicts), and software
** prefetch or two rows at a time did not win it back. Splitting a token
** over two threads in one dispatch (hidden units, then output rows: the
** same bits) saved 0.6 us at best in a C harness and nothing in the op, a
** core-to-core round trip being 0.4 us on the 2-core test machine: a token
** stays on one thread unless glia_matvec_ld splits a large product. */
static glia_status forward_rows(glia_ctx *G, const acm_plan *p, const int64_t *kv, float *out) {
  /* on a line boundary, as glia_alloc gives: each vector load one cache line */
  float stack[ROWS_STACK] __attribute__((aligned(64))), *hid = stack;
  int64_t d = p->d, n = 0;
  for (int64_t t = 0; t < p->T; t++) n = kv[t] * p->w > n ? kv[t] * p->w : n;
  if (n > ROWS_STACK) {
    hid = glia_malloc(G, (size_t)n * sizeof *hid);
    if (!hid) return glia_fail_nomem(G, (size_t)n * sizeof *hid, "glia.acm scratch");
  }
  for (int64_t t = 0; t < p->T; t++) {
    int64_t K = kv[t];
    if (K == 0) {
      memset(out + t * d, 0, (size_t)d * sizeof *out);
      continue;
    }
    glia_matvec_ld(G, p->pw1, d, p->px + t * d, p->pb1, hid, K * p->w, d);
    act_rows(p, hid, K * p->w);
    glia_matvec_ld(G, p->pw2, p->H, hid, NULL, out + t * d, d, K * p->w);
  }
  if (hid != stack) free(hid);
  return GLIA_OK;
}

/* ================================================= gated: tier forward */

/* The spec's alternative schedule, with the same FLOPs: the rows sorted by
** k descending, the rows that run learner l are a prefix of them (the
** n_l = sum_{K>l} count[K] rows with k > l), so learner l runs as one
** product pair on that prefix and adds its output into the rows' sums. The
** rows are cut in chunks of TIER_ROWS (never by the thread count), each a
** pool item running the learners in order: the same bits on any thread
** count. Its sums are taken in another order than the bucket schedule's
** (a product per learner, not one over the whole prefix [0, K*w)), so the
** two agree to rounding, not bit for bit. Smaller inner dimensions and a
** read-modify-write of the sums per learner: the bucket schedule is the
** default, this one is there to compare against. */
#define TIER_ROWS 256
typedef struct {
  const acm_plan *p;
  float *xs, *hid, *ys; /* {active,d}, {active,w}, {active,d}: rows in perm order */
  float *out;
} tier_job;

static void tier_chunks(int64_t c0, int64_t c1, void *ud) {
  const tier_job *j = ud;
  const acm_plan *p = j->p;
  int64_t d = p->d, w = p->w;
  for (int64_t c = c0; c < c1; c++) {
    int64_t r0 = c * TIER_ROWS, r1 = r0 + TIER_ROWS < p->active ? r0 + TIER_ROWS : p->active;
    float *xs = j->xs + r0 * d, *ys = j->ys + r0 * d, *hid = j->hid + r0 * w;
    gather_rows(p, p->px, p->perm + r0, r1 - r0, xs);
    for (int64_t l = 0; l < p->N; l++) {
      int64_t n_l = p->start[l + 1] + p->count[l + 1]; /* rows with k > l */
      int64_t nr = (n_l < r1 ? n_l : r1) - r0;
      if (nr <= 0) break; /* k only falls down the rows */
      for (int64_t r = 0; r < nr; r++) memcpy(hid + r * w, p->pb1 + l * w, (size_t)w * sizeof *hid);
      gemm(false, true, nr, w, d, xs, d, p->pw1 + l * w * d, d, 1.0f, hid, w);
      act_rows(p, hid, nr * w);
      /* learner 0 runs on every active row: it sets the sums */
      gemm(false, true, nr, d, w, hid, w, p->pw2 + l * w, p->H, l == 0 ? 0.0f : 1.0f, ys, d);
    }
    scatter_rows(p, ys, p->perm + r0, r1 - r0, j->out);
  }
}

static glia_status forward_tier(glia_ctx *G, const acm_plan *p, float *out) {
  size_t bytes = (size_t)(p->active * (2 * p->d + p->w)) * sizeof(float);
  tier_job j = {.p = p, .out = out};
  j.xs = glia_alloc(G, bytes);
  if (!j.xs) return glia_fail_nomem(G, bytes, "glia.acm tier buffers");
  j.ys = j.xs + p->active * p->d;
  j.hid = j.ys + p->active * p->d;
  glia_pool_blas_items(G, (p->active + TIER_ROWS - 1) / TIER_ROWS, tier_chunks, &j);
  glia_free(G, j.xs, bytes);
  return GLIA_OK;
}

/* schedule: "bucket" (when absent) or "tier"; *tier set for the latter */
static glia_status schedule_parse(glia_ctx *G, const glia_value *a, int *tier) {
  const char *s = a->kind == GLIA_VAL_STRING ? a->u.s : "bucket";
  *tier = strcmp(s, "tier") == 0;
  if (*tier || strcmp(s, "bucket") == 0) return GLIA_OK;
  return glia_fail(G, GLIA_EARG, "glia.acm: schedule must be \"bucket\" or \"tier\", got \"%s\"",
                   s);
}

/* =================================================== gated: the op */

static glia_status acm_bwd(glia_ctx *G, glia_node *n, glia_tensor *dout, glia_tensor **din);

/* The gated forward's work: decoding's rows, or the sort and then the
** tier schedule or the tasks. *flops the learner FLOPs run. */
static glia_status acm_forward(glia_ctx *G, acm_plan *p, glia_tensor *k, int tier,
                               glia_tensor **r, double *flops) {
  const char *name = "glia.acm";
  glia_tensor *kc;
  int64_t active;
  TRY(plan_k(G, name, p, k, &kc, &active));
  const int64_t *kv = (const int64_t *)glia_ptr(kc);
  double f = 0;
  for (int64_t t = 0; t < p->T; t++) f += token_flops(p, kv[t]);
  glia_status st;
  if (active < MATVEC_ROWS && !tier) {
    st = glia_tensor_new(G, GLIA_DTYPE_F32, 2, (int64_t[]){p->T, p->d}, r);
    if (st == GLIA_OK) st = forward_rows(G, p, kv, (float *)glia_ptr(*r));
    glia_tensor_release(kc);
  } else {
    glia_tensor_release(kc);
    st = plan_sort(G, name, p, k);
    if (st == GLIA_OK) st = glia_tensor_zeros(G, GLIA_DTYPE_F32, 2, (int64_t[]){p->T, p->d}, r);
    if (st == GLIA_OK && p->active > 0 && tier) {
      st = forward_tier(G, p, (float *)glia_ptr(*r));
    } else if (st == GLIA_OK && p->active > 0) {
      gated_job j = {.p = p, .out = (float *)glia_ptr(*r)};
      acm_task *tasks = NULL;
      st = plan_tasks(G, p, &tasks, &j.ntasks);
      j.tasks = tasks;
      if (st == GLIA_OK) st = run_tasks(G, &j);
      free(tasks);
    }
  }
  *flops = f;
  return st;
}

static glia_status acm(glia_ctx *G, glia_tensor *x, glia_tensor *w1, glia_tensor *b1,
                       glia_tensor *w2, glia_tensor *k, int64_t N, int act, int tier,
                       glia_tensor **out, double *flops) {
  const char *name = "glia.acm";
  acm_plan p;
  TRY(plan_new(G, name, x, w1, b1, w2, N, act, &p));
  glia_tensor *r = NULL;
  double f = 0;
  glia_status st = acm_forward(G, &p, k, tier, &r, &f);
  plan_release(&p);
  if (st == GLIA_OK) {
    glia_tensor *in[4] = {x, w1, b1, w2};
    glia_node *node = glia_node_begin(G, name, acm_bwd, 4, in, &st);
    if (node) {
      node->iarg[0] = N;
      node->iarg[1] = act;
      glia_tensor *save[5] = {x, w1, b1, w2, k};
      for (int i = 0; i < 5 && st == GLIA_OK; i++) st = glia_node_save(G, node, save[i]);
      st = glia_node_end(node, st, r);
    }
  }
  *flops = f;
  return glia_hand_out(st, r, out);
}

/* The weight gradients of learners [l0, l1) from the packed buckets. */
typedef struct {
  const acm_plan *p;
  const gated_job *j;
  float *dw1, *db1, *dw2; /* NULL when not needed */
} learner_job;

static void learner_grads(int64_t l0, int64_t l1, void *ud) {
  const learner_job *g = ud;
  const acm_plan *p = g->p;
  const gated_job *j = g->j;
  int64_t w = p->w, d = p->d;
  for (int64_t l = l0; l < l1; l++)
    for (int64_t K = l + 1; K <= p->N; K++) {
      int64_t c = p->count[K], n = K * w, r0 = p->start[K];
      if (c == 0) continue;
      const float *hid = j->hid + j->off[K] + l * w, *dpre = j->dpre + j->off[K] + l * w;
      if (g->dw1) gemm(true, false, w, d, c, dpre, n, j->xs + r0 * d, d, 1.0f, g->dw1 + l * w * d, d);
      if (g->db1) col_sums(g->db1 + l * w, dpre, c, w, n);
      if (g->dw2) gemm(true, false, d, w, c, j->dys + r0 * d, d, hid, n, 1.0f, g->dw2 + l * w, p->H);
    }
}

/* Gradients of the saved x, w1, b1, w2 through the tokens' own prefixes. */
static glia_status acm_bwd(glia_ctx *G, glia_node *n, glia_tensor *dout, glia_tensor **din) {
  glia_tensor *sv[5];
  for (int i = 0; i < 5; i++) TRY(glia_node_saved(G, n, i, &sv[i]));
  acm_plan p;
  TRY(plan_new(G, n->name, sv[0], sv[1], sv[2], sv[3], n->iarg[0], (int)n->iarg[1], &p));
  glia_tensor *g[4] = {NULL, NULL, NULL, NULL}, *dy = NULL;
  acm_task *tasks = NULL;
  gated_job j = {.p = &p};
  int64_t *offs = NULL;
  size_t hid_floats = 0, xs_floats = 0;
  glia_status st = plan_sort(G, n->name, &p, sv[4]);
  for (int i = 0; i < 4 && st == GLIA_OK; i++)
    st = glia_tensor_zeros(G, GLIA_DTYPE_F32, sv[i]->ndim, sv[i]->size, &g[i]);
  if (st == GLIA_OK) st = glia_tensor_contiguous_as(G, dout, GLIA_DTYPE_F32, &dy);
  if (st == GLIA_OK && p.active > 0) {
    offs = glia_malloc(G, (size_t)(p.N + 1) * sizeof *offs);
    if (!offs) st = glia_fail_nomem(G, (size_t)(p.N + 1) * sizeof *offs, "glia.acm offsets");
  }
  if (st == GLIA_OK && p.active > 0) {
    for (int64_t K = 1, at = 0; K <= p.N; K++) {
      offs[K] = at;
      at += p.count[K] * K * p.w;
      hid_floats = (size_t)at;
    }
    offs[0] = 0;
    xs_floats = (size_t)(p.active * p.d);
    j.xs = glia_alloc(G, 2 * (xs_floats + hid_floats) * sizeof(float));
    if (!j.xs) st = glia_fail_nomem(G, 2 * (xs_floats + hid_floats) * sizeof(float),
                                    "glia.acm backward buffers");
  }
  if (st == GLIA_OK && p.active > 0) {
    j.dys = j.xs + xs_floats;
    j.hid = j.dys + xs_floats;
    j.dpre = j.hid + hid_floats;
    j.off = offs;
    j.dy = (const float *)glia_ptr(dy);
    j.dx = n->needs[0] ? (float *)glia_ptr(g[0]) : NULL;
    st = plan_tasks(G, &p, &tasks, &j.ntasks);
    j.tasks = tasks;
    if (st == GLIA_OK) st = run_tasks(G, &j);
    /* the weights: learner l's rows of dW1, db1 and columns of dW2 by one
    ** task, over the buckets K > l in order (a fixed summation order) */
    learner_job lj = {.p = &p, .j = &j,
                      .dw1 = n->needs[1] ? (float *)glia_ptr(g[1]) : NULL,
                      .db1 = n->needs[2] ? (float *)glia_ptr(g[2]) : NULL,
                      .dw2 = n->needs[3] ? (float *)glia_ptr(g[3]) : NULL};
    if (st == GLIA_OK) glia_pool_blas_items(G, p.N, learner_grads, &lj);
    glia_free(G, j.xs, 2 * (xs_floats + hid_floats) * sizeof(float));
  }
  free(tasks);
  free(offs);
  glia_tensor_release(dy);
  plan_release(&p);
  for (int i = 0; i < 4; i++) {
    if (st == GLIA_OK && n->needs[i]) din[i] = g[i];
    else glia_tensor_release(g[i]);
  }
  return st;
}

/* ======================================================= every prefix */

static glia_status acm_all_bwd(glia_ctx *G, glia_node *n, glia_tensor *dout, glia_tensor **din);

/* acm_all's work in tasks whose bits do not depend on the thread count:
** chunks of ALL_ROWS tokens (forward; backward up to dpre and dx), then one
** task per learner for its weight gradients. */
#define ALL_ROWS 256
typedef struct {
  const acm_plan *p;
  float *pre, *dpre, *dh; /* {T,H}, {T,H}, {N,T,d} */
  float *out, *dx, *dw1, *db1, *dw2; /* NULL when not needed */
} all_job;

static void all_rows(int64_t c0, int64_t c1, void *ud) {
  const all_job *a = ud;
  const acm_plan *p = a->p;
  int64_t T = p->T, d = p->d, H = p->H, w = p->w;
  for (int64_t c = c0; c < c1; c++) {
    int64_t r0 = c * ALL_ROWS, nr = T - r0 < ALL_ROWS ? T - r0 : ALL_ROWS;
    float *hid = a->pre + r0 * H;
    hidden_pre(p, p->px + r0 * d, nr, H, hid, H);
    act_rows(p, hid, nr * H);
    for (int64_t l = 0; l < p->N; l++) {
      float *cur = a->out + (l + 1) * T * d + r0 * d;
      const float *prev = a->out + l * T * d + r0 * d;
      gemm(false, true, nr, d, w, hid + l * w, H, p->pw2 + l * w, H, 0.0f, cur, d);
      for (int64_t i = 0; i < nr * d; i++) cur[i] += prev[i];
    }
  }
}

static void all_bwd_rows(int64_t c0, int64_t c1, void *ud) {
  const all_job *a = ud;
  const acm_plan *p = a->p;
  int64_t T = p->T, d = p->d, H = p->H, w = p->w;
  for (int64_t c = c0; c < c1; c++) {
    int64_t r0 = c * ALL_ROWS, nr = T - r0 < ALL_ROWS ? T - r0 : ALL_ROWS;
    float *pre = a->pre + r0 * H, *dpre = a->dpre + r0 * H;
    hidden_pre(p, p->px + r0 * d, nr, H, pre, H);
    for (int64_t l = 0; l < p->N; l++)
      gemm(false, false, nr, w, d, a->dh + l * T * d + r0 * d, d, p->pw2 + l * w, H, 0.0f,
           dpre + l * w, H);
    act_grad_rows(p, dpre, pre, nr * H);
    act_rows(p, pre, nr * H); /* pre is hid from here */
    if (a->dx) gemm(false, false, nr, d, H, dpre, H, p->pw1, d, 0.0f, a->dx + r0 * d, d);
  }
}

static void all_bwd_learners(int64_t l0, int64_t l1, void *ud) {
  const all_job *a = ud;
  const acm_plan *p = a->p;
  int64_t T = p->T, d = p->d, H = p->H, w = p->w;
  for (int64_t l = l0; l < l1; l++) {
    if (a->dw2)
      gemm(true, false, d, w, T, a->dh + l * T * d, d, a->pre + l * w, H, 0.0f, a->dw2 + l * w, H);
    if (a->dw1)
      gemm(true, false, w, d, T, a->dpre + l * w, H, p->px, d, 0.0f, a->dw1 + l * w * d, d);
    if (a->db1) col_sums(a->db1 + l * w, a->dpre + l * w, T, w, H);
  }
}

/* out {N+1,T,d}: out[0] = 0, out[n] = out[n-1] + h_{n-1} (0-based learners). */
static glia_status acm_all(glia_ctx *G, glia_tensor *x, glia_tensor *w1, glia_tensor *b1,
                           glia_tensor *w2, int64_t N, int act, int detach, glia_tensor **out) {
  const char *name = "glia.acm_all";
  acm_plan p;
  TRY(plan_new(G, name, x, w1, b1, w2, N, act, &p));
  int64_t T = p.T, d = p.d, H = p.H;
  glia_tensor *r = NULL;
  size_t hb = (size_t)(T * H) * sizeof(float);
  float *hid = NULL;
  glia_status st = glia_tensor_zeros(G, GLIA_DTYPE_F32, 3, (int64_t[]){N + 1, T, d}, &r);
  if (st == GLIA_OK && T > 0) {
    hid = glia_alloc(G, hb);
    if (!hid) st = glia_fail_nomem(G, hb, "glia.acm_all hidden");
  }
  if (st == GLIA_OK && T > 0) {
    all_job aj = {.p = &p, .pre = hid, .out = (float *)glia_ptr(r)};
    glia_pool_blas_items(G, (T + ALL_ROWS - 1) / ALL_ROWS, all_rows, &aj);
    glia_free(G, hid, hb);
  }
  plan_release(&p);
  if (st == GLIA_OK) {
    glia_tensor *in[4] = {x, w1, b1, w2};
    glia_node *node = glia_node_begin(G, name, acm_all_bwd, 4, in, &st);
    if (node) {
      node->iarg[0] = N;
      node->iarg[1] = act;
      node->iarg[2] = detach;
      glia_tensor *save[4] = {x, w1, b1, w2};
      for (int i = 0; i < 4 && st == GLIA_OK; i++) st = glia_node_save(G, node, save[i]);
      st = glia_node_end(node, st, r);
    }
  }
  return glia_hand_out(st, r, out);
}

static glia_status acm_all_bwd(glia_ctx *G, glia_node *n, glia_tensor *dout, glia_tensor **din) {
  glia_tensor *sv[4];
  for (int i = 0; i < 4; i++) TRY(glia_node_saved(G, n, i, &sv[i]));
  acm_plan p;
  TRY(plan_new(G, n->name, sv[0], sv[1], sv[2], sv[3], n->iarg[0], (int)n->iarg[1], &p));
  int64_t T = p.T, d = p.d, H = p.H, N = p.N;
  glia_tensor *g[4] = {NULL, NULL, NULL, NULL}, *dc = NULL;
  float *buf = NULL;
  size_t bb = (size_t)(2 * T * H + N * T * d) * sizeof(float);
  glia_status st = GLIA_OK;
  for (int i = 0; i < 4 && st == GLIA_OK; i++)
    st = glia_tensor_zeros(G, GLIA_DTYPE_F32, sv[i]->ndim, sv[i]->size, &g[i]);
  if (st == GLIA_OK) st = glia_tensor_contiguous_as(G, dout, GLIA_DTYPE_F32, &dc);
  if (st == GLIA_OK && T > 0) {
    buf = glia_alloc(G, bb);
    if (!buf) st = glia_fail_nomem(G, bb, "glia.acm_all backward buffers");
  }
  if (st == GLIA_OK && T > 0) {
    float *pre = buf, *dpre = pre + T * H, *dh = dpre + T * H;
    const float *go = (const float *)glia_ptr(dc);
    /* dh[l] = dout[l+1] (detach), or the sum of dout[l+1..N] */
    for (int64_t l = N - 1; l >= 0; l--) {
      float *cur = dh + l * T * d;
      const float *src = go + (l + 1) * T * d;
      if (n->iarg[2] || l == N - 1) memcpy(cur, src, (size_t)(T * d) * sizeof *cur);
      else
        for (int64_t i = 0; i < T * d; i++) cur[i] = src[i] + cur[T * d + i];
    }
    all_job aj = {.p = &p, .pre = pre, .dpre = dpre, .dh = dh,
                  .dx = n->needs[0] ? (float *)glia_ptr(g[0]) : NULL,
                  .dw1 = n->needs[1] ? (float *)glia_ptr(g[1]) : NULL,
                  .db1 = n->needs[2] ? (float *)glia_ptr(g[2]) : NULL,
                  .dw2 = n->needs[3] ? (float *)glia_ptr(g[3]) : NULL};
    glia_pool_blas_items(G, (T + ALL_ROWS - 1) / ALL_ROWS, all_bwd_rows, &aj);
    glia_pool_blas_items(G, N, all_bwd_learners, &aj);
    glia_free(G, buf, bb);
  }
  glia_tensor_release(dc);
  plan_release(&p);
  for (int i = 0; i < 4; i++) {
    if (st == GLIA_OK && n->needs[i]) din[i] = g[i];
    else glia_tensor_release(g[i]);
  }
  return st;
}

/* ============================================================ the gate */

/* The gate in eval mode, fused: k = min(cap, m + argmax_c logits[t,c])
** with logits = L3(L2(L1(x))), three linear layers without activations
** between them (the reference's gate), the first largest logit on ties.
** One call instead of the seven ops of the module path: what decoding a
** token pays for its gate. Each row is computed by glia_dot in a fixed
** order, on the pool for many rows. k is a count: no gradient, as argmax. */
typedef struct {
  const float *x, *w[3], *b[3];
  int64_t d, g, C, m, cap;
  int64_t *k;
} gate_job;

static void gate_rows(int64_t r0, int64_t r1, void *ud) {
  const gate_job *j = ud;
  float h1[GATE_MAX], h2[GATE_MAX];
  for (int64_t t = r0; t < r1; t++) {
    const float *x = j->x + t * j->d;
    for (int64_t i = 0; i < j->g; i++) h1[i] = glia_dot(j->w[0] + i * j->d, x, j->d) + j->b[0][i];
    for (int64_t i = 0; i < j->g; i++) h2[i] = glia_dot(j->w[1] + i * j->g, h1, j->g) + j->b[1][i];
    int64_t best = 0;
    float top = 0;
    for (int64_t c = 0; c < j->C; c++) {
      float v = glia_dot(j->w[2] + c * j->g, h2, j->g) + j->b[2][c];
      if (c == 0 || v > top) top = v, best = c;
    }
    int64_t k = j->m + best;
    j->k[t] = k > j->cap ? j->cap : k;
  }
}

static glia_status acm_gate(glia_ctx *G, glia_value *args, int64_t m, int64_t cap,
                            glia_tensor **out) {
  const char *name = "glia.acm_gate";
  glia_tensor *in[7], *c[7] = {NULL};
  for (int i = 0; i < 7; i++) {
    in[i] = args[i].u.t;
    TRY(glia_check_f32(G, name, i == 0 ? "x" : "a gate parameter", in[i]));
  }
  glia_tensor *x = in[0], *w1 = in[1], *b1 = in[2], *w2 = in[3], *b2 = in[4], *w3 = in[5],
              *b3 = in[6];
  /* one message per layer: glia_shape_str keeps only a few buffers */
  int64_t g = w1->ndim == 2 ? w1->size[0] : -1;
  if (x->ndim != 2 || w1->ndim != 2 || w1->size[1] != x->size[1] || b1->ndim != 1 ||
      b1->size[0] != g)
    return glia_fail(G, GLIA_ESHAPE, "%s: expected x {T,d}, w1 {g,d}, b1 {g}, got x %s, w1 %s, b1 %s",
                     name, glia_shape_str(x), glia_shape_str(w1), glia_shape_str(b1));
  if (g < 1 || g > GATE_MAX)
    return glia_fail(G, GLIA_ESHAPE, "%s: the gate's width g (w1 %s) must be in 1..%d", name,
                     glia_shape_str(w1), GATE_MAX);
  if (w2->ndim != 2 || w2->size[0] != g || w2->size[1] != g || b2->ndim != 1 || b2->size[0] != g)
    return glia_fail(G, GLIA_ESHAPE, "%s: expected w2 {g,g}, b2 {g} with g = %lld, got w2 %s, b2 %s",
                     name, (long long)g, glia_shape_str(w2), glia_shape_str(b2));
  if (w3->ndim != 2 || w3->size[1] != g || w3->size[0] < 1 || b3->ndim != 1 ||
      b3->size[0] != w3->size[0])
    return glia_fail(G, GLIA_ESHAPE, "%s: expected w3 {C,g}, b3 {C} with g = %lld, C >= 1, got "
                     "w3 %s, b3 %s", name, (long long)g, glia_shape_str(w3), glia_shape_str(b3));
  /* k runs m .. m + C - 1, capped: that must fit an i64 */
  if (m < 0 || m > INT64_MAX - w3->size[0] || cap < m)
    return glia_fail(G, GLIA_EARG,
                     "%s: min_choice %lld must be in 0..%lld and cap_k %lld at least min_choice",
                     name, (long long)m, (long long)(INT64_MAX - w3->size[0]), (long long)cap);
  glia_status st = GLIA_OK;
  for (int i = 0; i < 7 && st == GLIA_OK; i++)
    st = glia_tensor_contiguous_as(G, in[i], GLIA_DTYPE_F32, &c[i]);
  glia_tensor *r = NULL;
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_I64, 1, x->size, &r);
  if (st == GLIA_OK) {
    gate_job j = {.x = (const float *)glia_ptr(c[0]), .d = x->size[1], .g = g,
                  .C = w3->size[0], .m = m, .cap = cap, .k = (int64_t *)glia_ptr(r)};
    for (int i = 0; i < 3; i++) {
      j.w[i] = (const float *)glia_ptr(c[1 + 2 * i]);
      j.b[i] = (const float *)glia_ptr(c[2 + 2 * i]);
    }
    int64_t per = g * (x->size[1] + g) + j.C * g;
    glia_parallel_for(G, x->size[0], glia_grain_items(per), gate_rows, &j);
  }
  for (int i = 0; i < 7; i++) glia_tensor_release(c[i]);
  return glia_hand_out(st, r, out);
}

/* ================================================== registry wrappers */

/* acm(x, w1, b1, w2, k [, learners [, activation [, schedule]]]) -> out,
** learner FLOPs */
static glia_status op_acm(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                          glia_value *outs) {
  (void)nargs;
  int act, tier;
  TRY(act_parse(G, "glia.acm", &args[6], &act));
  TRY(schedule_parse(G, &args[7], &tier));
  glia_tensor *r;
  double flops;
  TRY(acm(G, args[0].u.t, args[1].u.t, args[2].u.t, args[3].u.t, args[4].u.t,
          arg_int(&args[5], 4), act, tier, &r, &flops));
  out1(nouts, outs, r);
  *nouts = 2;
  outs[1].kind = GLIA_VAL_NUMBER;
  outs[1].u.num = flops;
  return GLIA_OK;
}

/* acm_all(x, w1, b1, w2 [, learners [, activation [, detach]]]) -> {N+1,T,d} */
static glia_status op_acm_all(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                              glia_value *outs) {
  (void)nargs;
  int act;
  TRY(act_parse(G, "glia.acm_all", &args[5], &act));
  glia_tensor *r;
  TRY(acm_all(G, args[0].u.t, args[1].u.t, args[2].u.t, args[3].u.t, arg_int(&args[4], 4), act,
              arg_bool(&args[6], 1), &r));
  return out1(nouts, outs, r);
}

/* acm_gate(x, w1, b1, w2, b2, w3, b3 [, min_choice [, cap_k]]) -> k i64 {T} */
static glia_status op_acm_gate(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                               glia_value *outs) {
  (void)nargs;
  int64_t m = arg_int(&args[7], 0), cap = arg_int(&args[8], INT64_MAX);
  glia_tensor *r = NULL;
  TRY(acm_gate(G, args, m, cap, &r));
  return out1(nouts, outs, r);
}

const glia_op glia_ops_acm[] = {
    {"acm", "TTTTT|iss", op_acm, 0},
    {"acm_all", "TTTT|isb", op_acm_all, 0},
    {"acm_gate", "TTTTTTT|ii", op_acm_gate, 0},
    {NULL, NULL, NULL, 0},
};
