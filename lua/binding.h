/*
** lua/binding.h -- what the binding's files share: boxing tensors, checking
** arguments, raising errors. Only lua/ includes Lua headers.
*/
#ifndef GLIA_BINDING_H
#define GLIA_BINDING_H

#include "compat.h"
#include "glia_impl.h"

/* Opens the glia.core module table on the stack over context G. */
GLIAI_FUNC int glia_lua_open(lua_State *L, glia_ctx *G, int owns_ctx);
GLIAI_FUNC glia_ctx *glia_lua_ctx(lua_State *L);

/* A new empty box (tensor userdata) on the stack; fill *box to own a tensor. */
GLIAI_FUNC glia_tensor **glia_lua_push_box(lua_State *L);
/* Boxes t, taking over its reference. */
GLIAI_FUNC void glia_lua_push_tensor(lua_State *L, glia_tensor *t);
GLIAI_FUNC glia_tensor *glia_lua_test_tensor(lua_State *L, int idx);
/* Pushes the element at p, of dtype dt: integer dtypes as Lua integers,
** floats as numbers, bool as a boolean. The one reader behind t:item(),
** t:totable() and t[i]. */
GLIAI_FUNC void glia_lua_push_elem(lua_State *L, const char *p, glia_dtype dt);
GLIAI_FUNC glia_tensor *glia_lua_check_tensor(lua_State *L, int idx);
/* Every error the binding raises: luaL_error with the full printf format
** (%lld, %zu...), which lua_pushfstring lacks, positioned at the first
** caller outside glia's stdlib, so a wrapper's bad input blames the
** user's line (lua/binding.c). */
GLIAI_FUNC int glia_lua_errorf(lua_State *L, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Raises the context's last message as a Lua error. */
GLIAI_FUNC int glia_lua_raise(lua_State *L, glia_ctx *G);

/* A string argument (numbers are not taken for strings), or an error
** naming fname; *len (may be NULL) gets its length. */
GLIAI_FUNC const char *glia_lua_check_string(lua_State *L, int idx, const char *fname,
                                             size_t *len);
GLIAI_FUNC int64_t glia_lua_check_int(lua_State *L, int idx, const char *fname,
                                      const char *what);
GLIAI_FUNC int glia_lua_check_sizes(lua_State *L, int idx, const char *fname, int *ndim,
                                    int64_t *size);
GLIAI_FUNC int glia_lua_dim(lua_State *L, int64_t d, const glia_tensor *t, int extra,
                             const char *fname);

/* Adds glia.save / glia.load to the module table at mod_idx (lua/io.c). */
GLIAI_FUNC void glia_lua_open_io(lua_State *L, int mod_idx);
/* Adds the data-loading functions (lua/data.c). */
GLIAI_FUNC void glia_lua_open_data(lua_State *L, int mod_idx);

/* t[k] and t[k] = v for integer and table keys (lua/index.c). */
GLIAI_FUNC int glia_lua_index(lua_State *L, glia_ctx *G);
GLIAI_FUNC int glia_lua_newindex(lua_State *L, glia_ctx *G);

/* The vm's Lua state, and a pcall with traceback that records the message
** in the vm (lua/embed.c); the REPL (lua/repl.c). */
GLIAI_FUNC lua_State *glia_vm_lua(glia_vm *vm);
GLIAI_FUNC int glia_vm_pcall(glia_vm *vm, int nargs, int nres);
GLIAI_FUNC int glia_repl(glia_vm *vm);

#endif
