/*
** bench/gemm_c.c -- the ceiling for glia's GEMM: OpenBLAS cblas_sgemm
** called straight from C on square row-major N x N matrices.
**
** Usage: gemm_c N [reps]   (threads: GLIA_NUM_THREADS, default 2)
** Prints one line: gemm_N <median ms> <GFLOP/s> GFLOP/s
** Compiled and run by bench/run.
*/
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

extern void openblas_set_num_threads(int);

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return (a > b) - (a < b);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: gemm_c N [reps]\n");
    return 2;
  }
  int n = atoi(argv[1]), reps = argc > 2 ? atoi(argv[2]) : 10;
  const char *env = getenv("GLIA_NUM_THREADS");
  openblas_set_num_threads(env && *env ? atoi(env) : 2);
  size_t nn = (size_t)n * (size_t)n;
  float *a = aligned_alloc(64, nn * sizeof *a), *b = aligned_alloc(64, nn * sizeof *b);
  float *c = aligned_alloc(64, nn * sizeof *c);
  double *t = malloc((size_t)reps * sizeof *t);
  if (!a || !b || !c || !t || reps < 1) return 1;
  srand(1);
  for (size_t i = 0; i < nn; i++) {
    a[i] = (float)rand() / RAND_MAX - 0.5f;
    b[i] = (float)rand() / RAND_MAX - 0.5f;
    c[i] = 0;
  }
  for (int r = -1; r < reps; r++) { /* one warm-up */
    double t0 = now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c,
                n);
    if (r >= 0) t[r] = now() - t0;
  }
  qsort(t, (size_t)reps, sizeof *t, cmp_double);
  double med = t[reps / 2];
  printf("gemm_%d %.3f %.1f GFLOP/s\n", n, med * 1e3, 2.0 * n * n * (double)n / med * 1e-9);
  free(a);
  free(b);
  free(c);
  free(t);
  return 0;
}
