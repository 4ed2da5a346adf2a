/*
** ops/unary.c -- unary elementwise ops on f32: neg, abs, exp, log, sqrt,
** rsqrt, tanh, sigmoid, relu, gelu (exact with erf, or the tanh approximation),
** silu and clamp, plus their in-place forms (neg_, ..., clamp_).
**
** Every kernel is a *block*: a loop over BLOCK contiguous floats that gcc
** vectorizes at -O2 (its cost model accepts loops of a known trip count).
** libm calls are opaque to the vectorizer (and may set errno), so the
** transcendental functions are written here, branch-free: exp through
** glia_expf (ops/ops.h), log and the normal CDF below; sqrt uses SSE's
** correctly rounded sqrtps on x86, the one instruction gcc will not emit
** for sqrtf without -fno-math-errno. Without -ffast-math, NaN and infinities
** behave as IEEE says; the tests hold each function to its libm value.
**
** The iterator's runs are cut into blocks; a partial or strided block is
** first gathered into an aligned buffer. So each element goes through the
** same instructions whatever the strides or the split between threads:
** results are bit-identical for any thread count and any layout.
**
** Backward kernels are blocks too, over (v, g): v is the value the forward
** saved (the input or the output, whichever the derivative is cheaper
** from), g the gradient of the output.
*/
#include "glia_impl.h"
#include "ops.h"

#include <math.h>
#ifdef __SSE__
#include <xmmintrin.h>
#endif

#define BLOCK 64

/* gelu's tanh approximation: gelu(x) = x * sigmoid(2u), u = C0 (x + C1 x^3),
** the same value as 0.5 x (1 + tanh(u)) without its cancellation near -1. */
#define GELU_C0 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_C1 0.044715f
#define INV_SQRT2PI 0.3989422804014327f

/* ======================================================== scalar math */

/* a where mask bits are 0, b where they are 1 */
static inline uint32_t blend_bits(uint32_t a, uint32_t b, uint32_t mask) {
  return (a & ~mask) | (b & mask);
}
static inline uint32_t mask_of(bool c) { return -(uint32_t)c; }

/* log to ~1 ulp: x = m 2^k with m in [sqrt(1/2), sqrt(2)) found by integer
** arithmetic on the bits (as ARM's optimized-routines logf does), then
** log(m) by Cephes logf's polynomial in m - 1. Subnormals are scaled by 2^23
** first. Special inputs are patched in by bit masks, not ?: -- gcc turns
** those selects into branches around the polynomial here, and will not
** if-convert float ops back (they might trap), which keeps the loop scalar. */
static inline float log_f(float x) {
  float xs = x * 8388608.0f;
  uint32_t ix0, is;
  memcpy(&ix0, &x, sizeof ix0);
  memcpy(&is, &xs, sizeof is);
  uint32_t sub = mask_of(x < 1.17549435e-38f); /* also 0, negatives: patched below */
  uint32_t ix = blend_bits(ix0, is, sub);
  uint32_t tmp = ix - 0x3f3504f3u; /* the bits of sqrt(1/2) */
  int32_t k = ((int32_t)tmp >> 23) - (int32_t)(sub & 23);
  uint32_t im = ix - (tmp & 0xff800000u);
  float m;
  memcpy(&m, &im, sizeof m);
  float f = m - 1.0f, fe = (float)k, z = f * f;
  float y = ((((((((7.0376836292e-2f * f - 1.1514610310e-1f) * f + 1.1676998740e-1f) * f -
                  1.2420140846e-1f) * f + 1.4249322787e-1f) * f - 1.6668057665e-1f) * f +
               2.0000714765e-1f) * f - 2.4999993993e-1f) * f + 3.3333331174e-1f) * f * z;
  y += -2.12194440e-4f * fe - 0.5f * z; /* ln2 in two parts, as in glia_expf */
  float r = f + y + 0.693359375f * fe;
  uint32_t rb;
  memcpy(&rb, &r, sizeof rb);
  rb = blend_bits(rb, ix0, mask_of(x == INFINITY));        /* log inf = inf */
  rb = blend_bits(rb, 0xff800000u, mask_of(x == 0.0f));    /* log +-0 = -inf */
  rb = blend_bits(rb, 0x7fc00000u, mask_of(!(x >= 0.0f))); /* negatives, NaN */
  memcpy(&r, &rb, sizeof r);
  return r;
}

/* tanh to ~1.5e-7 relative (Cephes tanhf): an odd polynomial near 0, where
** 1 - 2/(e^2x + 1) would lose digits to cancellation, the exp form beyond.
** Both sides are computed and one selected, so the loop stays branch-free. */
static inline float tanh_f(float x) {
  float z = fabsf(x), x2 = x * x;
  float big = 1.0f - 2.0f / (glia_expf(z + z) + 1.0f);
  float small = ((((-5.70498872745e-3f * x2 + 2.06390887954e-2f) * x2 - 5.37397155531e-2f) * x2 +
                  1.33314422036e-1f) * x2 - 3.33332819422e-1f) * x2 * x + x;
  return z > 0.625f ? copysignf(big, x) : small;
}

static inline float sigmoid_f(float x) { return 1.0f / (1.0f + glia_expf(-x)); }

/* x * gate(x) with gate -> 0 as x -> -inf evaluates to -inf * 0 = NaN at
** x = -inf; the limit is 0. */
static inline float gated(float x, float y) { return x == -INFINITY ? -0.0f : y; }

static inline float gelu_u(float x) { return GELU_C0 * (x + GELU_C1 * x * x * x); }

static inline float gelu_f(float x) {
  return gated(x, x / (1.0f + glia_expf(-2.0f * gelu_u(x))));
}

/* The standard normal CDF, Phi(x) = erfc(-x / sqrt 2) / 2, through erfc of
** |x| / sqrt 2 (Numerical Recipes' erfcc, one formula for the whole range:
** relative error < 1.2e-7 in exact arithmetic, < 4e-6 measured in f32 down
** to Phi = 1e-31), so that both tails keep their relative accuracy. */
static inline float phi_f(float x) {
  float z = fabsf(x) * (float)M_SQRT1_2;
  float t = 1.0f / (1.0f + 0.5f * z);
  float p = -1.26551223f + t * (1.00002368f + t * (0.37409196f + t * (0.09678418f +
            t * (-0.18628806f + t * (0.27886807f + t * (-1.13520398f + t * (1.48851587f +
            t * (-0.82215223f + t * 0.17087277f))))))));
  float tail = 0.5f * t * glia_expf(p - 0.5f * x * x); /* P(N(0,1) > |x|) */
  return x < 0.0f ? tail : 1.0f - tail;
}

static inline float gelu_erf_f(float x) { return gated(x, x * phi_f(x)); }

/* d gelu/dx = s (1 + 2 C0 x (1 - s) (1 + 3 C1 x^2)), s = sigmoid(2u) */
static inline float gelu_grad(float x) {
  float s = 1.0f / (1.0f + glia_expf(-2.0f * gelu_u(x)));
  return s * (1.0f + 2.0f * GELU_C0 * x * (1.0f - s) * (1.0f + 3.0f * GELU_C1 * x * x));
}

/* d gelu_erf/dx = Phi(x) + x N'(x) */
static inline float gelu_erf_grad(float x) {
  return phi_f(x) + x * INV_SQRT2PI * glia_expf(-0.5f * x * x);
}

/* max then min, as torch does: with lo > hi every element becomes hi; NaN
** stays NaN (both comparisons are false). */
static inline float clamp_f(float x, float lo, float hi) {
  float y = x < lo ? lo : x;
  return y > hi ? hi : y;
}

static inline float silu_grad(float x) {
  float s = sigmoid_f(x);
  return s * (1.0f + x * (1.0f - s));
}

/* ============================================================ blocks */

/* clamp's bounds; +-inf when a bound is absent. Unused by the other ops. */
typedef struct {
  float lo, hi;
} unary_arg;

/* o[i] = f(a[i]) (forward) or f(a[i], b[i]) (backward) for i < BLOCK.
** o may be a (in-place forms); no other overlap. */
typedef void (*block_fn)(float *o, const float *a, const float *b, const unary_arg *k);

/* Forward block: x is the input element. */
#define FWD_BLOCK(NAME, EXPR)                                                 \
  static void NAME##_fwd(float *o, const float *a, const float *b,           \
                         const unary_arg *k) {                                \
    (void)b;                                                                  \
    (void)k;                                                                  \
    _Pragma("GCC ivdep") for (int i = 0; i < BLOCK; i++) {                    \
      const float x = a[i];                                                   \
      o[i] = (EXPR);                                                          \
    }                                                                         \
  }

/* Backward block: v is the saved value, g the output gradient. */
#define BWD_BLOCK(NAME, EXPR)                                                 \
  static void NAME##_bwd(float *o, const float *a, const float *b,           \
                         const unary_arg *k) {                                \
    (void)k;                                                                  \
    _Pragma("GCC ivdep") for (int i = 0; i < BLOCK; i++) {                    \
      const float v = a[i], g = b[i];                                         \
      (void)v;                                                                \
      o[i] = (EXPR);                                                          \
    }                                                                         \
  }

FWD_BLOCK(neg, -x)
BWD_BLOCK(neg, -g) /* v is g itself: neg saves nothing */

FWD_BLOCK(abs, fabsf(x))
BWD_BLOCK(abs, v > 0.0f ? g : v < 0.0f ? -g : 0.0f) /* v = x */

FWD_BLOCK(exp, glia_expf(x))
BWD_BLOCK(exp, g * v) /* v = exp(x) */

FWD_BLOCK(log, log_f(x))
BWD_BLOCK(log, g / v) /* v = x */

static void sqrt_fwd(float *o, const float *a, const float *b, const unary_arg *k) {
  (void)b;
  (void)k;
#ifdef __SSE__
  for (int i = 0; i < BLOCK; i += 4) _mm_storeu_ps(o + i, _mm_sqrt_ps(_mm_loadu_ps(a + i)));
#else
  for (int i = 0; i < BLOCK; i++) o[i] = sqrtf(a[i]);
#endif
}
BWD_BLOCK(sqrt, g / (2.0f * v)) /* v = sqrt(x) */

static void rsqrt_fwd(float *o, const float *a, const float *b, const unary_arg *k) {
  sqrt_fwd(o, a, b, k);
  _Pragma("GCC ivdep") for (int i = 0; i < BLOCK; i++) o[i] = 1.0f / o[i];
}
BWD_BLOCK(rsqrt, -0.5f * g * v * v * v) /* v = x^-1/2 */

FWD_BLOCK(tanh, tanh_f(x))
BWD_BLOCK(tanh, g * (1.0f - v * v)) /* v = tanh(x) */

FWD_BLOCK(sigmoid, sigmoid_f(x))
BWD_BLOCK(sigmoid, g * v * (1.0f - v)) /* v = sigmoid(x) */

/* x < 0 ? 0 : x keeps NaN (x > 0 ? x : 0 would zero it) */
FWD_BLOCK(relu, x < 0.0f ? 0.0f : x)
BWD_BLOCK(relu, v > 0.0f ? g : 0.0f) /* v = relu(x) */

FWD_BLOCK(gelu, gelu_f(x))
BWD_BLOCK(gelu, g * gelu_grad(v)) /* v = x */

FWD_BLOCK(gelu_erf, gelu_erf_f(x))
BWD_BLOCK(gelu_erf, g * gelu_erf_grad(v)) /* v = x */

FWD_BLOCK(silu, gated(x, x / (1.0f + glia_expf(-x))))
BWD_BLOCK(silu, g * silu_grad(v)) /* v = x */

/* y = op(x) (dx = dy * op'(x) when dy is given) over n contiguous floats
** through the op's own blocks, the tail through a block-sized buffer: the
** same bits as the tensor op. y (dx) may be x. */
static void rows_via_blocks(block_fn fn, float *y, const float *x, const float *dy, int64_t n) {
  float ab[BLOCK] __attribute__((aligned(64))) = {0}, bb[BLOCK] __attribute__((aligned(64))) = {0};
  int64_t i = 0;
  for (; i + BLOCK <= n; i += BLOCK) fn(y + i, x + i, dy ? dy + i : NULL, NULL);
  if (i < n) {
    memcpy(ab, x + i, (size_t)(n - i) * sizeof *ab);
    if (dy) memcpy(bb, dy + i, (size_t)(n - i) * sizeof *bb);
    fn(ab, ab, bb, NULL);
    memcpy(y + i, ab, (size_t)(n - i) * sizeof *ab);
  }
}

/* In place, through the vectorized block (a plain loop over gelu_f stays
** scalar): every element is computed by the very instructions of glia.gelu. */
void glia_gelu_rows(float *x, int64_t n) { rows_via_blocks(gelu_fwd, x, x, NULL, n); }

/* The activations whose backward reads the input x (relu's reads its
** output, which is > 0 exactly where x is). */
static block_fn act_block(glia_unop op, bool grad) {
  switch (op) {
  case GLIA_UN_RELU: return grad ? relu_bwd : relu_fwd;
  case GLIA_UN_GELU: return grad ? gelu_bwd : gelu_fwd;
  case GLIA_UN_GELU_ERF: return grad ? gelu_erf_bwd : gelu_erf_fwd;
  default: return grad ? silu_bwd : silu_fwd;
  }
}

void glia_act_rows(glia_unop op, float *y, const float *x, int64_t n) {
  rows_via_blocks(act_block(op, false), y, x, NULL, n);
}

void glia_act_grad_rows(glia_unop op, float *dx, const float *dy, const float *x, int64_t n) {
  rows_via_blocks(act_block(op, true), dx, x, dy, n);
}

FWD_BLOCK(clamp, clamp_f(x, k->lo, k->hi))
BWD_BLOCK(clamp, v >= k->lo && v <= k->hi ? g : 0.0f) /* v = x */

/* ====================================================== block driver */

typedef struct {
  block_fn fn;
  int nin; /* 1 (forward) or 2 (backward) */
  unary_arg k;
} run_arg;

static void gather(float *dst, const char *p, int64_t s, int64_t m) {
  for (int64_t i = 0; i < m; i++) dst[i] = *(const float *)(p + i * s);
  for (int64_t i = m; i < BLOCK; i++) dst[i] = 0.0f;
}

/* glia_iter loop: p[0] the output, p[1] (and p[2]) the inputs. */
static void block_loop(int64_t n, char **p, const int64_t *s, void *ud) {
  const run_arg *r = ud;
  float ob[BLOCK] __attribute__((aligned(64)));
  float ab[BLOCK] __attribute__((aligned(64)));
  float bb[BLOCK] __attribute__((aligned(64)));
  bool contig = s[0] == 4 && s[1] == 4 && (r->nin == 1 || s[2] == 4);
  for (int64_t i = 0; i < n; i += BLOCK) {
    int64_t m = n - i < BLOCK ? n - i : BLOCK;
    const float *b = r->nin == 2 ? (const float *)(p[2] + i * s[2]) : NULL;
    if (contig && m == BLOCK) {
      r->fn((float *)(p[0] + i * s[0]), (const float *)(p[1] + i * s[1]), b, &r->k);
      continue;
    }
    gather(ab, p[1] + i * s[1], s[1], m);
    if (b) gather(bb, (const char *)b, s[2], m);
    r->fn(ob, ab, b ? bb : NULL, &r->k);
    for (int64_t j = 0; j < m; j++) *(float *)(p[0] + (i + j) * s[0]) = ob[j];
  }
}

/* out[i] = fn(a[i] [, b[i]]); a and b broadcast to out's shape. */
static void run_blocks(glia_ctx *G, block_fn fn, glia_tensor *out, glia_tensor *a,
                       glia_tensor *b, unary_arg k) {
  run_arg r = {fn, b ? 2 : 1, k};
  glia_tensor *ops[3] = {out, a, b};
  glia_iter(G, b ? 3 : 2, ops, block_loop, &r, GRAIN);
}

/* ==================================================== forward, backward */

enum { SAVE_NONE, SAVE_INPUT, SAVE_OUTPUT };

typedef struct {
  const char *name, *name_; /* out-of-place and in-place names */
  block_fn fwd, bwd;
  int saves;
} unary_def;

/* clamp shares the machinery; its bounds travel in unary_arg. */
#define UN_CLAMP GLIA_UN_COUNT

static const unary_def unary_defs[GLIA_UN_COUNT + 1] = {
    [GLIA_UN_NEG] = {"glia.neg", "glia.neg_", neg_fwd, neg_bwd, SAVE_NONE},
    [GLIA_UN_ABS] = {"glia.abs", "glia.abs_", abs_fwd, abs_bwd, SAVE_INPUT},
    [GLIA_UN_EXP] = {"glia.exp", "glia.exp_", exp_fwd, exp_bwd, SAVE_OUTPUT},
    [GLIA_UN_LOG] = {"glia.log", "glia.log_", log_fwd, log_bwd, SAVE_INPUT},
    [GLIA_UN_SQRT] = {"glia.sqrt", "glia.sqrt_", sqrt_fwd, sqrt_bwd, SAVE_OUTPUT},
    [GLIA_UN_RSQRT] = {"glia.rsqrt", "glia.rsqrt_", rsqrt_fwd, rsqrt_bwd, SAVE_OUTPUT},
    [GLIA_UN_TANH] = {"glia.tanh", "glia.tanh_", tanh_fwd, tanh_bwd, SAVE_OUTPUT},
    [GLIA_UN_SIGMOID] = {"glia.sigmoid", "glia.sigmoid_", sigmoid_fwd, sigmoid_bwd, SAVE_OUTPUT},
    [GLIA_UN_RELU] = {"glia.relu", "glia.relu_", relu_fwd, relu_bwd, SAVE_OUTPUT},
    [GLIA_UN_GELU] = {"glia.gelu", "glia.gelu_", gelu_fwd, gelu_bwd, SAVE_INPUT},
    [GLIA_UN_GELU_ERF] = {"glia.gelu", "glia.gelu_", gelu_erf_fwd, gelu_erf_bwd, SAVE_INPUT},
    [GLIA_UN_SILU] = {"glia.silu", "glia.silu_", silu_fwd, silu_bwd, SAVE_INPUT},
    [UN_CLAMP] = {"glia.clamp", "glia.clamp_", clamp_fwd, clamp_bwd, SAVE_INPUT},
};

/* One backward for every op: din = bwd(v, g), v the saved tensor (g itself
** for neg, which needs no saved value). */
static glia_status unary_bwd(glia_ctx *G, glia_node *n, glia_tensor *g, glia_tensor **din) {
  const unary_def *d = &unary_defs[n->iarg[0]];
  glia_tensor *v = g, *r;
  if (d->saves != SAVE_NONE) TRY(glia_node_saved(G, n, 0, &v));
  TRY(glia_tensor_new_like(G, g, GLIA_DTYPE_F32, &r));
  run_blocks(G, d->bwd, r, v, g, (unary_arg){(float)n->farg[0], (float)n->farg[1]});
  din[0] = r;
  return GLIA_OK;
}

/* out = op(x), recording a node when x needs grad. */
static glia_status unary_new(glia_ctx *G, int op, glia_tensor *x, unary_arg k,
                             glia_tensor **out) {
  const unary_def *d = &unary_defs[op];
  TRY(glia_check_f32(G, d->name, "x", x));
  glia_tensor *r;
  TRY(glia_tensor_new_like(G, x, GLIA_DTYPE_F32, &r));
  run_blocks(G, d->fwd, r, x, NULL, k);
  glia_status st;
  glia_node *node = glia_node_begin(G, d->name, unary_bwd, 1, &x, &st);
  if (node) {
    node->iarg[0] = op;
    node->farg[0] = k.lo;
    node->farg[1] = k.hi;
    if (d->saves != SAVE_NONE) st = glia_node_save(G, node, d->saves == SAVE_INPUT ? x : r);
    st = glia_node_end(node, st, r);
  }
  return glia_hand_out(st, r, out);
}

/* x = op(x). Refused when x takes part in autograd or is expanded (its
** elements share memory); bumps x's version so that a node that saved x
** fails in backward instead of using the new values. */
static glia_status unary_inplace(glia_ctx *G, int op, glia_tensor *x, unary_arg k) {
  const unary_def *d = &unary_defs[op];
  TRY(glia_check_f32(G, d->name_, "x", x));
  TRY(glia_check_inplace(G, d->name_, x));
  TRY(glia_check_no_overlap(G, d->name_, x));
  run_blocks(G, d->fwd, x, x, NULL, k);
  glia_tensor_bump_version(x);
  return GLIA_OK;
}

static const unary_arg no_bounds = {-INFINITY, INFINITY};

static glia_status check_op(glia_ctx *G, glia_unop op) {
  if (GLIA_NEVER((unsigned)op >= GLIA_UN_COUNT))
    return glia_fail(G, GLIA_EINTERNAL, "glia_unary: unknown op %d", (int)op);
  return GLIA_OK;
}

glia_status glia_unary(glia_ctx *G, glia_unop op, glia_tensor *x, glia_tensor **out) {
  TRY(check_op(G, op));
  return unary_new(G, op, x, no_bounds, out);
}

glia_status glia_unary_(glia_ctx *G, glia_unop op, glia_tensor *x) {
  TRY(check_op(G, op));
  return unary_inplace(G, op, x, no_bounds);
}

/* NaN bounds mean "none" in the C API; the kernels want +-inf. */
static unary_arg clamp_bounds(double lo, double hi) {
  return (unary_arg){isnan(lo) ? -INFINITY : (float)lo, isnan(hi) ? INFINITY : (float)hi};
}

glia_status glia_clamp(glia_ctx *G, glia_tensor *x, double lo, double hi, glia_tensor **out) {
  return unary_new(G, UN_CLAMP, x, clamp_bounds(lo, hi), out);
}

/* ====================================================== registry */

#define UNARY_OP(NAME, OP)                                                    \
  static glia_status op_##NAME(glia_ctx *G, int nargs, glia_value *args, int *nouts, \
                               glia_value *outs) {                            \
    (void)nargs;                                                              \
    glia_tensor *r;                                                           \
    TRY(glia_unary(G, OP, args[0].u.t, &r));                                  \
    return out1(nouts, outs, r);                                              \
  }                                                                           \
  static glia_status op_##NAME##_(glia_ctx *G, int nargs, glia_value *args, int *nouts, \
                                  glia_value *outs) {                         \
    (void)nargs;                                                              \
    TRY(glia_unary_(G, OP, args[0].u.t));                                     \
    return out1(nouts, outs, glia_tensor_retain(args[0].u.t));                \
  }
UNARY_OP(neg, GLIA_UN_NEG)
UNARY_OP(abs, GLIA_UN_ABS)
UNARY_OP(exp, GLIA_UN_EXP)
UNARY_OP(log, GLIA_UN_LOG)
UNARY_OP(sqrt, GLIA_UN_SQRT)
UNARY_OP(rsqrt, GLIA_UN_RSQRT)
UNARY_OP(tanh, GLIA_UN_TANH)
UNARY_OP(sigmoid, GLIA_UN_SIGMOID)
UNARY_OP(relu, GLIA_UN_RELU)
UNARY_OP(silu, GLIA_UN_SILU)

/* gelu(x [, approximate]): "none"/"erf", the exact form (the default, as
** PyTorch's), or "tanh" (GPT-2's approximation). */
static glia_status gelu_kind(glia_ctx *G, const char *name, const glia_value *a, glia_unop *op) {
  const char *s = arg_present(a) ? a->u.s : "none";
  if (strcmp(s, "tanh") == 0) *op = GLIA_UN_GELU;
  else if (strcmp(s, "none") == 0 || strcmp(s, "erf") == 0) *op = GLIA_UN_GELU_ERF;
  else
    return glia_fail(G, GLIA_EARG, "%s: approximate must be \"tanh\", \"none\" or \"erf\", got \"%s\"",
                     name, s);
  return GLIA_OK;
}

static glia_status op_gelu(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                           glia_value *outs) {
  (void)nargs;
  glia_unop op;
  glia_tensor *r;
  TRY(gelu_kind(G, "glia.gelu", &args[1], &op));
  TRY(glia_unary(G, op, args[0].u.t, &r));
  return out1(nouts, outs, r);
}

static glia_status op_gelu_(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                            glia_value *outs) {
  (void)nargs;
  glia_unop op;
  TRY(gelu_kind(G, "glia.gelu_", &args[1], &op));
  TRY(glia_unary_(G, op, args[0].u.t));
  return out1(nouts, outs, glia_tensor_retain(args[0].u.t));
}

/* clamp(x, lo, hi): either bound may be nil, not both. */
static glia_status clamp_args(glia_ctx *G, const char *name, glia_value *args, unary_arg *k) {
  if (!arg_present(&args[1]) && !arg_present(&args[2]))
    return glia_fail(G, GLIA_EARG, "%s: expected at least one bound (lo or hi)", name);
  *k = clamp_bounds(arg_num(&args[1], NAN), arg_num(&args[2], NAN));
  return GLIA_OK;
}

static glia_status op_clamp(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                            glia_value *outs) {
  (void)nargs;
  unary_arg k;
  glia_tensor *r;
  TRY(clamp_args(G, "glia.clamp", args, &k));
  TRY(unary_new(G, UN_CLAMP, args[0].u.t, k, &r));
  return out1(nouts, outs, r);
}

static glia_status op_clamp_(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                             glia_value *outs) {
  (void)nargs;
  unary_arg k;
  TRY(clamp_args(G, "glia.clamp_", args, &k));
  TRY(unary_inplace(G, UN_CLAMP, args[0].u.t, k));
  return out1(nouts, outs, glia_tensor_retain(args[0].u.t));
}

const glia_op glia_ops_unary[] = {
    {"neg", "T", op_neg, 1},         {"neg_", "T", op_neg_, 1},
    {"abs", "T", op_abs, 1},         {"abs_", "T", op_abs_, 1},
    {"exp", "T", op_exp, 1},         {"exp_", "T", op_exp_, 1},
    {"log", "T", op_log, 1},         {"log_", "T", op_log_, 1},
    {"sqrt", "T", op_sqrt, 1},       {"sqrt_", "T", op_sqrt_, 1},
    {"rsqrt", "T", op_rsqrt, 1},     {"rsqrt_", "T", op_rsqrt_, 1},
    {"tanh", "T", op_tanh, 1},       {"tanh_", "T", op_tanh_, 1},
    {"sigmoid", "T", op_sigmoid, 1}, {"sigmoid_", "T", op_sigmoid_, 1},
    {"relu", "T", op_relu, 1},       {"relu_", "T", op_relu_, 1},
    {"gelu", "T|s", op_gelu, 1},     {"gelu_", "T|s", op_gelu_, 1},
    {"silu", "T", op_silu, 1},       {"silu_", "T", op_silu_, 1},
    {"clamp", "T|nn", op_clamp, 1},  {"clamp_", "T|nn", op_clamp_, 1},
    {NULL, NULL, NULL, 0},
};
