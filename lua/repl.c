/*
** lua/repl.c -- the interactive loop of the glia executable.
**
** Reads a chunk (libedit on a terminal, plain lines otherwise), tries it
** first as an expression ("return <chunk>") so values print, then as
** statements; a syntax error that ends at <eof> means the chunk is not
** finished, so another line is read under the continuation prompt (the rule
** lua.c uses). Errors are printed and the session goes on. On a terminal the
** REPL also keeps a capped history file, completes names with Tab, drops the
** typed line on Ctrl-C at the prompt, and turns Ctrl-C during a statement
** into a Lua error instead of killing the session.
**
** The whole loop runs inside one lua_pcall (like lua.c's pmain), so even an
** out-of-memory error from the Lua API cannot escape as a panic. libedit's
** completion hooks and signal handlers take no user data: one REPL runs per
** process, and `active` points at it while it runs.
*/
#include "binding.h"

#include <editline/readline.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define PROMPT "glia> "
#define PROMPT_MORE "  ...> "
#define HISTORY_MAX 1000
#define COMPLETER_KEY "glia.repl.completer"
#define MATCHES_KEY "glia.repl.matches"

typedef struct {
  glia_vm *vm;
  lua_State *L;
  int tty;          /* stdin is a terminal: prompts, history, completion */
  int timing;       /* .time on: print each statement's wall time */
  char *history;    /* history file (malloc'ed), NULL when disabled */
  char *last_entry; /* the last history entry, to skip repeats */
  int next_match;   /* completion: the next candidate to hand to libedit */
  pthread_t thread; /* the thread reading input and running statements */
} repl;

static repl *active;

/* A process-directed signal may land on any thread (the pool's workers,
** OpenBLAS's); handlers pass it on to the REPL's thread, whose read() or
** Lua code it must interrupt. Returns 1 when the signal was passed on. */
static int pass_to_repl_thread(int sig) {
  if (pthread_equal(pthread_self(), active->thread)) return 0;
  pthread_kill(active->thread, sig);
  return 1;
}

/* Prints a message on stderr after whatever stdout still holds, so piped
** output keeps its order. */
static void report(const char *msg) {
  fflush(stdout);
  fprintf(stderr, "%s\n", msg);
  fflush(stderr);
}

/* ========================================================== input */

/* What read_line found: a line, the end of input, or Ctrl-C at the prompt
** (the partial line or chunk is dropped and a fresh prompt follows). */
enum { LINE_OK, LINE_EOF, LINE_CANCEL };

static volatile sig_atomic_t prompt_interrupted;

static void on_sigint_at_prompt(int sig) {
  int saved = errno;
  prompt_interrupted = 1;
  pass_to_repl_thread(sig);
  errno = saved;
}

/* libedit's input function: one byte of stdin. Ctrl-C interrupts the read;
** ending the line as Enter would let readline return normally, with the
** terminal restored, and read_line then drops the line. */
static int getc_interruptible(FILE *f) {
  (void)f;
  for (;;) {
    if (prompt_interrupted) return '\n'; /* also when it came between reads */
    unsigned char c;
    ssize_t n = read(STDIN_FILENO, &c, 1);
    if (n == 1) return c;
    if (n == 0 || errno != EINTR) return -1;
  }
}

/* Sets *line to the next line without its newline (malloc'ed; the caller
** frees it) when LINE_OK is returned. */
static int read_line(repl *R, const char *prompt, char **line) {
  if (!R->tty) {
    size_t cap = 0;
    *line = NULL;
    ssize_t n = getline(line, &cap, stdin);
    if (n < 0) {
      free(*line);
      return LINE_EOF;
    }
    if (n > 0 && (*line)[n - 1] == '\n') (*line)[n - 1] = 0;
    return LINE_OK;
  }
  struct sigaction sa, old;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint_at_prompt; /* no SA_RESTART: read() must return */
  sigemptyset(&sa.sa_mask);
  prompt_interrupted = 0;
  sigaction(SIGINT, &sa, &old);
  *line = readline(prompt);
  sigaction(SIGINT, &old, NULL);
  if (!prompt_interrupted) return *line ? LINE_OK : LINE_EOF;
  free(*line);
  return LINE_CANCEL;
}

/* The history file: $GLIA_HISTORY (empty disables it), else ~/.glia_history. */
static void history_open(repl *R) {
  const char *path = getenv("GLIA_HISTORY"), *home = getenv("HOME");
  if (path) {
    R->history = *path ? strdup(path) : NULL;
  } else if (home && *home) {
    size_t n = strlen(home) + sizeof "/.glia_history";
    R->history = malloc(n);
    if (R->history) snprintf(R->history, n, "%s/.glia_history", home);
  }
  stifle_history(HISTORY_MAX);
  if (R->history) read_history(R->history);
}

/* Adds a typed line to the history and saves the file at once, so a session
** that ends badly keeps what was typed. Blank lines and repeats are not kept. */
static void remember(repl *R, const char *line) {
  if (!R->tty || !*line || (R->last_entry && strcmp(R->last_entry, line) == 0)) return;
  add_history(line);
  free(R->last_entry);
  R->last_entry = strdup(line);
  if (R->history) write_history(R->history);
}

/* ================================================= loading chunks */

/* A syntax error at the end of the input means the chunk is unfinished:
** Lua 5.4 says "near <eof>", LuaJIT "near '<eof>'". */
static int incomplete(lua_State *L, int status) {
  if (status != LUA_ERRSYNTAX) return 0;
  size_t len;
  const char *msg = lua_tolstring(L, -1, &len);
  return (len >= 5 && strcmp(msg + len - 5, "<eof>") == 0) ||
         (len >= 7 && strcmp(msg + len - 7, "'<eof>'") == 0);
}

/* Loads code as an expression whose values print, else as statements.
** Pushes the function or the syntax error; returns the load status. */
static int load_chunk(lua_State *L, const char *code, size_t len) {
  const char *expr = lua_pushfstring(L, "return %s;", code);
  int status = luaL_loadbuffer(L, expr, strlen(expr), "=stdin");
  lua_remove(L, -2);
  if (status == LUA_OK) return status;
  lua_pop(L, 1);
  return luaL_loadbuffer(L, code, len, "=stdin");
}

#define CHUNK_CANCELLED (-1)

/* Loads the chunk whose first line is on the stack, reading continuation
** lines while it is unfinished. Replaces the text with the function or the
** error message and returns the load status; end of input in the middle of
** a chunk reports the chunk's syntax error. Ctrl-C pops the text and
** returns CHUNK_CANCELLED. */
static int read_rest(repl *R) {
  lua_State *L = R->L;
  for (;;) {
    size_t len;
    const char *code = lua_tolstring(L, -1, &len);
    int status = load_chunk(L, code, len);
    char *line = NULL;
    int got = incomplete(L, status) ? read_line(R, PROMPT_MORE, &line) : LINE_EOF;
    if (got == LINE_CANCEL) {
      lua_pop(L, 2);
      return CHUNK_CANCELLED;
    }
    if (got == LINE_EOF) {
      lua_remove(L, -2);
      return status;
    }
    lua_pop(L, 1);
    remember(R, line);
    lua_pushliteral(L, "\n");
    lua_pushstring(L, line);
    free(line);
    lua_concat(L, 3);
  }
}

/* ================================================ running chunks */

/* Ctrl-C while a statement runs: arm a hook that raises at the next Lua
** instruction (lua_sethook is safe in a signal handler). The handler
** uninstalls itself, so a second Ctrl-C kills a stuck C loop. */
static void interrupted(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted!");
}

static void on_sigint(int sig) {
  int saved = errno;
  if (!pass_to_repl_thread(sig)) {
    signal(sig, SIG_DFL);
    lua_sethook(active->L, interrupted, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
  }
  errno = saved;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Prints the values above `base` with print(), which calls tostring: a
** tensor prints summarized with its dtype and shape. */
static void print_values(lua_State *L, int base) {
  int n = lua_gettop(L) - base;
  if (n == 0) return;
  luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
  lua_getglobal(L, "print");
  lua_insert(L, base + 1);
  if (lua_pcall(L, n, 0, 0) != LUA_OK) {
    report(lua_pushfstring(L, "error calling 'print' (%s)", lua_tostring(L, -1)));
    lua_pop(L, 2);
  }
}

/* Runs the function on top of the stack and prints its values or error. */
static void run_chunk(repl *R) {
  lua_State *L = R->L;
  int base = lua_gettop(L) - 1;
  struct sigaction old, sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  if (R->tty) sigaction(SIGINT, &sa, &old);
  double t0 = now();
  int status = glia_vm_pcall(R->vm, 0, LUA_MULTRET);
  double dt = now() - t0;
  if (R->tty) sigaction(SIGINT, &old, NULL);
  lua_sethook(L, NULL, 0, 0); /* a Ctrl-C that came after the last instruction */
  if (status != LUA_OK)
    report(glia_vm_errmsg(R->vm));
  else
    print_values(L, base);
  if (R->timing) {
    if (dt < 1.0)
      printf("time: %.3f ms\n", dt * 1e3);
    else
      printf("time: %.3f s\n", dt);
  }
  lua_settop(L, base);
}

/* ================================================== REPL commands */

static const char help_text[] =
    "  .time on|off   print the wall time of each statement\n"
    "  .help          this text\n"
    "Expressions print their values; Tab completes globals, fields (t.x) and\n"
    "methods (t:x); Ctrl-C interrupts a statement; Ctrl-D exits.\n";

/* Handles a REPL command (".time on"); returns 0 when line is not one, so
** Lua still gets lines like ".5". */
static int run_command(repl *R, const char *line) {
  while (*line == ' ' || *line == '\t') line++;
  char cmd[16], arg[16];
  int n = sscanf(line, ".%15s %15s", cmd, arg);
  if (n < 1) return 0;
  if (strcmp(cmd, "help") == 0 && n == 1) {
    fputs(help_text, stdout);
  } else if (strcmp(cmd, "time") == 0 && n == 1) {
    printf("timing is %s\n", R->timing ? "on" : "off");
  } else if (strcmp(cmd, "time") == 0 && (strcmp(arg, "on") == 0 || strcmp(arg, "off") == 0)) {
    R->timing = strcmp(arg, "on") == 0;
  } else {
    return 0;
  }
  return 1;
}

/* ===================================================== completion */

/* Candidates for the word before the cursor, sorted: globals and keywords;
** after "a.b." the fields of a.b; after "a.b:" its methods. Fields come from
** the value itself (a table) and from the tables on its metatables' __index
** chain; a tensor's __index is a function, so its methods come from the
** module's method table. Paths are resolved with rawget only: completing
** never runs user code. */
static const char completer_src[] =
    "local G, loaded = _G, package.loaded\n"
    "local type, rawget, getmetatable = type, rawget, getmetatable\n"
    "local pairs, ipairs, sort = pairs, ipairs, table.sort\n"
    "local keywords = {'and', 'break', 'do', 'else', 'elseif', 'end', 'false',\n"
    "  'for', 'function', 'goto', 'if', 'in', 'local', 'nil', 'not', 'or',\n"
    "  'repeat', 'return', 'then', 'true', 'until', 'while'}\n"
    "local function sources(v)\n"
    "  local list = {}\n"
    "  for _ = 1, 16 do\n"
    "    if type(v) == 'table' then list[#list + 1] = v end\n"
    "    local mt = getmetatable(v)\n"
    "    if type(mt) ~= 'table' then break end\n"
    "    local index = rawget(mt, '__index')\n"
    "    if type(index) ~= 'table' then\n"
    "      local core = loaded['glia.core']\n"
    "      if rawget(mt, '__name') == 'glia.tensor' and type(core) == 'table' then\n"
    "        list[#list + 1] = rawget(core, '_methods')\n"
    "      end\n"
    "      break\n"
    "    end\n"
    "    v = index\n"
    "  end\n"
    "  return list\n"
    "end\n"
    "local function field(v, k)\n"
    "  for _, t in ipairs(sources(v)) do\n"
    "    local x = rawget(t, k)\n"
    "    if x ~= nil then return x end\n"
    "  end\n"
    "end\n"
    "return function(text)\n"
    "  local head, sep, part = text:match('^(.-)([.:])([%w_]*)$')\n"
    "  local v = G\n"
    "  if head then\n"
    "    for name in (head .. '.'):gmatch('(.-)%.') do\n"
    "      if not name:match('^[%a_][%w_]*$') then return {} end\n"
    "      v = field(v, name)\n"
    "    end\n"
    "  else\n"
    "    head, sep, part = '', '', text\n"
    "  end\n"
    "  local seen, out = {}, {}\n"
    "  local function add(name, value)\n"
    "    if type(name) == 'string' and not seen[name] and name:sub(1, #part) == part\n"
    "       and name:match('^[%a_][%w_]*$') and (sep ~= ':' or type(value) == 'function') then\n"
    "      seen[name] = true\n"
    "      out[#out + 1] = head .. sep .. name\n"
    "    end\n"
    "  end\n"
    "  for _, t in ipairs(sources(v)) do\n"
    "    for k, x in pairs(t) do add(k, x) end\n"
    "  end\n"
    "  if sep == '' then\n"
    "    for _, k in ipairs(keywords) do add(k, true) end\n"
    "  end\n"
    "  sort(out)\n"
    "  return out\n"
    "end\n";

/* Under pcall: runs the completer on the text (argument 1) and keeps the
** candidate list in the registry for next_match. */
static int collect_matches(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, COMPLETER_KEY);
  lua_pushvalue(L, 1);
  lua_call(L, 1, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, MATCHES_KEY);
  return 0;
}

/* libedit's generator: one candidate per call (malloc'ed, libedit frees
** it), NULL when there are no more. */
static char *next_match(const char *text, int state) {
  (void)text;
  lua_State *L = active->L;
  if (state == 0) active->next_match = 1;
  lua_getfield(L, LUA_REGISTRYINDEX, MATCHES_KEY);
  char *m = NULL;
  if (lua_istable(L, -1)) {
    lua_rawgeti(L, -1, active->next_match++);
    if (lua_isstring(L, -1)) m = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return m;
}

static char **complete(const char *text, int start, int end) {
  (void)start, (void)end;
  lua_State *L = active->L;
  rl_attempted_completion_over = 1; /* never fall back to file names */
  rl_completion_append_character = '\0';
  lua_pushcfunction(L, collect_matches);
  lua_pushstring(L, text);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    lua_pop(L, 1);
    return NULL;
  }
  char **matches = rl_completion_matches(text, next_match);
  lua_pushnil(L);
  lua_setfield(L, LUA_REGISTRYINDEX, MATCHES_KEY);
  return matches;
}

/* Loads the completer into the registry. */
static void completion_open(repl *R) {
  lua_State *L = R->L;
  if (luaL_loadbuffer(L, completer_src, sizeof completer_src - 1, "=repl completer") != LUA_OK ||
      lua_pcall(L, 0, 1, 0) != LUA_OK) {
    report(lua_tostring(L, -1));
    lua_pop(L, 1);
    return;
  }
  lua_setfield(L, LUA_REGISTRYINDEX, COMPLETER_KEY);
}

/* Configures libedit before its first use (rl_initialize reads these).
** Dots and colons are not word breaks, so "glia.ze" reaches the completer
** whole. */
static void editline_open(repl *R) {
  rl_readline_name = "glia";
  rl_getc_function = getc_interruptible;
  rl_basic_word_break_characters = " \t\n\"'`@$><=;|&{}()[],+-*/%^~#";
  rl_attempted_completion_function = complete;
  rl_initialize();
  history_open(R);
}

/* ========================================================== the loop */

/* The global `glia`, so users can type glia.randn(3, 3) at once. */
static void preload_glia(repl *R) {
  lua_State *L = R->L;
  lua_getglobal(L, "glia");
  int present = !lua_isnil(L, -1);
  lua_pop(L, 1);
  if (present) return;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "glia");
  if (glia_vm_pcall(R->vm, 1, 1) != LUA_OK) {
    report(glia_vm_errmsg(R->vm));
    return;
  }
  lua_setglobal(L, "glia");
}

static int repl_main(lua_State *L) {
  repl *R = lua_touserdata(L, 1);
  lua_settop(L, 0);
  preload_glia(R);
  if (R->tty) {
    completion_open(R);
    editline_open(R);
    printf("glia %s (%s) -- .help for help, Ctrl-D to exit\n", GLIA_VERSION, GLIA_LUA_NAME);
  }
  char *line;
  int got;
  while ((got = read_line(R, PROMPT, &line)) != LINE_EOF) {
    if (got == LINE_CANCEL) continue;
    remember(R, line);
    if (run_command(R, line)) {
      free(line);
      continue;
    }
    lua_pushstring(L, line);
    free(line);
    int status = read_rest(R);
    if (status == LUA_OK) {
      run_chunk(R);
    } else if (status != CHUNK_CANCELLED) {
      report(lua_tostring(L, -1));
      lua_pop(L, 1);
    }
    fflush(stdout);
  }
  if (R->tty) putchar('\n'); /* Ctrl-D leaves the cursor after the prompt */
  return 0;
}

int glia_repl(glia_vm *vm) {
  repl R = {vm, glia_vm_lua(vm), isatty(STDIN_FILENO), 0, NULL, NULL, 0, pthread_self()};
  repl *outer = active;
  active = &R;
  lua_State *L = R.L;
  lua_pushcfunction(L, repl_main);
  lua_pushlightuserdata(L, &R);
  int status = lua_pcall(L, 1, 0, 0);
  if (status != LUA_OK) {
    report(lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  active = outer;
  free(R.history);
  free(R.last_entry);
  return status == LUA_OK ? 0 : 1;
}
