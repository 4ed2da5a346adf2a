/*
** lua/main.c -- the glia executable: a thin client of the embedding API.
**
**   glia [options] [script [args...]]
**     -e stmt   run stmt          -l mod   require mod into a global
**     -i        REPL after script -v       print the version
**     --env     print the shell exports that let lua5.4/luajit find glia
**   With no script and no -e, opens the REPL. Like lua(1), the script's
**   arguments land in the global `arg` (arg[0] = script).
*/
#include "binding.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void usage(void) {
  fputs("usage: glia [-e stmt] [-l mod] [-i] [-v] [--env] [script [args...]]\n", stderr);
}

static void print_env(void) {
  char exe[2048];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return;
  exe[n] = 0;
  char *slash = strrchr(exe, '/');
  if (slash) *slash = 0;
  char root[2100];
  snprintf(root, sizeof root, "%s/..", exe);
  char *real = realpath(root, NULL);
  const char *r = real ? real : root;
  printf("export LUA_PATH='%s/stdlib/?.lua;%s/stdlib/?/init.lua;%s/share/glia/?.lua;"
         "%s/share/glia/?/init.lua;;'\n",
         r, r, r, r);
  printf("export LUA_CPATH='%s/lib/lua/%s/?.so;;'\n", r, GLIA_LUA_ABI);
  free(real);
}

static void set_arg_table(lua_State *L, int argc, char **argv, int script) {
  lua_createtable(L, argc, 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

int main(int argc, char **argv) {
  glia_vm *vm = glia_vm_open();
  if (!vm) {
    fputs("glia: cannot create a VM (out of memory)\n", stderr);
    return 1;
  }
  lua_State *L = glia_vm_lua(vm);
  int interactive = 0, ran = 0, status = 0, script = argc;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "-e") == 0 || strcmp(a, "-l") == 0) {
      if (++i >= argc) {
        usage();
        status = 1;
        goto done;
      }
      set_arg_table(L, argc, argv, 0);
      glia_status st;
      if (a[1] == 'e') {
        st = glia_vm_run_string(vm, argv[i]);
        ran = 1;
      } else {
        char code[512];
        snprintf(code, sizeof code, "%s = require(%s%s%s)", argv[i], "'", argv[i], "'");
        for (char *c = code; *c && *c != '='; c++)
          if (*c == '.') *c = '_';
        st = glia_vm_run_string(vm, code);
      }
      if (st != GLIA_OK) {
        fprintf(stderr, "glia: %s\n", glia_vm_errmsg(vm));
        status = 1;
        goto done;
      }
    } else if (strcmp(a, "-i") == 0) {
      interactive = 1;
    } else if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
      printf("glia %s (%s)\n", GLIA_VERSION, GLIA_LUA_NAME);
      ran = 1;
    } else if (strcmp(a, "--env") == 0) {
      print_env();
      ran = 1;
    } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage();
      ran = 1;
    } else if (a[0] == '-' && a[1]) {
      fprintf(stderr, "glia: unknown option '%s'\n", a);
      usage();
      status = 1;
      goto done;
    } else {
      script = i;
      break;
    }
  }
  if (script < argc) {
    set_arg_table(L, argc, argv, script);
    lua_createtable(L, 0, 0);
    lua_State *Ls = L;
    if (luaL_loadfile(Ls, strcmp(argv[script], "-") == 0 ? NULL : argv[script]) != LUA_OK) {
      fprintf(stderr, "glia: %s\n", lua_tostring(L, -1));
      status = 1;
      goto done;
    }
    lua_remove(L, -2);
    int nargs = argc - script - 1;
    for (int i = script + 1; i < argc; i++) lua_pushstring(L, argv[i]);
    if (glia_vm_pcall(vm, nargs, 0) != LUA_OK) {
      fprintf(stderr, "glia: %s\n", glia_vm_errmsg(vm));
      status = 1;
      goto done;
    }
    ran = 1;
  }
  if (interactive || !ran) status = glia_repl(vm);
done:
  glia_vm_close(vm);
  return status;
}
