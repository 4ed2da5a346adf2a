/*
** t/c/tape.c -- autograd through the op registry, as a C host drives it:
** gradients of broadcast and shared inputs, explicit output gradients,
** keep_graph, grad mode, and the version counter that turns an in-place
** change to a saved tensor into an error instead of a wrong gradient, and
** the checks on an assigned gradient.
*/
#include "glia_impl.h"
#include "tap.h"

/* t op= number, in place, through the registry (add_ and friends). */
static glia_status inplace(glia_ctx *G, const char *name, glia_tensor *t, double v) {
  glia_value args[2] = {{.kind = GLIA_VAL_TENSOR, .u.t = t}, {.kind = GLIA_VAL_NUMBER, .u.num = v}};
  glia_value outs[GLIA_MAX_OUTS];
  int nouts = 0;
  glia_status st = glia_op_call(G, glia_op_find(name), 2, args, &nouts, outs);
  for (int k = 0; k < nouts; k++)
    if (outs[k].kind == GLIA_VAL_TENSOR) glia_tensor_release(outs[k].u.t);
  return st;
}

static const int64_t S23[2] = {2, 3}, S3[1] = {3};

/* ======================================================== gradients */

static void test_gradients(glia_ctx *G) {
  const float av[6] = {1, 2, 3, 4, 5, 6}, bv[3] = {10, 20, 30};
  glia_tensor *a = tap_tensor(G, 2, S23, av), *b = tap_tensor(G, 1, S3, bv);
  glia_tensor_set_requires_grad(G, a, 1);
  glia_tensor_set_requires_grad(G, b, 1);
  glia_tensor *c = NULL, *d = NULL, *s = NULL;
  tap_op(G, "add", a, b, &c); /* c = a + b, b broadcast over rows */
  tap_op(G, "mul", c, b, &d); /* d = (a + b) * b */
  glia_status st = tap_op(G, "sum", d, NULL, &s);
  ok(st == GLIA_OK && c->grad_fn && d->grad_fn && s->grad_fn && !a->grad_fn,
     "ops on inputs that require grad record nodes; leaves have none");
  st = glia_backward(G, s, NULL, 0);
  /* ds/da = b; ds/db = sum over rows of (a + 2b) */
  const float ga[6] = {10, 20, 30, 10, 20, 30}, gb[3] = {1 + 4 + 40, 2 + 5 + 80, 3 + 6 + 120};
  ok(st == GLIA_OK && tap_values_are(glia_tensor_grad(a), ga, 6, 1e-5f),
     "backward of sum((a + b) * b) gives a.grad = b, broadcast back to a's shape");
  ok(tap_values_are(glia_tensor_grad(b), gb, 3, 1e-5f),
     "b, used twice and broadcast, gets the sum of both paths reduced to its shape");
  ok(glia_tensor_grad(b) && glia_tensor_ndim(glia_tensor_grad(b)) == 1,
     "a broadcast input's gradient has the input's shape");

  st = glia_backward(G, s, NULL, 0);
  ok(st == GLIA_EGRAD && strstr(glia_ctx_errmsg(G), "already freed"),
     "a second backward through a freed graph is GLIA_EGRAD and says why");
  glia_tensor_release(s);
  glia_tensor_release(d);
  glia_tensor_release(c);

  /* keep_graph: two backward passes accumulate. */
  glia_tensor_zero_grad(a);
  glia_tensor_zero_grad(b);
  tap_op(G, "mul", a, a, &c); /* a * a */
  tap_op(G, "add", c, a, &d); /* a * a + a: a reaches d by two paths */
  glia_tensor *gout = tap_tensor(G, 2, S23, (const float[6]){1, 1, 1, 1, 1, 1});
  st = glia_backward(G, d, gout, 1);
  const float g1[6] = {3, 5, 7, 9, 11, 13};
  ok(st == GLIA_OK && tap_values_are(glia_tensor_grad(a), g1, 6, 1e-5f),
     "backward with an explicit gradient through a diamond gives 2a + 1");
  st = glia_backward(G, d, gout, 0);
  const float g2[6] = {6, 10, 14, 18, 22, 26};
  ok(st == GLIA_OK && tap_values_are(glia_tensor_grad(a), g2, 6, 1e-5f),
     "with keep_graph the graph survives a second backward, which accumulates");
  glia_tensor_release(d);
  glia_tensor_release(c);

  const int64_t s4[1] = {4};
  glia_tensor *wrong = tap_tensor(G, 1, s4, NULL);
  tap_op(G, "mul", a, a, &c);
  st = glia_backward(G, c, wrong, 0);
  ok(st == GLIA_ESHAPE && strstr(glia_ctx_errmsg(G), "gradient {4} does not match tensor {2,3}"),
     "an output gradient of the wrong shape is GLIA_ESHAPE naming both shapes");
  st = glia_backward(G, c, NULL, 0);
  ok(st == GLIA_ESHAPE && strstr(glia_ctx_errmsg(G), "1-element"),
     "backward without a gradient from a non-scalar is GLIA_ESHAPE");
  glia_tensor_release(c);
  glia_tensor_release(wrong);
  glia_tensor_release(gout);

  wrong = tap_tensor(G, 1, s4, NULL);
  st = glia_backward(G, wrong, NULL, 0);
  ok(st == GLIA_EGRAD && strstr(glia_ctx_errmsg(G), "does not require grad"),
     "backward from a tensor outside any graph is GLIA_EGRAD");
  glia_tensor_release(wrong);

  int old = glia_ctx_set_grad_mode(G, 0);
  tap_op(G, "mul", a, b, &c);
  ok(old == 1 && c->grad_fn == NULL && !glia_tensor_requires_grad(c),
     "with grad mode off, ops record nothing");
  glia_ctx_set_grad_mode(G, old);
  glia_tensor_release(c);

  glia_tensor *idx = NULL;
  glia_tensor_new(G, GLIA_DTYPE_I64, 1, S3, &idx);
  st = glia_tensor_set_requires_grad(G, idx, 1);
  ok(st == GLIA_EDTYPE && strstr(glia_ctx_errmsg(G), "only f32"),
     "an i64 tensor cannot require grad (GLIA_EDTYPE)");
  glia_tensor_release(idx);

  glia_tensor_release(a);
  glia_tensor_release(b);
  glia_ctx_trim(G);
  ok(glia_ctx_live_bytes(G) == 0, "releasing the leaves frees their gradients and every node");
}

/* ================================================== version counter */

static void test_versions(glia_ctx *G) {
  glia_tensor *a = tap_tensor(G, 2, S23, NULL), *b = tap_tensor(G, 2, S23, NULL);
  glia_tensor_set_requires_grad(G, a, 1);
  glia_tensor *y = NULL, *s = NULL;
  tap_op(G, "mul", a, b, &y); /* saves a and b */
  tap_op(G, "sum", y, NULL, &s);
  glia_status st = inplace(G, "add_", b, 1.0);
  ok(st == GLIA_OK, "add_ on a tensor that does not require grad runs in place");
  st = glia_backward(G, s, NULL, 0);
  ok(st == GLIA_EGRAD && strstr(glia_ctx_errmsg(G), "modified in place"),
     "backward through mul after add_ changed its saved operand is GLIA_EGRAD");
  ok(glia_tensor_grad(a) == NULL, "the failed backward left no gradient in the leaf");
  glia_tensor_release(s);
  glia_tensor_release(y);

  st = inplace(G, "add_", a, 1.0);
  ok(st == GLIA_EGRAD && strstr(glia_ctx_errmsg(G), "requires grad"),
     "add_ on a tensor that requires grad is refused in grad mode");

  tap_op(G, "mul", a, a, &y);
  tap_op(G, "sum", y, NULL, &s);
  int old = glia_ctx_set_grad_mode(G, 0);
  st = inplace(G, "add_", a, 1.0); /* allowed: an optimizer step does this */
  glia_ctx_set_grad_mode(G, old);
  glia_status bw = glia_backward(G, s, NULL, 0);
  ok(st == GLIA_OK && bw == GLIA_EGRAD,
     "an in-place step in no-grad mode still invalidates a graph that saved the tensor");
  glia_tensor_release(s);
  glia_tensor_release(y);

  tap_op(G, "mul", a, a, &y);
  tap_op(G, "sum", y, NULL, &s);
  st = glia_backward(G, s, NULL, 0);
  ok(st == GLIA_OK, "a graph built after the in-place change backpropagates normally");
  glia_tensor_release(s);
  glia_tensor_release(y);
  glia_tensor_release(a);
  glia_tensor_release(b);
}

/* ================================================== assigned gradients */

static void test_set_grad(glia_ctx *G) {
  glia_tensor *a = tap_tensor(G, 1, S3, (const float[3]){1, 2, 3});
  glia_tensor *wrong = tap_tensor(G, 2, S23, NULL), *g = tap_tensor(G, 1, S3, (const float[3]){0});
  glia_tensor_set_requires_grad(G, a, 1);
  glia_status st = glia_tensor_set_grad(G, a, wrong);
  ok(st == GLIA_ESHAPE && strstr(glia_ctx_errmsg(G), "gradient f32 {2,3} does not match tensor f32 {3}") &&
         glia_tensor_grad(a) == NULL,
     "glia_tensor_set_grad refuses a gradient of another shape with GLIA_ESHAPE, naming both");
  st = glia_tensor_set_grad(G, a, g);
  glia_tensor *s = NULL;
  tap_op(G, "sum", a, NULL, &s);
  glia_status bw = glia_backward(G, s, NULL, 0);
  ok(st == GLIA_OK && bw == GLIA_OK && glia_tensor_grad(a) == g &&
         tap_values_are(g, (const float[3]){1, 1, 1}, 3, 0),
     "an assigned gradient of the right shape is kept and backward adds into it");
  glia_tensor_release(s);
  ok(glia_tensor_set_grad(G, a, NULL) == GLIA_OK && glia_tensor_grad(a) == NULL,
     "glia_tensor_set_grad with NULL clears the gradient");
  glia_tensor_release(g);
  glia_tensor_release(wrong);
  glia_tensor_release(a);
}

int main(void) {
  glia_ctx *G = glia_ctx_new();
  test_gradients(G);
  test_versions(G);
  test_set_grad(G);
  glia_ctx_release(G);
  return tap_done();
}
