/*
** lua/capi.h -- what the binding offers C modules loaded beside it (the MPI
** module, lua/mpi.c), which link neither the core nor its headers.
**
** glia.core stores one glia_lua_capi in the Lua registry under
** GLIA_LUA_CAPI_KEY (a light userdata to a static table of functions): a
** module reaches tensors through it, so a stock interpreter, where core.so is
** loaded privately, works the same as the glia executable.
*/
#ifndef GLIA_CAPI_H
#define GLIA_CAPI_H

#include <stdint.h>

#include "compat.h"

#define GLIA_LUA_CAPI_KEY "glia.capi"
#define GLIA_LUA_CAPI_VERSION 2

/* One tensor's bytes and geometry, borrowed: valid while the caller holds
** the tensor (its box on the stack, or a reference from retain). */
typedef struct glia_lua_buffer {
  void *tensor;      /* the glia_tensor, for retain/release */
  void *data;        /* first element */
  const char *dtype; /* "f32", "i64", ... */
  int ndim;
  int64_t size[8];
  int64_t numel;
  int contiguous; /* row-major with no gaps: data[0..numel) is the tensor */
} glia_lua_buffer;

typedef struct glia_lua_capi {
  int version;
  /* Fills *b from the tensor at idx and returns 1; 0 when idx holds no
  ** tensor or a freed one. Never raises. */
  int (*buffer)(lua_State *L, int idx, glia_lua_buffer *b);
  /* One more reference to b->tensor (keeps its bytes alive across a
  ** t:free() while a transfer runs), and its release. */
  void (*retain)(void *tensor);
  void (*release)(void *tensor);
  /* Pushes the position an error raised now carries, as luaL_where does:
  ** the user's line that called into glia, past glia's stdlib frames
  ** (lua/binding.c), or "". */
  void (*where)(lua_State *L);
} glia_lua_capi;

#endif
