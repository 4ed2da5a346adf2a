/*
** ops/sort.c -- the ops that return indices: max and min (values and
** indices along a dim), argmax, argmin, topk, sort and argsort.
**
** max/min/argmax/argmin find the first extreme along one dim (a NaN beats
** any number), chunked like the rows layout of ops/reduce.c so that long
** dims split across threads. sort/topk/argsort sort each line through
** unique 64-bit keys (below): a stable order, whatever the thread count.
**
** Indices: the C entry points take a `base` and return i64 indices counted
** from it (0 for C callers, 1 for Lua). Backward scatters the gradient to
** the positions the saved indices name.
*/
#include "glia_impl.h"
#include "ops.h"
#include "rows.h"

#include <math.h>

/* =================================================== max, min, arg* */

/* Extremes along one dim of length n (stride s), per output; the first of
** equal values wins and a NaN beats any number. Chunked like the rows
** layout so that long dims split across threads. */
typedef struct {
  dimset keep;
  const float *x;
  int64_t n, s, K, Q, base;
  int is_min;
  float *val;          /* K values, or NULL */
  int64_t *idx;        /* K indices (+ base) */
  int64_t *pidx;       /* chunk results [q * K + k] when Q > 1 */
  float *pval;
} arg_plan;

#define ARG_BETTER(is_min, v, m) \
  (((v) != (v) && (m) == (m)) || ((is_min) ? (v) < (m) : (v) > (m)))

/* The first extreme of n >= 1 elements at stride s: the extreme value by
** vectorized lanes, then its first position. */
INLINE void arg_chunk(const float *x, int64_t n, int64_t s, int is_min, float *value,
                      int64_t *at) {
  float m;
  if (is_min)
    LANE_PICK(m, n, j, x[j * s], INFINITY, BETTER_MIN);
  else
    LANE_PICK(m, n, j, x[j * s], -INFINITY, BETTER_MAX);
  int64_t j = 0; /* m is one of the elements: the searches stop at it */
  if (m != m)
    while (j < n - 1 && x[j * s] == x[j * s]) j++;
  else
    while (j < n - 1 && x[j * s] != m) j++;
  *value = m, *at = j;
}

static void arg_range(int64_t b, int64_t e, void *ud) {
  const arg_plan *A = ud;
  int64_t k = b / A->Q;
  cursor cur;
  cursor_seek(&cur, &A->keep, 1, k);
  for (int64_t i = b; i < e; k++, cursor_next(&cur, &A->keep, 1)) {
    const float *x = A->x + cur.off[0];
    for (int64_t q = i - k * A->Q; q < A->Q && i < e; q++, i++) {
      int64_t j0 = q * CH, at;
      float m;
      if (A->s == 1)
        arg_chunk(x + j0, min64(CH, A->n - j0), 1, A->is_min, &m, &at);
      else
        arg_chunk(x + j0 * A->s, min64(CH, A->n - j0), A->s, A->is_min, &m, &at);
      at += j0;
      if (A->pidx) {
        A->pval[q * A->K + k] = m, A->pidx[q * A->K + k] = at;
      } else {
        if (A->val) A->val[k] = m;
        A->idx[k] = at + A->base;
      }
    }
  }
}

static void arg_combine(int64_t b, int64_t e, void *ud) {
  const arg_plan *A = ud;
  for (int64_t k = b; k < e; k++) {
    float m = A->pval[k];
    int64_t at = A->pidx[k];
    for (int64_t q = 1; q < A->Q; q++) {
      float v = A->pval[q * A->K + k];
      if (ARG_BETTER(A->is_min, v, m)) m = v, at = A->pidx[q * A->K + k];
    }
    if (A->val) A->val[k] = m;
    A->idx[k] = at + A->base;
  }
}

/* Extremes of x along dim (dim < 0: over all elements, row-major indices)
** into val (may be NULL) and idx, contiguous with K elements. */
static glia_status arg_run(glia_ctx *G, const char *name, glia_tensor *x, int dim, int is_min,
                           int64_t base, float *val, int64_t *idx) {
  arg_plan A;
  memset(&A, 0, sizeof A);
  A.is_min = is_min, A.base = base, A.val = val, A.idx = idx;
  glia_tensor *flat = NULL;
  if (dim < 0) { /* one row: x itself when contiguous, else a copy */
    TRY(glia_tensor_contiguous_as(G, x, GLIA_DTYPE_F32, &flat));
    A.x = (const float *)glia_ptr(flat);
    A.n = glia_tensor_numel(x), A.s = 1;
  } else {
    A.x = (const float *)glia_ptr(x);
    A.n = x->size[dim], A.s = x->stride[dim];
    for (int d = 0; d < x->ndim; d++)
      if (d != dim) {
        A.keep.size[A.keep.n] = x->size[d];
        A.keep.stride[0][A.keep.n++] = x->stride[d];
      }
  }
  A.K = glia_numel_of(A.keep.n, A.keep.size);
  glia_status st = GLIA_OK;
  if (A.K > 0) {
    dimset_coalesce(&A.keep, 1);
    A.Q = cdiv(A.n, CH);
    size_t nb = (size_t)(A.K * A.Q) * (sizeof *A.pidx + sizeof *A.pval);
    if (A.Q > 1 && !(A.pidx = glia_alloc(G, nb))) st = glia_fail_nomem(G, nb, name);
    if (st == GLIA_OK) {
      if (A.pidx) A.pval = (float *)(A.pidx + A.K * A.Q);
      glia_parallel_for(G, A.K * A.Q, max64(1, GRAIN / min64(A.n, CH)), arg_range, &A);
      if (A.pidx) {
        glia_parallel_for(G, A.K, max64(1, GRAIN / A.Q), arg_combine, &A);
        glia_free(G, A.pidx, nb);
      }
    }
  }
  glia_tensor_release(flat);
  return st;
}

/* Saved: the index tensor, whose values are 0-based + iarg[2]. Over all
** elements (mask 0), iarg[2] is the flat index instead. The gradient goes
** to the chosen element of each output only. */
typedef struct {
  int64_t dstride, base, n; /* dx's stride along dim in bytes, index base, dim size */
} scatter_arg;

static void scatter_loop(int64_t n, char **p, const int64_t *s, void *ud) {
  const scatter_arg *A = ud;
  for (int64_t i = 0; i < n; i++) {
    int64_t j = *(const int64_t *)(p[1] + i * s[1]) - A->base;
    if ((uint64_t)j < (uint64_t)A->n) /* never trust a tensor the user could write */
      *(float *)(p[2] + i * s[2] + j * A->dstride) = *(const float *)(p[0] + i * s[0]);
  }
}

static glia_status extreme_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  glia_tensor *x = n->input[0], *dx, *idx, *gk = NULL, *ik = NULL, *dv = NULL;
  unsigned mask = (unsigned)n->iarg[0];
  TRY(glia_tensor_zeros(G, GLIA_DTYPE_F32, x->ndim, x->size, &dx));
  if (mask == 0) {
    ((float *)glia_ptr(dx))[n->iarg[2]] = *(const float *)glia_ptr(g);
    din[0] = dx;
    return GLIA_OK;
  }
  int dim = __builtin_ctz(mask), keepdim = (int)n->iarg[1];
  int64_t size[GLIA_MAX_DIMS];
  reduced_shape(x, mask, 1, size);
  glia_status st = glia_node_saved(G, n, 0, &idx);
  if (st == GLIA_OK) st = keep_view(G, g, x, mask, keepdim, 0, &gk);
  if (st == GLIA_OK) st = keep_view(G, idx, x, mask, keepdim, 0, &ik);
  if (st == GLIA_OK) st = glia_tensor_view_raw(G, dx, x->ndim, size, dx->stride, 0, &dv);
  if (st == GLIA_OK) {
    scatter_arg A = {dx->stride[dim] * (int64_t)sizeof(float), n->iarg[2], x->size[dim]};
    glia_tensor *ops[3] = {gk, ik, dv};
    glia_iter_shape(G, x->ndim, size, 3, ops, scatter_loop, &A, GRAIN);
    din[0] = glia_tensor_retain(dx);
  }
  glia_tensor_release(gk);
  glia_tensor_release(ik);
  glia_tensor_release(dv);
  glia_tensor_release(dx);
  return st;
}

/* Max (is_min = 0) or min of x along dim, or over all elements when dim < 0
** (a 0-d result; indices are then row-major positions). Indices are stored
** as 0-based + base. values (recorded for autograd) and indices may each be
** NULL when not wanted. */
static glia_status extreme(glia_ctx *G, const char *name, glia_tensor *x, int dim, int keepdim,
                           int is_min, int64_t base, glia_tensor **values,
                           glia_tensor **indices) {
  TRY(glia_check_f32(G, name, "x", x));
  if (dim >= 0) {
    TRY(glia_check_dim(G, name, x, dim, 0));
    if (x->size[dim] == 0)
      return glia_fail(G, GLIA_ESHAPE, "%s: cannot reduce over dim %lld of size 0 in %s", name,
                       glia_shown(G, dim), glia_shape_str(x));
  } else if (glia_tensor_numel(x) == 0) {
    return glia_fail(G, GLIA_ESHAPE, "%s: cannot reduce an empty tensor %s", name,
                     glia_shape_str(x));
  }
  unsigned mask = dim >= 0 ? 1u << dim : 0;
  int64_t size[GLIA_MAX_DIMS];
  int nd = dim >= 0 ? reduced_shape(x, mask, keepdim, size) : 0;
  glia_tensor *v = NULL, *ix = NULL;
  glia_status st = glia_tensor_new(G, GLIA_DTYPE_I64, nd, size, &ix);
  if (st == GLIA_OK && values) st = glia_tensor_new(G, GLIA_DTYPE_F32, nd, size, &v);
  if (st == GLIA_OK)
    st = arg_run(G, name, x, dim, is_min, base, v ? (float *)glia_ptr(v) : NULL,
                 (int64_t *)glia_ptr(ix));
  if (st == GLIA_OK && v) {
    int64_t i2 = dim >= 0 ? base : *(const int64_t *)glia_ptr(ix) - base;
    st = record(G, name, extreme_bwd, x, &ix, dim >= 0, mask, keepdim, i2, 0, 0, v, values);
    v = NULL; /* record took it */
  }
  glia_tensor_release(v);
  if (st == GLIA_OK && indices)
    *indices = ix;
  else
    glia_tensor_release(ix);
  return st;
}

glia_status glia_max(glia_ctx *G, glia_tensor *x, int dim, int keepdim, glia_tensor **values,
                     glia_tensor **indices) {
  return extreme(G, values ? "glia.max" : "glia.argmax", x, dim, keepdim, 0, 0, values, indices);
}

glia_status glia_min(glia_ctx *G, glia_tensor *x, int dim, int keepdim, glia_tensor **values,
                     glia_tensor **indices) {
  return extreme(G, values ? "glia.min" : "glia.argmin", x, dim, keepdim, 1, 0, values, indices);
}

/* ===================================================== sort and topk */

/* Lines are sorted through unique 64-bit keys: the value's order as an
** unsigned integer in the high half (NaN above +inf, -0 equal to +0,
** complemented for descending order), the position along the line in the
** low half. Plain integer order on the keys is then the stable order of
** the values, and a key names its element. Lines are therefore limited to
** 2^32 - 1 elements. */
#define SORT_MAX_LEN ((int64_t)UINT32_MAX)

static inline uint64_t sort_key(float v, int64_t j, int desc) {
  uint32_t u;
  if (isnan(v)) {
    u = UINT32_MAX;
  } else {
    if (v == 0) v = 0; /* -0 sorts as +0 */
    memcpy(&u, &v, sizeof u);
    u = (u & 0x80000000u) ? ~u : u | 0x80000000u;
  }
  if (desc) u = ~u;
  return (uint64_t)u << 32 | (uint64_t)j;
}

#define SORT_RUN 16

/* Sorts a[0..n) ascending: runs of SORT_RUN by insertion, then bottom-up
** merges through tmp (room for n). Returns the array holding the result. */
static uint64_t *merge_sort(uint64_t *a, uint64_t *tmp, int64_t n) {
  for (int64_t lo = 0; lo < n; lo += SORT_RUN) {
    int64_t hi = lo + SORT_RUN < n ? lo + SORT_RUN : n;
    for (int64_t i = lo + 1; i < hi; i++) {
      uint64_t v = a[i];
      int64_t j = i;
      for (; j > lo && v < a[j - 1]; j--) a[j] = a[j - 1];
      a[j] = v;
    }
  }
  for (int64_t w = SORT_RUN; w < n; w *= 2) {
    for (int64_t lo = 0; lo < n; lo += 2 * w) {
      int64_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
      int64_t i = lo, j = mid, o = lo;
      while (i < mid && j < hi) tmp[o++] = a[j] < a[i] ? a[j++] : a[i++];
      while (i < mid) tmp[o++] = a[i++];
      while (j < hi) tmp[o++] = a[j++];
    }
    uint64_t *t = a;
    a = tmp;
    tmp = t;
  }
  return a;
}

static void sift_down(uint64_t *h, int64_t n, int64_t i) {
  uint64_t v = h[i];
  for (;;) {
    int64_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && h[c + 1] > h[c]) c++;
    if (h[c] <= v) break;
    h[i] = h[c];
    i = c;
  }
  h[i] = v;
}

/* Lines (o, c) of the contiguous x {outer, len, inner}; the first k of each
** sorted line go to val and ind {outer, k, inner}. Lines are split into
** nchunks chunks, chunk w with its own workspace (2 * len keys) at
** ws + w * 2 * len. */
typedef struct {
  const float *x;
  float *val;
  int64_t *ind;
  int64_t inner, len, k, nlines, nchunks, base;
  int desc;
  uint64_t *ws;
} sort_job;

/* Sets key[0..k) to the k smallest keys of the line, ascending. A small k
** keeps a max-heap of the best k seen (one comparison per element once
** it fills); otherwise the whole line is merge sorted. Returns the array
** holding the result (key or tmp). */
static uint64_t *smallest_keys(const sort_job *J, const float *src, uint64_t *key,
                               uint64_t *tmp) {
  int64_t len = J->len, k = J->k, inner = J->inner;
  if (k * 8 > len) {
    for (int64_t j = 0; j < len; j++) key[j] = sort_key(src[j * inner], j, J->desc);
    return merge_sort(key, tmp, len);
  }
  for (int64_t j = 0; j < k; j++) key[j] = sort_key(src[j * inner], j, J->desc);
  for (int64_t i = k / 2 - 1; i >= 0; i--) sift_down(key, k, i);
  for (int64_t j = k; j < len; j++) {
    uint64_t q = sort_key(src[j * inner], j, J->desc);
    if (q < key[0]) {
      key[0] = q;
      sift_down(key, k, 0);
    }
  }
  for (int64_t m = k - 1; m > 0; m--) { /* heapsort: largest to the back */
    uint64_t t = key[0];
    key[0] = key[m];
    key[m] = t;
    sift_down(key, m, 0);
  }
  return key;
}

static void sort_chunks(int64_t w0, int64_t w1, void *ud) {
  const sort_job *J = ud;
  int64_t len = J->len, inner = J->inner;
  for (int64_t w = w0; w < w1; w++) {
    uint64_t *key = J->ws + w * 2 * len, *tmp = key + len;
    for (int64_t l = J->nlines * w / J->nchunks; l < J->nlines * (w + 1) / J->nchunks; l++) {
      int64_t o = l / inner, c = l % inner;
      const float *src = J->x + o * len * inner + c;
      const uint64_t *s = smallest_keys(J, src, key, tmp);
      float *dv = J->val + o * J->k * inner + c;
      int64_t *di = J->ind + o * J->k * inner + c;
      for (int64_t j = 0; j < J->k; j++) {
        int64_t p = (int64_t)(s[j] & UINT32_MAX);
        dv[j * inner] = src[p * inner];
        di[j * inner] = p + J->base;
      }
    }
  }
}

/* dx = zeros with g put back at the positions the indices name. */
static glia_status sorted_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  glia_tensor *ind, *x = n->input[0];
  TRY(glia_node_saved(G, n, 0, &ind));
  return glia_scatter_zeros(G, n->name, g, __builtin_ctz((unsigned)n->iarg[0]), ind,
                            (int)n->iarg[2], x, &din[0]);
}

/* The first k of x sorted along dim (descending when desc), with indices. */
static glia_status sorted_k(glia_ctx *G, const char *name, glia_tensor *x, int64_t k, int dim,
                            int desc, int base, glia_tensor **values, glia_tensor **indices) {
  TRY(glia_check_f32(G, name, "x", x));
  if (x->ndim == 0)
    return glia_fail(G, GLIA_ESHAPE, "%s: expected at least 1 dim, got %s", name,
                     glia_shape_str(x));
  TRY(glia_check_dim(G, name, x, dim, 0));
  int64_t len = x->size[dim];
  if (k < 0 || k > len)
    return glia_fail(G, GLIA_ERANGE, "%s: k = %lld out of range for dim %lld of size %lld", name,
                     (long long)k, glia_shown(G, dim), (long long)len);
  if (len > SORT_MAX_LEN)
    return glia_fail(G, GLIA_ESHAPE, "%s: dim %lld of %s is too long to sort (at most %lld)",
                     name, glia_shown(G, dim), glia_shape_str(x), (long long)SORT_MAX_LEN);
  int64_t size[GLIA_MAX_DIMS];
  memcpy(size, x->size, sizeof size);
  size[dim] = k;
  glia_tensor *xc = NULL, *v = NULL, *ind = NULL;
  glia_status st = glia_tensor_contiguous_as(G, x, GLIA_DTYPE_F32, &xc);
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_F32, x->ndim, size, &v);
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_I64, x->ndim, size, &ind);
  sort_job J = {0};
  split_at(x->ndim, x->size, dim, &J.nlines, &J.inner);
  J.nlines *= J.inner;
  if (st == GLIA_OK && J.nlines > 0 && k > 0) {
    int64_t worth = J.nlines * len / GRAIN + 1; /* chunks of about GRAIN elements */
    J.nchunks = glia_ctx_num_threads(G);
    if (J.nchunks > worth) J.nchunks = worth;
    if (J.nchunks > J.nlines) J.nchunks = J.nlines;
    size_t nbytes = (size_t)J.nchunks * 2 * (size_t)len * sizeof(uint64_t);
    J.ws = glia_alloc(G, nbytes);
    if (!J.ws) st = glia_fail_nomem(G, nbytes, name);
    if (st == GLIA_OK) {
      J.x = (const float *)glia_ptr(xc);
      J.val = (float *)glia_ptr(v);
      J.ind = (int64_t *)glia_ptr(ind);
      J.len = len;
      J.k = k;
      J.base = base;
      J.desc = desc;
      glia_parallel_for(G, J.nchunks, 1, sort_chunks, &J);
      glia_free(G, J.ws, nbytes);
    }
  }
  glia_tensor_release(xc);
  if (st == GLIA_OK) /* iarg as extreme's: the dim as a mask, the base */
    st = record(G, name, sorted_bwd, x, &ind, 1, 1u << dim, 0, base, 0, 0, v, values);
  else
    glia_tensor_release(v);
  return glia_hand_out(st, ind, indices);
}

glia_status glia_topk(glia_ctx *G, glia_tensor *x, int64_t k, int dim, int largest, int base,
                      glia_tensor **values, glia_tensor **indices) {
  return sorted_k(G, "glia.topk", x, k, dim, largest, base, values, indices);
}

glia_status glia_sort(glia_ctx *G, glia_tensor *x, int dim, int descending, int base,
                      glia_tensor **values, glia_tensor **indices) {
  int64_t len = dim >= 0 && dim < x->ndim ? x->size[dim] : 0;
  return sorted_k(G, "glia.sort", x, len, dim, descending, base, values, indices);
}

/* ========================================================== registry */

/* Indices count from the call's base (vm/registry.c): 0 from C, 1 from
** Lua, Torch7's convention, so that results feed the index ops as they are. */

/* Optional dims default to the last dim. */
static int opt_dim(const glia_value *a, const glia_tensor *x) {
  return arg_present(a) ? (int)a->u.i : x->ndim - 1;
}

/* max/min(x [, dim [, keepdim]]): without a dim, the 0-d extreme; with one,
** values and indices. argmax/argmin: the indices only (row-major positions
** without a dim). Indices count from the call's base. */
static glia_status op_extreme(glia_ctx *G, const char *name, int is_min, int want_values,
                              glia_value *args, int *nouts, glia_value *outs) {
  glia_tensor *x = args[0].u.t, *v = NULL, *ix = NULL;
  int dim = arg_present(&args[1]) ? (int)args[1].u.i : -1;
  int keepdim = arg_bool(&args[2], 0), both = want_values && dim >= 0;
  TRY(extreme(G, name, x, dim, keepdim, is_min, glia_index_base(G),
              want_values ? &v : NULL,
              want_values && dim < 0 ? NULL : &ix));
  if (!both) return out1(nouts, outs, v ? v : ix);
  return out2(nouts, outs, v, ix);
}

#define EXTREME_OP(NAME, IS_MIN, VALUES)                                      \
  static glia_status op_##NAME(glia_ctx *G, int nargs, glia_value *args, int *nouts, \
                               glia_value *outs) {                            \
    (void)nargs;                                                              \
    return op_extreme(G, "glia." #NAME, IS_MIN, VALUES, args, nouts, outs);   \
  }
EXTREME_OP(max, 0, 1)
EXTREME_OP(min, 1, 1)
EXTREME_OP(argmax, 0, 0)
EXTREME_OP(argmin, 1, 0)

/* topk(x, k [, dim [, largest = true [, sorted = true]]]) -> values, indices.
** Results always come sorted, which also satisfies sorted = false. */
static glia_status op_topk(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                           glia_value *outs) {
  (void)nargs;
  glia_tensor *x = args[0].u.t, *v, *i;
  TRY(glia_topk(G, x, args[1].u.i, opt_dim(&args[2], x), arg_bool(&args[3], 1),
                glia_index_base(G), &v, &i));
  return out2(nouts, outs, v, i);
}

/* sort(x [, dim [, descending = false]]) -> values, indices */
static glia_status op_sort(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                           glia_value *outs) {
  (void)nargs;
  glia_tensor *x = args[0].u.t, *v, *i;
  TRY(glia_sort(G, x, opt_dim(&args[1], x), arg_bool(&args[2], 0), glia_index_base(G), &v,
                &i));
  return out2(nouts, outs, v, i);
}

/* argsort(x [, dim [, descending = false]]) -> indices */
static glia_status op_argsort(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                              glia_value *outs) {
  (void)nargs;
  glia_tensor *x = args[0].u.t, *v, *i;
  int old = glia_ctx_set_grad_mode(G, 0); /* indices carry no gradient */
  glia_status st = glia_sort(G, x, opt_dim(&args[1], x), arg_bool(&args[2], 0),
                             glia_index_base(G), &v, &i);
  glia_ctx_set_grad_mode(G, old);
  TRY(st);
  glia_tensor_release(v);
  return out1(nouts, outs, i);
}

const glia_op glia_ops_sort[] = {
    {"max", "T|db", op_max, 1},
    {"min", "T|db", op_min, 1},
    {"argmax", "T|db", op_argmax, 1},
    {"argmin", "T|db", op_argmin, 1},
    {"topk", "Ti|dbb", op_topk, 1},
    {"sort", "T|db", op_sort, 1},
    {"argsort", "T|db", op_argsort, 1},
    {NULL, NULL, NULL, 0},
};
