/* ops/norm.c -- placeholder until the family lands. */
#include "ops.h"

const glia_op glia_ops_norm[] = {
    {NULL, NULL, NULL, 0},
};
