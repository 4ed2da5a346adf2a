/*
** t/c/vm_core.c -- the VM core below the ops: statuses and dtypes, tensor
** references, views sharing storage, broadcast shapes, the strided
** iterator, the thread pool and the Philox RNG stream.
*/
#include "glia_impl.h"
#include "tap.h"

#include <stdatomic.h>
#include <stdlib.h>

/* ============================================ statuses and dtypes */

static void test_statuses(void) {
  int distinct = 1, nonempty = 1;
  for (int a = 0; a < GLIA_STATUS_COUNT; a++) {
    nonempty &= glia_status_str((glia_status)a)[0] != 0;
    for (int b = 0; b < a; b++)
      distinct &= strcmp(glia_status_str((glia_status)a), glia_status_str((glia_status)b)) != 0;
  }
  ok(nonempty && distinct, "every status has its own non-empty text");
  ok(strcmp(glia_status_str(GLIA_OK), "ok") == 0 &&
         strcmp(glia_status_str(GLIA_ENOMEM), "out of memory") == 0 &&
         strcmp(glia_status_str(GLIA_ESHAPE), "shape error") == 0,
     "glia_status_str gives the table's text (ok, out of memory, shape error)");
  ok(strcmp(glia_status_str(GLIA_STATUS_COUNT), "unknown status") == 0 &&
         strcmp(glia_status_str((glia_status)-1), "unknown status") == 0,
     "glia_status_str of a value outside the table is \"unknown status\", never NULL");

  int round_trip = 1;
  for (int d = 0; d < GLIA_DTYPE_COUNT; d++) {
    glia_dtype back;
    round_trip &= glia_dtype_parse(glia_dtype_name((glia_dtype)d), &back) == GLIA_OK &&
                  back == (glia_dtype)d;
  }
  glia_dtype dt = GLIA_DTYPE_I64;
  ok(round_trip && glia_dtype_parse("f16", &dt) == GLIA_EDTYPE && dt == GLIA_DTYPE_I64,
     "dtype names parse back to their dtype; an unknown name is GLIA_EDTYPE, out untouched");
  ok(glia_dtype_size(GLIA_DTYPE_F32) == 4 && glia_dtype_size(GLIA_DTYPE_I64) == 8 &&
         glia_dtype_size(GLIA_DTYPE_BOOL) == 1,
     "dtype sizes are 4 for f32, 8 for i64, 1 for bool");
}

/* ============================================ tensors and references */

static void test_tensors(glia_ctx *G) {
  const int64_t size[3] = {2, 3, 4};
  glia_tensor *t = NULL;
  glia_status st = glia_tensor_new(G, GLIA_DTYPE_F32, 3, size, &t);
  ok(st == GLIA_OK && glia_tensor_ndim(t) == 3 && glia_tensor_size(t, 1) == 3 &&
         glia_tensor_numel(t) == 24,
     "glia_tensor_new makes a tensor with the requested shape");
  ok(glia_tensor_stride(t, 0) == 12 && glia_tensor_stride(t, 1) == 4 &&
         glia_tensor_stride(t, 2) == 1 && glia_tensor_is_contiguous(t),
     "a new tensor has row-major contiguous strides");
  ok(glia_tensor_size(t, 3) == -1 && glia_tensor_size(t, -1) == -1,
     "glia_tensor_size of a dim out of range is -1");
  ok(glia_tensor_retain(t) == t && t->refcount == 2, "glia_tensor_retain adds a reference");
  glia_tensor_release(t);
  ok(t->refcount == 1 && glia_tensor_data(t) != NULL,
     "releasing one of two references keeps the tensor alive");
  glia_tensor_release(t);
  glia_tensor_release(NULL);
  ok(glia_ctx_live_bytes(G) == 0, "releasing the last reference frees the storage");

  glia_tensor *u = NULL;
  const int64_t neg[2] = {2, -3};
  st = glia_tensor_new(G, GLIA_DTYPE_F32, 2, neg, &u);
  ok(st == GLIA_ESHAPE && u == NULL && strstr(glia_ctx_errmsg(G), "negative size -3"),
     "a negative size is GLIA_ESHAPE with a message naming it; out untouched");
  const int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  st = glia_tensor_new(G, GLIA_DTYPE_F32, 9, nine, &u);
  ok(st == GLIA_ESHAPE && strstr(glia_ctx_errmsg(G), "at most 8 dims"),
     "more than GLIA_MAX_DIMS dims is GLIA_ESHAPE");
  const int64_t huge[2] = {(int64_t)1 << 40, (int64_t)1 << 40};
  st = glia_tensor_new(G, GLIA_DTYPE_F32, 2, huge, &u);
  ok(st == GLIA_ESHAPE && strstr(glia_ctx_errmsg(G), "too large"),
     "a shape whose element count overflows is refused, not allocated");
  const int64_t empty[2] = {0, 5};
  st = glia_tensor_new(G, GLIA_DTYPE_F32, 2, empty, &u);
  ok(st == GLIA_OK && glia_tensor_numel(u) == 0, "a 0-size tensor is a valid tensor");
  glia_tensor_release(u);
  st = glia_tensor_new(G, GLIA_DTYPE_F32, 0, size, &u);
  ok(st == GLIA_OK && glia_tensor_numel(u) == 1, "a 0-dim tensor holds one element");
  glia_tensor_release(u);
}

static void test_views(glia_ctx *G) {
  const int64_t size[2] = {3, 4};
  glia_tensor *t = tap_tensor(G, 2, size, NULL);
  glia_tensor *v = NULL;
  const int64_t vsize[2] = {4, 3}, vstride[2] = {1, 4};
  glia_status st = glia_tensor_view_raw(G, t, 2, vsize, vstride, 0, &v);
  ok(st == GLIA_OK && v->storage == t->storage && t->storage->refcount == 2,
     "a view shares its source's storage and holds a reference to it");
  ok(!glia_tensor_is_contiguous(v) && tap_at(v, 1) == tap_at(t, 4),
     "a transposed view reads element (i, j) of the source at (j, i)");
  ((float *)glia_tensor_data(v))[1 * 1 + 2 * 4] = 99; /* v(1, 2) = t(2, 1) */
  ok(tap_at(t, 2 * 4 + 1) == 99, "a write through a view is seen by its source");

  glia_tensor *row = NULL;
  const int64_t rsize[1] = {4}, rstride[1] = {1};
  glia_tensor_view_raw(G, t, 1, rsize, rstride, 8, &row);
  glia_tensor_release(t);
  ok(tap_at(row, 1) == 99 && row->storage->refcount == 2,
     "views keep the storage alive after the source tensor is released");
  glia_tensor *d = NULL;
  glia_tensor_detach(G, row, &d);
  ok(d->storage == row->storage && d->offset == 8 && d->grad_fn == NULL,
     "glia_tensor_detach is the same view with no history");
  glia_tensor_release(d);
  glia_tensor_release(row);
  glia_tensor_release(v);
  ok(glia_ctx_live_bytes(G) == 0, "the storage goes with its last view");
}

/* ======================================================== broadcasting */

static int shape_is(int n, const int64_t *s, int want_n, const int64_t *want) {
  return n == want_n && memcmp(s, want, (size_t)n * sizeof *s) == 0;
}

static void test_broadcast(glia_ctx *G) {
  int n;
  int64_t out[GLIA_MAX_DIMS];
  const int64_t a[2] = {3, 1}, b[2] = {1, 4}, ab[2] = {3, 4};
  ok(glia_broadcast_shape(G, "t", 2, a, 2, b, &n, out) == GLIA_OK && shape_is(n, out, 2, ab),
     "{3,1} and {1,4} broadcast to {3,4}");
  const int64_t c[3] = {2, 1, 5}, d[1] = {5}, cd[3] = {2, 1, 5};
  ok(glia_broadcast_shape(G, "t", 3, c, 1, d, &n, out) == GLIA_OK && shape_is(n, out, 3, cd),
     "a shorter shape is aligned on the right: {2,1,5} and {5} give {2,1,5}");
  const int64_t z[1] = {0}, one[1] = {1};
  ok(glia_broadcast_shape(G, "t", 1, z, 1, one, &n, out) == GLIA_OK && shape_is(n, out, 1, z),
     "a 0 size broadcasts against 1 and stays 0");
  ok(glia_broadcast_shape(G, "t", 0, NULL, 2, ab, &n, out) == GLIA_OK && shape_is(n, out, 2, ab),
     "a 0-dim shape broadcasts to anything");
  const int64_t e[2] = {2, 3}, f[1] = {4};
  n = -7;
  glia_status st = glia_broadcast_shape(G, "glia.test", 2, e, 1, f, &n, out);
  ok(st == GLIA_ESHAPE && n == -7 &&
         strcmp(glia_ctx_errmsg(G), "glia.test: shapes {2,3} and {4} do not broadcast") == 0,
     "{2,3} and {4} fail with GLIA_ESHAPE naming the op and both shapes");
}

/* ============================================================ iterator */

/* out = 10 * a + b, with byte strides. */
static void axpb_loop(int64_t n, char **p, const int64_t *s, void *ud) {
  atomic_int *calls = ud;
  atomic_fetch_add(calls, 1);
  for (int64_t i = 0; i < n; i++)
    *(float *)(p[0] + i * s[0]) =
        10 * *(const float *)(p[1] + i * s[1]) + *(const float *)(p[2] + i * s[2]);
}

/* glia_iter over a contiguous output, a transposed operand and one
** broadcast along rows, against a naive loop; grain forces a split. */
static int iter_matches_naive(glia_ctx *G, int64_t rows, int64_t cols, int64_t grain,
                              int *calls_out) {
  const int64_t osize[2] = {rows, cols}, tsize[2] = {cols, rows}, bsize[1] = {cols};
  glia_tensor *out = tap_tensor(G, 2, osize, NULL), *base = tap_tensor(G, 2, tsize, NULL);
  glia_tensor *b = tap_tensor(G, 1, bsize, NULL), *a = NULL;
  const int64_t astride[2] = {1, rows};
  glia_tensor_view_raw(G, base, 2, osize, astride, 0, &a);
  atomic_int calls = 0;
  glia_tensor *ops[3] = {out, a, b};
  glia_iter(G, 3, ops, axpb_loop, &calls, grain);
  int good = 1;
  const float *pa = glia_tensor_data(base), *pb = glia_tensor_data(b);
  const float *po = glia_tensor_data(out);
  for (int64_t i = 0; i < rows; i++)
    for (int64_t j = 0; j < cols; j++)
      good &= po[i * cols + j] == 10 * pa[j * rows + i] + pb[j];
  glia_tensor_release(a);
  glia_tensor_release(b);
  glia_tensor_release(base);
  glia_tensor_release(out);
  if (calls_out) *calls_out = calls;
  return good;
}

static void test_iter(glia_ctx *G) {
  glia_ctx_set_num_threads(G, 1);
  ok(iter_matches_naive(G, 7, 9, 1 << 20, NULL),
     "glia_iter over transposed and broadcast operands matches a naive loop (1 thread)");
  glia_ctx_set_num_threads(G, 2);
  int calls = 0;
  int good = iter_matches_naive(G, 37, 53, 5, &calls);
  ok(good && calls > 2,
     "split over 2 threads mid-row, glia_iter still matches the naive loop (%d inner runs)",
     calls);
  good = iter_matches_naive(G, 0, 5, 1, &calls);
  ok(good && calls == 0,
     "glia_iter over a 0-size shape never calls the loop");

  /* Dims that are contiguous for every operand coalesce into one run. */
  const int64_t size[3] = {4, 5, 6};
  glia_tensor *x = tap_tensor(G, 3, size, NULL), *y = tap_tensor(G, 3, size, NULL);
  glia_tensor *z = tap_tensor(G, 3, size, NULL);
  atomic_int runs = 0;
  glia_tensor *ops[3] = {z, x, y};
  glia_iter(G, 3, ops, axpb_loop, &runs, INT64_MAX);
  ok(runs == 1, "contiguous operands coalesce into a single inner run");
  glia_tensor_release(x);
  glia_tensor_release(y);
  glia_tensor_release(z);
}

/* ================================================================ pool */

typedef struct {
  int64_t n;
  unsigned char *hits;
  atomic_int chunks;
} cover_arg;

static void cover(int64_t begin, int64_t end, void *ud) {
  cover_arg *c = ud;
  atomic_fetch_add(&c->chunks, 1);
  for (int64_t i = begin; i < end; i++) c->hits[i]++;
}

/* Runs parallel_for over [0, n) and checks each index ran exactly once. */
static int covers_once(glia_ctx *G, int64_t n, int64_t grain, int *chunks) {
  cover_arg c = {n, calloc((size_t)n + 1, 1), 0};
  glia_parallel_for(G, n, grain, cover, &c);
  int good = 1;
  for (int64_t i = 0; i < n; i++) good &= c.hits[i] == 1;
  free(c.hits);
  *chunks = c.chunks;
  return good;
}

static void test_pool(glia_ctx *G) {
  int chunks;
  glia_ctx_set_num_threads(G, 1);
  ok(covers_once(G, 100003, 16, &chunks) && chunks == 1,
     "with 1 thread, parallel_for covers the range exactly once, inline");
  ok(glia_ctx_set_num_threads(G, 2) == GLIA_OK && glia_ctx_num_threads(G) == 2,
     "glia_ctx_set_num_threads(2) takes effect");
  ok(covers_once(G, 100003, 16, &chunks) && chunks == 2,
     "with 2 threads, parallel_for covers the range exactly once in 2 chunks");
  ok(covers_once(G, 20, 16, &chunks) && chunks == 1,
     "a range below twice the grain runs inline as one chunk");
  ok(covers_once(G, 0, 1, &chunks) && chunks == 0, "an empty range runs nothing");
  int all = 1;
  for (int k = 0; k < 50; k++) all &= covers_once(G, 1000 + k, 1, &chunks);
  ok(all, "50 consecutive jobs on the pool each cover their range exactly once");
  glia_status st = glia_ctx_set_num_threads(G, 0);
  ok(st == GLIA_EARG && strstr(glia_ctx_errmsg(G), "glia.set_num_threads") &&
         glia_ctx_num_threads(G) == 2,
     "0 threads is refused with GLIA_EARG and the pool is unchanged");
}

/* ================================================================= rng */

static glia_tensor *randn(glia_ctx *G, int64_t n) {
  glia_value args[2] = {{.kind = GLIA_VAL_INTS}, {.kind = GLIA_VAL_NONE}};
  args[0].u.ints.n = 1;
  args[0].u.ints.v[0] = n;
  glia_value outs[GLIA_MAX_OUTS];
  int nouts = 0;
  if (glia_op_call(G, glia_op_find("randn"), 2, args, &nouts, outs) != GLIA_OK) return NULL;
  return outs[0].u.t;
}

static int same_values(glia_tensor *a, glia_tensor *b) {
  return a && b && glia_tensor_numel(a) == glia_tensor_numel(b) &&
         memcmp(glia_tensor_data(a), glia_tensor_data(b),
                (size_t)glia_tensor_numel(a) * sizeof(float)) == 0;
}

static void test_rng(glia_ctx *G) {
  /* Random123's known answer for Philox4x32-10, key 0 and counter 0. */
  uint32_t w[4];
  glia_philox(0, 0, w);
  ok(w[0] == 0x6627e8d5u && w[1] == 0xe169c58du && w[2] == 0xbc57ac4cu && w[3] == 0x9b00dbd8u,
     "glia_philox(0, 0) gives the Philox4x32-10 known-answer words");
  uint32_t w2[4], w3[4];
  glia_philox(12345, 678, w2);
  glia_philox(12345, 678, w3);
  int same = memcmp(w2, w3, sizeof w2) == 0;
  glia_philox(12345, 679, w3);
  ok(same && memcmp(w2, w3, sizeof w2) != 0,
     "glia_philox is a pure function of (seed, counter): equal inputs agree, counters differ");

  glia_ctx_seed(G, 42);
  uint64_t first = glia_rng_reserve(G, 10), second = glia_rng_reserve(G, 5), seed, offset;
  glia_ctx_rng_state(G, &seed, &offset);
  ok(first == 0 && second == 10 && seed == 42 && offset == 15,
     "the context stream hands out consecutive counter ranges from offset 0 after seeding");

  glia_ctx_set_num_threads(G, 1);
  glia_ctx_seed(G, 7);
  glia_tensor *a = randn(G, 100000);
  glia_ctx_rng_state(G, &seed, &offset);
  glia_tensor *b = randn(G, 100000);
  glia_ctx_set_num_threads(G, 2);
  glia_ctx_seed(G, 7);
  glia_tensor *c = randn(G, 100000);
  ok(same_values(a, c), "randn with the same seed gives identical values on 1 and 2 threads");
  ok(a && b && !same_values(a, b), "consecutive randn draws differ");
  glia_ctx_set_rng_state(G, seed, offset);
  glia_tensor *d = randn(G, 100000);
  ok(same_values(b, d), "restoring the (seed, offset) state reproduces the next draw exactly");
  glia_tensor_release(a);
  glia_tensor_release(b);
  glia_tensor_release(c);
  glia_tensor_release(d);
}

int main(void) {
  glia_ctx *G = glia_ctx_new();
  ok(G != NULL && glia_ctx_errmsg(G)[0] == 0 && glia_ctx_grad_mode(G) == 1,
     "a new context has no message and grad mode on");
  test_statuses();
  test_tensors(G);
  test_views(G);
  test_broadcast(G);
  test_iter(G);
  test_pool(G);
  test_rng(G);
  glia_ctx_release(G);
  glia_ctx_release(NULL);
  return tap_done();
}
