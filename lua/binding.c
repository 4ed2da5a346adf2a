/*
** lua/binding.c -- the Lua module glia.core: tensor userdata, the generic
** op dispatcher driven by the registry's signatures, indexing, printing,
** and memory pressure on Lua's GC.
**
** Ownership: a tensor userdata ("box") holds one reference to a glia_tensor
** (NULL once freed or before it is filled). Every C resource is owned by a
** box or by the binding state before anything that can raise runs, so a
** Lua error never leaks. Lua dims and positions are 1-based: the binding
** makes them 0-based before the registry sees them. Index tensors stay as
** Lua wrote them: ops are called with index base 1 (glia_op_call_base), so
** they read and return indices counted from 1.
*/
#include "binding.h"
#include "capi.h"

#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define TENSOR_MT "glia.tensor"
#define STATE_KEY "glia.binding_state"
/* The registry's table of grad hooks, leaf pointer -> function, under the
** address of this variable: reaching it allocates nothing (hook_drop). */
static char hooks_key;

/* ====================================================== state, boxes */

/* Per Lua state: the context and the outputs of an op not yet boxed. */
typedef struct binding_state {
  glia_ctx *G;
  int owns_ctx;
  glia_tensor *pending[GLIA_MAX_OUTS];
  size_t gc_trigger; /* full collection when live bytes pass this */
  lua_State *hook_L; /* the thread running t:backward(), for grad hooks */
  lua_State *L;      /* the state's thread that opened the binding */
} binding_state;

static binding_state *state_of(lua_State *L) {
  return (binding_state *)lua_touserdata(L, lua_upvalueindex(1));
}

glia_ctx *glia_lua_ctx(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, STATE_KEY);
  binding_state *B = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return B ? B->G : NULL;
}

static void release_pending(binding_state *B) {
  for (int i = 0; i < GLIA_MAX_OUTS; i++) {
    glia_tensor_release(B->pending[i]);
    B->pending[i] = NULL;
  }
}

static int state_gc(lua_State *L) {
  binding_state *B = lua_touserdata(L, 1);
  glia_ctx_set_grad_hook(B->G, NULL, NULL, NULL); /* the hooks go with the state */
  release_pending(B);
  if (B->owns_ctx) glia_ctx_release(B->G);
  B->G = NULL;
  return 0;
}

glia_tensor **glia_lua_push_box(lua_State *L) {
  glia_tensor **box = compat_newuserdata(L, sizeof *box);
  *box = NULL;
  luaL_setmetatable(L, TENSOR_MT);
  return box;
}

/* Boxes t (taking its reference). Safe against a Lua memory error: t is
** parked in the state until its box exists. */
void glia_lua_push_tensor(lua_State *L, glia_tensor *t) {
  glia_ctx *G = t->G;
  (void)G;
  lua_getfield(L, LUA_REGISTRYINDEX, STATE_KEY);
  binding_state *B = lua_touserdata(L, -1);
  lua_pop(L, 1);
  B->pending[GLIA_MAX_OUTS - 1] = t;
  glia_tensor **box = glia_lua_push_box(L);
  *box = t;
  B->pending[GLIA_MAX_OUTS - 1] = NULL;
}

glia_tensor *glia_lua_test_tensor(lua_State *L, int idx) {
  glia_tensor **box = luaL_testudata(L, idx, TENSOR_MT);
  return box ? *box : NULL;
}

glia_tensor *glia_lua_check_tensor(lua_State *L, int idx) {
  glia_tensor **box = luaL_testudata(L, idx, TENSOR_MT);
  if (!box) {
    const char *got = luaL_typename(L, idx);
    glia_lua_errorf(L, "bad argument #%d: expected a tensor, got %s", idx, got);
  }
  if (!*box || !(*box)->storage) glia_lua_errorf(L, "bad argument #%d: tensor was freed", idx);
  return *box;
}

/* ============================================================ errors */

/* Where an error points. The user needs the line of THEIR call, so the
** position error() would give is moved out of glia's stdlib: an op called
** by a stdlib wrapper (glia.nn, glia.skip, glia.data...) that rejects its
** input blames the line of the user's script that called the wrapper.
** The stdlib's files are known by their chunk source: the directory of
** glia/init.lua, which registers its own source when it loads (whatever
** path spelling require used), and the one package.path leads to when the
** core opens. Paths are compared without "./" segments and doubled
** slashes, as require's templates may spell one directory both ways. */
#define STDLIB_KEY "glia.stdlib_sources"

/* Writes the path of chunk source `src` ("@path") into buf, without "./"
** segments and doubled slashes; 0 for sources that are not files. */
static size_t norm_source(const char *src, char *buf, size_t cap) {
  size_t n = 0;
  if (*src++ != '@') return 0;
  for (int seg = 1; *src && n + 1 < cap; src++) {
    if (seg && src[0] == '.' && src[1] == '/') {
      src++;
      continue;
    }
    if (seg && src[0] == '/' && n > 0) continue;
    seg = *src == '/';
    buf[n++] = *src;
  }
  buf[n] = '\0';
  return n;
}

/* Adds the directory of `init` ("@<dir>/glia/init.lua", glia/init.lua's
** chunk source) to the stdlib's directories; other strings are ignored. */
static void add_stdlib_dir(lua_State *L, const char *init) {
  static const char tail[] = "glia/init.lua";
  char buf[1024];
  size_t n = norm_source(init, buf, sizeof buf), k = sizeof tail - 1;
  if (n < k || n + 1 >= sizeof buf || strcmp(buf + n - k, tail) != 0 ||
      (n > k && buf[n - k - 1] != '/'))
    return;
  buf[n - (sizeof "init.lua" - 1)] = '\0';
  lua_getfield(L, LUA_REGISTRYINDEX, STDLIB_KEY);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, STDLIB_KEY);
  }
  for (int i = 1;; i++) {
    lua_rawgeti(L, -1, i);
    int same = lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), buf) == 0;
    int end = lua_isnil(L, -1);
    lua_pop(L, 1);
    if (same) break;
    if (end) {
      lua_pushstring(L, buf);
      lua_rawseti(L, -2, i);
      break;
    }
  }
  lua_pop(L, 1);
}

/* Whether a chunk source is one of the stdlib's files; `dirs` is the
** stack index of the registered directories. */
static int is_stdlib(lua_State *L, int dirs, const char *source) {
  char buf[1024];
  size_t n = norm_source(source, buf, sizeof buf);
  int found = 0;
  for (int k = 1; n > 0 && !found; k++) {
    lua_rawgeti(L, dirs, k);
    size_t m;
    const char *dir = lua_tolstring(L, -1, &m);
    if (!dir) {
      lua_pop(L, 1);
      break;
    }
    found = m <= n && memcmp(buf, dir, m) == 0;
    lua_pop(L, 1);
  }
  return found;
}

/* Registers the stdlib directory package.path leads to (glia/init.lua's),
** when it does: a host that opens the core before setting package.path
** still gets glia/init.lua's own registration. */
static void remember_stdlib(lua_State *L) {
  int top = lua_gettop(L);
  lua_getglobal(L, "package");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "searchpath");
    lua_pushliteral(L, "glia");
    lua_getfield(L, -3, "path");
    if (lua_isfunction(L, -3) && lua_pcall(L, 2, 1, 0) == LUA_OK &&
        lua_type(L, -1) == LUA_TSTRING) {
      lua_pushliteral(L, "@");
      lua_insert(L, -2);
      lua_concat(L, 2);
      add_stdlib_dir(L, lua_tostring(L, -1));
    }
  }
  lua_settop(L, top);
}

/* glia._stdlib_source(source): glia/init.lua's chunk source, whose
** directory is the stdlib's. */
static int m_stdlib_source(lua_State *L) {
  if (lua_type(L, 1) == LUA_TSTRING) add_stdlib_dir(L, lua_tostring(L, 1));
  return 0;
}

/* The level to blame for an error raised with error()'s `level` (1: the
** running function's caller, 2: its caller's...) from the function at
** level 1, when stdlib frames lie between it and the user's code: the
** frame that called into the stdlib, past the stdlib frames and the C
** frames between them (the stdlib's pcalls; under LuaJIT, a pcall whose
** stdlib caller tail-called the op away). That is the innermost user code,
** right at any depth of stdlib layers and whatever tail calls did to the
** counts. A C caller (pcall(nn.Linear, ...)) is blamed as error() would,
** without a position. `level` itself when no stdlib frame comes before the
** user's code. 0 (no position) when only the stdlib is on the stack: the
** user's frame gone in a tail call (the REPL's "return <line>"), where a
** stdlib line would only mislead; tracebacks show it. */
static int blame_level(lua_State *L, int level) {
  lua_getfield(L, LUA_REGISTRYINDEX, STDLIB_KEY);
  int dirs = lua_istable(L, -1) ? lua_gettop(L) : 0;
  int l = 1, in_lib = 0, c = 0; /* c: the first of the C frames since the last stdlib one */
  lua_Debug ar;
  for (; dirs && lua_getstack(L, l, &ar) && lua_getinfo(L, "S", &ar); l++) {
    if (is_stdlib(L, dirs, ar.source)) {
      in_lib = 1;
      c = 0;
    } else if (strcmp(ar.what, "C") == 0) {
      if (!c) c = l;
    } else {
      break;
    }
  }
  lua_pop(L, 1);
  if (!in_lib) return level;
  if (c) return c;
  return lua_getstack(L, l, &ar) ? l : 0;
}

int glia_lua_errorf(lua_State *L, const char *fmt, ...) {
  char msg[GLIA_ERRMSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  luaL_where(L, blame_level(L, 1));
  lua_pushstring(L, msg);
  lua_concat(L, 2);
  return lua_error(L);
}

int glia_lua_raise(lua_State *L, glia_ctx *G) {
  return glia_lua_errorf(L, "%s", glia_ctx_errmsg(G));
}

/* glia.error(msg [, level]): error() for the stdlib. An error that blames
** a caller (level >= 2) blames the user's line, however many stdlib
** layers lie between; level 1 (this line) and 0 (no position) are
** error()'s. Called from user code, it is error(). */
static int m_error(lua_State *L) {
  int level = (int)luaL_optinteger(L, 2, 1);
  lua_settop(L, 1);
  if (lua_type(L, 1) == LUA_TSTRING && level > 0) {
    luaL_where(L, level > 1 ? blame_level(L, level) : 1);
    lua_insert(L, 1);
    lua_concat(L, 2);
  }
  return lua_error(L);
}

/* After an op that allocated: collect once live bytes pass the trigger,
** so loops of temporaries stay flat without user calls to collectgarbage.
** The margin above the surviving bytes is additive (64 MiB, or an eighth of
** a large live set): doubling would let a big dataset's worth of dead
** temporaries pile up on top of it. */
static void gc_pressure(lua_State *L, binding_state *B) {
  if (glia_ctx_live_bytes(B->G) <= B->gc_trigger) return;
  lua_gc(L, LUA_GCCOLLECT, 0);
  size_t live = glia_ctx_live_bytes(B->G), margin = live / 8;
  if (margin < ((size_t)64 << 20)) margin = (size_t)64 << 20;
  B->gc_trigger = live + margin;
}

/* ================================================== argument helpers */

const char *glia_lua_check_string(lua_State *L, int idx, const char *fname, size_t *len) {
  if (lua_type(L, idx) != LUA_TSTRING)
    glia_lua_errorf(L, "%s: argument #%d must be a string, got %s", fname, idx,
                    luaL_typename(L, idx));
  return lua_tolstring(L, idx, len);
}

/* An integer argument; rejects non-integral numbers on every Lua. */
int64_t glia_lua_check_int(lua_State *L, int idx, const char *fname, const char *what) {
  if (compat_isinteger(L, idx)) return (int64_t)lua_tointeger(L, idx);
  if (lua_type(L, idx) != LUA_TNUMBER)
    glia_lua_errorf(L, "%s: %s must be an integer, got %s", fname, what, luaL_typename(L, idx));
  lua_Number n = lua_tonumber(L, idx);
  if (!(n == floor(n)) || fabs(n) > 9.007199254740992e15)
    glia_lua_errorf(L, "%s: %s must be an integer, got %f", fname, what, (double)n);
  return (int64_t)n;
}

/* Reads sizes from a table at idx, or from consecutive integers starting at
** idx. Returns the index after the last argument consumed. */
int glia_lua_check_sizes(lua_State *L, int idx, const char *fname, int *ndim, int64_t *size) {
  int n = 0;
  if (lua_istable(L, idx)) {
    int len = (int)compat_rawlen(L, idx);
    if (len > GLIA_MAX_DIMS)
      glia_lua_errorf(L, "%s: at most %d dims are supported, got %d", fname, GLIA_MAX_DIMS, len);
    for (int i = 1; i <= len; i++) {
      lua_rawgeti(L, idx, i);
      size[n++] = glia_lua_check_int(L, -1, fname, "size");
      lua_pop(L, 1);
    }
    idx++;
  } else {
    while (lua_type(L, idx) == LUA_TNUMBER) {
      if (n == GLIA_MAX_DIMS)
        glia_lua_errorf(L, "%s: at most %d dims are supported", fname, GLIA_MAX_DIMS);
      size[n++] = glia_lua_check_int(L, idx, fname, "size");
      idx++;
    }
  }
  *ndim = n; /* negative sizes are the op's to judge (view takes -1) */
  return idx;
}

/* 1-based (or negative) Lua dim -> 0-based, for tensor t. extra=1 accepts
** ndim+1 positions (for unsqueeze). */
int glia_lua_dim(lua_State *L, int64_t d, const glia_tensor *t, int extra, const char *fname) {
  int n = t->ndim + extra;
  int64_t r = d > 0 ? d - 1 : d < 0 ? n + d : -1;
  if (d == 0) glia_lua_errorf(L, "%s: dims are 1-based (got 0)", fname);
  if (r < 0 || r >= n)
    glia_lua_errorf(L, "%s: dim %lld out of range for a %d-D tensor %s", fname, (long long)d,
                    t->ndim, glia_shape_str(t));
  return (int)r;
}

/* A tensor argument, or a clear error naming what was there instead. */
static glia_tensor *op_tensor_arg(lua_State *L, int idx, const char *fname, int or_number) {
  glia_tensor **box = luaL_testudata(L, idx, TENSOR_MT);
  if (box && !*box) glia_lua_errorf(L, "%s: argument #%d: tensor was freed", fname, idx);
  if (!box)
    glia_lua_errorf(L, "%s: argument #%d must be a tensor%s, got %s", fname, idx,
                    or_number ? " or a number" : "", luaL_typename(L, idx));
  return *box;
}

/* ===================================================== op dispatcher */

/* A 1-based (or negative) Lua dim or position at idx as the registry takes
** it: 0-based, negatives left for the registry to count from the end. */
static int64_t lua_dim_arg(lua_State *L, int idx, const char *fname, const char *what) {
  int64_t d = glia_lua_check_int(L, idx, fname, what);
  if (d == 0)
    glia_lua_errorf(L, "%s: %s are 1-based (got 0)", fname, what[0] == 'd' ? "dims" : "indices");
  return d > 0 ? d - 1 : d;
}

/* Converts the Lua arguments by the letters of the op's signature (see
** vm/registry.c) into tagged values: 1-based dims and positions become
** 0-based, tables become lists. Arity, kinds, dim ranges and negative
** dims are the registry's to check, with the index base 1. Upvalues: 1 =
** binding state, 2 = the op (light userdata), 3 = its Lua-facing name
** ("glia.add") for messages, 4 (only __unm's) = true: drop the second
** operand. The tensor metatable's operators are these closures too, so an
** operator's error blames the line with the operator. */
static int call_op(lua_State *L) {
  if (lua_toboolean(L, lua_upvalueindex(4))) lua_settop(L, 1);
  binding_state *B = state_of(L);
  const glia_op *op = lua_touserdata(L, lua_upvalueindex(2));
  glia_ctx *G = B->G;
  const char *fname = lua_tostring(L, lua_upvalueindex(3));
  glia_value args[GLIA_MAX_ARGS], outs[GLIA_MAX_OUTS];
  int top = lua_gettop(L), na = 0, idx = 1, optional = 0;
  for (const char *s = op->sig; *s && na < GLIA_MAX_ARGS; s++) {
    if (*s == '|') {
      optional = 1;
      continue;
    }
    glia_value *a = &args[na++];
    a->kind = GLIA_VAL_NONE;
    if ((idx > top || lua_isnil(L, idx)) && *s != 'I') { /* the registry judges */
      idx++;
      continue;
    }
    switch (*s) {
    case 'T':
    case 't':
      a->kind = GLIA_VAL_TENSOR;
      a->u.t = op_tensor_arg(L, idx, fname, 0);
      break;
    case 'S':
      if (lua_type(L, idx) == LUA_TNUMBER) {
        a->kind = GLIA_VAL_NUMBER;
        a->u.num = lua_tonumber(L, idx);
      } else if (lua_isboolean(L, idx)) {
        a->kind = GLIA_VAL_NUMBER;
        a->u.num = lua_toboolean(L, idx);
      } else {
        a->kind = GLIA_VAL_TENSOR;
        a->u.t = op_tensor_arg(L, idx, fname, 1);
      }
      break;
    case 'd':
    case 'e':
      a->kind = GLIA_VAL_INT;
      a->u.i = lua_dim_arg(L, idx, fname, "dim");
      break;
    case 'D':
      a->kind = GLIA_VAL_INTS;
      a->u.ints.n = 0;
      if (lua_istable(L, idx)) {
        int len = (int)compat_rawlen(L, idx);
        if (len > GLIA_MAX_DIMS) glia_lua_errorf(L, "%s: too many dims (%d)", fname, len);
        for (int i = 1; i <= len; i++) {
          lua_rawgeti(L, idx, i);
          a->u.ints.v[a->u.ints.n++] = lua_dim_arg(L, -1, fname, "dim");
          lua_pop(L, 1);
        }
      } else {
        a->u.ints.v[a->u.ints.n++] = lua_dim_arg(L, idx, fname, "dim");
      }
      break;
    case 'p':
      a->kind = GLIA_VAL_INT;
      a->u.i = lua_dim_arg(L, idx, fname, "index");
      break;
    case 'i':
      a->kind = GLIA_VAL_INT;
      a->u.i = glia_lua_check_int(L, idx, fname, "argument");
      break;
    case 'n':
      a->kind = GLIA_VAL_NUMBER;
      if (!lua_isnumber(L, idx))
        glia_lua_errorf(L, "%s: argument #%d must be a number, got %s", fname, idx,
                        luaL_typename(L, idx));
      a->u.num = lua_tonumber(L, idx);
      break;
    case 'b':
      a->kind = GLIA_VAL_BOOL;
      a->u.b = lua_toboolean(L, idx);
      break;
    case 's':
      a->kind = GLIA_VAL_STRING;
      a->u.s = glia_lua_check_string(L, idx, fname, NULL);
      break;
    case 'L': {
      if (!lua_istable(L, idx))
        glia_lua_errorf(L, "%s: argument #%d must be a list of tensors, got %s", fname, idx,
                        luaL_typename(L, idx));
      int len = (int)compat_rawlen(L, idx);
      /* scratch array, anchored on the stack top until the call returns */
      glia_tensor **v = compat_newuserdata(L, sizeof *v * (size_t)(len ? len : 1));
      for (int i = 1; i <= len; i++) {
        lua_rawgeti(L, idx, i);
        v[i - 1] = glia_lua_test_tensor(L, -1);
        lua_pop(L, 1);
        if (!v[i - 1] || !v[i - 1]->storage)
          glia_lua_errorf(L, "%s: element %d of argument #%d is not a live tensor", fname, i, idx);
      }
      a->kind = GLIA_VAL_TENSORS;
      a->u.list.n = len;
      a->u.list.v = v;
      break;
    }
    case 'I': {
      int nd;
      a->kind = GLIA_VAL_INTS;
      if (idx > top || lua_isnil(L, idx)) {
        a->u.ints.n = 0;
        if (!optional && idx <= top) glia_lua_errorf(L, "%s: missing sizes", fname);
        idx++;
        continue;
      }
      idx = glia_lua_check_sizes(L, idx, fname, &nd, a->u.ints.v);
      a->u.ints.n = nd;
      continue; /* idx already advanced */
    }
    default:
      glia_lua_errorf(L, "%s: bad signature", fname);
    }
    if (a->kind == GLIA_VAL_TENSOR && !a->u.t->storage)
      glia_lua_errorf(L, "%s: argument #%d: tensor was freed", fname, idx);
    idx++;
  }
  if (top >= idx && !lua_isnil(L, top))
    glia_lua_errorf(L, "%s: too many arguments (expected at most %d, got %d)", fname, idx - 1, top);
  int nouts = 0;
  release_pending(B);
  glia_status st = glia_op_call_base(G, op, 1, na, args, &nouts, outs);
  if (st == GLIA_ENOMEM) { /* a full collection may free enough */
    lua_gc(L, LUA_GCCOLLECT, 0);
    glia_ctx_trim(G);
    st = glia_op_call_base(G, op, 1, na, args, &nouts, outs);
  }
  if (st != GLIA_OK) return glia_lua_raise(L, G);
  for (int k = 0; k < nouts; k++)
    if (outs[k].kind == GLIA_VAL_TENSOR) B->pending[k] = outs[k].u.t;
  for (int k = 0; k < nouts; k++) {
    switch (outs[k].kind) {
    case GLIA_VAL_TENSOR: {
      glia_tensor **box = glia_lua_push_box(L);
      *box = B->pending[k];
      B->pending[k] = NULL;
      break;
    }
    case GLIA_VAL_NUMBER: lua_pushnumber(L, outs[k].u.num); break;
    case GLIA_VAL_INT: lua_pushinteger(L, (lua_Integer)outs[k].u.i); break;
    case GLIA_VAL_BOOL: lua_pushboolean(L, outs[k].u.b); break;
    default: lua_pushnil(L); break;
    }
  }
  gc_pressure(L, B);
  return nouts;
}

/* ==================================================== tensor methods */

static glia_tensor *self_tensor(lua_State *L) { return glia_lua_check_tensor(L, 1); }

/* t:size([dim]) and t:stride([dim]): the entry of dim, or a table of all. */
static int per_dim(lua_State *L, const char *fname, bool strides) {
  glia_tensor *t = self_tensor(L);
  const int64_t *v = strides ? t->stride : t->size;
  if (lua_gettop(L) >= 2) {
    int64_t d = glia_lua_check_int(L, 2, fname, "dim");
    lua_pushinteger(L, (lua_Integer)v[glia_lua_dim(L, d, t, 0, fname)]);
    return 1;
  }
  lua_createtable(L, t->ndim, 0);
  for (int i = 0; i < t->ndim; i++) {
    lua_pushinteger(L, (lua_Integer)v[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int t_size(lua_State *L) { return per_dim(L, "glia.size", false); }
static int t_stride(lua_State *L) { return per_dim(L, "glia.stride", true); }

static int t_dim(lua_State *L) {
  lua_pushinteger(L, self_tensor(L)->ndim);
  return 1;
}

static int t_numel(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)glia_tensor_numel(self_tensor(L)));
  return 1;
}

static int t_dtype(lua_State *L) {
  lua_pushstring(L, glia_dtype_name(self_tensor(L)->dtype));
  return 1;
}

static int t_is_contiguous(lua_State *L) {
  lua_pushboolean(L, glia_tensor_is_contiguous(self_tensor(L)));
  return 1;
}

void glia_lua_push_elem(lua_State *L, const char *p, glia_dtype dt) {
  switch (dt) {
  case GLIA_DTYPE_F32: lua_pushnumber(L, *(const float *)p); break;
  case GLIA_DTYPE_F64: lua_pushnumber(L, *(const double *)p); break;
  case GLIA_DTYPE_I64: lua_pushinteger(L, (lua_Integer) * (const int64_t *)p); break;
  case GLIA_DTYPE_I32: lua_pushinteger(L, *(const int32_t *)p); break;
  case GLIA_DTYPE_U8: lua_pushinteger(L, *(const uint8_t *)p); break;
  case GLIA_DTYPE_BOOL: lua_pushboolean(L, *(const uint8_t *)p != 0); break;
  default: lua_pushnil(L);
  }
}

static int t_item(lua_State *L) {
  glia_tensor *t = self_tensor(L);
  if (glia_tensor_numel(t) != 1)
    return glia_lua_errorf(L, "glia.item: expected a 1-element tensor, got %s", glia_shape_str(t));
  glia_lua_push_elem(L, glia_ptr(t), t->dtype);
  return 1;
}

static void totable_rec(lua_State *L, const glia_tensor *t, int d, const char *p) {
  size_t es = glia_dtype_size(t->dtype);
  lua_createtable(L, (int)t->size[d], 0);
  for (int64_t i = 0; i < t->size[d]; i++) {
    const char *q = p + i * t->stride[d] * (int64_t)es;
    if (d == t->ndim - 1)
      glia_lua_push_elem(L, q, t->dtype);
    else
      totable_rec(L, t, d + 1, q);
    lua_rawseti(L, -2, (int)i + 1);
  }
}

static int t_totable(lua_State *L) {
  glia_tensor *t = self_tensor(L);
  if (t->ndim == 0) {
    glia_lua_push_elem(L, glia_ptr(t), t->dtype);
    return 1;
  }
  /* Lua indexes a table with an int; an empty tensor may be huge along
  ** its other dims, and would take ages to run out of memory */
  int64_t values = 0, n = 1; /* how many tables and numbers at depth d */
  for (int d = 0; d < t->ndim && n > 0; d++) {
    if (t->size[d] > INT_MAX || (n *= t->size[d], values += n) > INT_MAX)
      return glia_lua_errorf(L, "glia.totable: %s is too large for Lua tables", glia_shape_str(t));
  }
  luaL_checkstack(L, t->ndim + 4, "glia.totable");
  totable_rec(L, t, 0, glia_ptr(t));
  return 1;
}

static int t_requires_grad(lua_State *L) {
  glia_tensor *t = self_tensor(L);
  glia_ctx *G = state_of(L)->G;
  int on = lua_isnoneornil(L, 2) ? 1 : lua_toboolean(L, 2);
  if (glia_tensor_set_requires_grad(G, t, on) != GLIA_OK) return glia_lua_raise(L, G);
  lua_settop(L, 1);
  return 1;
}

static int t_backward(lua_State *L) {
  glia_tensor *t = self_tensor(L);
  binding_state *B = state_of(L);
  glia_ctx *G = B->G;
  glia_tensor *g = lua_isnoneornil(L, 2) ? NULL : glia_lua_check_tensor(L, 2);
  int keep = lua_toboolean(L, 3);
  /* A hook cannot run a backward of its own (glia_backward refuses it), but
  ** this call may itself come from a hook's coroutine: restore the outer L. */
  lua_State *outer = B->hook_L;
  B->hook_L = L;
  glia_status st = glia_backward(G, t, g, keep);
  B->hook_L = outer;
  if (st != GLIA_OK) return glia_lua_raise(L, G);
  return 0;
}

/* t:register_grad_hook(fn): backward calls fn(t) once per backward when
** t's gradient is final (vm/autograd.c); fn nil removes it. Leaves only. */
static int t_register_grad_hook(lua_State *L) {
  glia_tensor *t = self_tensor(L);
  if (!lua_isnoneornil(L, 2) && !lua_isfunction(L, 2))
    return glia_lua_errorf(L, "glia.tensor.register_grad_hook: argument #2 must be a function or "
                           "nil, got %s", luaL_typename(L, 2));
  if (t->grad_fn)
    return glia_lua_errorf(L, "glia.tensor.register_grad_hook: tensor %s is not a leaf (hooks "
                           "are for leaves, whose gradient backward accumulates in .grad)",
                           glia_shape_str(t));
  lua_pushlightuserdata(L, &hooks_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_pushlightuserdata(L, t);
  lua_pushvalue(L, 2);
  lua_rawset(L, -3);
  t->grad_hook = !lua_isnoneornil(L, 2);
  return 0;
}

/* Runs in a protected call: upvalue-free, arguments (leaf pointer). */
static int grad_hook_call(lua_State *L) {
  glia_tensor *leaf = lua_touserdata(L, 1);
  lua_pushlightuserdata(L, &hooks_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_pushlightuserdata(L, leaf);
  lua_rawget(L, -2);
  if (!lua_isfunction(L, -1)) return 0;
  glia_lua_push_tensor(L, glia_tensor_retain(leaf));
  lua_call(L, 1, 0);
  return 0;
}

/* A hooked tensor is gone: forget its hook (else the function, and all it
** holds, would stay in the registry for good). Sets a key to nil in an
** existing table: allocates nothing, so cannot raise. */
static void hook_drop(void *ud, glia_tensor *leaf) {
  binding_state *B = ud;
  lua_State *L = B->hook_L ? B->hook_L : B->L;
  lua_pushlightuserdata(L, &hooks_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_pushlightuserdata(L, leaf);
  lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* The context's grad hook: calls the leaf's Lua function on the thread that
** runs the backward. An error in it stops the backward with its message. */
static glia_status grad_hook(glia_ctx *G, void *ud, glia_tensor *leaf) {
  binding_state *B = ud;
  lua_State *L = B->hook_L;
  if (!L) return GLIA_OK; /* a backward started from C */
  lua_pushcfunction(L, grad_hook_call);
  lua_pushlightuserdata(L, leaf);
  if (lua_pcall(L, 1, 0, 0) == LUA_OK) return GLIA_OK;
  const char *msg = lua_tostring(L, -1);
  glia_status st = glia_fail(G, GLIA_EGRAD, "glia.backward: grad hook of %s: %s",
                             glia_shape_str(leaf), msg ? msg : "(error object is not a string)");
  lua_pop(L, 1);
  return st;
}

static int t_zero_grad(lua_State *L) {
  glia_tensor_zero_grad(self_tensor(L));
  return 0;
}

static int t_free(lua_State *L) {
  glia_tensor **box = luaL_checkudata(L, 1, TENSOR_MT);
  glia_tensor_release(*box);
  *box = NULL;
  return 0;
}

static int t_gc(lua_State *L) {
  glia_tensor **box = luaL_checkudata(L, 1, TENSOR_MT);
  glia_tensor_release(*box);
  *box = NULL;
  return 0;
}

static int t_len(lua_State *L) {
  glia_tensor *t = self_tensor(L);
  lua_pushinteger(L, t->ndim ? (lua_Integer)t->size[0] : 0);
  return 1;
}

static int t_grad_mode_is(lua_State *L) {
  lua_pushboolean(L, glia_tensor_requires_grad(self_tensor(L)));
  return 1;
}

/* ================================================ the C modules' API */

_Static_assert(GLIA_MAX_DIMS == 8, "glia_lua_buffer.size holds GLIA_MAX_DIMS sizes");

static int capi_buffer(lua_State *L, int idx, glia_lua_buffer *b) {
  glia_tensor *t = glia_lua_test_tensor(L, idx);
  if (!t || !t->storage) return 0;
  b->tensor = t;
  b->data = glia_ptr(t);
  b->dtype = glia_dtype_name(t->dtype);
  b->ndim = t->ndim;
  memcpy(b->size, t->size, sizeof b->size);
  b->numel = glia_tensor_numel(t);
  b->contiguous = glia_tensor_is_contiguous(t);
  return 1;
}
static void capi_retain(void *t) { glia_tensor_retain(t); }
static void capi_release(void *t) { glia_tensor_release(t); }

static void capi_where(lua_State *L) { luaL_where(L, blame_level(L, 1)); }

static const glia_lua_capi capi = {GLIA_LUA_CAPI_VERSION, capi_buffer, capi_retain,
                                   capi_release, capi_where};

/* ========================================================= printing */

typedef struct {
  luaL_Buffer *b;
  const glia_tensor *t;
  int edge;      /* items shown at each end of a summarized dim, 0 = all */
  char fmt[16];  /* per-element format */
  int width;
} print_ctx;

/* One number in the shared format; NaN and infinities print as nan, inf. */
static void format_elem(char *buf, size_t n, const char *fmt, int width, double v) {
  if (isnan(v)) snprintf(buf, n, "%*s", width, "nan");
  else if (isinf(v)) snprintf(buf, n, "%*s", width, v > 0 ? "inf" : "-inf");
  else snprintf(buf, n, fmt, width, v);
}

static void print_rec(print_ctx *P, int d, const char *p, int indent) {
  const glia_tensor *t = P->t;
  size_t es = glia_dtype_size(t->dtype);
  luaL_addchar(P->b, '[');
  int64_t n = t->size[d];
  for (int64_t i = 0; i < n; i++) {
    if (P->edge && n > 2 * P->edge && i == P->edge) {
      luaL_addstring(P->b, d == t->ndim - 1 ? " ...," : "...,\n");
      if (d != t->ndim - 1)
        for (int k = 0; k <= indent; k++) luaL_addchar(P->b, ' ');
      i = n - P->edge - 1;
      continue;
    }
    const char *q = p + i * t->stride[d] * (int64_t)es;
    if (d == t->ndim - 1) {
      char buf[64];
      double v = glia_elem_get(q, t->dtype, 0);
      if (t->dtype == GLIA_DTYPE_BOOL)
        snprintf(buf, sizeof buf, "%*s", P->width, v != 0 ? "true" : "false");
      else
        format_elem(buf, sizeof buf, P->fmt, P->width, v);
      luaL_addchar(P->b, ' ');
      luaL_addstring(P->b, buf);
    } else {
      print_rec(P, d + 1, q, indent + 1);
      if (i + 1 < n) {
        luaL_addstring(P->b, ",\n");
        for (int k = 0; k <= indent; k++) luaL_addchar(P->b, ' ');
      }
    }
  }
  luaL_addstring(P->b, d == t->ndim - 1 ? " ]" : "]");
}

/* Picks a shared format: integers as %d, floats in fixed or scientific. */
static void choose_format(print_ctx *P) {
  const glia_tensor *t = P->t;
  int64_t n = glia_tensor_numel(t);
  bool is_float = t->dtype == GLIA_DTYPE_F32 || t->dtype == GLIA_DTYPE_F64;
  double maxabs = 0;
  bool all_int = true;
  int64_t idx[GLIA_MAX_DIMS] = {0};
  size_t es = glia_dtype_size(t->dtype);
  for (int64_t k = 0; k < n && k < 100000; k++) {
    const char *q = glia_ptr(t);
    for (int d = 0; d < t->ndim; d++) q += idx[d] * t->stride[d] * (int64_t)es;
    double v = glia_elem_get(q, t->dtype, 0);
    if (isfinite(v)) {
      if (fabs(v) > maxabs) maxabs = fabs(v);
      if (v != floor(v)) all_int = false;
    }
    for (int d = t->ndim - 1; d >= 0; d--) {
      if (++idx[d] < t->size[d]) break;
      idx[d] = 0;
    }
  }
  if (t->dtype == GLIA_DTYPE_BOOL) {
    strcpy(P->fmt, "%*s");
    P->width = 5;
  } else if (!is_float || (all_int && maxabs < 1e9)) {
    strcpy(P->fmt, is_float ? "%*.0f." : "%*.0f");
    P->width = maxabs >= 1 ? (int)log10(maxabs) + 2 : 2;
  } else if (maxabs >= 1e5 || (maxabs < 1e-4 && maxabs > 0)) {
    strcpy(P->fmt, "%*.4e");
    P->width = 11;
  } else {
    strcpy(P->fmt, "%*.4f");
    P->width = maxabs >= 1 ? (int)log10(maxabs) + 7 : 7;
  }
}

static int t_tostring(lua_State *L) {
  glia_tensor **box = luaL_checkudata(L, 1, TENSOR_MT);
  glia_tensor *t = *box;
  if (!t || !t->storage) {
    lua_pushstring(L, "glia.tensor (freed)");
    return 1;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  char head[160];
  snprintf(head, sizeof head, "glia.tensor %s %s%s", glia_dtype_name(t->dtype),
           glia_shape_str(t), glia_tensor_requires_grad(t) ? " requires_grad" : "");
  int64_t n = glia_tensor_numel(t);
  print_ctx P = {&b, t, n > 1000 ? 3 : 0, "", 0};
  if (t->ndim == 0) {
    choose_format(&P);
    char buf[64];
    double v = glia_elem_get(glia_ptr(t), t->dtype, 0);
    if (t->dtype == GLIA_DTYPE_BOOL)
      snprintf(buf, sizeof buf, "%s", v != 0 ? "true" : "false");
    else
      format_elem(buf, sizeof buf, P.fmt, 1, v);
    luaL_addstring(&b, buf);
    luaL_addchar(&b, '\n');
  } else if (n > 0) {
    choose_format(&P);
    print_rec(&P, 0, glia_ptr(t), 0);
    luaL_addchar(&b, '\n');
  }
  luaL_addstring(&b, head);
  luaL_pushresult(&b);
  return 1;
}

/* ================================================= tensor from table */

static void infer_shape(lua_State *L, int idx, int d, int *ndim, int64_t *size) {
  if (lua_type(L, idx) != LUA_TTABLE) {
    if (d < *ndim || *ndim == -1) {
      if (*ndim == -1) *ndim = d;
      else if (*ndim != d) glia_lua_errorf(L, "glia.tensor: ragged nested table");
    }
    return;
  }
  if (d >= GLIA_MAX_DIMS)
    glia_lua_errorf(L, "glia.tensor: more than %d nested levels", GLIA_MAX_DIMS);
  int64_t len = (int64_t)compat_rawlen(L, idx);
  if (*ndim != -1 && d >= *ndim) glia_lua_errorf(L, "glia.tensor: ragged nested table");
  if (*ndim == -1 || d < *ndim) {
    if (size[d] == -1) size[d] = len;
    else if (size[d] != len)
      glia_lua_errorf(L, "glia.tensor: ragged nested table (length %lld vs %lld at depth %d)",
                      (long long)len, (long long)size[d], d + 1);
  }
  if (len == 0 && *ndim == -1) *ndim = d + 1;
  for (int64_t i = 1; i <= len; i++) {
    lua_rawgeti(L, idx, (int)i);
    infer_shape(L, lua_gettop(L), d + 1, ndim, size);
    lua_pop(L, 1);
  }
}

static void fill_rec(lua_State *L, int idx, int d, const glia_tensor *t, char **p) {
  if (d == t->ndim) {
    int ty = lua_type(L, idx);
    double v = 0;
    if (ty == LUA_TBOOLEAN) v = lua_toboolean(L, idx);
    else if (ty == LUA_TNUMBER) v = lua_tonumber(L, idx);
    else glia_lua_errorf(L, "glia.tensor: expected numbers, found a %s", lua_typename(L, ty));
    glia_elem_set(*p, t->dtype, 0, v);
    *p += glia_dtype_size(t->dtype);
    return;
  }
  for (int64_t i = 1; i <= t->size[d]; i++) {
    lua_rawgeti(L, idx, (int)i);
    fill_rec(L, lua_gettop(L), d + 1, t, p);
    lua_pop(L, 1);
  }
}

/* glia.tensor(table_or_number [, dtype]) */
static int m_tensor(lua_State *L) {
  glia_ctx *G = state_of(L)->G;
  glia_dtype dt = GLIA_DTYPE_F32;
  if (!lua_isnoneornil(L, 2)) {
    const char *name = glia_lua_check_string(L, 2, "glia.tensor", NULL);
    if (glia_dtype_parse(name, &dt) != GLIA_OK)
      return glia_lua_errorf(L, "glia.tensor: unknown dtype '%s' (f32, f64, i64, i32, u8, bool)",
                             name);
  }
  int ty = lua_type(L, 1);
  if (ty != LUA_TTABLE && ty != LUA_TNUMBER && ty != LUA_TBOOLEAN)
    return glia_lua_errorf(L, "glia.tensor: expected a nested table or a number, got %s",
                           luaL_typename(L, 1));
  int ndim = -1;
  int64_t size[GLIA_MAX_DIMS];
  for (int i = 0; i < GLIA_MAX_DIMS; i++) size[i] = -1;
  luaL_checkstack(L, GLIA_MAX_DIMS + 4, "glia.tensor");
  infer_shape(L, 1, 0, &ndim, size);
  if (ndim < 0) ndim = 0;
  for (int i = 0; i < ndim; i++)
    if (size[i] < 0) size[i] = 0;
  glia_tensor **box = glia_lua_push_box(L);
  if (glia_tensor_new(G, dt, ndim, size, box) != GLIA_OK) return glia_lua_raise(L, G);
  char *p = glia_ptr(*box);
  fill_rec(L, 1, 0, *box, &p);
  return 1;
}

/* ==================================================== module functions */

static int m_set_num_threads(lua_State *L) {
  glia_ctx *G = state_of(L)->G;
  int64_t n = glia_lua_check_int(L, 1, "glia.set_num_threads", "thread count");
  if (glia_ctx_set_num_threads(G, n < 1 || n > 1024 ? -1 : (int)n) != GLIA_OK)
    return glia_lua_raise(L, G);
  return 0;
}

static int m_num_threads(lua_State *L) {
  lua_pushinteger(L, glia_ctx_num_threads(state_of(L)->G));
  return 1;
}

/* glia.config(): what this process computes with (glia_config, plus the
** context's thread count). */
static int m_config(lua_State *L) {
  const glia_config *c = glia_config_get();
  lua_createtable(L, 0, 11);
  const struct { const char *key, *value; } fields[] = {
      {"blas_library", c->blas_library}, {"blas_kernel", c->blas_kernel},
      {"blas_choice", c->blas_choice},   {"blas_chosen_by", c->blas_chosen_by},
      {"blas_config", c->blas_config},   {"cpu_vendor", c->cpu_vendor},
      {"cpu_features", c->cpu_features}, {"glia_isa", c->glia_isa},
      {"warning", c->warning},           {"lua", GLIA_LUA_NAME},
      {"version", GLIA_VERSION},
  };
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
    if (fields[i].value) {
      lua_pushstring(L, fields[i].value);
      lua_setfield(L, -2, fields[i].key);
    }
  lua_pushinteger(L, glia_ctx_num_threads(state_of(L)->G));
  lua_setfield(L, -2, "num_threads");
  return 1;
}

static int m_manual_seed(lua_State *L) {
  int64_t s = glia_lua_check_int(L, 1, "glia.manual_seed", "seed");
  glia_ctx_seed(state_of(L)->G, (uint64_t)s);
  return 0;
}

static int m_rng_state(lua_State *L) {
  uint64_t seed, off;
  glia_ctx_rng_state(state_of(L)->G, &seed, &off);
  lua_pushinteger(L, (lua_Integer)seed);
  lua_pushinteger(L, (lua_Integer)off);
  return 2;
}

static int m_set_rng_state(lua_State *L) {
  int64_t seed = glia_lua_check_int(L, 1, "glia.set_rng_state", "seed");
  int64_t off = glia_lua_check_int(L, 2, "glia.set_rng_state", "offset");
  glia_ctx_set_rng_state(state_of(L)->G, (uint64_t)seed, (uint64_t)off);
  return 0;
}

static int m_set_grad_enabled(lua_State *L) {
  lua_pushboolean(L, glia_ctx_set_grad_mode(state_of(L)->G, lua_toboolean(L, 1)));
  return 1;
}

static int m_is_grad_enabled(lua_State *L) {
  lua_pushboolean(L, glia_ctx_grad_mode(state_of(L)->G));
  return 1;
}

static int m_is_tensor(lua_State *L) {
  lua_pushboolean(L, luaL_testudata(L, 1, TENSOR_MT) != NULL);
  return 1;
}

static int m_memory(lua_State *L) {
  glia_ctx *G = state_of(L)->G;
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, (lua_Integer)glia_ctx_live_bytes(G));
  lua_setfield(L, -2, "live");
  lua_pushinteger(L, (lua_Integer)glia_ctx_peak_bytes(G));
  lua_setfield(L, -2, "peak");
  lua_pushinteger(L, (lua_Integer)glia_ctx_cached_bytes(G));
  lua_setfield(L, -2, "cached");
  return 1;
}

/* Monotonic wall-clock seconds, for timing scripts and benchmarks. */
static int m_clock(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec * 1e-9);
  return 1;
}

static int m_trim(lua_State *L) {
  glia_ctx_trim(state_of(L)->G);
  return 0;
}

static int m_fail_alloc_after(lua_State *L) {
  int64_t n = glia_lua_check_int(L, 1, "glia.fail_alloc_after", "count");
  glia_ctx_fail_alloc_after(state_of(L)->G, n);
  return 0;
}

static int m_fail_alloc_once(lua_State *L) {
  int64_t n = glia_lua_check_int(L, 1, "glia.fail_alloc_once", "count");
  glia_ctx_fail_alloc_once(state_of(L)->G, n);
  return 0;
}

static const luaL_Reg tensor_methods[] = {
    {"size", t_size},
    {"shape", t_size},
    {"stride", t_stride},
    {"dim", t_dim},
    {"numel", t_numel},
    {"dtype", t_dtype},
    {"is_contiguous", t_is_contiguous},
    {"item", t_item},
    {"totable", t_totable},
    {"requires_grad", t_requires_grad},
    {"needs_grad", t_grad_mode_is},
    {"backward", t_backward},
    {"register_grad_hook", t_register_grad_hook},
    {"zero_grad", t_zero_grad},
    {"free", t_free},
    {NULL, NULL},
};

static const luaL_Reg module_funcs[] = {
    {"tensor", m_tensor},
    {"error", m_error},
    {"_stdlib_source", m_stdlib_source},
    {"set_num_threads", m_set_num_threads},
    {"num_threads", m_num_threads},
    {"config", m_config},
    {"manual_seed", m_manual_seed},
    {"rng_state", m_rng_state},
    {"set_rng_state", m_set_rng_state},
    {"set_grad_enabled", m_set_grad_enabled},
    {"is_grad_enabled", m_is_grad_enabled},
    {"is_tensor", m_is_tensor},
    {"memory", m_memory},
    {"trim", m_trim},
    {"clock", m_clock},
    {"fail_alloc_after", m_fail_alloc_after},
    {"fail_alloc_once", m_fail_alloc_once},
    {NULL, NULL},
};

/* =================================================== indexing, metas */

/* __index: methods first, then .grad, then integer and table indexing. */
static int t_index(lua_State *L) {
  int ty = lua_type(L, 2);
  if (ty == LUA_TSTRING) {
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(2)); /* methods */
    if (!lua_isnil(L, -1)) return 1;
    const char *k = lua_tostring(L, 2);
    if (strcmp(k, "grad") == 0) {
      glia_tensor *g = glia_tensor_grad(self_tensor(L));
      if (!g) return 0;
      glia_lua_push_tensor(L, glia_tensor_retain(g));
      return 1;
    }
    return 0;
  }
  return glia_lua_index(L, state_of(L)->G);
}

static int t_newindex(lua_State *L) {
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *k = lua_tostring(L, 2);
    if (strcmp(k, "grad") == 0) {
      glia_tensor *t = self_tensor(L);
      glia_tensor *g = lua_isnil(L, 3) ? NULL : glia_lua_check_tensor(L, 3);
      glia_ctx *G = state_of(L)->G;
      if (glia_tensor_set_grad(G, t, g) != GLIA_OK) return glia_lua_raise(L, G);
      return 0;
    }
    return glia_lua_errorf(L, "glia.tensor: cannot set field '%s'", k);
  }
  return glia_lua_newindex(L, state_of(L)->G);
}

/* ====================================================== open module */

/* An op's closure (call_op's upvalues). `unary_meta`: the closure is
** __unm, which Lua calls with the operand twice; a 4th upvalue tells
** call_op to drop the second. */
static void set_op_closure(lua_State *L, int state_idx, const glia_op *op, int unary_meta) {
  lua_pushvalue(L, state_idx);
  lua_pushlightuserdata(L, (void *)op);
  lua_pushfstring(L, "glia.%s", op->name);
  if (unary_meta) lua_pushboolean(L, 1);
  lua_pushcclosure(L, call_op, 3 + unary_meta);
}

/* The one warning the binding prints itself, once per process: the BLAS
** kernel is weaker than the CPU allows and only the user can change that. */
static void warn_blas_once(void) {
  static atomic_flag warned = ATOMIC_FLAG_INIT;
  const char *w = glia_config_get()->warning;
  if (w && !atomic_flag_test_and_set(&warned)) fprintf(stderr, "%s\n", w);
}

int glia_lua_open(lua_State *L, glia_ctx *G, int owns_ctx) {
  warn_blas_once();
  binding_state *B = compat_newuserdata(L, sizeof *B);
  memset(B, 0, sizeof *B);
  B->G = G;
  B->owns_ctx = owns_ctx;
  B->gc_trigger = (size_t)64 << 20;
  int state_idx = lua_gettop(L);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, state_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, state_idx);
  lua_pushvalue(L, state_idx);
  lua_setfield(L, LUA_REGISTRYINDEX, STATE_KEY);
  remember_stdlib(L);
  lua_pushlightuserdata(L, &hooks_key);
  lua_newtable(L);
  lua_rawset(L, LUA_REGISTRYINDEX);
  B->L = L;
  lua_pushlightuserdata(L, (void *)&capi);
  lua_setfield(L, LUA_REGISTRYINDEX, GLIA_LUA_CAPI_KEY);
  glia_ctx_set_grad_hook(G, grad_hook, hook_drop, B);

  lua_newtable(L); /* module */
  int mod_idx = lua_gettop(L);
  lua_newtable(L); /* methods */
  int meth_idx = lua_gettop(L);

  lua_pushvalue(L, state_idx);
  luaL_setfuncs(L, tensor_methods, 1);
  lua_pushvalue(L, mod_idx);
  lua_pushvalue(L, state_idx);
  luaL_setfuncs(L, module_funcs, 1);
  lua_pop(L, 1);

  for (const glia_op *const *fam = glia_op_families(); *fam; fam++)
    for (const glia_op *op = *fam; op->name; op++) {
      set_op_closure(L, state_idx, op, 0);
      lua_setfield(L, mod_idx, op->name);
      if (op->method) {
        set_op_closure(L, state_idx, op, 0);
        lua_setfield(L, meth_idx, op->name);
      }
    }

  /* tensor metatable: upvalue 1 = state, 2 = methods (for __index) or module */
  luaL_newmetatable(L, TENSOR_MT);
  int mt_idx = lua_gettop(L);
  lua_pushvalue(L, state_idx);
  lua_pushvalue(L, meth_idx);
  lua_pushcclosure(L, t_index, 2);
  lua_setfield(L, mt_idx, "__index");
  lua_pushvalue(L, state_idx);
  lua_pushvalue(L, meth_idx);
  lua_pushcclosure(L, t_newindex, 2);
  lua_setfield(L, mt_idx, "__newindex");
  /* Operators call the ops directly, not through the module table:
  ** replacing glia.add or glia.neg changes neither a + b nor -a. */
  static const char *const arith_metas[][2] = {
      {"__add", "add"}, {"__sub", "sub"}, {"__mul", "mul"}, {"__div", "div"}, {"__pow", "pow"}};
  for (size_t i = 0; i < sizeof arith_metas / sizeof arith_metas[0]; i++) {
    set_op_closure(L, state_idx, glia_op_find(arith_metas[i][1]), 0);
    lua_setfield(L, mt_idx, arith_metas[i][0]);
  }
  set_op_closure(L, state_idx, glia_op_find("neg"), 1);
  lua_setfield(L, mt_idx, "__unm");
  static const luaL_Reg plain_metas[] = {{"__gc", t_gc},
                                         {"__tostring", t_tostring},
                                         {"__len", t_len},
#if COMPAT_HAS_CLOSE
                                         {"__close", t_free},
#endif
                                         {NULL, NULL}};
  lua_pushvalue(L, state_idx);
  luaL_setfuncs(L, plain_metas, 1);
  lua_pushliteral(L, "glia.tensor");
  lua_setfield(L, mt_idx, "__name");
  lua_pop(L, 1);

  glia_lua_open_io(L, mod_idx);
  glia_lua_open_data(L, mod_idx);
  lua_pushvalue(L, meth_idx);
  lua_setfield(L, mod_idx, "_methods");
  lua_pushliteral(L, GLIA_VERSION);
  lua_setfield(L, mod_idx, "version");
  lua_pushvalue(L, mod_idx);
  lua_replace(L, state_idx);
  lua_settop(L, state_idx);
  return 1;
}

/* require "glia.core" from a stock lua5.4/luajit: the module owns its ctx. */
GLIA_API int luaopen_glia_core(lua_State *L) {
  glia_ctx *G = glia_ctx_new();
  if (!G) {
    const char *why = glia_config_get()->error;
    return glia_lua_errorf(L, "%s", why ? why : "glia: out of memory creating a context");
  }
  return glia_lua_open(L, G, 1);
}
