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
** members is recorded as a chain: the node on the output takes the first
** three members plus a "rest" tensor, a view of the output region that holds
** the other members, whose own node does the same. The rest tensor is a
** genuine cat of the members after it, so every node of the chain is an
** ordinary join node with the same backward: cut the gradient into its
** inputs' regions. The chain has about n/3 nodes and costs one copy of each
** rest region's gradient (the engine accumulates it).
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

/* Records the join of xs[0..n) into out as a chain of nodes (see the file
** header), built from the tail so each node can take the rest tensor of
** the node after it. A no-op when no member needs grad. */
static glia_status record_join(glia_ctx *G, const char *name, glia_tensor *out, int n,
                               glia_tensor *const *xs, int dim) {
  bool any = false;
  for (int i = 0; i < n; i++) any |= glia_tensor_needs_grad(xs[i]);
  if (!G->grad_mode || !any) return GLIA_OK;
  const int per = GLIA_NODE_MAX_IN - 1; /* members per node, besides the rest */
  int qlast = 0;
  while (n - per * qlast > GLIA_NODE_MAX_IN) qlast++; /* it takes [per*qlast, n) */
  int q = qlast;
  int64_t off = 0;                            /* where node q's members start */
  for (int i = 0; i < per * q; i++) off += member_len(xs[i], dim, out->ndim);
  glia_tensor *rest = NULL; /* the region of the nodes after q, with its node */
  for (; q >= 0; q--) {
    int first = per * q, last = q == qlast ? n : first + per;
    glia_tensor *in[GLIA_NODE_MAX_IN];
    int m = 0;
    for (int i = first; i < last; i++) in[m++] = xs[i];
    if (rest) in[m++] = rest;
    glia_tensor *reg = out;
    glia_status st = GLIA_OK;
    if (q > 0) st = region(G, out, dim, off, out->size[dim] - off, false, &reg);
    glia_node *node = st == GLIA_OK ? glia_node_begin(G, name, join_bwd, m, in, &st) : NULL;
    glia_tensor_release(rest); /* the node holds its own reference */
    rest = NULL;
    if (st != GLIA_OK) {
      if (reg != out) glia_tensor_release(reg);
      return st;
    }
    if (node) {
      node->iarg[0] = dim;
      glia_node_finish(node, reg);
    }
    if (q > 0) {
      if (node) rest = reg;
      else glia_tensor_release(reg);
      for (int i = per * (q - 1); i < per * q; i++) off -= member_len(xs[i], dim, out->ndim);
    }
  }
  return GLIA_OK;
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
    return glia_fail(G, GLIA_EARG, "%s: dim %d out of range for %d-D members %s", name, dim,
                     a->ndim, glia_shape_str(a));
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
      for (int i = 0; i < n; i++) total += stack ? 1 : xs[i]->size[dim];
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
  if (st == GLIA_OK) st = record_join(G, name, r, n, xs, dim);
  if (st != GLIA_OK) {
    glia_tensor_release(r);
    return st;
  }
  *out = r;
  return GLIA_OK;
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
