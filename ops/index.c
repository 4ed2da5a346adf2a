/*
** ops/index.c -- ops that address elements through index tensors
** (index_select, gather, scatter_add, scatter_add_, embedding, one_hot).
** The ops that produce indices (max, min, argmax, argmin, sort, argsort,
** topk) are in ops/sort.c; cumsum is in ops/reduce.c.
**
** Indices: index tensors are i64 or i32 of any layout. From Lua they count
** from 1 (Torch7's convention, also what glia's argmax, sort and topk
** return, so results feed straight back in); the registry lines pass
** base = 1, C callers base 0. Negative indices count from the end. Every
** index is checked, and made 0-based into a private contiguous i64 copy,
** before anything is written: an index out of range fails with GLIA_ERANGE
** naming the op, the index and the size of its dim.
**
** Layout: around the dim an op works along, a tensor is seen as
** [outer, len, inner] (outer: product of the sizes before dim; inner: after).
** The kernels address contiguous operands; a strided input is first copied
** to a contiguous one (the general path), a contiguous one is used as is.
** Threads split rows (o, j) or columns (o, c) so that no two threads write
** one element, and each element sums its terms in index order: results are
** the same for any thread count.
*/
#include "glia_impl.h"
#include "ops.h"
#include "rows.h"

#include <math.h>

/* ================================================== shared helpers */

/* Shapes a and b agree in every dim but `dim` (and have equal ndim). */
static bool same_but(const glia_tensor *a, const glia_tensor *b, int dim) {
  if (a->ndim != b->ndim) return false;
  for (int d = 0; d < a->ndim; d++)
    if (d != dim && a->size[d] != b->size[d]) return false;
  return true;
}

/* Records node `name` on out: inputs in[0..n), `saved` (may be NULL) saved,
** dim in iarg[0], aux in iarg[1]. A no-op when no input needs grad. */
static glia_status record_indexed(glia_ctx *G, const char *name, glia_backward_fn bw, int n,
                                  glia_tensor *const *in, glia_tensor *saved, int dim,
                                  int64_t aux, glia_tensor *out) {
  glia_status st;
  glia_node *node = glia_node_begin(G, name, bw, n, in, &st);
  if (!node) return st;
  node->iarg[0] = dim;
  node->iarg[1] = aux;
  if (saved) st = glia_node_save(G, node, saved);
  return glia_node_end(node, st, out);
}

/* ================================================ index normalization */

static glia_status check_index(glia_ctx *G, const char *name, const glia_tensor *idx) {
  if (idx->dtype != GLIA_DTYPE_I64 && idx->dtype != GLIA_DTYPE_I32)
    return glia_fail(G, GLIA_EDTYPE, "%s: index must be i64 or i32, got %s %s", name,
                     glia_dtype_name(idx->dtype), glia_shape_str(idx));
  return GLIA_OK;
}

/* Sets *out to a new contiguous i64 tensor of idx's shape holding idx's
** indices made 0-based in [0, size): base subtracted, negatives counted from
** the end. `dim` (0-based) only names the dim in the message. Fails with
** GLIA_ERANGE on the first index out of range in row-major order; the
** caller then holds nothing. */
static glia_status normalize_index(glia_ctx *G, const char *name, glia_tensor *idx, int dim,
                                   int64_t size, int base, glia_tensor **out) {
  TRY(check_index(G, name, idx));
  glia_tensor *r;
  TRY(glia_tensor_new(G, GLIA_DTYPE_I64, idx->ndim, idx->size, &r));
  glia_status st = glia_copy_into(G, r, idx);
  int64_t *p = (int64_t *)glia_ptr(r), n = glia_tensor_numel(r);
  for (int64_t i = 0; i < n && st == GLIA_OK; i++) {
    int64_t v = p[i], k = v < 0 ? v + size : v - base;
    if (GLIA_LIKELY(k >= 0 && k < size)) {
      p[i] = k;
      continue;
    }
    st = glia_fail(G, GLIA_ERANGE, "%s: index %lld out of range for dim %d of size %lld%s", name,
                   (long long)v, dim + base, (long long)size,
                   base == 1 && v == 0 ? " (indices are 1-based)" : "");
  }
  return glia_hand_out(st, r, out);
}

/* ==================================================== indexed kernels */

/* The addressing shared by gather and scatter-add. Positions (o, j, c) of
** an [outer, n, inner] index space; idx(o, j, c) (0-based) picks a row of
** the [outer, V, inner] `table`; `flat` is the [outer, n, inner] tensor
** addressed directly. Index strides of 0 reuse one index along that axis:
** index_select and embedding have one index per row j. Both tensors are
** contiguous; es is the element size in bytes. */
typedef struct {
  int64_t outer, n, inner, V;
  const int64_t *idx;
  int64_t is_o, is_j, is_c;
  char *table, *flat;
  int64_t es;
} indexed;

/* table {.., V, ..} and flat {.., n, ..} agree except along dim. ix holds
** one index per j (per_row) or one per element of flat. */
static indexed make_indexed(glia_tensor *table, glia_tensor *flat, int dim, glia_tensor *ix,
                            bool per_row) {
  indexed K;
  split_at(table->ndim, table->size, dim, &K.outer, &K.inner);
  K.n = flat->size[dim];
  K.V = table->size[dim];
  K.idx = (const int64_t *)glia_ptr(ix);
  K.is_o = per_row ? 0 : K.n * K.inner;
  K.is_j = per_row ? 1 : K.inner;
  K.is_c = per_row ? 0 : 1;
  K.table = glia_ptr(table);
  K.flat = glia_ptr(flat);
  K.es = (int64_t)glia_dtype_size(table->dtype);
  return K;
}

/* flat[o, j, c] = table[o, idx(o, j, c), c] for the rows r = o*n + j in
** [begin, end). A row with one index copies one block. */
#define GATHER_ROW(T)                                                       \
  for (int64_t c = 0; c < K->inner; c++)                                    \
    ((T *)dst)[c] = ((const T *)src)[ix[c] * K->inner + c];

static void gather_rows(int64_t begin, int64_t end, void *ud) {
  const indexed *K = ud;
  for (int64_t r = begin; r < end; r++) {
    int64_t o = r / K->n, j = r % K->n;
    const int64_t *ix = K->idx + o * K->is_o + j * K->is_j;
    char *dst = K->flat + r * K->inner * K->es;
    const char *src = K->table + o * K->V * K->inner * K->es;
    if (K->is_c == 0) {
      memcpy(dst, src + ix[0] * K->inner * K->es, (size_t)(K->inner * K->es));
      continue;
    }
    switch (K->es) {
    case 8: GATHER_ROW(uint64_t) break;
    case 4: GATHER_ROW(uint32_t) break;
    default: GATHER_ROW(uint8_t) break;
    }
  }
}

static void run_gather(glia_ctx *G, const indexed *K) {
  glia_parallel_for(G, K->outer * K->n, glia_grain_items(K->inner), gather_rows, (void *)K);
}

/* table[o, idx(o, j, c), c] += flat[o, j, c] (f32) for the columns (o, c)
** in [begin, end), j in order: each table element has one writer, which
** adds its terms in index order. */
static void scatter_add_columns(int64_t begin, int64_t end, void *ud) {
  const indexed *K = ud;
  int64_t inner = K->inner;
  for (int64_t o = begin / inner; o * inner < end; o++) {
    int64_t c0, c1;
    column_span(o, inner, begin, end, &c0, &c1);
    float *tab = (float *)K->table + o * K->V * inner;
    const float *fl = (const float *)K->flat + o * K->n * inner;
    for (int64_t j = 0; j < K->n; j++) {
      const int64_t *ix = K->idx + o * K->is_o + j * K->is_j;
      const float *s = fl + j * inner;
      if (K->is_c == 0) {
        float *d = tab + ix[0] * inner;
        for (int64_t c = c0; c < c1; c++) d[c] += s[c];
      } else {
        for (int64_t c = c0; c < c1; c++) tab[ix[c] * inner + c] += s[c];
      }
    }
  }
}

static void run_scatter_add(glia_ctx *G, const indexed *K) {
  glia_parallel_for(G, K->outer * K->inner, glia_grain_items(K->n), scatter_add_columns, (void *)K);
}

/* Sets *out to zeros of `size` with g scattered (added) into it along dim
** through the 0-based ix: the gradient of every gathering op. g is made
** contiguous first. */
static glia_status scatter_into_zeros(glia_ctx *G, glia_tensor *g, int dim, glia_tensor *ix,
                                      bool per_row, int ndim, const int64_t *size,
                                      glia_tensor **out) {
  glia_tensor *gc, *dx = NULL;
  TRY(glia_tensor_contiguous_as(G, g, GLIA_DTYPE_F32, &gc));
  glia_status st = glia_tensor_zeros(G, GLIA_DTYPE_F32, ndim, size, &dx);
  if (st == GLIA_OK) {
    indexed K = make_indexed(dx, gc, dim, ix, per_row);
    run_scatter_add(G, &K);
    *out = dx;
  }
  glia_tensor_release(gc);
  return st;
}

glia_status glia_scatter_zeros(glia_ctx *G, const char *name, glia_tensor *g, int dim,
                               glia_tensor *idx, int base, const glia_tensor *like,
                               glia_tensor **out) {
  glia_tensor *ix;
  TRY(normalize_index(G, name, idx, dim, like->size[dim], base, &ix));
  glia_status st = scatter_into_zeros(G, g, dim, ix, false, like->ndim, like->size, out);
  glia_tensor_release(ix);
  return st;
}

/* ====================================================== index_select */

static glia_status index_select_bwd(glia_ctx *G, glia_node *n, glia_tensor *g,
                                    glia_tensor **din) {
  glia_tensor *ix, *x = n->input[0];
  TRY(glia_node_saved(G, n, 0, &ix));
  return scatter_into_zeros(G, g, (int)n->iarg[0], ix, true, x->ndim, x->size, &din[0]);
}

glia_status glia_index_select(glia_ctx *G, glia_tensor *x, int dim, glia_tensor *idx, int base,
                              glia_tensor **out) {
  static const char name[] = "glia.index_select";
  TRY(glia_check_dim(G, name, x, dim, 0));
  TRY(check_index(G, name, idx));
  if (idx->ndim != 1)
    return glia_fail(G, GLIA_ESHAPE, "%s: index must be 1-D, got %s", name, glia_shape_str(idx));
  glia_tensor *ix, *xc = NULL, *r = NULL;
  TRY(normalize_index(G, name, idx, dim, x->size[dim], base, &ix));
  int64_t size[GLIA_MAX_DIMS];
  memcpy(size, x->size, sizeof size);
  size[dim] = idx->size[0];
  glia_status st = glia_tensor_contiguous_as(G, x, x->dtype, &xc);
  if (st == GLIA_OK) st = glia_tensor_new(G, x->dtype, x->ndim, size, &r);
  if (st == GLIA_OK) {
    indexed K = make_indexed(xc, r, dim, ix, true);
    run_gather(G, &K);
    st = record_indexed(G, name, index_select_bwd, 1, &x, ix, dim, 0, r);
  }
  glia_tensor_release(ix);
  glia_tensor_release(xc);
  return glia_hand_out(st, r, out);
}

/* ============================================================ gather */

static glia_status gather_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  glia_tensor *ix, *x = n->input[0];
  TRY(glia_node_saved(G, n, 0, &ix));
  return scatter_into_zeros(G, g, (int)n->iarg[0], ix, false, x->ndim, x->size, &din[0]);
}

/* idx has x's ndim and x's sizes except along dim. */
static glia_status check_index_shape(glia_ctx *G, const char *name, const glia_tensor *x,
                                     int dim, const glia_tensor *idx) {
  if (!same_but(x, idx, dim))
    return glia_fail(G, GLIA_ESHAPE,
                     "%s: index %s must have the shape of %s except along dim %lld", name,
                     glia_shape_str(idx), glia_shape_str(x), glia_shown(G, dim));
  return GLIA_OK;
}

/* Gathers along dim through the 0-based ix (already checked); no node. */
static glia_status gather_fwd(glia_ctx *G, glia_tensor *x, int dim, glia_tensor *ix,
                              glia_tensor **out) {
  glia_tensor *xc, *r;
  TRY(glia_tensor_contiguous_as(G, x, x->dtype, &xc));
  glia_status st = glia_tensor_new(G, x->dtype, ix->ndim, ix->size, &r);
  if (st == GLIA_OK) {
    indexed K = make_indexed(xc, r, dim, ix, false);
    run_gather(G, &K);
    *out = r;
  }
  glia_tensor_release(xc);
  return st;
}

glia_status glia_gather(glia_ctx *G, glia_tensor *x, int dim, glia_tensor *idx, int base,
                        glia_tensor **out) {
  static const char name[] = "glia.gather";
  TRY(glia_check_dim(G, name, x, dim, 0));
  TRY(check_index(G, name, idx));
  TRY(check_index_shape(G, name, x, dim, idx));
  glia_tensor *ix, *r = NULL;
  TRY(normalize_index(G, name, idx, dim, x->size[dim], base, &ix));
  glia_status st = gather_fwd(G, x, dim, ix, &r);
  if (st == GLIA_OK) st = record_indexed(G, name, gather_bwd, 1, &x, ix, dim, 0, r);
  glia_tensor_release(ix);
  return glia_hand_out(st, r, out);
}

/* ======================================================= scatter_add */

/* dx = g; dsrc = gather(g, dim, idx). */
static glia_status scatter_add_bwd(glia_ctx *G, glia_node *n, glia_tensor *g,
                                   glia_tensor **din) {
  glia_tensor *ix;
  TRY(glia_node_saved(G, n, 0, &ix));
  if (n->needs[0]) din[0] = glia_tensor_retain(g);
  if (n->needs[1]) TRY(gather_fwd(G, g, (int)n->iarg[0], ix, &din[1]));
  return GLIA_OK;
}

/* Checks a scatter's operands and sets *ix to the 0-based indices. */
static glia_status scatter_prepare(glia_ctx *G, const char *name, glia_tensor *x, int dim,
                                   glia_tensor *idx, glia_tensor *src, int base,
                                   glia_tensor **ix) {
  TRY(glia_check_dim(G, name, x, dim, 0));
  TRY(glia_check_f32(G, name, "x", x));
  TRY(glia_check_f32(G, name, "src", src));
  TRY(check_index(G, name, idx));
  TRY(check_index_shape(G, name, x, dim, idx));
  if (!same_but(idx, src, -1))
    return glia_fail(G, GLIA_ESHAPE, "%s: src %s must have the shape of index %s", name,
                     glia_shape_str(src), glia_shape_str(idx));
  return normalize_index(G, name, idx, dim, x->size[dim], base, ix);
}

/* Adds src into the contiguous f32 tensor t through ix. */
static glia_status scatter_add_into(glia_ctx *G, glia_tensor *t, int dim, glia_tensor *ix,
                                    glia_tensor *src) {
  glia_tensor *sc;
  TRY(glia_tensor_contiguous_as(G, src, GLIA_DTYPE_F32, &sc));
  indexed K = make_indexed(t, sc, dim, ix, false);
  run_scatter_add(G, &K);
  glia_tensor_release(sc);
  return GLIA_OK;
}

glia_status glia_scatter_add(glia_ctx *G, glia_tensor *x, int dim, glia_tensor *idx,
                             glia_tensor *src, int base, glia_tensor **out) {
  static const char name[] = "glia.scatter_add";
  glia_tensor *ix, *r = NULL;
  TRY(scatter_prepare(G, name, x, dim, idx, src, base, &ix));
  glia_status st = glia_tensor_new(G, GLIA_DTYPE_F32, x->ndim, x->size, &r);
  if (st == GLIA_OK) st = glia_copy_into(G, r, x);
  if (st == GLIA_OK) st = scatter_add_into(G, r, dim, ix, src);
  glia_tensor *in[2] = {x, src};
  if (st == GLIA_OK) st = record_indexed(G, name, scatter_add_bwd, 2, in, ix, dim, 0, r);
  glia_tensor_release(ix);
  return glia_hand_out(st, r, out);
}

/* In place on x. Refused when x needs grad (glia_check_inplace) and when
** src does: the gradient to src would be lost. A strided x is worked on
** through a contiguous copy, copied back. */
static glia_status scatter_add_inplace(glia_ctx *G, glia_tensor *x, int dim, glia_tensor *idx,
                                       glia_tensor *src, int base) {
  static const char name[] = "glia.scatter_add_";
  TRY(glia_check_inplace(G, name, x));
  if (G->grad_mode && glia_tensor_needs_grad(src))
    return glia_fail(G, GLIA_EGRAD,
                     "%s: src %s requires grad, which an in-place op would drop (use "
                     "glia.scatter_add)",
                     name, glia_shape_str(src));
  glia_tensor *ix, *work = NULL;
  TRY(scatter_prepare(G, name, x, dim, idx, src, base, &ix));
  glia_status st = glia_tensor_contiguous_as(G, x, GLIA_DTYPE_F32, &work);
  if (st == GLIA_OK) st = scatter_add_into(G, work, dim, ix, src);
  if (st == GLIA_OK && work != x) st = glia_copy_into(G, x, work);
  if (st == GLIA_OK) glia_tensor_bump_version(x);
  glia_tensor_release(work);
  glia_tensor_release(ix);
  return st;
}

/* ========================================================= embedding */

/* A view of the contiguous t as a matrix {numel / cols, cols}. */
static glia_status as_rows(glia_ctx *G, glia_tensor *t, int64_t cols, glia_tensor **out) {
  int64_t size[2] = {cols ? glia_tensor_numel(t) / cols : 0, cols}, stride[2] = {cols, 1};
  return glia_tensor_view_raw(G, t, 2, size, stride, t->offset, out);
}

/* dweight[idx[j]] += g[j] row by row; threads split the D columns, so each
** element of dweight sums its rows in token order. */
static glia_status embedding_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  glia_tensor *ix, *w = n->input[0], *gc, *g2 = NULL;
  TRY(glia_node_saved(G, n, 0, &ix));
  TRY(glia_tensor_contiguous_as(G, g, GLIA_DTYPE_F32, &gc));
  glia_status st = as_rows(G, gc, w->size[1], &g2);
  if (st == GLIA_OK) st = scatter_into_zeros(G, g2, 0, ix, true, 2, w->size, &din[0]);
  glia_tensor_release(g2);
  glia_tensor_release(gc);
  return st;
}

glia_status glia_embedding(glia_ctx *G, glia_tensor *idx, glia_tensor *weight, int base,
                           glia_tensor **out) {
  static const char name[] = "glia.embedding";
  TRY(check_index(G, name, idx));
  if (weight->ndim != 2)
    return glia_fail(G, GLIA_ESHAPE, "%s: weight must be 2-D {V,D}, got %s", name,
                     glia_shape_str(weight));
  if (idx->ndim + 1 > GLIA_MAX_DIMS)
    return glia_fail(G, GLIA_ESHAPE, "%s: index %s has too many dims", name,
                     glia_shape_str(idx));
  glia_tensor *ix, *wc = NULL, *r = NULL, *r2 = NULL;
  TRY(normalize_index(G, name, idx, 0, weight->size[0], base, &ix));
  int64_t size[GLIA_MAX_DIMS];
  memcpy(size, idx->size, sizeof(int64_t) * (size_t)idx->ndim);
  size[idx->ndim] = weight->size[1];
  glia_status st = glia_tensor_contiguous_as(G, weight, weight->dtype, &wc);
  if (st == GLIA_OK) st = glia_tensor_new(G, weight->dtype, idx->ndim + 1, size, &r);
  if (st == GLIA_OK) st = as_rows(G, r, weight->size[1], &r2);
  if (st == GLIA_OK) {
    indexed K = make_indexed(wc, r2, 0, ix, true);
    run_gather(G, &K);
    st = record_indexed(G, name, embedding_bwd, 1, &weight, ix, 0, 0, r);
  }
  glia_tensor_release(r2);
  glia_tensor_release(wc);
  glia_tensor_release(ix);
  return glia_hand_out(st, r, out);
}

/* =========================================================== one_hot */

glia_status glia_one_hot(glia_ctx *G, glia_tensor *idx, int64_t num_classes, int base,
                         glia_tensor **out) {
  static const char name[] = "glia.one_hot";
  if (num_classes < 0)
    return glia_fail(G, GLIA_EARG, "%s: num_classes must be >= 0, got %lld", name,
                     (long long)num_classes);
  if (idx->ndim + 1 > GLIA_MAX_DIMS)
    return glia_fail(G, GLIA_ESHAPE, "%s: index %s has too many dims", name,
                     glia_shape_str(idx));
  glia_tensor *ix, *r;
  TRY(normalize_index(G, name, idx, idx->ndim, num_classes, base, &ix));
  int64_t size[GLIA_MAX_DIMS];
  memcpy(size, idx->size, sizeof(int64_t) * (size_t)idx->ndim);
  size[idx->ndim] = num_classes;
  glia_status st = glia_tensor_zeros(G, GLIA_DTYPE_F32, idx->ndim + 1, size, &r);
  if (st == GLIA_OK) {
    const int64_t *p = (const int64_t *)glia_ptr(ix);
    float *o = (float *)glia_ptr(r);
    for (int64_t i = 0, n = glia_tensor_numel(ix); i < n; i++) o[i * num_classes + p[i]] = 1.0f;
    *out = r;
  }
  glia_tensor_release(ix);
  return st;
}

/* ========================================================== registry */

/* Index tensors count from the call's base (vm/registry.c): 0 from C, 1
** from Lua. */

/* index_select(x, dim, idx) */
static glia_status op_index_select(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                   glia_value *outs) {
  (void)nargs;
  glia_tensor *r;
  TRY(glia_index_select(G, args[0].u.t, (int)args[1].u.i, args[2].u.t, glia_index_base(G),
                        &r));
  return out1(nouts, outs, r);
}

/* gather(x, dim, idx) */
static glia_status op_gather(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                             glia_value *outs) {
  (void)nargs;
  glia_tensor *r;
  TRY(glia_gather(G, args[0].u.t, (int)args[1].u.i, args[2].u.t, glia_index_base(G), &r));
  return out1(nouts, outs, r);
}

/* scatter_add(x, dim, idx, src) */
static glia_status op_scatter_add(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                  glia_value *outs) {
  (void)nargs;
  glia_tensor *r;
  TRY(glia_scatter_add(G, args[0].u.t, (int)args[1].u.i, args[2].u.t, args[3].u.t,
                       glia_index_base(G), &r));
  return out1(nouts, outs, r);
}

/* scatter_add_(x, dim, idx, src) returns x */
static glia_status op_scatter_add_(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                   glia_value *outs) {
  (void)nargs;
  glia_tensor *x = args[0].u.t;
  TRY(scatter_add_inplace(G, x, (int)args[1].u.i, args[2].u.t, args[3].u.t,
                          glia_index_base(G)));
  return out1(nouts, outs, glia_tensor_retain(x));
}

/* embedding(idx, weight) */
static glia_status op_embedding(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                glia_value *outs) {
  (void)nargs;
  glia_tensor *r;
  TRY(glia_embedding(G, args[0].u.t, args[1].u.t, glia_index_base(G), &r));
  return out1(nouts, outs, r);
}

/* one_hot(idx, num_classes) */
static glia_status op_one_hot(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                              glia_value *outs) {
  (void)nargs;
  glia_tensor *r;
  TRY(glia_one_hot(G, args[0].u.t, args[1].u.i, glia_index_base(G), &r));
  return out1(nouts, outs, r);
}

const glia_op glia_ops_index[] = {
    {"index_select", "TdT", op_index_select, 1},
    {"gather", "TdT", op_gather, 1},
    {"scatter_add", "TdTT", op_scatter_add, 1},
    {"scatter_add_", "TdTT", op_scatter_add_, 1},
    {"embedding", "TT", op_embedding, 0},
    {"one_hot", "Ti", op_one_hot, 1},
    {NULL, NULL, NULL, 0},
};
