/*
** vm/iter.c -- NumPy broadcasting and the strided N-operand iterator.
**
** glia_iter_shape walks a shape with every operand broadcast to it (stride 0
** on broadcast dims), coalesces dims that are contiguous for every operand,
** and hands the innermost run to a loop function with byte strides, like a
** NumPy ufunc inner loop. The flat index range is split across the pool;
** each worker resumes mid-row, so splits never depend on the shape.
*/
#include "glia_impl.h"

glia_status glia_broadcast_shape(glia_ctx *G, const char *op, int na, const int64_t *a,
                                 int nb, const int64_t *b, int *nout, int64_t *out) {
  int n = na > nb ? na : nb;
  int64_t r[GLIA_MAX_DIMS];
  for (int i = 0; i < n; i++) {
    int ia = na - n + i, ib = nb - n + i;
    int64_t sa = ia >= 0 ? a[ia] : 1, sb = ib >= 0 ? b[ib] : 1;
    if (sa == sb || sb == 1)
      r[i] = sa;
    else if (sa == 1)
      r[i] = sb;
    else
      return glia_fail(G, GLIA_ESHAPE, "%s: shapes %s and %s do not broadcast", op,
                       glia_sizes_str(na, a), glia_sizes_str(nb, b));
  }
  *nout = n;
  memcpy(out, r, (size_t)n * sizeof *r);
  return GLIA_OK;
}

typedef struct {
  int ndim, nops;
  int64_t size[GLIA_MAX_DIMS];
  int64_t stride[GLIA_ITER_MAX_OPS][GLIA_MAX_DIMS]; /* bytes */
  char *base[GLIA_ITER_MAX_OPS];
  glia_loop_fn fn;
  void *ud;
} iter_plan;

static void iter_range(int64_t begin, int64_t end, void *arg) {
  const iter_plan *P = arg;
  int nd = P->ndim, last = nd - 1;
  int64_t inner = P->size[last];
  int64_t idx[GLIA_MAX_DIMS];
  int64_t rem = begin;
  for (int d = last; d >= 0; d--) {
    idx[d] = rem % P->size[d];
    rem /= P->size[d];
  }
  char *p[GLIA_ITER_MAX_OPS];
  int64_t s[GLIA_ITER_MAX_OPS];
  for (int k = 0; k < P->nops; k++) s[k] = P->stride[k][last];
  int64_t pos = begin;
  while (pos < end) {
    for (int k = 0; k < P->nops; k++) {
      char *q = P->base[k];
      for (int d = 0; d < nd; d++) q += idx[d] * P->stride[k][d];
      p[k] = q;
    }
    int64_t n = inner - idx[last];
    if (n > end - pos) n = end - pos;
    P->fn(n, p, s, P->ud);
    pos += n;
    idx[last] += n;
    for (int d = last; d > 0 && idx[d] >= P->size[d]; d--) {
      idx[d] = 0;
      idx[d - 1]++;
    }
  }
}

void glia_iter_shape(glia_ctx *G, int ndim, const int64_t *size, int nops,
                     glia_tensor *const *op, glia_loop_fn fn, void *ud, int64_t grain) {
  iter_plan P;
  P.nops = nops;
  P.fn = fn;
  P.ud = ud;
  int64_t numel = 1;
  for (int d = 0; d < ndim; d++) numel *= size[d];
  if (numel == 0) return;
  /* Broadcast strides in bytes, dropping size-1 dims. */
  int nd = 0;
  for (int d = 0; d < ndim; d++) {
    if (size[d] == 1) continue;
    P.size[nd] = size[d];
    for (int k = 0; k < nops; k++) {
      const glia_tensor *t = op[k];
      int td = t->ndim - ndim + d;
      int64_t es = (int64_t)glia_dtype_size(t->dtype);
      P.stride[k][nd] = (td >= 0 && t->size[td] != 1) ? t->stride[td] * es : 0;
    }
    nd++;
  }
  for (int k = 0; k < nops; k++) P.base[k] = glia_ptr(op[k]);
  if (nd == 0) {
    P.size[0] = 1;
    for (int k = 0; k < nops; k++) P.stride[k][0] = 0;
    nd = 1;
  }
  /* Coalesce: merge dim d into d+1 when every operand steps evenly. */
  int w = 0;
  for (int d = 1; d < nd; d++) {
    bool ok = true;
    for (int k = 0; k < nops && ok; k++)
      ok = P.stride[k][w] == P.stride[k][d] * P.size[d];
    if (ok) {
      P.size[w] *= P.size[d];
      for (int k = 0; k < nops; k++) P.stride[k][w] = P.stride[k][d];
    } else {
      w++;
      P.size[w] = P.size[d];
      for (int k = 0; k < nops; k++) P.stride[k][w] = P.stride[k][d];
    }
  }
  P.ndim = w + 1;
  glia_parallel_for(G, numel, grain, iter_range, &P);
}

void glia_iter(glia_ctx *G, int nops, glia_tensor *const *op, glia_loop_fn fn, void *ud,
               int64_t grain) {
  glia_iter_shape(G, op[0]->ndim, op[0]->size, nops, op, fn, ud, grain);
}
