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

GLIAI_FUNC glia_status glia_unary(glia_ctx *G, glia_unop op, glia_tensor *x, glia_tensor **out);
GLIAI_FUNC glia_status glia_unary_(glia_ctx *G, glia_unop op, glia_tensor *x);
/* clamp(x, lo, hi); either bound may be NAN meaning "none". */
GLIAI_FUNC glia_status glia_clamp(glia_ctx *G, glia_tensor *x, double lo, double hi,
                                  glia_tensor **out);

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

/* ---------------------------------------------------- ops/reduce.c */

/* Reduces over the dims flagged in mask (bit d = dim d); mask 0 = all. */
GLIAI_FUNC glia_status glia_sum(glia_ctx *G, glia_tensor *x, unsigned mask, int keepdim,
                                glia_tensor **out);
GLIAI_FUNC glia_status glia_mean(glia_ctx *G, glia_tensor *x, unsigned mask, int keepdim,
                                 glia_tensor **out);
GLIAI_FUNC glia_status glia_softmax(glia_ctx *G, glia_tensor *x, int dim, glia_tensor **out);
GLIAI_FUNC glia_status glia_log_softmax(glia_ctx *G, glia_tensor *x, int dim,
                                        glia_tensor **out);

/* ---------------------------------------------------- ops/matmul.c */

/* NumPy matmul semantics: 1-D, 2-D, batched with broadcast batch dims. */
GLIAI_FUNC glia_status glia_matmul(glia_ctx *G, glia_tensor *a, glia_tensor *b,
                                   glia_tensor **out);

#endif
