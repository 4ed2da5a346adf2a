/*
** lua/io.c -- glia.save and glia.load: safetensors files from Lua.
**
**   glia.save(path, {name = tensor, ...} [, {key = "value", ...}]) -> true
**   glia.load(path [, {mmap = true}]) -> {name = tensor, ...}, {key = "value"}
** Failures that come from outside (a missing, truncated or corrupt file, a
** full disk) return nil and a message; wrong arguments raise.
*/
#include "binding.h"

#include <stdlib.h>

typedef struct {
  const char *name;
  glia_tensor *t;
} named;

static int by_name(const void *a, const void *b) {
  return strcmp(((const named *)a)->name, ((const named *)b)->name);
}

static int count_pairs(lua_State *L, int idx) {
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    n++;
    lua_pop(L, 1);
  }
  return n;
}

/* Argument errors name the op (luaL_checktype would name the C function,
** and blame glia.load's stdlib wrapper). */
static void check_table(lua_State *L, int idx, const char *fname) {
  if (lua_type(L, idx) != LUA_TTABLE)
    glia_lua_errorf(L, "%s: argument #%d must be a table, got %s", fname, idx,
                    luaL_typename(L, idx));
}

static int l_save(lua_State *L) {
  glia_ctx *G = glia_lua_ctx(L);
  const char *path = glia_lua_check_string(L, 1, "glia.save", NULL);
  check_table(L, 2, "glia.save");
  int has_meta = !lua_isnoneornil(L, 3);
  if (has_meta) check_table(L, 3, "glia.save");
  lua_settop(L, 3);
  int n = count_pairs(L, 2), nm = has_meta ? count_pairs(L, 3) : 0;
  /* scratch arrays live in userdata anchored on the stack */
  named *items = compat_newuserdata(L, sizeof *items * (size_t)(n + 1));
  const char **names = compat_newuserdata(L, sizeof *names * (size_t)(n + 1));
  glia_tensor **ts = compat_newuserdata(L, sizeof *ts * (size_t)(n + 1));
  const char **mk = compat_newuserdata(L, sizeof *mk * (size_t)(nm + 1));
  const char **mv = compat_newuserdata(L, sizeof *mv * (size_t)(nm + 1));
  int k = 0;
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    if (lua_type(L, -2) != LUA_TSTRING)
      return glia_lua_errorf(L, "glia.save: tensor table keys must be strings, got %s",
                             luaL_typename(L, -2));
    glia_tensor *t = glia_lua_test_tensor(L, -1);
    if (!t || !t->storage)
      return glia_lua_errorf(L, "glia.save: value for '%s' is not a live tensor (%s)",
                             lua_tostring(L, -2), luaL_typename(L, -1));
    items[k].name = lua_tostring(L, -2); /* anchored by the table */
    items[k].t = t;
    k++;
    lua_pop(L, 1);
  }
  qsort(items, (size_t)n, sizeof *items, by_name);
  for (int i = 0; i < n; i++) names[i] = items[i].name, ts[i] = items[i].t;
  k = 0;
  if (has_meta) {
    /* a copy with string values (numbers converted), anchored on the stack */
    lua_createtable(L, 0, nm);
    int copy = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      if (lua_type(L, -2) != LUA_TSTRING ||
          (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER))
        return glia_lua_errorf(L, "glia.save: metadata must map strings to strings");
      lua_pushvalue(L, -2);
      lua_pushstring(L, lua_tostring(L, -2));
      lua_rawset(L, copy);
      lua_pop(L, 1);
    }
    lua_pushnil(L);
    while (lua_next(L, copy)) {
      mk[k] = lua_tostring(L, -2);
      mv[k] = lua_tostring(L, -1);
      k++;
      lua_pop(L, 1);
    }
    nm = k;
  }
  if (glia_safetensors_save(G, path, n, names, ts, nm, mk, mv) != GLIA_OK) {
    lua_pushnil(L);
    lua_pushstring(L, glia_ctx_errmsg(G));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* Owns an open file while tensors are boxed, so a Lua error cannot leak it. */
static int file_gc(lua_State *L) {
  glia_st_file **box = lua_touserdata(L, 1);
  glia_safetensors_close(*box);
  *box = NULL;
  return 0;
}

static int l_load(lua_State *L) {
  glia_ctx *G = glia_lua_ctx(L);
  const char *path = glia_lua_check_string(L, 1, "glia.load", NULL);
  int map = 0;
  if (!lua_isnoneornil(L, 2)) {
    check_table(L, 2, "glia.load");
    lua_getfield(L, 2, "mmap");
    map = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  glia_st_file **box = compat_newuserdata(L, sizeof *box);
  *box = NULL;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, file_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  int box_idx = lua_gettop(L);
  if (glia_safetensors_open(G, path, box) != GLIA_OK) {
    lua_pushnil(L);
    lua_pushstring(L, glia_ctx_errmsg(G));
    return 2;
  }
  glia_st_file *f = *box;
  int n = glia_safetensors_count(f);
  lua_createtable(L, 0, n);
  for (int i = 0; i < n; i++) {
    glia_tensor **tb = glia_lua_push_box(L);
    if (glia_safetensors_tensor(G, f, i, map, tb) != GLIA_OK) {
      lua_pushnil(L);
      lua_pushstring(L, glia_ctx_errmsg(G));
      return 2;
    }
    lua_setfield(L, -2, glia_safetensors_name(f, i));
  }
  int nm = glia_safetensors_meta_count(f);
  lua_createtable(L, 0, nm);
  for (int i = 0; i < nm; i++) {
    lua_pushstring(L, glia_safetensors_meta_value(f, i));
    lua_setfield(L, -2, glia_safetensors_meta_key(f, i));
  }
  glia_safetensors_close(f); /* mapped tensors keep their own reference */
  *(glia_st_file **)lua_touserdata(L, box_idx) = NULL;
  return 2;
}

static const luaL_Reg io_funcs[] = {
    {"save", l_save},
    {"load", l_load},
    {NULL, NULL},
};

void glia_lua_open_io(lua_State *L, int mod_idx) {
  lua_pushvalue(L, mod_idx);
  luaL_setfuncs(L, io_funcs, 0);
  lua_pop(L, 1);
}
