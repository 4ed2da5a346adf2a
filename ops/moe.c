/*
** ops/moe.c -- mixture-of-experts routing and grouped expert MLPs, forward
** and backward. Ops: moe_route (differentiable in its gate values),
** moe_experts (differentiable in x, the gates and every expert weight),
** moe_dispatch (the bookkeeping, for inspection; no gradient), moe_decode
** and decoder_moe (decoding steps in one call; inference only).
**
** Shape letters: T tokens, d model width, E experts, k experts per token,
** F expert hidden width (F1 = F, or 2F for swiglu), A kept assignments.
**
** Routing, per token t with logits z_t {E}:
**
**   scores   s = softmax(z_t)   or   s = sigmoid(z_t)          ("sigmoid": DeepSeek-V3)
**   sel      = s + bias                  (bias {E} or none: changes which, never how much)
**   groups   G equal contiguous groups of E/G experts; group score = sum of the two
**            largest sel in the group (the largest one when there is no bias); only
**            the topk_groups best groups stay selectable
**   S_t      = the k largest sel (ties: lower expert first)
**   gate_j   = scale * s_j / sum_{i in S_t} s_i   (normalize)   or   scale * s_j
**            (normalized gates are computed as the softmax of log s_j over
**            S_t: the same value, defined when every s_i underflows to 0)
**
** Capacity (capacity_factor cf): each expert keeps at most ceil(cf k T / E)
** assignments; the rest are dropped (they add nothing to y and get no
** gradient). Who is kept first: priority "choice" takes every first choice
** in token order, then every second choice, ...; "gate" takes assignments by
** gate value, largest first (ties in the "choice" order).
**
** Experts, for the kept assignments (t, j) of expert e = idx[t,j]:
**
**   h    = act(W1_e x_t + b1_e)              act: relu, gelu (erf), gelu_tanh, silu
**        = silu(a) o b, (a; b) = W1_e x_t + b1_e   for swiglu (W1_e {2F, d}: a the first F rows)
**   y_t  = sum_j gate_tj (W2_e h + b2_e)      over j = 1..k in order, kept ones only
**
** How it runs: dispatch is a counting sort of the kept assignments by expert
** (within an expert, by token, then slot), so expert e owns the contiguous
** rows off[e]..off[e+1]-1 of the gathered inputs Xs {A,d}. The two products
** of each expert are single-threaded sgemm calls on those rows (a grouped
** GEMM): tasks of (expert, <= 256 rows) in the forward, one task per expert
** in the backward (so each expert's weight gradients have one owner), taken
** from an atomic counter by the pool's threads, largest first. No task's
** arithmetic depends on the thread that runs it, and every per-token sum
** (combine, dx) runs over the slots in order: the bits are the same for any
** thread count and run to run. Decoding (T <= 4 and nothing to record)
** runs each kept row through glia_matvec, the dense decode path's row
** kernel, so only the chosen experts' weights are read. decoder_moe is a
** decoding step of a transformer block's whole MoE sub-layer (layer norm,
** routing, chosen and shared experts, residual) on one row in one call,
** for nn.TransformerBlock; see its section below.
**
** Autograd: moe_experts records two nodes, "up" (x, w1, b1 -> H {A,F}, the
** activated hidden rows in dispatch order) and "down" (H, gates, w2, b2 ->
** y), each holding a copy of the dispatch plan; moe_route records one node
** on z. Selection is piecewise constant: gradients flow through gate
** values only.
*/
#include "glia_impl.h"
#include "ops.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#define ROUTE_NAME "glia.moe_route"
#define MOE_NAME "glia.moe"

/* Forward tasks are at most this many rows of one expert. */
#define TASK_ROWS 256
/* Below this many flops a call stays on the calling thread. */
#define INLINE_FLOPS (1 << 22)
/* At most this many tokens take the decoding path. */
#define DECODE_T 4

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

/* ======================================================== routing */

typedef struct {
  int64_t T, E, k;
  bool sigmoid, normalize, gate_priority;
  const float *bias; /* {E} or NULL */
  int64_t groups, topk_groups;
  float scale;
  double cf; /* <= 0: no capacity */
} route_cfg;

typedef struct {
  const route_cfg *c;
  const float *z;  /* {T,E} */
  float *s;        /* {T,E} scores */
  float *scratch;  /* {T,E} selection scores */
  int64_t *idx;    /* {T,k} 0-based */
  float *gate;     /* {T,k} */
  float *w;        /* {T,k} gates before route_scale (saved for backward) */
} route_job;

/* log(sigmoid(x)), without underflow to log(0) for very negative x. */
static float log_sigmoid(float x) {
  return x < 0 ? x - log1pf(expf(x)) : -log1pf(expf(-x));
}

/* The largest (and second largest) of sel[0..n) not masked. */
static float group_score(const float *sel, int64_t n, bool top2) {
  float a = -INFINITY, b = -INFINITY;
  for (int64_t i = 0; i < n; i++) {
    if (sel[i] > a) b = a, a = sel[i];
    else if (sel[i] > b) b = sel[i];
  }
  return top2 && n > 1 ? a + b : a;
}

static void route_rows(int64_t begin, int64_t end, void *ud) {
  const route_job *J = ud;
  const route_cfg *c = J->c;
  int64_t E = c->E, k = c->k;
  for (int64_t t = begin; t < end; t++) {
    const float *z = J->z + t * E;
    float *s = J->s + t * E, *sel = J->scratch + t * (E + k); /* sel {E}, then buf {k} */
    int64_t *idx = J->idx + t * k;
    if (c->sigmoid) {
      for (int64_t e = 0; e < E; e++) s[e] = 1.0f / (1.0f + glia_expf(-z[e]));
    } else {
      float m = -INFINITY, sum = 0;
      for (int64_t e = 0; e < E; e++) m = z[e] > m ? z[e] : m;
      for (int64_t e = 0; e < E; e++) sum += s[e] = glia_expf(z[e] - m);
      for (int64_t e = 0; e < E; e++) s[e] /= sum;
    }
    for (int64_t e = 0; e < E; e++) sel[e] = s[e] + (c->bias ? c->bias[e] : 0.0f);
    /* group-limited selection: keep the topk_groups best groups */
    uint64_t keep_lo = ~(uint64_t)0; /* groups <= 64 (checked) */
    if (c->groups > 1) {
      int64_t gs = E / c->groups;
      float gsc[64];
      for (int64_t g = 0; g < c->groups; g++)
        gsc[g] = group_score(sel + g * gs, gs, c->bias != NULL);
      keep_lo = 0;
      for (int64_t m = 0; m < c->topk_groups; m++) {
        int64_t best = -1;
        for (int64_t g = 0; g < c->groups; g++)
          if (!(keep_lo >> g & 1) && (best < 0 || gsc[g] > gsc[best])) best = g;
        keep_lo |= (uint64_t)1 << best;
      }
    }
    /* the k largest sel, sorted, in idx and buf (O(E k) at worst, most
    ** experts rejected by one compare): a later expert enters only when
    ** strictly larger, so ties keep the lower expert first */
    int64_t gs = c->groups > 1 ? E / c->groups : E, n = 0;
    float *buf = sel + E;
    for (int64_t e = 0; e < E; e++) {
      if (!(keep_lo >> (e / gs) & 1)) continue;
      float v = sel[e];
      if (n == k && !(v > buf[k - 1])) continue;
      int64_t p = n < k ? n++ : k - 1;
      for (; p > 0 && v > buf[p - 1]; p--) buf[p] = buf[p - 1], idx[p] = idx[p - 1];
      buf[p] = v, idx[p] = e;
    }
    /* normalized gates: a softmax over the chosen experts' log-scores (z
    ** for softmax, log sigmoid(z) for sigmoid), which is s_j / sum s_i but
    ** stays defined when every chosen score underflows to 0 */
    float *w = J->w + t * k, *gate = J->gate + t * k;
    if (c->normalize) {
      float m = -INFINITY, den = 0;
      for (int64_t j = 0; j < k; j++) {
        w[j] = c->sigmoid ? log_sigmoid(z[idx[j]]) : z[idx[j]];
        m = w[j] > m ? w[j] : m;
      }
      for (int64_t j = 0; j < k; j++) den += w[j] = expf(w[j] - m);
      for (int64_t j = 0; j < k; j++) gate[j] = c->scale * (w[j] /= den);
    } else {
      for (int64_t j = 0; j < k; j++) gate[j] = c->scale * (w[j] = s[idx[j]]);
    }
  }
}

typedef struct {
  float g;
  int64_t key; /* slot * T + t: the "choice" order */
} prio_item;

static int prio_cmp(const void *pa, const void *pb) {
  const prio_item *a = pa, *b = pb;
  if (a->g != b->g) return a->g > b->g ? -1 : 1;
  return a->key < b->key ? -1 : a->key > b->key;
}

/* kept[t*k+j] = 1 for the assignments within capacity (all of them with no
** capacity); counts[e] = the assignments routed to e before dropping. */
static glia_status apply_capacity(glia_ctx *G, const route_cfg *c, const int64_t *idx,
                                  const float *gate, uint8_t *kept, int64_t *counts) {
  int64_t T = c->T, k = c->k, E = c->E, n = T * k;
  memset(counts, 0, (size_t)E * sizeof *counts);
  for (int64_t i = 0; i < n; i++) counts[idx[i]]++;
  if (!(c->cf > 0) || isinf(c->cf)) {
    memset(kept, 1, (size_t)n);
    return GLIA_OK;
  }
  double capd = ceil(c->cf * (double)k * (double)T / (double)E);
  int64_t cap = capd > (double)n ? n : (int64_t)capd;
  memset(kept, 0, (size_t)n);
  prio_item *order = glia_malloc(G, (size_t)(n ? n : 1) * sizeof *order);
  int64_t *fill = glia_malloc(G, (size_t)E * sizeof *fill);
  if (!order || !fill) {
    free(order);
    free(fill);
    return glia_fail_nomem(G, (size_t)n * sizeof *order, ROUTE_NAME " capacity");
  }
  for (int64_t j = 0; j < k; j++)
    for (int64_t t = 0; t < T; t++)
      order[j * T + t] = (prio_item){c->gate_priority ? gate[t * k + j] : 0.0f, j * T + t};
  if (c->gate_priority) qsort(order, (size_t)n, sizeof *order, prio_cmp);
  memset(fill, 0, (size_t)E * sizeof *fill);
  for (int64_t i = 0; i < n; i++) {
    int64_t j = order[i].key / T, t = order[i].key % T, e = idx[t * k + j];
    if (fill[e] < cap) fill[e]++, kept[t * k + j] = 1;
  }
  free(order);
  free(fill);
  return GLIA_OK;
}

static glia_status route_bwd(glia_ctx *G, glia_node *n, glia_tensor *dout, glia_tensor **din);

/* Routes z {T,E}: gates {T,k} (recorded), idx {T,k} i64 from `base`,
** counts {E} i64 (before dropping), kept {T,k} bool. */
static glia_status moe_route(glia_ctx *G, glia_tensor *z, route_cfg c, int base,
                             glia_tensor **gates, glia_tensor **idx, glia_tensor **counts,
                             glia_tensor **kept) {
  TRY(glia_check_f32(G, ROUTE_NAME, "logits", z));
  if (z->ndim != 2)
    return glia_fail(G, GLIA_ESHAPE, ROUTE_NAME ": logits must be {T,E}, got %s",
                     glia_shape_str(z));
  c.T = z->size[0];
  c.E = z->size[1];
  const char *what = NULL;
  if (c.k < 1 || c.k > c.E) what = "k must be in 1..E";
  else if (c.groups < 1 || c.groups > 64 || c.E % c.groups != 0)
    what = "groups must divide the experts (at most 64 groups)";
  else if (c.topk_groups < 1 || c.topk_groups > c.groups)
    what = "topk_groups must be in 1..groups";
  else if (c.groups > 1 && c.k > c.topk_groups * (c.E / c.groups))
    what = "k is larger than the experts of topk_groups groups";
  else if (c.cf <= 0 || isnan(c.cf)) what = "capacity_factor must be > 0";
  else if (!isfinite(c.scale)) what = "route_scale must be finite";
  if (what)
    return glia_fail(G, GLIA_EARG,
                     ROUTE_NAME ": %s; k %lld, groups %lld, topk_groups %lld, "
                     "capacity_factor %g, logits %s",
                     what, (long long)c.k, (long long)c.groups, (long long)c.topk_groups,
                     c.cf, glia_shape_str(z));
  if (isinf(c.cf)) c.cf = 0;
  int64_t T = c.T, E = c.E, k = c.k;
  glia_tensor *zc = NULL, *s = NULL, *sc = NULL, *g = NULL, *w = NULL, *ix = NULL, *ix0 = NULL,
              *cnt = NULL, *kp = NULL;
  int64_t tk[2] = {T, k}, te[2] = {T, E}, tek[2] = {T, E + k};
  glia_status st = glia_tensor_contiguous_as(G, z, GLIA_DTYPE_F32, &zc);
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_F32, 2, te, &s);
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_F32, 2, tek, &sc);
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_F32, 2, tk, &g);
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_F32, 2, tk, &w);
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_I64, 2, tk, &ix0);
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_I64, 2, tk, &ix);
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_I64, 1, &E, &cnt);
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_BOOL, 2, tk, &kp);
  if (st == GLIA_OK) {
    route_job J = {&c, (const float *)glia_ptr(zc), (float *)glia_ptr(s),
                   (float *)glia_ptr(sc), (int64_t *)glia_ptr(ix0), (float *)glia_ptr(g),
                   (float *)glia_ptr(w)};
    glia_parallel_for(G, T, glia_grain_items(8 * E + k), route_rows, &J);
    st = apply_capacity(G, &c, J.idx, J.gate, (uint8_t *)glia_ptr(kp),
                        (int64_t *)glia_ptr(cnt));
    int64_t *o = (int64_t *)glia_ptr(ix);
    for (int64_t i = 0; i < T * k; i++) o[i] = J.idx[i] + base;
  }
  if (st == GLIA_OK) {
    glia_node *node = glia_node_begin(G, ROUTE_NAME, route_bwd, 1, &z, &st);
    if (node) {
      node->iarg[0] = c.sigmoid;
      node->iarg[1] = c.normalize;
      node->farg[0] = c.scale;
      st = glia_node_save(G, node, s);
      if (st == GLIA_OK) st = glia_node_save(G, node, ix0);
      if (st == GLIA_OK) st = glia_node_save(G, node, w);
      st = glia_node_end(node, st, g);
    }
  }
  glia_tensor_release(zc);
  glia_tensor_release(sc);
  glia_tensor_release(s);
  glia_tensor_release(ix0);
  glia_tensor_release(w);
  if (st != GLIA_OK) {
    glia_tensor_release(g);
    glia_tensor_release(ix);
    glia_tensor_release(cnt);
    glia_tensor_release(kp);
    return st;
  }
  *gates = g, *idx = ix, *counts = cnt, *kept = kp;
  return GLIA_OK;
}

/* dz from dgates. Normalized: the gates are scale * w, w the softmax of the
** chosen log-scores l (z, or log sigmoid(z)), so dl_j = scale w_j (dg_j -
** sum_i w_i dg_i), then dz_j = dl_j (softmax) or dl_j (1 - s_j) (sigmoid),
** on the chosen experts only. Not normalized: ds = scale dg on the chosen,
** then through softmax or sigmoid. */
static glia_status route_bwd(glia_ctx *G, glia_node *n, glia_tensor *dout, glia_tensor **din) {
  glia_tensor *s, *ix, *w, *dg = NULL, *dz = NULL;
  TRY(glia_node_saved(G, n, 0, &s));
  TRY(glia_node_saved(G, n, 1, &ix));
  TRY(glia_node_saved(G, n, 2, &w));
  int64_t T = s->size[0], E = s->size[1], k = ix->size[1];
  bool sigmoid = n->iarg[0], normalize = n->iarg[1];
  float scale = (float)n->farg[0];
  TRY(glia_tensor_contiguous_as(G, dout, GLIA_DTYPE_F32, &dg));
  glia_status st = glia_tensor_zeros(G, GLIA_DTYPE_F32, 2, s->size, &dz);
  if (st == GLIA_OK) {
    const float *S = (const float *)glia_ptr(s), *DG = (const float *)glia_ptr(dg),
                *W = (const float *)glia_ptr(w);
    const int64_t *IX = (const int64_t *)glia_ptr(ix);
    float *DZ = (float *)glia_ptr(dz);
    for (int64_t t = 0; t < T; t++) {
      const float *st_ = S + t * E, *dgt = DG + t * k, *wt = W + t * k;
      const int64_t *it = IX + t * k;
      float *ds = DZ + t * E; /* ds first, then dz in place */
      if (normalize) {
        float mix = 0;
        for (int64_t j = 0; j < k; j++) mix += wt[j] * dgt[j];
        for (int64_t j = 0; j < k; j++) {
          float dl = scale * wt[j] * (dgt[j] - mix);
          ds[it[j]] = sigmoid ? dl * (1.0f - st_[it[j]]) : dl;
        }
        continue;
      }
      for (int64_t j = 0; j < k; j++) ds[it[j]] = scale * dgt[j];
      if (sigmoid) {
        for (int64_t j = 0; j < k; j++) {
          float v = st_[it[j]];
          ds[it[j]] *= v * (1.0f - v);
        }
      } else {
        float dot = 0;
        for (int64_t j = 0; j < k; j++) dot += ds[it[j]] * st_[it[j]];
        for (int64_t e = 0; e < E; e++) ds[e] = st_[e] * (ds[e] - dot);
      }
    }
  }
  glia_tensor_release(dg);
  return glia_hand_out(st, dz, &din[0]);
}

/* ======================================================= dispatch */

/* The counting sort of the kept assignments by expert. One allocation
** (the arrays follow the struct), so a node can own a copy. */
typedef struct {
  int64_t T, k, E, A;
  int64_t *off;  /* {E+1}: expert e owns rows off[e]..off[e+1]-1 */
  int64_t *tok;  /* {A} token of each row */
  int64_t *slot; /* {A} slot of each row */
  int64_t *inv;  /* {T*k} row of assignment (t, j), -1 when dropped */
} moe_plan;

static size_t plan_bytes(int64_t T, int64_t k, int64_t E, int64_t A) {
  return sizeof(moe_plan) + sizeof(int64_t) * (size_t)(E + 1 + 2 * A + T * k);
}

static void plan_point(moe_plan *p) {
  p->off = (int64_t *)(p + 1);
  p->tok = p->off + p->E + 1;
  p->slot = p->tok + p->A;
  p->inv = p->slot + p->A;
}

static moe_plan *plan_clone(glia_ctx *G, const moe_plan *p) {
  size_t bytes = plan_bytes(p->T, p->k, p->E, p->A);
  moe_plan *q = glia_malloc(G, bytes);
  if (!q) return NULL;
  memcpy(q, p, bytes);
  plan_point(q);
  return q;
}

/* kept masks are bool or u8 (moe_route's output): a float is refused rather
** than read as nonzero = kept, the same for every op taking one. */
static glia_status check_kept(glia_ctx *G, const char *name, glia_tensor *kept) {
  TRY(glia_check_live(G, name, kept));
  if (kept->dtype != GLIA_DTYPE_BOOL && kept->dtype != GLIA_DTYPE_U8)
    return glia_fail(G, GLIA_EDTYPE, "%s: kept must be bool or u8, got %s %s", name,
                     glia_dtype_name(kept->dtype), glia_shape_str(kept));
  return GLIA_OK;
}

/* idx {T,k} (counted from base, any integer dtype), kept {T,k} or NULL. */
static glia_status plan_build(glia_ctx *G, const char *name, glia_tensor *idx, glia_tensor *kept,
                              int64_t E, int base, moe_plan **out) {
  int64_t T = idx->size[0], k = idx->size[1], n = T * k;
  glia_tensor *ic = NULL, *kc = NULL;
  TRY(glia_tensor_contiguous_as(G, idx, GLIA_DTYPE_I64, &ic));
  glia_status st = kept ? glia_tensor_contiguous_as(G, kept, GLIA_DTYPE_BOOL, &kc) : GLIA_OK;
  const int64_t *IX = (const int64_t *)glia_ptr(ic);
  const uint8_t *KP = kc ? (const uint8_t *)glia_ptr(kc) : NULL;
  int64_t A = 0;
  for (int64_t i = 0; st == GLIA_OK && i < n; i++) {
    if (IX[i] < base || IX[i] >= E + base) {
      st = glia_fail(G, GLIA_ERANGE, "%s: expert index %lld out of range 1..%lld (counted from %d) "
                     "at token %lld, idx %s", name, (long long)IX[i], (long long)E, base,
                     glia_shown(G, i / k), glia_shape_str(idx));
    }
    A += !KP || KP[i];
  }
  moe_plan *p = NULL;
  if (st == GLIA_OK) {
    size_t bytes = plan_bytes(T, k, E, A);
    p = glia_malloc(G, bytes);
    if (!p) st = glia_fail_nomem(G, bytes, "glia.moe dispatch");
  }
  if (st == GLIA_OK) {
    *p = (moe_plan){.T = T, .k = k, .E = E, .A = A};
    plan_point(p);
    memset(p->off, 0, (size_t)(E + 1) * sizeof *p->off);
    for (int64_t i = 0; i < n; i++)
      if (!KP || KP[i]) p->off[IX[i] - base + 1]++;
    for (int64_t e = 0; e < E; e++) p->off[e + 1] += p->off[e];
    /* the cursor of each expert, then the stable placement */
    int64_t *c2 = glia_malloc(G, (size_t)(E ? E : 1) * sizeof *c2);
    if (!c2) {
      free(p);
      p = NULL;
      st = glia_fail_nomem(G, (size_t)E * sizeof *c2, "glia.moe dispatch");
    } else {
      memcpy(c2, p->off, (size_t)E * sizeof *c2);
      for (int64_t i = 0; i < n; i++) {
        if (KP && !KP[i]) {
          p->inv[i] = -1;
          continue;
        }
        int64_t pos = c2[IX[i] - base]++;
        p->tok[pos] = i / k;
        p->slot[pos] = i % k;
        p->inv[i] = pos;
      }
      free(c2);
    }
  }
  glia_tensor_release(ic);
  glia_tensor_release(kc);
  if (st == GLIA_OK) *out = p;
  return st;
}

/* ========================================================= tasks */

typedef struct {
  int64_t e, r0, r1; /* rows r0..r1-1 of expert e */
} moe_task;

typedef void (*task_fn)(void *ud, const moe_task *t);

typedef struct {
  const moe_task *tasks;
  int64_t n;
  atomic_int_fast64_t next;
  task_fn fn;
  void *ud;
} task_job;

static void task_worker(int64_t begin, int64_t end, void *ud) {
  (void)begin, (void)end;
  task_job *j = ud;
  for (;;) {
    int64_t i = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
    if (i >= j->n) return;
    j->fn(j->ud, &j->tasks[i]);
  }
}

static int task_cmp(const void *pa, const void *pb) {
  const moe_task *a = pa, *b = pb;
  int64_t na = a->r1 - a->r0, nb = b->r1 - b->r0;
  if (na != nb) return na > nb ? -1 : 1;
  if (a->e != b->e) return a->e < b->e ? -1 : 1;
  return a->r0 < b->r0 ? -1 : a->r0 > b->r0;
}

/* Runs fn over the tasks of plan p: each expert's rows in pieces of at most
** `chunk` rows (chunk 0: whole), largest first, on the pool. OpenBLAS is
** single-threaded throughout, so a task's bits never depend on the pool. */
static glia_status run_tasks(glia_ctx *G, const moe_plan *p, int64_t chunk, double flops_per_row,
                             task_fn fn, void *ud) {
  int64_t n = 0;
  for (int64_t e = 0; e < p->E; e++) {
    int64_t rows = p->off[e + 1] - p->off[e];
    if (rows) n += chunk ? (rows + chunk - 1) / chunk : 1;
  }
  if (!n) return GLIA_OK;
  moe_task *tasks = glia_malloc(G, (size_t)n * sizeof *tasks);
  if (!tasks) return glia_fail_nomem(G, (size_t)n * sizeof *tasks, "glia.moe tasks");
  int64_t i = 0;
  for (int64_t e = 0; e < p->E; e++)
    for (int64_t r = p->off[e]; r < p->off[e + 1]; r += chunk ? chunk : p->A)
      tasks[i++] = (moe_task){e, r, chunk ? imin(r + chunk, p->off[e + 1]) : p->off[e + 1]};
  qsort(tasks, (size_t)n, sizeof *tasks, task_cmp);
  task_job j = {.tasks = tasks, .n = n, .fn = fn, .ud = ud};
  atomic_init(&j.next, 0);
  glia_blas_set_threads(1);
  if (flops_per_row * (double)p->A < INLINE_FLOPS || G->nthreads < 2 || n < 2)
    task_worker(0, 1, &j);
  else
    glia_parallel_for(G, imin(n, G->nthreads), 1, task_worker, &j);
  glia_blas_set_threads(G->nthreads);
  free(tasks);
  return GLIA_OK;
}

/* C {m,n} (row stride ldc) = op(A) op(B) + beta C, row-major. */
static void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                 const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (beta == 0)
      for (int64_t i = 0; i < m; i++) memset(c + i * ldc, 0, (size_t)n * sizeof *c);
    return;
  }
  glia_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
             (int)m, (int)n, (int)k, 1.0f, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

/* out[c] = sum of rows r of x {rows, n} (ld n), in row order. */
static void colsum(float *out, const float *x, int64_t rows, int64_t n) {
  memset(out, 0, (size_t)n * sizeof *out);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < n; c++) out[c] += x[r * n + c];
}

/* ====================================================== experts */

typedef enum { ACT_RELU, ACT_GELU, ACT_GELU_TANH, ACT_SILU, ACT_SWIGLU } moe_act;
static const char *const ACT_NAMES[] = {"relu", "gelu", "gelu_tanh", "silu", "swiglu", NULL};
static const glia_unop ACT_UNOP[] = {GLIA_UN_RELU, GLIA_UN_GELU_ERF, GLIA_UN_GELU, GLIA_UN_SILU,
                                     GLIA_UN_SILU};

/* Everything the kernels read, contiguous. */
typedef struct {
  int64_t T, d, E, F, F1, k;
  moe_act act;
  const float *x, *gate, *w1, *b1, *w2, *b2; /* b1, b2 may be NULL */
  const moe_plan *p;
  float *xs;  /* {A,d} gathered rows */
  float *u;   /* {A,F1} pre-activation */
  float *h;   /* {A,F} */
  float *ys;  /* {A,d} expert outputs */
  float *y;   /* {T,d} */
  /* backward */
  const float *dy; /* {T,d} or dH {A,F} */
  float *dys, *dh, *du, *dxs, *dg, *dx, *dw1, *db1, *dw2, *db2;
} moe_run;

/* h {F} from u {F1} */
static void act_row(const moe_run *R, float *h, const float *u) {
  if (R->act == ACT_SWIGLU) {
    glia_act_rows(GLIA_UN_SILU, h, u, R->F);
    for (int64_t c = 0; c < R->F; c++) h[c] *= u[R->F + c];
  } else {
    glia_act_rows(ACT_UNOP[R->act], h, u, R->F);
  }
}

/* du {F1} from dh {F} and u {F1}; tmp {F} scratch */
static void act_grad_row(const moe_run *R, float *du, const float *dh, const float *u) {
  int64_t F = R->F;
  if (R->act == ACT_SWIGLU) {
    /* h = silu(a) b: da = dh b silu'(a), db = dh silu(a) */
    glia_act_rows(GLIA_UN_SILU, du + F, u, F);
    for (int64_t c = 0; c < F; c++) du[F + c] *= dh[c];
    for (int64_t c = 0; c < F; c++) du[c] = dh[c] * u[F + c];
    glia_act_grad_rows(GLIA_UN_SILU, du, du, u, F);
  } else {
    glia_act_grad_rows(ACT_UNOP[R->act], du, dh, u, F);
  }
}

static void gather_rows(int64_t begin, int64_t end, void *ud) {
  const moe_run *R = ud;
  for (int64_t r = begin; r < end; r++)
    memcpy(R->xs + r * R->d, R->x + R->p->tok[r] * R->d, (size_t)R->d * sizeof(float));
}

static void bias_rows(float *c, const float *b, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; r++) {
    if (b) memcpy(c + r * n, b, (size_t)n * sizeof *c);
    else memset(c + r * n, 0, (size_t)n * sizeof *c);
  }
}

/* U = Xs W1_e^T + b1_e ; H = act(U) on rows r0..r1 */
static void up_task(void *ud, const moe_task *t) {
  const moe_run *R = ud;
  int64_t e = t->e, m = t->r1 - t->r0, d = R->d, F1 = R->F1, F = R->F;
  float *u = R->u + t->r0 * F1;
  bias_rows(u, R->b1 ? R->b1 + e * F1 : NULL, m, F1);
  gemm(false, true, m, F1, d, R->xs + t->r0 * d, d, R->w1 + e * F1 * d, d, 1.0f, u, F1);
  for (int64_t r = 0; r < m; r++) act_row(R, R->h + (t->r0 + r) * F, u + r * F1);
}

/* Ys = H W2_e^T + b2_e on rows r0..r1 */
static void down_task(void *ud, const moe_task *t) {
  const moe_run *R = ud;
  int64_t e = t->e, m = t->r1 - t->r0, d = R->d, F = R->F;
  float *ys = R->ys + t->r0 * d;
  bias_rows(ys, R->b2 ? R->b2 + e * d : NULL, m, d);
  gemm(false, true, m, d, F, R->h + t->r0 * F, F, R->w2 + e * d * F, F, 1.0f, ys, d);
}

/* out_t = sum_j w_tj src[inv(t,j)] over the kept slots j in order (w NULL:
** 1): the combine y = sum g Ys, and dx = sum dXs in the backward. */
typedef struct {
  const moe_plan *p;
  int64_t d;
  const float *w, *src;
  float *out;
} slot_sum;

/* o += w src over d floats: the one form of the combine's sum (the fused
** decoding step's too), so that both give the same bits. */
static void add_scaled(float *o, float w, const float *src, int64_t d) {
  for (int64_t c = 0; c < d; c++) o[c] += w * src[c];
}

static void slot_sum_rows(int64_t begin, int64_t end, void *ud) {
  const slot_sum *S = ud;
  int64_t d = S->d, k = S->p->k;
  for (int64_t t = begin; t < end; t++) {
    float *o = S->out + t * d;
    memset(o, 0, (size_t)d * sizeof *o);
    for (int64_t j = 0; j < k; j++) {
      int64_t pos = S->p->inv[t * k + j];
      if (pos < 0) continue;
      add_scaled(o, S->w ? S->w[t * k + j] : 1.0f, S->src + pos * d, d);
    }
  }
}

static void slot_sum_run(glia_ctx *G, const moe_run *R, const float *w, const float *src,
                         float *out) {
  slot_sum S = {R->p, R->d, w, src, out};
  glia_parallel_for(G, R->T, glia_grain_items(R->d * R->k), slot_sum_rows, &S);
}

/* The decoding path: every kept row through the dense decode kernel. */
static void decode_rows(glia_ctx *G, const moe_run *R) {
  int64_t d = R->d, F1 = R->F1, F = R->F;
  for (int64_t r = 0; r < R->p->A; r++) {
    int64_t e = 0;
    while (R->p->off[e + 1] <= r) e++;
    float *u = R->u + r * F1, *h = R->h + r * F;
    glia_matvec(G, R->w1 + e * F1 * d, R->x + R->p->tok[r] * d, R->b1 ? R->b1 + e * F1 : NULL,
                u, F1, d);
    act_row(R, h, u);
    glia_matvec(G, R->w2 + e * d * F, h, R->b2 ? R->b2 + e * d : NULL, R->ys + r * d, d, F);
  }
}

/* ---------------------------------------------------- backward tasks */

/* dg and dYs from dY: dg_tj = <dY_t, Ys[pos]>, dYs[pos] = g_tj dY_t */
static void down_bwd_rows(int64_t begin, int64_t end, void *ud) {
  const moe_run *R = ud;
  int64_t d = R->d, k = R->k;
  for (int64_t t = begin; t < end; t++) {
    const float *dy = R->dy + t * d;
    for (int64_t j = 0; j < k; j++) {
      int64_t pos = R->p->inv[t * k + j];
      if (R->dg) R->dg[t * k + j] = pos < 0 ? 0.0f : glia_dot(dy, R->ys + pos * d, d);
      if (pos < 0) continue;
      float g = R->gate[t * k + j], *o = R->dys + pos * d;
      for (int64_t c = 0; c < d; c++) o[c] = g * dy[c];
    }
  }
}

/* expert e: dH = dYs W2_e, dW2_e = dYs^T H, db2_e = colsum dYs */
static void down_bwd_task(void *ud, const moe_task *t) {
  const moe_run *R = ud;
  int64_t e = t->e, m = t->r1 - t->r0, d = R->d, F = R->F;
  const float *dys = R->dys + t->r0 * d;
  if (R->dh) gemm(false, false, m, F, d, dys, d, R->w2 + e * d * F, F, 0.0f, R->dh + t->r0 * F, F);
  if (R->dw2) gemm(true, false, d, F, m, dys, d, R->h + t->r0 * F, F, 0.0f, R->dw2 + e * d * F, F);
  if (R->db2) colsum(R->db2 + e * d, dys, m, d);
}

/* expert e: dU = act'(dH), dW1_e = dU^T Xs, db1_e = colsum dU, dXs = dU W1_e */
static void up_bwd_task(void *ud, const moe_task *t) {
  const moe_run *R = ud;
  int64_t e = t->e, m = t->r1 - t->r0, d = R->d, F1 = R->F1, F = R->F;
  float *du = R->du + t->r0 * F1;
  for (int64_t r = 0; r < m; r++)
    act_grad_row(R, du + r * F1, R->dy + (t->r0 + r) * F, R->u + (t->r0 + r) * F1);
  const float *xs = R->xs + t->r0 * d;
  if (R->dw1) gemm(true, false, F1, d, m, du, F1, xs, d, 0.0f, R->dw1 + e * F1 * d, d);
  if (R->db1) colsum(R->db1 + e * F1, du, m, F1);
  if (R->dxs) gemm(false, false, m, d, F1, du, F1, R->w1 + e * F1 * d, d, 0.0f, R->dxs + t->r0 * d, d);
}

/* ------------------------------------------------------ scratch */

/* A contiguous f32 scratch tensor (so it can be saved for backward). */
static glia_status scratch2(glia_ctx *G, int64_t a, int64_t b, glia_tensor **out, float **p) {
  int64_t sz[2] = {a, b};
  TRY(glia_tensor_new(G, GLIA_DTYPE_F32, 2, sz, out));
  *p = (float *)glia_ptr(*out);
  return GLIA_OK;
}

/* ---------------------------------------------------- the checks */

/* Fails unless t is f32 with ndim dims of sizes want (want[i] < 0: any). */
static glia_status check_shape(glia_ctx *G, const char *name, const char *what,
                               const glia_tensor *t, int ndim, const int64_t *want,
                               const char *form) {
  TRY(glia_check_live(G, name, t));
  TRY(glia_check_f32(G, name, what, t));
  bool ok = t->ndim == ndim;
  for (int i = 0; ok && i < ndim; i++) ok = want[i] < 0 || t->size[i] == want[i];
  if (!ok) {
    char buf[96] = "";
    for (int i = 0; i < ndim; i++) {
      size_t l = strlen(buf);
      if (want[i] < 0) snprintf(buf + l, sizeof buf - l, "%s%c", i ? "," : "", form[i]);
      else snprintf(buf + l, sizeof buf - l, "%s%lld", i ? "," : "", (long long)want[i]);
    }
    return glia_fail(G, GLIA_ESHAPE, "%s: %s must be {%s}, got %s", name, what, buf,
                     glia_shape_str(t));
  }
  return GLIA_OK;
}

/* The experts' weights: w1 {E,F1,d} (F1 = 2F for swiglu), b1 {E,F1},
** w2 {E,d,F}, b2 {E,d} (biases may be NULL); E -1 takes w1's. Sets F1, F. */
static glia_status check_expert_weights(glia_ctx *G, const char *name, int64_t E, int64_t d,
                                        const glia_tensor *w1, const glia_tensor *b1,
                                        const glia_tensor *w2, const glia_tensor *b2,
                                        moe_act act, int64_t *F1, int64_t *F) {
  TRY(check_shape(G, name, "w1", w1, 3, (int64_t[]){E, -1, d}, "EFd"));
  E = w1->size[0], *F1 = w1->size[1];
  if (act == ACT_SWIGLU && *F1 % 2)
    return glia_fail(G, GLIA_ESHAPE, "%s: swiglu needs w1 {E,2F,d} with an even row count, "
                     "got w1 %s", name, glia_shape_str(w1));
  *F = act == ACT_SWIGLU ? *F1 / 2 : *F1;
  TRY(check_shape(G, name, "w2", w2, 3, (int64_t[]){E, d, *F}, "EdF"));
  if (b1) TRY(check_shape(G, name, "b1", b1, 2, (int64_t[]){E, *F1}, "EF"));
  if (b2) TRY(check_shape(G, name, "b2", b2, 2, (int64_t[]){E, d}, "Ed"));
  return GLIA_OK;
}

/* The shapes: x {T,d}, gates {T,k}, idx {T,k}, w1 {E,F1,d}, b1 {E,F1},
** w2 {E,d,F}, b2 {E,d}, kept {T,k}; sets R's sizes. */
static glia_status check_experts(glia_ctx *G, glia_tensor *x, glia_tensor *gates,
                                 glia_tensor *idx, glia_tensor *w1, glia_tensor *b1,
                                 glia_tensor *w2, glia_tensor *b2, glia_tensor *kept,
                                 moe_act act, moe_run *R) {
  int64_t any2[2] = {-1, -1};
  TRY(check_shape(G, MOE_NAME, "x", x, 2, any2, "Td"));
  int64_t T = x->size[0], d = x->size[1], F1, F;
  TRY(check_expert_weights(G, MOE_NAME, -1, d, w1, b1, w2, b2, act, &F1, &F));
  int64_t E = w1->size[0];
  TRY(check_shape(G, MOE_NAME, "gates", gates, 2, (int64_t[]){T, -1}, "Tk"));
  int64_t k = gates->size[1];
  TRY(glia_check_live(G, MOE_NAME, idx));
  if (idx->dtype != GLIA_DTYPE_I64 && idx->dtype != GLIA_DTYPE_I32)
    return glia_fail(G, GLIA_EDTYPE, MOE_NAME ": idx must be i64 or i32, got %s %s",
                     glia_dtype_name(idx->dtype), glia_shape_str(idx));
  if (!glia_has_shape(idx, 2, gates->size))
    return glia_fail(G, GLIA_ESHAPE, MOE_NAME ": idx must be {%lld,%lld} like gates, got %s",
                     (long long)T, (long long)k, glia_shape_str(idx));
  if (kept) {
    TRY(check_kept(G, MOE_NAME, kept));
    if (!glia_has_shape(kept, 2, gates->size))
      return glia_fail(G, GLIA_ESHAPE, MOE_NAME ": kept must be {%lld,%lld} like gates, got %s",
                       (long long)T, (long long)k, glia_shape_str(kept));
  }
  if (k < 1 || k > E)
    return glia_fail(G, GLIA_EARG, MOE_NAME ": k (gates' columns) must be in 1..%lld, gates %s",
                     (long long)E, glia_shape_str(gates));
  *R = (moe_run){.T = T, .d = d, .E = E, .F = F, .F1 = F1, .k = k, .act = act};
  return GLIA_OK;
}

/* ------------------------------------------------------- the op */

static glia_status up_bwd(glia_ctx *G, glia_node *n, glia_tensor *dout, glia_tensor **din);
static glia_status down_bwd(glia_ctx *G, glia_node *n, glia_tensor *dout, glia_tensor **din);

/* Contiguous f32 copies (or the tensors retained) of n inputs; NULLs stay. */
static glia_status contig_all(glia_ctx *G, int n, glia_tensor *const *in, glia_tensor **out) {
  glia_status st = GLIA_OK;
  for (int i = 0; i < n; i++) out[i] = NULL;
  for (int i = 0; i < n && st == GLIA_OK; i++)
    if (in[i]) st = glia_tensor_contiguous_as(G, in[i], GLIA_DTYPE_F32, &out[i]);
  return st;
}

static void release_all(int n, glia_tensor **t) {
  for (int i = 0; i < n; i++) glia_tensor_release(t[i]), t[i] = NULL;
}

static const float *fp(const glia_tensor *t) { return t ? (const float *)glia_ptr(t) : NULL; }

static glia_status moe_experts(glia_ctx *G, glia_tensor *x, glia_tensor *gates, glia_tensor *idx,
                               glia_tensor *w1, glia_tensor *b1, glia_tensor *w2, glia_tensor *b2,
                               moe_act act, glia_tensor *kept, glia_tensor **out) {
  moe_run R;
  TRY(check_experts(G, x, gates, idx, w1, b1, w2, b2, kept, act, &R));
  moe_plan *p = NULL;
  TRY(plan_build(G, MOE_NAME, idx, kept, R.E, glia_index_base(G), &p));
  R.p = p;
  int64_t A = p->A;
  enum { X, GATE, W1, B1, W2, B2, NIN };
  glia_tensor *in[NIN] = {x, gates, w1, b1, w2, b2}, *c[NIN];
  glia_tensor *xs = NULL, *u = NULL, *h = NULL, *ys = NULL, *y = NULL;
  glia_status st = contig_all(G, NIN, in, c);
  if (st == GLIA_OK) st = scratch2(G, A, R.d, &xs, &R.xs);
  if (st == GLIA_OK) st = scratch2(G, A, R.F1, &u, &R.u);
  if (st == GLIA_OK) st = scratch2(G, A, R.F, &h, &R.h);
  if (st == GLIA_OK) st = scratch2(G, A, R.d, &ys, &R.ys);
  if (st == GLIA_OK) st = scratch2(G, R.T, R.d, &y, &R.y);
  if (st == GLIA_OK) {
    R.x = fp(c[X]), R.gate = fp(c[GATE]), R.w1 = fp(c[W1]), R.b1 = fp(c[B1]);
    R.w2 = fp(c[W2]), R.b2 = fp(c[B2]);
    bool record = G->grad_mode && (glia_tensor_needs_grad(x) || glia_tensor_needs_grad(gates) ||
                                   glia_tensor_needs_grad(w1) || glia_tensor_needs_grad(w2) ||
                                   (b1 && glia_tensor_needs_grad(b1)) ||
                                   (b2 && glia_tensor_needs_grad(b2)));
    if (R.T <= DECODE_T && !record) {
      decode_rows(G, &R);
    } else {
      glia_parallel_for(G, A, glia_grain_items(R.d), gather_rows, &R);
      double up = 2.0 * (double)R.d * (double)R.F1, down = 2.0 * (double)R.d * (double)R.F;
      st = run_tasks(G, p, TASK_ROWS, up, up_task, &R);
      if (st == GLIA_OK) st = run_tasks(G, p, TASK_ROWS, down, down_task, &R);
    }
  }
  if (st == GLIA_OK) slot_sum_run(G, &R, R.gate, R.ys, R.y);
  /* record: up (x, w1, b1) -> h, down (h, gates, w2, b2) -> y */
  if (st == GLIA_OK) {
    glia_tensor *upin[3] = {x, w1, b1 ? b1 : w1};
    glia_node *node = glia_node_begin(G, MOE_NAME, up_bwd, b1 ? 3 : 2, upin, &st);
    if (node) {
      node->iarg[0] = act;
      if (!(node->extra = plan_clone(G, p))) st = glia_fail_nomem(G, 0, "glia.moe plan");
      glia_tensor *save[3] = {x, w1, u};
      for (int i = 0; i < 3 && st == GLIA_OK; i++) st = glia_node_save(G, node, save[i]);
      st = glia_node_end(node, st, h);
    }
  }
  if (st == GLIA_OK) {
    glia_tensor *dnin[4] = {h, gates, w2, b2 ? b2 : w2};
    glia_node *node = glia_node_begin(G, MOE_NAME, down_bwd, b2 ? 4 : 3, dnin, &st);
    if (node) {
      node->iarg[0] = act;
      node->iarg[1] = R.F1;
      node->extra = p, p = NULL;
      glia_tensor *save[4] = {h, gates, w2, ys};
      for (int i = 0; i < 4 && st == GLIA_OK; i++) st = glia_node_save(G, node, save[i]);
      st = glia_node_end(node, st, y);
    }
  }
  free(p);
  release_all(NIN, c);
  glia_tensor_release(xs);
  glia_tensor_release(u);
  glia_tensor_release(h);
  glia_tensor_release(ys);
  return glia_hand_out(st, y, out);
}

/* The plan's run from a node's saved tensors: sizes from the plan and the
** weights. */
static void run_from(moe_run *R, const moe_plan *p, int act, int64_t d, int64_t F, int64_t F1) {
  *R = (moe_run){.T = p->T, .d = d, .E = p->E, .F = F, .F1 = F1, .k = p->k, .act = act, .p = p};
}

static glia_status down_bwd(glia_ctx *G, glia_node *n, glia_tensor *dout, glia_tensor **din) {
  glia_tensor *sv[4];
  for (int i = 0; i < 4; i++) TRY(glia_node_saved(G, n, i, &sv[i]));
  const moe_plan *p = n->extra;
  glia_tensor *h = sv[0], *gates = sv[1], *w2 = sv[2], *ys = sv[3];
  moe_run R;
  run_from(&R, p, (int)n->iarg[0], w2->size[1], w2->size[2], n->iarg[1]);
  enum { DH, DG, DW2, DB2 };
  glia_tensor *g[4] = {NULL, NULL, NULL, NULL}, *dyc = NULL, *dys = NULL, *gc = NULL, *wc = NULL;
  glia_status st = glia_tensor_contiguous_as(G, dout, GLIA_DTYPE_F32, &dyc);
  if (st == GLIA_OK) st = glia_tensor_contiguous_as(G, gates, GLIA_DTYPE_F32, &gc);
  if (st == GLIA_OK) st = glia_tensor_contiguous_as(G, w2, GLIA_DTYPE_F32, &wc);
  if (st == GLIA_OK) st = scratch2(G, p->A, R.d, &dys, &R.dys);
  if (st == GLIA_OK && n->needs[0]) st = glia_tensor_new(G, GLIA_DTYPE_F32, 2, h->size, &g[DH]);
  if (st == GLIA_OK && n->needs[1]) st = glia_tensor_new(G, GLIA_DTYPE_F32, 2, gates->size, &g[DG]);
  if (st == GLIA_OK && n->needs[2]) st = glia_tensor_zeros(G, GLIA_DTYPE_F32, 3, w2->size, &g[DW2]);
  if (st == GLIA_OK && n->ninputs > 3 && n->needs[3]) {
    int64_t sz[2] = {R.E, R.d};
    st = glia_tensor_zeros(G, GLIA_DTYPE_F32, 2, sz, &g[DB2]);
  }
  if (st == GLIA_OK) {
    R.dy = fp(dyc), R.gate = fp(gc), R.h = (float *)glia_ptr(h), R.ys = (float *)glia_ptr(ys);
    R.w2 = fp(wc);
    R.dh = g[DH] ? (float *)glia_ptr(g[DH]) : NULL;
    R.dg = g[DG] ? (float *)glia_ptr(g[DG]) : NULL;
    R.dw2 = g[DW2] ? (float *)glia_ptr(g[DW2]) : NULL;
    R.db2 = g[DB2] ? (float *)glia_ptr(g[DB2]) : NULL;
    glia_parallel_for(G, R.T, glia_grain_items(R.d * R.k), down_bwd_rows, &R);
    st = run_tasks(G, p, 0, 6.0 * (double)R.d * (double)R.F, down_bwd_task, &R);
  }
  glia_tensor_release(dyc);
  glia_tensor_release(gc);
  glia_tensor_release(wc);
  glia_tensor_release(dys);
  for (int i = 0; i < 4; i++) {
    if (st == GLIA_OK && i < n->ninputs && n->needs[i]) din[i] = g[i];
    else glia_tensor_release(g[i]);
  }
  return st;
}

static glia_status up_bwd(glia_ctx *G, glia_node *n, glia_tensor *dout, glia_tensor **din) {
  glia_tensor *sv[3];
  for (int i = 0; i < 3; i++) TRY(glia_node_saved(G, n, i, &sv[i]));
  const moe_plan *p = n->extra;
  glia_tensor *x = sv[0], *w1 = sv[1], *u = sv[2];
  int act = (int)n->iarg[0];
  int64_t F1 = w1->size[1];
  moe_run R;
  run_from(&R, p, act, x->size[1], act == ACT_SWIGLU ? F1 / 2 : F1, F1);
  enum { DX, DW1, DB1 };
  glia_tensor *g[3] = {NULL, NULL, NULL}, *dhc = NULL, *xc = NULL, *wc = NULL, *xs = NULL,
              *du = NULL, *dxs = NULL;
  glia_status st = glia_tensor_contiguous_as(G, dout, GLIA_DTYPE_F32, &dhc);
  if (st == GLIA_OK) st = glia_tensor_contiguous_as(G, x, GLIA_DTYPE_F32, &xc);
  if (st == GLIA_OK) st = glia_tensor_contiguous_as(G, w1, GLIA_DTYPE_F32, &wc);
  if (st == GLIA_OK) st = scratch2(G, p->A, R.d, &xs, &R.xs);
  if (st == GLIA_OK) st = scratch2(G, p->A, F1, &du, &R.du);
  if (st == GLIA_OK && n->needs[0]) st = scratch2(G, p->A, R.d, &dxs, &R.dxs);
  if (st == GLIA_OK && n->needs[0]) st = glia_tensor_new(G, GLIA_DTYPE_F32, 2, x->size, &g[DX]);
  if (st == GLIA_OK && n->needs[1]) st = glia_tensor_zeros(G, GLIA_DTYPE_F32, 3, w1->size, &g[DW1]);
  if (st == GLIA_OK && n->ninputs > 2 && n->needs[2]) {
    int64_t sz[2] = {R.E, F1};
    st = glia_tensor_zeros(G, GLIA_DTYPE_F32, 2, sz, &g[DB1]);
  }
  if (st == GLIA_OK) {
    R.x = fp(xc), R.w1 = fp(wc), R.u = (float *)glia_ptr(u), R.dy = fp(dhc);
    R.dx = g[DX] ? (float *)glia_ptr(g[DX]) : NULL;
    R.dw1 = g[DW1] ? (float *)glia_ptr(g[DW1]) : NULL;
    R.db1 = g[DB1] ? (float *)glia_ptr(g[DB1]) : NULL;
    glia_parallel_for(G, p->A, glia_grain_items(R.d), gather_rows, &R);
    st = run_tasks(G, p, 0, 6.0 * (double)R.d * (double)F1, up_bwd_task, &R);
    if (st == GLIA_OK && R.dx) slot_sum_run(G, &R, NULL, R.dxs, R.dx);
  }
  glia_tensor_release(dhc);
  glia_tensor_release(xc);
  glia_tensor_release(wc);
  glia_tensor_release(xs);
  glia_tensor_release(du);
  glia_tensor_release(dxs);
  for (int i = 0; i < 3; i++) {
    if (st == GLIA_OK && i < n->ninputs && n->needs[i]) din[i] = g[i];
    else glia_tensor_release(g[i]);
  }
  return st;
}

/* ================================================ registry wrappers */

static glia_status pick(glia_ctx *G, const char *op, const char *what, const glia_value *a,
                        const char *const *names, int dflt, int *out) {
  if (!arg_present(a)) {
    *out = dflt;
    return GLIA_OK;
  }
  for (int i = 0; names[i]; i++)
    if (strcmp(a->u.s, names[i]) == 0) {
      *out = i;
      return GLIA_OK;
    }
  return glia_fail(G, GLIA_EARG, "%s: unknown %s '%s'", op, what, a->u.s);
}

/* The routing config of a[0..6] = k, kind, normalize, bias, groups,
** topk_groups, route_scale (moe_route's args 1..7; groups and topk_groups
** NULL: one group); E the experts (-1: unknown). *bc holds the contiguous
** bias (release it after use). */
static glia_status route_args(glia_ctx *G, const char *op, glia_value *const *a, int64_t E,
                              route_cfg *c, glia_tensor **bc) {
  static const char *const KINDS[] = {"softmax", "sigmoid", NULL};
  int kind;
  *bc = NULL;
  TRY(pick(G, op, "router", a[1], KINDS, 0, &kind));
  *c = (route_cfg){.k = a[0]->u.i, .sigmoid = kind == 1, .cf = INFINITY};
  c->normalize = arg_bool(a[2], kind == 1 || c->k > 1);
  c->groups = a[4] ? arg_int(a[4], 1) : 1;
  c->topk_groups = a[5] ? arg_int(a[5], c->groups) : c->groups;
  c->scale = (float)arg_num(a[6], 1.0);
  glia_tensor *bias = arg_t(a[3]);
  if (bias) {
    TRY(glia_check_f32(G, op, "bias", bias));
    if (E >= 0 && (bias->ndim != 1 || bias->size[0] != E))
      return glia_fail(G, GLIA_ESHAPE, "%s: bias must be {%lld} (one per expert), got %s", op,
                       (long long)E, glia_shape_str(bias));
    TRY(glia_tensor_contiguous_as(G, bias, GLIA_DTYPE_F32, bc));
    c->bias = (const float *)glia_ptr(*bc);
  }
  return GLIA_OK;
}

/* moe_route(z, k [, kind, normalize, bias, groups, topk_groups, route_scale,
** capacity_factor, priority]) -> gates, idx, counts, kept */
static glia_status op_moe_route(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                glia_value *outs) {
  (void)nargs;
  static const char *const PRIOS[] = {"choice", "gate", NULL};
  int prio;
  TRY(pick(G, ROUTE_NAME, "priority", &args[9], PRIOS, 0, &prio));
  glia_tensor *z = args[0].u.t, *bc;
  route_cfg c;
  glia_value *a[7] = {&args[1], &args[2], &args[3], &args[4], &args[5], &args[6], &args[7]};
  TRY(route_args(G, ROUTE_NAME, a, z->ndim == 2 ? z->size[1] : -1, &c, &bc));
  c.gate_priority = prio == 1;
  c.cf = arg_num(&args[8], INFINITY);
  glia_tensor *r[4];
  glia_status st = moe_route(G, z, c, glia_index_base(G), &r[0], &r[1], &r[2], &r[3]);
  glia_tensor_release(bc);
  TRY(st);
  *nouts = 4;
  for (int i = 0; i < 4; i++) outs[i].kind = GLIA_VAL_TENSOR, outs[i].u.t = r[i];
  return GLIA_OK;
}

/* moe_decode(x, wr, w1, b1, w2, b2, k [, kind, normalize, bias, route_scale,
** activation]) -> y, idx: glia.moe's forward for a decoding step (T <=
** DECODE_T tokens, one group, no capacity, nothing recorded) in one call
** (group-limited routing would take the registry past its 12 arguments). It runs the very functions glia.moe runs (glia_linear for the
** logits, moe_route, moe_experts on its decoding path), so y is the same
** bits; what it saves is the Lua between them (the options tables, the
** info table, the losses, five tensors per layer handed to Lua). */
static glia_status op_moe_decode(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                 glia_value *outs) {
  (void)nargs;
  const char *name = "glia.moe_decode";
  glia_tensor *x = args[0].u.t, *wr = args[1].u.t, *w1 = args[2].u.t, *b1 = arg_t(&args[3]),
              *w2 = args[4].u.t, *b2 = arg_t(&args[5]);
  int act;
  TRY(pick(G, name, "activation", &args[11], ACT_NAMES, ACT_GELU, &act));
  TRY(glia_check_f32(G, name, "x", x));
  TRY(glia_check_f32(G, name, "wr", wr));
  if (x->ndim != 2 || x->size[0] > DECODE_T || wr->ndim != 2 || w1->ndim != 3 ||
      wr->size[0] != w1->size[0] || wr->size[1] != x->size[1])
    return glia_fail(G, GLIA_ESHAPE, "%s: want x {T,d} with T <= %d, wr {E,d}, w1 {E,F,d}; "
                     "got x %s, wr %s, w1 %s", name, DECODE_T, glia_shape_str(x),
                     glia_shape_str(wr), glia_shape_str(w1));
  glia_tensor *ts[6] = {x, wr, w1, w2, b1, b2};
  for (int i = 0; i < 6 && G->grad_mode; i++)
    if (ts[i] && glia_tensor_needs_grad(ts[i]))
      return glia_fail(G, GLIA_EARG, "%s: inference only, but grad is enabled and an input "
                       "needs grad (x %s): use glia.moe", name, glia_shape_str(x));
  route_cfg c;
  glia_tensor *bc, *z = NULL, *r[4] = {NULL, NULL, NULL, NULL}, *y = NULL;
  glia_value *a[7] = {&args[6], &args[7], &args[8], &args[9], NULL, NULL, &args[10]};
  TRY(route_args(G, name, a, wr->size[0], &c, &bc));
  glia_status st = glia_linear(G, x, wr, NULL, &z);
  if (st == GLIA_OK) st = moe_route(G, z, c, glia_index_base(G), &r[0], &r[1], &r[2], &r[3]);
  if (st == GLIA_OK) st = moe_experts(G, x, r[0], r[1], w1, b1, w2, b2, (moe_act)act, NULL, &y);
  glia_tensor_release(bc);
  glia_tensor_release(z);
  glia_tensor_release(r[0]);
  glia_tensor_release(r[2]);
  glia_tensor_release(r[3]);
  if (st != GLIA_OK) {
    glia_tensor_release(r[1]);
    return st;
  }
  *nouts = 2;
  outs[0].kind = GLIA_VAL_TENSOR, outs[0].u.t = y;
  outs[1].kind = GLIA_VAL_TENSOR, outs[1].u.t = r[1];
  return GLIA_OK;
}

/* ============================================== the fused decoding step */

/* decoder_moe(x, norm, experts, shared, k [, kind, normalize, bias,
** route_scale, activation, eps]) -> out, idx {1,k}: a decoding step's MoE sub-layer
** on one row x {..., d} in one call, what nn.TransformerBlock with an
** nn.MoE computes as out = x + mlp(ln2(x)):
**
**   h   = layer_norm(x; norm = {weight, bias}, eps)
**   out = x + (moe(h) [+ shared_proj(act(shared_fc(h)))])
**
** experts = {wr, w1, w2} or {wr, w1, b1, w2, b2} (moe_decode's tensors);
** shared = {} or {fc.weight, fc.bias, proj.weight, proj.bias}, the
** always-on shared experts as one MLP. One group, no capacity, nothing
** recorded, one row. Why: the same step through nn.MoE:forward (the norm,
** reshapes, checks, moe_decode, the shared MLP and the residual add, each
** from Lua) took about twice the dense block's MLP sub-layer
** (glia.decoder_mlp) over the same weight bytes. The result is that
** path's, bit for bit: the same kernels on the same rows
** (glia_layer_norm_rows; glia_matvec for the logits and the shared MLP;
** route_rows; glia_dot plus bias per expert row, as glia_matvec sums it;
** act_row; add_scaled in slot order), in one buffer instead of tensors.
** Each expert layer is one pool job (expert_rows): a job over the stacked
** rows of all k experts (a thread streaming an expert of its own) ran
** bench/gpt.lua's moe_decode, 32 MB of experts not all in cache, 15%
** slower than k glia_matvec calls, and those in turn a few % slower than
** one job splitting every expert's rows as glia_matvec would (alternating
** runs). */
/* One layer of the k chosen experts' MLPs: y[j R + i] = w_e[i,:] . x_j +
** b_e[i] for e = idx[j], w_e {R,K}, x_j = x + j ldx (ldx 0: one x for
** all), glia_matvec's sum per row. One pool job whose items are the row
** numbers i: a thread takes the same slice of rows of every chosen matrix,
** one sequential stream per matrix, as k glia_matvec calls would split
** them, in one dispatch instead of k. */
typedef struct {
  const float *w, *b, *x; /* b may be NULL */
  const int64_t *idx;     /* {k} the chosen experts, 0-based */
  int64_t k, R, K, ldx;
  float *y; /* {k,R} */
} expert_rows;

static void expert_rows_run(int64_t i0, int64_t i1, void *ud) {
  const expert_rows *S = ud;
  for (int64_t j = 0; j < S->k; j++) {
    const float *w = S->w + S->idx[j] * S->R * S->K, *x = S->x + j * S->ldx;
    const float *b = S->b ? S->b + S->idx[j] * S->R : NULL;
    for (int64_t i = i0; i < i1; i++) {
      float v = glia_dot(w + i * S->K, x, S->K);
      if (b) v += b[i];
      S->y[j * S->R + i] = v;
    }
  }
}

/* The tensors of a decoder_moe call, in this order. */
enum { SN_LW, SN_LB, SN_WR, SN_W1, SN_B1, SN_W2, SN_B2, SN_FCW, SN_FCB, SN_PW, SN_PB, SN_N };

/* Checks every shape (the step reads nothing unchecked); sets the sizes. */
static glia_status step_check(glia_ctx *G, const char *name, glia_tensor *x, glia_tensor **t,
                              moe_act act, int64_t *sz /* d, E, F1, F, S1, S */) {
  TRY(glia_check_f32(G, name, "x", x));
  int64_t d = x->ndim ? x->size[x->ndim - 1] : 0;
  if (x->ndim < 1 || d < 1 || glia_tensor_numel(x) != d)
    return glia_fail(G, GLIA_ESHAPE, "%s: x must be one row {..., d}, got %s", name,
                     glia_shape_str(x));
  TRY(check_shape(G, name, "norm weight", t[SN_LW], 1, (int64_t[]){d}, "d"));
  TRY(check_shape(G, name, "norm bias", t[SN_LB], 1, (int64_t[]){d}, "d"));
  TRY(check_shape(G, name, "wr", t[SN_WR], 2, (int64_t[]){-1, d}, "Ed"));
  int64_t E = t[SN_WR]->size[0];
  int64_t F1, F;
  TRY(check_expert_weights(G, name, E, d, t[SN_W1], t[SN_B1], t[SN_W2], t[SN_B2], act, &F1, &F));
  int64_t S1 = 0, S = 0;
  if (t[SN_FCW]) {
    TRY(check_shape(G, name, "shared fc.weight", t[SN_FCW], 2, (int64_t[]){-1, d}, "Fd"));
    S1 = t[SN_FCW]->size[0], S = act == ACT_SWIGLU ? S1 / 2 : S1;
    if (act == ACT_SWIGLU && S1 % 2)
      return glia_fail(G, GLIA_ESHAPE, "%s: swiglu needs shared fc.weight {2F,d}, got %s", name,
                       glia_shape_str(t[SN_FCW]));
    TRY(check_shape(G, name, "shared fc.bias", t[SN_FCB], 1, (int64_t[]){S1}, "F"));
    TRY(check_shape(G, name, "shared proj.weight", t[SN_PW], 2, (int64_t[]){d, S}, "dF"));
    TRY(check_shape(G, name, "shared proj.bias", t[SN_PB], 1, (int64_t[]){d}, "d"));
  }
  bool needs = glia_tensor_needs_grad(x);
  for (int i = 0; i < SN_N; i++) needs = needs || (t[i] && glia_tensor_needs_grad(t[i]));
  if (G->grad_mode && needs)
    return glia_fail(G, GLIA_EGRAD, "%s: inference only, but an input requires grad (run it "
                     "under glia.no_grad), x %s", name, glia_shape_str(x));
  sz[0] = d, sz[1] = E, sz[2] = F1, sz[3] = F, sz[4] = S1, sz[5] = S;
  return GLIA_OK;
}

/* The step on contiguous tensors c (SN_N of them, absent ones NULL). */
static glia_status step_run(glia_ctx *G, const char *name, const float *x, glia_tensor **c,
                            const route_cfg *rc, moe_act act, double eps, const int64_t *sz,
                            float *out, int64_t *chosen) {
  int64_t d = sz[0], E = sz[1], F1 = sz[2], F = sz[3], S1 = sz[4], S = sz[5], k = rc->k;
  /* h {d}, z s {E}, sel {E+k}, gate w {k}, u {k,F1}, hh {k,F}, ys {k,d}, su {S1}, sh {S}, sy {d} */
  size_t nf = (size_t)(2 * d + 3 * E + 3 * k + k * (F1 + F + d) + S1 + S + d);
  size_t bytes = (size_t)k * sizeof(int64_t) + nf * sizeof(float);
  int64_t *idx = glia_alloc(G, bytes);
  if (!idx) return glia_fail_nomem(G, bytes, name);
  float *h = (float *)(idx + k), *z = h + d, *s = z + E, *sel = s + E, *gate = sel + E + k,
        *w = gate + k, *u = w + k, *hh = u + k * F1, *ys = hh + k * F, *su = ys + k * d,
        *sh = su + S1, *sy = sh + S;
  glia_layer_norm_rows(x, fp(c[SN_LW]), fp(c[SN_LB]), h, 1, d, eps);
  glia_matvec(G, fp(c[SN_WR]), h, NULL, z, E, d);
  route_job J = {rc, z, s, sel, idx, gate, w};
  route_rows(0, 1, &J);
  expert_rows up = {fp(c[SN_W1]), fp(c[SN_B1]), h, idx, k, F1, d, 0, u};
  glia_parallel_for(G, F1, glia_grain_items(k * d), expert_rows_run, &up);
  moe_run A = {.act = act, .F = F};
  for (int64_t j = 0; j < k; j++) act_row(&A, hh + j * F, u + j * F1);
  expert_rows down = {fp(c[SN_W2]), fp(c[SN_B2]), hh, idx, k, d, F, F, ys};
  glia_parallel_for(G, d, glia_grain_items(k * F), expert_rows_run, &down);
  memset(out, 0, (size_t)d * sizeof *out);
  for (int64_t j = 0; j < k; j++) add_scaled(out, gate[j], ys + j * d, d);
  if (S1) {
    glia_matvec(G, fp(c[SN_FCW]), h, fp(c[SN_FCB]), su, S1, d);
    moe_run B = {.act = act, .F = S};
    act_row(&B, sh, su);
    glia_matvec(G, fp(c[SN_PW]), sh, fp(c[SN_PB]), sy, d, S);
    for (int64_t i = 0; i < d; i++) out[i] += sy[i];
  }
  for (int64_t i = 0; i < d; i++) out[i] = x[i] + out[i];
  int base = glia_index_base(G);
  for (int64_t j = 0; j < k; j++) chosen[j] = idx[j] + base;
  glia_free(G, idx, bytes);
  return GLIA_OK;
}

static glia_status op_decoder_moe(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                  glia_value *outs) {
  (void)nargs;
  const char *name = "glia.decoder_moe";
  glia_tensor *x = args[0].u.t, *t[SN_N] = {NULL};
  int nn = args[1].u.list.n, ne = args[2].u.list.n, ns = args[3].u.list.n;
  if (nn != 2 || (ne != 3 && ne != 5) || (ns != 0 && ns != 4))
    return glia_fail(G, GLIA_EARG, "%s: want norm {weight, bias}, experts {wr, w1, w2} or {wr, "
                     "w1, b1, w2, b2}, shared {} or {fc.weight, fc.bias, proj.weight, "
                     "proj.bias}; got lists of %d, %d and %d tensors", name, nn, ne, ns);
  glia_tensor *const *n = args[1].u.list.v, *const *e = args[2].u.list.v,
              *const *sh = args[3].u.list.v;
  t[SN_LW] = n[0], t[SN_LB] = n[1], t[SN_WR] = e[0], t[SN_W1] = e[1];
  if (ne == 5) t[SN_B1] = e[2], t[SN_W2] = e[3], t[SN_B2] = e[4];
  else t[SN_W2] = e[2];
  for (int i = 0; i < ns; i++) t[SN_FCW + i] = sh[i];
  int act;
  TRY(pick(G, name, "activation", &args[9], ACT_NAMES, ACT_GELU, &act));
  int64_t sz[6] = {0};
  TRY(step_check(G, name, x, t, (moe_act)act, sz));
  double eps = arg_num(&args[10], 1e-5);
  if (!(eps >= 0)) return glia_fail(G, GLIA_EARG, "%s: eps must be >= 0, got %g", name, eps);
  route_cfg rc;
  glia_tensor *bc, *c[SN_N] = {NULL}, *xc = NULL, *y = NULL, *ix = NULL;
  glia_value *a[7] = {&args[4], &args[5], &args[6], &args[7], NULL, NULL, &args[8]};
  TRY(route_args(G, name, a, sz[1], &rc, &bc));
  rc.T = 1, rc.E = sz[1];
  glia_status st = GLIA_OK;
  if (rc.k < 1 || rc.k > rc.E || !isfinite(rc.scale))
    st = glia_fail(G, GLIA_EARG, "%s: k must be in 1..%lld (the experts) and route_scale "
                   "finite; got k %lld, route_scale %g", name, (long long)rc.E,
                   (long long)rc.k, (double)rc.scale);
  if (st == GLIA_OK) st = contig_all(G, SN_N, t, c);
  if (st == GLIA_OK) st = glia_tensor_contiguous_as(G, x, GLIA_DTYPE_F32, &xc);
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_F32, x->ndim, x->size, &y);
  int64_t ksz[2] = {1, rc.k};
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_I64, 2, ksz, &ix);
  if (st == GLIA_OK)
    st = step_run(G, name, fp(xc), c, &rc, (moe_act)act, eps, sz, (float *)glia_ptr(y),
                  (int64_t *)glia_ptr(ix));
  glia_tensor_release(bc);
  glia_tensor_release(xc);
  release_all(SN_N, c);
  if (st != GLIA_OK) {
    glia_tensor_release(y);
    glia_tensor_release(ix);
    return st;
  }
  *nouts = 2;
  outs[0].kind = GLIA_VAL_TENSOR, outs[0].u.t = y;
  outs[1].kind = GLIA_VAL_TENSOR, outs[1].u.t = ix;
  return GLIA_OK;
}

/* moe_experts(x, gates, idx, w1, b1, w2, b2 [, activation, kept]) -> y */
static glia_status op_moe_experts(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                  glia_value *outs) {
  (void)nargs;
  int act;
  TRY(pick(G, MOE_NAME, "activation", &args[7], ACT_NAMES, ACT_GELU, &act));
  glia_tensor *y;
  TRY(moe_experts(G, args[0].u.t, args[1].u.t, args[2].u.t, args[3].u.t, arg_t(&args[4]),
                  args[5].u.t, arg_t(&args[6]), (moe_act)act, arg_t(&args[8]), &y));
  return out1(nouts, outs, y);
}

/* moe_dispatch(idx, E [, kept]) -> offsets {E+1}, tok {A}, slot {A}, inv
** {T,k}: positions and tokens counted from the call's base; inv is base - 1
** for a dropped assignment. */
static glia_status op_moe_dispatch(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                   glia_value *outs) {
  (void)nargs;
  glia_tensor *idx = args[0].u.t, *kept = arg_t(&args[2]);
  int64_t E = args[1].u.i;
  const char *name = "glia.moe_dispatch";
  /* E sizes the plan's arrays: bounded, so that their byte count cannot overflow */
  if (idx->ndim != 2 || (idx->dtype != GLIA_DTYPE_I64 && idx->dtype != GLIA_DTYPE_I32) || E < 1 ||
      E > INT32_MAX)
    return glia_fail(G, GLIA_EARG, "%s: idx must be i64 {T,k} and E in 1..2^31-1, got %s %s, E %lld",
                     name, glia_dtype_name(idx->dtype), glia_shape_str(idx), (long long)E);
  if (kept) TRY(check_kept(G, name, kept));
  if (kept && !glia_has_shape(kept, 2, idx->size))
    return glia_fail(G, GLIA_ESHAPE, "%s: kept must be shaped like idx %s, got %s", name,
                     glia_shape_str(idx), glia_shape_str(kept));
  int base = glia_index_base(G);
  moe_plan *p;
  TRY(plan_build(G, name, idx, kept, E, base, &p));
  glia_tensor *r[4] = {NULL, NULL, NULL, NULL};
  int64_t e1 = E + 1;
  glia_status st = glia_tensor_new(G, GLIA_DTYPE_I64, 1, &e1, &r[0]);
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_I64, 1, &p->A, &r[1]);
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_I64, 1, &p->A, &r[2]);
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_I64, 2, idx->size, &r[3]);
  if (st == GLIA_OK) {
    int64_t *o = (int64_t *)glia_ptr(r[0]), *tk = (int64_t *)glia_ptr(r[1]),
            *sl = (int64_t *)glia_ptr(r[2]), *iv = (int64_t *)glia_ptr(r[3]);
    for (int64_t e = 0; e <= E; e++) o[e] = p->off[e] + base;
    for (int64_t a = 0; a < p->A; a++) tk[a] = p->tok[a] + base, sl[a] = p->slot[a] + base;
    for (int64_t i = 0; i < p->T * p->k; i++) iv[i] = p->inv[i] + base;
  }
  free(p);
  if (st != GLIA_OK) {
    release_all(4, r);
    return st;
  }
  *nouts = 4;
  for (int i = 0; i < 4; i++) outs[i].kind = GLIA_VAL_TENSOR, outs[i].u.t = r[i];
  return GLIA_OK;
}

const glia_op glia_ops_moe[] = {
    {"moe_route", "Ti|sbtiinns", op_moe_route, 0},
    {"moe_experts", "TTTTtTt|st", op_moe_experts, 0},
    {"moe_dispatch", "Ti|t", op_moe_dispatch, 0},
    {"moe_decode", "TTTtTti|sbtns", op_moe_decode, 0},
    {"decoder_moe", "TLLLi|sbtnsn", op_decoder_moe, 0},
    {NULL, NULL, NULL, 0},
};
