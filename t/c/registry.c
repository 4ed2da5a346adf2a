/*
** t/c/registry.c -- ops called from C through the public glia_op_call, as a
** host program calls them: the registry checks arity, argument kinds and
** dims against each op's signature (too few arguments are filled, never
** read past), and indices are 0-based both ways (argmax, topk, gather,
** cross_entropy), messages included. Runs under ASan in `make SAN=1 test`.
*/
#include "glia.h"
#include "tap.h"

#include <string.h>

static glia_ctx *G;

static glia_value T(glia_tensor *t) { return (glia_value){.kind = GLIA_VAL_TENSOR, .u.t = t}; }
static glia_value I(int64_t i) { return (glia_value){.kind = GLIA_VAL_INT, .u.i = i}; }
static glia_value S(const char *s) { return (glia_value){.kind = GLIA_VAL_STRING, .u.s = s}; }

static glia_tensor *f32(int64_t n, const float *v) { return tap_tensor(G, 1, &n, v); }

static glia_tensor *i64(int64_t n, const int64_t *v) {
  glia_tensor *t = NULL;
  if (glia_tensor_new(G, GLIA_DTYPE_I64, 1, &n, &t) != GLIA_OK) return NULL;
  memcpy(glia_tensor_data(t), v, (size_t)n * sizeof *v);
  return t;
}

/* Calls op `name` with n arguments; returns the status, outs filled. */
static glia_status call(const char *name, int n, glia_value *args, int *nouts, glia_value *outs) {
  *nouts = 0;
  return glia_op_call(G, glia_op_find(name), n, args, nouts, outs);
}

static void release_outs(int nouts, glia_value *outs) {
  for (int k = 0; k < nouts; k++)
    if (outs[k].kind == GLIA_VAL_TENSOR) glia_tensor_release(outs[k].u.t);
}

static int says(const char *want) {
  const char *msg = glia_ctx_errmsg(G);
  if (strstr(msg, want)) return 1;
  diag("message: %s", msg);
  return 0;
}

static void test_arity(void) {
  glia_tensor *x = f32(3, (const float[]){1, 5, 2});
  glia_value args[GLIA_MAX_ARGS + 2], outs[GLIA_MAX_OUTS];
  int nouts;
  /* argmax's signature is T|db: one argument is enough, and the op must
  ** not read the two it was not given (ASan: stack-buffer-overflow before) */
  glia_value one[1] = {T(x)};
  ok(call("argmax", 1, one, &nouts, outs) == GLIA_OK && nouts == 1 &&
         tap_indices_are(outs[0].u.t, (const int64_t[]){1}, 1),
     "argmax with only its tensor argument works and reads nothing past args");
  release_outs(nouts, outs);
  ok(call("gather", 1, one, &nouts, outs) == GLIA_EARG &&
         says("glia.gather: missing argument 1 (a dim (an integer))"),
     "gather without its dim and index fails naming the op and the missing argument");
  ok(call("argmax", 0, NULL, &nouts, outs) == GLIA_EARG && says("glia.argmax: missing argument 0"),
     "an op called with no arguments at all fails cleanly");
  args[0] = T(x), args[1] = I(0), args[2] = I(0), args[3] = I(0);
  ok(call("argmax", 4, args, &nouts, outs) == GLIA_EARG &&
         says("glia.argmax: too many arguments (expected at most 3, got 4)"),
     "an argument past the signature is refused");
  for (int i = 0; i < GLIA_MAX_ARGS + 2; i++) args[i] = T(x);
  ok(call("add", GLIA_MAX_ARGS + 2, args, &nouts, outs) == GLIA_EARG &&
         says("too many arguments"),
     "more arguments than GLIA_MAX_ARGS are refused without reading them");
  ok(glia_op_call(G, NULL, 1, one, &nouts, outs) == GLIA_EARG && says("unknown op"),
     "a NULL op (an unknown name) is an error, not a crash");
  glia_tensor_release(x);
}

static void test_kinds(void) {
  glia_tensor *x = f32(3, NULL);
  glia_value args[4], outs[GLIA_MAX_OUTS];
  int nouts;
  args[0] = T(x), args[1] = S("two");
  ok(call("add", 2, args, &nouts, outs) == GLIA_EARG &&
         says("glia.add: argument 1 must be a tensor or a number, got a string"),
     "a string where add takes a tensor or a number names the argument and both kinds");
  args[0] = I(3);
  ok(call("exp", 1, args, &nouts, outs) == GLIA_EARG &&
         says("glia.exp: argument 0 must be a tensor, got an integer"),
     "an integer where a tensor belongs is refused");
  args[0] = T(x), args[1] = (glia_value){.kind = GLIA_VAL_NUMBER, .u.num = 0.5};
  ok(call("argmax", 2, args, &nouts, outs) == GLIA_EARG &&
         says("glia.argmax: argument 1 must be a dim (an integer), got a number"),
     "a fractional dim is refused");
  args[0] = T(NULL);
  ok(call("exp", 1, args, &nouts, outs) == GLIA_EARG && says("NULL tensor"),
     "a NULL tensor is refused");
  args[0] = T(x), args[1] = T(x), args[2] = (glia_value){.kind = 99};
  ok(call("cross_entropy", 3, args, &nouts, outs) == GLIA_EARG &&
         says("glia.cross_entropy: argument 2 must be an integer, got an unknown kind"),
     "an unknown value kind is refused");
  glia_tensor_release(x);
}

static void test_dims(void) {
  int64_t s23[2] = {2, 3};
  glia_tensor *x = tap_tensor(G, 2, s23, (const float[]){1, 9, 2, 8, 3, 7});
  glia_value args[3], outs[GLIA_MAX_OUTS];
  int nouts;
  args[0] = T(x), args[1] = I(2);
  ok(call("argmax", 2, args, &nouts, outs) == GLIA_EARG &&
         says("glia.argmax: dim 2 out of range for a 2-D tensor {2,3}"),
     "dim 2 of a 2-D tensor is out of range from C (0-based)");
  args[1] = I(-3);
  ok(call("softmax", 2, args, &nouts, outs) == GLIA_EARG && says("dim -3 out of range"),
     "dim -3 of a 2-D tensor is out of range");
  args[1] = I(-1);
  ok(call("argmax", 2, args, &nouts, outs) == GLIA_OK &&
         tap_indices_are(outs[0].u.t, (const int64_t[]){1, 0}, 2),
     "dim -1 is the last dim: argmax along it gives 0-based column indices");
  release_outs(nouts, outs);
  args[1] = I(0);
  ok(call("argmax", 2, args, &nouts, outs) == GLIA_OK &&
         tap_indices_are(outs[0].u.t, (const int64_t[]){1, 0, 1}, 3),
     "dim 0 is the first dim from C");
  release_outs(nouts, outs);
  args[1] = (glia_value){.kind = GLIA_VAL_INTS, .u.ints = {2, {0, 5}}};
  ok(call("sum", 2, args, &nouts, outs) == GLIA_EARG && says("glia.sum: dim 5 out of range"),
     "every dim of a list is checked");
  glia_tensor_release(x);
}

static void test_zero_based(void) {
  glia_tensor *x = f32(3, (const float[]){1, 5, 2});
  glia_value args[4], outs[GLIA_MAX_OUTS];
  int nouts;
  args[0] = T(x);
  ok(call("argmax", 1, args, &nouts, outs) == GLIA_OK &&
         tap_indices_are(outs[0].u.t, (const int64_t[]){1}, 1),
     "argmax of {1,5,2} from C is 1 (0-based)");
  release_outs(nouts, outs);
  args[1] = I(2);
  ok(call("topk", 2, args, &nouts, outs) == GLIA_OK && nouts == 2 &&
         tap_values_are(outs[0].u.t, (const float[]){5, 2}, 2, 0) &&
         tap_indices_are(outs[1].u.t, (const int64_t[]){1, 2}, 2),
     "topk 2 of {1,5,2} from C gives values {5,2} at 0-based indices {1,2}");
  release_outs(nouts, outs);
  glia_tensor *idx = i64(2, (const int64_t[]){2, 0});
  args[1] = I(0), args[2] = T(idx);
  ok(call("gather", 3, args, &nouts, outs) == GLIA_OK &&
         tap_values_are(outs[0].u.t, (const float[]){2, 1}, 2, 0),
     "gather from C reads 0-based indices: {2,0} picks {2,1}");
  release_outs(nouts, outs);
  glia_tensor *bad = i64(1, (const int64_t[]){3});
  args[2] = T(bad);
  ok(call("index_select", 3, args, &nouts, outs) == GLIA_ERANGE &&
         says("index 3 out of range for dim 0 of size 3"),
     "index 3 of a dim of size 3 is out of range from C");
  args[1] = I(4);
  ok(call("topk", 2, args, &nouts, outs) == GLIA_ERANGE &&
         says("glia.topk: k = 4 out of range for dim 0 of size 3"),
     "an op's own messages count dims from 0 for C callers");
  args[1] = I(0), args[2] = I(5), args[3] = I(1);
  ok(call("narrow", 4, args, &nouts, outs) == GLIA_ERANGE &&
         says("glia.narrow: start 5 out of range for dim 0 of size 3"),
     "narrow from C names the 0-based start and dim it refused");
  int64_t s23[2] = {2, 3};
  glia_tensor *logits = tap_tensor(G, 2, s23, (const float[]){0, 9, 0, 9, 0, 0});
  glia_tensor *target = i64(2, (const int64_t[]){1, 0});
  args[0] = T(logits), args[1] = T(target);
  ok(call("cross_entropy", 2, args, &nouts, outs) == GLIA_OK && tap_at(outs[0].u.t, 0) < 1e-3f,
     "cross_entropy from C reads 0-based class targets");
  release_outs(nouts, outs);
  glia_tensor_release(target);
  glia_tensor_release(logits);
  glia_tensor_release(bad);
  glia_tensor_release(idx);
  glia_tensor_release(x);
}

/* One context, two conventions: a Lua function's argmax counts from 1, a C
** call's from 0, and neither leaks into the other. */
static void test_lua_and_c(void) {
  glia_vm *vm = glia_vm_open();
  glia_ctx *C = vm ? glia_vm_ctx(vm) : NULL;
  glia_tensor *x = NULL, *r = NULL;
  int64_t n = 3;
  int good = C && glia_tensor_new(C, GLIA_DTYPE_F32, 1, &n, &x) == GLIA_OK &&
             glia_vm_run_string(vm, "local glia = require 'glia'\n"
                                         "function am(t) return glia.argmax(t) end") == GLIA_OK;
  if (!good && vm) diag("%s", glia_vm_errmsg(vm));
  if (good) memcpy(glia_tensor_data(x), (const float[]){1, 5, 2}, sizeof(float[3]));
  glia_value args[1] = {T(x)}, outs[GLIA_MAX_OUTS];
  int nouts = 0;
  for (int round = 0; round < 2 && good; round++) {
    good = glia_vm_call(vm, "am", 1, &x, 1, &r) == GLIA_OK &&
           tap_indices_are(r, (const int64_t[]){2}, 1);
    glia_tensor_release(r);
    good = good && glia_op_call(C, glia_op_find("argmax"), 1, args, &nouts, outs) == GLIA_OK &&
           tap_indices_are(outs[0].u.t, (const int64_t[]){1}, 1);
    if (nouts > 0) release_outs(nouts, outs);
    nouts = 0;
  }
  ok(good, "on one context, argmax from Lua is 2 and from C is 1, calls alternating");
  glia_tensor_release(x);
  glia_vm_close(vm);
}

int main(void) {
  G = glia_ctx_new();
  if (!G) return 1;
  test_arity();
  test_kinds();
  test_dims();
  test_zero_based();
  test_lua_and_c();
  glia_ctx_release(G);
  return tap_done();
}
