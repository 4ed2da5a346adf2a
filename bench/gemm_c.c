/*
** bench/gemm_c.c -- the ceiling for glia's GEMM: OpenBLAS cblas_sgemm
** called straight from C on square row-major N x N matrices; and OpenBLAS's
** sgemv on decoding's linear layers (bench/ops.lua decode_linears).
**
** Usage: gemm_c N [reps]   (threads: GLIA_NUM_THREADS, default 2)
**        gemm_c decode_linears [reps]
** Prints one line: gemm_N <median ms> <GFLOP/s> GFLOP/s, or
** decode_linears <median ms> <GB/s of weights> GB/s
** Compiled and run by bench/run.
*/
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

static float *random_floats(size_t n) {
  float *p = aligned_alloc(64, ((n * sizeof *p + 63) / 64) * 64);
  for (size_t i = 0; p && i < n; i++) p[i] = (float)rand() / RAND_MAX - 0.5f;
  return p;
}

/* One token through the 16 one-row linear layers of the gpt_train model
** (y = W x + b, W {out, in} row-major), as bench/ops.lua decode_linears. */
static int decode_linears(int reps) {
  static const int shapes[4][2] = {{256, 768}, {256, 256}, {256, 1024}, {1024, 256}};
  float *w[16], *x[16], *b[16], *y[16];
  double bytes = 0, *t = malloc((size_t)reps * sizeof *t);
  if (!t) return 1;
  for (int l = 0; l < 16; l++) {
    int in = shapes[l % 4][0], out = shapes[l % 4][1];
    w[l] = random_floats((size_t)in * out), x[l] = random_floats((size_t)in);
    b[l] = random_floats((size_t)out), y[l] = random_floats((size_t)out);
    if (!w[l] || !x[l] || !b[l] || !y[l]) return 1;
    bytes += 4.0 * in * out;
  }
  for (int r = -1; r < reps; r++) {
    double t0 = now();
    for (int l = 0; l < 16; l++) {
      int in = shapes[l % 4][0], out = shapes[l % 4][1];
      for (int i = 0; i < out; i++) y[l][i] = b[l][i];
      cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1.0f, w[l], in, x[l], 1, 1.0f, y[l], 1);
    }
    if (r >= 0) t[r] = now() - t0;
  }
  qsort(t, (size_t)reps, sizeof *t, cmp_double);
  printf("decode_linears %.4f %.2f GB/s\n", t[reps / 2] * 1e3, bytes / t[reps / 2] * 1e-9);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: gemm_c N|decode_linears [reps]\n");
    return 2;
  }
  int n = atoi(argv[1]), reps = argc > 2 ? atoi(argv[2]) : 10;
  if (reps < 1) {
    fprintf(stderr, "gemm_c: reps must be >= 1\n");
    return 2;
  }
  const char *env = getenv("GLIA_NUM_THREADS");
  openblas_set_num_threads(env && *env ? atoi(env) : 2);
  if (strcmp(argv[1], "decode_linears") == 0) return decode_linears(reps);
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
