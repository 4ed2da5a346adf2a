/*
** fuzz/input.h -- hands a fuzzer's bytes to glia's readers, which take paths.
**
** Each input is written to a memfd (a regular file in memory: glia's readers
** refuse anything else) and read back through /proc/self/fd/N, so no input
** touches the disk and nothing is left behind when a run is killed. One
** context lives for the whole run; every input must hand back every byte it
** took from it, or the target aborts (a leak the sanitizers cannot see,
** since the context caches blocks).
*/
#ifndef GLIA_FUZZ_INPUT_H
#define GLIA_FUZZ_INPUT_H

#define _GNU_SOURCE
#include "glia.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static glia_ctx *fuzz_ctx(void) {
  static glia_ctx *G;
  if (!G) G = glia_ctx_new();
  return G;
}

/* Writes n bytes to a new memfd; returns its fd and its path in path. */
static int fuzz_file(const void *data, size_t n, char *path, size_t cap) {
  int fd = memfd_create("glia-fuzz", MFD_CLOEXEC);
  if (fd < 0) abort();
  const char *p = data;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w <= 0) abort();
    p += w;
    n -= (size_t)w;
  }
  snprintf(path, cap, "/proc/self/fd/%d", fd);
  return fd;
}

/* Reads every byte of t, so a tensor pointing outside its file is caught by
** ASan (or faults) here rather than later. */
static unsigned fuzz_touch(glia_tensor *t) {
  const unsigned char *p = glia_tensor_data(t);
  size_t n = (size_t)glia_tensor_numel(t) * glia_dtype_size(glia_tensor_dtype(t));
  unsigned sum = 0;
  for (size_t i = 0; i < n; i++) sum += p[i];
  return sum;
}

/* A failed read must say why. */
static void fuzz_check_failure(glia_ctx *G, glia_status st) {
  if (st == GLIA_OK) return;
  const char *msg = glia_ctx_errmsg(G);
  if (!msg || !*msg) {
    fprintf(stderr, "fuzz: status %s without a message\n", glia_status_str(st));
    abort();
  }
}

static void fuzz_check_no_leak(glia_ctx *G) {
  if (glia_ctx_live_bytes(G) != 0) {
    fprintf(stderr, "fuzz: %zu live bytes left after the input\n", glia_ctx_live_bytes(G));
    abort();
  }
}

#endif
