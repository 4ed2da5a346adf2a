/*
** lua/data.c -- the C helpers of glia.data and glia.progress, in glia.core.
**
**   glia.read_idx(path) -> tensor | nil, message      (vm/idx.c)
**   glia.byte_vocab(s) -> string of the distinct bytes of s, ascending
**   glia.byte_encode(s, vocab) -> i64 tensor {#s} of 1-based positions in vocab
**   glia.byte_decode(ids, vocab) -> string: vocab's byte at each id, in order
**   glia.isatty(fd) -> boolean
** Text datasets run the whole text through byte_encode: a Lua loop over a
** few megabytes is too slow. A missing or corrupt file is an expected
** failure (nil, message); wrong arguments raise.
*/
#include "binding.h"
#include "glia.h"

#include <unistd.h>

static int l_read_idx(lua_State *L) {
  glia_ctx *G = glia_lua_ctx(L);
  const char *path = glia_lua_check_string(L, 1, "glia.read_idx", NULL);
  glia_tensor **box = glia_lua_push_box(L);
  if (glia_idx_read(G, path, box) != GLIA_OK) {
    lua_pushnil(L);
    lua_pushstring(L, glia_ctx_errmsg(G));
    return 2;
  }
  return 1;
}

/* ====================================================== byte vocabularies */

static int l_byte_vocab(lua_State *L) {
  size_t n;
  const unsigned char *s =
      (const unsigned char *)glia_lua_check_string(L, 1, "glia.byte_vocab", &n);
  bool seen[256] = {false};
  for (size_t i = 0; i < n; i++) seen[s[i]] = true;
  char vocab[256];
  int k = 0;
  for (int b = 0; b < 256; b++)
    if (seen[b]) vocab[k++] = (char)b;
  lua_pushlstring(L, vocab, (size_t)k);
  return 1;
}

/* The vocabulary string at idx (distinct bytes) as a byte -> id table
** (0: not in the vocabulary). */
static size_t vocab_ids(lua_State *L, int idx, const char *fname, int64_t ids[256]) {
  size_t n;
  const unsigned char *v = (const unsigned char *)glia_lua_check_string(L, idx, fname, &n);
  memset(ids, 0, 256 * sizeof ids[0]);
  for (size_t i = 0; i < n; i++) {
    if (ids[v[i]])
      return (size_t)glia_lua_errorf(L, "%s: vocabulary repeats byte %d", fname, v[i]);
    ids[v[i]] = (int64_t)i + 1;
  }
  return n;
}

static int l_byte_encode(lua_State *L) {
  glia_ctx *G = glia_lua_ctx(L);
  size_t n;
  const unsigned char *s =
      (const unsigned char *)glia_lua_check_string(L, 1, "glia.byte_encode", &n);
  int64_t ids[256];
  vocab_ids(L, 2, "glia.byte_encode", ids);
  glia_tensor **box = glia_lua_push_box(L); /* owns the result from here on */
  int64_t size = (int64_t)n;
  if (glia_tensor_new(G, GLIA_DTYPE_I64, 1, &size, box) != GLIA_OK) return glia_lua_raise(L, G);
  int64_t *out = glia_tensor_data(*box);
  for (size_t i = 0; i < n; i++) {
    if (!(out[i] = ids[s[i]]))
      return glia_lua_errorf(L, "glia.byte_encode: byte %d at position %zu is not in the vocabulary",
                             s[i], i + 1);
  }
  return 1;
}

static int l_byte_decode(lua_State *L) {
  glia_ctx *G = glia_lua_ctx(L);
  glia_tensor *t = glia_lua_check_tensor(L, 1);
  size_t nv;
  const char *vocab = glia_lua_check_string(L, 2, "glia.byte_decode", &nv);
  glia_dtype dt = glia_tensor_dtype(t);
  if (dt != GLIA_DTYPE_I64 && dt != GLIA_DTYPE_I32)
    return glia_lua_errorf(L, "glia.byte_decode: ids must be i64 or i32, got %s %s",
                           glia_dtype_name(dt), glia_shape_str(t));
  glia_tensor **box = glia_lua_push_box(L); /* the contiguous copy, released by __gc */
  if (glia_tensor_contiguous_as(G, t, GLIA_DTYPE_I64, box) != GLIA_OK) return glia_lua_raise(L, G);
  const int64_t *ids = glia_tensor_data(*box);
  int64_t n = glia_tensor_numel(*box);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int64_t i = 0; i < n; i++) {
    if (ids[i] < 1 || (uint64_t)ids[i] > nv)
      return glia_lua_errorf(L, "glia.byte_decode: id %lld at position %lld is outside the "
                             "vocabulary 1..%zu", (long long)ids[i], (long long)i + 1, nv);
    luaL_addchar(&b, vocab[ids[i] - 1]);
  }
  luaL_pushresult(&b);
  return 1;
}

/* ====================================================== terminals */

static int l_isatty(lua_State *L) {
  int64_t fd = glia_lua_check_int(L, 1, "glia.isatty", "fd");
  lua_pushboolean(L, fd >= 0 && fd <= INT32_MAX && isatty((int)fd));
  return 1;
}

static const luaL_Reg data_funcs[] = {
    {"read_idx", l_read_idx},
    {"byte_vocab", l_byte_vocab},
    {"byte_encode", l_byte_encode},
    {"byte_decode", l_byte_decode},
    {"isatty", l_isatty},
    {NULL, NULL},
};

void glia_lua_open_data(lua_State *L, int mod_idx) {
  lua_pushvalue(L, mod_idx);
  luaL_setfuncs(L, data_funcs, 0);
  lua_pop(L, 1);
}
