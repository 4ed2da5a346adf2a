/*
** vm/pool.c -- the thread pool behind glia_parallel_for.
**
** A pool has nthreads-1 workers; the calling thread works too. A job's
** chunk boundaries depend only on (n, nchunks), and each chunk runs once,
** whole, on whichever thread claims it first: so a fixed thread count gives
** the same float results run to run, and a worker the OS has not scheduled
** yet never holds the caller up (the caller claims what is left). Workers
** spin for a few microseconds on the job generation, then sleep on a
** condition variable: an idle pool burns no CPU. Workers only borrow the
** job's arguments; they never allocate, raise, or touch reference counts.
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

struct glia_pool {
  int nthreads;
  pthread_t *threads;
  pthread_mutex_t mu;
  pthread_cond_t wake;
  atomic_uint_fast64_t generation; /* bumped once per job */
  /* (generation << 32 | next chunk index): claims are only valid for the
  ** job they were made in, so a late worker never runs a stale chunk */
  atomic_uint_fast64_t claim;
  atomic_int done;                 /* chunks finished in the current job */
  atomic_int stop;
  /* the current job */
  glia_range_fn fn;
  void *ud;
  int64_t n;
  int nchunks;
};

/* Set while a thread runs pool work: a nested parallel_for runs inline. */
static __thread int in_pool_task;

/* Claims and runs chunks of job generation g until none are left. The job
** fields stay put while a claimed chunk is unfinished: the caller publishes
** the next job only after every chunk is done. */
static void run_chunks(glia_pool *p, uint64_t g) {
  for (;;) {
    uint_fast64_t c = atomic_load_explicit(&p->claim, memory_order_acquire);
    if ((c >> 32) != (g & 0xffffffffu)) return;
    int w = (int)(c & 0xffffffffu);
    if (w >= p->nchunks) return;
    if (!atomic_compare_exchange_weak_explicit(&p->claim, &c, c + 1, memory_order_acq_rel,
                                               memory_order_acquire))
      continue;
    int64_t begin = p->n * w / p->nchunks, end = p->n * (w + 1) / p->nchunks;
    if (begin < end) p->fn(begin, end, p->ud);
    atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
  }
}

static void *worker_main(void *arg) {
  glia_pool *p = arg;
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
    run_chunks(p, g);
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
      if (pthread_create(&p->threads[w - 1], NULL, worker_main, p) == 0) continue;
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
  atomic_store_explicit(&p->done, 0, memory_order_relaxed);
  uint64_t g = atomic_load_explicit(&p->generation, memory_order_relaxed) + 1;
  atomic_store_explicit(&p->claim, (uint_fast64_t)(g & 0xffffffffu) << 32, memory_order_release);
  pthread_mutex_lock(&p->mu);
  atomic_store_explicit(&p->generation, g, memory_order_release);
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  in_pool_task = 1;
  run_chunks(p, g);
  in_pool_task = 0;
  /* wait for chunks other threads claimed; yield now and then so a worker
  ** sharing this core can finish */
  for (int spins = 0; atomic_load_explicit(&p->done, memory_order_acquire) < p->nchunks; spins++) {
    if (spins < 2000) __builtin_ia32_pause();
    else sched_yield();
  }
}
