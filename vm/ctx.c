/*
** vm/ctx.c -- the context: statuses and messages, the caching allocator,
** the RNG stream and grad mode.
**
** All mutable state of a VM lives in its glia_ctx; nothing here is global.
** The allocator hands out 64-byte aligned blocks rounded up to a size class
** (four classes per power of two) and parks freed blocks per class, so a
** loop of same-shaped temporaries reuses warm pages instead of faulting in
** fresh ones. live_bytes counts blocks in use by tensors; cached_bytes
** counts parked blocks; the two never overlap.
*/
#include "glia_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* ======================================================== statuses */

static const char *const status_text[] = {
#define GLIA_X(code, text) text,
    GLIA_STATUS_LIST(GLIA_X)
#undef GLIA_X
};

const char *glia_status_str(glia_status st) {
  if (st < 0 || st >= GLIA_STATUS_COUNT) return "unknown status";
  return status_text[st];
}

glia_status glia_fail(glia_ctx *G, glia_status st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(G->errmsg, sizeof G->errmsg, fmt, ap);
  va_end(ap);
  return st;
}

glia_status glia_fail_nomem(glia_ctx *G, size_t nbytes, const char *what) {
  return glia_fail(G, GLIA_ENOMEM, "glia: out of memory allocating %zu bytes for %s",
                   nbytes, what ? what : "a tensor");
}

const char *glia_ctx_errmsg(const glia_ctx *G) { return G ? G->errmsg : "no context"; }

/* Shapes are formatted into a small ring of buffers so one message can
** name several shapes. Thread-local: pool workers never format messages,
** but two contexts in two host threads may. */
const char *glia_sizes_str(int ndim, const int64_t *size) {
  static __thread char ring[4][8 * 24 + 4];
  static __thread int next;
  char *b = ring[next++ & 3];
  size_t k = 0;
  b[k++] = '{';
  for (int i = 0; i < ndim; i++)
    k += (size_t)snprintf(b + k, sizeof ring[0] - k, i ? ",%lld" : "%lld",
                          (long long)size[i]);
  b[k++] = '}';
  b[k] = 0;
  return b;
}

const char *glia_shape_str(const glia_tensor *t) { return glia_sizes_str(t->ndim, t->size); }

/* ========================================================= dtypes */

static const char *const dtype_names[GLIA_DTYPE_COUNT] = {"f32", "f64", "i64",
                                                          "i32", "u8",  "bool"};
static const size_t dtype_sizes[GLIA_DTYPE_COUNT] = {4, 8, 8, 4, 1, 1};

const char *glia_dtype_name(glia_dtype dt) {
  return (unsigned)dt < GLIA_DTYPE_COUNT ? dtype_names[dt] : "?";
}
size_t glia_dtype_size(glia_dtype dt) {
  return (unsigned)dt < GLIA_DTYPE_COUNT ? dtype_sizes[dt] : 1;
}
glia_status glia_dtype_parse(const char *name, glia_dtype *out) {
  for (int i = 0; i < GLIA_DTYPE_COUNT; i++)
    if (strcmp(name, dtype_names[i]) == 0) {
      *out = (glia_dtype)i;
      return GLIA_OK;
    }
  return GLIA_EDTYPE;
}

/* ====================================================== allocator */

/* Size class of n bytes: classes are 2^b * {1.25, 1.5, 1.75, 2}. */
static int size_class(size_t n, size_t *rounded) {
  if (n <= 64) {
    *rounded = 64;
    return 0;
  }
  int b = 63 - __builtin_clzll((unsigned long long)(n - 1)); /* 2^b < n <= 2^(b+1) */
  size_t step = (size_t)1 << (b - 2);
  size_t r = (n + step - 1) & ~(step - 1);
  *rounded = r;
  int k = (int)(r >> (b - 2)) - 4; /* 1..4 */
  return 1 + (b - 6) * 4 + (k - 1);
}

/* The bytes of a block of class c (size_class's rounded size). */
static size_t class_bytes(int c) {
  if (c == 0) return 64;
  int b = 6 + (c - 1) / 4, k = (c - 1) % 4 + 1;
  return (size_t)(k + 4) << (b - 2);
}

/* Fault injection: once the countdown reaches its n-th allocation, that one
** and every later one fail until the hook is reset; with fail_once, that
** one alone. */
static bool should_fail(glia_ctx *G) {
  if (G->fail_countdown <= 0) return false;
  if (G->fail_countdown > 1) {
    G->fail_countdown--;
    return false;
  }
  if (G->fail_once) G->fail_countdown = 0;
  return true;
}

/* Large blocks live in huge pages. Streaming a model's weights, as decoding
** does for every token, walks thousands of 4 KiB pages, and their TLB
** misses show: the GPT decode step runs 5-7% faster from this arena (two
** sets of 12 runs alternating with malloc's pages). Blocks of ARENA_MIN or more
** are cut, one after another, from chunks of address space aligned to 2 MiB
** and marked MADV_HUGEPAGE, and several blocks share each huge page; blocks
** above ARENA_BIG get a mapping of their own (counted at their rounded size,
** though the mapping is rounded up to 2 MiB). Freed large blocks are parked
** by size class like the others; past the cache limit (or on trim) their
** pages go back to the kernel and the block, down to one page, waits for
** its class to be asked for again: address space is reused by the same
** class only. Sanitizer builds keep malloc, which ASan can watch. */
#define HUGE_PAGE ((size_t)2 << 20)
#define ARENA_MIN ((size_t)64 << 10)
#define ARENA_CHUNK ((size_t)64 << 20)
#define ARENA_BIG (ARENA_CHUNK / 4)

#if defined(__SANITIZE_ADDRESS__)
#define USE_ARENA 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define USE_ARENA 0
#endif
#endif
#ifndef USE_ARENA
#define USE_ARENA 1
#endif

static bool is_large(size_t rounded) { return USE_ARENA && rounded >= ARENA_MIN; }

/* n bytes of zero pages at a 2 MiB boundary, marked for huge pages. */
static void *map_huge(size_t n) {
  size_t len = n + HUGE_PAGE;
  char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return NULL;
  char *a = (char *)(((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
  if (a > p) munmap(p, (size_t)(a - p));
  size_t tail = (size_t)(p + len - (a + n));
  if (tail) munmap(a + n, tail);
  madvise(a, n, MADV_HUGEPAGE); /* a hint: without THP the pages are simply small */
  return a;
}

static void *arena_take(glia_ctx *G, size_t rounded) {
  if (rounded > ARENA_BIG) return map_huge((rounded + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1));
  if ((size_t)(G->arena_end - G->arena_next) < rounded) {
    if (G->nchunks == G->chunks_cap) {
      int cap = G->chunks_cap ? 2 * G->chunks_cap : 8;
      void **v = realloc(G->chunks, (size_t)cap * sizeof *v);
      if (!v) return NULL;
      G->chunks = v, G->chunks_cap = cap;
    }
    char *c = map_huge(ARENA_CHUNK);
    if (!c) return NULL;
    G->chunks[G->nchunks++] = c;
    G->arena_next = c, G->arena_end = c + ARENA_CHUNK;
  }
  void *p = G->arena_next;
  G->arena_next += rounded;
  return p;
}

/* Gives a parked large block's pages back, all but its first 4 KiB, which
** hold the link of the class's list of released blocks; the block stays
** for reuse. (Blocks are multiples of 16 KiB from 2 MiB boundaries, so the
** rest starts on a page.) */
static void arena_release(glia_ctx *G, int c, void *p, size_t rounded) {
  if (rounded > ARENA_BIG) {
    munmap(p, (rounded + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1));
    return;
  }
  madvise((char *)p + 4096, rounded - 4096, MADV_DONTNEED);
  glia_block *blk = p;
  blk->next = G->released[c];
  G->released[c] = blk;
}

static void *block_new(glia_ctx *G, int c, size_t rounded) {
  void *p = NULL;
  if (rounded > ((size_t)1 << 46)) return NULL; /* no machine has it; c may be past the lists */
  if (is_large(rounded)) {
    if (rounded <= ARENA_BIG && G->released[c]) {
      p = G->released[c];
      G->released[c] = G->released[c]->next;
      return p;
    }
    return arena_take(G, rounded);
  }
  return posix_memalign(&p, 64, rounded) == 0 ? p : NULL;
}

void *glia_alloc(glia_ctx *G, size_t nbytes) {
  size_t rounded;
  int c = size_class(nbytes, &rounded);
  if (should_fail(G)) return NULL;
  void *p = NULL;
  if (c < GLIA_CACHE_CLASSES && G->cache[c]) {
    glia_block *blk = G->cache[c];
    G->cache[c] = blk->next;
    G->cached_bytes -= rounded;
    p = blk;
  } else if (!(p = block_new(G, c, rounded))) {
    glia_ctx_trim(G);
    if (!(p = block_new(G, c, rounded))) return NULL;
  }
  G->live_bytes += rounded;
  if (G->live_bytes > G->peak_bytes) G->peak_bytes = G->live_bytes;
  return p;
}

/* A block leaving the cache: back to the kernel or to malloc. */
static void block_drop(glia_ctx *G, int c, void *p, size_t rounded) {
  if (is_large(rounded)) arena_release(G, c, p, rounded);
  else free(p);
}

void glia_free(glia_ctx *G, void *p, size_t nbytes) {
  if (!p) return;
  size_t rounded;
  int c = size_class(nbytes, &rounded);
  G->live_bytes -= rounded;
  if (c < GLIA_CACHE_CLASSES && G->cached_bytes + rounded <= G->cache_limit) {
    glia_block *blk = p;
    blk->next = G->cache[c];
    G->cache[c] = blk;
    G->cached_bytes += rounded;
  } else {
    block_drop(G, c, p, rounded);
  }
}

void *glia_malloc(glia_ctx *G, size_t n) {
  if (should_fail(G)) return NULL;
  return malloc(n);
}

void *glia_realloc(glia_ctx *G, void *p, size_t n) {
  if (should_fail(G)) return NULL;
  return realloc(p, n);
}

void glia_ctx_trim(glia_ctx *G) {
  for (int c = 0; c < GLIA_CACHE_CLASSES; c++) {
    while (G->cache[c]) {
      glia_block *blk = G->cache[c];
      G->cache[c] = blk->next;
      block_drop(G, c, blk, class_bytes(c));
    }
  }
  G->cached_bytes = 0;
  while (G->free_tensors) {
    glia_tensor *t = G->free_tensors;
    G->free_tensors = t->free_next;
    free(t);
  }
  G->nfree_tensors = 0;
}

size_t glia_ctx_live_bytes(const glia_ctx *G) { return G->live_bytes; }
size_t glia_ctx_cached_bytes(const glia_ctx *G) { return G->cached_bytes; }
size_t glia_ctx_peak_bytes(const glia_ctx *G) { return G->peak_bytes; }
void glia_ctx_fail_alloc_after(glia_ctx *G, int64_t n) {
  G->fail_countdown = n;
  G->fail_once = false;
}

void glia_ctx_fail_alloc_once(glia_ctx *G, int64_t n) {
  G->fail_countdown = n;
  G->fail_once = true;
}

/* ======================================================= contexts */

static int env_threads(void) {
  const char *s = getenv("GLIA_NUM_THREADS");
  if (s && *s) {
    char *end;
    long n = strtol(s, &end, 10);
    if (*end == 0 && n >= 1 && n <= 1024) return (int)n;
  }
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n >= 1 ? (int)n : 1;
}

glia_ctx *glia_ctx_new(void) {
  if (glia_config_get()->error) return NULL;
  glia_ctx *G = calloc(1, sizeof *G);
  if (!G) return NULL;
  G->grad_mode = 1;
  G->cache_limit = (size_t)2 << 30;
  const char *lim = getenv("GLIA_CACHE_MB");
  if (lim && *lim) G->cache_limit = (size_t)strtoull(lim, NULL, 10) << 20;
  G->nthreads = env_threads();
  G->pool = glia_pool_new(G->nthreads);
  if (!G->pool) {
    free(G);
    return NULL;
  }
  glia_blas_set_threads(G->nthreads);
  return G;
}

void glia_ctx_release(glia_ctx *G) {
  if (!G) return;
  glia_pool_release(G->pool);
  glia_ctx_trim(G);
  for (int i = 0; i < G->nchunks; i++) munmap(G->chunks[i], ARENA_CHUNK);
  free(G->chunks);
  free(G);
}

int glia_ctx_num_threads(const glia_ctx *G) { return G->nthreads; }

glia_status glia_ctx_set_num_threads(glia_ctx *G, int n) {
  if (n < 1 || n > 1024)
    return glia_fail(G, GLIA_EARG, "glia.set_num_threads: expected 1..1024 threads, got %d", n);
  if (n == G->nthreads) return GLIA_OK;
  glia_pool *p = glia_pool_new(n);
  if (!p) return glia_fail_nomem(G, 0, "the thread pool");
  glia_pool_release(G->pool);
  G->pool = p;
  G->nthreads = n;
  glia_blas_set_threads(n);
  return GLIA_OK;
}

void glia_ctx_seed(glia_ctx *G, uint64_t seed) {
  G->seed = seed;
  G->rng_offset = 0;
}
void glia_ctx_rng_state(const glia_ctx *G, uint64_t *seed, uint64_t *offset) {
  *seed = G->seed;
  *offset = G->rng_offset;
}
void glia_ctx_set_rng_state(glia_ctx *G, uint64_t seed, uint64_t offset) {
  G->seed = seed;
  G->rng_offset = offset;
}

uint64_t glia_rng_reserve(glia_ctx *G, uint64_t n) {
  uint64_t first = G->rng_offset;
  G->rng_offset += n;
  return first;
}

int glia_ctx_set_grad_mode(glia_ctx *G, int on) {
  int old = G->grad_mode;
  G->grad_mode = on != 0;
  return old;
}
int glia_ctx_grad_mode(const glia_ctx *G) { return G->grad_mode; }

void glia_ctx_set_grad_hook(glia_ctx *G, glia_grad_hook_fn fn, glia_grad_hook_drop_fn drop,
                            void *ud) {
  G->grad_hook = fn;
  G->grad_hook_drop = drop;
  G->grad_hook_ud = ud;
}
