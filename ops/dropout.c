/*
** ops/dropout.c -- dropout: zeroes each element with probability p and
** scales the rest by 1/(1-p), in training mode only.
**
** The mask comes from the context's Philox stream: element i (in row-major
** order) uses word i%4 of counter first+i/4, so the mask is a function of
** (seed, offset, i) alone, whatever the thread count. Backward regenerates
** it from the saved counter instead of storing it.
*/
#include "glia_impl.h"
#include "ops.h"

typedef struct {
  const float *x; /* contiguous input (forward) or upstream gradient (backward) */
  float *y;       /* contiguous output */
  int64_t n;
  uint64_t seed, first;
  double p;
  float scale; /* 1/(1-p) */
} dropout_arg;

/* Each task handles whole groups of 4 elements: one Philox call each. */
static void dropout_groups(int64_t begin, int64_t end, void *ud) {
  const dropout_arg *k = ud;
  for (int64_t gi = begin; gi < end; gi++) {
    uint32_t r[4];
    glia_philox(k->seed, k->first + (uint64_t)gi, r);
    for (int j = 0; j < 4; j++) {
      int64_t i = gi * 4 + j;
      if (i >= k->n) break;
      double u = (double)(r[j] >> 8) * 0x1p-24; /* uniform in [0, 1) */
      k->y[i] = u >= k->p ? k->x[i] * k->scale : 0.0f;
    }
  }
}

/* Runs the mask over the contiguous f32 src into a new tensor shaped like src. */
static glia_status dropout_apply(glia_ctx *G, glia_tensor *src, uint64_t seed, uint64_t first,
                                 double p, glia_tensor **out) {
  glia_tensor *sc, *y;
  TRY(glia_tensor_contiguous_as(G, src, GLIA_DTYPE_F32, &sc));
  glia_status st = glia_tensor_new_like(G, src, GLIA_DTYPE_F32, &y);
  if (st == GLIA_OK) {
    int64_t n = glia_tensor_numel(sc);
    dropout_arg k = {(const float *)glia_ptr(sc), (float *)glia_ptr(y), n, seed, first, p,
                     p < 1 ? (float)(1.0 / (1.0 - p)) : 0.0f};
    glia_parallel_for(G, (n + 3) / 4, glia_grain_items(4), dropout_groups, &k);
    *out = y;
  }
  glia_tensor_release(sc);
  return st;
}

/* The same mask (seed iarg[0], first counter iarg[1]) times the gradient. */
static glia_status dropout_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  return dropout_apply(G, g, (uint64_t)n->iarg[0], (uint64_t)n->iarg[1], n->farg[0], &din[0]);
}

glia_status glia_dropout(glia_ctx *G, glia_tensor *x, double p, int train, glia_tensor **out) {
  TRY(glia_check_f32(G, "glia.dropout", "input", x));
  if (!(p >= 0 && p <= 1))
    return glia_fail(G, GLIA_EARG, "glia.dropout: p must be in [0, 1], got %g", p);
  if (!train || p == 0) {
    *out = glia_tensor_retain(x);
    return GLIA_OK;
  }
  int64_t n = glia_tensor_numel(x);
  uint64_t seed = G->seed, first = glia_rng_reserve(G, (uint64_t)(n + 3) / 4);
  glia_tensor *y = NULL;
  glia_status st = dropout_apply(G, x, seed, first, p, &y);
  if (st == GLIA_OK) {
    glia_node *node = glia_node_begin(G, "glia.dropout", dropout_bwd, 1, &x, &st);
    if (node) {
      node->iarg[0] = (int64_t)seed;
      node->iarg[1] = (int64_t)first;
      node->farg[0] = p;
      glia_node_finish(node, y);
    }
  }
  /* a failed call gives its counters back, so a retry (the binding's, after
  ** running out of memory) draws the mask this call would have */
  if (st != GLIA_OK) glia_ctx_set_rng_state(G, seed, first);
  return glia_hand_out(st, y, out);
}

/* ========================================================= registry */

/* dropout(x, p [, train = true]) */
static glia_status op_dropout(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                              glia_value *outs) {
  (void)nargs;
  glia_tensor *r;
  TRY(glia_dropout(G, args[0].u.t, arg_num(&args[1], 0.5), arg_bool(&args[2], 1), &r));
  return out1(nouts, outs, r);
}

const glia_op glia_ops_dropout[] = {
    {"dropout", "Tn|b", op_dropout, 1},
    {NULL, NULL, NULL, 0},
};
