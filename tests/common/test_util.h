/* test_util.h: helpers shared by the cmocka tests of every area: a loop the test thread runs
 * itself (attach mode), started loops, filled memfd objects, the process's open descriptors,
 * and the tests' pseudo-random numbers. Each helper asserts that what it sets up worked. */
#ifndef MB_TEST_UTIL_H
#define MB_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>

#include <uv.h>

#include "mb_backing.h"
#include "mb_runtime.h"

/* ---- loops ----------------------------------------------------------------------------------- */

/* A loop attached to a uv loop that the test thread runs. */
typedef struct tu_home {
  uv_loop_t uv;
  mb_loop *loop;
} tu_home;

static inline void tu_home_init(tu_home *h, const char *name) {
  assert_int_equal(uv_loop_init(&h->uv), 0);
  int err = 0;
  h->loop = mb_loop_attach(&h->uv, name, &err);
  assert_non_null(h->loop);
}

/* Runs the test's loop until *flag is true (callers make sure work is pending or arrives from
 * other threads, so the loop never blocks forever). */
static inline void tu_home_run_until(tu_home *h, const volatile bool *flag) {
  while (!*flag)
    uv_run(&h->uv, UV_RUN_ONCE);
}

static inline void tu_home_fini(tu_home *h) {
  assert_int_equal(mb_loop_stop(h->loop), 0);
  uv_run(&h->uv, UV_RUN_DEFAULT);
  mb_loop_free(h->loop);
  assert_int_equal(uv_loop_close(&h->uv), 0);
}

/* The answer of an asynchronous API call (mb_done_fn's arguments): how many, the last one. */
typedef struct tu_done {
  int calls, status;
  uint64_t value;
} tu_done;

static inline void tu_on_done(void *ctx, int status, uint64_t value) {
  tu_done *d = ctx;
  d->calls++;
  d->status = status;
  d->value = value;
}

static inline mb_loop *tu_start(const char *name) {
  int err = 0;
  mb_loop *l = mb_loop_start(name, &err);
  assert_non_null(l);
  return l;
}

static inline void tu_stop(mb_loop *l) {
  assert_int_equal(mb_loop_stop(l), 0); /* joins; uv_loop_close() == 0 on its thread */
  mb_loop_free(l);
}

/* ---- objects --------------------------------------------------------------------------------- */

/* A memfd object whose k-th page holds bytes (base + k) mod 256 (mb_fill_pages_byte). */
static inline mb_object *tu_memfd_pages(const char *name, uint64_t size, uint8_t base) {
  mb_object *obj = NULL;
  assert_int_equal(mb_object_create(MB_OBJECT_MEMFD, size, name, &obj), 0);
  assert_int_equal(mb_object_fill_pages(obj, base), 0);
  return obj;
}

/* A memfd object with every byte `fill`. */
static inline mb_object *tu_memfd_byte(const char *name, uint64_t size, uint8_t fill) {
  mb_object *obj = NULL;
  assert_int_equal(mb_object_create(MB_OBJECT_MEMFD, size, name, &obj), 0);
  assert_int_equal(mb_object_fill_byte(obj, fill), 0);
  return obj;
}

/* Open file descriptors of the process (each memfd object holds one). */
static inline int tu_fd_count(void) {
  DIR *d = opendir("/proc/self/fd");
  assert_non_null(d);
  int n = 0;
  while (readdir(d) != NULL)
    n++;
  closedir(d);
  return n;
}

/* ---- pseudo-random numbers ------------------------------------------------------------------- */

/* xorshift64*: the next number of the sequence *state (never 0) starts. */
static inline uint64_t tu_xorshift(uint64_t *state) {
  *state ^= *state >> 12;
  *state ^= *state << 25;
  *state ^= *state >> 27;
  return *state * 2685821657736338717ull;
}

#endif
