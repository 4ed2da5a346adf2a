/*
** vm/blas.c -- OpenBLAS, loaded at run time with the kernel this CPU supports.
**
** Why it is not linked: a distribution's OpenBLAS picks its kernel once, when
** it is loaded, from a table of CPU models. A CPU newer than that table gets
** a generic fallback (Prescott, SSE3 only) that runs GEMM 6x slower, and
** OpenBLAS reads its one override, OPENBLAS_CORETYPE, at that moment only.
** So glia loads OpenBLAS itself, with dlopen, when the first context is
** made: before that it reads the CPU's features with cpuid and names the best
** kernel they allow in OPENBLAS_CORETYPE for the duration of the load. That
** covers bin/glia, `require "glia"` from a stock interpreter and a host
** program linking libglia alike, which a constructor or a wrapper script
** would not. A user's own OPENBLAS_CORETYPE always wins. A process that had
** loaded OpenBLAS before glia keeps the kernel it got; if that is weaker
** than the CPU allows, glia records a warning naming the variable to set.
**
** The choice is a pure function of the features (blas_core_for), tested over
** feature sets in t/c/blas.c. On a CPU that OpenBLAS knows, it names the
** kernel OpenBLAS would pick itself (same instruction set; AMD's AVX2 parts
** get OpenBLAS's Zen tuning of the Haswell kernels).
**
** State here is process-wide, like OpenBLAS's own: written once under
** pthread_once, read-only afterwards. The load sets and restores an
** environment variable, so it must not race with another thread's setenv.
*/
#include "glia_impl.h"

#include <cpuid.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__typeof__(cblas_sgemm) *glia_sgemm;
__typeof__(cblas_sgemv) *glia_sgemv;
static void (*set_num_threads)(int);

static struct {
  glia_config cfg;
  char vendor[13], kernel[32], library[256], features[160], warning[320], error[320];
} B;

/* ========================================================= CPU features */

static unsigned xgetbv0(void) {
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return lo;
}

void glia_cpu_features_read(glia_cpu_features *f) {
  memset(f, 0, sizeof *f);
  unsigned a, b, c, d, max;
  if (!__get_cpuid(0, &max, &b, &c, &d)) return;
  memcpy(f->vendor, &b, 4);
  memcpy(f->vendor + 4, &d, 4);
  memcpy(f->vendor + 8, &c, 4);
  f->vendor[12] = 0;
  __cpuid(1, a, b, c, d);
  f->sse3 = c & 1;
  f->ssse3 = c >> 9 & 1;
  f->fma = c >> 12 & 1;
  f->sse4_2 = c >> 20 & 1;
  /* AVX state must be enabled by the OS (XCR0), not only by the CPU */
  unsigned xcr0 = (c >> 27 & 1) ? xgetbv0() : 0;
  int os_avx = (xcr0 & 0x6) == 0x6, os_avx512 = (xcr0 & 0xe6) == 0xe6;
  f->avx = (c >> 28 & 1) && os_avx;
  f->fma &= f->avx;
  if (max < 7) return;
  __cpuid_count(7, 0, a, b, c, d);
  f->avx2 = (b >> 5 & 1) && os_avx;
  if (os_avx512) {
    f->avx512f = b >> 16 & 1;
    f->avx512dq = b >> 17 & 1;
    f->avx512cd = b >> 28 & 1;
    f->avx512bw = b >> 30 & 1;
    f->avx512vl = b >> 31 & 1;
  }
  f->amx = d >> 24 & 1;
  if (a >= 1) {
    __cpuid_count(7, 1, a, b, c, d);
    f->avx512_bf16 = os_avx512 && (a >> 5 & 1);
  }
}

/* ===================================================== choosing a kernel */

/* OpenBLAS's x86-64 kernels by the instructions they need, weakest first;
** a kernel's rank compares what two kernels need. */
static const char *const ranked[][8] = {
    {"Prescott", "Katmai", "Coppermine", "Northwood", "Banias", "Athlon", "Opteron", "Opteron_SSE3"},
    {"Core2", "Penryn", "Dunnington", "Atom", "Barcelona", "Bobcat", "Nano"},
    {"Nehalem"},
    {"Sandybridge", "Bulldozer", "Piledriver", "Steamroller"},
    {"Haswell", "Zen", "Excavator"},
    {"SkylakeX"},
    {"Cooperlake", "SapphireRapids"},
};

int glia_blas_core_rank(const char *name) {
  for (int r = 0; r < (int)(sizeof ranked / sizeof ranked[0]); r++)
    for (int i = 0; i < 8 && ranked[r][i]; i++)
      if (strcasecmp(ranked[r][i], name) == 0) return r;
  return -1;
}

const char *glia_blas_core_for(const glia_cpu_features *f) {
  int amd = strcmp(f->vendor, "AuthenticAMD") == 0 || strcmp(f->vendor, "HygonGenuine") == 0;
  int avx512 = f->avx512f && f->avx512dq && f->avx512cd && f->avx512bw && f->avx512vl;
  if (avx512) return f->avx512_bf16 ? "Cooperlake" : "SkylakeX";
  if (f->avx2 && f->fma) return amd ? "Zen" : "Haswell";
  if (f->avx) return "Sandybridge";
  if (f->sse4_2) return "Nehalem";
  if (f->ssse3) return "Core2";
  return "Prescott";
}

/* ============================================================= loading */

/* The instruction sets this build's own kernels were compiled for. */
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define GLIA_ISA "avx512 avx2 fma"
#elif defined(__AVX2__) && defined(__FMA__)
#define GLIA_ISA "avx2 fma"
#elif defined(__AVX__)
#define GLIA_ISA "avx"
#else
#define GLIA_ISA "sse2"
#endif

static void describe_features(const glia_cpu_features *f) {
  static const struct { const char *name; size_t off; } names[] = {
#define F(x) {#x, offsetof(glia_cpu_features, x)}
      F(sse3), F(ssse3), F(sse4_2), F(avx), F(fma), F(avx2), F(avx512f), F(avx512dq),
      F(avx512cd), F(avx512bw), F(avx512vl), F(avx512_bf16), F(amx),
#undef F
  };
  size_t n = 0;
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (*(const unsigned char *)((const char *)f + names[i].off))
      n += (size_t)snprintf(B.features + n, sizeof B.features - n, "%s%s", n ? " " : "",
                            names[i].name);
}

static void *open_blas(const char **which) {
  const char *env = getenv("GLIA_BLAS_LIB");
  const char *names[] = {env && *env ? env : "libopenblas.so.0", "libopenblas.so"};
  for (int i = 0; i < 2; i++) {
    void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (h) {
      *which = names[i];
      return h;
    }
    if (env && *env) break; /* the user named one: no second guess */
  }
  return NULL;
}

static void load(void) {
  glia_config *c = &B.cfg;
  glia_cpu_features f;
  glia_cpu_features_read(&f);
  describe_features(&f);
  snprintf(B.vendor, sizeof B.vendor, "%s", f.vendor[0] ? f.vendor : "unknown");
  c->cpu_vendor = B.vendor;
  c->glia_isa = GLIA_ISA;
  c->cpu_features = B.features;
  c->blas_choice = glia_blas_core_for(&f);

  const char *user = getenv("OPENBLAS_CORETYPE");
  int user_set = user && *user;
  /* already in the process (a host linked it): its kernel is settled */
  void *early = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_NOLOAD);
  int set_here = !user_set && !early;
  if (set_here) setenv("OPENBLAS_CORETYPE", c->blas_choice, 1);
  const char *lib = "libopenblas.so.0";
  void *h = early ? early : open_blas(&lib);
  if (set_here) unsetenv("OPENBLAS_CORETYPE");
  c->blas_chosen_by = user_set ? "OPENBLAS_CORETYPE" : early ? "loaded before glia" : "glia";
  snprintf(B.library, sizeof B.library, "%s", lib);
  c->blas_library = B.library;
  if (!h) {
    snprintf(B.error, sizeof B.error, "glia: cannot load OpenBLAS: %s", dlerror());
    c->error = B.error;
    return;
  }
  glia_sgemm = (__typeof__(cblas_sgemm) *)dlsym(h, "cblas_sgemm");
  glia_sgemv = (__typeof__(cblas_sgemv) *)dlsym(h, "cblas_sgemv");
  set_num_threads = (void (*)(int))dlsym(h, "openblas_set_num_threads");
  char *(*corename)(void) = (char *(*)(void))dlsym(h, "openblas_get_corename");
  char *(*config)(void) = (char *(*)(void))dlsym(h, "openblas_get_config");
  if (!glia_sgemm || !glia_sgemv || !set_num_threads || !corename || !config) {
    snprintf(B.error, sizeof B.error, "glia: %s is not an OpenBLAS (missing cblas_sgemm, "
             "cblas_sgemv or openblas_* symbols)", lib);
    c->error = B.error;
    glia_sgemm = NULL;
    return;
  }
  snprintf(B.kernel, sizeof B.kernel, "%s", corename());
  c->blas_kernel = B.kernel;
  c->blas_config = config();
  if (!user_set && glia_blas_core_rank(B.kernel) < glia_blas_core_rank(c->blas_choice)) {
    snprintf(B.warning, sizeof B.warning,
             "glia: OpenBLAS runs its %s kernel, slower than this CPU allows (%s)%s: "
             "set OPENBLAS_CORETYPE=%s before the process starts", B.kernel, c->blas_choice,
             early ? ", because it was loaded before glia" : "", c->blas_choice);
    c->warning = B.warning;
  }
}

static pthread_once_t once = PTHREAD_ONCE_INIT;

const glia_config *glia_config_get(void) {
  pthread_once(&once, load);
  return &B.cfg;
}

void glia_blas_set_threads(int n) {
  if (set_num_threads) set_num_threads(n);
}
