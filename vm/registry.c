/*
** vm/registry.c -- the op registry: every op by name, with its argument
** signature, and a varargs convenience for calling ops from C.
**
** Each ops/ family file exports one array of glia_op lines ending in {NULL};
** GLIA_OP_FAMILIES lists the arrays. Lookup is a linear scan: the binding
** resolves names once at load time, and C callers in hot paths call the
** family's functions directly.
*/
#include "glia_impl.h"

static const glia_op *const families[] = {
#define GLIA_X(f) glia_ops_##f,
    GLIA_OP_FAMILIES(GLIA_X)
#undef GLIA_X
    NULL};

const glia_op *const *glia_op_families(void) { return families; }

const glia_op *glia_op_find(const char *name) {
  for (int f = 0; families[f]; f++)
    for (const glia_op *op = families[f]; op->name; op++)
      if (strcmp(op->name, name) == 0) return op;
  return NULL;
}

glia_status glia_op_call(glia_ctx *G, const glia_op *op, int nargs, glia_value *args,
                         int *nouts, glia_value *outs) {
  if (!op) return glia_fail(G, GLIA_EARG, "glia: unknown op");
  if (nargs > GLIA_MAX_ARGS)
    return glia_fail(G, GLIA_EARG, "glia.%s: too many arguments (%d)", op->name, nargs);
  for (int i = 0; i < nargs; i++)
    if (args[i].kind == GLIA_VAL_TENSOR) TRY(glia_check_live(G, op->name, args[i].u.t));
  *nouts = 0;
  return op->fn(G, nargs, args, nouts, outs);
}

/* fmt letters: T tensor (may be NULL: passed as none), n double, i int64_t,
** b int (bool), s string, - none. */
glia_status glia_call(glia_ctx *G, const char *name, glia_tensor **out, const char *fmt, ...) {
  const glia_op *op = glia_op_find(name);
  if (GLIA_NEVER(!op)) return glia_fail(G, GLIA_EINTERNAL, "glia: no op named %s", name);
  glia_value args[GLIA_MAX_ARGS], outs[GLIA_MAX_OUTS];
  int n = 0, nouts = 0;
  va_list ap;
  va_start(ap, fmt);
  for (const char *f = fmt; *f && n < GLIA_MAX_ARGS; f++, n++) {
    glia_value *a = &args[n];
    switch (*f) {
    case 'T':
      a->u.t = va_arg(ap, glia_tensor *);
      a->kind = a->u.t ? GLIA_VAL_TENSOR : GLIA_VAL_NONE;
      break;
    case 'n': a->kind = GLIA_VAL_NUMBER; a->u.num = va_arg(ap, double); break;
    case 'i': a->kind = GLIA_VAL_INT; a->u.i = va_arg(ap, int64_t); break;
    case 'b': a->kind = GLIA_VAL_BOOL; a->u.b = va_arg(ap, int); break;
    case 's': a->kind = GLIA_VAL_STRING; a->u.s = va_arg(ap, const char *); break;
    default: a->kind = GLIA_VAL_NONE; break;
    }
  }
  va_end(ap);
  TRY(glia_op_call(G, op, n, args, &nouts, outs));
  for (int k = 1; k < nouts; k++)
    if (outs[k].kind == GLIA_VAL_TENSOR) glia_tensor_release(outs[k].u.t);
  if (GLIA_NEVER(nouts < 1 || outs[0].kind != GLIA_VAL_TENSOR))
    return glia_fail(G, GLIA_EINTERNAL, "glia.%s: returned no tensor", name);
  *out = outs[0].u.t;
  return GLIA_OK;
}
