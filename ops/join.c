/* ops/join.c -- placeholder until the family lands. */
#include "ops.h"

const glia_op glia_ops_join[] = {
    {NULL, NULL, NULL, 0},
};
