/*
** lua/index.c -- t[k] and t[k] = v.
**
** Keys, 1-based with negatives counting from the end (Torch7's rules):
**   t[i]                 select along dim 1 (a number when t is 1-D)
**   t[{i, {a, b}, {}}]   per dim: an integer selects (the dim goes),
**                        {a, b} keeps a..b inclusive, {a, b, step} strides,
**                        {} or ":" keeps the whole dim; missing trailing
**                        entries keep whole dims
** Every result is a view (with autograd history); selecting all dims gives
** a number. Assigning a number fills the view; a tensor is copied into it.
*/
#include "binding.h"
#include "ops.h"

static int64_t norm_index(lua_State *L, int idx, int64_t size, int dim, int inclusive_end) {
  int64_t i = glia_lua_check_int(L, idx, "glia.index", "index");
  int64_t r = i > 0 ? i - 1 : size + i;
  if (i == 0) glia_lua_errorf(L, "glia.index: indices are 1-based (got 0 for dim %d)", dim + 1);
  if (r < 0 || r > size - (inclusive_end ? 0 : 1))
    glia_lua_errorf(L, "glia.index: index %lld out of range for dim %d of size %lld", (long long)i,
                    dim + 1, (long long)size);
  return r;
}

/* Applies the key at stack index k to t; returns a new view (owned), or
** NULL with the message in the context. Raises on malformed keys. */
static glia_tensor *apply_key(lua_State *L, glia_ctx *G, glia_tensor *t, int k) {
  glia_tensor *cur = glia_tensor_retain(t), *next = NULL;
  glia_tensor **anchor = glia_lua_push_box(L); /* owns cur while we may raise */
  *anchor = cur;
  int anchor_idx = lua_gettop(L);
  if (lua_type(L, k) == LUA_TNUMBER) {
    if (cur->ndim == 0) glia_lua_errorf(L, "glia.index: cannot index a 0-D tensor");
    int64_t i = norm_index(L, k, cur->size[0], 0, 0);
    if (glia_select(G, cur, 0, i, &next) != GLIA_OK) glia_lua_raise(L, G);
    *anchor = NULL; /* the caller owns next */
    glia_tensor_release(cur);
    lua_remove(L, anchor_idx);
    return next;
  }
  if (lua_type(L, k) != LUA_TTABLE)
    glia_lua_errorf(L, "glia.index: expected an integer or a table key, got %s",
                    luaL_typename(L, k));
  int n = (int)compat_rawlen(L, k), dim = 0;
  for (int e = 1; e <= n; e++) {
    lua_rawgeti(L, k, e);
    int ent = lua_gettop(L);
    if (dim >= cur->ndim)
      glia_lua_errorf(L, "glia.index: %d index entries for a %d-D tensor %s", n, t->ndim,
                      glia_shape_str(t));
    int64_t size = cur->size[dim];
    glia_status st;
    if (lua_type(L, ent) == LUA_TNUMBER) {
      int64_t i = norm_index(L, ent, size, dim, 0);
      st = glia_select(G, cur, dim, i, &next);
    } else if (lua_type(L, ent) == LUA_TSTRING && strcmp(lua_tostring(L, ent), ":") == 0) {
      st = glia_narrow(G, cur, dim, 0, size, &next);
      dim++;
    } else if (lua_type(L, ent) == LUA_TTABLE) {
      int len = (int)compat_rawlen(L, ent);
      int64_t a = 0, b = size, step = 1; /* [a, b) */
      if (len >= 1) {
        lua_rawgeti(L, ent, 1);
        a = norm_index(L, -1, size, dim, 1);
        lua_pop(L, 1);
        b = a + 1;
      }
      if (len >= 2) {
        lua_rawgeti(L, ent, 2);
        int64_t i = glia_lua_check_int(L, -1, "glia.index", "index");
        lua_pop(L, 1);
        b = i > 0 ? i : size + i + 1; /* inclusive end -> exclusive */
        if (i == 0 || b < a || b > size)
          glia_lua_errorf(L, "glia.index: range end %lld out of range for dim %d of size %lld",
                          (long long)i, dim + 1, (long long)size);
      }
      if (len >= 3) {
        lua_rawgeti(L, ent, 3);
        step = glia_lua_check_int(L, -1, "glia.index", "step");
        lua_pop(L, 1);
        if (step < 1) glia_lua_errorf(L, "glia.index: step must be >= 1, got %lld", (long long)step);
      }
      if (len > 3)
        glia_lua_errorf(L, "glia.index: a range has at most 3 entries {first, last, step}");
      st = glia_slice(G, cur, dim, a, b, step, &next);
      dim++;
    } else {
      glia_lua_errorf(L, "glia.index: bad index entry #%d (%s)", e, luaL_typename(L, ent));
      st = GLIA_EARG;
    }
    if (st != GLIA_OK) glia_lua_raise(L, G);
    *anchor = next;
    glia_tensor_release(cur);
    cur = next;
    lua_pop(L, 1);
  }
  *anchor = NULL;
  lua_remove(L, anchor_idx);
  return cur;
}

int glia_lua_index(lua_State *L, glia_ctx *G) {
  glia_tensor *t = glia_lua_check_tensor(L, 1);
  glia_tensor *v = apply_key(L, G, t, 2);
  if (v->ndim == 0) { /* pushing a number or boolean cannot raise */
    glia_lua_push_elem(L, glia_ptr(v), v->dtype);
    glia_tensor_release(v);
    return 1;
  }
  glia_lua_push_tensor(L, v);
  return 1;
}

int glia_lua_newindex(lua_State *L, glia_ctx *G) {
  glia_tensor *t = glia_lua_check_tensor(L, 1);
  int ty = lua_type(L, 3);
  glia_tensor *src = ty == LUA_TNUMBER || ty == LUA_TBOOLEAN ? NULL : glia_lua_test_tensor(L, 3);
  if (ty != LUA_TNUMBER && ty != LUA_TBOOLEAN && !src)
    return glia_lua_errorf(L, "glia.index: can only assign a number or a tensor, got %s",
                           luaL_typename(L, 3));
  glia_tensor *v = apply_key(L, G, t, 2);
  glia_lua_push_tensor(L, v); /* anchored while we may raise */
  glia_status st = glia_check_inplace(G, "glia.index", t);
  if (st == GLIA_OK)
    st = src ? glia_copy_into(G, v, src)
             : glia_fill_(G, v, ty == LUA_TBOOLEAN ? lua_toboolean(L, 3) : lua_tonumber(L, 3));
  if (st == GLIA_OK) glia_tensor_bump_version(t);
  if (st != GLIA_OK) return glia_lua_raise(L, G);
  return 0;
}
