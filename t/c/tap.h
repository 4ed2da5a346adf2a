/*
** t/c/tap.h -- a tiny TAP producer for the C tests of the VM core.
**   ok(cond, "what is proven"); ... ; return tap_done();
*/
#ifndef GLIA_TAP_H
#define GLIA_TAP_H
#include <stdarg.h>
#include <stdio.h>

static int tap_count, tap_failed;

static int ok(int cond, const char *fmt, ...) {
  va_list ap;
  printf("%s %d - ", cond ? "ok" : "not ok", ++tap_count);
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
  if (!cond) tap_failed++;
  return cond;
}

static void diag(const char *fmt, ...) {
  va_list ap;
  printf("# ");
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
}

static int tap_done(void) {
  printf("1..%d\n", tap_count);
  return tap_failed ? 1 : 0;
}
#endif
