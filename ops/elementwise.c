/*
** ops/elementwise.c -- binary elementwise ops with NumPy broadcasting:
** add, sub, mul, div, pow, maximum, minimum, the comparisons (masks), where
** and masked_fill, plus their in-place forms (add_, ...).
**
** Either operand may be a Lua number (a scalar): it is never turned into a
** tensor. Arithmetic computes in f32; comparisons accept any pair of equal
** dtypes (or a scalar) and produce bool. Each op's backward sits next to
** its forward; gradients come out in the broadcast shape and are summed
** back to each input's shape (glia_grads_to_inputs) before the engine
** gets them.
*/
#include "glia_impl.h"
#include "ops.h"

#include <math.h>
#include <stdio.h>

/* ======================================================== kernels */

typedef struct {
  float s; /* the scalar operand, when there is one */
} scalar_arg;

/* Operands a and b of the loops below that take either: each a tensor the
** iterator walks, or a scalar (its slot then holds a placeholder). */
typedef struct {
  float sa, sb;
  int a_scalar, b_scalar;
} pair_arg;

static inline float pair_a(const pair_arg *k, const char *p) {
  return k->a_scalar ? k->sa : *(const float *)p;
}
static inline float pair_b(const pair_arg *k, const char *p) {
  return k->b_scalar ? k->sb : *(const float *)p;
}

/* A backward's operands: saved tensors a and b, NULL where the forward had
** a scalar, kept in farg. */
static inline pair_arg saved_pair(const glia_node *n, const glia_tensor *a, const glia_tensor *b) {
  return (pair_arg){(float)n->farg[0], (float)n->farg[1], !a, !b};
}

/* Three loops per op: tensor-tensor, tensor-scalar, scalar-tensor. The
** contiguous path is a plain loop gcc vectorizes. */
#define BINARY_KERNELS(NAME, EXPR)                                            \
  static void NAME##_tt(int64_t n, char **p, const int64_t *s, void *ud) {    \
    (void)ud;                                                                 \
    if (s[0] == 4 && s[1] == 4 && s[2] == 4) {                                \
      float *restrict o = (float *)p[0];                                      \
      const float *restrict A = (const float *)p[1], *restrict B = (const float *)p[2]; \
      for (int64_t i = 0; i < n; i++) {                                       \
        float x = A[i], y = B[i];                                             \
        o[i] = (EXPR);                                                        \
      }                                                                       \
      return;                                                                 \
    }                                                                         \
    if (s[0] == 4 && s[1] == 4 && s[2] == 0) {                                \
      float *restrict o = (float *)p[0];                                      \
      const float *restrict A = (const float *)p[1];                          \
      const float y = *(const float *)p[2];                                   \
      for (int64_t i = 0; i < n; i++) {                                       \
        float x = A[i];                                                       \
        o[i] = (EXPR);                                                        \
      }                                                                       \
      return;                                                                 \
    }                                                                         \
    for (int64_t i = 0; i < n; i++) {                                         \
      float x = *(const float *)(p[1] + i * s[1]);                            \
      float y = *(const float *)(p[2] + i * s[2]);                            \
      *(float *)(p[0] + i * s[0]) = (EXPR);                                   \
    }                                                                         \
  }                                                                           \
  static void NAME##_ts(int64_t n, char **p, const int64_t *s, void *ud) {    \
    const float y = ((const scalar_arg *)ud)->s;                              \
    if (s[0] == 4 && s[1] == 4) {                                             \
      float *restrict o = (float *)p[0];                                      \
      const float *restrict A = (const float *)p[1];                          \
      for (int64_t i = 0; i < n; i++) {                                       \
        float x = A[i];                                                       \
        o[i] = (EXPR);                                                        \
      }                                                                       \
      return;                                                                 \
    }                                                                         \
    for (int64_t i = 0; i < n; i++) {                                         \
      float x = *(const float *)(p[1] + i * s[1]);                            \
      *(float *)(p[0] + i * s[0]) = (EXPR);                                   \
    }                                                                         \
  }                                                                           \
  static void NAME##_st(int64_t n, char **p, const int64_t *s, void *ud) {    \
    const float x = ((const scalar_arg *)ud)->s;                              \
    for (int64_t i = 0; i < n; i++) {                                         \
      float y = *(const float *)(p[1] + i * s[1]);                            \
      *(float *)(p[0] + i * s[0]) = (EXPR);                                   \
    }                                                                         \
  }

BINARY_KERNELS(add, x + y)
BINARY_KERNELS(sub, x - y)
BINARY_KERNELS(mul, x * y)
BINARY_KERNELS(div, x / y)
BINARY_KERNELS(pow, powf(x, y))
BINARY_KERNELS(max, (x > y || isnan(x)) ? x : y)
BINARY_KERNELS(min, (x < y || isnan(x)) ? x : y)

typedef struct {
  const char *name, *inplace_name; /* glia.add, glia.add_: errors name the op called */
  glia_loop_fn tt, ts, st;
  glia_backward_fn backward;
} binary_def;

static glia_status add_bwd(glia_ctx *, glia_node *, glia_tensor *, glia_tensor **);
static glia_status sub_bwd(glia_ctx *, glia_node *, glia_tensor *, glia_tensor **);
static glia_status mul_bwd(glia_ctx *, glia_node *, glia_tensor *, glia_tensor **);
static glia_status div_bwd(glia_ctx *, glia_node *, glia_tensor *, glia_tensor **);
static glia_status pow_bwd(glia_ctx *, glia_node *, glia_tensor *, glia_tensor **);
static glia_status minmax_bwd(glia_ctx *, glia_node *, glia_tensor *, glia_tensor **);

static const binary_def binary_defs[GLIA_BIN_COUNT] = {
    [GLIA_BIN_ADD] = {"glia.add", "glia.add_", add_tt, add_ts, add_st, add_bwd},
    [GLIA_BIN_SUB] = {"glia.sub", "glia.sub_", sub_tt, sub_ts, sub_st, sub_bwd},
    [GLIA_BIN_MUL] = {"glia.mul", "glia.mul_", mul_tt, mul_ts, mul_st, mul_bwd},
    [GLIA_BIN_DIV] = {"glia.div", "glia.div_", div_tt, div_ts, div_st, div_bwd},
    [GLIA_BIN_POW] = {"glia.pow", "glia.pow_", pow_tt, pow_ts, pow_st, pow_bwd},
    [GLIA_BIN_MAX] = {"glia.maximum", "glia.maximum_", max_tt, max_ts, max_st, minmax_bwd},
    [GLIA_BIN_MIN] = {"glia.minimum", "glia.minimum_", min_tt, min_ts, min_st, minmax_bwd},
};

/* ============================================== forward: arithmetic */

/* An operand is a number or an f32 tensor; pos names it in messages. */
static glia_status check_operand(glia_ctx *G, const char *name, const glia_value *v, int pos) {
  if (v->kind == GLIA_VAL_TENSOR) {
    char what[16];
    snprintf(what, sizeof what, "argument %d", pos);
    return glia_check_f32(G, name, what, v->u.t);
  }
  if (v->kind == GLIA_VAL_NUMBER || v->kind == GLIA_VAL_INT) return GLIA_OK;
  return glia_fail(G, GLIA_EARG, "%s: argument %d must be a tensor or a number", name, pos);
}

/* Runs op on (a, b) into out, which has the broadcast shape (or is a). */
static void run_binary(glia_ctx *G, const binary_def *d, glia_tensor *out,
                       const glia_value *a, const glia_value *b) {
  scalar_arg sa;
  if (a->kind == GLIA_VAL_TENSOR && b->kind == GLIA_VAL_TENSOR) {
    glia_tensor *ops[3] = {out, a->u.t, b->u.t};
    glia_iter(G, 3, ops, d->tt, NULL, GRAIN);
  } else if (a->kind == GLIA_VAL_TENSOR) {
    sa.s = (float)arg_num(b, 0);
    glia_tensor *ops[2] = {out, a->u.t};
    glia_iter(G, 2, ops, d->ts, &sa, GRAIN);
  } else {
    sa.s = (float)arg_num(a, 0);
    glia_tensor *ops[2] = {out, b->u.t};
    glia_iter(G, 2, ops, d->st, &sa, GRAIN);
  }
}

/* The shape of a result over operands ta and tb (NULL for a scalar; not
** both): their broadcast shape, or the one tensor's shape. */
static glia_status result_shape(glia_ctx *G, const char *name, const glia_tensor *ta,
                                const glia_tensor *tb, int *nd, int64_t *shape) {
  if (ta && tb)
    return glia_broadcast_shape(G, name, ta->ndim, ta->size, tb->ndim, tb->size, nd, shape);
  const glia_tensor *t = ta ? ta : tb;
  *nd = t->ndim;
  memcpy(shape, t->size, sizeof t->size);
  return GLIA_OK;
}

/* The op's backward (iarg[0] is the op), then each gradient summed back to
** its input's shape. */
static glia_status binary_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  TRY(binary_defs[n->iarg[0]].backward(G, n, g, din));
  return glia_grads_to_inputs(G, n, din);
}

glia_status glia_binary(glia_ctx *G, glia_binop op, const glia_value *a, const glia_value *b,
                        glia_tensor **out) {
  const binary_def *d = &binary_defs[op];
  TRY(check_operand(G, d->name, a, 1));
  TRY(check_operand(G, d->name, b, 2));
  const glia_tensor *ta = a->kind == GLIA_VAL_TENSOR ? a->u.t : NULL;
  const glia_tensor *tb = b->kind == GLIA_VAL_TENSOR ? b->u.t : NULL;
  if (!ta && !tb)
    return glia_fail(G, GLIA_EARG, "%s: expected at least one tensor operand", d->name);
  int nd;
  int64_t shape[GLIA_MAX_DIMS];
  TRY(result_shape(G, d->name, ta, tb, &nd, shape));
  glia_tensor *r;
  TRY(glia_tensor_new(G, GLIA_DTYPE_F32, nd, shape, &r));
  run_binary(G, d, r, a, b);
  glia_tensor *in[2] = {arg_t((glia_value *)a), arg_t((glia_value *)b)};
  glia_status st;
  glia_node *node = glia_node_begin(G, d->name, binary_bwd, 2, in, &st);
  if (node) {
    node->iarg[0] = op;
    node->farg[0] = a->kind == GLIA_VAL_TENSOR ? 0 : arg_num(a, 0);
    node->farg[1] = b->kind == GLIA_VAL_TENSOR ? 0 : arg_num(b, 0);
    /* mul/div/pow/min/max need their operands (and div the output) */
    if (op != GLIA_BIN_ADD && op != GLIA_BIN_SUB) {
      st = glia_node_save(G, node, in[0]);
      if (st == GLIA_OK) st = glia_node_save(G, node, in[1]);
      if (st == GLIA_OK && op == GLIA_BIN_DIV) st = glia_node_save(G, node, r);
    }
    st = glia_node_end(node, st, r);
  }
  return glia_hand_out(st, r, out);
}

/* In-place form: t op= b, b broadcast to t's shape. Refused when t takes
** part in autograd (its old value may be needed). */
glia_status glia_binary_(glia_ctx *G, glia_binop op, glia_tensor *t, const glia_value *b) {
  const binary_def *d = &binary_defs[op];
  const char *name = d->inplace_name;
  glia_value a = {.kind = GLIA_VAL_TENSOR, .u.t = t};
  TRY(check_operand(G, name, &a, 1));
  TRY(check_operand(G, name, b, 2));
  TRY(glia_check_inplace(G, name, t));
  TRY(glia_check_no_overlap(G, name, t));
  if (b->kind == GLIA_VAL_TENSOR) {
    int nd;
    int64_t shape[GLIA_MAX_DIMS];
    TRY(glia_broadcast_shape(G, name, t->ndim, t->size, b->u.t->ndim, b->u.t->size, &nd,
                             shape));
    if (!glia_has_shape(t, nd, shape))
      return glia_fail(G, GLIA_ESHAPE, "%s: in-place result %s would not fit in %s", name,
                       glia_sizes_str(nd, shape), glia_shape_str(t));
  }
  glia_value bc = *b;
  if (b->kind == GLIA_VAL_TENSOR && glia_tensor_overlaps(t, b->u.t)) {
    /* x:add_(x:t()): read a copy of the operand, not x as it changes */
    TRY(glia_tensor_clone(G, b->u.t, &bc.u.t));
  }
  run_binary(G, d, t, &a, &bc);
  if (bc.kind == GLIA_VAL_TENSOR && bc.u.t != b->u.t) glia_tensor_release(bc.u.t);
  glia_tensor_bump_version(t);
  return GLIA_OK;
}

glia_status glia_check_inplace(glia_ctx *G, const char *name, glia_tensor *t) {
  if (G->grad_mode && glia_tensor_needs_grad(t))
    return glia_fail(G, GLIA_EGRAD,
                     "%s: in-place op on a tensor that requires grad %s (use glia.no_grad, "
                     "or the out-of-place form)",
                     name, glia_shape_str(t));
  return GLIA_OK;
}

glia_status glia_check_no_overlap(glia_ctx *G, const char *name, const glia_tensor *t) {
  for (int d = 0; d < t->ndim; d++)
    if (t->stride[d] == 0 && t->size[d] > 1)
      return glia_fail(G, GLIA_EARG,
                       "%s: in-place op on an expanded tensor %s, whose elements share memory "
                       "(make a copy with :contiguous() first)",
                       name, glia_shape_str(t));
  return GLIA_OK;
}

/* ============================================== backward: arithmetic */

/* Small helpers: binary op on two tensors / tensor and scalar. */
glia_status glia_tt(glia_ctx *G, glia_binop op, glia_tensor *a, glia_tensor *b,
                    glia_tensor **out) {
  glia_value va = {.kind = GLIA_VAL_TENSOR, .u.t = a}, vb = {.kind = GLIA_VAL_TENSOR, .u.t = b};
  return glia_binary(G, op, &va, &vb, out);
}
glia_status glia_ts(glia_ctx *G, glia_binop op, glia_tensor *a, double s, glia_tensor **out) {
  glia_value va = {.kind = GLIA_VAL_TENSOR, .u.t = a}, vb = {.kind = GLIA_VAL_NUMBER, .u.num = s};
  return glia_binary(G, op, &va, &vb, out);
}

static glia_status add_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  (void)G;
  for (int i = 0; i < 2; i++)
    if (n->needs[i]) din[i] = glia_tensor_retain(g);
  return GLIA_OK;
}

static glia_status sub_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  if (n->needs[0]) din[0] = glia_tensor_retain(g);
  if (n->needs[1]) TRY(glia_ts(G, GLIA_BIN_MUL, g, -1.0, &din[1]));
  return GLIA_OK;
}

/* Saved operand i as a tensor, or NULL when it was a scalar. */
static glia_status saved2(glia_ctx *G, glia_node *n, glia_tensor **a, glia_tensor **b) {
  TRY(glia_node_saved(G, n, 0, a));
  return glia_node_saved(G, n, 1, b);
}

static glia_status mul_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  glia_tensor *a, *b;
  TRY(saved2(G, n, &a, &b));
  if (n->needs[0])
    TRY(b ? glia_tt(G, GLIA_BIN_MUL, g, b, &din[0]) : glia_ts(G, GLIA_BIN_MUL, g, n->farg[1], &din[0]));
  if (n->needs[1])
    TRY(a ? glia_tt(G, GLIA_BIN_MUL, g, a, &din[1]) : glia_ts(G, GLIA_BIN_MUL, g, n->farg[0], &din[1]));
  return GLIA_OK;
}

static glia_status div_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  glia_tensor *a, *b, *out;
  TRY(saved2(G, n, &a, &b));
  TRY(glia_node_saved(G, n, 2, &out));
  if (n->needs[0])
    TRY(b ? glia_tt(G, GLIA_BIN_DIV, g, b, &din[0]) : glia_ts(G, GLIA_BIN_DIV, g, n->farg[1], &din[0]));
  if (n->needs[1]) { /* d(a/b)/db = -out/b */
    glia_tensor *t;
    TRY(glia_tt(G, GLIA_BIN_MUL, g, out, &t));
    glia_status st = glia_tt(G, GLIA_BIN_DIV, t, b, &din[1]);
    glia_tensor_release(t);
    TRY(st);
    TRY(glia_unary_(G, GLIA_UN_NEG, din[1]));
  }
  return GLIA_OK;
}

/* pow's input gradients in one pass each: da = g b a^(b-1), db = g a^b ln a,
** with torch's values where those formulas give 0 * inf = NaN: da = 0 where
** b == 0, db = 0 where a == 0 and b >= 0. */
typedef struct {
  pair_arg ab;
  int wrt_b;
} powgrad_arg;

static void powgrad_loop(int64_t n, char **p, const int64_t *s, void *ud) {
  const powgrad_arg *k = ud;
  for (int64_t i = 0; i < n; i++) {
    float a = pair_a(&k->ab, p[1] + i * s[1]);
    float b = pair_b(&k->ab, p[2] + i * s[2]);
    float g = *(const float *)(p[3] + i * s[3]);
    float r;
    if (k->wrt_b) r = a == 0.0f && b >= 0.0f ? 0.0f : g * powf(a, b) * logf(a);
    else r = b == 0.0f ? 0.0f : g * b * powf(a, b - 1.0f);
    *(float *)(p[0] + i * s[0]) = r;
  }
}

static glia_status pow_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  glia_tensor *a, *b;
  TRY(saved2(G, n, &a, &b));
  for (int i = 0; i < 2; i++) {
    if (!n->needs[i]) continue;
    TRY(glia_tensor_new(G, GLIA_DTYPE_F32, n->out_ndim, n->out_size, &din[i]));
    powgrad_arg k = {saved_pair(n, a, b), i};
    glia_tensor *ops[4] = {din[i], a ? a : din[i], b ? b : din[i], g};
    glia_iter(G, 4, ops, powgrad_loop, &k, GRAIN);
  }
  return GLIA_OK;
}

/* maximum/minimum: the gradient goes to the operand that was chosen; a tie
** splits it in halves (as PyTorch does), a NaN takes all of it. */
typedef struct {
  pair_arg ab;
  int is_max;
} pick_arg;

static void pick_loop(int64_t n, char **p, const int64_t *s, void *ud) {
  const pick_arg *k = ud;
  for (int64_t i = 0; i < n; i++) {
    float x = pair_a(&k->ab, p[1] + i * s[1]);
    float y = pair_b(&k->ab, p[2] + i * s[2]);
    bool first = k->is_max ? (x > y || isnan(x)) : (x < y || isnan(x));
    *(float *)(p[0] + i * s[0]) = first ? 1.0f : x == y ? 0.5f : 0.0f;
  }
}

static glia_status minmax_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  glia_tensor *a, *b, *mask;
  TRY(saved2(G, n, &a, &b));
  TRY(glia_tensor_new(G, GLIA_DTYPE_F32, n->out_ndim, n->out_size, &mask));
  pick_arg k = {saved_pair(n, a, b), n->iarg[0] == GLIA_BIN_MAX};
  glia_tensor *ops[3] = {mask, a ? a : mask, b ? b : mask};
  glia_iter(G, 3, ops, pick_loop, &k, GRAIN);
  glia_status st = GLIA_OK;
  if (n->needs[0]) st = glia_tt(G, GLIA_BIN_MUL, g, mask, &din[0]);
  if (st == GLIA_OK && n->needs[1]) { /* g * (1 - mask) */
    glia_tensor *inv = NULL;
    st = glia_ts(G, GLIA_BIN_SUB, mask, 1.0, &inv);
    if (st == GLIA_OK) st = glia_unary_(G, GLIA_UN_NEG, inv);
    if (st == GLIA_OK) st = glia_tt(G, GLIA_BIN_MUL, g, inv, &din[1]);
    glia_tensor_release(inv);
  }
  glia_tensor_release(mask);
  return st;
}

/* ===================================================== comparisons */

typedef enum { CMP_EQ, CMP_NE, CMP_LT, CMP_LE, CMP_GT, CMP_GE } cmp_op;

typedef struct {
  cmp_op op;
  glia_dtype da, db;
  double sa, sb;
  int a_scalar, b_scalar;
} cmp_arg;

static void cmp_loop(int64_t n, char **p, const int64_t *s, void *ud) {
  const cmp_arg *k = ud;
  for (int64_t i = 0; i < n; i++) {
    double x = k->a_scalar ? k->sa : glia_elem_get(p[1] + i * s[1], k->da, 0);
    double y = k->b_scalar ? k->sb : glia_elem_get(p[2] + i * s[2], k->db, 0);
    bool r;
    switch (k->op) {
    case CMP_EQ: r = x == y; break;
    case CMP_NE: r = x != y; break;
    case CMP_LT: r = x < y; break;
    case CMP_LE: r = x <= y; break;
    case CMP_GT: r = x > y; break;
    default: r = x >= y; break;
    }
    *(uint8_t *)(p[0] + i * s[0]) = r;
  }
}

static glia_status compare(glia_ctx *G, const char *name, cmp_op op, int nargs,
                           glia_value *args, int *nouts, glia_value *outs) {
  (void)nargs;
  glia_value *a = &args[0], *b = &args[1];
  glia_tensor *ta = arg_t(a), *tb = arg_t(b);
  if (!ta && !tb) return glia_fail(G, GLIA_EARG, "%s: expected at least one tensor", name);
  if (ta && tb && ta->dtype != tb->dtype)
    return glia_fail(G, GLIA_EDTYPE, "%s: dtypes differ, %s %s vs %s %s", name,
                     glia_dtype_name(ta->dtype), glia_shape_str(ta), glia_dtype_name(tb->dtype),
                     glia_shape_str(tb));
  int nd;
  int64_t shape[GLIA_MAX_DIMS];
  TRY(result_shape(G, name, ta, tb, &nd, shape));
  glia_tensor *r;
  TRY(glia_tensor_new(G, GLIA_DTYPE_BOOL, nd, shape, &r));
  cmp_arg k = {op, ta ? ta->dtype : GLIA_DTYPE_F64, tb ? tb->dtype : GLIA_DTYPE_F64,
               arg_num(a, 0), arg_num(b, 0), !ta, !tb};
  glia_tensor *ops[3] = {r, ta ? ta : r, tb ? tb : r};
  glia_iter(G, 3, ops, cmp_loop, &k, GRAIN);
  return out1(nouts, outs, r);
}

#define COMPARE_OP(NAME, OP)                                                  \
  static glia_status op_##NAME(glia_ctx *G, int nargs, glia_value *args, int *nouts, \
                               glia_value *outs) {                            \
    return compare(G, "glia." #NAME, OP, nargs, args, nouts, outs);          \
  }
COMPARE_OP(eq, CMP_EQ)
COMPARE_OP(ne, CMP_NE)
COMPARE_OP(lt, CMP_LT)
COMPARE_OP(le, CMP_LE)
COMPARE_OP(gt, CMP_GT)
COMPARE_OP(ge, CMP_GE)

/* ================================================ where, masked_fill */

static glia_status check_mask(glia_ctx *G, const char *name, glia_tensor *m) {
  if (m->dtype != GLIA_DTYPE_BOOL && m->dtype != GLIA_DTYPE_U8)
    return glia_fail(G, GLIA_EDTYPE, "%s: mask must be bool or u8, got %s %s", name,
                     glia_dtype_name(m->dtype), glia_shape_str(m));
  return GLIA_OK;
}

static void where_loop(int64_t n, char **p, const int64_t *s, void *ud) {
  const pair_arg *k = ud;
  for (int64_t i = 0; i < n; i++) {
    bool c = *(const uint8_t *)(p[1] + i * s[1]) != 0;
    float v = c ? pair_a(k, p[2] + i * s[2]) : pair_b(k, p[3] + i * s[3]);
    *(float *)(p[0] + i * s[0]) = v;
  }
}

/* out = cond ? a : b, each of a/b a tensor or a number; errors name op
** `name` (where, or masked_fill built on it). */
static glia_status where_fwd(glia_ctx *G, const char *name, glia_tensor *cond,
                             const glia_value *a, const glia_value *b, glia_tensor **out) {
  TRY(check_mask(G, name, cond));
  TRY(check_operand(G, name, a, 2));
  TRY(check_operand(G, name, b, 3));
  glia_tensor *ta = arg_t((glia_value *)a), *tb = arg_t((glia_value *)b);
  int nd = cond->ndim;
  int64_t shape[GLIA_MAX_DIMS];
  memcpy(shape, cond->size, sizeof shape);
  if (ta) TRY(glia_broadcast_shape(G, name, nd, shape, ta->ndim, ta->size, &nd, shape));
  if (tb) TRY(glia_broadcast_shape(G, name, nd, shape, tb->ndim, tb->size, &nd, shape));
  glia_tensor *r;
  TRY(glia_tensor_new(G, GLIA_DTYPE_F32, nd, shape, &r));
  pair_arg k = {(float)arg_num(a, 0), (float)arg_num(b, 0), !ta, !tb};
  glia_tensor *ops[4] = {r, cond, ta ? ta : r, tb ? tb : r};
  glia_iter(G, 4, ops, where_loop, &k, GRAIN);
  *out = r;
  return GLIA_OK;
}

static glia_status where_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  glia_tensor *cond;
  TRY(glia_node_saved(G, n, 0, &cond));
  glia_value zero = {.kind = GLIA_VAL_NUMBER, .u.num = 0};
  glia_value vg = {.kind = GLIA_VAL_TENSOR, .u.t = g};
  /* input 0 is the condition: no gradient */
  if (n->needs[1]) TRY(where_fwd(G, n->name, cond, &vg, &zero, &din[1]));
  if (n->needs[2]) TRY(where_fwd(G, n->name, cond, &zero, &vg, &din[2]));
  return glia_grads_to_inputs(G, n, din);
}

static glia_status record_where(glia_ctx *G, const char *name, glia_tensor *cond, glia_tensor *a,
                                glia_tensor *b, glia_tensor *r) {
  glia_tensor *in[3] = {cond, a, b};
  glia_status st;
  glia_node *node = glia_node_begin(G, name, where_bwd, 3, in, &st);
  if (!node) return st;
  node->needs[0] = false;
  return glia_node_end(node, glia_node_save(G, node, cond), r);
}

/* where(cond, a, b) */
static glia_status op_where(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                            glia_value *outs) {
  (void)nargs;
  glia_tensor *r;
  TRY(where_fwd(G, "glia.where", args[0].u.t, &args[1], &args[2], &r));
  glia_status st = record_where(G, "glia.where", args[0].u.t, arg_t(&args[1]), arg_t(&args[2]), r);
  if (st != GLIA_OK) {
    glia_tensor_release(r);
    return st;
  }
  return out1(nouts, outs, r);
}

/* masked_fill(x, mask, value) = where(mask, value, x) */
static glia_status op_masked_fill(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                  glia_value *outs) {
  (void)nargs;
  glia_tensor *x = args[0].u.t, *mask = args[1].u.t, *r;
  TRY(glia_masked_fill(G, x, mask, arg_num(&args[2], 0), &r));
  return out1(nouts, outs, r);
}

glia_status glia_masked_fill(glia_ctx *G, glia_tensor *x, glia_tensor *mask, double value,
                             glia_tensor **out) {
  glia_value vx = {.kind = GLIA_VAL_TENSOR, .u.t = x};
  glia_value vv = {.kind = GLIA_VAL_NUMBER, .u.num = value};
  glia_tensor *r;
  TRY(check_operand(G, "glia.masked_fill", &vx, 1)); /* where_fwd would call x argument 3 */
  TRY(where_fwd(G, "glia.masked_fill", mask, &vv, &vx, &r));
  if (!glia_has_shape(r, x->ndim, x->size)) {
    glia_tensor_release(r);
    return glia_fail(G, GLIA_ESHAPE, "glia.masked_fill: mask %s does not broadcast to %s",
                     glia_shape_str(mask), glia_shape_str(x));
  }
  glia_status st = record_where(G, "glia.masked_fill", mask, NULL, x, r);
  return glia_hand_out(st, r, out);
}

static glia_status op_masked_fill_(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                   glia_value *outs) {
  (void)nargs;
  glia_tensor *x = args[0].u.t, *mask = args[1].u.t;
  static const char name[] = "glia.masked_fill_";
  TRY(check_mask(G, name, mask));
  glia_value vx = {.kind = GLIA_VAL_TENSOR, .u.t = x};
  TRY(check_operand(G, name, &vx, 1));
  TRY(glia_check_inplace(G, name, x));
  TRY(glia_check_no_overlap(G, name, x));
  int nd;
  int64_t shape[GLIA_MAX_DIMS];
  TRY(glia_broadcast_shape(G, name, x->ndim, x->size, mask->ndim, mask->size, &nd, shape));
  if (!glia_has_shape(x, nd, shape))
    return glia_fail(G, GLIA_ESHAPE, "%s: mask %s does not broadcast to %s", name,
                     glia_shape_str(mask), glia_shape_str(x));
  pair_arg k = {(float)arg_num(&args[2], 0), 0, 1, 0};
  glia_tensor *ops[4] = {x, mask, x, x};
  glia_iter(G, 4, ops, where_loop, &k, GRAIN);
  glia_tensor_bump_version(x);
  return out1(nouts, outs, glia_tensor_retain(x));
}

/* ====================================================== registry */

#define BINARY_OP(NAME, OP)                                                   \
  static glia_status op_##NAME(glia_ctx *G, int nargs, glia_value *args, int *nouts, \
                               glia_value *outs) {                            \
    (void)nargs;                                                              \
    glia_tensor *r;                                                           \
    TRY(glia_binary(G, OP, &args[0], &args[1], &r));                          \
    return out1(nouts, outs, r);                                              \
  }                                                                           \
  static glia_status op_##NAME##_(glia_ctx *G, int nargs, glia_value *args, int *nouts, \
                                  glia_value *outs) {                         \
    (void)nargs;                                                              \
    TRY(glia_binary_(G, OP, args[0].u.t, &args[1]));                          \
    return out1(nouts, outs, glia_tensor_retain(args[0].u.t));                \
  }
BINARY_OP(add, GLIA_BIN_ADD)
BINARY_OP(sub, GLIA_BIN_SUB)
BINARY_OP(mul, GLIA_BIN_MUL)
BINARY_OP(div, GLIA_BIN_DIV)
BINARY_OP(pow, GLIA_BIN_POW)
BINARY_OP(maximum, GLIA_BIN_MAX)
BINARY_OP(minimum, GLIA_BIN_MIN)

const glia_op glia_ops_elementwise[] = {
    {"add", "SS", op_add, 1},          {"sub", "SS", op_sub, 1},
    {"mul", "SS", op_mul, 1},          {"div", "SS", op_div, 1},
    {"pow", "SS", op_pow, 1},          {"maximum", "SS", op_maximum, 1},
    {"minimum", "SS", op_minimum, 1},  {"add_", "TS", op_add_, 1},
    {"sub_", "TS", op_sub_, 1},        {"mul_", "TS", op_mul_, 1},
    {"div_", "TS", op_div_, 1},        {"pow_", "TS", op_pow_, 1},
    {"maximum_", "TS", op_maximum_, 1}, {"minimum_", "TS", op_minimum_, 1},
    {"eq", "SS", op_eq, 1},            {"ne", "SS", op_ne, 1},
    {"lt", "SS", op_lt, 1},            {"le", "SS", op_le, 1},
    {"gt", "SS", op_gt, 1},            {"ge", "SS", op_ge, 1},
    {"where", "TSS", op_where, 0},     {"masked_fill", "TTn", op_masked_fill, 1},
    {"masked_fill_", "TTn", op_masked_fill_, 1},
    {NULL, NULL, NULL, 0},
};
