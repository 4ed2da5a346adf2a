/*
** fuzz/safetensors.c -- libFuzzer target for the safetensors reader.
**
** Opens the input as a safetensors file (vm/safetensors.c validates the
** header and every offset against the file), then materializes each tensor
** both ways: copied out of the file (map = 0, which also converts F16, BF16,
** I8, I16 and BOOL) and mapped in place (map = 1, a view of the file's
** pages, which must outlive the file handle). Every byte of every tensor is
** read, and names and metadata are walked.
*/
#include "input.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  glia_ctx *G = fuzz_ctx();
  char path[64];
  int fd = fuzz_file(data, size, path, sizeof path);
  glia_st_file *f = NULL;
  glia_status st = glia_safetensors_open(G, path, &f);
  close(fd); /* the open file maps it: closing the fd must not matter */
  fuzz_check_failure(G, st);
  if (st == GLIA_OK) {
    unsigned sum = 0;
    for (int i = 0; i < glia_safetensors_meta_count(f); i++)
      sum += (unsigned)strlen(glia_safetensors_meta_key(f, i)) +
             (unsigned)strlen(glia_safetensors_meta_value(f, i));
    glia_tensor *mapped[4] = {0};
    int n = glia_safetensors_count(f);
    for (int i = 0; i < n; i++) {
      sum += (unsigned)strlen(glia_safetensors_name(f, i));
      for (int map = 0; map <= 1; map++) {
        glia_tensor *t = NULL;
        st = glia_safetensors_tensor(G, f, i, map, &t);
        fuzz_check_failure(G, st);
        if (st != GLIA_OK) continue;
        sum += fuzz_touch(t);
        if (map && i < 4) mapped[i] = t; /* kept past the close below */
        else glia_tensor_release(t);
      }
    }
    glia_safetensors_close(f);
    for (int i = 0; i < 4; i++)
      if (mapped[i]) {
        sum += fuzz_touch(mapped[i]);
        glia_tensor_release(mapped[i]);
      }
    __asm__ volatile("" : : "r"(sum));
  }
  fuzz_check_no_leak(G);
  return 0;
}
