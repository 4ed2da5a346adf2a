/*
** glia.h -- the whole public contract of glia's C core and its embedding API.
**
** Conventions: every function that can fail returns a glia_status and leaves
** a message in the context (glia_ctx_errmsg). Results come back through
** out-parameters, written only on success. Dims and indices are 0-based here
** (the Lua binding converts from Lua's 1-based positions).
**
** Ownership: functions named *_new*, the view functions and every op hand the
** caller one reference; *_get / *_data borrow; *_retain adds a reference;
** *_release drops one. Releasing NULL is a no-op.
*/
#ifndef GLIA_H
#define GLIA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GLIA_API __attribute__((visibility("default")))
#define GLIA_VERSION "0.1.0"
#define GLIA_MAX_DIMS 8

/* ---------------------------------------------------------------- statuses */

#define GLIA_STATUS_LIST(X)                    \
  X(GLIA_OK, "ok")                             \
  X(GLIA_ESHAPE, "shape error")                \
  X(GLIA_EDTYPE, "dtype error")                \
  X(GLIA_EARG, "bad argument")                 \
  X(GLIA_ERANGE, "index out of range")         \
  X(GLIA_ENOMEM, "out of memory")              \
  X(GLIA_EIO, "i/o error")                     \
  X(GLIA_EFORMAT, "malformed file")            \
  X(GLIA_EGRAD, "autograd error")              \
  X(GLIA_ESCRIPT, "script error")              \
  X(GLIA_EINTERNAL, "internal error")

typedef enum {
#define GLIA_X(code, text) code,
  GLIA_STATUS_LIST(GLIA_X)
#undef GLIA_X
  GLIA_STATUS_COUNT
} glia_status;

/* The fixed text of a status ("shape error"); never NULL. */
GLIA_API const char *glia_status_str(glia_status st);

/* ------------------------------------------------------------------ dtypes */

typedef enum {
  GLIA_DTYPE_F32,
  GLIA_DTYPE_F64,
  GLIA_DTYPE_I64,
  GLIA_DTYPE_I32,
  GLIA_DTYPE_U8,
  GLIA_DTYPE_BOOL,
  GLIA_DTYPE_COUNT
} glia_dtype;

/* "f32", "f64", ... ; the size of one element in bytes. */
GLIA_API const char *glia_dtype_name(glia_dtype dt);
GLIA_API size_t glia_dtype_size(glia_dtype dt);
/* Parses a dtype name; returns GLIA_EDTYPE on an unknown name. */
GLIA_API glia_status glia_dtype_parse(const char *name, glia_dtype *out);

/* ---------------------------------------------------------------- contexts */

typedef struct glia_ctx glia_ctx;
typedef struct glia_tensor glia_tensor;

/* Creates a VM instance: thread pool (GLIA_NUM_THREADS, else online CPUs),
** RNG seeded with 0, grad mode on. Returns NULL if memory is exhausted or
** OpenBLAS cannot be loaded (glia_config_get()->error says why). */
GLIA_API glia_ctx *glia_ctx_new(void);
GLIA_API void glia_ctx_release(glia_ctx *G);

/* The message of the last failure in this context ("" if none). Borrowed,
** valid until the next call that fails. */
GLIA_API const char *glia_ctx_errmsg(const glia_ctx *G);

GLIA_API int glia_ctx_num_threads(const glia_ctx *G);
/* n >= 1; also caps OpenBLAS's threads. */
GLIA_API glia_status glia_ctx_set_num_threads(glia_ctx *G, int n);

GLIA_API void glia_ctx_seed(glia_ctx *G, uint64_t seed);
/* The RNG state is (seed, offset): saving and restoring both reproduces
** every later random draw exactly. */
GLIA_API void glia_ctx_rng_state(const glia_ctx *G, uint64_t *seed, uint64_t *offset);
GLIA_API void glia_ctx_set_rng_state(glia_ctx *G, uint64_t seed, uint64_t offset);

/* Grad mode: when off, ops record nothing for backward. Returns the old mode. */
GLIA_API int glia_ctx_set_grad_mode(glia_ctx *G, int on);
GLIA_API int glia_ctx_grad_mode(const glia_ctx *G);

/* Allocator accounting: bytes held by live tensors, bytes parked in the
** cache, and the high-water mark of live bytes. */
GLIA_API size_t glia_ctx_live_bytes(const glia_ctx *G);
GLIA_API size_t glia_ctx_cached_bytes(const glia_ctx *G);
GLIA_API size_t glia_ctx_peak_bytes(const glia_ctx *G);
/* Returns every cached block to the system. */
GLIA_API void glia_ctx_trim(glia_ctx *G);
/* Test hook: the n-th allocation from now and every later one fail, until
** called again with 0. */
GLIA_API void glia_ctx_fail_alloc_after(glia_ctx *G, int64_t n);
/* Test hook: the n-th allocation from now fails, and only that one. */
GLIA_API void glia_ctx_fail_alloc_once(glia_ctx *G, int64_t n);

/* ------------------------------------------------------------ the machine */

/* What this process computes with. OpenBLAS is loaded once per process, by
** the first context, with the kernel glia chose for the CPU unless
** OPENBLAS_CORETYPE was set (vm/blas.c says why). Every string is static,
** valid for the life of the process; absent ones are NULL. */
typedef struct glia_config {
  const char *blas_library;   /* the file loaded: "libopenblas.so.0", or $GLIA_BLAS_LIB */
  const char *blas_kernel;    /* the kernel OpenBLAS runs: "SkylakeX", "Haswell", ... */
  const char *blas_choice;    /* the kernel glia picks for this CPU's features */
  const char *blas_chosen_by; /* "glia", "OPENBLAS_CORETYPE" (the user's) or
                              ** "loaded before glia" (the process had OpenBLAS) */
  const char *blas_config;    /* openblas_get_config() */
  const char *cpu_vendor;     /* "GenuineIntel", "AuthenticAMD", ... */
  const char *cpu_features;   /* the ones that matter here: "avx2 fma avx512f ..." */
  const char *glia_isa;       /* what glia's own kernels were compiled for */
  const char *warning;        /* why GEMM may run slower than the CPU allows */
  const char *error;          /* why OpenBLAS could not be loaded: no context can be made */
} glia_config;

/* Loads OpenBLAS if no context has yet; never fails (see error). Borrowed. */
GLIA_API const glia_config *glia_config_get(void);

/* ----------------------------------------------------------------- tensors */

/* A new contiguous tensor; contents uninitialized. ndim <= GLIA_MAX_DIMS,
** sizes >= 0. */
GLIA_API glia_status glia_tensor_new(glia_ctx *G, glia_dtype dt, int ndim,
                                     const int64_t *size, glia_tensor **out);
/* Wraps host memory without a copy. `release(ud, data)` runs when the last
** view goes (may be NULL). strides may be NULL for contiguous. On failure
** release is NOT called: the host still owns data. */
GLIA_API glia_status glia_tensor_wrap(glia_ctx *G, void *data, glia_dtype dt,
                                      int ndim, const int64_t *size,
                                      const int64_t *stride,
                                      void (*release)(void *ud, void *data),
                                      void *ud, glia_tensor **out);
GLIA_API glia_tensor *glia_tensor_retain(glia_tensor *t);
GLIA_API void glia_tensor_release(glia_tensor *t);

GLIA_API glia_dtype glia_tensor_dtype(const glia_tensor *t);
GLIA_API int glia_tensor_ndim(const glia_tensor *t);
GLIA_API int64_t glia_tensor_size(const glia_tensor *t, int dim);
GLIA_API int64_t glia_tensor_stride(const glia_tensor *t, int dim);
GLIA_API int64_t glia_tensor_numel(const glia_tensor *t);
GLIA_API int glia_tensor_is_contiguous(const glia_tensor *t);
/* Borrowed pointer to element 0 of the view (NULL once freed). */
GLIA_API void *glia_tensor_data(glia_tensor *t);

/* Autograd on tensors. */
GLIA_API glia_status glia_tensor_set_requires_grad(glia_ctx *G, glia_tensor *t, int on);
GLIA_API int glia_tensor_requires_grad(const glia_tensor *t);
/* Borrowed; NULL when no gradient has been accumulated. */
GLIA_API glia_tensor *glia_tensor_grad(glia_tensor *t);
GLIA_API void glia_tensor_zero_grad(glia_tensor *t);
/* Sets t's gradient to g (NULL clears it). g must be an f32 tensor of t's
** shape, else GLIA_ESHAPE/GLIA_EDTYPE and t's gradient is unchanged. t keeps
** its own reference to g, or to a contiguous copy of g when g is a
** non-contiguous view or shares t's bytes (backward adds into the gradient
** in place). */
GLIA_API glia_status glia_tensor_set_grad(glia_ctx *G, glia_tensor *t, glia_tensor *g);
/* Backpropagates from t (a scalar unless gout is given); accumulates into
** the .grad of every leaf that requires grad. keep_graph=0 frees the graph. */
GLIA_API glia_status glia_backward(glia_ctx *G, glia_tensor *t, glia_tensor *gout,
                                   int keep_graph);

/* -------------------------------------------------------------------- ops */

/* Every op is reachable by name through the registry, with arguments passed
** as tagged values. Tensors in `args` are borrowed; tensors in `outs` are
** owned by the caller. */
typedef enum {
  GLIA_VAL_NONE,
  GLIA_VAL_TENSOR,
  GLIA_VAL_NUMBER,
  GLIA_VAL_INT,
  GLIA_VAL_BOOL,
  GLIA_VAL_STRING,
  GLIA_VAL_INTS,
  GLIA_VAL_TENSORS /* a borrowed array of tensors (cat, stack) */
} glia_val_kind;

typedef struct glia_value {
  glia_val_kind kind;
  union {
    glia_tensor *t;
    double num;
    int64_t i;
    int b;
    const char *s;
    struct { int n; int64_t v[GLIA_MAX_DIMS]; } ints;
    struct { int n; glia_tensor **v; } list;
  } u;
} glia_value;

#define GLIA_MAX_ARGS 12
#define GLIA_MAX_OUTS 4

typedef struct glia_op glia_op;
/* Looks up an op by name ("add", "matmul", ...); NULL if unknown. */
GLIA_API const glia_op *glia_op_find(const char *name);
/* Calls op with args[0..nargs): checked against the op's signature (count,
** kinds, dims in range; trailing optional arguments may be left out or
** passed as GLIA_VAL_NONE), failing with GLIA_EARG and a message naming the
** op and the argument. Dims are 0-based, negatives count from the end.
** Index tensors the op reads and indices it returns are 0-based. On
** success outs[0..*nouts) hold the results. args is not modified. */
GLIA_API glia_status glia_op_call(glia_ctx *G, const glia_op *op, int nargs,
                                  glia_value *args, int *nouts, glia_value *outs);

/* ------------------------------------------------------------ safetensors */

/* Writes n tensors (any strides) and nmeta string pairs to path atomically:
** a temporary file in the same directory, fsync, rename. On failure the old
** file at path is untouched. */
GLIA_API glia_status glia_safetensors_save(glia_ctx *G, const char *path, int n,
                                           const char *const *names,
                                           glia_tensor *const *tensors, int nmeta,
                                           const char *const *meta_keys,
                                           const char *const *meta_vals);

/* An opened, fully validated safetensors file (memory-mapped). */
typedef struct glia_st_file glia_st_file;
GLIA_API glia_status glia_safetensors_open(glia_ctx *G, const char *path, glia_st_file **out);
/* Drops the opener's reference; the map stays while mapped tensors live. */
GLIA_API void glia_safetensors_close(glia_st_file *f);
GLIA_API int glia_safetensors_count(const glia_st_file *f);
GLIA_API const char *glia_safetensors_name(const glia_st_file *f, int i);
GLIA_API int glia_safetensors_meta_count(const glia_st_file *f);
GLIA_API const char *glia_safetensors_meta_key(const glia_st_file *f, int i);
GLIA_API const char *glia_safetensors_meta_value(const glia_st_file *f, int i);
/* Tensor i: a copy (F16/BF16 become f32, I8/I16 become i32), or with map=1
** and a natively stored, aligned dtype, a copy-on-write view of the map. */
GLIA_API glia_status glia_safetensors_tensor(glia_ctx *G, glia_st_file *f, int i, int map,
                                             glia_tensor **out);

/* --------------------------------------------------------------- IDX files */

/* Reads the IDX file at path (gzip-compressed or plain) into a new
** contiguous tensor of the file's shape. Element types convert to the
** matching dtype: u8 -> u8; i8, i16, i32 -> i32; f32 -> f32; f64 -> f64.
** The caller owns *out. A missing, truncated or corrupt file fails with
** GLIA_EIO or GLIA_EFORMAT and a message naming the file; *out untouched. */
GLIA_API glia_status glia_idx_read(glia_ctx *G, const char *path, glia_tensor **out);

/* ------------------------------------------------------- embedding (Lua) */

/* A VM with its Lua state, for host programs. */
typedef struct glia_vm glia_vm;
/* Creates a context and a Lua state with the glia module loaded. NULL if
** memory is exhausted. */
GLIA_API glia_vm *glia_vm_open(void);
GLIA_API void glia_vm_close(glia_vm *vm);
GLIA_API glia_ctx *glia_vm_ctx(glia_vm *vm);
GLIA_API const char *glia_vm_errmsg(const glia_vm *vm);
/* Runs a Lua file or string (with traceback on error). */
GLIA_API glia_status glia_vm_run_file(glia_vm *vm, const char *path);
GLIA_API glia_status glia_vm_run_string(glia_vm *vm, const char *code);
/* Calls the global Lua function `name` (dots allowed: "model.forward") with
** nin tensors (borrowed) and collects up to nout tensor results (owned by
** the caller; missing or non-tensor results are an error). */
GLIA_API glia_status glia_vm_call(glia_vm *vm, const char *name, int nin,
                                  glia_tensor **in, int nout, glia_tensor **out);

#ifdef __cplusplus
}
#endif
#endif
