/*
** examples/embed.c -- a host program that runs a glia model through the
** public API of glia.h and nothing else.
**
** It loads a small model written in Lua (the script below, or a file named
** on the command line that defines the same global `model`), calls
** model.forward on an input that wraps the host's own buffer without a copy,
** reads the result, then shows what a bad call reports.
**
** Build from the repository root after `make` (use luajit for a LuaJIT build):
**   cc -Ivm examples/embed.c lib/libglia.a $(pkg-config --libs lua5.4) \
**      -lopenblas -ledit -lz -lm -pthread -o embed
**   GLIA_STDLIB=$PWD/stdlib ./embed
** After `make install`: cc embed.c $(pkg-config --cflags --libs glia) finds
** the stdlib by itself.
**
** Reference ownership at the boundary:
**   - glia_tensor_new and glia_tensor_wrap hand the host one reference; the
**     host drops it with glia_tensor_release.
**   - A wrapped buffer stays the host's: glia never frees it, and calls the
**     release callback exactly once, when the last reference goes. Lua may
**     hold references after the host dropped its own (a global, or garbage
**     not yet collected), so the buffer must stay valid until the callback
**     runs; glia_vm_close runs it at the latest.
**   - glia_vm_call borrows its inputs (the host keeps its references) and
**     hands back one new reference per output.
**   - Every tensor the host holds must be released before glia_vm_close: a
**     tensor cannot outlive its context.
*/
#include "glia.h"

#include <stdio.h>
#include <stdlib.h>

/* A two-layer network y = relu(x W1^T + b1) W2^T + b2, written in Lua the
** way a model file would be. model.forward takes a {batch, 3} tensor and
** returns a {batch, 2} tensor. */
static const char model_src[] =
    "local glia = require 'glia'\n"
    "model = {\n"
    "  w1 = glia.tensor({{1, 0, -1}, {0.5, 0.5, 0.5}, {0, 1, 0}, {-1, 0, 1}}),\n"
    "  b1 = glia.tensor({0, 1, -1, 0}),\n"
    "  w2 = glia.tensor({{1, 1, 0, 0}, {0, 0, 1, 1}}),\n"
    "  b2 = glia.tensor({0.5, -0.5}),\n"
    "}\n"
    "function model.forward(x)\n"
    "  local h = glia.relu(x:matmul(model.w1:t()) + model.b1)\n"
    "  return h:matmul(model.w2:t()) + model.b2\n"
    "end\n";

/* The host's release callback: here the buffer was malloc'ed by the host,
** so the host frees it. ud is whatever the host passed to glia_tensor_wrap. */
static void free_host_buffer(void *ud, void *data) {
  int *released = ud;
  free(data);
  (*released)++;
}

/* Prints a 2-D f32 tensor, honouring its strides. */
static void print_matrix(const char *name, glia_tensor *t) {
  const float *p = glia_tensor_data(t); /* borrowed, element 0 of the view */
  int64_t rows = glia_tensor_size(t, 0), cols = glia_tensor_size(t, 1);
  int64_t rs = glia_tensor_stride(t, 0), cs = glia_tensor_stride(t, 1);
  printf("%s =\n", name);
  for (int64_t i = 0; i < rows; i++) {
    for (int64_t j = 0; j < cols; j++) printf(" %8.3f", p[i * rs + j * cs]);
    printf("\n");
  }
}

int main(int argc, char **argv) {
  glia_vm *vm = glia_vm_open();
  if (!vm) {
    fprintf(stderr, "embed: out of memory\n");
    return 1;
  }
  glia_status st = argc > 1 ? glia_vm_run_file(vm, argv[1]) : glia_vm_run_string(vm, model_src);
  if (st != GLIA_OK) {
    fprintf(stderr, "embed: loading the model failed (%s): %s\n", glia_status_str(st),
            glia_vm_errmsg(vm));
    glia_vm_close(vm);
    return 1;
  }

  /* The input lives in the host's memory; the tensor wraps it, no copy. */
  int released = 0;
  float *buf = malloc(2 * 3 * sizeof *buf);
  if (!buf) {
    glia_vm_close(vm);
    return 1;
  }
  for (int i = 0; i < 6; i++) buf[i] = (float)(i + 1);
  glia_tensor *x = NULL, *y = NULL;
  const int64_t size[2] = {2, 3};
  st = glia_tensor_wrap(glia_vm_ctx(vm), buf, GLIA_DTYPE_F32, 2, size, NULL,
                        free_host_buffer, &released, &x);
  if (st != GLIA_OK) { /* on failure the buffer is still the host's */
    fprintf(stderr, "embed: %s\n", glia_ctx_errmsg(glia_vm_ctx(vm)));
    free(buf);
    glia_vm_close(vm);
    return 1;
  }
  print_matrix("x", x);

  st = glia_vm_call(vm, "model.forward", 1, &x, 1, &y);
  if (st == GLIA_OK) {
    print_matrix("model.forward(x)", y);
    glia_tensor_release(y); /* the output was ours */
  } else {
    fprintf(stderr, "embed: model.forward failed: %s\n", glia_vm_errmsg(vm));
  }

  /* A bad call: a {3, 2} view (x transposed) does not fit the first layer.
  ** The call returns a status and the message names the op and the shapes;
  ** nothing is raised through the host. */
  glia_tensor *xt = NULL;
  const int64_t tsize[2] = {3, 2}, tstride[2] = {1, 3};
  int bad_status = 0;
  st = glia_tensor_wrap(glia_vm_ctx(vm), buf, GLIA_DTYPE_F32, 2, tsize, tstride, NULL, NULL,
                        &xt);
  if (st == GLIA_OK) {
    st = glia_vm_call(vm, "model.forward", 1, &xt, 1, &y);
    bad_status = st;
    printf("bad call: %s\n%s\n", glia_status_str(st), glia_vm_errmsg(vm));
    glia_tensor_release(xt); /* no callback: buf is released through x */
  }

  glia_tensor_release(x); /* Lua may still hold x until it collects it */
  glia_vm_close(vm);      /* ... so the callback runs by now at the latest */
  printf("host buffer released %d time(s)\n", released);
  return released == 1 && bad_status == GLIA_ESCRIPT ? 0 : 1;
}
