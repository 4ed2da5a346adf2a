/*
** ops/join.c -- joining tensors: cat (along an existing dim) and stack
** (along a new dim).
**
** Members share one dtype (any dtype: joining only moves elements) and one
** shape, except along the cat dim. Forward copies each member into its
** region of one new output. Backward hands each member the matching region
** of the output gradient: a view, no copy.
**
** A tape node holds at most GLIA_NODE_MAX_IN inputs, so a join of more
** members is recorded as a tree: the node on the output takes up to four
** balanced groups of members, and a group of two or more enters that node as
** a "group" tensor, a view of the output region that holds the group, whose
** own node does the same. A group tensor is a genuine join of its members,
** so every node is an ordinary join node with the same backward: cut the
** gradient into its inputs' regions. The tree is log4(n) deep, and each
** level costs one copy of the gradient (the engine accumulates each group
** tensor's gradient before its node runs).
*/
#include "glia_impl.h"
#include "ops.h"

/* ========================================================== regions */

/* Sets *out to a view of t's region [off, off+len) along dim, without grad
** history. With drop, len must be 1 and the dim is removed (one member of a
** stack). The caller owns *out. */
static glia_status region(glia_ctx *G, glia_tensor *t, int dim, int64_t off, int64_t len,
                          bool drop, glia_tensor **out) {
  int64_t size[GLIA_MAX_DIMS], stride[GLIA_MAX_DIMS];
  int nd = 0;
  for (int d = 0; d < t->ndim; d++) {
    if (d == dim && drop) continue;
    size[nd] = d == dim ? len : t->size[d];
    stride[nd++] = t->stride[d];
  }
  return glia_tensor_view_raw(G, t, nd, size, stride, t->offset + off * t->stride[dim], out);
}

/* The length a member takes along dim in a tensor of out_ndim dims: a
** stack member (one dim fewer) takes 1. */
static int64_t member_len(const glia_tensor *m, int dim, int out_ndim) {
  return m->ndim < out_ndim ? 1 : m->size[dim];
}

/* ========================================================= backward */

/* Each input of the node gets its region of g, in order along dim. */
static glia_status join_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  int dim = (int)n->iarg[0];
  int64_t off = 0;
  for (int i = 0; i < n->ninputs; i++) {
    glia_tensor *in = n->input[i];
    int64_t len = member_len(in, dim, g->ndim);
    if (n->needs[i]) TRY(region(G, g, dim, off, len, in->ndim < g->ndim, &din[i]));
    off += len;
  }
  return GLIA_OK;
}

static bool any_needs_grad(int n, glia_tensor *const *xs) {
  for (int i = 0; i < n; i++)
    if (glia_tensor_needs_grad(xs[i])) return true;
  return false;
}

/* Records the join of xs[0..n) into `out` (the op's output, or a group
** region of it) as a tree (see the file header): up to GLIA_NODE_MAX_IN
** members, or that many balanced groups, each group of two or more becoming
** a region view of out with a subtree of its own. A group that needs no
** grad keeps its region as a plain input, so later inputs keep their
** offsets. */
static glia_status record_join(glia_ctx *G, const char *name, glia_tensor *out, int n,
                               glia_tensor *const *xs, int dim) {
  glia_tensor *in[GLIA_NODE_MAX_IN] = {0};
  bool owned[GLIA_NODE_MAX_IN] = {0};
  int m = n < GLIA_NODE_MAX_IN ? n : GLIA_NODE_MAX_IN;
  glia_status st = GLIA_OK;
  int64_t off = 0;
  for (int k = 0; k < m && st == GLIA_OK; k++) {
    int lo = n * k / m, hi = n * (k + 1) / m;
    int64_t len = 0;
    for (int i = lo; i < hi; i++) len += member_len(xs[i], dim, out->ndim);
    if (hi - lo == 1) {
      in[k] = xs[lo];
    } else {
      owned[k] = true;
      st = region(G, out, dim, off, len, false, &in[k]);
      if (st == GLIA_OK && any_needs_grad(hi - lo, xs + lo))
        st = record_join(G, name, in[k], hi - lo, xs + lo, dim);
    }
    off += len;
  }
  glia_node *node = st == GLIA_OK ? glia_node_begin(G, name, join_bwd, m, in, &st) : NULL;
  for (int k = 0; k < m; k++)
    if (owned[k]) glia_tensor_release(in[k]); /* the node holds its own references */
  if (node) {
    node->iarg[0] = dim;
    glia_node_finish(node, out);
  }
  return st;
}

/* =========================================================== forward */

/* Checks the members: at least one, all live, one dtype, one shape except
** along dim for cat. */
static glia_status check_members(glia_ctx *G, const char *name, int n, glia_tensor *const *xs,
                                 int dim, bool stack) {
  if (n < 1) return glia_fail(G, GLIA_EARG, "%s: expected a non-empty list of tensors", name);
  const glia_tensor *a = xs[0];
  int maxdim = stack ? a->ndim : a->ndim - 1;
  if (dim < 0 || dim > maxdim)
    return glia_fail(G, GLIA_EARG, "%s: dim %lld out of range for %d-D members %s", name,
                     glia_shown(G, dim), a->ndim, glia_shape_str(a));
  if (stack && a->ndim + 1 > GLIA_MAX_DIMS)
    return glia_fail(G, GLIA_ESHAPE, "%s: stacking %d-D members exceeds %d dims", name, a->ndim,
                     GLIA_MAX_DIMS);
  for (int i = 0; i < n; i++) {
    const glia_tensor *b = xs[i];
    TRY(glia_check_live(G, name, b));
    if (b->dtype != a->dtype)
      return glia_fail(G, GLIA_EDTYPE, "%s: member %d is %s %s, member 1 is %s %s", name, i + 1,
                       glia_dtype_name(b->dtype), glia_shape_str(b), glia_dtype_name(a->dtype),
                       glia_shape_str(a));
    bool same = b->ndim == a->ndim;
    for (int d = 0; same && d < a->ndim; d++) same = b->size[d] == a->size[d] || (!stack && d == dim);
    if (!same)
      return glia_fail(G, GLIA_ESHAPE, "%s: member %d has shape %s, member 1 has %s (%s)", name,
                       i + 1, glia_shape_str(b), glia_shape_str(a),
                       stack ? "stack needs equal shapes" : "sizes must match except along dim");
  }
  return GLIA_OK;
}

/* cat (stack = false) or stack of xs[0..n) along dim into a new tensor. */
static glia_status join(glia_ctx *G, const char *name, int n, glia_tensor *const *xs, int dim,
                        bool stack, glia_tensor **out) {
  TRY(check_members(G, name, n, xs, dim, stack));
  const glia_tensor *a = xs[0];
  int nd = 0;
  int64_t size[GLIA_MAX_DIMS];
  for (int d = 0; d <= a->ndim; d++) {
    if (d == dim) {
      int64_t total = 0;
      for (int i = 0; i < n; i++) {
        int64_t len = stack ? 1 : xs[i]->size[dim];
        if (len > INT64_MAX - total) /* members of 0 elements may be huge along dim */
          return glia_fail(G, GLIA_ESHAPE, "%s: %d members %s... are too large together along dim %d",
                           name, n, glia_shape_str(a), dim + 1);
        total += len;
      }
      size[nd++] = total;
      if (!stack) continue;
    }
    if (d < a->ndim) size[nd++] = a->size[d];
  }
  glia_tensor *r;
  TRY(glia_tensor_new(G, a->dtype, nd, size, &r));
  glia_status st = GLIA_OK;
  int64_t off = 0;
  for (int i = 0; i < n && st == GLIA_OK; i++) {
    int64_t len = stack ? 1 : xs[i]->size[dim];
    glia_tensor *v = NULL;
    st = region(G, r, dim, off, len, stack, &v);
    if (st == GLIA_OK) st = glia_copy_into(G, v, xs[i]);
    glia_tensor_release(v);
    off += len;
  }
  if (st == GLIA_OK && G->grad_mode && any_needs_grad(n, xs))
    st = record_join(G, name, r, n, xs, dim);
  return glia_hand_out(st, r, out);
}

glia_status glia_cat(glia_ctx *G, int n, glia_tensor *const *xs, int dim, glia_tensor **out) {
  return join(G, "glia.cat", n, xs, dim, false, out);
}

glia_status glia_stack(glia_ctx *G, int n, glia_tensor *const *xs, int dim, glia_tensor **out) {
  return join(G, "glia.stack", n, xs, dim, true, out);
}

/* ========================================================= registry */

/* cat(list [, dim = 1]) and stack(list [, dim = 1]) */
static glia_status op_cat(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                          glia_value *outs) {
  (void)nargs;
  glia_tensor *r;
  TRY(glia_cat(G, args[0].u.list.n, args[0].u.list.v, (int)arg_int(&args[1], 0), &r));
  return out1(nouts, outs, r);
}

static glia_status op_stack(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                            glia_value *outs) {
  (void)nargs;
  glia_tensor *r;
  TRY(glia_stack(G, args[0].u.list.n, args[0].u.list.v, (int)arg_int(&args[1], 0), &r));
  return out1(nouts, outs, r);
}

const glia_op glia_ops_join[] = {
    {"cat", "L|d", op_cat, 0},
    {"stack", "L|e", op_stack, 0},
    {NULL, NULL, NULL, 0},
};
