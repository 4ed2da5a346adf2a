/*
** ops/attention.c -- exact scaled dot-product attention, the FlashAttention-2
** way: softmax(scale * Q K^T + mask) V computed tile by tile with an online
** softmax, never materializing the N x M score matrix. Ops: attention
** (differentiable), attention_lse (also returns the log-sum-exp of each row)
** and attention_decode (inference against a KV cache, ragged lengths).
**
** Shape letters: B batch, H query heads, K key/value heads (H % K == 0,
** group size G = H / K: MHA G = 1, MQA K = 1), N query rows, M key rows, D
** head dim of q and k, E head dim of v. q {B,H,N,D}, k {B,K,M,D},
** v {B,K,M,E}; out {B,H,N,E}, lse {B,H,N}. Query head h reads kv head h / G.
**
** Semantics (the contract the tests pin down):
** - Causal masking is aligned to the bottom-right corner: row i sees key j
**   iff j <= i + (M - N), which makes decoding and chunked prefill work.
** - mask broadcasts to {B,H,N,M}: bool/u8 means true = take part (PyTorch's
**   attn_mask), f32 is added to the scaled scores (-inf = masked out) and
**   gets a gradient when it requires one.
** - A row that sees no key has output 0, LSE +inf and zero gradients.
**
** How it runs (design: shared/design/ops/attention.md):
** - Forward task = (batch, kv head, query block, key split): the G query
**   heads of a group are stacked into one tile so each K/V tile is read once
**   per group. Key blocks past the causal diagonal are skipped; only tiles
**   straddling it are masked. The output is normalized once at the end and
**   only O and LSE are kept for backward.
** - Tile products are OpenBLAS sgemm calls, run single-threaded inside our
**   pool tasks (one owner of the cores at a time); when a group has at most
**   FEW_ROWS query rows (decoding) they are vector loops instead. A call
**   small enough to stay on the calling thread leaves OpenBLAS as it is.
**   Tasks are handed out by an atomic counter, largest first; each output
**   element is computed by exactly one task in a fixed order, so results do
**   not depend on the thread count.
** - Backward recomputes P from Q, K and LSE (D = rowsum(dO * O) first). One
**   task owns a whole (batch, kv head) when there are enough of them;
**   otherwise a two-pass variant (dK/dV over key blocks, then dQ over query
**   blocks) runs the very same tile arithmetic in the same order, so both
**   schedules give the same bits.
** - Split-KV (decode, few rows): the key range is cut into chunks combined
**   through their LSEs. The number of chunks depends on the shapes only.
*/
#include "glia_impl.h"
#include "ops.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

/* Floats per SIMD vector (gcc lowers the vector type to what -march has).
** Score tiles have rows padded to whole vectors, filled with -inf. */
#define VL GLIA_VL
typedef glia_vf vf;
typedef int32_t vi __attribute__((vector_size(VL * sizeof(int32_t))));

/* Below this many flops (~0.2 ms on one core) a call runs on the calling
** thread only: waking the pool costs more than it gains, e.g. for a decode
** step against a cache of a few thousand positions. */
#define INLINE_FLOPS (1 << 24)
/* The same for tasks of few-row tiles (decoding), which call no BLAS: only
** the pool is handed the work, so less of it pays. */
#define INLINE_FLOPS_FEW (1 << 17)
/* Split-KV aims at this many independent tasks (a shape rule, not a thread
** count, so results are the same for any number of threads). */
#define SPLIT_TARGET 8

/* ======================================================== vector math */

static inline vf vsplat(float x) { return (vf){0} + x; }
static inline vf vload(const float *p) { return *(const vf *)p; }
static inline void vstore(float *p, vf x) { *(vf *)p = x; }
static inline vf vsel(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }
static inline vf vmax(vf a, vf b) { return vsel(a > b, a, b); }

/* exp(x) for x <= ~0 (scores minus their max), exactly 0 at -inf, relative
** error ~2e-7: 2^(x log2 e) = 2^n * 2^f with f in [-0.5, 0.5] and a
** degree-7 polynomial for 2^f. NaN stays NaN. */
static inline vf vexp(vf x) {
  const vf lo = vsplat(-127.0f), magic = vsplat(12582912.0f); /* 1.5 * 2^23 */
  vf t = x * 1.44269504088896341f;
  t = vsel(t < lo, lo, t);
  vf n = (t + magic) - magic; /* round to nearest */
  vf f = t - n;
  vf p = vsplat(1.5252733804059840e-5f);
  p = p * f + 1.5403530393381606e-4f;
  p = p * f + 1.3333558146428443e-3f;
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.0f;
  vi e = (__builtin_convertvector(n, vi) + 127) << 23; /* n = -127 gives 0.0 */
  return p * (vf)e;
}

static float hmax(vf x) {
  float m = x[0];
  for (int i = 1; i < VL; i++) m = x[i] > m ? x[i] : m;
  return m;
}

static float row_max(const float *s, int64_t nv) {
  vf m = vsplat(-INFINITY);
  for (int64_t k = 0; k < nv; k++) m = vmax(m, vload(s + k * VL));
  return hmax(m);
}

/* s = exp(s - m) in place over nv vectors; returns the sum. */
static float row_exp(float *s, int64_t nv, float m) {
  vf acc = vsplat(0.0f), vm = vsplat(m);
  for (int64_t k = 0; k < nv; k++) {
    vf e = vexp(vload(s + k * VL) - vm);
    vstore(s + k * VL, e);
    acc += e;
  }
  return glia_hsum(acc);
}

/* When a kv head's group has at most this many query rows in all (G * N:
** decoding), every tile takes its products from glia_dot and the loop below
** instead of sgemm, whose per-call cost is most of the work at that size;
** with no BLAS call inside, the tasks also spread over the pool without
** handing OpenBLAS's thread count back and forth. Decided per plan, so the
** forward and the backward of one call compute scores the same way. */
#define FEW_ROWS 4

/* acc[0:E] += sum over c < nc of w[c] * V[c, 0:E] (V rows ldv apart), four
** vectors of acc at a time held in registers across the keys. */
static void weighted_rows(const float *w, int64_t nc, const float *V, int64_t ldv, float *acc,
                          int64_t E) {
  int64_t i = 0;
  for (; i + 4 * VL <= E; i += 4 * VL) {
    vf a0 = glia_vloadu(acc + i), a1 = glia_vloadu(acc + i + VL),
       a2 = glia_vloadu(acc + i + 2 * VL), a3 = glia_vloadu(acc + i + 3 * VL);
    for (int64_t c = 0; c < nc; c++) {
      const float *v = V + c * ldv + i;
      vf wc = vsplat(w[c]);
      a0 += wc * glia_vloadu(v);
      a1 += wc * glia_vloadu(v + VL);
      a2 += wc * glia_vloadu(v + 2 * VL);
      a3 += wc * glia_vloadu(v + 3 * VL);
    }
    memcpy(acc + i, &a0, sizeof a0);
    memcpy(acc + i + VL, &a1, sizeof a1);
    memcpy(acc + i + 2 * VL, &a2, sizeof a2);
    memcpy(acc + i + 3 * VL, &a3, sizeof a3);
  }
  for (; i + VL <= E; i += VL) {
    vf a = glia_vloadu(acc + i);
    for (int64_t c = 0; c < nc; c++) a += vsplat(w[c]) * glia_vloadu(V + c * ldv + i);
    memcpy(acc + i, &a, sizeof a);
  }
  for (; i < E; i++)
    for (int64_t c = 0; c < nc; c++) acc[i] += w[c] * V[c * ldv + i];
}

/* ======================================================== the plan */

/* One of q, k, v (or dout) as the kernels read it: rows contiguous in the
** last dim, any batch/head/row strides (BLAS leading dim = row stride). */
typedef struct {
  glia_tensor *t; /* the input retained, or a contiguous copy; owned */
  const float *p;
  int64_t sb, sh, ld;
} operand;

typedef enum { MASK_NONE, MASK_ADD, MASK_KEEP } mask_kind;

/* The mask broadcast to {B,H,N,M}: element strides, 0 on broadcast dims. */
typedef struct {
  mask_kind kind;
  const char *p;
  int64_t s[4];
} mask_view;

typedef struct {
  int64_t B, H, K, G, N, M, D, E; /* M: key rows (max over the batch) */
  const int64_t *lens;            /* per-batch key rows (decode), or NULL */
  float scale;
  bool causal;
  int64_t br, bc;   /* query rows per head and key rows per tile */
  int64_t Tr, ldS;  /* query blocks; score tile row stride (whole vectors) */
  int nsplit;       /* key-range chunks per task (split-KV) */
  bool few_rows;    /* G * N <= FEW_ROWS: products without BLAS (see FEW_ROWS) */
  operand q, k, v;
  mask_view mask;
} attn_plan;

static inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

static inline int64_t keys_of(const attn_plan *p, int64_t b) {
  return p->lens ? p->lens[b] : p->M;
}

/* Key blocks [0, end) visible from query rows [r0, r0+nr) of batch b. */
static int64_t key_blocks_end(const attn_plan *p, int64_t b, int64_t r0, int64_t nr) {
  int64_t Mb = keys_of(p, b), Tc = cdiv(Mb, p->bc);
  if (!p->causal) return Tc;
  int64_t last = r0 + nr - 1 + (Mb - p->N); /* last key the last row sees */
  return last < 0 ? 0 : imin(Tc, last / p->bc + 1);
}

static const float *row_ptr(const operand *o, int64_t b, int64_t h, int64_t r) {
  return o->p + b * o->sb + h * o->sh + r * o->ld;
}

static void operand_release(operand *o) {
  glia_tensor_release(o->t);
  o->t = NULL;
}

/* Takes x as a kernel operand, copying it only when its rows are not
** contiguous (BLAS needs unit stride in the last dim and ld >= D). */
static glia_status operand_get(glia_ctx *G, glia_tensor *x, operand *o) {
  int64_t rows = x->size[2], cols = x->size[3];
  bool ok = (cols <= 1 || x->stride[3] == 1) && (rows <= 1 || x->stride[2] >= cols);
  if (ok) o->t = glia_tensor_retain(x);
  else TRY(glia_tensor_contiguous_as(G, x, GLIA_DTYPE_F32, &o->t));
  glia_tensor *t = o->t;
  o->p = (const float *)glia_ptr(t);
  o->sb = t->stride[0];
  o->sh = t->stride[1];
  o->ld = rows <= 1 ? imax(cols, 1) : imax(t->stride[2], 1);
  return GLIA_OK;
}

/* ================================================= score tiles, masks */

/* S[0:R, 0:nc] = scale * Q K^T for R query rows at qp and nc key rows at
** kp; each row is padded with -inf up to whole vectors. */
static void score_tile(const attn_plan *p, const float *qp, int64_t ldq, int64_t R,
                       const float *kp, int64_t nc, float *S) {
  if (p->few_rows) {
    for (int64_t r = 0; r < R; r++)
      for (int64_t c = 0; c < nc; c++)
        S[r * p->ldS + c] = p->scale * glia_dot(qp + r * ldq, kp + c * p->k.ld, p->D);
  } else {
    glia_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)R, (int)nc, (int)p->D, p->scale,
                qp, (int)ldq, kp, (int)p->k.ld, 0.0f, S, (int)p->ldS);
  }
  int64_t end = cdiv(nc, VL) * VL;
  for (int64_t r = 0; r < R; r++)
    for (int64_t c = nc; c < end; c++) S[r * p->ldS + c] = -INFINITY;
}

/* Applies the causal limit (when the tile straddles the diagonal) and the
** user mask to nr rows of one head in a score tile: query rows i0.., key
** columns c0..c0+nc, diagonal offset off = M_b - N. */
static void mask_rows(const attn_plan *p, float *S, int64_t b, int64_t h, int64_t i0,
                      int64_t nr, int64_t c0, int64_t nc, int64_t off) {
  bool diag = p->causal && c0 + nc - 1 > i0 + off;
  const mask_view *m = &p->mask;
  for (int64_t r = 0; r < nr; r++) {
    float *s = S + r * p->ldS;
    int64_t i = i0 + r, visible = nc;
    if (diag) {
      visible = imax(0, imin(nc, i + off - c0 + 1));
      for (int64_t c = visible; c < nc; c++) s[c] = -INFINITY;
    }
    if (m->kind == MASK_NONE) continue;
    const char *mp = m->p + (b * m->s[0] + h * m->s[1] + i * m->s[2] + c0 * m->s[3]) *
                                (m->kind == MASK_ADD ? 4 : 1);
    if (m->kind == MASK_ADD) {
      const float *a = (const float *)mp;
      for (int64_t c = 0; c < visible; c++) s[c] += a[c * m->s[3]];
    } else {
      for (int64_t c = 0; c < visible; c++)
        if (!mp[c * m->s[3]]) s[c] = -INFINITY;
    }
  }
}

/* ========================================================= scheduling */

/* Tasks [0, n) handed out by an atomic counter to the pool's threads; a
** task gets the index of the thread's scratch slot. */
typedef void (*task_fn)(void *ud, int64_t task, int slot);

typedef struct {
  task_fn fn;
  void *ud;
  int64_t ntasks;
  atomic_llong next;
} task_queue;

static void queue_worker(int64_t slot, int64_t end, void *ud) {
  (void)end;
  task_queue *q = ud;
  for (;;) {
    int64_t t = atomic_fetch_add_explicit(&q->next, 1, memory_order_relaxed);
    if (t >= q->ntasks) return;
    q->fn(q->ud, t, (int)slot);
  }
}

/* Scratch slots (threads) worth using for ntasks tasks and `flops` work. */
static int slots_for(glia_ctx *G, int64_t ntasks, double flops, double inline_below) {
  if (flops < inline_below) return 1;
  return (int)imax(1, imin(G->nthreads, ntasks));
}

/* blas: whether the tasks call OpenBLAS, which then runs single-threaded
** inside them: one owner of the cores at a time, and the same bits for every
** thread count (a tile product on OpenBLAS's threads need not give them). */
static void run_tasks(glia_ctx *G, int nslots, int64_t ntasks, task_fn fn, void *ud,
                      bool blas) {
  task_queue q = {.fn = fn, .ud = ud, .ntasks = ntasks};
  atomic_init(&q.next, 0);
  if (blas)
    glia_pool_blas_items(G, nslots, queue_worker, &q);
  else /* on the calling thread for one slot */
    glia_parallel_for(G, nslots, 1, queue_worker, &q);
}

/* Per-slot float scratch: one block of nslots * per floats. */
typedef struct {
  float *base;
  size_t per, bytes;
} scratch;

static glia_status scratch_new(glia_ctx *G, int nslots, size_t per, scratch *s) {
  s->per = (per + 15) & ~(size_t)15; /* keep every slot 64-byte aligned */
  s->bytes = s->per * (size_t)nslots * sizeof(float);
  s->base = glia_alloc(G, s->bytes ? s->bytes : 1);
  if (!s->base) return glia_fail_nomem(G, s->bytes, "glia.attention scratch");
  memset(s->base, 0, s->bytes); /* padding columns stay finite */
  return GLIA_OK;
}

static float *scratch_slot(const scratch *s, int slot) { return s->base + s->per * (size_t)slot; }

/* ============================================================ forward */

typedef struct {
  const attn_plan *p;
  float *o, *lse;           /* {B,H,N,E}, {B,H,N} */
  float *part_o, *part_lse; /* split-KV partials {B,H,N,S,E}, {B,H,N,S} */
  scratch ws;
} fwd_job;

/* Writes the normalized rows of one head block: to the output (empty rows:
** 0 and +inf), or to the split partials (empty rows: 0 and -inf). */
static void fwd_finish(const fwd_job *j, int64_t b, int64_t h, int64_t i0, int64_t nr, int s,
                       const float *acc, const float *m, const float *l) {
  const attn_plan *p = j->p;
  int64_t E = p->E;
  for (int64_t r = 0; r < nr; r++) {
    int64_t row = (b * p->H + h) * p->N + i0 + r;
    float *o, *lse;
    if (p->nsplit > 1) {
      o = j->part_o + (row * p->nsplit + s) * E;
      lse = j->part_lse + row * p->nsplit + s;
    } else {
      o = j->o + row * E;
      lse = j->lse + row;
    }
    if (l[r] == 0) {
      memset(o, 0, (size_t)E * sizeof *o);
      *lse = p->nsplit > 1 ? -INFINITY : INFINITY;
      continue;
    }
    float inv = 1.0f / l[r];
    for (int64_t c = 0; c < E; c++) o[c] = acc[r * E + c] * inv;
    *lse = m[r] + logf(l[r]);
  }
}

/* One task: query block qi of the G heads of kv head kh in batch b, over
** key-range chunk s. Tasks are numbered largest (last query block) first. */
static void fwd_task(void *ud, int64_t t, int slot) {
  const fwd_job *j = ud;
  const attn_plan *p = j->p;
  int64_t per_block = p->B * p->K * p->nsplit;
  int64_t qi = p->Tr - 1 - t / per_block, rest = t % per_block;
  int s = (int)(rest % p->nsplit);
  int64_t kh = rest / p->nsplit % p->K, b = rest / p->nsplit / p->K;
  int64_t r0 = qi * p->br, nr = imin(p->br, p->N - r0), R = p->G * nr;
  int64_t Mb = keys_of(p, b), off = Mb - p->N, D = p->D, E = p->E, ldS = p->ldS;

  float *S = scratch_slot(&j->ws, slot); /* first: vector-aligned rows */
  float *Q = S + p->G * p->br * ldS, *acc = Q + p->G * p->br * D;
  float *m = acc + p->G * p->br * E, *l = m + p->G * p->br;

  int64_t jend = key_blocks_end(p, b, r0, nr);
  int64_t kb0 = jend * s / p->nsplit, kb1 = jend * (s + 1) / p->nsplit;
  for (int64_t g = 0; g < p->G; g++) /* stack the group's query rows */
    for (int64_t r = 0; r < nr; r++)
      memcpy(Q + (g * nr + r) * D, row_ptr(&p->q, b, kh * p->G + g, r0 + r),
             (size_t)D * sizeof(float));
  for (int64_t r = 0; r < R; r++) {
    m[r] = -INFINITY;
    l[r] = 0;
  }
  for (int64_t kj = kb0; kj < kb1; kj++) {
    int64_t c0 = kj * p->bc, nc = imin(p->bc, Mb - c0), nv = cdiv(nc, VL);
    score_tile(p, Q, imax(D, 1), R, row_ptr(&p->k, b, kh, c0), nc, S);
    if (p->mask.kind != MASK_NONE || (p->causal && c0 + nc - 1 > r0 + off))
      for (int64_t g = 0; g < p->G; g++)
        mask_rows(p, S + g * nr * ldS, b, kh * p->G + g, r0, nr, c0, nc, off);
    for (int64_t r = 0; r < R; r++) { /* online softmax, normalization deferred */
      float *srow = S + r * ldS;
      float mnew = fmaxf(m[r], row_max(srow, nv));
      float msafe = mnew == -INFINITY ? 0.0f : mnew; /* no (-inf) - (-inf) */
      float sum = row_exp(srow, nv, msafe);
      if (kj == kb0) {
        l[r] = sum;
      } else {
        float alpha = expf(m[r] - msafe);
        l[r] = alpha * l[r] + sum;
        if (alpha != 1.0f)
          for (int64_t c = 0; c < E; c++) acc[r * E + c] *= alpha;
      }
      m[r] = mnew;
    }
    const float *vp = row_ptr(&p->v, b, kh, c0);
    if (p->few_rows) {
      if (kj == kb0) memset(acc, 0, (size_t)(R * E) * sizeof *acc);
      for (int64_t r = 0; r < R; r++) weighted_rows(S + r * ldS, nc, vp, p->v.ld, acc + r * E, E);
    } else {
      glia_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)R, (int)E, (int)nc, 1.0f, S,
                  (int)ldS, vp, (int)p->v.ld, kj == kb0 ? 0.0f : 1.0f, acc, (int)imax(E, 1));
    }
  }
  for (int64_t g = 0; g < p->G; g++)
    fwd_finish(j, b, kh * p->G + g, r0, nr, s, acc + g * nr * E, m + g * nr, l + g * nr);
}

/* Merges the split partials of rows [begin, end) (flat b, h, i):
** LSE = log sum_s exp(LSE_s), O = sum_s exp(LSE_s - LSE) O_s. */
static void combine_rows(int64_t begin, int64_t end, void *ud) {
  const fwd_job *j = ud;
  int64_t S = j->p->nsplit, E = j->p->E;
  for (int64_t row = begin; row < end; row++) {
    const float *ls = j->part_lse + row * S, *os = j->part_o + row * S * E;
    float *o = j->o + row * E, mx = -INFINITY;
    for (int64_t s = 0; s < S; s++) mx = fmaxf(mx, ls[s]);
    memset(o, 0, (size_t)E * sizeof *o);
    if (mx == -INFINITY) {
      j->lse[row] = INFINITY;
      continue;
    }
    float sum = 0;
    for (int64_t s = 0; s < S; s++) sum += expf(ls[s] - mx);
    float lse = mx + logf(sum);
    for (int64_t s = 0; s < S; s++) {
      float wgt = expf(ls[s] - lse);
      if (wgt != 0)
        for (int64_t c = 0; c < E; c++) o[c] += wgt * os[s * E + c];
    }
    j->lse[row] = lse;
  }
}

/* Runs the forward of plan p into the contiguous o {B,H,N,E} and lse {B,H,N}. */
static glia_status attn_forward(glia_ctx *G, const attn_plan *p, float *o, float *lse) {
  int64_t rows = p->B * p->H * p->N;
  if (rows == 0) return GLIA_OK;
  fwd_job j = {.p = p, .o = o, .lse = lse};
  int64_t ntasks = p->B * p->K * p->Tr * p->nsplit, gbr = p->G * p->br;
  double flops = 2.0 * (double)rows * (double)p->M * (double)(p->D + p->E);
  int nslots = slots_for(G, ntasks, flops, p->few_rows ? INLINE_FLOPS_FEW : INLINE_FLOPS);
  size_t per = (size_t)(gbr * (p->D + p->ldS + p->E + 2));
  TRY(scratch_new(G, nslots, per, &j.ws));
  size_t part_bytes = 0;
  if (p->nsplit > 1) {
    part_bytes = (size_t)(rows * p->nsplit * (p->E + 1)) * sizeof(float);
    j.part_o = glia_alloc(G, part_bytes);
    if (!j.part_o) {
      glia_free(G, j.ws.base, j.ws.bytes);
      return glia_fail_nomem(G, part_bytes, "glia.attention split partials");
    }
    j.part_lse = j.part_o + rows * p->nsplit * p->E;
  }
  run_tasks(G, nslots, ntasks, fwd_task, &j, !p->few_rows);
  if (p->nsplit > 1) {
    glia_parallel_for(G, rows, imax(1, 4096 / imax(p->E, 1)), combine_rows, &j);
    glia_free(G, j.part_o, part_bytes);
  }
  glia_free(G, j.ws.base, j.ws.bytes);
  return GLIA_OK;
}

/* =========================================================== backward */

typedef struct {
  const attn_plan *p;
  operand dout;
  const float *lse, *Dd;       /* {B,H,N}: saved LSE, rowsum(dO * O) */
  float *dq, *dk, *dv, *dmask; /* contiguous; dmask {B,H,N,M} or NULL */
  scratch ws;                  /* per slot: S/P and dP/dS tiles */
} bwd_job;

enum { BW_DKV = 1, BW_DQ = 2 };

/* Tile visited iff some row of query block qi sees some key of block kj. */
static bool tile_visible(const attn_plan *p, int64_t b, int64_t qi, int64_t kj) {
  int64_t r0 = qi * p->br, nr = imin(p->br, p->N - r0);
  return kj < key_blocks_end(p, b, r0, nr);
}

/* One (head h, query block qi, key block kj) tile of the backward:
**   P = exp(S - LSE), dP = dO V^T, dS = P o (dP - D)
**   BW_DKV: dV_j += P^T dO, dK_j += scale dS^T Q
**   BW_DQ:  dQ_i += scale dS K_j (and dmask = dS)
** Both schedules call it with the same arguments in the same order for any
** given output block, which makes them bit-identical. */
static void bwd_tile(const bwd_job *j, float *S, float *dP, int64_t b, int64_t h, int64_t qi,
                     int64_t kj, int what) {
  const attn_plan *p = j->p;
  int64_t kh = h / p->G, r0 = qi * p->br, nr = imin(p->br, p->N - r0);
  int64_t Mb = keys_of(p, b), c0 = kj * p->bc, nc = imin(p->bc, Mb - c0), nv = cdiv(nc, VL);
  int64_t D = p->D, E = p->E, ldS = p->ldS, row0 = (b * p->H + h) * p->N + r0;
  const float *qp = row_ptr(&p->q, b, h, r0), *kp = row_ptr(&p->k, b, kh, c0);
  const float *vp = row_ptr(&p->v, b, kh, c0), *dop = row_ptr(&j->dout, b, h, r0);

  score_tile(p, qp, p->q.ld, nr, kp, nc, S);
  mask_rows(p, S, b, h, r0, nr, c0, nc, Mb - p->N);
  for (int64_t r = 0; r < nr; r++) {
    float *s = S + r * ldS;
    vf lse = vsplat(j->lse[row0 + r]);
    for (int64_t k = 0; k < nv; k++) vstore(s + k * VL, vexp(vload(s + k * VL) - lse));
  }
  glia_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nr, (int)nc, (int)E, 1.0f, dop,
              (int)j->dout.ld, vp, (int)p->v.ld, 0.0f, dP, (int)ldS);
  if (what & BW_DKV)
    glia_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nc, (int)E, (int)nr, 1.0f, S,
                (int)ldS, dop, (int)j->dout.ld, 1.0f, j->dv + ((b * p->K + kh) * p->M + c0) * E,
                (int)imax(E, 1));
  for (int64_t r = 0; r < nr; r++) { /* dS = P o (dP - D), into dP */
    const float *pr = S + r * ldS;
    float *dr = dP + r * ldS;
    vf Di = vsplat(j->Dd[row0 + r]);
    for (int64_t k = 0; k < nv; k++)
      vstore(dr + k * VL, vload(pr + k * VL) * (vload(dr + k * VL) - Di));
  }
  if (what & BW_DKV)
    glia_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nc, (int)D, (int)nr, p->scale, dP,
                (int)ldS, qp, (int)p->q.ld, 1.0f, j->dk + ((b * p->K + kh) * p->M + c0) * D,
                (int)imax(D, 1));
  if (what & BW_DQ) {
    glia_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, (int)D, (int)nc, p->scale,
                dP, (int)ldS, kp, (int)p->k.ld, 1.0f, j->dq + row0 * D, (int)imax(D, 1));
    if (j->dmask)
      for (int64_t r = 0; r < nr; r++)
        memcpy(j->dmask + (row0 + r) * p->M + c0, dP + r * ldS, (size_t)nc * sizeof(float));
  }
}

static float *bwd_S(const bwd_job *j, int slot) { return scratch_slot(&j->ws, slot); }
static float *bwd_dP(const bwd_job *j, int slot) {
  return scratch_slot(&j->ws, slot) + j->p->br * j->p->ldS;
}

/* All of one (batch, kv head): dQ, dK, dV private to the task. */
static void bwd_own_task(void *ud, int64_t t, int slot) {
  const bwd_job *j = ud;
  const attn_plan *p = j->p;
  int64_t b = t / p->K, kh = t % p->K, Tc = cdiv(keys_of(p, b), p->bc);
  for (int64_t kj = 0; kj < Tc; kj++)
    for (int64_t g = 0; g < p->G; g++)
      for (int64_t qi = 0; qi < p->Tr; qi++)
        if (tile_visible(p, b, qi, kj))
          bwd_tile(j, bwd_S(j, slot), bwd_dP(j, slot), b, kh * p->G + g, qi, kj,
                   BW_DKV | BW_DQ);
}

/* Two-pass, pass A: dK_j, dV_j of one key block (task order: b, kv head, kj). */
static void bwd_kv_task(void *ud, int64_t t, int slot) {
  const bwd_job *j = ud;
  const attn_plan *p = j->p;
  int64_t Tc = cdiv(p->M, p->bc), kj = t % Tc, kh = t / Tc % p->K, b = t / Tc / p->K;
  if (kj * p->bc >= keys_of(p, b)) return;
  for (int64_t g = 0; g < p->G; g++)
    for (int64_t qi = 0; qi < p->Tr; qi++)
      if (tile_visible(p, b, qi, kj))
        bwd_tile(j, bwd_S(j, slot), bwd_dP(j, slot), b, kh * p->G + g, qi, kj, BW_DKV);
}

/* Two-pass, pass B: dQ_i of one query block, largest blocks first. */
static void bwd_q_task(void *ud, int64_t t, int slot) {
  const bwd_job *j = ud;
  const attn_plan *p = j->p;
  int64_t nbh = p->B * p->H, qi = p->Tr - 1 - t / nbh, h = t % nbh % p->H, b = t % nbh / p->H;
  int64_t r0 = qi * p->br, jend = key_blocks_end(p, b, r0, imin(p->br, p->N - r0));
  for (int64_t kj = 0; kj < jend; kj++)
    bwd_tile(j, bwd_S(j, slot), bwd_dP(j, slot), b, h, qi, kj, BW_DQ);
}

/* D[row] = <dO[row], O[row]> for flat rows [begin, end). */
typedef struct {
  const bwd_job *j;
  const float *o;
  float *Dd;
} dot_job;

static void rowdot_rows(int64_t begin, int64_t end, void *ud) {
  const dot_job *d = ud;
  const attn_plan *p = d->j->p;
  for (int64_t row = begin; row < end; row++) {
    int64_t i = row % p->N, h = row / p->N % p->H, b = row / p->N / p->H;
    const float *go = row_ptr(&d->j->dout, b, h, i), *o = d->o + row * p->E;
    float s = 0;
    for (int64_t c = 0; c < p->E; c++) s += go[c] * o[c];
    d->Dd[row] = s;
  }
}

/* Fills the contiguous dq, dk, dv (zeroed by the caller) and dmask. */
static glia_status attn_backward(glia_ctx *G, bwd_job *j, const float *o) {
  const attn_plan *p = j->p;
  int64_t rows = p->B * p->H * p->N;
  if (rows == 0 || p->M == 0) return GLIA_OK;
  size_t dbytes = (size_t)rows * sizeof(float);
  float *Dd = glia_alloc(G, dbytes);
  if (!Dd) return glia_fail_nomem(G, dbytes, "glia.attention backward");
  dot_job dj = {.j = j, .o = o, .Dd = Dd};
  glia_parallel_for(G, rows, imax(1, 8192 / imax(p->E, 1)), rowdot_rows, &dj);
  j->Dd = Dd;

  /* ownership when the (batch, kv head) count splits evenly enough over the
  ** threads to beat the two-pass variant's 7/5 extra products */
  int64_t nbk = p->B * p->K, T = G->nthreads, Tc = cdiv(p->M, p->bc);
  double flops = 4.0 * (double)rows * (double)p->M * (double)(p->D + p->E);
  bool own = T <= 1 || (double)nbk / (double)(T * cdiv(nbk, T)) >= 5.0 / 7.0;
  int nslots = slots_for(G, own ? nbk : nbk * Tc, flops, INLINE_FLOPS);
  glia_status st = scratch_new(G, nslots, (size_t)(2 * p->br * p->ldS), &j->ws);
  if (st == GLIA_OK) {
    if (own || nslots == 1) {
      run_tasks(G, nslots, nbk, bwd_own_task, j, true);
    } else {
      run_tasks(G, nslots, nbk * Tc, bwd_kv_task, j, true);
      run_tasks(G, nslots, p->B * p->H * p->Tr, bwd_q_task, j, true);
    }
    glia_free(G, j->ws.base, j->ws.bytes);
  }
  glia_free(G, Dd, dbytes);
  return st;
}

/* ====================================================== checks, plans */

glia_status glia_check_qkv4(glia_ctx *G, const char *name, glia_tensor *q, glia_tensor *k,
                            glia_tensor *v) {
  glia_tensor *x[3] = {q, k, v};
  static const char *const names[3] = {"q", "k", "v"};
  for (int i = 0; i < 3; i++) {
    TRY(glia_check_live(G, name, x[i]));
    if (x[i]->dtype != GLIA_DTYPE_F32 || x[i]->ndim != 4)
      return glia_fail(G, x[i]->dtype != GLIA_DTYPE_F32 ? GLIA_EDTYPE : GLIA_ESHAPE,
                       "%s: %s must be a 4-D f32 tensor {B,heads,rows,dim}, got %s %s", name,
                       names[i], glia_dtype_name(x[i]->dtype), glia_shape_str(x[i]));
  }
  return GLIA_OK;
}

static glia_status check_qkv(glia_ctx *G, const char *name, glia_tensor *q, glia_tensor *k,
                             glia_tensor *v) {
  TRY(glia_check_qkv4(G, name, q, k, v));
  const char *what = NULL;
  if (k->size[0] != q->size[0] || v->size[0] != q->size[0]) what = "batch sizes differ";
  else if (k->size[1] != v->size[1]) what = "k and v head counts differ";
  else if (k->size[1] == 0 ? q->size[1] != 0 : q->size[1] % k->size[1] != 0)
    what = "query heads are not a multiple of key/value heads";
  else if (k->size[3] != q->size[3]) what = "q and k head dims differ";
  else if (k->size[2] != v->size[2]) what = "k and v lengths differ";
  if (what)
    return glia_fail(G, GLIA_ESHAPE, "%s: %s, q %s, k %s, v %s", name, what,
                     glia_shape_str(q), glia_shape_str(k), glia_shape_str(v));
  return GLIA_OK;
}

/* Broadcasts mask to {B,H,N,M} (NumPy rules, mask dims right-aligned). */
static glia_status mask_view_get(glia_ctx *G, const char *name, glia_tensor *mask,
                                 const int64_t full[4], mask_view *mv) {
  mv->kind = MASK_NONE;
  if (!mask) return GLIA_OK;
  TRY(glia_check_live(G, name, mask));
  if (mask->dtype == GLIA_DTYPE_F32) mv->kind = MASK_ADD;
  else if (mask->dtype == GLIA_DTYPE_BOOL || mask->dtype == GLIA_DTYPE_U8) mv->kind = MASK_KEEP;
  else
    return glia_fail(G, GLIA_EDTYPE, "%s: mask must be bool, u8 or f32, got %s %s", name,
                     glia_dtype_name(mask->dtype), glia_shape_str(mask));
  bool ok = mask->ndim <= 4;
  for (int d = 0; d < 4; d++) {
    int md = mask->ndim - 4 + d;
    mv->s[d] = 0;
    if (md < 0 || !ok) continue;
    if (mask->size[md] == full[d]) mv->s[d] = full[d] == 1 ? 0 : mask->stride[md];
    else if (mask->size[md] != 1) ok = false;
  }
  if (!ok)
    return glia_fail(G, GLIA_ESHAPE, "%s: mask %s does not broadcast to {B,H,N,M} = %s", name,
                     glia_shape_str(mask), glia_sizes_str(4, full));
  mv->p = glia_ptr(mask);
  return GLIA_OK;
}

/* Tile sizes (rows per head, key rows) for head dims d, e and group g: the
** stacked query tile of a group stays near 256 rows (section C.6 of the
** design: W_fwd and W_bwd within about half of a 2 MiB L2). */
static void default_tiles(int64_t d, int64_t e, int64_t g, bool backward, int64_t *br,
                          int64_t *bc) {
  int64_t dim = imax(d, e);
  int64_t rows = backward ? (dim <= 64 ? 128 : 64) : (dim <= 128 ? 256 : 128);
  *br = backward ? rows : imax(16, rows / imax(g, 1)); /* g is 0 with no query heads */
  *bc = dim <= 64 ? 256 : dim <= 128 ? 128 : 64;
}

typedef struct {
  bool causal;
  double scale; /* NAN: 1/sqrt(D) */
  glia_tensor *mask;
  int64_t br, bc, splits; /* 0: defaults */
} attn_opts;

/* Builds the plan: operands taken (maybe copied), tiles chosen. The caller
** releases it with plan_release on every path. */
static glia_status plan_new(glia_ctx *G, const char *name, glia_tensor *q, glia_tensor *k,
                            glia_tensor *v, const attn_opts *o, bool backward, attn_plan *p) {
  memset(p, 0, sizeof *p);
  TRY(check_qkv(G, name, q, k, v));
  p->B = q->size[0];
  p->H = q->size[1];
  p->K = k->size[1];
  p->G = p->K ? p->H / p->K : 1;
  p->N = q->size[2];
  p->M = k->size[2];
  p->D = q->size[3];
  p->E = v->size[3];
  p->causal = o->causal;
  p->scale = (float)(isnan(o->scale) ? 1.0 / sqrt((double)imax(p->D, 1)) : o->scale);
  if (o->br < 0 || o->bc < 0 || o->splits < 0)
    return glia_fail(G, GLIA_EARG, "%s: block sizes and splits must be positive", name);
  int64_t full[4] = {p->B, p->H, p->N, p->M};
  TRY(mask_view_get(G, name, o->mask, full, &p->mask));
  default_tiles(p->D, p->E, p->G, backward, &p->br, &p->bc);
  if (o->br) p->br = o->br;
  if (o->bc) p->bc = o->bc;
  p->br = imax(1, imin(p->br, p->N));
  p->bc = imax(1, imin(p->bc, p->M));
  p->Tr = cdiv(p->N, p->br);
  p->ldS = cdiv(p->bc, VL) * VL;
  p->few_rows = p->G * p->N <= FEW_ROWS;
  /* split the key range only where tasks are few and the call is big
  ** enough to run on the pool (both shape rules: same bits on any pool) */
  int64_t tasks = p->B * p->K * p->Tr, Tc = cdiv(p->M, p->bc);
  double flops = 2.0 * (double)(p->B * p->H * p->N) * (double)p->M * (double)(p->D + p->E);
  p->nsplit = 1;
  if (!backward && o->splits) p->nsplit = (int)imin(o->splits, 1 << 16);
  else if (!backward && tasks > 0 && tasks < SPLIT_TARGET && Tc >= 4 && flops >= INLINE_FLOPS)
    p->nsplit = (int)imin(cdiv(SPLIT_TARGET, tasks), Tc / 2);
  glia_status st = operand_get(G, q, &p->q);
  if (st == GLIA_OK) st = operand_get(G, k, &p->k);
  if (st == GLIA_OK) st = operand_get(G, v, &p->v);
  return st;
}

static void plan_release(attn_plan *p) {
  operand_release(&p->q);
  operand_release(&p->k);
  operand_release(&p->v);
}

/* ===================================================== the ops in C */

static glia_status attention_bwd(glia_ctx *G, glia_node *n, glia_tensor *dout,
                                 glia_tensor **din);

static glia_status new_outputs(glia_ctx *G, const attn_plan *p, glia_tensor **o,
                               glia_tensor **lse) {
  int64_t osz[4] = {p->B, p->H, p->N, p->E};
  TRY(glia_tensor_new(G, GLIA_DTYPE_F32, 4, osz, o));
  glia_status st = glia_tensor_new(G, GLIA_DTYPE_F32, 3, osz, lse);
  if (st != GLIA_OK) {
    glia_tensor_release(*o);
    *o = NULL;
  }
  return st;
}

/* Records the node: inputs q, k, v, mask; saved q, k, v, mask, out, lse. */
static glia_status record(glia_ctx *G, glia_tensor *q, glia_tensor *k, glia_tensor *v,
                          const attn_opts *o, glia_tensor *out, glia_tensor *lse) {
  glia_tensor *in[4] = {q, k, v, o->mask};
  bool mask_grad = o->mask && o->mask->dtype == GLIA_DTYPE_F32;
  glia_status st;
  glia_node *node = glia_node_begin(G, "glia.attention", attention_bwd, mask_grad ? 4 : 3, in,
                                    &st);
  if (!node) return st;
  node->iarg[0] = o->causal;
  node->iarg[1] = o->br;
  node->iarg[2] = o->bc;
  node->farg[0] = o->scale;
  glia_tensor *save[6] = {q, k, v, o->mask, out, lse};
  for (int i = 0; i < 6 && st == GLIA_OK; i++) st = glia_node_save(G, node, save[i]);
  return glia_node_end(node, st, out);
}

static glia_status attention_run(glia_ctx *G, const char *name, glia_tensor *q, glia_tensor *k,
                                 glia_tensor *v, const attn_opts *o, glia_tensor **out,
                                 glia_tensor **lse_out) {
  attn_plan p;
  glia_tensor *r = NULL, *lse = NULL;
  glia_status st = plan_new(G, name, q, k, v, o, false, &p);
  if (st == GLIA_OK) st = new_outputs(G, &p, &r, &lse);
  if (st == GLIA_OK) st = attn_forward(G, &p, (float *)glia_ptr(r), (float *)glia_ptr(lse));
  plan_release(&p);
  if (st == GLIA_OK) st = record(G, q, k, v, o, r, lse);
  if (st != GLIA_OK) {
    glia_tensor_release(r);
    glia_tensor_release(lse);
    return st;
  }
  *out = r;
  if (lse_out) *lse_out = lse;
  else glia_tensor_release(lse);
  return GLIA_OK;
}

glia_status glia_attention(glia_ctx *G, glia_tensor *q, glia_tensor *k, glia_tensor *v,
                           glia_tensor *mask, int causal, double scale, glia_tensor **out,
                           glia_tensor **lse) {
  attn_opts o = {.causal = causal, .scale = scale, .mask = mask};
  return attention_run(G, "glia.attention", q, k, v, &o, out, lse);
}

/* dq, dk, dv (and dmask) from the saved q, k, v, mask, out and lse. */
static glia_status attention_bwd(glia_ctx *G, glia_node *n, glia_tensor *dout,
                                 glia_tensor **din) {
  glia_tensor *sv[6];
  for (int i = 0; i < 6; i++) TRY(glia_node_saved(G, n, i, &sv[i]));
  attn_opts o = {.causal = n->iarg[0], .scale = n->farg[0], .mask = sv[3],
                 .br = n->iarg[1], .bc = n->iarg[2]};
  attn_plan p;
  bwd_job j = {.p = &p, .lse = (const float *)glia_ptr(sv[5])};
  glia_tensor *g[4] = {NULL, NULL, NULL, NULL};
  glia_status st = plan_new(G, n->name, sv[0], sv[1], sv[2], &o, true, &p);
  if (st == GLIA_OK) st = operand_get(G, dout, &j.dout);
  for (int i = 0; i < 3 && st == GLIA_OK; i++)
    st = glia_tensor_zeros(G, GLIA_DTYPE_F32, 4, sv[i]->size, &g[i]);
  if (st == GLIA_OK && n->ninputs > 3 && n->needs[3]) {
    int64_t full[4] = {p.B, p.H, p.N, p.M};
    st = glia_tensor_zeros(G, GLIA_DTYPE_F32, 4, full, &g[3]);
  }
  if (st == GLIA_OK) {
    j.dq = (float *)glia_ptr(g[0]);
    j.dk = (float *)glia_ptr(g[1]);
    j.dv = (float *)glia_ptr(g[2]);
    j.dmask = g[3] ? (float *)glia_ptr(g[3]) : NULL;
    st = attn_backward(G, &j, (const float *)glia_ptr(sv[4]));
  }
  operand_release(&j.dout);
  plan_release(&p);
  for (int i = 0; i < 4; i++) {
    if (st == GLIA_OK && i < n->ninputs && n->needs[i]) din[i] = g[i];
    else glia_tensor_release(g[i]);
  }
  if (st == GLIA_OK) st = glia_grads_to_inputs(G, n, din); /* the mask broadcasts */
  return st;
}

glia_status glia_attention_decode(glia_ctx *G, glia_tensor *q, glia_tensor *kc, glia_tensor *vc,
                                  const int64_t *lens, double scale, glia_tensor **out) {
  const char *name = "glia.attention_decode";
  glia_tensor *in[3] = {q, kc, vc};
  for (int i = 0; i < 3; i++)
    if (G->grad_mode && glia_tensor_needs_grad(in[i]))
      return glia_fail(G, GLIA_EGRAD,
                       "%s: inference only, but an input requires grad (use glia.attention "
                       "for training, or glia.no_grad)", name);
  attn_opts o = {.causal = true, .scale = scale};
  attn_plan p;
  glia_tensor *r = NULL, *lse = NULL;
  glia_status st = plan_new(G, name, q, kc, vc, &o, false, &p);
  for (int64_t b = 0; st == GLIA_OK && b < p.B; b++)
    if (lens[b] < 0 || lens[b] > p.M)
      st = glia_fail(G, GLIA_ERANGE, "%s: length %lld of sequence %lld outside [0, %lld], cache %s",
                     name, (long long)lens[b], (long long)b + 1, (long long)p.M,
                     glia_shape_str(kc));
  p.lens = lens;
  if (st == GLIA_OK) st = new_outputs(G, &p, &r, &lse);
  if (st == GLIA_OK) st = attn_forward(G, &p, (float *)glia_ptr(r), (float *)glia_ptr(lse));
  plan_release(&p);
  glia_tensor_release(lse);
  return glia_hand_out(st, r, out);
}

/* ================================================== registry wrappers */

static glia_status opts_from_args(glia_ctx *G, const char *name, glia_value *a, attn_opts *o) {
  o->causal = arg_bool(&a[3], 0);
  o->scale = arg_present(&a[4]) ? arg_num(&a[4], 0) : NAN;
  o->mask = arg_t(&a[5]);
  o->br = arg_int(&a[6], 0);
  o->bc = arg_int(&a[7], 0);
  o->splits = arg_int(&a[8], 0);
  if ((arg_present(&a[6]) && o->br < 1) || (arg_present(&a[7]) && o->bc < 1) ||
      (arg_present(&a[8]) && o->splits < 1))
    return glia_fail(G, GLIA_EARG, "%s: block sizes and splits must be >= 1", name);
  return GLIA_OK;
}

/* attention(q, k, v [, causal [, scale [, mask [, block_q [, block_k [, splits]]]]]]) */
static glia_status op_attention(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                glia_value *outs) {
  (void)nargs;
  attn_opts o;
  TRY(opts_from_args(G, "glia.attention", args, &o));
  glia_tensor *r;
  TRY(attention_run(G, "glia.attention", args[0].u.t, args[1].u.t, args[2].u.t, &o, &r, NULL));
  return out1(nouts, outs, r);
}

/* attention_lse(...same...) -> out, lse; lse carries no gradient. */
static glia_status op_attention_lse(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                    glia_value *outs) {
  (void)nargs;
  attn_opts o;
  TRY(opts_from_args(G, "glia.attention_lse", args, &o));
  glia_tensor *r, *lse;
  TRY(attention_run(G, "glia.attention_lse", args[0].u.t, args[1].u.t, args[2].u.t, &o, &r,
                    &lse));
  return out2(nouts, outs, r, lse);
}

/* attention_decode(q, kcache, vcache, len [, scale]): len is a number or an
** integer tensor {B} of per-sequence lengths (ragged batch). */
static glia_status op_attention_decode(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                       glia_value *outs) {
  (void)nargs;
  const char *name = "glia.attention_decode";
  glia_tensor *q = args[0].u.t, *kc = args[1].u.t, *len = arg_t(&args[3]);
  TRY(check_qkv(G, name, q, kc, args[2].u.t));
  int64_t B = q->size[0];
  size_t bytes = (size_t)imax(B, 1) * sizeof(int64_t);
  int64_t *lens = glia_malloc(G, bytes);
  if (!lens) return glia_fail_nomem(G, bytes, name);
  glia_status st = GLIA_OK;
  if (!len) {
    double n = arg_num(&args[3], 0);
    if (n != floor(n) || fabs(n) > 1e15)
      st = glia_fail(G, GLIA_EARG, "%s: length must be an integer, got %g", name, n);
    for (int64_t b = 0; b < B && st == GLIA_OK; b++) lens[b] = (int64_t)n;
  } else if ((len->dtype != GLIA_DTYPE_I64 && len->dtype != GLIA_DTYPE_I32) || len->ndim != 1 ||
             len->size[0] != B) {
    st = glia_fail(G, GLIA_ESHAPE,
                   "%s: lengths must be a number or an integer tensor {%lld}, got %s %s", name,
                   (long long)B, glia_dtype_name(len->dtype), glia_shape_str(len));
  } else {
    const char *lp = glia_ptr(len);
    for (int64_t b = 0; b < B; b++) {
      const char *e = lp + b * len->stride[0] * (int64_t)glia_dtype_size(len->dtype);
      lens[b] = len->dtype == GLIA_DTYPE_I64 ? *(const int64_t *)e : *(const int32_t *)e;
    }
  }
  glia_tensor *r = NULL;
  double scale = arg_present(&args[4]) ? arg_num(&args[4], 0) : NAN;
  if (st == GLIA_OK) st = glia_attention_decode(G, q, kc, args[2].u.t, lens, scale, &r);
  free(lens);
  TRY(st);
  return out1(nouts, outs, r);
}

const glia_op glia_ops_attention[] = {
    {"attention", "TTT|bntiii", op_attention, 0},
    {"attention_lse", "TTT|bntiii", op_attention_lse, 0},
    {"attention_decode", "TTTS|n", op_attention_decode, 0},
    {NULL, NULL, NULL, 0},
};
