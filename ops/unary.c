/* ops/unary.c -- placeholder until the family lands. */
#include "ops.h"

const glia_op glia_ops_unary[] = {
    {NULL, NULL, NULL, 0},
};
glia_status glia_unary(glia_ctx *G, glia_unop op, glia_tensor *x, glia_tensor **out) { (void)op;(void)x;(void)out; return glia_fail(G, GLIA_EINTERNAL, "unary"); }
glia_status glia_unary_(glia_ctx *G, glia_unop op, glia_tensor *x) { (void)op;(void)x; return glia_fail(G, GLIA_EINTERNAL, "unary"); }
