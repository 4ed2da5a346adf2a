/*
** t/c/alloc.c -- the context's allocator: live/cached/peak accounting, the
** block cache, and allocation failure. The failure tests make the n-th
** allocation fail for n = 1, 2, ... until the call succeeds; every failing
** run must return GLIA_ENOMEM with a message and hold no memory afterwards
** (live bytes back to where they were; the sanitizer build checks leaks).
*/
#include "glia_impl.h"
#include "tap.h"

#include <stdlib.h>

/* ========================================================= accounting */

static void test_accounting(void) {
  glia_ctx *G = glia_ctx_new();
  ok(glia_ctx_live_bytes(G) == 0 && glia_ctx_cached_bytes(G) == 0 && glia_ctx_peak_bytes(G) == 0,
     "a new context holds no bytes");
  const int64_t size[1] = {1000};
  glia_tensor *t = NULL;
  glia_tensor_new(G, GLIA_DTYPE_F32, 1, size, &t);
  size_t live = glia_ctx_live_bytes(G);
  void *first = glia_tensor_data(t);
  ok(live >= 4000 && live < 4000 + 1024 && glia_ctx_peak_bytes(G) == live,
     "a {1000} f32 tensor counts its rounded-up bytes as live (%zu) and as the peak", live);
  glia_tensor_release(t);
  ok(glia_ctx_live_bytes(G) == 0 && glia_ctx_cached_bytes(G) == live,
     "released, its block moves from live to cached");
  glia_tensor_new(G, GLIA_DTYPE_F32, 1, size, &t);
  ok(glia_tensor_data(t) == first && glia_ctx_cached_bytes(G) == 0,
     "a tensor of the same size reuses the cached block");
  glia_tensor_release(t);

  for (int i = 0; i < 1000; i++) {
    glia_tensor_new(G, GLIA_DTYPE_F32, 1, size, &t);
    glia_tensor_release(t);
  }
  ok(glia_ctx_live_bytes(G) == 0 && glia_ctx_cached_bytes(G) == live &&
         glia_ctx_peak_bytes(G) == live,
     "1000 same-shaped temporaries cycle through one cached block");

  const int64_t s2[1] = {1001};
  glia_tensor *a = NULL, *b = NULL;
  glia_tensor_new(G, GLIA_DTYPE_F32, 1, size, &a);
  glia_tensor_new(G, GLIA_DTYPE_F32, 1, s2, &b);
  ok(glia_ctx_peak_bytes(G) >= glia_ctx_live_bytes(G) && glia_ctx_live_bytes(G) >= 8004,
     "the peak follows the high-water mark of live bytes");
  glia_tensor_release(a);
  glia_tensor_release(b);
  glia_ctx_trim(G);
  ok(glia_ctx_live_bytes(G) == 0 && glia_ctx_cached_bytes(G) == 0,
     "glia_ctx_trim returns every cached block");

  float host[4] = {1, 2, 3, 4};
  const int64_t s4[1] = {4};
  glia_tensor_wrap(G, host, GLIA_DTYPE_F32, 1, s4, NULL, NULL, NULL, &t);
  ok(glia_ctx_live_bytes(G) == 0, "wrapped host memory is not counted as the context's bytes");
  glia_tensor_release(t);
  glia_ctx_release(G);
}

/* ======================================================= large blocks */

/* Fills n floats with a pattern of seed; true when they still hold it. */
static void fill(float *p, int64_t n, float seed) {
  for (int64_t i = 0; i < n; i++) p[i] = seed + (float)(i % 1000);
}
static bool holds(const float *p, int64_t n, float seed) {
  for (int64_t i = 0; i < n; i++)
    if (p[i] != seed + (float)(i % 1000)) return false;
  return true;
}

/* Blocks of 64 KiB and more (vm/ctx.c: huge-page arena chunks, or a mapping
** of their own past 16 MiB) behave as the small ones do: distinct, writable,
** counted, cached and reused, and handed back on trim. */
static void test_large(void) {
  glia_ctx *G = glia_ctx_new();
  const int64_t sizes[4] = {1 << 14, 196608, 1 << 18, 5 << 20}; /* 64 KiB .. 20 MiB */
  glia_tensor *t[4][3];
  bool ok_all = true;
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 3; j++) {
      ok_all &= glia_tensor_new(G, GLIA_DTYPE_F32, 1, &sizes[i], &t[i][j]) == GLIA_OK;
      fill(glia_tensor_data(t[i][j]), sizes[i], (float)(10 * i + j));
    }
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 3; j++) ok_all &= holds(glia_tensor_data(t[i][j]), sizes[i], 10 * i + j);
  ok(ok_all, "twelve large blocks of 64 KiB to 20 MiB are distinct and keep what was written");
  size_t live = glia_ctx_live_bytes(G);
  ok(live >= 3 * 4 * (size_t)(sizes[0] + sizes[1] + sizes[2] + sizes[3]) &&
         glia_ctx_peak_bytes(G) == live,
     "large blocks count as live bytes (%zu) and set the peak", live);
  void *last = glia_tensor_data(t[2][2]); /* freed last: first out of its class */
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 3; j++) glia_tensor_release(t[i][j]);
  ok(glia_ctx_live_bytes(G) == 0 && glia_ctx_cached_bytes(G) == live,
     "released large blocks are cached");
  glia_tensor *u = NULL;
  glia_tensor_new(G, GLIA_DTYPE_F32, 1, &sizes[2], &u);
  ok(glia_tensor_data(u) == last, "a large tensor of a cached size reuses a cached block");
  glia_tensor_release(u);
  glia_ctx_trim(G);
  ok(glia_ctx_cached_bytes(G) == 0 && glia_ctx_live_bytes(G) == 0,
     "trim hands every cached large block back");
  ok_all = true;
  for (int i = 0; i < 4; i++) { /* blocks whose pages were handed back serve again */
    ok_all &= glia_tensor_new(G, GLIA_DTYPE_F32, 1, &sizes[i], &t[i][0]) == GLIA_OK;
    fill(glia_tensor_data(t[i][0]), sizes[i], (float)i);
  }
  for (int i = 0; i < 4; i++) {
    ok_all &= holds(glia_tensor_data(t[i][0]), sizes[i], (float)i);
    glia_tensor_release(t[i][0]);
  }
  ok(ok_all, "after a trim, large blocks of the same sizes are writable again");
  glia_ctx_release(G);

  /* With no room in the cache, a freed large block goes back at once. */
  setenv("GLIA_CACHE_MB", "0", 1);
  G = glia_ctx_new();
  unsetenv("GLIA_CACHE_MB");
  ok_all = true;
  for (int r = 0; r < 50; r++) {
    ok_all &= glia_tensor_new(G, GLIA_DTYPE_F32, 1, &sizes[1], &u) == GLIA_OK;
    fill(glia_tensor_data(u), sizes[1], (float)r);
    ok_all &= holds(glia_tensor_data(u), sizes[1], (float)r);
    glia_tensor_release(u);
  }
  ok(ok_all && glia_ctx_cached_bytes(G) == 0 && glia_ctx_live_bytes(G) == 0,
     "with a cache limit of 0, fifty large temporaries in a row hand their pages back and "
     "come back writable");
  ok_all = true;
  for (int r = 0; r < 3; r++) { /* 20 MiB: a mapping of its own, unmapped on free */
    ok_all &= glia_tensor_new(G, GLIA_DTYPE_F32, 1, &sizes[3], &u) == GLIA_OK;
    fill(glia_tensor_data(u), sizes[3], (float)r);
    ok_all &= holds(glia_tensor_data(u), sizes[3], (float)r);
    glia_tensor_release(u);
  }
  ok(ok_all && glia_ctx_live_bytes(G) == 0, "so do blocks too big for the arena's chunks");

  /* More than any machine here has: refused with an error, never mapped.
  ** (ASan aborts on such requests by design: not under SAN=1.) */
#ifndef __SANITIZE_ADDRESS__
  const int64_t huge[2] = {(int64_t)1 << 42, (int64_t)1 << 45}; /* 16 TiB, 128 TiB */
  for (int i = 0; i < 2; i++) {
    u = NULL;
    glia_status st = glia_tensor_new(G, GLIA_DTYPE_F32, 1, &huge[i], &u);
    ok(st == GLIA_ENOMEM && !u && glia_ctx_live_bytes(G) == 0,
       "a tensor of %lld floats is refused with GLIA_ENOMEM", (long long)huge[i]);
  }
#endif
  glia_ctx_release(G);
}

/* ================================================= failure injection */

/* A call under test: runs on fresh inputs made by the harness and returns
** its status; releases whatever it produced. */
typedef glia_status (*fault_fn)(glia_ctx *G, glia_tensor *a, glia_tensor *b);

/* Fails the n-th allocation for n = 1, 2, ... until fn succeeds. Returns
** the number of failing runs, or -1 when one of them misbehaved. */
static int fault_runs(glia_ctx *G, const char *what, fault_fn fn, int requires_grad) {
  const int64_t sa[2] = {8, 16}, sb[1] = {16};
  glia_tensor *a = tap_tensor(G, 2, sa, NULL), *b = tap_tensor(G, 1, sb, NULL);
  if (requires_grad) glia_tensor_set_requires_grad(G, a, 1);
  size_t base = glia_ctx_live_bytes(G);
  int n, bad = 0;
  for (n = 1; n < 1000; n++) {
    glia_ctx_trim(G); /* nothing recycled: every run reaches every allocation */
    glia_ctx_fail_alloc_after(G, n);
    glia_status st = fn(G, a, b);
    glia_ctx_fail_alloc_after(G, 0);
    glia_tensor_zero_grad(a);
    if (st == GLIA_OK) break;
    if (st != GLIA_ENOMEM || !strstr(glia_ctx_errmsg(G), "out of memory")) {
      diag("%s, run %d: status %s, message '%s'", what, n, glia_status_str(st),
           glia_ctx_errmsg(G));
      bad = 1;
    }
    if (glia_ctx_live_bytes(G) != base) {
      diag("%s, run %d: %zu live bytes, %zu before", what, n, glia_ctx_live_bytes(G), base);
      bad = 1;
    }
  }
  glia_tensor_release(a);
  glia_tensor_release(b);
  return bad || n == 1000 ? -1 : n - 1;
}

static glia_status new_tensor(glia_ctx *G, glia_tensor *a, glia_tensor *b) {
  (void)a, (void)b;
  const int64_t size[2] = {3, 5};
  glia_tensor *t = NULL;
  glia_status st = glia_tensor_new(G, GLIA_DTYPE_F32, 2, size, &t);
  glia_tensor_release(t);
  return st;
}

static glia_status view(glia_ctx *G, glia_tensor *a, glia_tensor *b) {
  (void)b;
  glia_tensor *v = NULL;
  const int64_t size[1] = {16}, stride[1] = {1};
  glia_status st = glia_tensor_view_raw(G, a, 1, size, stride, 16, &v);
  glia_tensor_release(v);
  return st;
}

/* Runs registry op `name` on (a, b) and releases the result. */
static glia_status run_op(glia_ctx *G, const char *name, glia_tensor *a, glia_tensor *b) {
  glia_tensor *out = NULL;
  glia_status st = tap_op(G, name, a, b, &out);
  glia_tensor_release(out);
  return st;
}

static glia_status add(glia_ctx *G, glia_tensor *a, glia_tensor *b) {
  return run_op(G, "add", a, b);
}
static glia_status mul(glia_ctx *G, glia_tensor *a, glia_tensor *b) {
  return run_op(G, "mul", a, b);
}
static glia_status matmul(glia_ctx *G, glia_tensor *a, glia_tensor *b) {
  (void)b;
  glia_tensor *at = NULL, *out = NULL;
  const int64_t size[2] = {16, 8}, stride[2] = {1, 16};
  TRY(glia_tensor_view_raw(G, a, 2, size, stride, 0, &at));
  glia_status st = tap_op(G, "matmul", a, at, &out); /* {8,16} x {16,8}, strided */
  glia_tensor_release(out);
  glia_tensor_release(at);
  return st;
}

/* sum(mul(add(a, b), b)) and its backward, all under the failing allocator:
** a failure anywhere, forward or backward, must unwind cleanly. */
static glia_status forward_backward(glia_ctx *G, glia_tensor *a, glia_tensor *b) {
  glia_tensor *c = NULL, *d = NULL, *s = NULL;
  glia_status st = tap_op(G, "add", a, b, &c);
  if (st == GLIA_OK) st = tap_op(G, "mul", c, b, &d);
  if (st == GLIA_OK) st = tap_op(G, "sum", d, NULL, &s);
  if (st == GLIA_OK) st = glia_backward(G, s, NULL, 0);
  glia_tensor_release(s);
  glia_tensor_release(d);
  glia_tensor_release(c);
  return st;
}

static void test_faults(void) {
  glia_ctx *G = glia_ctx_new();
  glia_ctx_set_num_threads(G, 1);
  static const struct {
    const char *what;
    fault_fn fn;
    int requires_grad;
  } cases[] = {
      {"glia_tensor_new", new_tensor, 0},
      {"glia_tensor_view_raw", view, 0},
      {"registry add", add, 0},
      {"registry add recording a node", add, 1},
      {"registry mul recording a node", mul, 1},
      {"registry matmul on a strided operand", matmul, 1},
      {"add, mul, sum and backward", forward_backward, 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    if (!glia_op_find("matmul") && cases[i].fn == matmul) continue;
    int runs = fault_runs(G, cases[i].what, cases[i].fn, cases[i].requires_grad);
    ok(runs > 0,
       "%s: every failing allocation (%d of them) gives GLIA_ENOMEM with a message and "
       "frees everything",
       cases[i].what, runs);
  }
  glia_ctx_release(G);
}

int main(void) {
  test_accounting();
  test_large();
  test_faults();
  return tap_done();
}
