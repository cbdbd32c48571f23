/* vmm.c: a small out-of-tree VMM, built from the installed files alone with plain -std=c11
 * (tests/install/check_install.sh). It owns its libuv loop and attaches membacking to it;
 * the managers run on a loop of their own. Its asynchronous calls keep its uv_run going
 * until their answers have run, and then uv_run(UV_RUN_DEFAULT) returns by itself, as it
 * would with libuv's own requests. Every installed header is included. */
#include <membacking/membacking.h>
#include <membacking/mb_access.h>
#include <membacking/mb_backing.h>
#include <membacking/mb_errors.h>
#include <membacking/mb_kvm_exit.h>
#include <membacking/mb_partition.h>
#include <membacking/mb_protocol.h>
#include <membacking/mb_range.h>
#include <membacking/mb_runtime.h>
#include <stdio.h>
#include <uv.h>

typedef struct vmm {
  mb_mm *mm;
  mb_region_id ram;
  int steps, rc;
} vmm;

static void on_mapped(void *ctx, int status, uint64_t value) {
  (void)value;
  vmm *v = ctx;
  v->steps++;
  v->rc = status;
}

static void on_added(void *ctx, int status, uint64_t value) {
  vmm *v = ctx;
  v->steps++;
  v->rc = status;
  v->ram = (mb_region_id)value;
  if (!status) mb_region_map(v->mm, v->ram, true, on_mapped, v);
}

int main(void) {
  uv_loop_t uv;
  int err = 0;
  if (uv_loop_init(&uv)) return 1;
  mb_loop *home = mb_loop_attach(&uv, "vmm", &err);
  mb_loop *mem = mb_loop_start("mem", &err);
  if (!home || !mem) return 1;
  vmm v = {0};
  mb_mm_config cfg = {.max_addr = 1ull << 30, .loop = mem};
  if (mb_mm_create(&cfg, &v.mm)) return 2;
  mb_region_params rp = {.name = "ram", .gpa = 0, .size = 1 << 20, .priority = 255};
  mb_region_add(v.mm, &rp, on_added, &v);
  uv_run(&uv, UV_RUN_DEFAULT); /* returns once both answers have run */
  printf("region add+map: %s after %d answers\n", membacking_strerror(v.rc), v.steps);
  mb_mm_destroy(v.mm);
  if (mb_loop_stop(home) || mb_loop_stop(mem)) return 4;
  uv_run(&uv, UV_RUN_DEFAULT);
  mb_loop_free(home);
  mb_loop_free(mem);
  if (uv_loop_close(&uv)) return 5;
  return v.rc || v.steps != 2 ? 3 : 0;
}
