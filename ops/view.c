/* ops/view.c -- placeholder until the family lands. */
#include "ops.h"

const glia_op glia_ops_view[] = {
    {NULL, NULL, NULL, 0},
};
glia_status glia_select(glia_ctx *G, glia_tensor *x, int dim, int64_t index, glia_tensor **out) { (void)x;(void)dim;(void)index;(void)out; return glia_fail(G, GLIA_EINTERNAL, "select"); }
glia_status glia_narrow(glia_ctx *G, glia_tensor *x, int dim, int64_t s, int64_t n, glia_tensor **out) { (void)x;(void)dim;(void)s;(void)n;(void)out; return glia_fail(G, GLIA_EINTERNAL, "narrow"); }
glia_status glia_slice(glia_ctx *G, glia_tensor *x, int dim, int64_t s, int64_t e, int64_t st, glia_tensor **out) { (void)x;(void)dim;(void)s;(void)e;(void)st;(void)out; return glia_fail(G, GLIA_EINTERNAL, "slice"); }
