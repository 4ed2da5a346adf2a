/*
** lua/embed.c -- the embedding API of glia.h: a context with its Lua state,
** running code, calling Lua functions with tensors.
**
** The vm owns its Lua state and its context; the state's glia.core module
** borrows the context. Every Lua call runs under lua_pcall with a
** traceback handler, so a host never sees a longjmp; failures come back as
** a status with the message kept in the vm.
*/
#define _GNU_SOURCE /* dladdr */
#include "binding.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

struct glia_vm {
  lua_State *L;
  glia_ctx *G;
  char errmsg[1024];
};

static int open_core(lua_State *L) {
  glia_ctx *G = lua_touserdata(L, lua_upvalueindex(1));
  return glia_lua_open(L, G, 0);
}

/* Adds the stdlib patterns below dir (a bin/ or lib/ directory): the build
** tree's stdlib/ (bin/glia, build/<flavor>/bin/glia) and an installed
** PREFIX/share/glia (PREFIX/bin/glia, PREFIX/lib/libglia.so). */
static void add_dir_paths(luaL_Buffer *b, const char *dir) {
  static const char *const rel[] = {"/../stdlib/?.lua;",       "/../stdlib/?/init.lua;",
                                    "/../../../stdlib/?.lua;", "/../../../stdlib/?/init.lua;",
                                    "/../share/glia/?.lua;",   "/../share/glia/?/init.lua;"};
  for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
    luaL_addstring(b, dir);
    luaL_addstring(b, rel[i]);
  }
}

/* The directory part of path, in place; 0 when there is none. */
static int dirname_of(char *path) {
  char *slash = strrchr(path, '/');
  if (!slash) return 0;
  *slash = 0;
  return 1;
}

/* Where C modules beside the core (glia.mpi) live: lib/lua/<abi> next to
** the executable in the build tree (bin/glia, build/<flavor>/bin/glia) and
** installed (PREFIX/bin/glia), before the interpreter's default cpath. */
static void set_cpath(lua_State *L, int pkg) {
  static const char *const rel[] = {"/../lib/lua/" GLIA_LUA_ABI "/?.so;",
                                    "/../../../lib/lua/" GLIA_LUA_ABI "/?.so;"};
  char exe[1024];
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = 0;
    if (dirname_of(exe))
      for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
        luaL_addstring(&b, exe);
        luaL_addstring(&b, rel[i]);
      }
  }
  lua_getfield(L, pkg, "cpath");
  luaL_addvalue(&b);
  luaL_pushresult(&b);
  lua_setfield(L, pkg, "cpath");
}

/* Where the stdlib lives: $GLIA_STDLIB, then next to the executable, then
** next to the library holding this code (a host linking libglia.so), then
** the directory compiled in. */
static void set_paths(lua_State *L) {
  char exe[1024];
  const char *env = getenv("GLIA_STDLIB");
  lua_getglobal(L, "package");
  int pkg = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (env && *env) {
    luaL_addstring(&b, env);
    luaL_addstring(&b, "/?.lua;");
    luaL_addstring(&b, env);
    luaL_addstring(&b, "/?/init.lua;");
  }
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = 0;
    if (dirname_of(exe)) add_dir_paths(&b, exe);
  }
  Dl_info info;
  if (dladdr((void *)set_paths, &info) && info.dli_fname && strlen(info.dli_fname) < sizeof exe) {
    strcpy(exe, info.dli_fname);
    if (dirname_of(exe)) add_dir_paths(&b, exe);
  }
#ifdef GLIA_STDLIB_DIR
  luaL_addstring(&b, GLIA_STDLIB_DIR "/?.lua;" GLIA_STDLIB_DIR "/?/init.lua;");
#endif
  lua_getfield(L, pkg, "path");
  luaL_addvalue(&b);
  luaL_pushresult(&b);
  lua_setfield(L, pkg, "path");
  set_cpath(L, pkg);
  lua_pop(L, 1);
}

glia_vm *glia_vm_open(void) {
  glia_vm *vm = calloc(1, sizeof *vm);
  if (!vm) return NULL;
  vm->G = glia_ctx_new();
  vm->L = vm->G ? luaL_newstate() : NULL;
  if (!vm->L) {
    glia_ctx_release(vm->G);
    free(vm);
    return NULL;
  }
  lua_State *L = vm->L;
  luaL_openlibs(L);
  set_paths(L);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushlightuserdata(L, vm->G);
  lua_pushcclosure(L, open_core, 1);
  lua_setfield(L, -2, "glia.core");
  lua_pop(L, 2);
  /* Open the core now, so tensors can cross glia_vm_call even before a
  ** script requires glia. */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "glia.core");
  if (glia_vm_pcall(vm, 1, 0) != LUA_OK) {
    glia_vm_close(vm);
    return NULL;
  }
  return vm;
}

void glia_vm_close(glia_vm *vm) {
  if (!vm) return;
  lua_close(vm->L); /* drops every tensor before the context goes */
  glia_ctx_release(vm->G);
  free(vm);
}

glia_ctx *glia_vm_ctx(glia_vm *vm) { return vm->G; }
const char *glia_vm_errmsg(const glia_vm *vm) { return vm->errmsg; }
lua_State *glia_vm_lua(glia_vm *vm) { return vm->L; }

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) msg = luaL_typename(L, 1);
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Runs the function on top of the stack (with nargs below it... none) under
** pcall; keeps nres results on success. */
int glia_vm_pcall(glia_vm *vm, int nargs, int nres) {
  lua_State *L = vm->L;
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, traceback);
  lua_insert(L, base);
  int rc = lua_pcall(L, nargs, nres, base);
  lua_remove(L, base);
  if (rc != LUA_OK) {
    const char *m = lua_tostring(L, -1);
    snprintf(vm->errmsg, sizeof vm->errmsg, "%s", m ? m : "(error object is not a string)");
    lua_pop(L, 1);
  }
  return rc;
}

static glia_status load_and_run(glia_vm *vm, int load_rc) {
  if (load_rc != LUA_OK) {
    snprintf(vm->errmsg, sizeof vm->errmsg, "%s", lua_tostring(vm->L, -1));
    lua_pop(vm->L, 1);
    return GLIA_ESCRIPT;
  }
  return glia_vm_pcall(vm, 0, 0) == LUA_OK ? GLIA_OK : GLIA_ESCRIPT;
}

glia_status glia_vm_run_file(glia_vm *vm, const char *path) {
  return load_and_run(vm, luaL_loadfile(vm->L, path));
}

glia_status glia_vm_run_string(glia_vm *vm, const char *code) {
  return load_and_run(vm, luaL_loadstring(vm->L, code));
}

/* Pushes the value at a dotted path ("a.b.c") from the globals. */
static int push_path(lua_State *L, const char *name) {
  lua_pushglobaltable(L);
  const char *p = name;
  for (;;) {
    const char *dot = strchr(p, '.');
    size_t len = dot ? (size_t)(dot - p) : strlen(p);
    if (!lua_istable(L, -1)) return 0;
    lua_pushlstring(L, p, len);
    lua_gettable(L, -2);
    lua_remove(L, -2);
    if (!dot) return 1;
    p = dot + 1;
  }
}

/* Called under pcall: args are the name (light userdata), tensors... */
typedef struct {
  const char *name;
  int nin, nout;
  glia_tensor **in, **out;
  glia_vm *vm;
  glia_status st;
} call_req;

static int do_call(lua_State *L) {
  call_req *r = lua_touserdata(L, 1);
  if (!push_path(L, r->name) || !lua_isfunction(L, -1))
    return luaL_error(L, "glia_vm_call: no function named '%s'", r->name);
  for (int i = 0; i < r->nin; i++) glia_lua_push_tensor(L, glia_tensor_retain(r->in[i]));
  lua_call(L, r->nin, r->nout);
  int base = lua_gettop(L) - r->nout;
  for (int i = 0; i < r->nout; i++)
    if (!glia_lua_test_tensor(L, base + 1 + i))
      return luaL_error(L, "glia_vm_call: result %d of '%s' is a %s, not a tensor", i + 1,
                        r->name, luaL_typename(L, base + 1 + i));
  for (int i = 0; i < r->nout; i++)
    r->out[i] = glia_tensor_retain(glia_lua_test_tensor(L, base + 1 + i));
  return 0;
}

glia_status glia_vm_call(glia_vm *vm, const char *name, int nin, glia_tensor **in, int nout,
                         glia_tensor **out) {
  call_req r = {name, nin, nout, in, out, vm, GLIA_OK};
  for (int i = 0; i < nout; i++) out[i] = NULL;
  for (int i = 0; i < nin; i++)
    if (!in[i] || in[i]->G != vm->G) {
      snprintf(vm->errmsg, sizeof vm->errmsg,
               "glia_vm_call: input %d is NULL or belongs to another context", i);
      return GLIA_EARG;
    }
  lua_pushcfunction(vm->L, do_call);
  lua_pushlightuserdata(vm->L, &r);
  if (glia_vm_pcall(vm, 1, 0) != LUA_OK) {
    for (int i = 0; i < nout; i++) {
      glia_tensor_release(out[i]);
      out[i] = NULL;
    }
    return GLIA_ESCRIPT;
  }
  return GLIA_OK;
}
