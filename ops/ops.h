/*
** ops/ops.h -- the C entry points op families offer each other.
**
** Backward functions and composite ops call these directly instead of going
** through the registry by name. Each function follows the glia.h contract:
** a status, the result through an out-parameter owned by the caller, the
** message in the context on failure. Dims are 0-based and already
** normalized (no negatives) unless a comment says otherwise. All of them
** record autograd nodes when their inputs need grad.
*/
#ifndef GLIA_OPS_H
#define GLIA_OPS_H

#include "glia_impl.h"

/* Elements of work per pool task, at least: below 2 * GRAIN a loop runs
** inline on the calling thread, where waking workers would cost more than
** it saves. One value for every family, so that their threading agrees. */
#define GRAIN (1 << 15)
/* A 0-based dim or index as the caller of the running op counts it: 1 more
** from Lua, as is from C (the call's index base, vm/registry.c). For
** messages. */
static inline long long glia_shown(const glia_ctx *G, int64_t i) {
  return (long long)(i + glia_index_base(G));
}

/* Fails with GLIA_ERANGE naming op `name` unless 0 <= dim < x's ndim +
** extra (extra 1 admits the position after the last dim: unsqueeze). */
static inline glia_status glia_check_dim(glia_ctx *G, const char *name, const glia_tensor *x,
                                         int dim, int extra) {
  if (dim < 0 || dim >= x->ndim + extra)
    return glia_fail(G, GLIA_ERANGE, "%s: dim %lld out of range for a %d-D tensor %s", name,
                     glia_shown(G, dim), x->ndim, glia_shape_str(x));
  return GLIA_OK;
}

/* Items per task for items of `work` elements each, so that a task touches
** at least GRAIN elements. */
static inline int64_t glia_grain_items(int64_t work) {
  return work > 0 && work < GRAIN ? GRAIN / work : 1;
}

/* ---------------------------------------------- ops/elementwise.c */

typedef enum {
  GLIA_BIN_ADD,
  GLIA_BIN_SUB,
  GLIA_BIN_MUL,
  GLIA_BIN_DIV,
  GLIA_BIN_POW,
  GLIA_BIN_MAX,
  GLIA_BIN_MIN,
  GLIA_BIN_COUNT
} glia_binop;

/* a op b with broadcasting; a and b are tensors or numbers (not both numbers). */
GLIAI_FUNC glia_status glia_binary(glia_ctx *G, glia_binop op, const glia_value *a,
                                   const glia_value *b, glia_tensor **out);
/* t op= b in place (b broadcast to t); refused when t needs grad in grad mode. */
GLIAI_FUNC glia_status glia_binary_(glia_ctx *G, glia_binop op, glia_tensor *t,
                                    const glia_value *b);
GLIAI_FUNC glia_status glia_tt(glia_ctx *G, glia_binop op, glia_tensor *a, glia_tensor *b,
                               glia_tensor **out);
GLIAI_FUNC glia_status glia_ts(glia_ctx *G, glia_binop op, glia_tensor *a, double s,
                               glia_tensor **out);
GLIAI_FUNC glia_status glia_masked_fill(glia_ctx *G, glia_tensor *x, glia_tensor *mask,
                                        double value, glia_tensor **out);
/* Fails when an in-place write to t would break autograd. */
GLIAI_FUNC glia_status glia_check_inplace(glia_ctx *G, const char *name, glia_tensor *t);
/* Fails when elements of t share memory (an expanded view, stride 0): an
** in-place op would update them more than once. */
GLIAI_FUNC glia_status glia_check_no_overlap(glia_ctx *G, const char *name,
                                             const glia_tensor *t);

/* ---------------------------------------------------- ops/unary.c */

typedef enum {
  GLIA_UN_NEG,
  GLIA_UN_ABS,
  GLIA_UN_EXP,
  GLIA_UN_LOG,
  GLIA_UN_SQRT,
  GLIA_UN_RSQRT,
  GLIA_UN_TANH,
  GLIA_UN_SIGMOID,
  GLIA_UN_RELU,
  GLIA_UN_GELU,     /* tanh approximation */
  GLIA_UN_GELU_ERF, /* exact, with erf */
  GLIA_UN_SILU,
  GLIA_UN_COUNT
} glia_unop;

/* out = op(x) for an f32 x of any strides (GLIA_EDTYPE otherwise). */
GLIAI_FUNC glia_status glia_unary(glia_ctx *G, glia_unop op, glia_tensor *x, glia_tensor **out);
/* x = op(x); refused when x needs grad in grad mode; bumps x's version. */
GLIAI_FUNC glia_status glia_unary_(glia_ctx *G, glia_unop op, glia_tensor *x);
/* clamp(x, lo, hi); either bound may be NAN meaning "none". The gradient is
** 1 where lo <= x <= hi, else 0. */
GLIAI_FUNC glia_status glia_clamp(glia_ctx *G, glia_tensor *x, double lo, double hi,
                                  glia_tensor **out);

/* exp(x) in f32 to ~1 ulp, branch-free so that gcc vectorizes loops calling
** it (libm's expf is an opaque call that keeps a loop scalar). Exact at the
** edges: NaN -> NaN, +inf and x > 88.73 -> +inf, -inf -> 0, subnormal
** results are rounded, not flushed. Method: x = n ln2 + r, |r| <= ln2/2,
** a degree-6 polynomial for e^r (Cephes expf), times 2^n applied as two
** factors so that 2^n never leaves the normal range. */
static inline float glia_expf(float x) {
  float xc = x < -104.0f ? -104.0f : x; /* e^-104 rounds to 0, e^89 to inf; */
  xc = xc > 89.0f ? 89.0f : xc;         /* NaN fails both tests and stays */
  float t = xc * 1.44269504088896341f + 12582912.0f; /* 1.5*2^23: rounds to an integer */
  float n = t - 12582912.0f;
  float r = xc - n * 0.693359375f; /* ln2 split in two: the first part is exact */
  r = r - n * -2.12194440e-4f;
  float p = (((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r +
               4.1665795894e-2f) * r + 1.6666665459e-1f) * r + 5.0000001201e-1f) * r * r +
            r + 1.0f;
  uint32_t bits;
  memcpy(&bits, &t, sizeof bits);
  int32_t ni = (int32_t)(bits - 0x4B400000u); /* n, read from t's mantissa */
  int32_t n1 = ni / 2, n2 = ni - n1;
  uint32_t b1 = (uint32_t)(n1 + 127) << 23, b2 = (uint32_t)(n2 + 127) << 23;
  float s1, s2;
  memcpy(&s1, &b1, sizeof s1);
  memcpy(&s2, &b2, sizeof s2);
  return p * s1 * s2;
}

/* A vector of GLIA_VL floats: gcc lowers it to what -march offers (one
** AVX-512 register, two AVX2 ones, ...). Loads through memcpy need no
** alignment. The horizontal sum adds halves as vectors, in a fixed order. */
#define GLIA_VL 16
typedef float glia_vf __attribute__((vector_size(GLIA_VL * sizeof(float))));

static inline glia_vf glia_vloadu(const float *p) {
  glia_vf v;
  memcpy(&v, p, sizeof v);
  return v;
}

_Static_assert(GLIA_VL == 16, "glia_hsum adds 16 lanes");

static inline float glia_hsum(glia_vf x) {
  typedef float v8 __attribute__((vector_size(8 * sizeof(float))));
  typedef float v4 __attribute__((vector_size(4 * sizeof(float))));
  v8 a = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7) +
         __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
  v4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

/* a . b over n floats: four vector accumulators (four FMA chains in
** flight), then whole vectors, then the leftover floats; always in this
** order, so a given row gives the same bits wherever it is computed. */
static inline float glia_dot(const float *a, const float *b, int64_t n) {
  glia_vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
  int64_t n64 = n - n % (4 * GLIA_VL), n16 = n - n % GLIA_VL, i = 0;
  for (; i < n64; i += 4 * GLIA_VL) {
    a0 += glia_vloadu(a + i) * glia_vloadu(b + i);
    a1 += glia_vloadu(a + i + GLIA_VL) * glia_vloadu(b + i + GLIA_VL);
    a2 += glia_vloadu(a + i + 2 * GLIA_VL) * glia_vloadu(b + i + 2 * GLIA_VL);
    a3 += glia_vloadu(a + i + 3 * GLIA_VL) * glia_vloadu(b + i + 3 * GLIA_VL);
  }
  for (; i < n16; i += GLIA_VL) a0 += glia_vloadu(a + i) * glia_vloadu(b + i);
  float s = glia_hsum((a0 + a1) + (a2 + a3));
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

/* ---------------------------------------------------- ops/view.c */

/* All views share storage and record autograd nodes. */
GLIAI_FUNC glia_status glia_view(glia_ctx *G, glia_tensor *x, int ndim, const int64_t *size,
                                 glia_tensor **out);
/* view when strides allow, else a contiguous copy; size may hold one -1. */
GLIAI_FUNC glia_status glia_reshape(glia_ctx *G, glia_tensor *x, int ndim,
                                    const int64_t *size, glia_tensor **out);
GLIAI_FUNC glia_status glia_transpose(glia_ctx *G, glia_tensor *x, int d0, int d1,
                                      glia_tensor **out);
GLIAI_FUNC glia_status glia_permute(glia_ctx *G, glia_tensor *x, const int *perm,
                                    glia_tensor **out);
GLIAI_FUNC glia_status glia_expand(glia_ctx *G, glia_tensor *x, int ndim, const int64_t *size,
                                   glia_tensor **out);
GLIAI_FUNC glia_status glia_narrow(glia_ctx *G, glia_tensor *x, int dim, int64_t start,
                                   int64_t len, glia_tensor **out);
GLIAI_FUNC glia_status glia_select(glia_ctx *G, glia_tensor *x, int dim, int64_t index,
                                   glia_tensor **out);
/* Elements start, start+step, ... < stop along dim (step >= 1; start and
** stop already clamped to [0, size]). */
GLIAI_FUNC glia_status glia_slice(glia_ctx *G, glia_tensor *x, int dim, int64_t start,
                                  int64_t stop, int64_t step, glia_tensor **out);
GLIAI_FUNC glia_status glia_unsqueeze(glia_ctx *G, glia_tensor *x, int dim, glia_tensor **out);
/* A contiguous copy (or x itself, retained, when already contiguous). */
GLIAI_FUNC glia_status glia_contiguous(glia_ctx *G, glia_tensor *x, glia_tensor **out);

/* ------------------------------------------------ ops/creation.c */

/* Fills x in place with a number (any dtype); refused on tensors that need grad. */
GLIAI_FUNC glia_status glia_fill_(glia_ctx *G, glia_tensor *x, double v);

/* ------------------------------------- raw-buffer kernels (decoding) */

/* These run the ops' own kernels on contiguous f32 buffers, without tensors
** or autograd, for fused inference steps (ops/block.c). */

/* y[r] = w[r,:] . x + bias[r] (bias may be NULL) for r < rows; w {rows, k}
** row-major: glia.linear's one-row kernel, on the pool (ops/matmul.c). */
GLIAI_FUNC void glia_matvec(glia_ctx *G, const float *w, const float *x, const float *bias,
                            float *y, int64_t rows, int64_t k);
/* The same with w's rows ldw floats apart (a slice of a wider matrix). */
GLIAI_FUNC void glia_matvec_ld(glia_ctx *G, const float *w, int64_t ldw, const float *x,
                               const float *bias, float *y, int64_t rows, int64_t k);
/* fn over the items [0, n) on the pool with OpenBLAS single-threaded inside
** (on the calling thread when there is one item or one thread): an item's
** bits never depend on the thread count (ops/matmul.c). */
GLIAI_FUNC void glia_pool_blas_items(glia_ctx *G, int64_t n,
                                     void (*fn)(int64_t, int64_t, void *), void *ud);
/* glia.layer_norm of R rows of C (w, b may be NULL) into y (ops/norm.c). */
GLIAI_FUNC void glia_layer_norm_rows(const float *x, const float *w, const float *b, float *y,
                                     int64_t R, int64_t C, double eps);
/* x = glia.gelu(x, "tanh"), the tanh form, over n floats (ops/unary.c). */
GLIAI_FUNC void glia_gelu_rows(float *x, int64_t n);
/* y = op(x) over n floats for op relu, gelu, gelu_erf or silu, and its
** backward dx = dy * op'(x); the bits of glia.relu, glia.gelu, glia.silu
** (ops/unary.c). y, dx may be x. */
GLIAI_FUNC void glia_act_rows(glia_unop op, float *y, const float *x, int64_t n);
GLIAI_FUNC void glia_act_grad_rows(glia_unop op, float *dx, const float *dy, const float *x,
                                   int64_t n);

/* ---------------------------------------------------- ops/reduce.c */

/* Reductions of an f32 x over the dims flagged in mask (bit d = dim d;
** mask 0 = all dims), keeping them as size 1 when keepdim. Reducing every
** dim without keepdim gives a 0-d tensor. An empty reduction gives 0 (sum),
** NaN (mean, var), -inf (logsumexp). Results do not depend on the thread
** count. */
GLIAI_FUNC glia_status glia_sum(glia_ctx *G, glia_tensor *x, unsigned mask, int keepdim,
                                glia_tensor **out);
GLIAI_FUNC glia_status glia_mean(glia_ctx *G, glia_tensor *x, unsigned mask, int keepdim,
                                 glia_tensor **out);
/* Sum of squared deviations / max(0, N - correction); correction 1 = Bessel. */
GLIAI_FUNC glia_status glia_var(glia_ctx *G, glia_tensor *x, unsigned mask, int keepdim,
                                double correction, glia_tensor **out);
GLIAI_FUNC glia_status glia_std(glia_ctx *G, glia_tensor *x, unsigned mask, int keepdim,
                                double correction, glia_tensor **out);
/* log(sum(exp(x))), computed stably (the max is subtracted first). */
GLIAI_FUNC glia_status glia_logsumexp(glia_ctx *G, glia_tensor *x, unsigned mask, int keepdim,
                                      glia_tensor **out);
/* (sum |x|^p)^(1/p) for p > 0; p = INFINITY gives max |x|. */
GLIAI_FUNC glia_status glia_norm(glia_ctx *G, glia_tensor *x, double p, unsigned mask,
                                 int keepdim, glia_tensor **out);
/* The last step of the backward of an op that broadcasts its inputs: sums
** each din[i] of node n (for the inputs that need it) over the dims that
** input i was broadcast along, so that it comes back in input i's shape,
** as the autograd engine requires. On failure the din[i] stay the
** engine's to release. */
GLIAI_FUNC glia_status glia_grads_to_inputs(glia_ctx *G, const glia_node *n, glia_tensor **din);
/* Inclusive running sum of f32 x along dim. */
GLIAI_FUNC glia_status glia_cumsum(glia_ctx *G, glia_tensor *x, int dim, glia_tensor **out);

/* --------------------------------------------------- ops/softmax.c */

/* Stable, fused softmax / log_softmax along dim; the output is contiguous. */
GLIAI_FUNC glia_status glia_softmax(glia_ctx *G, glia_tensor *x, int dim, glia_tensor **out);
GLIAI_FUNC glia_status glia_log_softmax(glia_ctx *G, glia_tensor *x, int dim,
                                        glia_tensor **out);

/* ------------------------------------------------------ ops/sort.c */

/* Indices these return are i64 counted from base (0 for C callers, 1 for
** Lua), as for the index ops below. */
/* Max/min along dim with 0-based i64 indices of the first extreme (NaN
** counts as the extreme). dim < 0 reduces all elements to 0-d (indices are
** then row-major positions). values (recorded for autograd) and indices
** may each be NULL: values NULL is argmax/argmin. */
GLIAI_FUNC glia_status glia_max(glia_ctx *G, glia_tensor *x, int dim, int keepdim,
                                glia_tensor **values, glia_tensor **indices);
GLIAI_FUNC glia_status glia_min(glia_ctx *G, glia_tensor *x, int dim, int keepdim,
                                glia_tensor **values, glia_tensor **indices);
/* The k largest (or smallest) elements of f32 x along dim, in order, with
** their indices; ties keep their original order, NaN counts as largest. */
GLIAI_FUNC glia_status glia_topk(glia_ctx *G, glia_tensor *x, int64_t k, int dim, int largest,
                                 int base, glia_tensor **values, glia_tensor **indices);
/* Stable sort of f32 x along dim (NaN last ascending, first descending). */
GLIAI_FUNC glia_status glia_sort(glia_ctx *G, glia_tensor *x, int dim, int descending,
                                 int base, glia_tensor **values, glia_tensor **indices);

/* ---------------------------------------------------- ops/matmul.c */

/* NumPy matmul semantics: 1-D, 2-D, batched with broadcast batch dims. */
GLIAI_FUNC glia_status glia_matmul(glia_ctx *G, glia_tensor *a, glia_tensor *b,
                                   glia_tensor **out);
/* beta * c + alpha * (a @ b) for 2-D a, b; c broadcasts to the result (beta 0
** ignores c's values). */
GLIAI_FUNC glia_status glia_addmm(glia_ctx *G, glia_tensor *c, glia_tensor *a, glia_tensor *b,
                                  double beta, double alpha, glia_tensor **out);
/* x @ w^T + bias: x {..., in}, w {out, in}, bias {out} or NULL; result {..., out}. */
GLIAI_FUNC glia_status glia_linear(glia_ctx *G, glia_tensor *x, glia_tensor *w,
                                   glia_tensor *bias, glia_tensor **out);

/* ----------------------------------------------------- ops/index.c */

/* Index tensors are i64 or i32 of any layout. `base` says how they count:
** 1 for Lua-facing (1-based) indices, 0 for C callers; negative indices
** count from the end. An index out of range fails with GLIA_ERANGE before
** anything is written. Indices these ops return are i64 counted from base. */

/* x's slices idx[j] along dim; idx is 1-D. Any dtype. */
GLIAI_FUNC glia_status glia_index_select(glia_ctx *G, glia_tensor *x, int dim, glia_tensor *idx,
                                         int base, glia_tensor **out);
/* out[..j..] = x[..idx[..j..]..] along dim; idx has x's shape except along
** dim; out has idx's shape. Any dtype. */
GLIAI_FUNC glia_status glia_gather(glia_ctx *G, glia_tensor *x, int dim, glia_tensor *idx,
                                   int base, glia_tensor **out);
/* A copy of x with src[..j..] added at x[..idx[..j..]..] along dim; idx as
** for gather, src of idx's shape; f32. */
GLIAI_FUNC glia_status glia_scatter_add(glia_ctx *G, glia_tensor *x, int dim, glia_tensor *idx,
                                        glia_tensor *src, int base, glia_tensor **out);
/* Rows of weight {V,D} picked by idx (any shape): out is idx's shape + {D}. */
GLIAI_FUNC glia_status glia_embedding(glia_ctx *G, glia_tensor *idx, glia_tensor *weight,
                                      int base, glia_tensor **out);
/* f32 idx's shape + {num_classes}: 1 at each index, 0 elsewhere. */
GLIAI_FUNC glia_status glia_one_hot(glia_ctx *G, glia_tensor *idx, int64_t num_classes,
                                    int base, glia_tensor **out);
/* Zeros shaped like `like` with g added at the positions idx (counted from
** base) names along dim: the gradient of an op that picked elements of
** `like` along dim (sort, topk). Records nothing. name is for messages. */
GLIAI_FUNC glia_status glia_scatter_zeros(glia_ctx *G, const char *name, glia_tensor *g,
                                          int dim, glia_tensor *idx, int base,
                                          const glia_tensor *like, glia_tensor **out);

/* ------------------------------------------------------ ops/join.c */

/* Joins n >= 1 tensors of one dtype along an existing dim (cat: shapes
** equal except along dim) or a new dim at position dim (stack: shapes
** equal). Any number of members gets gradients. */
GLIAI_FUNC glia_status glia_cat(glia_ctx *G, int n, glia_tensor *const *xs, int dim,
                                glia_tensor **out);
GLIAI_FUNC glia_status glia_stack(glia_ctx *G, int n, glia_tensor *const *xs, int dim,
                                  glia_tensor **out);

/* ------------------------------------------------------ ops/loss.c */

typedef enum { GLIA_LOSS_MEAN, GLIA_LOSS_SUM, GLIA_LOSS_NONE } glia_loss_reduction;

/* out = the sum of EXPR for i in [0, n), kept in GLIA_LANES interleaved
** float accumulators that are added in a fixed order: gcc vectorizes it
** without -ffast-math (one float accumulator must keep its order), and the
** result never depends on how rows are split across threads. EXPR reads
** the index variable named by i. Used by the row kernels of loss.c, norm.c. */
#define GLIA_LANES 16
#define GLIA_LANE_SUM(out, n, i, EXPR)                                        \
  do {                                                                        \
    float lane_[GLIA_LANES] = {0}, sum_ = 0;                                  \
    int64_t n_ = (n), full_ = n_ - n_ % GLIA_LANES;                           \
    for (int64_t b_ = 0; b_ < full_; b_ += GLIA_LANES)                        \
      for (int64_t i = b_; i < b_ + GLIA_LANES; i++) lane_[i - b_] += (EXPR); \
    for (int64_t i = full_; i < n_; i++) sum_ += (EXPR);                      \
    for (int j_ = 0; j_ < GLIA_LANES; j_++) sum_ += lane_[j_];                \
    (out) = sum_;                                                             \
  } while (0)

/* Cross entropy of logits {..., C} (f32, classes in the last dim) against
** target {...} (i64 or i32 class indices counted from base: 1 from Lua, 0
** for C callers, as in ops/index.c; no negatives). Rows whose target
** equals ignore_index (compared as stored) count for nothing;
** label_smoothing in [0, 1] mixes in the uniform distribution. MEAN
** averages over the rows not ignored and is 0 (zero gradient) when there
** are none. The result is 0-D, or target's shape for GLIA_LOSS_NONE. */
GLIAI_FUNC glia_status glia_cross_entropy(glia_ctx *G, glia_tensor *logits,
                                          glia_tensor *target, int base, int64_t ignore_index,
                                          double label_smoothing, glia_loss_reduction red,
                                          glia_tensor **out);
/* (a - b)^2 with a and b broadcast together; MEAN over the broadcast shape
** (0 when it is empty). 0-D, or the broadcast shape for GLIA_LOSS_NONE. */
GLIAI_FUNC glia_status glia_mse(glia_ctx *G, glia_tensor *a, glia_tensor *b,
                                glia_loss_reduction red, glia_tensor **out);

/* ------------------------------------------------------ ops/norm.c */

/* Normalizes x {..., C} over its last dim: (x - mean) * rstd * weight + bias.
** weight and bias are {C} or NULL. */
GLIAI_FUNC glia_status glia_layer_norm(glia_ctx *G, glia_tensor *x, glia_tensor *weight,
                                       glia_tensor *bias, double eps, glia_tensor **out);
/* x * rsqrt(mean(x^2) + eps) * weight over the last dim; weight {C} or NULL. */
GLIAI_FUNC glia_status glia_rms_norm(glia_ctx *G, glia_tensor *x, glia_tensor *weight,
                                     double eps, glia_tensor **out);

/* --------------------------------------------------- ops/dropout.c */

/* Zeroes each element with probability p (from the context's Philox stream:
** the mask depends only on seed, offset and element index) and scales the
** rest by 1/(1-p). With train = 0 or p = 0, *out is x itself (retained). */
GLIAI_FUNC glia_status glia_dropout(glia_ctx *G, glia_tensor *x, double p, int train,
                                    glia_tensor **out);

/* ------------------------------------------------- ops/attention.c */

/* softmax(scale * q k^T + mask) v, exact, in O(N) extra memory. q {B,H,N,D},
** k {B,K,M,D}, v {B,K,M,E} with H % K == 0 (GQA/MQA: query head h reads kv
** head h / (H/K)); any strides. causal is bottom-right aligned (row i sees
** keys j <= i + M - N). mask (NULL: none) broadcasts to {B,H,N,M}: bool/u8
** true = take part, f32 is added to the scaled scores (and differentiable).
** scale NAN means 1/sqrt(D). *out is {B,H,N,E}; rows that see no key are 0.
** lse (NULL: not wanted) receives the {B,H,N} log-sum-exp of each row (+inf
** for rows that see no key), without gradient. */
GLIAI_FUNC glia_status glia_attention(glia_ctx *G, glia_tensor *q, glia_tensor *k,
                                      glia_tensor *v, glia_tensor *mask, int causal,
                                      double scale, glia_tensor **out, glia_tensor **lse);
/* Fails unless q, k and v are live 4-D f32 tensors, naming op `name` and
** the first that is not (shared by the attention ops' checks). */
GLIAI_FUNC glia_status glia_check_qkv4(glia_ctx *G, const char *name, glia_tensor *q,
                                       glia_tensor *k, glia_tensor *v);
/* Inference against a KV cache: kc {B,K,T,D}, vc {B,K,T,E} (T = capacity),
** sequence b using its first lens[b] positions, q {B,H,n,D} being the last
** n of them (causal, bottom-right). Fails with GLIA_EGRAD when an input
** requires grad in grad mode. */
GLIAI_FUNC glia_status glia_attention_decode(glia_ctx *G, glia_tensor *q, glia_tensor *kc,
                                             glia_tensor *vc, const int64_t *lens,
                                             double scale, glia_tensor **out);

/* ------------------------------------------------------ ops/conv.c */

/* PyTorch's conv2d: x {B,C,H,W}, w {O,C/groups,kh,kw}, bias {O} or NULL,
** stride, padding, dilation {h, w} each; any strides. *out is {B,O,Ho,Wo}.
** groups = C (depth-wise, O any multiple of C) runs a direct kernel, the
** rest im2col and sgemm. */
GLIAI_FUNC glia_status glia_conv2d(glia_ctx *G, glia_tensor *x, glia_tensor *w, glia_tensor *b,
                                   const int64_t *stride, const int64_t *padding,
                                   const int64_t *dilation, int64_t groups, glia_tensor **out);

/* --------------------------------------------------- ops/block.c */

/* A pre-LayerNorm transformer block's inference step over a KV cache:
** x {B,T,C} -> x + proj(attn(ln1(x))) = x1 -> x1 + fc2(gelu(fc(ln2(x1)))),
** attn causal over cache positions 0..len+T-1 with H query heads; the new
** keys and values are written to kc, vc {B,K,cap,C/H} at len..len+T-1.
** p holds the 12 parameters ln1 w, b; qkv w {(H+2K)C/H, C}, b; proj w, b;
** ln2 w, b; fc w {F,C}, b; fc2 w {C,F}, b. Records nothing for autograd and
** fails with GLIA_EGRAD when an input requires grad in grad mode. */
GLIAI_FUNC glia_status glia_decoder_block(glia_ctx *G, glia_tensor *x, glia_tensor *const *p,
                                          glia_tensor *kc, glia_tensor *vc, int64_t len,
                                          int64_t H, double eps, glia_tensor **out);

#endif
