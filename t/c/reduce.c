/*
** t/c/reduce.c -- the C entry points of ops/reduce.c as other op families
** and hosts call them: dim masks (0 = every dim), 0-based indices from
** glia_max/glia_min, argmax through a NULL values pointer, and errors that
** name the op and the shape.
*/
#include "glia_impl.h"
#include "ops.h"
#include "tap.h"

#include <string.h>

static const int64_t S23[2] = {2, 3};
static const float V23[6] = {1, 5, 5, -2, 7, 0};

static void test_masks(glia_ctx *G) {
  glia_tensor *x = tap_tensor(G, 2, S23, V23), *r = NULL;
  ok(glia_sum(G, x, 0, 0, &r) == GLIA_OK && glia_tensor_ndim(r) == 0 &&
         tap_values_are(r, (const float[]){16}, 1, 1e-6f),
     "glia_sum with mask 0 sums every dim into a 0-d tensor");
  glia_tensor_release(r);
  ok(glia_sum(G, x, 1u << 0, 1, &r) == GLIA_OK && glia_tensor_ndim(r) == 2 &&
         glia_tensor_size(r, 0) == 1 && tap_values_are(r, (const float[]){-1, 12, 5}, 3, 1e-6f),
     "glia_sum with mask bit 0 and keepdim gives {1,3} column sums");
  glia_tensor_release(r);
  ok(glia_mean(G, x, 1u << 1, 0, &r) == GLIA_OK &&
         tap_values_are(r, (const float[]){11 / 3.f, 5 / 3.f}, 2, 1e-6f),
     "glia_mean with mask bit 1 gives the row means");
  glia_tensor_release(r);
  ok(glia_sum(G, x, 1u << 2, 0, &r) == GLIA_ERANGE &&
         strstr(glia_ctx_errmsg(G), "glia.sum") && strstr(glia_ctx_errmsg(G), "{2,3}"),
     "a mask bit past the last dim is a range error naming the op and shape");
  ok(glia_softmax(G, x, 2, &r) == GLIA_ERANGE && strstr(glia_ctx_errmsg(G), "glia.softmax") &&
         strstr(glia_ctx_errmsg(G), "{2,3}"),
     "glia_softmax with a dim past the last is a range error naming the op and shape");
  glia_tensor_release(x);
}

static void test_indices(glia_ctx *G) {
  glia_tensor *x = tap_tensor(G, 2, S23, V23), *v = NULL, *i = NULL;
  ok(glia_max(G, x, 1, 0, &v, &i) == GLIA_OK &&
         tap_values_are(v, (const float[]){5, 7}, 2, 1e-6f) &&
         tap_indices_are(i, (const int64_t[]){1, 1}, 2),
     "glia_max along dim 1 gives 0-based indices of the first maximum");
  glia_tensor_release(v);
  glia_tensor_release(i);
  v = i = NULL;
  ok(glia_min(G, x, 0, 1, NULL, &i) == GLIA_OK && glia_tensor_ndim(i) == 2 &&
         tap_indices_are(i, (const int64_t[]){1, 0, 1}, 3),
     "glia_min with NULL values is argmin, 0-based, keepdim kept");
  glia_tensor_release(i);
  i = NULL;
  ok(glia_max(G, x, -1, 0, NULL, &i) == GLIA_OK && glia_tensor_ndim(i) == 0 &&
         tap_indices_are(i, (const int64_t[]){4}, 1),
     "glia_max over all elements gives the 0-based row-major position");
  glia_tensor_release(i);
  ok(glia_max(G, x, -1, 0, &v, NULL) == GLIA_OK && tap_values_are(v, (const float[]){7}, 1, 1e-6f),
     "glia_max with NULL indices gives just the value");
  glia_tensor_release(v);
  glia_tensor_release(x);
}

static void test_columns(glia_ctx *G) {
  /* {3000, 3}: the column layout with several chunks, against a naive sum */
  int64_t size[2] = {3000, 3};
  glia_tensor *x = tap_tensor(G, 2, size, NULL), *r = NULL;
  float want[3] = {0, 0, 0};
  for (int64_t k = 0; k < 3000 * 3; k++) want[k % 3] += (float)k;
  ok(glia_sum(G, x, 1u << 0, 0, &r) == GLIA_OK && tap_values_are(r, want, 3, 1e-6f),
     "glia_sum over 3000 rows of a {3000,3} tensor matches the naive column sums");
  glia_tensor_release(r);
  glia_tensor_release(x);
}

int main(void) {
  glia_ctx *G = glia_ctx_new();
  if (!G) return 1;
  test_masks(G);
  test_indices(G);
  test_columns(G);
  glia_ctx_release(G);
  return tap_done();
}
