/* ops/creation.c -- placeholder until the family lands. */
#include "ops.h"

const glia_op glia_ops_creation[] = {
    {NULL, NULL, NULL, 0},
};
glia_status glia_fill_(glia_ctx *G, glia_tensor *x, double v) { (void)x;(void)v; return glia_fail(G, GLIA_EINTERNAL, "fill"); }
