/*
** fuzz/idx.c -- libFuzzer target for the IDX reader.
**
** Each input is read twice by vm/idx.c: as it is (a plain file, or a gzip
** file when the fuzzer found or was seeded with one), then gzip-compressed
** here, so that mutations of the IDX header and data also reach the reader
** through zlib's inflate and the size checks made against compressed files.
*/
#include "input.h"

#include <zlib.h>

/* The input as a gzip stream (deflate with a gzip wrapper), in out. A
** 512-byte window and the least memory: ASan maps and unmaps every large
** allocation, and zlib's default 256 KiB of state made this the slow part. */
static size_t gzip(const uint8_t *data, size_t size, uint8_t **out) {
  z_stream z = {0};
  if (deflateInit2(&z, Z_BEST_SPEED, Z_DEFLATED, 9 + 16, 1, Z_DEFAULT_STRATEGY) != Z_OK) abort();
  size_t cap = deflateBound(&z, (uLong)size);
  *out = malloc(cap);
  if (!*out) abort();
  z.next_in = (Bytef *)data;
  z.avail_in = (uInt)size;
  z.next_out = *out;
  z.avail_out = (uInt)cap;
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) abort();
  size_t n = z.total_out;
  deflateEnd(&z);
  return n;
}

static void read_one(glia_ctx *G, const uint8_t *data, size_t size) {
  char path[64];
  int fd = fuzz_file(data, size, path, sizeof path);
  glia_tensor *t = NULL;
  glia_status st = glia_idx_read(G, path, &t);
  close(fd);
  fuzz_check_failure(G, st);
  if (st == GLIA_OK) {
    unsigned sum = fuzz_touch(t);
    __asm__ volatile("" : : "r"(sum));
    glia_tensor_release(t);
  }
  fuzz_check_no_leak(G);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  glia_ctx *G = fuzz_ctx();
  read_one(G, data, size);
  uint8_t *z = NULL;
  size_t n = gzip(data, size, &z);
  read_one(G, z, n);
  free(z);
  return 0;
}
