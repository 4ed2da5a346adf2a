/*
** t/c/embed.c -- the embedding API of glia.h as a host uses it: running
** code, calling Lua functions with tensors in and out, wrapping host memory
** with a release callback, and the statuses and messages of bad calls.
** Under the sanitizer build this also proves the boundary leaks nothing and
** never touches a host buffer after its release callback ran.
*/
#include "glia.h"
#include "tap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char model_src[] =
    "local glia = require 'glia'\n"
    "model = {}\n"
    "function model.double(x) return x * 2 end\n"
    "function model.add(a, b) return a + b end\n"
    "function model.keep(x) kept = x return x end\n"
    "function model.number() return 42 end\n"
    "function model.pair(x) return x + 1, x - 1 end\n";

/* A host buffer with a release callback that counts its calls and poisons
** the data, so a use after release shows up in the values (and under ASan,
** the free shows up as a use-after-free). */
typedef struct {
  int released;
} host_buf;

static void release_buf(void *ud, void *data) {
  host_buf *h = ud;
  h->released++;
  free(data);
}

static float *new_floats(int n, float first) {
  float *p = malloc((size_t)n * sizeof *p);
  for (int i = 0; i < n; i++) p[i] = first + (float)i;
  return p;
}

/* The element (i, j) of a 2-D f32 tensor, through its strides. */
static float at(glia_tensor *t, int64_t i, int64_t j) {
  const float *p = glia_tensor_data(t);
  return p[i * glia_tensor_stride(t, 0) + j * glia_tensor_stride(t, 1)];
}

static glia_vm *open_model(void) {
  glia_vm *vm = glia_vm_open();
  if (vm && glia_vm_run_string(vm, model_src) != GLIA_OK) {
    diag("model did not load: %s", glia_vm_errmsg(vm));
    glia_vm_close(vm);
    return NULL;
  }
  return vm;
}

/* ====================================================== calling */

static void test_call(void) {
  glia_vm *vm = open_model();
  ok(vm != NULL, "glia_vm_open gives a vm that runs a model script requiring glia");
  if (!vm) return;
  glia_ctx *G = glia_vm_ctx(vm);

  host_buf h = {0};
  float *buf = new_floats(6, 1);
  glia_tensor *x = NULL, *y = NULL;
  const int64_t size[2] = {2, 3};
  glia_status st = glia_tensor_wrap(G, buf, GLIA_DTYPE_F32, 2, size, NULL, release_buf, &h, &x);
  ok(st == GLIA_OK && glia_tensor_data(x) == buf,
     "glia_tensor_wrap makes a tensor over the host's buffer without a copy");

  st = glia_vm_call(vm, "model.double", 1, &x, 1, &y);
  int good = st == GLIA_OK && y && glia_tensor_ndim(y) == 2 && glia_tensor_size(y, 0) == 2 &&
             glia_tensor_size(y, 1) == 3;
  for (int i = 0; good && i < 2; i++)
    for (int j = 0; j < 3; j++) good &= at(y, i, j) == 2 * buf[i * 3 + j];
  ok(good, "glia_vm_call runs a dotted Lua function on a wrapped tensor and returns its result");
  glia_tensor_release(y);

  /* A transposed view of the same buffer: the script sees the strides. */
  glia_tensor *xt = NULL;
  const int64_t tsize[2] = {3, 2}, tstride[2] = {1, 3};
  st = glia_tensor_wrap(G, buf, GLIA_DTYPE_F32, 2, tsize, tstride, NULL, NULL, &xt);
  if (st == GLIA_OK) st = glia_vm_call(vm, "model.double", 1, &xt, 1, &y);
  good = st == GLIA_OK;
  for (int i = 0; good && i < 3; i++)
    for (int j = 0; j < 2; j++) good &= at(y, i, j) == 2 * buf[j * 3 + i];
  ok(good, "a wrapped tensor with host strides (a transposed view) computes correctly");
  glia_tensor_release(y);
  glia_tensor_release(xt);

  glia_tensor *outs[2] = {NULL, NULL};
  st = glia_vm_call(vm, "model.pair", 1, &x, 2, outs);
  ok(st == GLIA_OK && at(outs[0], 1, 2) == 7 && at(outs[1], 1, 2) == 5,
     "glia_vm_call collects several tensor results in order");
  glia_tensor_release(outs[0]);
  glia_tensor_release(outs[1]);

  /* Errors come back as statuses with messages; outputs stay NULL. */
  glia_tensor *bad = NULL;
  const int64_t bsize[1] = {4};
  glia_tensor_new(G, GLIA_DTYPE_F32, 1, bsize, &bad);
  glia_tensor *args[2] = {x, bad};
  y = (glia_tensor *)1;
  st = glia_vm_call(vm, "model.add", 2, args, 1, &y);
  ok(st == GLIA_ESCRIPT && y == NULL && strstr(glia_vm_errmsg(vm), "glia.add") &&
         strstr(glia_vm_errmsg(vm), "{2,3} and {4} do not broadcast"),
     "a bad call returns GLIA_ESCRIPT, NULL outputs, and a message naming op and shapes");
  ok(strstr(glia_vm_errmsg(vm), "stack traceback") != NULL,
     "the message of a failed call carries a Lua traceback");
  glia_tensor_release(bad);

  st = glia_vm_call(vm, "model.nope", 1, &x, 1, &y);
  ok(st == GLIA_ESCRIPT && strstr(glia_vm_errmsg(vm), "no function named 'model.nope'"),
     "calling a missing function fails with a message naming it");
  st = glia_vm_call(vm, "model.number", 0, NULL, 1, &y);
  ok(st == GLIA_ESCRIPT && strstr(glia_vm_errmsg(vm), "is a number, not a tensor"),
     "a function returning a non-tensor fails with a message saying what it returned");

  glia_tensor *nul = NULL;
  st = glia_vm_call(vm, "model.double", 1, &nul, 1, &y);
  ok(st == GLIA_EARG, "a NULL input tensor is refused with GLIA_EARG");
  glia_ctx *G2 = glia_ctx_new();
  glia_tensor *foreign = NULL;
  glia_tensor_new(G2, GLIA_DTYPE_F32, 2, size, &foreign);
  st = glia_vm_call(vm, "model.double", 1, &foreign, 1, &y);
  ok(st == GLIA_EARG && strstr(glia_vm_errmsg(vm), "another context"),
     "a tensor from another context is refused with GLIA_EARG");
  glia_tensor_release(foreign);
  glia_ctx_release(G2);

  st = glia_vm_call(vm, "model.double", 1, &x, 1, &y);
  ok(st == GLIA_OK, "the vm keeps working after failed calls");
  glia_tensor_release(y);

  glia_tensor_release(x);
  glia_vm_close(vm);
  ok(h.released == 1, "the host release callback ran exactly once by glia_vm_close (ran %d)",
     h.released);
}

/* ================================================ reference ownership */

static void test_ownership(void) {
  glia_vm *vm = open_model();
  if (!vm) return;
  glia_ctx *G = glia_vm_ctx(vm);
  host_buf h = {0};
  const int64_t size[1] = {4};
  glia_tensor *x = NULL, *y = NULL;
  glia_tensor_wrap(G, new_floats(4, 0), GLIA_DTYPE_F32, 1, size, NULL, release_buf, &h, &x);
  glia_status st = glia_vm_call(vm, "model.keep", 1, &x, 1, &y);
  ok(st == GLIA_OK && y == x, "a tensor handed back by Lua is the same tensor, one more reference");
  glia_tensor_release(y);
  glia_tensor_release(x);
  glia_vm_run_string(vm, "collectgarbage() collectgarbage()");
  ok(h.released == 0, "while a Lua global holds the tensor, the host buffer is not released");
  glia_vm_run_string(vm, "kept = nil collectgarbage() collectgarbage()");
  ok(h.released == 1, "once Lua drops and collects it, the release callback runs once");
  glia_vm_close(vm);
  ok(h.released == 1, "closing the vm does not run the callback a second time");

  float stack_data[3] = {1, 2, 3};
  const int64_t s3[1] = {3};
  vm = glia_vm_open();
  G = glia_vm_ctx(vm);
  host_buf h2 = {0};
  const int64_t neg[1] = {-1};
  st = glia_tensor_wrap(G, stack_data, GLIA_DTYPE_F32, 1, neg, NULL, release_buf, &h2, &x);
  ok(st == GLIA_ESHAPE && h2.released == 0,
     "a failed wrap (negative size) returns an error and leaves the buffer to the host");
  st = glia_tensor_wrap(G, NULL, GLIA_DTYPE_F32, 1, s3, NULL, release_buf, &h2, &x);
  ok(st == GLIA_EARG && h2.released == 0, "wrapping NULL data is refused with GLIA_EARG");
  glia_vm_close(vm);
}

/* ======================================================== running code */

static void test_run(void) {
  glia_vm *vm = glia_vm_open();
  glia_status st = glia_vm_run_string(vm, "x = = 1");
  ok(st == GLIA_ESCRIPT && strstr(glia_vm_errmsg(vm), "unexpected symbol"),
     "a syntax error in glia_vm_run_string is GLIA_ESCRIPT with Lua's message");
  st = glia_vm_run_string(vm, "error('from the script')");
  ok(st == GLIA_ESCRIPT && strstr(glia_vm_errmsg(vm), "from the script"),
     "a runtime error in glia_vm_run_string is GLIA_ESCRIPT with its message");
  st = glia_vm_run_file(vm, "/nonexistent/glia/model.lua");
  ok(st == GLIA_ESCRIPT && strstr(glia_vm_errmsg(vm), "cannot open"),
     "glia_vm_run_file of a missing file says it cannot open it");

  char path[] = "/tmp/glia_embed_XXXXXX";
  int fd = mkstemp(path);
  FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
  if (f) {
    fputs("answer = 6 * 7\n", f);
    fclose(f);
  }
  st = glia_vm_run_file(vm, path);
  int ran = st == GLIA_OK && glia_vm_run_string(vm, "assert(answer == 42)") == GLIA_OK;
  ok(ran, "glia_vm_run_file runs a script file in the vm's state");
  unlink(path);
  glia_vm_close(vm);
  glia_vm_close(NULL);
  ok(1, "glia_vm_close(NULL) is a no-op");
}

/* ================================================= allocation failure */

/* Fails the n-th allocation of the context for n = 1, 2, ... until the call
** succeeds: each failing run must come back as a status with an
** out-of-memory message, and the vm must stay usable. */
static void test_call_nomem(void) {
  glia_vm *vm = open_model();
  if (!vm) return;
  glia_ctx *G = glia_vm_ctx(vm);
  const int64_t size[2] = {64, 64};
  glia_tensor *x = NULL, *outs[2] = {NULL, NULL};
  glia_tensor_new(G, GLIA_DTYPE_F32, 2, size, &x);
  memset(glia_tensor_data(x), 0, 64 * 64 * sizeof(float));
  int n, clean = 1;
  glia_status st = GLIA_ENOMEM;
  for (n = 1; n < 100; n++) {
    glia_ctx_fail_alloc_after(G, n);
    st = glia_vm_call(vm, "model.pair", 1, &x, 2, outs);
    glia_ctx_fail_alloc_after(G, 0);
    glia_tensor_release(outs[0]);
    glia_tensor_release(outs[1]);
    if (st == GLIA_OK) break;
    if (!strstr(glia_vm_errmsg(vm), "out of memory")) {
      diag("run %d: %s", n, glia_vm_errmsg(vm));
      clean = 0;
    }
  }
  ok(st == GLIA_OK && n > 1, "glia_vm_call succeeds once allocations stop failing (after %d runs)",
     n - 1);
  ok(clean, "every call with a failing allocation reported out of memory");
  st = glia_vm_call(vm, "model.pair", 1, &x, 2, outs);
  ok(st == GLIA_OK, "the vm works normally after the allocation failures");
  glia_tensor_release(outs[0]);
  glia_tensor_release(outs[1]);
  glia_tensor_release(x);
  glia_vm_close(vm);
}

/* ===================================================== without require */

/* Runs fn in a child process, so a crash is one failing test rather than
** the end of the file. */
static int survives(void (*fn)(void)) {
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    fn();
    _exit(0);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return 0;
  if (WIFSIGNALED(status)) diag("the child died of signal %d", WTERMSIG(status));
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static void call_without_require(void) {
  glia_vm *vm = glia_vm_open();
  glia_vm_run_string(vm, "function id(x) return x end");
  glia_tensor *x = NULL, *y = NULL;
  const int64_t size[1] = {2};
  glia_tensor_new(glia_vm_ctx(vm), GLIA_DTYPE_F32, 1, size, &x);
  glia_status st = glia_vm_call(vm, "id", 1, &x, 1, &y);
  int good = st == GLIA_OK && y == x;
  glia_tensor_release(y);
  glia_tensor_release(x);
  glia_vm_close(vm);
  _exit(good ? 0 : 1);
}

int main(void) {
  /* The model scripts require "glia": find the stdlib of this tree (the
  ** tests run from the repository root). */
  char stdlib[4096];
  if (!getenv("GLIA_STDLIB") && getcwd(stdlib, sizeof stdlib - 8)) {
    strcat(stdlib, "/stdlib");
    setenv("GLIA_STDLIB", stdlib, 1);
  }
  test_call();
  test_ownership();
  test_run();
  test_call_nomem();
  ok(survives(call_without_require),
     "glia_vm_call passes tensors to a script that never required glia");
  return tap_done();
}
