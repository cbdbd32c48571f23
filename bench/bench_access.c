/* bench_access.c: access.read (spec/bench.md): reading 64 KiB of guest memory through a VA
 * mapper, as throughput; its floor is memcpy of the same bytes (baseline_syscalls.c: from a
 * memfd mapping to an anonymous buffer, both resident and warm).
 *
 * Setup: a manager on a started loop, a 64 KiB RAM region holding one mapping of a filled
 * 64 KiB memfd, mapped; the read goes through the manager's eager VA mapper
 * (mb_mm_primary_mapper) into a page-aligned anonymous buffer, both faulted in beforehand,
 * so that source and destination are laid out like the floor's. No loop is involved in the
 * read itself: mb_mapper_read is a fault-tolerant copy on the calling thread.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "areas.h"
#include "harness.h"
#include "membacking.h"

enum { READ_BYTES = 64 * 1024 };
#define READ_GPA ((uint64_t)1 << 30)
/* The guest address space: small enough for valgrind to reserve (callgrind profiles). */
#define MAX_ADDR ((uint64_t)8 << 30)

typedef struct access_read {
  mb_loop *loop;
  mb_mm *mm;
  mb_mapper *mapper;
  mb_object *obj;
  unsigned char *dst;
} access_read;

static void access_read_teardown(void *state) {
  access_read *a = state;
  if (a->mm)
    mb_mm_destroy(a->mm);
  mb_object_unref(a->obj);
  if (a->loop) {
    mb_loop_stop(a->loop);
    mb_loop_free(a->loop);
  }
  if (a->dst != NULL && a->dst != MAP_FAILED)
    munmap(a->dst, READ_BYTES);
  free(a);
}

static int access_read_setup(mb_bench *b, void **state) {
  access_read *a = calloc(1, sizeof *a);
  if (a == NULL)
    return -ENOMEM;
  int rc = 0;
  const char *what = "loop";
  a->loop = mb_loop_start("bench-access-mm", &rc);
  if (a->loop == NULL)
    goto fail;
  what = "mb_mm_create";
  mb_mm_config cfg = {.max_addr = MAX_ADDR, .overlap = MB_OVERLAP_NESTED, .loop = a->loop};
  if ((rc = mb_mm_create(&cfg, &a->mm)) != 0) {
    a->mm = NULL;
    goto fail;
  }
  a->mapper = mb_mm_primary_mapper(a->mm);
  what = "object";
  if ((rc = mb_object_create(MB_OBJECT_MEMFD, READ_BYTES, "bench-access", &a->obj)) != 0 ||
      (rc = mb_object_fill_pages(a->obj, 1)) != 0)
    goto fail;
  what = "region";
  mb_region_id id;
  mb_region_params rp = {.name = "ram", .gpa = READ_GPA, .size = READ_BYTES};
  if ((rc = mb_region_add_sync(a->mm, &rp, &id)) != 0)
    goto fail;
  mb_mapping_params mp = {.region = id, .offset = 0, .size = READ_BYTES, .obj = a->obj,
                          .obj_offset = 0, .writable = true};
  what = "mapping";
  if ((rc = mb_mapping_add_sync(a->mm, &mp)) != 0 || (rc = mb_region_map_sync(a->mm, id, true)))
    goto fail;
  what = "mmap";
  a->dst = mmap(NULL, READ_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (a->dst == MAP_FAILED) {
    rc = -errno;
    goto fail;
  }
  what = "first read";
  if ((rc = mb_mapper_read(a->mapper, READ_GPA, a->dst, READ_BYTES)) != 0) /* faults both in */
    goto fail;
  for (size_t off = 0; off < READ_BYTES; off += 4096) {
    if (a->dst[off] != mb_fill_pages_byte(1, off)) {
      access_read_teardown(a);
      return mb_bench_fail(b, "read the wrong bytes at offset %zu", off);
    }
  }
  *state = a;
  return 0;
fail:
  access_read_teardown(a);
  return mb_bench_fail(b, "%s: %s", what, membacking_strerror(rc));
}

static int access_read_run(mb_bench *b, void *state, uint32_t n) {
  access_read *a = state;
  for (uint32_t i = 0; i < n; i++) {
    int rc = mb_mapper_read(a->mapper, READ_GPA, a->dst, READ_BYTES);
    if (rc != 0)
      return mb_bench_fail(b, "mb_mapper_read: %s", membacking_strerror(rc));
    atomic_signal_fence(memory_order_seq_cst); /* every copy happens */
  }
  return 0;
}

static const mb_bench_def access_benches[] = {
    {
        .name = "access.read",
        .unit = MB_BENCH_BPS,
        .bytes = READ_BYTES,
        .baseline = "memcpy",
        .setup = access_read_setup,
        .run = access_read_run,
        .teardown = access_read_teardown,
        .doc = "mb_mapper_read of 64 KiB through the eager VA mapper (throughput)",
    },
};

void mb_bench_area_bench_access(void) { MB_BENCH_REGISTER_ALL(access_benches); }
