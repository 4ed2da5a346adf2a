/*
** ops/rows.h -- what the files that walk a tensor along dims share
** (ops/reduce.c, ops/softmax.c, ops/sort.c): the geometry of a set of dims
** walked by several operands, vectorizable lane loops with a fixed
** summation order, and the shapes of a reduction.
**
** Invariant: every loop here visits elements in an order that depends only
** on the shapes, never on the thread count, so results are bit-identical
** for any number of threads.
*/
#ifndef GLIA_ROWS_H
#define GLIA_ROWS_H

#include "ops.h"

#define LANES 16     /* accumulators per vectorized reduction */
#define CH (1 << 14) /* row layout: elements per chunk */
#define MAXOPS 3

#define INLINE static inline __attribute__((always_inline))

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* ======================================================== geometry */

/* A set of dims walked together by up to MAXOPS operands. */
typedef struct {
  int n;
  int64_t size[GLIA_MAX_DIMS];
  int64_t stride[MAXOPS][GLIA_MAX_DIMS]; /* in elements */
} dimset;

/* Drops size-1 dims and merges a dim into the one before it when every
** operand steps evenly across both. Sizes must be nonzero. */
static inline void dimset_coalesce(dimset *D, int nops) {
  int w = 0;
  for (int d = 0; d < D->n; d++) {
    if (D->size[d] == 1) continue;
    bool merge = w > 0;
    for (int k = 0; k < nops && merge; k++)
      merge = D->stride[k][w - 1] == D->stride[k][d] * D->size[d];
    if (merge) {
      D->size[w - 1] *= D->size[d];
      for (int k = 0; k < nops; k++) D->stride[k][w - 1] = D->stride[k][d];
    } else {
      D->size[w] = D->size[d];
      for (int k = 0; k < nops; k++) D->stride[k][w] = D->stride[k][d];
      w++;
    }
  }
  D->n = w;
}

/* Every dim but the last. */
static inline dimset dimset_outer(const dimset *D) {
  dimset o = *D;
  if (o.n > 0) o.n--;
  return o;
}

/* A multi-index into a dimset, with each operand's element offset. */
typedef struct {
  int64_t idx[GLIA_MAX_DIMS];
  int64_t off[MAXOPS];
} cursor;

static inline void cursor_seek(cursor *c, const dimset *D, int nops, int64_t k) {
  for (int o = 0; o < nops; o++) c->off[o] = 0;
  for (int d = D->n - 1; d >= 0; d--) {
    c->idx[d] = k % D->size[d];
    k /= D->size[d];
    for (int o = 0; o < nops; o++) c->off[o] += c->idx[d] * D->stride[o][d];
  }
}

/* Steps to the next index in row-major order (wrapping after the last). */
static inline void cursor_next(cursor *c, const dimset *D, int nops) {
  for (int d = D->n - 1; d >= 0; d--) {
    for (int o = 0; o < nops; o++) c->off[o] += D->stride[o][d];
    if (++c->idx[d] < D->size[d]) return;
    for (int o = 0; o < nops; o++) c->off[o] -= D->size[d] * D->stride[o][d];
    c->idx[d] = 0;
  }
}

/* ===================================================== lane loops */

/* NaN wins, so max/min propagate it. */
#define BETTER_MAX(a, b) ((a) > (b) || (a) != (a))
#define BETTER_MIN(a, b) ((a) < (b) || (a) != (a))

/* Loops below are written in blocks of LANES with a fixed inner loop:
** gcc's -O2 cost model vectorizes those, not loops of unknown length. */

/* RESULT = sum of EXPR (a float expression of the index J) for J in
** [0, n), in LANES double accumulators folded pairwise: a fixed order.
** Unlike GLIA_LANE_SUM (float lanes, for short rows) the lanes are double:
** a reduction may run over millions of elements. */
#define LANE_SUM(RESULT, n, J, EXPR)                                          \
  do {                                                                        \
    double l_[LANES] = {0}, t_ = 0;                                           \
    int64_t e_ = (n) - (n) % LANES;                                           \
    for (int64_t b_ = 0; b_ < e_; b_ += LANES) {                              \
      float v_[LANES];                                                        \
      for (int k_ = 0; k_ < LANES; k_++) {                                    \
        int64_t J = b_ + k_;                                                  \
        v_[k_] = (EXPR);                                                      \
      }                                                                       \
      for (int k_ = 0; k_ < LANES; k_++) l_[k_] += v_[k_];                    \
    }                                                                         \
    for (int64_t J = e_; J < (n); J++) t_ += (EXPR);                          \
    for (int w_ = LANES / 2; w_ > 0; w_ /= 2)                                 \
      for (int k_ = 0; k_ < w_; k_++) l_[k_] += l_[k_ + w_];                  \
    RESULT = l_[0] + t_;                                                      \
  } while (0)

/* The statement after J for J in [0, n). */
#define LANE_FOR(n, J, ...)                                                   \
  do {                                                                        \
    int64_t e_ = (n) - (n) % LANES;                                           \
    for (int64_t b_ = 0; b_ < e_; b_ += LANES)                                \
      for (int64_t J = b_; J < b_ + LANES; J++) __VA_ARGS__;                  \
    for (int64_t J = e_; J < (n); J++) __VA_ARGS__;                           \
  } while (0)

/* RESULT = the element of EXPR (a float expression of J) that BETTER picks,
** starting from INIT. */
#define LANE_PICK(RESULT, n, J, EXPR, INIT, BETTER)                           \
  do {                                                                        \
    float l_[LANES], t_ = (INIT);                                             \
    for (int k_ = 0; k_ < LANES; k_++) l_[k_] = (INIT);                       \
    int64_t e_ = (n) - (n) % LANES;                                           \
    for (int64_t b_ = 0; b_ < e_; b_ += LANES)                                \
      for (int k_ = 0; k_ < LANES; k_++) {                                    \
        int64_t J = b_ + k_;                                                  \
        float v_ = (EXPR);                                                    \
        l_[k_] = BETTER(v_, l_[k_]) ? v_ : l_[k_];                            \
      }                                                                       \
    for (int64_t J = e_; J < (n); J++) {                                      \
      float v_ = (EXPR);                                                      \
      t_ = BETTER(v_, t_) ? v_ : t_;                                          \
    }                                                                         \
    for (int w_ = LANES / 2; w_ > 0; w_ /= 2)                                 \
      for (int k_ = 0; k_ < w_; k_++)                                         \
        l_[k_] = BETTER(l_[k_ + w_], l_[k_]) ? l_[k_ + w_] : l_[k_];          \
    RESULT = BETTER(t_, l_[0]) ? t_ : l_[0];                                  \
  } while (0)
/* ============================================ layout around a dim */

/* [outer, inner] around dim for a shape. */
static inline void split_at(int ndim, const int64_t *size, int dim, int64_t *outer, int64_t *inner) {
  *outer = glia_numel_of(dim, size);
  *inner = glia_numel_of(ndim - dim - 1, size + dim + 1);
}

/* Column kernels take a range [begin, end) of the outer*inner columns
** (o, c); within outer row o they cover the columns [c0, c1). */
static inline void column_span(int64_t o, int64_t inner, int64_t begin, int64_t end,
                               int64_t *c0, int64_t *c1) {
  *c0 = begin > o * inner ? begin - o * inner : 0;
  *c1 = end < (o + 1) * inner ? end - o * inner : inner;
}

/* ================================================ reduction shapes */

/* The shape of x reduced over mask: reduced dims kept as 1 or dropped. */
static inline int reduced_shape(const glia_tensor *x, unsigned mask, int keepdim, int64_t *size) {
  int n = 0;
  for (int d = 0; d < x->ndim; d++)
    if (!(mask >> d & 1))
      size[n++] = x->size[d];
    else if (keepdim)
      size[n++] = 1;
  return n;
}

static inline int64_t reduced_count(const glia_tensor *x, unsigned mask) {
  int64_t n = 1;
  for (int d = 0; d < x->ndim; d++)
    if (mask >> d & 1) n *= x->size[d];
  return n;
}

/* A view of t (shaped like x reduced over mask, keepdim or not) with x's
** dims: reduced dims get stride 0 and size 1, or x's size when expand. */
static inline glia_status keep_view(glia_ctx *G, glia_tensor *t, const glia_tensor *x, unsigned mask,
                             int keepdim, int expand, glia_tensor **out) {
  int64_t size[GLIA_MAX_DIMS], stride[GLIA_MAX_DIMS];
  for (int d = 0, td = 0; d < x->ndim; d++) {
    bool red = mask >> d & 1;
    size[d] = red && !expand ? 1 : x->size[d];
    stride[d] = red ? 0 : t->stride[td];
    if (!red || keepdim) td++;
  }
  return glia_tensor_view_raw(G, t, x->ndim, size, stride, t->offset, out);
}
/* Gives r a node recording `name` on input x, saving save[0..nsave), with
** iarg {mask, keepdim, i2} and farg {f0, f1}; hands r to *out. On failure
** r is released. */
static inline glia_status record(glia_ctx *G, const char *name, glia_backward_fn bw, glia_tensor *x,
                          glia_tensor *const *save, int nsave, unsigned mask, int keepdim,
                          int64_t i2, double f0, double f1, glia_tensor *r, glia_tensor **out) {
  glia_status st;
  glia_node *node = glia_node_begin(G, name, bw, 1, &x, &st);
  if (node) {
    for (int i = 0; i < nsave && st == GLIA_OK; i++) st = glia_node_save(G, node, save[i]);
    node->iarg[0] = mask, node->iarg[1] = keepdim, node->iarg[2] = i2;
    node->farg[0] = f0, node->farg[1] = f1;
    st = glia_node_end(node, st, r);
  }
  return glia_hand_out(st, r, out);
}
#endif
