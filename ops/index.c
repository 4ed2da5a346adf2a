/* ops/index.c -- placeholder until the family lands. */
#include "ops.h"

const glia_op glia_ops_index[] = {
    {NULL, NULL, NULL, 0},
};
