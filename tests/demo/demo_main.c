/* demo_main.c: the demo VMM. It runs one libuv loop of its own with membacking attached to it,
 * builds a PC-like guest memory map, starts the guest's vCPU, and then, while the guest runs,
 * maps, remaps and unmaps regions and sub-mappings, asking the guest each time what it now
 * sees. It checks its own story, prints the latency of each kind of operation, and ends with
 * PASS (exit 0) or FAIL (exit 1).
 *
 * The guest memory map (the shape of the original's PC builder):
 *   [0, 640K)          RAM                         ram_low, priority 255
 *   [640K, 768K)       nothing: the VGA hole (MMIO)
 *   [768K, 896K)       option ROM shadow RAM       pam_c
 *   [896K, 960K)       BIOS shadow RAM (low)       pam_e   over the BIOS ROM image rom_e
 *   [960K, 1M)         BIOS shadow RAM (high)      pam_f   over the BIOS ROM image rom_f
 *   [1M, 64M)          RAM                         ram_high
 *   [4G, 5G)           a DAX-style device window   dax: 2 MiB file chunks come and go */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "demo.h"

#define KiB (1ull << 10)
#define MiB (1ull << 20)
#define GiB (1ull << 30)
#define DAX_GPA (4 * GiB)
#define CHUNK (2 * MiB)

typedef struct vmm {
  uv_loop_t uv;
  uv_timer_t tick;
  uint64_t ticks;
  mb_loop *loop;
  mb_mm *mm;
  mb_partition *part;
  mb_mapper *view;  /* the VMM's own view of guest memory (device emulation) */
  mb_object *ram, *rom, *dax_a, *dax_b;
  mb_region_id low, pam_c, pam_e, pam_f, rom_e, rom_f, high, dax;
  demo_vcpu vcpu;
  int checks, failures;
} vmm;

/* ---- issuing operations on the VMM's loop ---------------------------------------------------- */

typedef struct pending {
  bool done;
  int status;
  uint64_t value;
} pending;

static void on_done(void *ctx, int status, uint64_t value) {
  pending *p = ctx;
  p->done = true;
  p->status = status;
  p->value = value;
}

/* The VMM keeps serving its loop (the tick timer, membacking's actors) until `p` completes. */
static int finish(vmm *v, pending *p, int kind, uint64_t t0) {
  while (!p->done) uv_run(&v->uv, UV_RUN_ONCE);
  if (kind >= 0 && p->status == 0) demo_stats_add(kind, demo_now_ns() - t0);
  return p->status;
}

static mb_region_id region_add(vmm *v, const char *name, uint64_t gpa, uint64_t size,
                               uint8_t prio, bool device) {
  pending p = {0};
  mb_region_params rp = {name, gpa, size, prio, device};
  uint64_t t0 = demo_now_ns();
  mb_region_add(v->mm, &rp, on_done, &p);
  if (finish(v, &p, DEMO_OP_REGION_ADD, t0)) v->failures++;
  return (mb_region_id)p.value;
}

static int region_map(vmm *v, mb_region_id id, bool writable, int kind) {
  pending p = {0};
  uint64_t t0 = demo_now_ns();
  mb_region_map(v->mm, id, writable, on_done, &p);
  return finish(v, &p, kind, t0);
}

static int region_unmap(vmm *v, mb_region_id id) {
  pending p = {0};
  uint64_t t0 = demo_now_ns();
  mb_region_unmap(v->mm, id, on_done, &p);
  return finish(v, &p, DEMO_OP_REGION_UNMAP, t0);
}

static int mapping_add(vmm *v, mb_region_id id, uint64_t off, uint64_t size, mb_object *obj,
                       uint64_t obj_off, bool writable) {
  pending p = {0};
  mb_mapping_params mp = {id, off, size, obj, obj_off, writable};
  uint64_t t0 = demo_now_ns();
  mb_mapping_add(v->mm, &mp, on_done, &p);
  return finish(v, &p, DEMO_OP_MAPPING_ADD, t0);
}

static int mapping_remove(vmm *v, mb_region_id id, uint64_t off, uint64_t size) {
  pending p = {0};
  uint64_t t0 = demo_now_ns();
  mb_mapping_remove(v->mm, id, off, size, on_done, &p);
  return finish(v, &p, DEMO_OP_MAPPING_REMOVE, t0);
}

static void must(vmm *v, int rc, const char *what) {
  if (!rc) return;
  printf("  FAILED: %s: %s\n", what, membacking_strerror(rc));
  v->failures++;
}

/* ---- asking the running guest -------------------------------------------------------------- */

static int guest_access(vmm *v, uint64_t gpa, bool write, uint8_t byte, uint8_t *seen) {
  demo_probe p = {.gpa = gpa, .len = 4, .write = write};
  memset(p.data, byte, sizeof p.data);
  demo_vcpu_probe(&v->vcpu, &p);
  while (!atomic_load(&v->vcpu.answered)) uv_run(&v->uv, UV_RUN_ONCE);
  *seen = p.data[0];
  return p.status;
}

static const char *status_text(int rc) {
  return rc == 0 ? "ok" : rc == MB_E_MMIO ? "mmio exit" : rc == MB_E_FAULT ? "fault" : "error";
}

/* The guest reads 4 bytes at gpa: expect a status and, when it succeeds, the byte. */
static void expect_read(vmm *v, const char *story, uint64_t gpa, int want, uint8_t byte) {
  uint8_t seen = 0;
  int rc = guest_access(v, gpa, false, 0, &seen);
  bool ok = rc == want && (rc != 0 || seen == byte);
  v->checks++;
  v->failures += !ok;
  if (rc == 0)
    printf("  guest reads  0x%09llx: %02x          %-34s %s\n", (unsigned long long)gpa, seen,
           story, ok ? "ok" : "WRONG");
  else
    printf("  guest reads  0x%09llx: %-12s%-34s %s\n", (unsigned long long)gpa, status_text(rc),
           story, ok ? "ok" : "WRONG");
}

static void expect_write(vmm *v, const char *story, uint64_t gpa, uint8_t byte, int want) {
  uint8_t seen = 0;
  int rc = guest_access(v, gpa, true, byte, &seen);
  bool ok = rc == want;
  v->checks++;
  v->failures += !ok;
  printf("  guest writes 0x%09llx: %-12s%-34s %s\n", (unsigned long long)gpa, status_text(rc),
         story, ok ? "ok" : "WRONG");
}

/* The VMM's own device code reads guest memory through its view. */
static void expect_view(vmm *v, const char *story, uint64_t gpa, uint8_t byte) {
  uint8_t seen = 0;
  int rc = mb_mapper_read(v->view, gpa, &seen, 1);
  bool ok = rc == 0 && seen == byte;
  v->checks++;
  v->failures += !ok;
  printf("  VMM reads    0x%09llx: %02x          %-34s %s\n", (unsigned long long)gpa, seen,
         story, ok ? "ok" : "WRONG");
}

/* ---- building the guest -------------------------------------------------------------------- */

static mb_object *object(vmm *v, mb_object_kind kind, uint64_t size, uint8_t fill) {
  mb_object *o = NULL;
  must(v, mb_object_create(kind, size, "demo", &o), "object");
  if (o && fill) must(v, mb_object_fill_byte(o, fill), "fill");
  return o;
}

/* A RAM region backed by the RAM object at the same offset as its guest address. */
static mb_region_id ram_region(vmm *v, const char *name, uint64_t gpa, uint64_t size) {
  mb_region_id id = region_add(v, name, gpa, size, 255, false);
  must(v, mapping_add(v, id, 0, size, v->ram, gpa, true), name);
  must(v, region_map(v, id, true, DEMO_OP_REGION_MAP), name);
  return id;
}

static mb_region_id rom_region(vmm *v, const char *name, uint64_t gpa, uint64_t size) {
  mb_region_id id = region_add(v, name, gpa, size, 0, true);
  must(v, mapping_add(v, id, 0, size, v->rom, gpa - 0xe0000, false), name);
  must(v, region_map(v, id, false, DEMO_OP_REGION_MAP), name);
  return id;
}

static void build_guest(vmm *v) {
  v->ram = object(v, MB_OBJECT_MEMFD, 64 * MiB, 0);
  v->rom = object(v, MB_OBJECT_MEMFD, 128 * KiB, 0xea);   /* the BIOS image */
  v->dax_a = object(v, MB_OBJECT_FILE, CHUNK, 0xa1);      /* two files of a virtiofs share */
  v->dax_b = object(v, MB_OBJECT_FILE, CHUNK, 0xb2);
  if (v->failures) return;
  v->low = ram_region(v, "ram_low", 0, 640 * KiB);
  v->rom_e = rom_region(v, "rom_e", 0xe0000, 64 * KiB);
  v->rom_f = rom_region(v, "rom_f", 0xf0000, 64 * KiB);
  v->pam_c = ram_region(v, "pam_c", 0xc0000, 128 * KiB);
  v->pam_e = ram_region(v, "pam_e", 0xe0000, 64 * KiB);
  v->pam_f = ram_region(v, "pam_f", 0xf0000, 64 * KiB);
  v->high = ram_region(v, "ram_high", 1 * MiB, 63 * MiB);
  v->dax = region_add(v, "dax", DAX_GPA, 1 * GiB, 0, true);
  must(v, region_map(v, v->dax, true, DEMO_OP_REGION_MAP), "dax");
  v->view = mb_mm_primary_mapper(v->mm);
  uint8_t shadow[4] = {0x5a, 0x5a, 0x5a, 0x5a}, boot[4] = {0x11, 0x11, 0x11, 0x11};
  must(v, mb_mapper_write(v->view, 0xf0000, shadow, 4), "BIOS shadow copy");
  must(v, mb_mapper_write(v->view, 0x500, boot, 4), "boot data");
}

/* ---- the story ------------------------------------------------------------------------------ */

static void story_boot(vmm *v) {
  printf("boot: RAM, shadowed BIOS, VGA hole, empty DAX window\n");
  expect_read(v, "RAM", 0x500, 0, 0x11);
  expect_read(v, "VGA hole: device emulation", 0xa0000, MB_E_MMIO, 0);
  expect_read(v, "BIOS shadow RAM", 0xf0000, 0, 0x5a);
  expect_read(v, "DAX window, no file chunk yet", DAX_GPA, MB_E_FAULT, 0);
}

static void story_pam(vmm *v) {
  printf("PAM: the chipset switches the BIOS window between shadow RAM and ROM\n");
  must(v, region_unmap(v, v->pam_f), "unmap pam_f");
  expect_read(v, "shadow off: the ROM shows through", 0xf0000, 0, 0xea);
  expect_write(v, "writes to ROM exit to the VMM", 0xf0000, 0x00, MB_E_MMIO);
  must(v, region_map(v, v->pam_f, false, DEMO_OP_REGION_MAP), "map pam_f ro");
  expect_read(v, "shadow back, read-only", 0xf0000, 0, 0x5a);
  expect_write(v, "read-only shadow: write exits", 0xf0000, 0x00, MB_E_MMIO);
  must(v, region_map(v, v->pam_f, true, DEMO_OP_ACCESS_CHANGE), "pam_f rw");
  expect_write(v, "shadow writable again", 0xf0000, 0x77, 0);
  expect_view(v, "the guest's write, seen by the VMM", 0xf0000, 0x77);
}

static void story_dax(vmm *v) {
  printf("DAX: file chunks come and go in the device window\n");
  must(v, mapping_add(v, v->dax, 0, CHUNK, v->dax_a, 0, true), "dax add A");
  expect_read(v, "chunk 0 = file A", DAX_GPA, 0, 0xa1);
  must(v, mapping_remove(v, v->dax, 0, CHUNK), "dax remove");
  must(v, mapping_add(v, v->dax, 0, CHUNK, v->dax_b, 0, true), "dax add B");
  expect_read(v, "chunk 0 = file B", DAX_GPA, 0, 0xb2);
  must(v, mapping_remove(v, v->dax, CHUNK / 2, CHUNK / 2), "dax remove half");
  expect_read(v, "first half still mapped", DAX_GPA, 0, 0xb2);
  expect_read(v, "second half removed: a hole", DAX_GPA + CHUNK / 2, MB_E_FAULT, 0);
  must(v, region_unmap(v, v->dax), "unmap dax");
  expect_read(v, "window unmapped: MMIO", DAX_GPA, MB_E_MMIO, 0);
  must(v, region_map(v, v->dax, true, DEMO_OP_REGION_MAP), "map dax");
  expect_read(v, "window back with its chunk", DAX_GPA, 0, 0xb2);
  must(v, mapping_remove(v, v->dax, 0, CHUNK), "dax remove all");
}

/* Many chunks churned while the guest runs; every read must see exactly the current file. */
static void story_churn(vmm *v, int rounds) {
  printf("DAX churn: %d remaps while the guest keeps running\n", rounds);
  int wrong = 0;
  for (int i = 0; i < rounds; i++) {
    uint64_t off = (uint64_t)(i % 64) * CHUNK;
    mb_object *file = (i & 1) ? v->dax_b : v->dax_a;
    must(v, mapping_add(v, v->dax, off, CHUNK, file, 0, true), "churn add");
    uint8_t seen = 0;
    if (guest_access(v, DAX_GPA + off + 4096, false, 0, &seen) || seen != ((i & 1) ? 0xb2 : 0xa1))
      wrong++;
    must(v, mapping_remove(v, v->dax, off, CHUNK), "churn remove");
  }
  v->checks++;
  v->failures += wrong != 0;
  printf("  %d of %d guest reads saw the right file %s\n", rounds - wrong, rounds,
         wrong ? "WRONG" : "ok");
}

/* The guest is still running after everything: its counter moves on. */
static void wait_guest_progress(vmm *v) {
  uint64_t before = atomic_load(&v->vcpu.guest_steps);
  while (atomic_load(&v->vcpu.guest_steps) == before && !atomic_load(&v->vcpu.guest_errors))
    uv_run(&v->uv, UV_RUN_ONCE);
}

static void print_states(vmm *v) {
  static const char *const names[] = {"unmapped", "hidden", "active", "partial"};
  struct { const char *name; mb_region_id id; } r[] = {
      {"ram_low", v->low}, {"pam_c", v->pam_c}, {"pam_e", v->pam_e}, {"pam_f", v->pam_f},
      {"rom_e", v->rom_e}, {"rom_f", v->rom_f}, {"ram_high", v->high}, {"dax", v->dax}};
  printf("\nregions:");
  for (size_t i = 0; i < sizeof r / sizeof r[0]; i++) {
    pending p = {0};
    mb_region_state(v->mm, r[i].id, on_done, &p);
    if (finish(v, &p, -1, 0) == 0) printf(" %s=%s", r[i].name, names[p.value & 3]);
  }
}

static void print_partition(vmm *v) {
  pending p = {0};
  mb_partition_ranges(v->part, on_done, &p);
  if (finish(v, &p, -1, 0)) return;
  mb_range_list *l = (mb_range_list *)(uintptr_t)p.value;
  printf("\npartition map:");
  for (size_t i = 0; i < l->count; i++)
    printf(" 0x%llx+0x%llx:%s", (unsigned long long)l->ranges[i].gpa,
           (unsigned long long)l->ranges[i].size, l->ranges[i].writable ? "rw" : "ro");
  free(l);
}

/* From the manager's introspection (mb_mm_inspect): the per-stage request latency. */
static void print_stages(vmm *v) {
  pending p = {0};
  mb_mm_inspect(v->mm, on_done, &p);
  if (finish(v, &p, -1, 0)) return;
  char *json = (char *)(uintptr_t)p.value, *s = strstr(json, "\"stages\":");
  int depth = 0;
  printf("\nintrospection (%zu bytes of JSON), stage latency: ", strlen(json));
  for (; s && *s; s++) {
    putchar(*s);
    depth += (*s == '{') - (*s == '}');
    if (*s == '}' && depth == 0) break;
  }
  free(json);
}

static void summary(vmm *v) {
  wait_guest_progress(v);
  print_states(v);
  print_partition(v);
  print_stages(v);
  printf("\nguest work done meanwhile: %llu counter updates, %llu failed; VMM loop ticks: %llu\n",
         (unsigned long long)atomic_load(&v->vcpu.guest_steps),
         (unsigned long long)atomic_load(&v->vcpu.guest_errors), (unsigned long long)v->ticks);
}

/* ---- main ----------------------------------------------------------------------------------- */

static void on_tick(uv_timer_t *t) { ((vmm *)t->data)->ticks++; }

static int start_vmm(vmm *v, bool *kvm) {
  int err = 0;
  if (uv_loop_init(&v->uv) || !(v->loop = mb_loop_attach(&v->uv, "vmm", &err))) return -1;
  uv_timer_init(&v->uv, &v->tick);
  v->tick.data = v;
  uv_timer_start(&v->tick, on_tick, 10, 10);
  uv_unref((uv_handle_t *)&v->tick);
  mb_mm_config cfg = {.max_addr = 8 * GiB, .loop = v->loop};
  if (mb_mm_create(&cfg, &v->mm)) return -1;
  build_guest(v);
  if (v->failures) return -1;
  pending p = {0};
  mb_partition_add(v->mm, &mb_partition_kvm, NULL, on_done, &p);
  finish(v, &p, -1, 0);
  *kvm = p.status == 0;
  if (!*kvm) {
    p = (pending){0};
    mb_partition_add(v->mm, &mb_partition_soft, NULL, on_done, &p);
    if (finish(v, &p, -1, 0)) return -1;
  }
  v->part = (mb_partition *)(uintptr_t)p.value;
  if (demo_vcpu_start(&v->vcpu, v->part, v->loop)) return -1;
  wait_guest_progress(v); /* the guest runs before the story starts */
  return 0;
}

static void stop_vmm(vmm *v) {
  if (v->part) demo_vcpu_stop(&v->vcpu, &v->uv);
  if (v->mm) mb_mm_destroy(v->mm);
  mb_object *objs[] = {v->ram, v->rom, v->dax_a, v->dax_b};
  for (size_t i = 0; i < 4; i++)
    if (objs[i]) mb_object_unref(objs[i]);
  uv_close((uv_handle_t *)&v->tick, NULL);
  if (v->loop) mb_loop_stop(v->loop);
  uv_run(&v->uv, UV_RUN_DEFAULT);
  if (v->loop) mb_loop_free(v->loop);
  uv_loop_close(&v->uv);
  demo_stats_free();
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  int rounds = argc > 1 ? atoi(argv[1]) : 200;
  vmm v = {0};
  bool kvm = false;
  if (access("/dev/kvm", R_OK | W_OK) != 0)
    printf("membacking demo: no usable /dev/kvm here, so the guest runs on the soft partition\n");
  int rc = start_vmm(&v, &kvm);
  if (kvm) printf("membacking demo: the guest runs in a KVM partition\n");
  else if (access("/dev/kvm", R_OK | W_OK) == 0)
    printf("membacking demo: /dev/kvm cannot host a VM, so the guest runs on the soft partition\n");
  if (rc == 0) {
    story_boot(&v);
    story_pam(&v);
    story_dax(&v);
    story_churn(&v, rounds > 0 ? rounds : 1);
    demo_stats_print();
    summary(&v);
    if (atomic_load(&v.vcpu.guest_errors)) v.failures++;
  } else {
    v.failures++;
  }
  stop_vmm(&v);
  printf("\n%s: %d checks, %d failed\n", v.failures ? "FAIL" : "PASS", v.checks, v.failures);
  return v.failures ? 1 : 0;
}
