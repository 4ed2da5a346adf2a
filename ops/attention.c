/* ops/attention.c -- placeholder until the family lands. */
#include "ops.h"

const glia_op glia_ops_attention[] = {
    {NULL, NULL, NULL, 0},
};
