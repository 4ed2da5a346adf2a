/*
** ops/view.c -- views: view, reshape, narrow, select, slice, transpose, t,
** permute, expand, expand_as, squeeze, unsqueeze, flatten, contiguous.
**
** A view shares its source's storage and costs O(1): only sizes, strides
** and the offset change (glia_tensor_view_raw). The exceptions are reshape
** and flatten when the strides cannot express the new shape, and
** contiguous on a strided tensor: those copy. Every op records a node whose
** backward maps the output gradient back to the input's geometry:
** reshape-like ops reshape it back, transpose/permute undo the permutation,
** narrow/select/slice place it in a zero gradient of the input's shape, and
** expand sums it back over the expanded dims.
**
** C dims and indices are 0-based; messages show them as the caller counts
** (glia_shown: 1-based from Lua, 0-based from C).
*/
#include "glia_impl.h"
#include "ops.h"

/* ======================================================== geometry */

/* Sizes, strides and offset of a view, before it exists. */
typedef struct {
  int ndim;
  int64_t size[GLIA_MAX_DIMS];
  int64_t stride[GLIA_MAX_DIMS];
  int64_t offset;
} geom;

static geom geom_of(const glia_tensor *t) {
  geom g;
  g.ndim = t->ndim;
  memcpy(g.size, t->size, sizeof g.size);
  memcpy(g.stride, t->stride, sizeof g.stride);
  g.offset = t->offset;
  return g;
}

static void geom_remove_dim(geom *g, int dim) {
  for (int d = dim; d + 1 < g->ndim; d++) {
    g->size[d] = g->size[d + 1];
    g->stride[d] = g->stride[d + 1];
  }
  g->ndim--;
}

/* Elements start, start+step, ... < stop along dim; keep=0 drops the dim
** (select). */
static geom slice_geom(const glia_tensor *t, int dim, int64_t start, int64_t stop,
                       int64_t step, int keep) {
  geom g = geom_of(t);
  g.offset += start * t->stride[dim];
  if (keep) {
    g.size[dim] = stop > start ? (stop - start + step - 1) / step : 0;
    g.stride[dim] *= step;
  } else {
    geom_remove_dim(&g, dim);
  }
  return g;
}

/* Strides that let a tensor of sizes/strides (on, osize, ostride) be read
** as shape (nn, nsize) without a copy, written to nstride; false when the
** shape splits or merges dims whose strides do not line up (PyTorch's
** computeStride). Element counts must already match. */
static bool view_strides(int on, const int64_t *osize, const int64_t *ostride, int nn,
                         const int64_t *nsize, int64_t *nstride) {
  if (glia_numel_of(on, osize) <= 1 || on == 0) {
    glia_contiguous_strides(nn, nsize, nstride);
    return true;
  }
  int vd = nn - 1;
  int64_t chunk_stride = ostride[on - 1], tensor_numel = 1, view_numel = 1;
  for (int td = on - 1; td >= 0; td--) {
    tensor_numel *= osize[td];
    /* a chunk ends where the next outer dim does not continue this one */
    if (td == 0 || (osize[td - 1] != 1 && ostride[td - 1] != tensor_numel * chunk_stride)) {
      while (vd >= 0 && (view_numel < tensor_numel || nsize[vd] == 1)) {
        nstride[vd] = view_numel * chunk_stride;
        view_numel *= nsize[vd];
        vd--;
      }
      if (view_numel != tensor_numel) return false;
      if (td > 0) {
        chunk_stride = ostride[td - 1];
        tensor_numel = view_numel = 1;
      }
    }
  }
  return vd == -1;
}

/* Shows a 0-based position as the caller gave it: counted from the call's
** base, or negative (negatives arrive as size + p). */
static long long shown_pos(const glia_ctx *G, int64_t index, int64_t size) {
  return index >= 0 ? glia_shown(G, index) : (long long)(index - size);
}

/* ==================================================== recording */

/* Gives v (a view or copy derived from x, owned) a node recording `name`
** with integer arguments iarg[0..niarg), and hands it to *out. On failure
** v is released. */
static glia_status finish(glia_ctx *G, const char *name, glia_backward_fn bw, glia_tensor *x,
                          const int64_t *iarg, int niarg, glia_tensor *v,
                          glia_tensor **out) {
  glia_status st;
  glia_node *node = glia_node_begin(G, name, bw, 1, &x, &st);
  if (node) {
    for (int i = 0; i < niarg; i++) node->iarg[i] = iarg[i];
    glia_node_finish(node, v);
  } else if (st != GLIA_OK) {
    glia_tensor_release(v);
    return st;
  }
  *out = v;
  return GLIA_OK;
}

/* A view of x with geometry g, recorded as op `name`. */
static glia_status view_of(glia_ctx *G, const char *name, glia_backward_fn bw, glia_tensor *x,
                           const geom *g, const int64_t *iarg, int niarg, glia_tensor **out) {
  TRY(glia_check_live(G, name, x));
  glia_tensor *v;
  TRY(glia_tensor_view_raw(G, x, g->ndim, g->size, g->stride, g->offset, &v));
  return finish(G, name, bw, x, iarg, niarg, v, out);
}

/* ======================================== view, reshape, flatten, squeeze */

/* Every reshape-like op: the gradient takes the input's shape back. */
static glia_status reshape_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  const glia_tensor *in = n->input[0];
  return glia_reshape(G, g, in->ndim, in->size, &din[0]);
}

/* Resolves one -1 in size against x's element count into out. */
static glia_status infer_sizes(glia_ctx *G, const char *name, const glia_tensor *x, int ndim,
                               const int64_t *size, int64_t *out) {
  if (ndim < 0 || ndim > GLIA_MAX_DIMS)
    return glia_fail(G, GLIA_ESHAPE, "%s: at most %d dims are supported, got %d", name,
                     GLIA_MAX_DIMS, ndim);
  int infer = -1;
  int64_t known = 1;
  for (int d = 0; d < ndim; d++) {
    if (size[d] == -1 && infer < 0) {
      infer = d;
      continue;
    }
    if (size[d] < 0)
      return glia_fail(G, GLIA_ESHAPE, "%s: bad size %lld in %s (one -1 may be inferred)", name,
                       (long long)size[d], glia_sizes_str(ndim, size));
    out[d] = size[d];
  }
  if (infer >= 0) out[infer] = 0;
  TRY(glia_check_sizes(G, name, ndim, out)); /* before the product: it must not overflow */
  for (int d = 0; d < ndim; d++)
    if (d != infer) known *= out[d];
  int64_t numel = glia_tensor_numel(x);
  if (infer >= 0) {
    if (known == 0 || numel % known != 0)
      return glia_fail(G, GLIA_ESHAPE, "%s: shape %s is invalid for a tensor of shape %s", name,
                       glia_sizes_str(ndim, size), glia_shape_str(x));
    out[infer] = numel / known;
  } else if (known != numel) {
    return glia_fail(G, GLIA_ESHAPE,
                     "%s: shape %s is invalid for a tensor of shape %s (%lld elements)", name,
                     glia_sizes_str(ndim, size), glia_shape_str(x), (long long)numel);
  }
  return GLIA_OK;
}

/* x read as shape size (one -1 allowed): a view when the strides allow,
** else (allow_copy) a contiguous copy, else an error. */
static glia_status reshape_as(glia_ctx *G, const char *name, glia_tensor *x, int ndim,
                              const int64_t *size, int allow_copy, glia_tensor **out) {
  TRY(glia_check_live(G, name, x));
  geom g;
  g.ndim = ndim;
  g.offset = x->offset;
  memset(g.size, 0, sizeof g.size);
  TRY(infer_sizes(G, name, x, ndim, size, g.size));
  if (view_strides(x->ndim, x->size, x->stride, ndim, g.size, g.stride))
    return view_of(G, name, reshape_bwd, x, &g, NULL, 0, out);
  if (!allow_copy)
    return glia_fail(G, GLIA_ESHAPE,
                     "%s: cannot view %s with strides %s as %s without a copy (use reshape or "
                     "contiguous)",
                     name, glia_shape_str(x), glia_sizes_str(x->ndim, x->stride),
                     glia_sizes_str(ndim, g.size));
  glia_tensor *c, *v;
  TRY(glia_tensor_contiguous_as(G, x, x->dtype, &c));
  glia_contiguous_strides(ndim, g.size, g.stride);
  glia_status st = glia_tensor_view_raw(G, c, ndim, g.size, g.stride, 0, &v);
  glia_tensor_release(c);
  TRY(st);
  return finish(G, name, reshape_bwd, x, NULL, 0, v, out);
}

glia_status glia_view(glia_ctx *G, glia_tensor *x, int ndim, const int64_t *size,
                      glia_tensor **out) {
  return reshape_as(G, "glia.view", x, ndim, size, 0, out);
}

glia_status glia_reshape(glia_ctx *G, glia_tensor *x, int ndim, const int64_t *size,
                         glia_tensor **out) {
  return reshape_as(G, "glia.reshape", x, ndim, size, 1, out);
}

/* Dims start..end (inclusive, 0-based) merged into one. */
static glia_status flatten(glia_ctx *G, glia_tensor *x, int start, int end, glia_tensor **out) {
  static const char name[] = "glia.flatten";
  if (x->ndim == 0) {
    int64_t one = 1;
    return reshape_as(G, name, x, 1, &one, 1, out);
  }
  TRY(glia_check_dim(G, name, x, start, 0));
  TRY(glia_check_dim(G, name, x, end, 0));
  if (start > end)
    return glia_fail(G, GLIA_EARG, "%s: start dim %lld comes after end dim %lld, %s", name,
                     glia_shown(G, start), glia_shown(G, end), glia_shape_str(x));
  int64_t size[GLIA_MAX_DIMS];
  int n = 0;
  for (int d = 0; d < start; d++) size[n++] = x->size[d];
  size[n] = 1;
  for (int d = start; d <= end; d++) size[n] *= x->size[d];
  n++;
  for (int d = end + 1; d < x->ndim; d++) size[n++] = x->size[d];
  return reshape_as(G, name, x, n, size, 1, out);
}

/* Drops dim (or, with dim < 0, every dim) of size 1; a dim of another size
** stays, as in PyTorch. */
static glia_status squeeze(glia_ctx *G, glia_tensor *x, int dim, glia_tensor **out) {
  geom g = geom_of(x);
  for (int d = x->ndim - 1; d >= 0; d--)
    if ((dim < 0 || d == dim) && x->size[d] == 1) geom_remove_dim(&g, d);
  return view_of(G, "glia.squeeze", reshape_bwd, x, &g, NULL, 0, out);
}

glia_status glia_unsqueeze(glia_ctx *G, glia_tensor *x, int dim, glia_tensor **out) {
  static const char name[] = "glia.unsqueeze";
  TRY(glia_check_dim(G, name, x, dim, 1));
  if (x->ndim == GLIA_MAX_DIMS)
    return glia_fail(G, GLIA_ESHAPE, "%s: %s already has the maximum of %d dims", name,
                     glia_shape_str(x), GLIA_MAX_DIMS);
  geom g = geom_of(x);
  for (int d = x->ndim; d > dim; d--) {
    g.size[d] = g.size[d - 1];
    g.stride[d] = g.stride[d - 1];
  }
  g.size[dim] = 1;
  g.stride[dim] = dim < x->ndim ? x->size[dim] * x->stride[dim] : 1;
  g.ndim++;
  return view_of(G, name, reshape_bwd, x, &g, NULL, 0, out);
}

/* ================================================ transpose, permute */

static glia_status transpose_bwd(glia_ctx *G, glia_node *n, glia_tensor *g,
                                 glia_tensor **din) {
  return glia_transpose(G, g, (int)n->iarg[0], (int)n->iarg[1], &din[0]);
}

static glia_status transpose_named(glia_ctx *G, const char *name, glia_tensor *x, int d0,
                                   int d1, glia_tensor **out) {
  TRY(glia_check_dim(G, name, x, d0, 0));
  TRY(glia_check_dim(G, name, x, d1, 0));
  geom g = geom_of(x);
  g.size[d0] = x->size[d1], g.stride[d0] = x->stride[d1];
  g.size[d1] = x->size[d0], g.stride[d1] = x->stride[d0];
  int64_t iarg[2] = {d0, d1};
  return view_of(G, name, transpose_bwd, x, &g, iarg, 2, out);
}

glia_status glia_transpose(glia_ctx *G, glia_tensor *x, int d0, int d1, glia_tensor **out) {
  return transpose_named(G, "glia.transpose", x, d0, d1, out);
}

/* iarg holds the forward permutation; backward applies its inverse. */
static glia_status permute_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  int inv[GLIA_MAX_DIMS];
  for (int d = 0; d < g->ndim; d++) inv[n->iarg[d]] = d;
  return glia_permute(G, g, inv, &din[0]);
}

glia_status glia_permute(glia_ctx *G, glia_tensor *x, const int *perm, glia_tensor **out) {
  static const char name[] = "glia.permute";
  geom g = geom_of(x);
  int64_t iarg[GLIA_MAX_DIMS];
  unsigned seen = 0;
  for (int d = 0; d < x->ndim; d++) {
    int p = perm[d];
    if (p < 0 || p >= x->ndim || (seen >> p & 1))
      return glia_fail(G, GLIA_EARG, "%s: dims must be a permutation of 1..%d for %s", name,
                       x->ndim, glia_shape_str(x));
    seen |= 1u << p;
    g.size[d] = x->size[p];
    g.stride[d] = x->stride[p];
    iarg[d] = p;
  }
  return view_of(G, name, permute_bwd, x, &g, iarg, x->ndim, out);
}

/* ============================================================ expand */

/* The gradient, summed over the dims x was expanded along. */
static glia_status expand_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  din[0] = glia_tensor_retain(g);
  return glia_grads_to_inputs(G, n, din);
}

/* size may hold -1 (keep the size) in the dims that line up with x's. */
static glia_status expand_named(glia_ctx *G, const char *name, glia_tensor *x, int ndim,
                                const int64_t *size, glia_tensor **out) {
  if (ndim < x->ndim || ndim > GLIA_MAX_DIMS)
    return glia_fail(G, GLIA_ESHAPE, "%s: cannot expand %s to %s (fewer dims)", name,
                     glia_shape_str(x), glia_sizes_str(ndim, size));
  geom g;
  g.ndim = ndim;
  g.offset = x->offset;
  int lead = ndim - x->ndim;
  for (int d = 0; d < ndim; d++) {
    int xd = d - lead;
    int64_t want = size[d];
    if (xd >= 0 && want == -1) want = x->size[xd];
    if (want < 0 || (xd >= 0 && x->size[xd] != 1 && x->size[xd] != want))
      return glia_fail(G, GLIA_ESHAPE, "%s: cannot expand %s to %s", name, glia_shape_str(x),
                       glia_sizes_str(ndim, size));
    g.size[d] = want;
    g.stride[d] = xd >= 0 && x->size[xd] == want ? x->stride[xd] : 0;
  }
  TRY(glia_check_sizes(G, name, ndim, g.size));
  return view_of(G, name, expand_bwd, x, &g, NULL, 0, out);
}

glia_status glia_expand(glia_ctx *G, glia_tensor *x, int ndim, const int64_t *size,
                        glia_tensor **out) {
  return expand_named(G, "glia.expand", x, ndim, size, out);
}

/* ================================================ narrow, select, slice */

/* iarg = {dim, start, stop, step, keep}: the gradient lands in the same
** geometry of the input's gradient. A scatter function, not a backward:
** the engine hands it that gradient (see glia_scatter_fn). */
static glia_status slice_scatter(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor *acc) {
  geom s = slice_geom(acc, (int)n->iarg[0], n->iarg[1], n->iarg[2], n->iarg[3], (int)n->iarg[4]);
  glia_tensor *v;
  TRY(glia_tensor_view_raw(G, acc, s.ndim, s.size, s.stride, s.offset, &v));
  glia_status st = glia_accumulate(G, &v, g);
  glia_tensor_release(v);
  return st;
}

static glia_status slice_view(glia_ctx *G, const char *name, glia_tensor *x, int dim,
                              int64_t start, int64_t stop, int64_t step, int keep,
                              glia_tensor **out) {
  geom g = slice_geom(x, dim, start, stop, step, keep);
  int64_t iarg[5] = {dim, start, stop, step, keep};
  TRY(view_of(G, name, NULL, x, &g, iarg, 5, out));
  if ((*out)->grad_fn) (*out)->grad_fn->scatter = slice_scatter; /* the node just made */
  return GLIA_OK;
}

glia_status glia_narrow(glia_ctx *G, glia_tensor *x, int dim, int64_t start, int64_t len,
                        glia_tensor **out) {
  static const char name[] = "glia.narrow";
  TRY(glia_check_dim(G, name, x, dim, 0));
  int64_t size = x->size[dim];
  if (start < 0 || start > size)
    return glia_fail(G, GLIA_ERANGE, "%s: start %lld out of range for dim %lld of size %lld, %s",
                     name, shown_pos(G, start, size), glia_shown(G, dim), (long long)size,
                     glia_shape_str(x));
  if (len < 0 || len > size - start)
    return glia_fail(G, GLIA_ERANGE,
                     "%s: length %lld from start %lld out of range for dim %lld of size %lld, %s",
                     name, (long long)len, shown_pos(G, start, size), glia_shown(G, dim),
                     (long long)size, glia_shape_str(x));
  return slice_view(G, name, x, dim, start, start + len, 1, 1, out);
}

glia_status glia_select(glia_ctx *G, glia_tensor *x, int dim, int64_t index,
                        glia_tensor **out) {
  static const char name[] = "glia.select";
  TRY(glia_check_dim(G, name, x, dim, 0));
  int64_t size = x->size[dim];
  if (index < 0 || index >= size)
    return glia_fail(G, GLIA_ERANGE, "%s: index %lld out of range for dim %lld of size %lld, %s",
                     name, shown_pos(G, index, size), glia_shown(G, dim), (long long)size,
                     glia_shape_str(x));
  return slice_view(G, name, x, dim, index, index + 1, 1, 0, out);
}

glia_status glia_slice(glia_ctx *G, glia_tensor *x, int dim, int64_t start, int64_t stop,
                       int64_t step, glia_tensor **out) {
  static const char name[] = "glia.slice";
  TRY(glia_check_dim(G, name, x, dim, 0));
  int64_t size = x->size[dim];
  if (step < 1)
    return glia_fail(G, GLIA_EARG, "%s: step must be >= 1, got %lld", name, (long long)step);
  if (start < 0 || stop < start || stop > size)
    return glia_fail(G, GLIA_ERANGE,
                     "%s: range [%lld, %lld) out of range for dim %lld of size %lld, %s", name,
                     (long long)start, (long long)stop, glia_shown(G, dim), (long long)size,
                     glia_shape_str(x));
  return slice_view(G, name, x, dim, start, stop, step, 1, out);
}

/* ======================================================== contiguous */

static glia_status identity_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  (void)G, (void)n;
  din[0] = glia_tensor_retain(g);
  return GLIA_OK;
}

glia_status glia_contiguous(glia_ctx *G, glia_tensor *x, glia_tensor **out) {
  static const char name[] = "glia.contiguous";
  TRY(glia_check_live(G, name, x));
  if (glia_tensor_is_contiguous(x)) {
    *out = glia_tensor_retain(x);
    return GLIA_OK;
  }
  glia_tensor *c;
  TRY(glia_tensor_contiguous_as(G, x, x->dtype, &c));
  return finish(G, name, identity_bwd, x, NULL, 0, c, out);
}

/* ========================================================== registry */

/* Sizes from an I argument (raw Lua values; -1 allowed where meaningful). */
static int ints_of(const glia_value *a, int64_t *v) {
  if (a->kind != GLIA_VAL_INTS) return 0;
  memcpy(v, a->u.ints.v, (size_t)a->u.ints.n * sizeof *v);
  return a->u.ints.n;
}

static glia_status op_view(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                           glia_value *outs) {
  (void)nargs;
  int64_t size[GLIA_MAX_DIMS];
  int n = ints_of(&args[1], size);
  glia_tensor *r;
  TRY(glia_view(G, args[0].u.t, n, size, &r));
  return out1(nouts, outs, r);
}

static glia_status op_reshape(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                              glia_value *outs) {
  (void)nargs;
  int64_t size[GLIA_MAX_DIMS];
  int n = ints_of(&args[1], size);
  glia_tensor *r;
  TRY(glia_reshape(G, args[0].u.t, n, size, &r));
  return out1(nouts, outs, r);
}

/* narrow(x, dim, start, len) */
static glia_status op_narrow(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                             glia_value *outs) {
  (void)nargs;
  glia_tensor *r;
  TRY(glia_narrow(G, args[0].u.t, (int)args[1].u.i, args[2].u.i, args[3].u.i, &r));
  return out1(nouts, outs, r);
}

/* select(x, dim, index) */
static glia_status op_select(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                             glia_value *outs) {
  (void)nargs;
  glia_tensor *r;
  TRY(glia_select(G, args[0].u.t, (int)args[1].u.i, args[2].u.i, &r));
  return out1(nouts, outs, r);
}

static glia_status op_transpose(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                glia_value *outs) {
  (void)nargs;
  glia_tensor *r;
  TRY(glia_transpose(G, args[0].u.t, (int)args[1].u.i, (int)args[2].u.i, &r));
  return out1(nouts, outs, r);
}

static glia_status op_t(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                        glia_value *outs) {
  (void)nargs;
  glia_tensor *x = args[0].u.t, *r;
  if (x->ndim != 2)
    return glia_fail(G, GLIA_ESHAPE, "glia.t: expected a 2-D tensor, got %s (use transpose)",
                     glia_shape_str(x));
  TRY(transpose_named(G, "glia.t", x, 0, 1, &r));
  return out1(nouts, outs, r);
}

/* permute(x, dims...): dims arrive raw (a list of sizes, 'I'), counted from
** the call's index base (1 from Lua, 0 from C); negatives count from the end. */
static glia_status op_permute(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                              glia_value *outs) {
  (void)nargs;
  glia_tensor *x = args[0].u.t, *r;
  int64_t raw[GLIA_MAX_DIMS];
  int n = ints_of(&args[1], raw), perm[GLIA_MAX_DIMS], base = glia_index_base(G);
  if (n != x->ndim)
    return glia_fail(G, GLIA_EARG, "glia.permute: got %d dims for a %d-D tensor %s", n,
                     x->ndim, glia_shape_str(x));
  for (int d = 0; d < n; d++) {
    int64_t p = raw[d] < 0 ? n + raw[d] : raw[d] - base;
    if (p < 0 || p >= n)
      return glia_fail(G, GLIA_EARG, "glia.permute: dim %lld out of range for a %d-D tensor %s",
                       (long long)raw[d], n, glia_shape_str(x));
    perm[d] = (int)p;
  }
  TRY(glia_permute(G, x, perm, &r));
  return out1(nouts, outs, r);
}

static glia_status op_expand(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                             glia_value *outs) {
  (void)nargs;
  int64_t size[GLIA_MAX_DIMS];
  int n = ints_of(&args[1], size);
  glia_tensor *r;
  TRY(glia_expand(G, args[0].u.t, n, size, &r));
  return out1(nouts, outs, r);
}

/* expand_as(x, y): x expanded to y's shape */
static glia_status op_expand_as(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                glia_value *outs) {
  (void)nargs;
  glia_tensor *y = args[1].u.t, *r;
  TRY(expand_named(G, "glia.expand_as", args[0].u.t, y->ndim, y->size, &r));
  return out1(nouts, outs, r);
}

/* squeeze(x [, dim]) */
static glia_status op_squeeze(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                              glia_value *outs) {
  (void)nargs;
  glia_tensor *r;
  TRY(squeeze(G, args[0].u.t, arg_present(&args[1]) ? (int)args[1].u.i : -1, &r));
  return out1(nouts, outs, r);
}

static glia_status op_unsqueeze(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                glia_value *outs) {
  (void)nargs;
  glia_tensor *r;
  TRY(glia_unsqueeze(G, args[0].u.t, (int)args[1].u.i, &r));
  return out1(nouts, outs, r);
}

/* flatten(x [, start_dim [, end_dim]]): all dims by default */
static glia_status op_flatten(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                              glia_value *outs) {
  (void)nargs;
  glia_tensor *x = args[0].u.t, *r;
  int start = (int)arg_int(&args[1], 0), end = (int)arg_int(&args[2], x->ndim - 1);
  TRY(flatten(G, x, start, end, &r));
  return out1(nouts, outs, r);
}

static glia_status op_contiguous(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                 glia_value *outs) {
  (void)nargs;
  glia_tensor *r;
  TRY(glia_contiguous(G, args[0].u.t, &r));
  return out1(nouts, outs, r);
}

const glia_op glia_ops_view[] = {
    {"view", "TI", op_view, 1},
    {"reshape", "TI", op_reshape, 1},
    {"narrow", "Tdpi", op_narrow, 1},
    {"select", "Tdp", op_select, 1},
    {"transpose", "Tdd", op_transpose, 1},
    {"t", "T", op_t, 1},
    {"permute", "TI", op_permute, 1},
    {"expand", "TI", op_expand, 1},
    {"expand_as", "TT", op_expand_as, 1},
    {"squeeze", "T|d", op_squeeze, 1},
    {"unsqueeze", "Te", op_unsqueeze, 1},
    {"flatten", "T|dd", op_flatten, 1},
    {"contiguous", "T", op_contiguous, 1},
    {NULL, NULL, NULL, 0},
};
