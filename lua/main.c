/*
** lua/main.c -- the glia executable: a thin client of the embedding API.
**
**   glia [options] [script [args...]]
**     -e stmt      run stmt
**     -l mod       require mod into a global named after its last part
**                  (-l glia.nn sets `nn`); -l g=mod names the global g
**     -i           open the REPL after the script
**     -v           print the version
**     --env        print the shell exports that let lua5.4/luajit find glia
**     --           stop handling options;  -  run stdin as the script
**
** Like lua(1): options are checked before anything runs, then -e and -l run
** in order, then the script, whose arguments land in the global `arg`
** (arg[0] = script, arg[-1].. = what came before) and in `...`. With no
** script, -e, -v or --env, the REPL opens. The exit status is 1 when an
** option or the script fails (message and traceback on stderr), else 0.
** The global `glia` is already require "glia" for -e, -l, the script and
** the REPL alike (as Torch7's th has `torch`).
*/
#include "binding.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static const char usage_text[] =
    "usage: glia [options] [script [args...]]\n"
    "  -e stmt    run stmt\n"
    "  -l mod     require mod into a global (g=mod names it g)\n"
    "  -i         open the REPL after the script\n"
    "  -v         print the version\n"
    "  --env      print the exports that let lua5.4/luajit require \"glia\"\n"
    "  --         stop handling options\n"
    "  -          run stdin as the script\n";

/* What the command line asks for, found before anything runs. */
typedef struct {
  int script; /* index of the script in argv, argc when there is none */
  int run_e, interactive, version, env, help;
} options;

/* An option's argument: attached ("-eprint(1)") or the next word. NULL
** when missing. */
static const char *option_arg(int argc, char **argv, int *i) {
  if (argv[*i][2]) return argv[*i] + 2;
  return ++*i < argc ? argv[*i] : NULL;
}

/* Checks the options and finds the script; returns 0 after printing a
** message when the command line is wrong. */
static int collect_options(int argc, char **argv, options *o) {
  memset(o, 0, sizeof *o);
  o->script = argc;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (a[0] != '-' || a[1] == 0) { /* the script, or "-" for stdin */
      o->script = i;
      return 1;
    }
    if (strcmp(a, "--") == 0) {
      o->script = i + 1 < argc ? i + 1 : argc;
      return 1;
    }
    if (strcmp(a, "--env") == 0) {
      o->env = 1;
    } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      o->help = 1;
    } else if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
      o->version = 1;
    } else if (strcmp(a, "-i") == 0) {
      o->interactive = 1;
    } else if (a[1] == 'e' || a[1] == 'l') {
      if (!option_arg(argc, argv, &i)) {
        fprintf(stderr, "glia: '-%c' needs an argument\n%s", a[1], usage_text);
        return 0;
      }
      o->run_e |= a[1] == 'e';
    } else {
      fprintf(stderr, "glia: unknown option '%s'\n%s", a, usage_text);
      return 0;
    }
  }
  return 1;
}

/* ==================================================== printing */

/* Prints s as one single-quoted shell word. */
static void put_shell_quoted(const char *s) {
  putchar('\'');
  for (; *s; s++)
    if (*s == '\'')
      fputs("'\\''", stdout);
    else
      putchar(*s);
  putchar('\'');
}

/* Where glia's Lua files and module live: the executable's parent (bin/glia
** in the build tree, PREFIX/bin/glia installed), or the tree's root for a
** per-flavor executable (build/<flavor>/bin/glia). Returns a malloc'ed real
** path, or NULL. */
static char *find_root(void) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return NULL;
  exe[n] = 0;
  char *slash = strrchr(exe, '/');
  if (slash) *slash = 0;
  static const char *const up[] = {"/..", "/../../.."};
  static const char *const marks[] = {"/stdlib/glia/init.lua", "/share/glia/glia/init.lua"};
  char path[PATH_MAX + 64];
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 2; j++) {
      snprintf(path, sizeof path, "%s%s%s", exe, up[i], marks[j]);
      if (access(path, R_OK) == 0) {
        snprintf(path, sizeof path, "%s%s", exe, up[i]);
        return realpath(path, NULL);
      }
    }
  snprintf(path, sizeof path, "%s/..", exe);
  return realpath(path, NULL);
}

/* The exports that let a stock interpreter of the same ABI find the stdlib
** (root/stdlib in the build tree, root/share/glia installed) and the module
** (root/lib/lua/<abi>). */
static int print_env(void) {
  char *root = find_root();
  if (!root) {
    fputs("glia: --env: cannot find where glia is installed\n", stderr);
    return 0;
  }
  static const char *const path_parts[] = {"/stdlib/?.lua;", "/stdlib/?/init.lua;",
                                           "/share/glia/?.lua;", "/share/glia/?/init.lua;"};
  char buf[4 * PATH_MAX + 64];
  size_t k = 0;
  for (int i = 0; i < 4; i++)
    k += (size_t)snprintf(buf + k, sizeof buf - k, "%s%s", root, path_parts[i]);
  snprintf(buf + k, sizeof buf - k, ";"); /* ";;" appends the default path */
  fputs("export LUA_PATH=", stdout);
  put_shell_quoted(buf);
  snprintf(buf, sizeof buf, "%s/lib/lua/%s/?.so;;", root, GLIA_LUA_ABI);
  fputs("\nexport LUA_CPATH=", stdout);
  put_shell_quoted(buf);
  putchar('\n');
  free(root);
  return 1;
}

/* ==================================================== running */

static int report(glia_vm *vm) {
  fflush(stdout);
  fprintf(stderr, "glia: %s\n", glia_vm_errmsg(vm));
  return 0;
}

/* The global `arg`: arg[0] is the script (or the program when there is
** none), negative indices what came before, positive ones its arguments. */
static void set_arg_table(lua_State *L, int argc, char **argv, int script) {
  if (script == argc) script = 0;
  lua_createtable(L, argc - script - 1 > 0 ? argc - script - 1 : 0, script + 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

/* -l [g=]mod: g = require(mod). Returns 0 after reporting a failure. */
static int run_library(glia_vm *vm, const char *spec) {
  lua_State *L = glia_vm_lua(vm);
  const char *eq = strchr(spec, '=');
  const char *mod = eq ? eq + 1 : spec;
  const char *dot = strrchr(mod, '.');
  const char *global = eq ? spec : dot ? dot + 1 : mod;
  size_t global_len = eq ? (size_t)(eq - spec) : strlen(global);
  lua_getglobal(L, "require");
  lua_pushstring(L, mod);
  if (glia_vm_pcall(vm, 1, 1) != LUA_OK) return report(vm);
  lua_pushlstring(L, global, global_len);
  const char *name = lua_tostring(L, -1); /* valid while on the stack */
  lua_insert(L, -2);
  lua_setglobal(L, name);
  lua_pop(L, 1);
  return 1;
}

/* Runs the -e and -l options in order; returns 0 at the first failure. */
static int run_options(glia_vm *vm, int script, char **argv) {
  for (int i = 1; i < script; i++) {
    const char *a = argv[i];
    if (a[0] != '-' || (a[1] != 'e' && a[1] != 'l')) continue;
    const char *value = option_arg(script, argv, &i);
    if (a[1] == 'e' && glia_vm_run_string(vm, value) != GLIA_OK) return report(vm);
    if (a[1] == 'l' && !run_library(vm, value)) return 0;
  }
  return 1;
}

/* Runs the script (stdin for "-") with its arguments as `...`. */
static int run_script(glia_vm *vm, int argc, char **argv, int script) {
  lua_State *L = glia_vm_lua(vm);
  const char *path = strcmp(argv[script], "-") == 0 ? NULL : argv[script];
  if (luaL_loadfile(L, path) != LUA_OK) {
    fflush(stdout);
    fprintf(stderr, "glia: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    return 0;
  }
  int nargs = argc - script - 1;
  luaL_checkstack(L, nargs, "too many script arguments");
  for (int i = script + 1; i < argc; i++) lua_pushstring(L, argv[i]);
  return glia_vm_pcall(vm, nargs, 0) == LUA_OK ? 1 : report(vm);
}

/* -v: the version, then what this process computes with (glia_config). */
static void print_version(glia_vm *vm) {
  const glia_config *c = glia_config_get();
  printf("glia %s (%s)\n", GLIA_VERSION, GLIA_LUA_NAME);
  if (c->error) {
    printf("BLAS:    %s\n", c->error);
  } else {
    printf("BLAS:    %s, kernel %s (chosen by %s)\n", c->blas_library, c->blas_kernel,
           c->blas_chosen_by);
    printf("         %s\n", c->blas_config);
  }
  printf("CPU:     %s, %s\n", c->cpu_vendor, c->cpu_features[0] ? c->cpu_features : "sse2");
  printf("kernels: %s; best BLAS kernel for this CPU: %s\n", c->glia_isa, c->blas_choice);
  if (vm) printf("threads: %d\n", glia_ctx_num_threads(glia_vm_ctx(vm)));
}

int main(int argc, char **argv) {
  options o;
  if (!collect_options(argc, argv, &o)) return 1;
  if (o.help) fputs(usage_text, stdout);
  if (o.env && !print_env()) return 1;
  glia_vm *vm = glia_vm_open();
  if (o.version) print_version(vm);
  if (!vm) {
    const char *why = glia_config_get()->error;
    fprintf(stderr, "%s\n", why ? why : "glia: cannot create a VM (out of memory)");
    return 1;
  }
  set_arg_table(glia_vm_lua(vm), argc, argv, o.script);
  int ok = run_library(vm, "glia") && run_options(vm, o.script, argv);
  if (ok && o.script < argc) ok = run_script(vm, argc, argv, o.script);
  int repl = o.interactive || (o.script == argc && !o.run_e && !o.version && !o.env && !o.help);
  if (ok && repl) ok = glia_repl(vm) == 0;
  glia_vm_close(vm);
  return ok ? 0 : 1;
}
