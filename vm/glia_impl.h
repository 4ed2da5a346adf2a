/*
** vm/glia_impl.h -- internal declarations shared by vm/, ops/ and lua/.
**
** Holds the layout of the context, storage, tensor and autograd node, plus
** the helpers every op uses: failing with a message, allocating outputs,
** broadcasting, strided iteration, the thread pool and tape recording.
** Nothing here is part of the installed contract (that is glia.h).
*/
#ifndef GLIA_IMPL_H
#define GLIA_IMPL_H

#include "glia.h"
#include <cblas.h>
#include <stdarg.h>
#include <stdbool.h>
#include <string.h>

#define GLIAI_FUNC __attribute__((visibility("hidden")))

#ifdef NDEBUG
#define GLIA_ALWAYS(x) (x)
#define GLIA_NEVER(x) (x)
#else
#include <assert.h>
#define GLIA_ALWAYS(x) ((x) ? 1 : (assert(0), 0))
#define GLIA_NEVER(x) ((x) ? (assert(0), 1) : 0)
#endif

#define GLIA_LIKELY(x) __builtin_expect(!!(x), 1)
#define GLIA_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* Propagates a failing status. */
#define TRY(expr)                                                           \
  do {                                                                      \
    glia_status st_ = (expr);                                               \
    if (GLIA_UNLIKELY(st_ != GLIA_OK)) return st_;                          \
  } while (0)

typedef struct glia_node glia_node;
typedef struct glia_pool glia_pool;

/* ---------------------------------------------------------------- storage */

/* The bytes behind one or more views. `version` counts in-place writes so
** the tape can detect a saved tensor modified before backward. */
typedef struct glia_storage {
  int64_t refcount;
  size_t nbytes;
  void *data;
  glia_ctx *G;
  uint64_t version;
  void (*host_release)(void *ud, void *data); /* set for wrapped memory */
  void *host_ud;
  int from_host;
} glia_storage;

struct glia_tensor {
  int64_t refcount;
  glia_ctx *G;
  glia_storage *storage; /* NULL after t:free() */
  glia_dtype dtype;
  int ndim;
  int64_t size[GLIA_MAX_DIMS];
  int64_t stride[GLIA_MAX_DIMS]; /* in elements */
  int64_t offset;                /* in elements */
  bool requires_grad;            /* leaves only: accumulate into grad */
  glia_tensor *grad;             /* owned */
  glia_node *grad_fn;            /* owned; NULL for leaves */
  bool grad_hook;                /* leaves: call the context's grad hook */
  bool hook_mark;                /* set while a backward counts this leaf */
  int64_t hook_pending;          /* that backward's nodes yet to add to grad */
  glia_tensor *free_next;        /* struct cache link */
};

/* ------------------------------------------------------------------- tape */

#define GLIA_NODE_MAX_IN 4
#define GLIA_NODE_MAX_SAVED 6

/* Fills din[i] (owned by the engine afterwards) for every i with
** node->needs[i], in the shape of input i: an op that broadcasts its inputs
** sums its gradients back with glia_grads_to_inputs (ops/ops.h). The
** engine only checks the shape (GLIA_EINTERNAL otherwise). */
typedef glia_status (*glia_backward_fn)(glia_ctx *G, glia_node *node,
                                        glia_tensor *dout, glia_tensor **din);
/* For ops whose input gradient is dout placed into part of a zero tensor
** shaped like input 0 (narrow, select, slicing): adds dout into that part of
** acc, input 0's gradient so far. Such ops record a node with this and no
** backward: the three narrows of one qkv tensor then fill one buffer rather
** than making three of full size and adding them up. */
typedef glia_status (*glia_scatter_fn)(glia_ctx *G, glia_node *node, glia_tensor *dout,
                                       glia_tensor *acc);

struct glia_node {
  int64_t refcount;
  const char *name;
  glia_backward_fn backward; /* exactly one of the two is set */
  glia_scatter_fn scatter;
  int ninputs;
  glia_tensor *input[GLIA_NODE_MAX_IN]; /* references to forward inputs */
  bool needs[GLIA_NODE_MAX_IN];
  int nsaved;
  glia_tensor *saved[GLIA_NODE_MAX_SAVED]; /* detached aliases */
  uint64_t saved_version[GLIA_NODE_MAX_SAVED];
  int64_t iarg[GLIA_MAX_DIMS * 2];
  double farg[4];
  int out_ndim;
  int64_t out_size[GLIA_MAX_DIMS];
  void *extra; /* op-private, freed with free() if set */
  /* backward bookkeeping */
  glia_tensor *gout;
  int64_t pending;
  uint64_t seq;
  struct glia_node *next_dying; /* glia_node_release's work list */
};

/* Returns a node recording op `name` if grad mode is on and any of the n
** inputs requires grad, else NULL (and on allocation failure sets *st). */
GLIAI_FUNC glia_node *glia_node_begin(glia_ctx *G, const char *name,
                                      glia_backward_fn bw, int n,
                                      glia_tensor *const *in, glia_status *st);
/* Saves a detached alias of t in the node (refcounted, version recorded). */
GLIAI_FUNC glia_status glia_node_save(glia_ctx *G, glia_node *node, glia_tensor *t);
/* Attaches the node as out's grad_fn (consumes the node reference). */
GLIAI_FUNC void glia_node_finish(glia_node *node, glia_tensor *out);
GLIAI_FUNC void glia_node_release(glia_node *node);
/* Ends a recording: with st GLIA_OK attaches the node to out (as
** glia_node_finish), else releases it. Returns st. */
GLIAI_FUNC glia_status glia_node_end(glia_node *node, glia_status st, glia_tensor *out);
/* Borrowed saved tensor i, or fails if it was modified in place since. */
GLIAI_FUNC glia_status glia_node_saved(glia_ctx *G, glia_node *node, int i,
                                       glia_tensor **out);
GLIAI_FUNC bool glia_tensor_needs_grad(const glia_tensor *t);

/* ---------------------------------------------------------------- context */

/* Called by backward once per leaf with t->grad_hook set, as soon as the
** last node of that backward that adds into t->grad has run: the gradient is
** final, and the rest of the backward has not run yet (data-parallel
** training starts sending it then). Grad mode is off. A status other than
** GLIA_OK (message in the context) stops the backward with it. */
typedef glia_status (*glia_grad_hook_fn)(glia_ctx *G, void *ud, glia_tensor *leaf);
/* Called when a tensor with t->grad_hook is destroyed, so that whoever keeps
** its hook (the binding) can drop it. Must not fail. */
typedef void (*glia_grad_hook_drop_fn)(void *ud, glia_tensor *leaf);
/* Sets the context's one grad hook and its drop function (NULL: none). */
GLIAI_FUNC void glia_ctx_set_grad_hook(glia_ctx *G, glia_grad_hook_fn fn,
                                       glia_grad_hook_drop_fn drop, void *ud);

#define GLIA_ERRMSG_MAX 512
#define GLIA_CACHE_CLASSES 168

typedef struct glia_block {
  struct glia_block *next;
} glia_block;

struct glia_ctx {
  char errmsg[GLIA_ERRMSG_MAX];
  glia_pool *pool;
  int nthreads;
  uint64_t seed, rng_offset;
  int grad_mode;
  /* allocator */
  size_t live_bytes, peak_bytes, cached_bytes, cache_limit;
  glia_block *cache[GLIA_CACHE_CLASSES];
  /* large blocks (vm/ctx.c): arena chunks, the current chunk's free range,
  ** and per class the blocks whose pages went back to the kernel */
  void **chunks;
  int nchunks, chunks_cap;
  char *arena_next, *arena_end;
  glia_block *released[GLIA_CACHE_CLASSES];
  int64_t fail_countdown;
  bool fail_once; /* the countdown's allocation fails alone */
  glia_tensor *free_tensors; /* recycled tensor structs */
  int nfree_tensors;
  uint64_t node_seq;
  int index_base; /* of the op call running now: 0 from C, 1 from Lua */
  void *lua; /* the binding's back pointer, never touched by vm/ */
  glia_grad_hook_fn grad_hook; /* called for leaves with t->grad_hook */
  glia_grad_hook_drop_fn grad_hook_drop;
  void *grad_hook_ud;
  /* A backward is running: its visited marks and pending counts live in the
  ** graph's nodes, so a second backward (from a grad hook) would corrupt them. */
  bool in_backward;
};

/* Records a formatted message and returns st. */
GLIAI_FUNC glia_status glia_fail(glia_ctx *G, glia_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
GLIAI_FUNC glia_status glia_fail_nomem(glia_ctx *G, size_t nbytes, const char *what);
/* "{2,3}" into a buffer from a small rotating set (valid for a few calls). */
GLIAI_FUNC const char *glia_shape_str(const glia_tensor *t);
GLIAI_FUNC const char *glia_sizes_str(int ndim, const int64_t *size);

/* ------------------------------------------------------------- allocator */

/* 64-byte aligned blocks, cached by size class. NULL on failure (no message). */
GLIAI_FUNC void *glia_alloc(glia_ctx *G, size_t nbytes);
GLIAI_FUNC void glia_free(glia_ctx *G, void *p, size_t nbytes);
/* Plain small allocations through the context (counted for fault tests),
** released with free(). */
GLIAI_FUNC void *glia_malloc(glia_ctx *G, size_t n);
GLIAI_FUNC void *glia_realloc(glia_ctx *G, void *p, size_t n);

/* ----------------------------------------------------------------- tensors */

GLIAI_FUNC int64_t glia_numel_of(int ndim, const int64_t *size);
GLIAI_FUNC glia_status glia_check_sizes(glia_ctx *G, const char *op, int ndim,
                                        const int64_t *size);
/* New contiguous tensor with the dtype and shape of `like`. */
GLIAI_FUNC glia_status glia_tensor_new_like(glia_ctx *G, const glia_tensor *like,
                                            glia_dtype dt, glia_tensor **out);
GLIAI_FUNC glia_status glia_tensor_zeros(glia_ctx *G, glia_dtype dt, int ndim,
                                         const int64_t *size, glia_tensor **out);
/* A view of t's storage with the given geometry (no grad history). */
GLIAI_FUNC glia_status glia_tensor_view_raw(glia_ctx *G, glia_tensor *t, int ndim,
                                            const int64_t *size, const int64_t *stride,
                                            int64_t offset, glia_tensor **out);
/* Same view, same storage, no grad history. */
GLIAI_FUNC glia_status glia_tensor_detach(glia_ctx *G, glia_tensor *t, glia_tensor **out);
GLIAI_FUNC void glia_contiguous_strides(int ndim, const int64_t *size, int64_t *stride);
static inline char *glia_ptr(const glia_tensor *t) {
  return (char *)t->storage->data + t->offset * (int64_t)glia_dtype_size(t->dtype);
}
/* Whether t's shape is size[0..nd) (size may be NULL when nd is 0). */
static inline bool glia_has_shape(const glia_tensor *t, int nd, const int64_t *size) {
  return t->ndim == nd && (nd == 0 || memcmp(t->size, size, sizeof(int64_t) * (size_t)nd) == 0);
}
/* Element i of a contiguous buffer of dtype dt, as a double (bool and u8
** as 0..255). */
static inline double glia_elem_get(const void *base, glia_dtype dt, int64_t i) {
  switch (dt) {
  case GLIA_DTYPE_F32: return ((const float *)base)[i];
  case GLIA_DTYPE_F64: return ((const double *)base)[i];
  case GLIA_DTYPE_I64: return (double)((const int64_t *)base)[i];
  case GLIA_DTYPE_I32: return ((const int32_t *)base)[i];
  default: return ((const uint8_t *)base)[i];
  }
}
/* Stores v as element i of a contiguous buffer of dtype dt: bool as
** v != 0, the others converted as C converts (the caller checked v fits). */
static inline void glia_elem_set(void *base, glia_dtype dt, int64_t i, double v) {
  switch (dt) {
  case GLIA_DTYPE_F32: ((float *)base)[i] = (float)v; break;
  case GLIA_DTYPE_F64: ((double *)base)[i] = v; break;
  case GLIA_DTYPE_I64: ((int64_t *)base)[i] = (int64_t)v; break;
  case GLIA_DTYPE_I32: ((int32_t *)base)[i] = (int32_t)v; break;
  case GLIA_DTYPE_BOOL: ((uint8_t *)base)[i] = v != 0; break;
  default: ((uint8_t *)base)[i] = (uint8_t)v; break;
  }
}
/* The last step of a function that made r and then did more that could
** fail: on st GLIA_OK hands r to *out, else releases r. Returns st. */
static inline glia_status glia_hand_out(glia_status st, glia_tensor *r, glia_tensor **out) {
  if (st != GLIA_OK) {
    glia_tensor_release(r);
    return st;
  }
  *out = r;
  return GLIA_OK;
}
GLIAI_FUNC glia_status glia_check_live(glia_ctx *G, const char *op, const glia_tensor *t);
/* Fails with GLIA_EDTYPE ("op: what must be f32, got i64 {2,3}") unless t
** is f32. */
GLIAI_FUNC glia_status glia_check_f32(glia_ctx *G, const char *op, const char *what,
                                      const glia_tensor *t);
/* Marks an in-place write on t's storage. */
GLIAI_FUNC void glia_tensor_bump_version(glia_tensor *t);
/* A new contiguous copy of t, same dtype. */
GLIAI_FUNC glia_status glia_tensor_clone(glia_ctx *G, glia_tensor *t, glia_tensor **out);
/* Whether dst and src share bytes without being the very same view: then
** writing dst while reading src would read elements already overwritten. */
GLIAI_FUNC bool glia_tensor_overlaps(const glia_tensor *dst, const glia_tensor *src);
/* Copies src into dst (same shape, or src broadcastable), converting dtypes;
** an src that overlaps dst is read from a copy. */
GLIAI_FUNC glia_status glia_copy_into(glia_ctx *G, glia_tensor *dst, glia_tensor *src);
/* t itself (retained) if contiguous with dtype dt, else a contiguous copy. */
GLIAI_FUNC glia_status glia_tensor_contiguous_as(glia_ctx *G, glia_tensor *t,
                                                 glia_dtype dt, glia_tensor **out);
/* Adds src into *acc (allocating *acc as a copy when NULL). */
GLIAI_FUNC glia_status glia_accumulate(glia_ctx *G, glia_tensor **acc, glia_tensor *src);

/* ------------------------------------------------------------ broadcasting */

/* Broadcast shape of a and b (NumPy rules), or GLIA_ESHAPE naming op. */
GLIAI_FUNC glia_status glia_broadcast_shape(glia_ctx *G, const char *op, int na,
                                            const int64_t *a, int nb, const int64_t *b,
                                            int *nout, int64_t *out);

/* ------------------------------------------------------------ iteration */

/* Inner loop: n elements; p[k] points at operand k; s[k] is its byte stride. */
typedef void (*glia_loop_fn)(int64_t n, char **p, const int64_t *s, void *ud);

#define GLIA_ITER_MAX_OPS 4
/* Runs fn over the shape of op[0] (the output), every other operand
** broadcast to it. Dims are coalesced; the range is split across the pool
** when numel >= grain. */
GLIAI_FUNC void glia_iter(glia_ctx *G, int nops, glia_tensor *const *op,
                          glia_loop_fn fn, void *ud, int64_t grain);
/* The same over an explicit shape that every operand broadcasts to. With
** an operand broadcast over a dim it writes (a reduction), pass
** grain = INT64_MAX so it runs on one thread. */
GLIAI_FUNC void glia_iter_shape(glia_ctx *G, int ndim, const int64_t *size, int nops,
                                glia_tensor *const *op, glia_loop_fn fn, void *ud,
                                int64_t grain);

/* ------------------------------------------------------------------ pool */

/* fn(begin, end, ud) over [0, n) split into at most nthreads chunks of at
** least grain items; runs inline when n < 2*grain or one thread. */
typedef void (*glia_range_fn)(int64_t begin, int64_t end, void *ud);
GLIAI_FUNC void glia_parallel_for(glia_ctx *G, int64_t n, int64_t grain,
                                  glia_range_fn fn, void *ud);
GLIAI_FUNC glia_pool *glia_pool_new(int nthreads);
GLIAI_FUNC void glia_pool_release(glia_pool *p);
/* ------------------------------------------------------------------ blas */

/* OpenBLAS's entry points, set when the first context loads it (vm/blas.c);
** every op calls GEMM through these. */
extern GLIAI_FUNC __typeof__(cblas_sgemm) *glia_sgemm;
extern GLIAI_FUNC __typeof__(cblas_sgemv) *glia_sgemv;
/* OpenBLAS thread count (1 inside pool tasks, nthreads otherwise). */
GLIAI_FUNC void glia_blas_set_threads(int n);

/* The CPU features that decide a BLAS kernel; vendor is cpuid's string. */
typedef struct glia_cpu_features {
  char vendor[13];
  unsigned char sse3, ssse3, sse4_2, avx, fma, avx2, avx512f, avx512dq, avx512cd, avx512bw,
      avx512vl, avx512_bf16, amx;
} glia_cpu_features;
/* This CPU's, with AVX and AVX-512 only where the OS saves their state. */
GLIAI_FUNC void glia_cpu_features_read(glia_cpu_features *f);
/* The OpenBLAS kernel for a feature set: a pure function. */
GLIAI_FUNC const char *glia_blas_core_for(const glia_cpu_features *f);
/* How much of the instruction set a kernel name needs (higher: more); -1
** for a name it does not know. */
GLIAI_FUNC int glia_blas_core_rank(const char *name);

/* ------------------------------------------------------------------ files */

/* Opens path read-only, as a regular file: sets *fd (the caller closes it)
** and *size. Fails with GLIA_EIO naming op, the path and why. */
GLIAI_FUNC glia_status glia_file_open(glia_ctx *G, const char *op, const char *path, int *fd,
                                      uint64_t *size);

/* ------------------------------------------------------------------- rng */

/* Philox4x32-10: four 32-bit words for (seed, counter). */
GLIAI_FUNC void glia_philox(uint64_t seed, uint64_t counter, uint32_t out[4]);
/* Reserves n counters from the context stream; returns the first. */
GLIAI_FUNC uint64_t glia_rng_reserve(glia_ctx *G, uint64_t n);

/* ------------------------------------------------------------ op registry */

typedef glia_status (*glia_op_fn)(glia_ctx *G, int nargs, glia_value *args,
                                  int *nouts, glia_value *outs);

/* One registry line. `sig` has one letter per argument, giving its kind
** (the letters are described in vm/registry.c, next to the code that checks
** them). `method` says whether t:name(...) exists besides glia.name(...). */
struct glia_op {
  const char *name;
  const char *sig;
  glia_op_fn fn;
  int method;
};

/* All families (each an array of ops ending with a {NULL} line), for
** enumeration by the binding. */
GLIAI_FUNC const glia_op *const *glia_op_families(void);
/* glia_op_call with the index base of the call: 0 is glia_op_call, 1 is
** the Lua binding's (Lua counts indices from 1). Checks args against
** op->sig and calls op->fn with the full argument list. */
GLIAI_FUNC glia_status glia_op_call_base(glia_ctx *G, const glia_op *op, int base, int nargs,
                                         const glia_value *args, int *nouts, glia_value *outs);
/* The index base of the op call running now (see vm/registry.c): index
** tensors an op reads, and indices it returns, count from it. */
static inline int glia_index_base(const glia_ctx *G) { return G->index_base; }

/* Argument helpers for op functions. */
static inline glia_tensor *arg_t(glia_value *a) {
  return a->kind == GLIA_VAL_TENSOR ? a->u.t : NULL;
}
static inline bool arg_present(const glia_value *a) { return a->kind != GLIA_VAL_NONE; }
static inline double arg_num(const glia_value *a, double dflt) {
  return a->kind == GLIA_VAL_NUMBER ? a->u.num
       : a->kind == GLIA_VAL_INT    ? (double)a->u.i
       : a->kind == GLIA_VAL_BOOL   ? a->u.b : dflt;
}
static inline int64_t arg_int(const glia_value *a, int64_t dflt) {
  return a->kind == GLIA_VAL_INT ? a->u.i
       : a->kind == GLIA_VAL_NUMBER ? (int64_t)a->u.num : dflt;
}
static inline int arg_bool(const glia_value *a, int dflt) {
  return a->kind == GLIA_VAL_BOOL ? a->u.b : a->kind == GLIA_VAL_NONE ? dflt : 1;
}
static inline glia_status out1(int *nouts, glia_value *outs, glia_tensor *t) {
  *nouts = 1;
  outs[0].kind = GLIA_VAL_TENSOR;
  outs[0].u.t = t;
  return GLIA_OK;
}
static inline glia_status out2(int *nouts, glia_value *outs, glia_tensor *a, glia_tensor *b) {
  out1(nouts, outs, a);
  *nouts = 2;
  outs[1].kind = GLIA_VAL_TENSOR;
  outs[1].u.t = b;
  return GLIA_OK;
}

#endif
