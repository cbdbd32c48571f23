/* test_record_dirty.c: dirty-page tracking in a recording (spec "Recording"). A manager that
 * records is driven through every form of the dirty calls: start and stop, each refused once,
 * and syncs as a bitmap and as ranges, blocking and asynchronous, after guest writes through a
 * soft partition. The recording must say each: start and stop with their results, a sync that
 * succeeded without `=>` and with the pages it answered in a comment (read from the caller's
 * bitmap or list), one that failed with its error. Then it must parse, and replay (argv[1] is
 * membacking-replay). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rec_util.h"
#include "membacking.h"
#include "scenario.h"
#include "test_util.h"

enum { PG = 4096, TEXT_MAX = 1 << 16 };
#define MiB (1ull << 20)

static const char *replay_path;

typedef struct world {
  tu_home home; /* the asynchronous calls complete here */
  mb_loop *mgr, *pl;
  mb_mm *mm;
  mb_partition *part;
  mb_object *ram;
} world;

static void world_init(world *w, const char *path) {
  tu_home_init(&w->home, "client");
  w->mgr = tu_start("mgr");
  w->pl = tu_start("part");
  mb_mm_config cfg = {.max_addr = 1ull << 30, .loop = w->mgr};
  assert_int_equal(mb_mm_create(&cfg, &w->mm), 0);
  assert_int_equal(mb_mm_record(w->mm, path), 0);
  w->ram = tu_memfd_byte("ram", 4 * MiB, 0);
  mb_region_params rp = {"ram", 0, 4 * MiB, 0, false, 0};
  mb_region_id id;
  assert_int_equal(mb_region_add_sync(w->mm, &rp, &id), 0);
  mb_mapping_params mp = {id, 0, 4 * MiB, w->ram, 0, true};
  assert_int_equal(mb_mapping_add_sync(w->mm, &mp), 0);
  assert_int_equal(mb_region_map_sync(w->mm, id, true), 0);
  assert_int_equal(mb_partition_add_sync(w->mm, &mb_partition_soft, w->pl, &w->part), 0);
}

static void world_fini(world *w) {
  mb_mm_destroy(w->mm); /* closes the recording */
  mb_object_unref(w->ram);
  tu_stop(w->mgr);
  tu_stop(w->pl);
  tu_home_fini(&w->home);
}

static void guest_write(world *w, uint64_t gpa, size_t len) {
  uint8_t b[2 * PG];
  memset(b, 0x5a, len);
  assert_int_equal(mb_partition_access_sync(w->part, gpa, b, len, true), 0);
}

/* An asynchronous call issued from the test's own loop, run until it answered. */
typedef struct async_call {
  world *w;
  bool bitmap;
  uint64_t gpa, size, *bits;
  tu_done d;
  bool done;
} async_call;

static void async_done(void *ctx, int status, uint64_t value) {
  async_call *c = ctx;
  tu_on_done(&c->d, status, value);
  c->done = true;
}

static void async_issue(mb_loop *loop, void *arg) {
  (void)loop;
  async_call *c = arg;
  if (c->bitmap) mb_dirty_sync(c->w->mm, c->gpa, c->size, c->bits, async_done, c);
  else mb_dirty_sync_ranges(c->w->mm, c->gpa, c->size, async_done, c);
}

static tu_done sync_async(world *w, bool bitmap, uint64_t gpa, uint64_t size, uint64_t *bits) {
  async_call c = {w, bitmap, gpa, size, bits, {0, 0, 0}, false};
  assert_int_equal(mb_loop_post(w->home.loop, async_issue, &c), 0);
  tu_home_run_until(&w->home, &c.done);
  return c.d;
}

/* Every form, in the order the recording must show them. */
static void drive(world *w) {
  uint64_t bits[1024 / 64] = {0}, pages = 0;
  mb_range_list *l = NULL;
  assert_int_equal(mb_dirty_stop_sync(w->mm), MB_E_INVALID);
  assert_int_equal(mb_dirty_start_sync(w->mm), 0);
  assert_int_equal(mb_dirty_start_sync(w->mm), MB_E_INVALID);
  guest_write(w, 0x1000, 1);
  guest_write(w, 0x3fff, 2); /* pages 3 and 4 */
  guest_write(w, 0x200000, 1);
  assert_int_equal(mb_dirty_sync_bitmap(w->mm, 0, 4 * MiB, bits, &pages), 0);
  assert_int_equal(pages, 4);
  assert_int_equal(mb_dirty_sync_ranges_sync(w->mm, 0, 4 * MiB, &l), 0);
  assert_int_equal(l->count, 0);
  free(l);
  guest_write(w, 0x5000, 1);
  guest_write(w, 0x6000, 1);
  assert_int_equal(mb_dirty_sync_ranges_sync(w->mm, 0, 4 * MiB, &l), 0);
  assert_int_equal(l->count, 1);
  free(l);
  assert_int_equal(mb_dirty_sync_bitmap(w->mm, 0x800, PG, bits, &pages), MB_E_INVALID);
  guest_write(w, 0x7000, 1);
  tu_done d = sync_async(w, true, 0x4000, 64 * 1024, bits);
  assert_int_equal(d.status, 0);
  assert_int_equal(d.value, 1);
  guest_write(w, 0x10000, PG + 1);
  d = sync_async(w, false, 0, 1 * MiB, NULL);
  assert_int_equal(d.status, 0);
  free((void *)(uintptr_t)d.value);
  d = sync_async(w, false, 0, 2ull << 30, NULL);
  assert_int_equal(d.status, MB_E_INVALID);
  assert_int_equal(mb_dirty_stop_sync(w->mm), 0);
  assert_int_equal(mb_dirty_sync_ranges_sync(w->mm, 0, PG, &l), MB_E_INVALID);
}

static const char *const want_lines[] = {
    "dirty stop => error:invalid\n",
    "dirty start => ok\n",
    "dirty start => error:invalid\n",
    "dirty sync 0x0 0x400000 # answered 4 pages: 0x1000+0x1000 0x3000+0x2000 0x200000+0x1000\n",
    "dirty sync 0x0 0x400000 # answered 0 pages: none\n",
    "dirty sync 0x0 0x400000 # answered 2 pages: 0x5000+0x2000\n",
    "dirty sync 0x800 0x1000 => error:invalid\n",
    "dirty sync 0x4000 0x10000 # answered 1 pages: 0x7000+0x1000\n",
    "dirty sync 0x0 0x100000 # answered 2 pages: 0x10000+0x2000\n",
    "dirty sync 0x0 0x80000000 => error:invalid\n",
    "dirty stop => ok\n",
    "dirty sync 0x0 0x1000 => error:invalid\n",
};

/* The dirty lines of the recording, in order, and nothing the format cannot replay. */
static void check_text(const char *path) {
  static char text[TEXT_MAX];
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  size_t n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[n] = '\0';
  assert_null(strstr(text, "not replayable"));
  const char *at = text;
  for (size_t i = 0; i < sizeof want_lines / sizeof want_lines[0]; i++) {
    const char *hit = strstr(at, want_lines[i]);
    if (hit == NULL) {
      fputs(text, stderr);
      fputs(want_lines[i], stderr);
      fail_msg("that dirty line (%zu) is missing from the recording above, or out of order", i);
    }
    at = hit + strlen(want_lines[i]);
  }
}

/* The recording parses; its syncs carry no expectation (the pages are a comment). */
static void check_parses(const char *path) {
  char err[256];
  scenario *sc = NULL;
  if (scenario_parse_file(path, &sc, err, sizeof err) != 0) fail_msg("%s", err);
  unsigned syncs = 0;
  for (size_t i = 0; i < sc->ncmds; i++) {
    const scenario_cmd *c = &sc->cmds[i];
    if (c->kind != SCENARIO_DIRTY_SYNC) continue;
    syncs++;
    assert_true(c->expect.kind == SCENARIO_EXPECT_NONE || c->expect.kind == SCENARIO_EXPECT_ERROR);
  }
  assert_int_equal(syncs, 8);
  scenario_free(sc);
}

static void test_record_dirty(void **state) {
  (void)state;
  char path[] = "/tmp/test_record_dirty_XXXXXX";
  rec_tmp_file(path);
  world w;
  world_init(&w, path);
  drive(&w);
  world_fini(&w);
  check_text(path);
  check_parses(path);
  rec_check_replays(replay_path, path);
  unlink(path);
}

int main(int argc, char **argv) {
  replay_path = argc > 1 ? argv[1] : NULL;
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_record_dirty)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
