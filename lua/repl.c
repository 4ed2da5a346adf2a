/*
** lua/repl.c -- the interactive loop of the glia executable.
**
** Reads a line (libedit), tries it as an expression ("return <line>") and
** prints the values, else runs it as a statement. Errors are printed and
** the session goes on.
*/
#include "binding.h"

#include <stdio.h>
#include <stdlib.h>
#include <editline/readline.h>

static void print_results(lua_State *L, int n) {
  lua_getglobal(L, "print");
  lua_insert(L, -n - 1);
  lua_pcall(L, n, 0, 0);
}

int glia_repl(glia_vm *vm) {
  lua_State *L = glia_vm_lua(vm);
  char *line;
  while ((line = readline("glia> ")) != NULL) {
    if (*line) add_history(line);
    int top = lua_gettop(L);
    lua_pushfstring(L, "return %s", line);
    size_t len;
    const char *code = lua_tolstring(L, -1, &len);
    int rc = luaL_loadbuffer(L, code, len, "=stdin");
    lua_remove(L, -2);
    if (rc != LUA_OK) {
      lua_pop(L, 1);
      rc = luaL_loadbuffer(L, line, strlen(line), "=stdin");
    }
    free(line);
    if (rc != LUA_OK) {
      fprintf(stderr, "%s\n", lua_tostring(L, -1));
      lua_settop(L, top);
      continue;
    }
    if (glia_vm_pcall(vm, 0, LUA_MULTRET) != LUA_OK) {
      fprintf(stderr, "%s\n", glia_vm_errmsg(vm));
    } else if (lua_gettop(L) > top) {
      print_results(L, lua_gettop(L) - top);
    }
    lua_settop(L, top);
  }
  return 0;
}
