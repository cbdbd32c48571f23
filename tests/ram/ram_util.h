/* ram_util.h: what the RAM builder's tests share: a manager on a loop thread of its own (so
 * the test thread may use the blocking API), the regions the manager has (from its
 * introspection), the process's fds, smaps lookups, and sysfs knobs set and put back. */
#ifndef MB_RAM_UTIL_H
#define MB_RAM_UTIL_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "membacking.h"
#include "test_util.h"

#define KiB (1ull << 10)
#define MiB (1ull << 20)
#define GiB (1ull << 30)

typedef struct ru_world {
  mb_loop *loop;
  mb_mm *mm;
  mb_mapper *view; /* the primary mapper */
} ru_world;

/* A manager of cfg (its loop: the world's own). */
static inline void ru_init_cfg(ru_world *w, mb_mm_config cfg) {
  w->loop = tu_start("ram-mgr");
  cfg.loop = w->loop;
  assert_int_equal(mb_mm_create(&cfg, &w->mm), 0);
  w->view = mb_mm_primary_mapper(w->mm);
}

static inline void ru_init_overlap(ru_world *w, uint64_t max_addr, int overlap) {
  ru_init_cfg(w, (mb_mm_config){.max_addr = max_addr, .overlap = overlap});
}

static inline void ru_init(ru_world *w, uint64_t max_addr) {
  ru_init_overlap(w, max_addr, MB_OVERLAP_NESTED);
}

/* First in each test: cmocka installs its own SIGSEGV/SIGBUS handlers around each test;
 * accesses to holes need the library's in front (membacking.h, "Signals"). */
#define RU_TEST_BEGIN() assert_int_equal(mb_access_reinstall(), 0)

static inline void ru_fini(ru_world *w) {
  mb_mm_destroy(w->mm);
  tu_stop(w->loop);
}

/* The manager's regions as its introspection lists them (malloc'd JSON of that array). */
static inline char *ru_regions_json(mb_mm *mm) {
  char *json = NULL;
  assert_int_equal(mb_mm_inspect_sync(mm, &json), 0);
  char *a = strstr(json, "\"regions\":"), *b = a ? strstr(a, "\"visible\":") : NULL;
  assert_non_null(b);
  char *out = strndup(a, (size_t)(b - a));
  free(json);
  return out;
}

static inline int ru_region_count(mb_mm *mm) {
  char *j = ru_regions_json(mm);
  int n = 0;
  for (char *p = j; (p = strstr(p, "\"priority\":")) != NULL; p++) n++;
  free(j);
  return n;
}

/* Has the manager a region [gpa, gpa + size) of this priority and type? */
static inline bool ru_has_region(mb_mm *mm, uint64_t gpa, uint64_t size, int prio, bool device) {
  char want[160];
  snprintf(want, sizeof want, "\"gpa\":%" PRIu64 ",\"size\":%" PRIu64 ",\"priority\":%d,"
           "\"type\":\"%s\"", gpa, size, prio, device ? "device" : "ram");
  char *j = ru_regions_json(mm);
  bool found = strstr(j, want) != NULL;
  free(j);
  return found;
}

/* A failed build: the code, the reason, words in the message, and nothing left behind. */
static inline void ru_expect_error(const mb_ram_error *e, int code, mb_ram_reason reason,
                                   const char *word1, const char *word2) {
  if (e->code != code || e->reason != reason)
    print_error("got code %d reason %d: %s\n", e->code, (int)e->reason, e->message);
  assert_int_equal(e->code, code);
  assert_int_equal(e->reason, reason);
  if (word1 && !strstr(e->message, word1)) print_error("message: %s\n", e->message);
  if (word1) assert_non_null(strstr(e->message, word1));
  if (word2 && !strstr(e->message, word2)) print_error("message: %s\n", e->message);
  if (word2) assert_non_null(strstr(e->message, word2));
}

/* ---- /proc and /sys ------------------------------------------------------------------------ */

/* Sums the smaps fields named `keys` (kB) of the VMAs overlapping [lo, hi); *flags gets the
 * VmFlags line of the first such VMA (if flags is not NULL). */
static inline uint64_t ru_smaps_sum(const void *lo, const void *hi, const char *const *keys,
                                    size_t nkeys, char *flags, size_t flags_size) {
  FILE *f = fopen("/proc/self/smaps", "r");
  assert_non_null(f);
  char line[512];
  bool in = false;
  uint64_t sum = 0;
  if (flags) flags[0] = '\0';
  while (fgets(line, sizeof line, f)) {
    uintptr_t a, b;
    if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " ", &a, &b) == 2) { /* a VMA's first line */
      in = a < (uintptr_t)hi && b > (uintptr_t)lo;
      continue;
    }
    if (!in) continue;
    for (size_t k = 0; k < nkeys; k++) {
      size_t n = strlen(keys[k]);
      if (strncmp(line, keys[k], n) == 0 && line[n] == ':') sum += strtoull(line + n + 1, NULL, 10);
    }
    if (flags && !flags[0] && strncmp(line, "VmFlags:", 8) == 0) {
      size_t n = strlen(line) < flags_size - 1 ? strlen(line) : flags_size - 1;
      memcpy(flags, line, n);
      flags[n] = '\0';
    }
  }
  fclose(f);
  return sum;
}

static inline bool ru_read_file(const char *path, char *buf, size_t size) {
  FILE *f = fopen(path, "r");
  if (f == NULL) return false;
  size_t n = fread(buf, 1, size - 1, f);
  buf[n] = '\0';
  fclose(f);
  return n > 0;
}

static inline bool ru_write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (f == NULL) return false;
  bool ok = fputs(text, f) >= 0;
  return fclose(f) == 0 && ok;
}

#endif
