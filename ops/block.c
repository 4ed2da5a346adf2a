/*
** ops/block.c -- a pre-LayerNorm transformer block's inference step
** against a KV cache, in one call (glia.decoder_block).
**
**   x   = x + proj(attn(ln1(x)))      attn: causal, over the cached keys
**   out = x + fc2(gelu(fc(ln2(x))))   gelu: the tanh form (glia.gelu(x, "tanh"))
**
** Why it exists: decoding runs the block on one position at a time, where
** every op touches a few kilobytes and the weights stream from memory.
** From Lua that is some forty op calls per block, at 0.7-1 us each on Lua
** 5.4 (bench/run's per-op overhead), as much time as the matrix-vector
** products themselves: the GPT decode step ran about 2850 tokens/s that
** way and 3700 with this op in its first form (bench/gpt.lua gpt_decode). Two
** paths, one result: any shape composes the families' own entry points
** (layer_norm, linear, attention_decode, ...); one row (B = T = 1, the
** decoding case) runs the same kernels on raw buffers (row_step). The
** checks are shared (check_args). Inference only: nothing is recorded for
** autograd.
**
** One sub-layer alone: decoder_block(..., eps, "attn") stops after the
** attention sub-layer (x + proj(attn(ln1(x)))), for a block whose MLP a
** layer-skip plan drops; decoder_mlp(x, params [, eps]) is the MLP
** sub-layer alone (x + fc2(gelu(fc(ln2(x))))), no cache, for a block
** whose attention it drops (glia.skip). Through the module path such a
** decode step took longer than the whole fused block (d=256: 250 us
** for the MLP alone against 170 for the fused block, under load).
**
** Shapes: x {B,T,C}; H query heads and K key/value heads of D = C/H dims;
** F the MLP width. The cache buffers are {B,K,cap,D}; the new keys and
** values land at positions len..len+T-1 (the caller grows the buffers
** first), and the T queries attend causally to positions 0..len+T-1.
*/
#include "glia_impl.h"
#include "ops.h"

#include <math.h>
#include <stdlib.h>

/* Which sub-layers a step runs (bits). */
enum { PART_ATTN = 1, PART_MLP = 2, PART_BLOCK = 3 };

/* The op a step belongs to, for its errors: the MLP alone is
** glia.decoder_mlp, anything with the attention glia.decoder_block. */
static const char *op_name(int part) {
  return part == PART_MLP ? "glia.decoder_mlp" : "glia.decoder_block";
}

/* The parameters, in the order of the Lua list. */
enum { LN1_W, LN1_B, QKV_W, QKV_B, PROJ_W, PROJ_B, LN2_W, LN2_B, FC_W, FC_B, FC2_W, FC2_B, NPARAM };
/* The attention sub-layer's parameters are the first 6 (ln1, qkv, proj):
** part "attn" takes a list of just those. */
#define NPARAM_ATTN (PROJ_B + 1)
static const char *const PARAM_NAMES[NPARAM] = {
    "ln1.weight", "ln1.bias", "qkv.weight", "qkv.bias", "proj.weight", "proj.bias",
    "ln2.weight", "ln2.bias", "fc.weight",  "fc.bias",  "fc2.weight",  "fc2.bias"};

/* Whether a step running the sub-layers in part reads parameter i: the
** attention's are LN1_W..PROJ_B, the MLP's LN2_W..FC2_B. A step neither
** checks nor reads the others (decoder_mlp's list may hold anything
** there; part "attn"'s may end after PROJ_B). */
static bool reads(int part, int i) { return (part & (i < LN2_W ? PART_ATTN : PART_MLP)) != 0; }

/* Fails unless t is f32 {n0} (n1 < 0) or {n0, n1}. */
static glia_status check_param(glia_ctx *G, const char *name, int i, const glia_tensor *t,
                               int64_t n0, int64_t n1) {
  TRY(glia_check_f32(G, name, PARAM_NAMES[i], t));
  int nd = n1 < 0 ? 1 : 2;
  if (t->ndim != nd || t->size[0] != n0 || (nd == 2 && t->size[1] != n1)) {
    if (nd == 1)
      return glia_fail(G, GLIA_ESHAPE, "%s: %s must be {%lld}, got %s", name, PARAM_NAMES[i],
                       (long long)n0, glia_shape_str(t));
    return glia_fail(G, GLIA_ESHAPE, "%s: %s must be {%lld,%lld}, got %s", name, PARAM_NAMES[i],
                     (long long)n0, (long long)n1, glia_shape_str(t));
  }
  return GLIA_OK;
}

/* The attention sub-layer's checks: heads, caches, length, qkv and proj.
** Sets *K (kv heads). */
static glia_status check_attn_args(glia_ctx *G, glia_tensor *x, glia_tensor *const *p,
                                   glia_tensor *kc, glia_tensor *vc, int64_t len, int64_t H,
                                   int64_t *K) {
  const char *name = op_name(PART_ATTN);
  int64_t B = x->size[0], T = x->size[1], C = x->size[2];
  if (H < 1 || H > (C > 0 ? C : 1) || C % H != 0)
    return glia_fail(G, GLIA_EARG, "%s: %lld heads do not divide d_model %lld", name,
                     (long long)H, (long long)C);
  int64_t D = C / H;
  TRY(glia_check_f32(G, name, "key cache", kc));
  TRY(glia_check_f32(G, name, "value cache", vc));
  if (kc->ndim != 4 || kc->size[0] != B || kc->size[3] != D || vc->ndim != 4 ||
      memcmp(vc->size, kc->size, 4 * sizeof *kc->size) != 0 || kc->size[1] < 1 ||
      H % kc->size[1] != 0)
    return glia_fail(G, GLIA_ESHAPE,
                     "%s: for x %s with %lld heads the caches must be {%lld,K,cap,%lld} with K "
                     "dividing %lld, got %s and %s", name, glia_shape_str(x), (long long)H,
                     (long long)B, (long long)D, (long long)H, glia_shape_str(kc),
                     glia_shape_str(vc));
  if (kc->storage == vc->storage)
    return glia_fail(G, GLIA_EARG, "%s: the key and value caches share memory", name);
  TRY(glia_check_no_overlap(G, name, kc));
  TRY(glia_check_no_overlap(G, name, vc));
  *K = kc->size[1];
  if (len < 0)
    return glia_fail(G, GLIA_ERANGE, "%s: cached length must be >= 0, got %lld", name,
                     (long long)len);
  if (len > kc->size[2] - T) /* not len + T: that may overflow */
    return glia_fail(G, GLIA_ERANGE, "%s: %lld cached + %lld new positions exceed the cache "
                     "capacity %lld", name, (long long)len, (long long)T,
                     (long long)kc->size[2]);
  TRY(check_param(G, name, LN1_W, p[LN1_W], C, -1));
  TRY(check_param(G, name, LN1_B, p[LN1_B], C, -1));
  TRY(check_param(G, name, QKV_W, p[QKV_W], (H + 2 * *K) * D, C));
  TRY(check_param(G, name, QKV_B, p[QKV_B], (H + 2 * *K) * D, -1));
  TRY(check_param(G, name, PROJ_W, p[PROJ_W], C, C));
  TRY(check_param(G, name, PROJ_B, p[PROJ_B], C, -1));
  return GLIA_OK;
}

/* Checks every shape up front, so that errors name this op and nothing is
** written to the cache unless the step can run; only what the sub-layers
** in part use (kc and vc are NULL without PART_ATTN). Sets *K (kv heads). */
static glia_status check_args(glia_ctx *G, glia_tensor *x, glia_tensor *const *p,
                              glia_tensor *kc, glia_tensor *vc, int64_t len, int64_t H,
                              double eps, int part, int64_t *K) {
  const char *name = op_name(part);
  TRY(glia_check_f32(G, name, "x", x));
  if (x->ndim != 3)
    return glia_fail(G, GLIA_ESHAPE, "%s: x must be {B,T,C}, got %s", name, glia_shape_str(x));
  int64_t C = x->size[2];
  int ln = (part & PART_ATTN) ? LN1_W : LN2_W; /* the first norm the step runs */
  if (p[ln]->ndim != 1 || p[ln]->size[0] != C)
    return glia_fail(G, GLIA_ESHAPE, "%s: x %s does not match %s %s", name, glia_shape_str(x),
                     PARAM_NAMES[ln], glia_shape_str(p[ln]));
  if (!(eps >= 0))
    return glia_fail(G, GLIA_EARG, "%s: eps must be >= 0, got %g", name, eps);
  if (part & PART_ATTN) TRY(check_attn_args(G, x, p, kc, vc, len, H, K));
  if (part & PART_MLP) {
    if (p[FC_W]->ndim != 2 || p[FC_W]->size[1] != C)
      return glia_fail(G, GLIA_ESHAPE, "%s: fc.weight must be {F,%lld} for x %s, got %s", name,
                       (long long)C, glia_shape_str(x), glia_shape_str(p[FC_W]));
    int64_t F = p[FC_W]->size[0];
    TRY(check_param(G, name, LN2_W, p[LN2_W], C, -1));
    TRY(check_param(G, name, LN2_B, p[LN2_B], C, -1));
    TRY(check_param(G, name, FC_W, p[FC_W], F, C));
    TRY(check_param(G, name, FC_B, p[FC_B], F, -1));
    TRY(check_param(G, name, FC2_W, p[FC2_W], C, F));
    TRY(check_param(G, name, FC2_B, p[FC2_B], C, -1));
  }
  bool needs_grad = glia_tensor_needs_grad(x) || (kc && glia_tensor_needs_grad(kc)) ||
                    (vc && glia_tensor_needs_grad(vc));
  for (int i = 0; i < NPARAM; i++)
    needs_grad = needs_grad || (reads(part, i) && glia_tensor_needs_grad(p[i]));
  if (G->grad_mode && needs_grad)
    return glia_fail(G, GLIA_EGRAD,
                     "%s: inference only, but an input requires grad (run it under "
                     "glia.no_grad)", name);
  return GLIA_OK;
}

/* The heads [first, first + n) of qkv {B,T,(H+2K)D} as {B,n,T,D}: a view. */
static glia_status heads(glia_ctx *G, glia_tensor *qkv, int64_t first, int64_t n, int64_t D,
                         glia_tensor **out) {
  glia_tensor *part = NULL, *split = NULL;
  int64_t size[4] = {qkv->size[0], qkv->size[1], n, D};
  glia_status st = glia_narrow(G, qkv, 2, first * D, n * D, &part);
  if (st == GLIA_OK) st = glia_reshape(G, part, 4, size, &split); /* a view */
  if (st == GLIA_OK) st = glia_transpose(G, split, 1, 2, out);
  glia_tensor_release(part);
  glia_tensor_release(split);
  return st;
}

/* Writes the new keys or values {B,K,T,D} at positions len.. of cache. */
static glia_status append(glia_ctx *G, glia_tensor *cache, glia_tensor *kv, int64_t len) {
  glia_tensor *dst;
  TRY(glia_narrow(G, cache, 2, len, kv->size[2], &dst));
  glia_status st = glia_copy_into(G, dst, kv);
  glia_tensor_bump_version(cache);
  glia_tensor_release(dst);
  return st;
}

/* ------------------------------------------------- one row: decoding */

/* Whether the step is one row (B = T = 1) of contiguous operands, with
** cache rows contiguous (when there are caches): the case of row_step. */
static bool one_row(glia_tensor *x, glia_tensor *const *p, glia_tensor *kc, glia_tensor *vc,
                    int part) {
  if (x->size[0] * x->size[1] != 1 || !glia_tensor_is_contiguous(x) ||
      (kc && kc->stride[3] != 1) || (vc && vc->stride[3] != 1))
    return false;
  for (int i = 0; i < NPARAM; i++)
    if (reads(part, i) && !glia_tensor_is_contiguous(p[i])) return false;
  return true;
}

static const float *data(glia_tensor *t) { return (const float *)glia_ptr(t); }

/* The key or value heads of row qkv at positions len of cache {1,K,cap,D}. */
static void put_row(glia_tensor *cache, const float *heads, int64_t K, int64_t D, int64_t len) {
  float *base = (float *)glia_ptr(cache);
  for (int64_t kh = 0; kh < K; kh++)
    memcpy(base + kh * cache->stride[1] + len * cache->stride[2], heads + kh * D,
           (size_t)D * sizeof(float));
  glia_tensor_bump_version(cache);
}

/* The block (its sub-layers in part) on one row, through the very kernels
** the general path reaches (glia_matvec is glia.linear's one-row kernel,
** glia_layer_norm_rows and glia_gelu_rows those of the ops): the same
** numbers, with one buffer for the intermediates instead of a tensor each,
** which is most of a decode step's time outside the matrix products. */
static glia_status row_step(glia_ctx *G, glia_tensor *x, glia_tensor *const *p,
                            glia_tensor *kc, glia_tensor *vc, int64_t len, int64_t H,
                            int64_t K, double eps, int part, glia_tensor **out) {
  int64_t C = x->size[2], F = (part & PART_MLP) ? p[FC_W]->size[0] : 0;
  size_t ws_bytes = (size_t)(2 * C + F) * sizeof(float);
  glia_tensor *qkv = NULL, *q = NULL, *y = NULL, *r = NULL;
  float *ws = glia_alloc(G, ws_bytes); /* h {C}, t {C}, f {F} */
  glia_status st = ws ? GLIA_OK : glia_fail_nomem(G, ws_bytes, op_name(part));
  if (st == GLIA_OK) st = glia_tensor_new(G, GLIA_DTYPE_F32, 3, x->size, &r);
  float *h = ws, *t = ws ? ws + C : NULL, *f = ws ? ws + 2 * C : NULL;
  float *rp = r ? (float *)glia_ptr(r) : NULL;
  if (st == GLIA_OK) memcpy(rp, data(x), (size_t)C * sizeof(float));
  if (st == GLIA_OK && (part & PART_ATTN)) {
    int64_t D = C / H, Q = (H + 2 * K) * D;
    int64_t qkv_size[3] = {1, 1, Q}, q_size[4] = {1, H, 1, D}, q_stride[4] = {Q, D, D, 1};
    st = glia_tensor_new(G, GLIA_DTYPE_F32, 3, qkv_size, &qkv);
    if (st == GLIA_OK) st = glia_tensor_view_raw(G, qkv, 4, q_size, q_stride, 0, &q);
    if (st == GLIA_OK) {
      float *qkvp = (float *)glia_ptr(qkv);
      glia_layer_norm_rows(rp, data(p[LN1_W]), data(p[LN1_B]), h, 1, C, eps);
      glia_matvec(G, data(p[QKV_W]), h, data(p[QKV_B]), qkvp, Q, C);
      put_row(kc, qkvp + H * D, K, D, len);
      put_row(vc, qkvp + (H + K) * D, K, D, len);
      int64_t n = len + 1;
      st = glia_attention_decode(G, q, kc, vc, &n, NAN, &y);
    }
    if (st == GLIA_OK) {
      glia_matvec(G, data(p[PROJ_W]), data(y), data(p[PROJ_B]), t, C, C);
      for (int64_t i = 0; i < C; i++) rp[i] += t[i];
    }
  }
  if (st == GLIA_OK && (part & PART_MLP)) {
    glia_layer_norm_rows(rp, data(p[LN2_W]), data(p[LN2_B]), h, 1, C, eps);
    glia_matvec(G, data(p[FC_W]), h, data(p[FC_B]), f, F, C);
    glia_gelu_rows(f, F);
    glia_matvec(G, data(p[FC2_W]), f, data(p[FC2_B]), t, C, F);
    for (int64_t i = 0; i < C; i++) rp[i] += t[i];
  }
  glia_free(G, ws, ws_bytes);
  glia_tensor_release(qkv);
  glia_tensor_release(q);
  glia_tensor_release(y);
  return glia_hand_out(st, r, out);
}

/* ------------------------------------------------------- any shape */

/* The temporaries of one step, released together. */
enum { T_H1, T_QKV, T_Q, T_K, T_V, T_Y, T_YT, T_YM, T_ATT, T_X1, T_H2, T_FC, T_OUT, NTMP };

/* x + attn(ln1(x)) into t[T_X1], the cache appended (the general path). */
static glia_status attn_any(glia_ctx *G, glia_tensor *x, glia_tensor *const *p,
                            glia_tensor *kc, glia_tensor *vc, int64_t len, int64_t H,
                            int64_t K, double eps, glia_tensor **t) {
  int64_t B = x->size[0], T = x->size[1], C = x->size[2], D = C / H;
  glia_status st = glia_layer_norm(G, x, p[LN1_W], p[LN1_B], eps, &t[T_H1]);
  if (st == GLIA_OK) st = glia_linear(G, t[T_H1], p[QKV_W], p[QKV_B], &t[T_QKV]);
  if (st == GLIA_OK) st = heads(G, t[T_QKV], 0, H, D, &t[T_Q]);
  if (st == GLIA_OK) st = heads(G, t[T_QKV], H, K, D, &t[T_K]);
  if (st == GLIA_OK) st = heads(G, t[T_QKV], H + K, K, D, &t[T_V]);
  if (st == GLIA_OK) st = append(G, kc, t[T_K], len);
  if (st == GLIA_OK) st = append(G, vc, t[T_V], len);
  if (st == GLIA_OK) {
    int64_t *lens = glia_malloc(G, (size_t)B * sizeof *lens);
    if (!lens) st = glia_fail_nomem(G, (size_t)B * sizeof *lens, op_name(PART_ATTN));
    for (int64_t b = 0; st == GLIA_OK && b < B; b++) lens[b] = len + T;
    if (st == GLIA_OK) st = glia_attention_decode(G, t[T_Q], kc, vc, lens, NAN, &t[T_Y]);
    free(lens);
  }
  int64_t merged[3] = {B, T, C};
  if (st == GLIA_OK) st = glia_transpose(G, t[T_Y], 1, 2, &t[T_YT]); /* {B,T,H,D} */
  if (st == GLIA_OK) st = glia_reshape(G, t[T_YT], 3, merged, &t[T_YM]);
  if (st == GLIA_OK) st = glia_linear(G, t[T_YM], p[PROJ_W], p[PROJ_B], &t[T_ATT]);
  if (st == GLIA_OK) st = glia_tt(G, GLIA_BIN_ADD, x, t[T_ATT], &t[T_X1]);
  return st;
}

/* The sub-layers in part (PART_ATTN needs kc and vc; PART_MLP alone takes
** NULL for both). */
static glia_status decoder_step(glia_ctx *G, glia_tensor *x, glia_tensor *const *p,
                                glia_tensor *kc, glia_tensor *vc, int64_t len, int64_t H,
                                double eps, int part, glia_tensor **out) {
  int64_t K = 0;
  TRY(check_args(G, x, p, kc, vc, len, H, eps, part, &K));
  if (one_row(x, p, kc, vc, part)) return row_step(G, x, p, kc, vc, len, H, K, eps, part, out);
  glia_tensor *t[NTMP] = {NULL};
  int saved_mode = glia_ctx_set_grad_mode(G, 0);
  glia_status st = GLIA_OK;
  glia_tensor *x1 = x; /* the stream entering the MLP sub-layer */
  if (part & PART_ATTN) {
    st = attn_any(G, x, p, kc, vc, len, H, K, eps, t);
    x1 = t[T_X1];
  }
  glia_tensor *r = NULL;
  if (st == GLIA_OK && (part & PART_MLP)) {
    st = glia_layer_norm(G, x1, p[LN2_W], p[LN2_B], eps, &t[T_H2]);
    if (st == GLIA_OK) st = glia_linear(G, t[T_H2], p[FC_W], p[FC_B], &t[T_FC]);
    if (st == GLIA_OK) st = glia_unary_(G, GLIA_UN_GELU, t[T_FC]);
    if (st == GLIA_OK) st = glia_linear(G, t[T_FC], p[FC2_W], p[FC2_B], &t[T_OUT]);
    if (st == GLIA_OK) {
      glia_value residual = {.kind = GLIA_VAL_TENSOR, .u.t = x1};
      st = glia_binary_(G, GLIA_BIN_ADD, t[T_OUT], &residual);
    }
    r = t[T_OUT];
    t[T_OUT] = NULL;
  } else {
    r = t[T_X1];
    t[T_X1] = NULL;
  }
  glia_ctx_set_grad_mode(G, saved_mode);
  for (int i = 0; i < NTMP; i++) glia_tensor_release(t[i]);
  return glia_hand_out(st, r, out);
}

glia_status glia_decoder_block(glia_ctx *G, glia_tensor *x, glia_tensor *const *p,
                               glia_tensor *kc, glia_tensor *vc, int64_t len, int64_t H,
                               double eps, glia_tensor **out) {
  return decoder_step(G, x, p, kc, vc, len, H, eps, PART_BLOCK, out);
}

/* ======================================================== registry */

/* With part "attn" a list of the first NPARAM_ATTN parameters is enough (a
** block whose MLP is another module, nn.TransformerBlock's mlp option, has
** no fc and fc2). */
static glia_status check_nparams(glia_ctx *G, const glia_value *params, int part) {
  const char *name = op_name(part);
  int n = params->u.list.n;
  if (n != NPARAM && !(part == PART_ATTN && n == NPARAM_ATTN))
    return glia_fail(G, GLIA_EARG,
                     "%s: expected %d parameters (ln1, qkv, proj, ln2, fc, fc2: weight and "
                     "bias each)%s, got %d", name, NPARAM,
                     part == PART_ATTN ? ", or the first 6 for part \"attn\"" : "", n);
  return GLIA_OK;
}

/* decoder_block(x, params, kcache, vcache, len, n_heads [, eps [, part]]):
** part "block" (the default) or "attn" (the attention sub-layer alone). */
static glia_status op_decoder_block(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                    glia_value *outs) {
  (void)nargs;
  int part = PART_BLOCK;
  if (arg_present(&args[7])) {
    const char *s = args[7].u.s;
    if (strcmp(s, "attn") == 0) part = PART_ATTN;
    else if (strcmp(s, "block") != 0)
      return glia_fail(G, GLIA_EARG, "%s: part must be \"block\" or \"attn\", got \"%s\"",
                       op_name(PART_BLOCK), s);
  }
  TRY(check_nparams(G, &args[1], part));
  glia_tensor *r;
  TRY(decoder_step(G, args[0].u.t, args[1].u.list.v, args[2].u.t, args[3].u.t, args[4].u.i,
                   args[5].u.i, arg_num(&args[6], 1e-5), part, &r));
  return out1(nouts, outs, r);
}

/* decoder_mlp(x, params [, eps]): the MLP sub-layer alone, x + fc2(gelu(fc(ln2(x)))),
** with decoder_block's parameter list (the attention's are not read). */
static glia_status op_decoder_mlp(glia_ctx *G, int nargs, glia_value *args, int *nouts,
                                  glia_value *outs) {
  (void)nargs;
  TRY(check_nparams(G, &args[1], PART_MLP));
  glia_tensor *r;
  TRY(decoder_step(G, args[0].u.t, args[1].u.list.v, NULL, NULL, 0, 1, arg_num(&args[2], 1e-5),
                   PART_MLP, &r));
  return out1(nouts, outs, r);
}

const glia_op glia_ops_block[] = {
    {"decoder_block", "TLTTii|ns", op_decoder_block, 0},
    {"decoder_mlp", "TL|n", op_decoder_mlp, 0},
    {NULL, NULL, NULL, 0},
};
