/*
** t/c/blas.c -- how glia chooses OpenBLAS's kernel (vm/blas.c): the pure
** choice over feature sets, and, each in a child process of its own (the
** load happens once per process), that the user's OPENBLAS_CORETYPE wins,
** that glia's choice is what OpenBLAS runs, that an OpenBLAS loaded before
** glia keeps its kernel with a warning, and that a missing library is an
** error, not a crash.
*/
#include "glia_impl.h"
#include "tap.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static glia_cpu_features cpu(const char *vendor, const char *list) {
  glia_cpu_features f;
  memset(&f, 0, sizeof f);
  snprintf(f.vendor, sizeof f.vendor, "%s", vendor);
#define SET(x) f.x = strstr(list, " " #x " ") != NULL;
  SET(sse3) SET(ssse3) SET(sse4_2) SET(avx) SET(fma) SET(avx2) SET(avx512f) SET(avx512dq)
  SET(avx512cd) SET(avx512bw) SET(avx512vl) SET(avx512_bf16) SET(amx)
#undef SET
  return f;
}

#define INTEL "GenuineIntel"
#define AMD "AuthenticAMD"
#define SSE " sse3 ssse3 sse4_2 "
#define AVX2 SSE "avx fma avx2 "
#define AVX512 AVX2 "avx512f avx512dq avx512cd avx512bw avx512vl "

static void choice_over_feature_sets(void) {
  static const struct { const char *vendor, *features, *want, *why; } cases[] = {
      {INTEL, " ", "Prescott", "no SSSE3: the baseline kernel"},
      {INTEL, " sse3 ", "Prescott", "SSE3 alone"},
      {INTEL, " sse3 ssse3 ", "Core2", "SSSE3"},
      {INTEL, SSE, "Nehalem", "SSE4.2"},
      {INTEL, SSE "avx ", "Sandybridge", "AVX without AVX2"},
      {AMD, SSE "avx fma ", "Sandybridge", "AVX with FMA but no AVX2"},
      {INTEL, SSE "avx avx2 ", "Sandybridge", "AVX2 without FMA"},
      {INTEL, AVX2, "Haswell", "AVX2 and FMA on Intel"},
      {AMD, AVX2, "Zen", "AVX2 and FMA on AMD"},
      {"HygonGenuine", AVX2, "Zen", "AVX2 and FMA on Hygon"},
      {INTEL, AVX2 "avx512f avx512cd ", "Haswell", "AVX-512F without BW/VL/DQ (Xeon Phi)"},
      {INTEL, AVX512, "SkylakeX", "AVX-512 on Intel"},
      {AMD, AVX512, "SkylakeX", "AVX-512 on AMD (Zen 4)"},
      {INTEL, AVX512 "avx512_bf16 ", "Cooperlake", "AVX-512 with BF16"},
      {INTEL, AVX512 "avx512_bf16 amx ", "Cooperlake", "AVX-512 with BF16 and AMX (Xeon 6)"},
      {AMD, AVX512 "avx512_bf16 ", "Cooperlake", "AVX-512 with BF16 on AMD (Zen 5)"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    glia_cpu_features f = cpu(cases[i].vendor, cases[i].features);
    const char *got = glia_blas_core_for(&f);
    ok(strcmp(got, cases[i].want) == 0, "%s picks %s (got %s)", cases[i].why, cases[i].want, got);
  }
  ok(glia_blas_core_rank("Prescott") < glia_blas_core_rank("Haswell") &&
         glia_blas_core_rank("Haswell") == glia_blas_core_rank("Zen") &&
         glia_blas_core_rank("Haswell") < glia_blas_core_rank("SkylakeX") &&
         glia_blas_core_rank("SkylakeX") < glia_blas_core_rank("Cooperlake"),
     "kernels rank by the instructions they need");
  ok(glia_blas_core_rank("skylakex") == glia_blas_core_rank("SkylakeX") &&
         glia_blas_core_rank("NoSuchCore") == -1,
     "ranks ignore case; an unknown kernel ranks -1");
}

/* ---------------------------------------------- one process per scenario */

/* Runs fn in a child with the environment set by env ("NAME=value" or
** "-NAME" to unset); the child's exit status 0 means every check held, and
** its diagnostics go to our stdout as '#' lines. */
static int in_child(const char *const *env, int (*fn)(void)) {
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    for (int i = 0; env[i]; i++) {
      if (env[i][0] == '-') {
        unsetenv(env[i] + 1);
      } else {
        char buf[256];
        snprintf(buf, sizeof buf, "%s", env[i]);
        char *eq = strchr(buf, '=');
        *eq = 0;
        setenv(buf, eq + 1, 1);
      }
    }
    fflush(stdout);
    _exit(fn());
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
}

static int check(int cond, const char *what) {
  if (!cond) printf("# failed in child: %s\n", what);
  return cond ? 0 : 1;
}

static int dynamic_arch(const glia_config *c) {
  return c->blas_config && strstr(c->blas_config, "DYNAMIC_ARCH");
}

static int user_kernel_wins(void) {
  const glia_config *c = glia_config_get();
  glia_ctx *G = glia_ctx_new();
  int bad = check(G != NULL, "a context is made");
  glia_ctx_release(G);
  bad += check(!c->error, "OpenBLAS loads");
  bad += check(strcmp(c->blas_chosen_by, "OPENBLAS_CORETYPE") == 0, "chosen by the user");
  bad += check(!dynamic_arch(c) || strcmp(c->blas_kernel, "Prescott") == 0, "runs Prescott");
  bad += check(getenv("OPENBLAS_CORETYPE") && strcmp(getenv("OPENBLAS_CORETYPE"), "Prescott") == 0,
               "the user's variable is left as it was");
  bad += check(!c->warning, "no warning: the user asked for it");
  return bad;
}

static int glia_kernel_runs(void) {
  const glia_config *c = glia_config_get();
  int bad = check(!c->error, "OpenBLAS loads");
  bad += check(strcmp(c->blas_chosen_by, "glia") == 0, "chosen by glia");
  if (dynamic_arch(c)) {
    printf("# chose %s, OpenBLAS runs %s\n", c->blas_choice, c->blas_kernel);
    bad += check(glia_blas_core_rank(c->blas_kernel) == glia_blas_core_rank(c->blas_choice),
                 "OpenBLAS runs a kernel of glia's choice's rank");
  }
  bad += check(getenv("OPENBLAS_CORETYPE") == NULL, "the variable is unset again after the load");
  return bad;
}

static int loaded_before_glia(void) {
  /* a host that linked OpenBLAS itself, and got its weakest kernel */
  setenv("OPENBLAS_CORETYPE", "Prescott", 1);
  void *h = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_GLOBAL);
  unsetenv("OPENBLAS_CORETYPE");
  if (!h) return check(0, "dlopen libopenblas.so.0");
  const glia_config *c = glia_config_get();
  int bad = check(!c->error, "glia uses the loaded OpenBLAS");
  bad += check(strcmp(c->blas_chosen_by, "loaded before glia") == 0, "says it was loaded before");
  if (dynamic_arch(c) && glia_blas_core_rank(c->blas_choice) > glia_blas_core_rank("Prescott")) {
    char want[64];
    snprintf(want, sizeof want, "OPENBLAS_CORETYPE=%s", c->blas_choice);
    bad += check(c->warning && strstr(c->warning, want), "warns, naming the variable to set");
  }
  return bad;
}

static int missing_library(void) {
  const glia_config *c = glia_config_get();
  int bad = check(c->error && strstr(c->error, "cannot load OpenBLAS"), "an error says why");
  bad += check(glia_ctx_new() == NULL, "no context is made");
  return bad;
}

int main(void) {
  choice_over_feature_sets();
  ok(in_child((const char *[]){"OPENBLAS_CORETYPE=Prescott", NULL}, user_kernel_wins) == 0,
     "a user's OPENBLAS_CORETYPE is the kernel OpenBLAS runs, and stays set");
  ok(in_child((const char *[]){"-OPENBLAS_CORETYPE", NULL}, glia_kernel_runs) == 0,
     "without OPENBLAS_CORETYPE, OpenBLAS runs the kernel glia chose for this CPU");
  ok(in_child((const char *[]){"-OPENBLAS_CORETYPE", NULL}, loaded_before_glia) == 0,
     "an OpenBLAS loaded before glia keeps its kernel, with a warning naming the variable");
  ok(in_child((const char *[]){"GLIA_BLAS_LIB=/nonexistent/libopenblas.so", NULL},
              missing_library) == 0,
     "an OpenBLAS that cannot be loaded is an error and no context, not a crash");
  return tap_done();
}
