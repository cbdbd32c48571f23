/* demo_main.c: the demo VMM. It runs one libuv loop of its own with membacking attached to it,
 * and owns what a VMM owns: where the host has KVM, it creates the VM and its vCPU itself
 * (demo_kvm.c) and attaches membacking to that VM's memory slots; elsewhere it runs the same
 * guest on a soft vCPU (demo_soft.c) over the soft partition, and says so on its first line.
 * It builds a PC-like guest memory map, starts the vCPU thread, tells the story (demo_story.c)
 * while the guest runs, and ends with PASS (exit 0) or FAIL (exit 1).
 *
 * The guest memory map: 64 MiB of RAM built by the RAM builder (mb_ram.h) with the x86
 * legacy layout, as the original's PC builder does; its windows switched by RAM visibility
 * control, as the chipset's PAM registers do:
 *   [0, 640K)          RAM                         ram_low, priority 255
 *   [640K, 768K)       the VGA window, not RAM: the VGA hole (the device model's VGA memory)
 *   [768K, 896K)       option ROM shadow RAM       eight 16 KiB windows from pam_c
 *   [896K, 960K)       BIOS shadow RAM (low)       four 16 KiB windows from pam_e, each over
 *                                                  its piece of the BIOS ROM image (rom_e..)
 *   [960K, 1M)         BIOS shadow RAM (high)      pam_f   over the BIOS ROM image rom_f
 *   [1M, 64M)          RAM                         ram_high
 *   [4G, 5G)           a DAX-style device window   dax: 2 MiB file chunks come and go
 *   [8G, ...)          KVM only: the VMM's private memory (guest program, mailbox, page
 *                      tables), in a memory slot of the VMM's, outside membacking's range
 *
 * Usage: membacking-demo [--soft | --kvm] [ROUNDS]
 *   --soft   the soft vCPU even where KVM works; --kvm   FAIL where KVM cannot run the guest;
 *   ROUNDS   DAX chunks replaced while the guest runs and reads them (default 200). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "demo.h"

#define MAX_ADDR (8 * GiB)

/* ---- issuing operations on the VMM's loop -------------------------------------------------- */

void demo_on_done(void *ctx, int status, uint64_t value) {
  demo_pending *p = ctx;
  p->done = true;
  p->status = status;
  p->value = value;
}

/* The VMM keeps serving its loop (the tick timer, membacking's actors) until `p` completes. */
int demo_finish(vmm *v, demo_pending *p, int kind, uint64_t t0) {
  while (!p->done) uv_run(&v->uv, UV_RUN_ONCE);
  if (kind >= 0 && p->status == 0) demo_stats_add(kind, demo_now_ns() - t0);
  return p->status;
}

mb_region_id demo_region_add(vmm *v, const char *name, uint64_t gpa, uint64_t size,
                             uint8_t prio, bool device) {
  demo_pending p = {0};
  mb_region_params rp = {name, gpa, size, prio, device, 0};
  uint64_t t0 = demo_now_ns();
  mb_region_add(v->mm, &rp, demo_on_done, &p);
  demo_must(v, demo_finish(v, &p, DEMO_OP_REGION_ADD, t0), name);
  return (mb_region_id)p.value;
}

int demo_region_map(vmm *v, mb_region_id id, bool writable, int kind) {
  demo_pending p = {0};
  uint64_t t0 = demo_now_ns();
  mb_region_map(v->mm, id, writable, demo_on_done, &p);
  return demo_finish(v, &p, kind, t0);
}

int demo_region_unmap(vmm *v, mb_region_id id) {
  demo_pending p = {0};
  uint64_t t0 = demo_now_ns();
  mb_region_unmap(v->mm, id, demo_on_done, &p);
  return demo_finish(v, &p, DEMO_OP_REGION_UNMAP, t0);
}

int demo_mapping_add(vmm *v, mb_region_id id, uint64_t off, uint64_t size, mb_object *obj,
                     uint64_t obj_off, bool writable) {
  demo_pending p = {0};
  mb_mapping_params mp = {id, off, size, obj, obj_off, writable};
  uint64_t t0 = demo_now_ns();
  mb_mapping_add(v->mm, &mp, demo_on_done, &p);
  return demo_finish(v, &p, DEMO_OP_MAPPING_ADD, t0);
}

int demo_mapping_remove(vmm *v, mb_region_id id, uint64_t off, uint64_t size) {
  demo_pending p = {0};
  uint64_t t0 = demo_now_ns();
  mb_mapping_remove(v->mm, id, off, size, demo_on_done, &p);
  return demo_finish(v, &p, DEMO_OP_MAPPING_REMOVE, t0);
}

int demo_mapping_replace(vmm *v, mb_region_id id, uint64_t off, uint64_t size, mb_object *obj,
                         uint64_t obj_off, bool writable) {
  demo_pending p = {0};
  mb_mapping_params mp = {id, off, size, obj, obj_off, writable};
  uint64_t t0 = demo_now_ns();
  mb_mapping_replace(v->mm, &mp, demo_on_done, &p);
  return demo_finish(v, &p, DEMO_OP_MAPPING_REPLACE, t0);
}

int demo_txn_begin(vmm *v) {
  demo_pending p = {0};
  mb_txn_begin(v->mm, demo_on_done, &p);
  return demo_finish(v, &p, -1, 0);
}

int demo_txn_commit(vmm *v) {
  demo_pending p = {0};
  uint64_t t0 = demo_now_ns();
  mb_txn_commit(v->mm, demo_on_done, &p);
  return demo_finish(v, &p, DEMO_OP_TXN_COMMIT, t0);
}

int demo_ram_windows(vmm *v, const mb_ram_window *w, size_t n, int kind) {
  demo_pending p = {0};
  mb_ram_error e;
  uint64_t t0 = demo_now_ns();
  mb_ram_set_visibility(v->guest, w, n, &e, demo_on_done, &p);
  int rc = demo_finish(v, &p, kind, t0);
  if (rc) printf("  RAM visibility: %s\n", e.message);
  return rc;
}

void demo_must(vmm *v, int rc, const char *what) {
  if (!rc) return;
  printf("  FAILED: %s: %s\n", what, membacking_strerror(rc));
  v->failures++;
}

/* ---- building the guest -------------------------------------------------------------------- */

static mb_object *object(vmm *v, mb_object_kind kind, uint64_t size, uint8_t fill) {
  mb_object *o = NULL;
  demo_must(v, mb_object_create(kind, size, "demo", &o), "object");
  if (o && fill) demo_must(v, mb_object_fill_byte(o, fill), "fill");
  return o;
}

/* A piece of the BIOS ROM image under a PAM window of the same range (under nesting, a
 * device region below a window has the window's range). */
static mb_region_id rom_region(vmm *v, const char *name, uint64_t gpa, uint64_t size) {
  mb_region_id id = demo_region_add(v, name, gpa, size, MB_DEVICE_PRIORITY, true);
  demo_must(v, demo_mapping_add(v, id, 0, size, v->rom, gpa - 0xe0000, false), name);
  demo_must(v, demo_region_map(v, id, false, DEMO_OP_REGION_MAP), name);
  return id;
}

/* The id of the builder's region that starts at gpa. */
static mb_region_id ram_id(vmm *v, uint64_t gpa) {
  mb_ram_range g;
  mb_region_id id = 0;
  for (size_t i = 0; mb_ram_region(v->guest, i, &g, &id); i++)
    if (g.gpa == gpa) return id;
  demo_must(v, MB_E_NOTFOUND, "a RAM region of the legacy split");
  return 0;
}

/* 64 MiB of RAM in one memfd, the legacy split below 1 MiB; the VGA window is not RAM. */
static void build_ram(vmm *v) {
  mb_ram_range r[] = {{0, 64 * MiB}};
  mb_ram_request q = {.ranges = r, .count = 1};
  mb_ram_config cfg = {&q, 1, true};
  mb_ram_error e;
  demo_pending p = {0};
  mb_ram_build(v->mm, &cfg, &e, demo_on_done, &p);
  if (demo_finish(v, &p, -1, 0)) printf("  RAM build: %s\n", e.message);
  demo_must(v, p.status, "guest RAM");
  if (p.status) return;
  v->guest = (mb_ram *)(uintptr_t)p.value;
  v->low = ram_id(v, 0);
  v->pam_c = ram_id(v, 0xc0000);
  v->pam_e = ram_id(v, 0xe0000);
  v->pam_f = ram_id(v, 0xf0000);
  v->high = ram_id(v, 1 * MiB);
  mb_ram_window vga = {DEMO_VGA_BASE, DEMO_VGA_SIZE, MB_RAM_NONE};
  demo_must(v, demo_ram_windows(v, &vga, 1, -1), "the VGA window");
}

static void build_guest(vmm *v) {
  v->rom = object(v, MB_OBJECT_MEMFD, 128 * KiB, 0xea);   /* the BIOS image */
  v->dax_a = object(v, MB_OBJECT_FILE, DEMO_CHUNK, 0xa1); /* two files of a virtiofs share */
  v->dax_b = object(v, MB_OBJECT_FILE, DEMO_CHUNK, 0xb2);
  if (v->failures) return;
  build_ram(v);
  if (v->failures) return;
  v->rom_e = rom_region(v, "rom_e", 0xe0000, 16 * KiB);
  rom_region(v, "rom_e4", 0xe4000, 16 * KiB);
  rom_region(v, "rom_e8", 0xe8000, 16 * KiB);
  rom_region(v, "rom_ec", 0xec000, 16 * KiB);
  v->rom_f = rom_region(v, "rom_f", 0xf0000, 64 * KiB);
  v->dax = demo_region_add(v, "dax", DEMO_DAX_GPA, 1 * GiB, 0, true);
  demo_must(v, demo_region_map(v, v->dax, true, DEMO_OP_REGION_MAP), "dax");
  v->view = mb_mm_primary_mapper(v->mm);
  uint64_t shadow = 0x5a5a5a5a5a5a5a5aull, boot = 0x1111111111111111ull;
  demo_must(v, mb_mapper_write(v->view, 0xf0000, &shadow, 8), "BIOS shadow copy");
  demo_must(v, mb_mapper_write(v->view, 0x500, &boot, 8), "boot data");
}

/* ---- the VM, the partition and the vCPU ---------------------------------------------------- */

/* The first line says where the guest runs. want: 1 KVM only, -1 soft only, 0 KVM if it can. */
static int choose_vcpu(vmm *v, int want) {
  if (want < 0) {
    printf("membacking demo: --soft: the guest runs on a soft vCPU through the soft partition\n");
    return 0;
  }
  const char *step = "";
  int rc = demo_kvm_open(&v->kvm, MAX_ADDR, &step);
  if (rc == 0) {
    printf("membacking demo: the guest runs on a vCPU of the VMM's own KVM VM (/dev/kvm)\n");
    return 0;
  }
  v->kvm = NULL;
  if (want > 0) {
    printf("membacking demo: --kvm, but no usable KVM here (%s: %s)\n", step,
           membacking_strerror(rc));
    return -1;
  }
  const char *why = strcmp(step, DEMO_KVM_STEP_OPEN) ? "/dev/kvm cannot run this guest"
                                                     : "no usable /dev/kvm here";
  printf("membacking demo: %s (%s: %s), so the guest runs on a soft vCPU through the soft "
         "partition\n", why, step, membacking_strerror(rc));
  return 0;
}

/* membacking manages the VM's slots [DEMO_SLOT_FIRST, +DEMO_SLOT_COUNT); the VMM keeps the
 * VM, its other slots and its vCPU. Without KVM: the soft partition. */
static int attach_partition(vmm *v) {
  mb_kvm_attach_config kvm = {
      .vm_fd = v->kvm ? demo_kvm_vm_fd(v->kvm) : -1,
      .slot_first = DEMO_SLOT_FIRST,
      .slot_count = DEMO_SLOT_COUNT,
  };
  mb_partition_params params = {&mb_partition_soft, NULL, NULL, 0};
  if (v->kvm) params = (mb_partition_params){&mb_partition_kvm_attach, &kvm, NULL, 0};
  demo_pending p = {0};
  mb_partition_attach(v->mm, &params, demo_on_done, &p);
  int rc = demo_finish(v, &p, -1, 0);
  demo_must(v, rc, v->kvm ? "attaching membacking to the VM" : "the soft partition");
  v->part = rc ? NULL : (mb_partition *)(uintptr_t)p.value;
  return rc;
}

static void on_tick(uv_timer_t *t) { ((vmm *)t->data)->ticks++; }

static int start_loop(vmm *v) {
  int err = 0;
  if (uv_loop_init(&v->uv)) return -1;
  v->uv_ready = true;
  if (!(v->loop = mb_loop_attach(&v->uv, "vmm", &err))) return -1;
  uv_timer_init(&v->uv, &v->tick);
  v->tick.data = v;
  uv_timer_start(&v->tick, on_tick, 10, 10);
  uv_unref((uv_handle_t *)&v->tick);
  mb_mm_config cfg = {.max_addr = MAX_ADDR, .loop = v->loop};
  return mb_mm_create(&cfg, &v->mm) ? -1 : 0;
}

static int start_vmm(vmm *v, int want) {
  if (start_loop(v) || demo_devices_init(&v->dev)) return -1;
  if (choose_vcpu(v, want)) return -1;
  build_guest(v);
  if (v->failures || attach_partition(v)) return -1;
  v->vcpu.part = v->part;
  v->vcpu.ram = v->view;
  v->vcpu.dev = &v->dev;
  v->vcpu.vmm_loop = v->loop;
  v->vcpu.kvm = v->kvm;
  if (demo_vcpu_start(&v->vcpu)) return -1;
  v->vcpu_running = true;
  return 0;
}

static void stop_vcpu(vmm *v) {
  if (!v->vcpu_running) return;
  demo_vcpu_stop(&v->vcpu, &v->uv);
  v->vcpu_running = false;
}

/* Membacking deletes its slots while the VM is still open; the VM goes last. */
static void stop_vmm(vmm *v) {
  stop_vcpu(v);
  if (v->guest) {
    demo_pending p = {0};
    mb_ram_destroy(v->guest, demo_on_done, &p);
    demo_must(v, demo_finish(v, &p, -1, 0), "guest RAM destroy");
  }
  if (v->mm) mb_mm_destroy(v->mm);
  mb_object *objs[] = {v->rom, v->dax_a, v->dax_b};
  for (size_t i = 0; i < 3; i++)
    if (objs[i]) mb_object_unref(objs[i]);
  if (v->uv_ready) {
    if (v->loop) {
      uv_close((uv_handle_t *)&v->tick, NULL);
      mb_loop_stop(v->loop);
    }
    uv_run(&v->uv, UV_RUN_DEFAULT);
    if (v->loop) mb_loop_free(v->loop);
    uv_loop_close(&v->uv);
  }
  demo_kvm_close(v->kvm);
  demo_devices_free(&v->dev);
  demo_stats_free();
}

/* ---- main ---------------------------------------------------------------------------------- */

static void tell_story(vmm *v, int rounds) {
  demo_story_boot(v);
  demo_story_pam(v);
  demo_story_pam_txn(v);
  demo_story_dax(v);
  demo_story_churn(v, rounds > 0 ? rounds : 1);
  demo_stats_print();
  demo_story_summary(v);
  stop_vcpu(v);
  demo_story_check_counter(v);
  if (atomic_load(&v->vcpu.guest_errors) || atomic_load(&v->vcpu.failed)) v->failures++;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  int rounds = 200, want = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--soft")) want = -1;
    else if (!strcmp(argv[i], "--kvm")) want = 1;
    else rounds = atoi(argv[i]);
  }
  static vmm v; /* zeroed; large (the vCPU and device state) */
  if (start_vmm(&v, want) == 0) tell_story(&v, rounds);
  else v.failures++;
  stop_vmm(&v);
  printf("\n%s: %d checks, %d failed\n", v.failures ? "FAIL" : "PASS", v.checks, v.failures);
  return v.failures ? 1 : 0;
}
