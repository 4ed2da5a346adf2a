/*
** t/c/tap.h -- a tiny TAP producer for the C tests of the VM core.
**   ok(cond, "what is proven"); ... ; return tap_done();
** Included after glia.h, it also offers small tensor helpers (tap_tensor,
** tap_at, tap_values_are, tap_indices_are; tap_op after glia_impl.h). Everything is static inline, so a
** test uses what it needs.
*/
#ifndef GLIA_TAP_H
#define GLIA_TAP_H
#include <math.h>
#include <stdarg.h>
#include <stdio.h>

static int tap_count, tap_failed;

static inline int ok(int cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static inline int ok(int cond, const char *fmt, ...) {
  va_list ap;
  printf("%s %d - ", cond ? "ok" : "not ok", ++tap_count);
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
  fflush(stdout); /* a crash later must not swallow the lines so far */
  if (!cond) tap_failed++;
  return cond;
}

static inline void diag(const char *fmt, ...) {
  va_list ap;
  printf("# ");
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
}

static inline int tap_done(void) {
  printf("1..%d\n", tap_count);
  return tap_failed ? 1 : 0;
}

#ifdef GLIA_H
/* ------------------------------------------------------ tensor helpers */

/* A new contiguous f32 tensor filled from vals, or with 0, 1, 2, ... when
** vals is NULL. NULL on failure. The caller owns the reference. */
static inline glia_tensor *tap_tensor(glia_ctx *G, int ndim, const int64_t *size,
                                      const float *vals) {
  glia_tensor *t = NULL;
  if (glia_tensor_new(G, GLIA_DTYPE_F32, ndim, size, &t) != GLIA_OK) return NULL;
  float *p = glia_tensor_data(t);
  for (int64_t i = 0; i < glia_tensor_numel(t); i++) p[i] = vals ? vals[i] : (float)i;
  return t;
}

#ifdef GLIA_IMPL_H
/* Calls registry op `name` on one or two tensors (b may be NULL); the
** registry fills the rest of its signature as absent. On success *out owns
** the first result and any others are released. */
static inline glia_status tap_op(glia_ctx *G, const char *name, glia_tensor *a,
                                 glia_tensor *b, glia_tensor **out) {
  glia_value args[2] = {{.kind = GLIA_VAL_TENSOR, .u.t = a}, {.kind = GLIA_VAL_TENSOR, .u.t = b}};
  glia_value outs[GLIA_MAX_OUTS];
  int nouts = 0;
  glia_status st = glia_op_call(G, glia_op_find(name), b ? 2 : 1, args, &nouts, outs);
  if (st != GLIA_OK) return st;
  for (int k = 1; k < nouts; k++)
    if (outs[k].kind == GLIA_VAL_TENSOR) glia_tensor_release(outs[k].u.t);
  *out = outs[0].u.t;
  return GLIA_OK;
}
#endif

/* Element i (row-major over the shape) of an f32 tensor of any strides. */
static inline float tap_at(glia_tensor *t, int64_t i) {
  const float *p = glia_tensor_data(t);
  int64_t off = 0;
  for (int d = glia_tensor_ndim(t) - 1; d >= 0; d--) {
    int64_t n = glia_tensor_size(t, d);
    off += (i % n) * glia_tensor_stride(t, d);
    i /= n;
  }
  return p[off];
}

/* Whether the f32 tensor t (NULL: no) holds the n values want, each within
** tol; the first element off is reported as a diagnostic. */
static inline int tap_values_are(glia_tensor *t, const float *want, int64_t n, float tol) {
  if (!t || glia_tensor_numel(t) != n) return 0;
  for (int64_t i = 0; i < n; i++)
    if (fabsf(tap_at(t, i) - want[i]) > tol) {
      diag("element %lld: got %g, want %g", (long long)i, tap_at(t, i), want[i]);
      return 0;
    }
  return 1;
}

/* Whether the tensor t (NULL: no) is i64 and holds the n indices want; the
** first index off is reported as a diagnostic. */
static inline int tap_indices_are(glia_tensor *t, const int64_t *want, int64_t n) {
  if (!t || glia_tensor_dtype(t) != GLIA_DTYPE_I64 || glia_tensor_numel(t) != n) return 0;
  const int64_t *p = glia_tensor_data(t);
  for (int64_t i = 0; i < n; i++)
    if (p[i] != want[i]) {
      diag("index %lld: got %lld, want %lld", (long long)i, (long long)p[i], (long long)want[i]);
      return 0;
    }
  return 1;
}
#endif
#endif
