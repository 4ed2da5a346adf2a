/*
** lua/mpi.c -- glia.mpi, the collectives of glia.distributed over MPI.
**
** A module of its own (lib/lua/<abi>/glia/mpi.so), built only where mpi.h is
** found and loaded only by glia.distributed.init(): a script that never
** calls init() does not need MPI installed. It links MPI and reaches tensors
** through the binding's glia_lua_capi (lua/capi.h), never the core.
**
** Every collective is started non-blocking and waited for by polling
** (wait_request), never by a blocking MPI call, so that no rank can hang on
** a rank that has gone: a rank that ends -- normally or because its script
** raised an error -- first tells every other rank so on a communicator of
** its own (`notes`), and a rank waiting in a collective that hears it, and
** whose collective still has not completed a grace period later, calls
** MPI_Abort, which ends the whole job. Ranks that all end normally meet in a
** barrier on `notes`, collect the notes and finalize.
**
** Before a checked collective the ranks exchange a signature of the call
** (which collective, op, root, dtype, contiguity, shape): every rank then
** raises the same error naming the rank and shapes that differ, instead of
** MPI mixing up buffers of different sizes. A call that is bad on one rank
** alone (not a tensor, a freed one, a bad op or root) is exchanged too, its
** message in the signature, before anyone raises: a rank that raised alone
** would pair its next collective with the others' this one. Ranks are
** 0-based, as in MPI.
*/
#include <dlfcn.h>
#include <mpi.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capi.h"

#define MPI_STATE_MT "glia.mpi.state"
#define HANDLE_MT "glia.mpi.handle"
#define TAG_ENDING 7301
#define GRACE_SECONDS 3.0

/* One per process (MPI is): whether init ran, and the communicators. */
static struct {
  int initialized, finalized;
  int rank, size;
  MPI_Comm comm;  /* the collectives */
  MPI_Comm notes; /* "this rank is ending" notes and the final barrier */
  int sent_ending;
} S;

enum { K_ALL_REDUCE, K_BROADCAST, K_ALL_GATHER, K_REDUCE_SCATTER, K_COUNT };
static const char *const kind_names[] = {"all_reduce", "broadcast", "all_gather",
                                         "reduce_scatter", NULL};
enum { OP_SUM, OP_MEAN };
static const char *const op_names[] = {"sum", "mean", NULL};

/* ======================================================== errors */

/* The core's API (lua/capi.h); an error when glia was not required first. */
static const glia_lua_capi *capi_of(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, GLIA_LUA_CAPI_KEY);
  const glia_lua_capi *api = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (!api || api->version != GLIA_LUA_CAPI_VERSION)
    luaL_error(L, "glia.distributed: require \"glia\" before glia.mpi");
  return api;
}

/* Raises the formatted message at the user's line that called into
** glia.distributed, past its Lua wrappers (the core's `where`). */
static int fail(lua_State *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(lua_State *L, const char *fmt, ...) {
  char msg[640];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  capi_of(L)->where(L);
  lua_pushstring(L, msg);
  lua_concat(L, 2);
  return lua_error(L);
}

/* ======================================================== waiting */

/* Ends the job from this rank: the message on stderr, then MPI_Abort. */
static void abort_job(const char *msg) {
  fprintf(stderr, "glia.distributed: rank %d: %s; ending the job\n", S.rank, msg);
  fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
}

/* Polls r to completion. If another rank says it is ending while r is not
** done (its collective can then never complete), waits GRACE_SECONDS more,
** for a collective that the ending rank did finish, and ends the job. */
static void wait_request(MPI_Request *r, const char *what) {
  double heard = -1;
  int ender = -1;
  for (long spins = 0;; spins++) {
    int done = 0;
    MPI_Test(r, &done, MPI_STATUS_IGNORE);
    if (done) return;
    if (heard < 0) {
      int note = 0;
      MPI_Status st;
      MPI_Iprobe(MPI_ANY_SOURCE, TAG_ENDING, S.notes, &note, &st);
      if (note) {
        heard = MPI_Wtime();
        ender = st.MPI_SOURCE;
      }
    } else if (MPI_Wtime() - heard > GRACE_SECONDS) {
      char msg[160];
      snprintf(msg, sizeof msg, "rank %d ended while this rank waits in %s", ender, what);
      abort_job(msg);
    }
    if (spins > 1000) sched_yield(); /* ranks may share cores (--oversubscribe) */
  }
}

/* ======================================================== the state */

static void complete_open_handles(void);

/* Tells the other ranks this one is ending, meets them in a barrier on
** `notes` (they are ending too, or hear it and abort), then finalizes. */
static void finish(void) {
  if (!S.initialized || S.finalized) return;
  /* Collectives still open own buffers MPI writes into: finish them while
  ** MPI is still there (the other ranks are in them too). */
  complete_open_handles();
  S.finalized = 1;
  int one = 1, n = S.size;
  MPI_Request *sends = calloc((size_t)n, sizeof *sends);
  if (!sends) abort_job("out of memory ending");
  for (int r = 0; r < n; r++) {
    sends[r] = MPI_REQUEST_NULL;
    if (r != S.rank) MPI_Isend(&one, 1, MPI_INT, r, TAG_ENDING, S.notes, &sends[r]);
  }
  MPI_Request bar;
  MPI_Ibarrier(S.notes, &bar);
  for (long spins = 0;; spins++) {
    int done = 0;
    MPI_Test(&bar, &done, MPI_STATUS_IGNORE);
    if (done) break;
    if (spins > 1000) sched_yield();
  }
  for (int r = 0; r < n - 1; r++) {
    int got;
    MPI_Recv(&got, 1, MPI_INT, MPI_ANY_SOURCE, TAG_ENDING, S.notes, MPI_STATUS_IGNORE);
  }
  MPI_Waitall(n, sends, MPI_STATUSES_IGNORE);
  free(sends);
  MPI_Comm_free(&S.notes);
  MPI_Comm_free(&S.comm);
  MPI_Finalize();
}

/* The state userdata's __gc: runs when the Lua state closes, after the
** script's end or its error (then the error was already printed). */
static int state_gc(lua_State *L) {
  (void)L;
  finish();
  return 0;
}

static int m_init(lua_State *L) {
  if (S.finalized) return luaL_error(L, "glia.distributed.init: MPI was already finalized");
  if (!S.initialized) {
    /* A module loaded with RTLD_LOCAL hides libmpi's symbols from the
    ** plugins Open MPI loads itself: make them global (as mpi4py does). */
    dlopen("libmpi.so.40", RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
    int provided, already = 0;
    MPI_Initialized(&already);
    if (!already && MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
      return luaL_error(L, "glia.distributed.init: MPI_Init_thread failed");
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
    MPI_Comm_dup(MPI_COMM_WORLD, &S.comm);
    MPI_Comm_dup(MPI_COMM_WORLD, &S.notes);
    MPI_Comm_rank(S.comm, &S.rank);
    MPI_Comm_size(S.comm, &S.size);
    S.initialized = 1;
    /* finish() runs when this state closes: anchor a userdata with __gc. */
    compat_newuserdata(L, 1);
    luaL_newmetatable(L, MPI_STATE_MT);
    lua_pushcfunction(L, state_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, MPI_STATE_MT);
  }
  lua_pushinteger(L, S.rank);
  lua_pushinteger(L, S.size);
  return 2;
}

static void need_init(lua_State *L, const char *fname) {
  if (!S.initialized || S.finalized)
    fail(L, "glia.distributed.%s: call glia.distributed.init() first%s", fname,
               S.finalized ? " (MPI was finalized)" : "");
}

static int m_barrier(lua_State *L) {
  need_init(L, "barrier");
  MPI_Request r;
  MPI_Ibarrier(S.comm, &r);
  wait_request(&r, "barrier");
  return 0;
}

static int m_finalize(lua_State *L) {
  (void)L;
  finish();
  return 0;
}

static int m_abort(lua_State *L) {
  const char *msg = luaL_checkstring(L, 1);
  if (!S.initialized || S.finalized) return luaL_error(L, "%s", msg);
  abort_job(msg);
  return 0;
}

static int m_wtime(lua_State *L) {
  lua_pushnumber(L, MPI_Wtime());
  return 1;
}

/* ===================================================== signatures */

/* What a rank passes to a collective, exchanged before a checked one. */
enum { SIG_KIND, SIG_OP, SIG_ROOT, SIG_DTYPE, SIG_CONTIG, SIG_NDIM, SIG_SIZE, SIG_BAD = SIG_SIZE + 8,
       SIG_MSG, SIG_MSG_WORDS = 24, SIG_LEN = SIG_MSG + SIG_MSG_WORDS };
/* SIG_BAD: this rank's call is bad by itself, SIG_MSG..: why (NUL-ended). */
#define SIG_MSG_BYTES (SIG_MSG_WORDS * 8)

static void shape_of(const int64_t *sig, char *buf, size_t cap) {
  size_t k = (size_t)snprintf(buf, cap, "{");
  for (int d = 0; d < sig[SIG_NDIM] && k < cap; d++)
    k += (size_t)snprintf(buf + k, cap - k, "%s%lld", d ? "," : "", (long long)sig[SIG_SIZE + d]);
  if (k < cap) snprintf(buf + k, cap - k, "}");
}

/* bad: this rank's own problem with the call (then b is not read), or NULL. */
static void fill_sig(int64_t *sig, int kind, int op, int64_t root, const glia_lua_buffer *b,
                     const char *bad) {
  memset(sig, 0, SIG_LEN * sizeof *sig);
  sig[SIG_KIND] = kind;
  sig[SIG_OP] = op;
  sig[SIG_ROOT] = root;
  if (bad) {
    sig[SIG_BAD] = 1;
    snprintf((char *)&sig[SIG_MSG], SIG_MSG_BYTES, "%s", bad);
    return;
  }
  strncpy((char *)&sig[SIG_DTYPE], b->dtype, sizeof sig[SIG_DTYPE]);
  sig[SIG_CONTIG] = b->contiguous;
  sig[SIG_NDIM] = b->ndim;
  for (int d = 0; d < b->ndim; d++) sig[SIG_SIZE + d] = b->size[d];
}

/* The first problem with the call over all ranks' signatures `all` (or with
** this rank's alone when all is NULL), as a message in buf; 0 if none. */
static int check_sigs(const int64_t *all, int n, const int64_t *mine, char *buf, size_t cap) {
  char s1[128], s2[128];
  int nr = all ? n : 1;
  for (int r = 0; r < nr; r++) {
    const int64_t *g = all ? all + (size_t)r * SIG_LEN : mine;
    int who = all ? r : S.rank;
    if (g[SIG_BAD]) {
      char why[SIG_MSG_BYTES + 1] = {0};
      memcpy(why, &g[SIG_MSG], SIG_MSG_BYTES);
      return snprintf(buf, cap, "rank %d: %s", who, why);
    }
    char dtype[9] = {0};
    memcpy(dtype, &g[SIG_DTYPE], 8);
    shape_of(g, s1, sizeof s1);
    if (strcmp(dtype, "f32") != 0)
      return snprintf(buf, cap, "rank %d passed a %s tensor %s (collectives take f32 tensors)",
                      who, dtype, s1);
    if (!g[SIG_CONTIG])
      return snprintf(buf, cap,
                      "rank %d passed a non-contiguous tensor %s (call :contiguous() first)",
                      who, s1);
    if (g[SIG_KIND] == K_BROADCAST && (g[SIG_ROOT] < 0 || g[SIG_ROOT] >= n))
      return snprintf(buf, cap, "rank %d passed root %lld, not a rank of 0..%d", who,
                      (long long)g[SIG_ROOT], n - 1);
    if (g[SIG_KIND] == K_REDUCE_SCATTER && (g[SIG_NDIM] == 0 || g[SIG_SIZE] % n != 0))
      return snprintf(buf, cap,
                      "rank %d passed a tensor %s whose first dim does not split over %d ranks",
                      who, s1, n);
    if (!all || r == 0) continue;
    shape_of(all, s2, sizeof s2);
    if (g[SIG_KIND] != all[SIG_KIND] || g[SIG_OP] != all[SIG_OP] || g[SIG_ROOT] != all[SIG_ROOT])
      return snprintf(buf, cap, "ranks disagree on the call: rank 0 runs %s(%s, root %lld), rank %d "
                      "runs %s(%s, root %lld)",
                      kind_names[all[SIG_KIND]], op_names[all[SIG_OP]], (long long)all[SIG_ROOT],
                      r, kind_names[g[SIG_KIND]], op_names[g[SIG_OP]], (long long)g[SIG_ROOT]);
    if (g[SIG_NDIM] != all[SIG_NDIM] ||
        memcmp(&g[SIG_SIZE], &all[SIG_SIZE], 8 * sizeof *g) != 0)
      return snprintf(buf, cap, "shapes differ across ranks: rank 0 has %s, rank %d has %s", s2, r,
                      s1);
  }
  return 0;
}

/* ======================================================== handles */

/* A started collective. It holds a reference to each tensor it reads or
** writes until it completes; `mean` scales the result then. */
typedef struct handle {
  MPI_Request req;
  int kind, active, mean;
  void *tensor[2];
  float *out;
  int64_t out_n;
  const glia_lua_capi *api;
  struct handle *prev, *next; /* in `open_handles` while active */
} handle;

/* The active handles, oldest first: finish() completes them in the order
** they started, the order every rank started them in. */
static handle *open_first, *open_last;

static void handle_complete(handle *h) {
  if (!h->active) return;
  wait_request(&h->req, kind_names[h->kind]);
  h->active = 0;
  if (h->prev) h->prev->next = h->next; else open_first = h->next;
  if (h->next) h->next->prev = h->prev; else open_last = h->prev;
  h->prev = h->next = NULL;
  if (h->mean)
    for (int64_t i = 0; i < h->out_n; i++) h->out[i] /= (float)S.size;
  for (int i = 0; i < 2; i++) {
    if (h->tensor[i]) h->api->release(h->tensor[i]);
    h->tensor[i] = NULL;
  }
}

static void complete_open_handles(void) {
  while (open_first) handle_complete(open_first);
}

/* A handle of a finalized MPI: finalize completed its collective, but the
** handle is an error to use, as every other call after finalize is. */
static handle *live_handle(lua_State *L, const char *what) {
  handle *h = luaL_checkudata(L, 1, HANDLE_MT);
  if (S.finalized)
    fail(L, "glia.distributed: handle:%s() after glia.distributed.finalize() (finalize "
            "waited for its %s)", what, kind_names[h->kind]);
  return h;
}

static int h_wait(lua_State *L) {
  handle_complete(live_handle(L, "wait"));
  return 0;
}

/* h:test(): true once the collective completed (then as h:wait()). */
static int h_test(lua_State *L) {
  handle *h = live_handle(L, "test");
  int done = 1;
  if (h->active) MPI_Test(&h->req, &done, MPI_STATUS_IGNORE);
  if (done && h->active) {
    h->req = MPI_REQUEST_NULL; /* completed: wait_request returns at once */
    handle_complete(h);
  }
  lua_pushboolean(L, done);
  return 1;
}

/* A handle dropped before wait() still owns its buffers: waits for them,
** unless MPI is gone (then the process is ending anyway). */
static int h_gc(lua_State *L) {
  handle *h = luaL_checkudata(L, 1, HANDLE_MT);
  if (h->active && !S.finalized) handle_complete(h);
  for (int i = 0; i < 2; i++)
    if (h->tensor[i]) h->api->release(h->tensor[i]);
  h->tensor[0] = h->tensor[1] = NULL;
  h->active = 0;
  return 0;
}

/* Reads the tensor at idx into b; 0, or 1 with the problem in why. */
static int check_buffer(lua_State *L, const glia_lua_capi *api, int idx, glia_lua_buffer *b,
                        char *why, size_t cap) {
  if (!api->buffer(L, idx, b))
    return snprintf(why, cap, "expected a live tensor, got %s%s", luaL_typename(L, idx),
                    lua_isuserdata(L, idx) ? " (freed?)" : "") > 0;
  if (b->numel > 0x7fffffff)
    return snprintf(why, cap, "a tensor of %lld elements is more than one MPI call sends (2^31-1)",
                    (long long)b->numel) > 0;
  return 0;
}

/* mpi.start(kind, op, t, out, root, check, bad) -> handle. t is the input
** (and the output of all_reduce and broadcast, in place); out receives
** all_gather ({size, ...t}) and reduce_scatter (t's first dim / size).
** bad: the caller's own complaint about this rank's arguments (or nil),
** raised on every rank after the exchange, as the problems found here are. */
static int m_start(lua_State *L) {
  int kind = luaL_checkoption(L, 1, NULL, kind_names);
  const char *fname = kind_names[kind];
  need_init(L, fname);
  const glia_lua_capi *api = capi_of(L);
  int op = luaL_checkoption(L, 2, "sum", op_names);
  int separate = kind == K_ALL_GATHER || kind == K_REDUCE_SCATTER;
  int checked = lua_isnone(L, 6) || lua_toboolean(L, 6);
  glia_lua_buffer in, out;
  char why[SIG_MSG_BYTES];
  const char *bad = NULL;
  /* root stays 64-bit until check_sigs compares it with the world: an (int)
  ** cast would wrap 2^32 to rank 0. */
  lua_Number rn = luaL_optnumber(L, 5, 0);
  int64_t root = 0;
  if (lua_isstring(L, 7)) {
    bad = lua_tostring(L, 7);
  } else if (check_buffer(L, api, 3, &in, why, sizeof why) ||
             (separate && check_buffer(L, api, 4, &out, why, sizeof why))) {
    bad = why;
  } else if (!(rn > -1e18 && rn < 1e18)) {
    snprintf(why, sizeof why, "root %g is not a rank", (double)rn);
    bad = why;
  } else {
    root = (int64_t)rn;
  }

  int64_t mine[SIG_LEN];
  fill_sig(mine, kind, op, root, &in, bad);
  char msg[SIG_MSG_BYTES + 256];
  if (checked) {
    int64_t *all = lua_newuserdata(L, (size_t)S.size * SIG_LEN * sizeof *all);
    MPI_Request r;
    MPI_Iallgather(mine, SIG_LEN, MPI_INT64_T, all, SIG_LEN, MPI_INT64_T, S.comm, &r);
    wait_request(&r, fname);
    if (check_sigs(all, S.size, mine, msg, sizeof msg))
      return fail(L, "glia.distributed.%s: %s", fname, msg);
    lua_pop(L, 1);
  } else if (check_sigs(NULL, S.size, mine, msg, sizeof msg)) {
    return fail(L, "glia.distributed.%s: %s", fname, msg);
  }
  int64_t want = kind == K_ALL_GATHER ? in.numel * S.size
               : kind == K_REDUCE_SCATTER ? in.numel / S.size : in.numel;
  if (separate && (strcmp(out.dtype, "f32") != 0 || !out.contiguous || out.numel != want))
    return fail(L, "glia.distributed.%s: the output must be a contiguous f32 tensor of %lld "
                      "elements", fname, (long long)want);

  handle *h = lua_newuserdata(L, sizeof *h);
  memset(h, 0, sizeof *h);
  h->req = MPI_REQUEST_NULL;
  h->kind = kind;
  h->api = api;
  luaL_setmetatable(L, HANDLE_MT);
  int n = (int)in.numel;
  switch (kind) {
  case K_ALL_REDUCE:
    MPI_Iallreduce(MPI_IN_PLACE, in.data, n, MPI_FLOAT, MPI_SUM, S.comm, &h->req);
    break;
  case K_BROADCAST:
    MPI_Ibcast(in.data, n, MPI_FLOAT, (int)root, S.comm, &h->req); /* in 0..size-1 */
    break;
  case K_ALL_GATHER:
    MPI_Iallgather(in.data, n, MPI_FLOAT, out.data, n, MPI_FLOAT, S.comm, &h->req);
    break;
  default:
    MPI_Ireduce_scatter_block(in.data, out.data, (int)want, MPI_FLOAT, MPI_SUM, S.comm, &h->req);
    break;
  }
  h->active = 1;
  h->prev = open_last;
  if (open_last) open_last->next = h; else open_first = h;
  open_last = h;
  h->mean = op == OP_MEAN && (kind == K_ALL_REDUCE || kind == K_REDUCE_SCATTER);
  h->out = separate ? out.data : in.data;
  h->out_n = want;
  api->retain(in.tensor);
  h->tensor[0] = in.tensor;
  if (separate) {
    api->retain(out.tensor);
    h->tensor[1] = out.tensor;
  }
  return 1;
}

/* ======================================================== the module */

static int m_rank(lua_State *L) {
  need_init(L, "rank");
  lua_pushinteger(L, S.rank);
  return 1;
}

static int m_size(lua_State *L) {
  need_init(L, "world_size");
  lua_pushinteger(L, S.size);
  return 1;
}

static int m_library(lua_State *L) {
  char v[MPI_MAX_LIBRARY_VERSION_STRING];
  int n = 0;
  MPI_Get_library_version(v, &n);
  lua_pushlstring(L, v, (size_t)n);
  return 1;
}

int luaopen_glia_mpi(lua_State *L) __attribute__((visibility("default")));
int luaopen_glia_mpi(lua_State *L) {
  static const luaL_Reg handle_methods[] = {{"wait", h_wait}, {"test", h_test}, {NULL, NULL}};
  luaL_newmetatable(L, HANDLE_MT);
  lua_pushcfunction(L, h_gc);
  lua_setfield(L, -2, "__gc");
  lua_newtable(L);
  luaL_setfuncs(L, handle_methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  static const luaL_Reg funcs[] = {
      {"init", m_init},   {"rank", m_rank},         {"size", m_size},
      {"barrier", m_barrier}, {"start", m_start},   {"finalize", m_finalize},
      {"abort", m_abort}, {"wtime", m_wtime},       {"library", m_library},
      {NULL, NULL}};
  lua_newtable(L);
  luaL_setfuncs(L, funcs, 0);
  return 1;
}
