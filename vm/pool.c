/*
** vm/pool.c -- the thread pool behind glia_parallel_for, and OpenBLAS's
** thread count.
**
** A pool has nthreads-1 workers; the calling thread runs chunk 0 itself.
** Chunks are assigned statically (worker w always runs chunk w), so a fixed
** thread count gives the same float results run to run. Workers spin for
** a few microseconds on the job generation, then sleep on a condition
** variable: an idle pool burns no CPU. Workers only borrow the job's
** arguments; they never allocate, raise, or touch reference counts.
**
** One owner of the cores at a time: OpenBLAS runs with nthreads threads when
** called from the owning thread, and parallel_for is inline while a BLAS
** call runs (callers never mix the two in one region).
*/
#include "glia_impl.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>

extern void openblas_set_num_threads(int);

struct glia_pool {
  int nthreads;
  pthread_t *threads;
  pthread_mutex_t mu;
  pthread_cond_t wake;
  atomic_uint_fast64_t generation; /* bumped once per job */
  atomic_int remaining;            /* workers still running the job */
  atomic_int stop;
  /* the current job */
  glia_range_fn fn;
  void *ud;
  int64_t n;
  int nchunks;
};

/* Set while a thread runs pool work: a nested parallel_for runs inline. */
static __thread int in_pool_task;

static void run_chunk(glia_pool *p, int w) {
  if (w >= p->nchunks) return;
  int64_t begin = p->n * w / p->nchunks, end = p->n * (w + 1) / p->nchunks;
  if (begin < end) p->fn(begin, end, p->ud);
}

typedef struct {
  glia_pool *p;
  int w;
} worker_arg;

static void *worker_main(void *arg) {
  worker_arg wa = *(worker_arg *)arg;
  free(arg);
  glia_pool *p = wa.p;
  uint64_t seen = 0;
  in_pool_task = 1;
  for (;;) {
    uint64_t g;
    int spins = 0;
    while ((g = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen &&
           !atomic_load(&p->stop)) {
      if (++spins < 4000) {
        __builtin_ia32_pause();
        continue;
      }
      pthread_mutex_lock(&p->mu);
      while (atomic_load(&p->generation) == seen && !atomic_load(&p->stop))
        pthread_cond_wait(&p->wake, &p->mu);
      pthread_mutex_unlock(&p->mu);
    }
    if (atomic_load(&p->stop)) return NULL;
    seen = g;
    run_chunk(p, wa.w);
    atomic_fetch_sub_explicit(&p->remaining, 1, memory_order_acq_rel);
  }
}

glia_pool *glia_pool_new(int nthreads) {
  glia_pool *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->nthreads = nthreads;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->wake, NULL);
  if (nthreads > 1) {
    p->threads = calloc((size_t)nthreads - 1, sizeof *p->threads);
    if (!p->threads) goto fail;
    /* Workers inherit a mask blocking async signals, so Ctrl-C and friends
    ** reach the host's threads, never a worker. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (int w = 1; w < nthreads; w++) {
      worker_arg *wa = malloc(sizeof *wa);
      if (!wa) goto fail_started;
      wa->p = p;
      wa->w = w;
      if (pthread_create(&p->threads[w - 1], NULL, worker_main, wa) != 0) {
        free(wa);
        goto fail_started;
      }
      continue;
    fail_started:
      pthread_sigmask(SIG_SETMASK, &old, NULL);
      p->nthreads = w; /* join the ones that did start */
      glia_pool_release(p);
      return NULL;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
  }
  return p;
fail:
  free(p);
  return NULL;
}

void glia_pool_release(glia_pool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  atomic_store(&p->stop, 1);
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  for (int w = 1; w < p->nthreads; w++) pthread_join(p->threads[w - 1], NULL);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->wake);
  free(p->threads);
  free(p);
}

void glia_parallel_for(glia_ctx *G, int64_t n, int64_t grain, glia_range_fn fn, void *ud) {
  if (n <= 0) return;
  glia_pool *p = G->pool;
  if (grain < 1) grain = 1;
  int64_t chunks = n / grain;
  if (chunks > p->nthreads) chunks = p->nthreads;
  if (chunks < 2 || in_pool_task) {
    fn(0, n, ud);
    return;
  }
  p->fn = fn;
  p->ud = ud;
  p->n = n;
  p->nchunks = (int)chunks;
  atomic_store(&p->remaining, p->nthreads - 1);
  pthread_mutex_lock(&p->mu);
  atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  in_pool_task = 1;
  run_chunk(p, 0);
  in_pool_task = 0;
  while (atomic_load_explicit(&p->remaining, memory_order_acquire) > 0) __builtin_ia32_pause();
}

void glia_blas_set_threads(int n) { openblas_set_num_threads(n); }
