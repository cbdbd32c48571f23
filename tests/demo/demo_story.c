/* demo_story.c: the story the demo VMM tells while its guest runs. The VMM changes the guest's
 * memory map (PAM windows between shadow RAM and ROM, read-only and writable again, all 13
 * at once in a transaction; DAX file chunks added, replaced, split, removed, the window
 * unmapped and mapped again, 200 chunks replaced while the guest keeps reading them) and after
 * each change asks the running guest to load or store 8 bytes somewhere, and checks what came
 * back: data from memory, an MMIO exit that the device model served, or a fault. The PAM
 * windows are switched through the RAM builder's visibility control (mb_ram.h). The checks
 * are the same whichever vCPU runs the guest (KVM or soft). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "demo.h"

/* ---- asking the running guest -------------------------------------------------------------- */

/* The running guest loads 8 bytes at gpa into *value, or stores *value there; the answer comes
 * back on the VMM's loop, which keeps serving membacking meanwhile. */
static int guest_access(vmm *v, uint64_t gpa, bool write, uint64_t *value) {
  demo_vcpu *c = &v->vcpu;
  demo_probe p = {.gpa = gpa, .value = *value, .write = write};
  demo_vcpu_probe(c, &p);
  while (!atomic_load(&c->answered) && !atomic_load(&c->exited)) uv_run(&v->uv, UV_RUN_ONCE);
  if (!atomic_load(&c->answered)) {
    atomic_store(&c->pending, NULL); /* the vCPU has stopped: nobody takes it */
    return -EIO;
  }
  *value = p.value;
  return p.status;
}

static uint64_t bytes(uint8_t b) { return b * 0x0101010101010101ull; }

static void check(vmm *v, bool ok) {
  v->checks++;
  v->failures += !ok;
}

/* What an access came back with, for the story's table. */
static const char *outcome(char *buf, size_t size, int rc, bool write, uint64_t value) {
  if (rc == MB_E_FAULT) return "fault";
  if (rc == -EIO) return "no vCPU";
  if (rc != 0 && rc != MB_E_MMIO) return membacking_strerror(rc);
  if (write) return rc == 0 ? "stored" : "mmio";
  snprintf(buf, size, "%s%016llx", rc == 0 ? "" : "mmio ", (unsigned long long)value);
  return buf;
}

static void line(const char *who, uint64_t gpa, const char *what, const char *story, bool ok) {
  printf("  %-12s 0x%09llx: %-21s %-40s %s\n", who, (unsigned long long)gpa, what, story,
         ok ? "ok" : "WRONG");
}

/* The guest loads at gpa: expect a status (0, MB_E_MMIO, MB_E_FAULT) and, unless it faults,
 * eight times the byte (from memory, or from the device model). */
static void expect_read(vmm *v, const char *story, uint64_t gpa, int want, uint8_t byte) {
  uint64_t got = 0;
  char buf[32];
  int rc = guest_access(v, gpa, false, &got);
  bool ok = rc == want && (rc == MB_E_FAULT || got == bytes(byte));
  check(v, ok);
  line("guest loads", gpa, outcome(buf, sizeof buf, rc, false, got), story, ok);
}

static void expect_write(vmm *v, const char *story, uint64_t gpa, uint8_t byte, int want) {
  uint64_t value = bytes(byte);
  char buf[32];
  int rc = guest_access(v, gpa, true, &value);
  bool ok = rc == want;
  check(v, ok);
  line("guest stores", gpa, outcome(buf, sizeof buf, rc, true, value), story, ok);
}

/* The VMM's own device code reads guest memory through its view. */
static void expect_view(vmm *v, const char *story, uint64_t gpa, uint8_t byte) {
  uint64_t got = 0;
  char buf[32];
  int rc = mb_mapper_read(v->view, gpa, &got, sizeof got);
  bool ok = rc == 0 && got == bytes(byte);
  check(v, ok);
  line("VMM reads", gpa, outcome(buf, sizeof buf, rc, false, got), story, ok);
}

/* The device model counted `delta` more accesses of a kind since `before`. */
static void expect_device(vmm *v, const char *story, _Atomic uint64_t *counter,
                          uint64_t before, uint64_t delta) {
  uint64_t n = atomic_load(counter) - before;
  char what[32];
  bool ok = n == delta;
  check(v, ok);
  snprintf(what, sizeof what, "counted %llu", (unsigned long long)n);
  printf("  %-12s %-34s %-40s %s\n", "device model", what, story, ok ? "ok" : "WRONG");
}

static const char *const state_names[] = {"unmapped", "hidden", "active", "partial"};

/* The manager's own state of a region (what a transaction changes at once). */
static void expect_state(vmm *v, const char *story, const char *name, mb_region_id id,
                         int want) {
  demo_pending p = {0};
  mb_region_state(v->mm, id, demo_on_done, &p);
  int rc = demo_finish(v, &p, -1, 0);
  bool ok = rc == 0 && p.value == (uint64_t)want;
  char what[32];
  snprintf(what, sizeof what, "%s %s", name,
           rc ? membacking_strerror(rc) : state_names[p.value & 3]);
  check(v, ok);
  printf("  %-12s %-34s %-40s %s\n", "region state", what, story, ok ? "ok" : "WRONG");
}

/* The guest's background work moves on (or its vCPU has stopped). */
static void wait_guest_progress(vmm *v) {
  demo_vcpu *c = &v->vcpu;
  uint64_t before = atomic_load(&c->guest_steps);
  while (atomic_load(&c->guest_steps) == before && !atomic_load(&c->guest_errors) &&
         !atomic_load(&c->exited))
    uv_run(&v->uv, UV_RUN_ONCE);
}

/* ---- the story ----------------------------------------------------------------------------- */

void demo_story_boot(vmm *v) {
  wait_guest_progress(v); /* the guest runs before the story starts */
  demo_devices *d = &v->dev;
  printf("boot: RAM, shadowed BIOS, VGA memory in the device model, empty DAX window\n");
  expect_read(v, "RAM", 0x500, 0, 0x11);
  expect_read(v, "VGA hole: the device model answers", 0xa0000, MB_E_MMIO, DEMO_VGA_BLANK);
  uint64_t vga_writes = atomic_load(&d->vga_writes);
  expect_write(v, "VGA hole: the device model takes it", 0xb8000, 0x41, MB_E_MMIO);
  expect_device(v, "one VGA write", &d->vga_writes, vga_writes, 1);
  expect_read(v, "VGA memory keeps what the guest wrote", 0xb8000, MB_E_MMIO, 0x41);
  expect_read(v, "BIOS shadow RAM", 0xf0000, 0, 0x5a);
  expect_read(v, "DAX window, no file chunk yet", DEMO_DAX_GPA, MB_E_FAULT, 0);
}

/* The BIOS window [960K, 1M) as the chipset's PAM register sets it. */
static int bios_window(vmm *v, mb_ram_visibility vis, int kind) {
  mb_ram_window w = {0xf0000, 0x10000, vis};
  return demo_ram_windows(v, &w, 1, kind);
}

void demo_story_pam(vmm *v) {
  demo_devices *d = &v->dev;
  printf("PAM: the chipset switches the BIOS window between shadow RAM and ROM\n");
  demo_must(v, bios_window(v, MB_RAM_NONE, DEMO_OP_REGION_UNMAP), "BIOS window not RAM");
  expect_read(v, "shadow off: the ROM shows through", 0xf0000, 0, 0xea);
  uint64_t rom_writes = atomic_load(&d->rom_writes);
  expect_write(v, "writes to ROM exit to the VMM", 0xf0000, 0x00, MB_E_MMIO);
  expect_device(v, "the write to ROM, dropped", &d->rom_writes, rom_writes, 1);
  expect_read(v, "the ROM is unchanged", 0xf0000, 0, 0xea);
  demo_must(v, bios_window(v, MB_RAM_RO, DEMO_OP_REGION_MAP), "BIOS window RAM ro");
  expect_read(v, "shadow back, read-only", 0xf0000, 0, 0x5a);
  expect_write(v, "read-only shadow: write exits", 0xf0000, 0x00, MB_E_MMIO);
  expect_read(v, "the shadow is unchanged", 0xf0000, 0, 0x5a);
  demo_must(v, bios_window(v, MB_RAM_RW, DEMO_OP_ACCESS_CHANGE), "BIOS window RAM rw");
  expect_write(v, "shadow writable again", 0xf0000, 0x77, 0);
  expect_view(v, "the guest's store, seen by the VMM", 0xf0000, 0x77);
}

/* All thirteen PAM windows from 768K to 1M: the option ROM windows to `c`, the BIOS ones to
 * `ef`. */
static size_t pam_windows(mb_ram_window *w, mb_ram_visibility c, mb_ram_visibility ef) {
  size_t n = 0;
  for (uint64_t g = 0xc0000; g < 0xe0000; g += 0x4000) w[n++] = (mb_ram_window){g, 0x4000, c};
  for (uint64_t g = 0xe0000; g < 0xf0000; g += 0x4000) w[n++] = (mb_ram_window){g, 0x4000, ef};
  w[n++] = (mb_ram_window){0xf0000, 0x10000, ef};
  return n;
}

/* The chipset programs every PAM register at once: one call of the RAM visibility control,
 * one transaction, so the guest sees the old map until the commit and the new one after
 * it, never a mix. */
void demo_story_pam_txn(vmm *v) {
  mb_ram_window w[16];
  printf("PAM: all thirteen windows switched at once, in one transaction\n");
  expect_read(v, "before: the guest sees the shadow", 0xf0000, 0, 0x77);
  size_t n = pam_windows(w, MB_RAM_RO, MB_RAM_NONE);
  demo_must(v, demo_ram_windows(v, w, n, DEMO_OP_TXN_COMMIT), "PAM windows switched");
  expect_state(v, "the BIOS window's region", "pam_f", v->pam_f, MB_REGION_UNMAPPED);
  expect_read(v, "committed: the ROM shows through", 0xf0000, 0, 0xea);
  expect_read(v, "and in the low half", 0xe0000, 0, 0xea);
  expect_write(v, "option ROM shadow read-only: exits", 0xc0000, 0x00, MB_E_MMIO);
  n = pam_windows(w, MB_RAM_RW, MB_RAM_RW);
  demo_must(v, demo_ram_windows(v, w, n, DEMO_OP_TXN_COMMIT), "PAM windows back");
  expect_read(v, "all back: the shadow kept its bytes", 0xf0000, 0, 0x77);
  expect_write(v, "option ROM shadow writable again", 0xc0000, 0x42, 0);
  expect_view(v, "the guest's store, seen by the VMM", 0xc0000, 0x42);
}

void demo_story_dax(vmm *v) {
  const uint64_t dax = DEMO_DAX_GPA, half = DEMO_CHUNK / 2;
  printf("DAX: file chunks come and go in the device window\n");
  demo_must(v, demo_mapping_add(v, v->dax, 0, DEMO_CHUNK, v->dax_a, 0, true), "dax add A");
  expect_read(v, "chunk 0 = file A", dax, 0, 0xa1);
  demo_must(v, demo_mapping_replace(v, v->dax, 0, DEMO_CHUNK, v->dax_b, 0, true), "dax B");
  expect_read(v, "chunk 0 replaced in place by file B", dax, 0, 0xb2);
  demo_must(v, demo_mapping_remove(v, v->dax, half, half), "dax remove half");
  expect_read(v, "first half still mapped", dax, 0, 0xb2);
  expect_read(v, "second half removed: a hole", dax + half, MB_E_FAULT, 0);
  expect_write(v, "a store into the hole faults too", dax + half, 0x99, MB_E_FAULT);
  demo_must(v, demo_region_unmap(v, v->dax), "unmap dax");
  expect_read(v, "window unmapped: MMIO, nothing there", dax, MB_E_MMIO, 0xff);
  demo_must(v, demo_region_map(v, v->dax, true, DEMO_OP_REGION_MAP), "map dax");
  expect_read(v, "window back with its chunk", dax, 0, 0xb2);
  demo_must(v, demo_mapping_remove(v, v->dax, 0, DEMO_CHUNK), "dax remove all");
}

/* Many chunks replaced while the guest runs and keeps scanning them: a replace is atomic, so
 * every load the guest makes there finds file A or file B and none of them exits (no hole, no
 * fault, no MMIO); after each replace the guest loads the chunk's new file. */
enum { CHURN_CHUNKS = 4, CHURN_STRIDE = 64 * 1024 };

static void churn_round(vmm *v, int i, bool *is_b, int *wrong) {
  int k = i % CHURN_CHUNKS;
  uint64_t off = (uint64_t)k * DEMO_CHUNK, seen = 0;
  is_b[k] = !is_b[k];
  mb_object *file = is_b[k] ? v->dax_b : v->dax_a;
  demo_must(v, demo_mapping_replace(v, v->dax, off, DEMO_CHUNK, file, 0, true), "churn");
  if (guest_access(v, DEMO_DAX_GPA + off + 4096, false, &seen) ||
      seen != bytes(is_b[k] ? 0xb2 : 0xa1))
    (*wrong)++;
}

/* After the scan stopped: what the guest's scans found during the churn. */
static void check_scans(vmm *v) {
  demo_scan *s = &v->vcpu.scan;
  uint64_t scans = atomic_load(&s->scans), a = atomic_load(&s->n_value),
           b = atomic_load(&s->n_alt), other = atomic_load(&s->n_other),
           exits = atomic_load(&s->exits), failed = atomic_load(&s->failed);
  bool ok = scans > 0 && other == 0 && exits == 0 && failed == 0;
  check(v, ok);
  printf("  the guest scanned the chunks %llu times meanwhile: %llu loads of file A, %llu of "
         "file B, %llu of neither, %llu exits, %llu scans failed %s\n",
         (unsigned long long)scans, (unsigned long long)a, (unsigned long long)b,
         (unsigned long long)other, (unsigned long long)exits, (unsigned long long)failed,
         ok ? "ok" : "WRONG");
  if (other)
    printf("  the last load of neither found %016llx\n",
           (unsigned long long)atomic_load(&s->other));
}

void demo_story_churn(vmm *v, int rounds) {
  printf("DAX churn: %d chunk replacements while the guest keeps reading the chunks\n", rounds);
  bool is_b[CHURN_CHUNKS] = {false};
  int wrong = 0;
  for (int k = 0; k < CHURN_CHUNKS; k++)
    demo_must(v, demo_mapping_add(v, v->dax, (uint64_t)k * DEMO_CHUNK, DEMO_CHUNK, v->dax_a, 0,
                                  true), "churn add");
  demo_vcpu_scan_start(&v->vcpu, DEMO_DAX_GPA, CHURN_CHUNKS * DEMO_CHUNK, CHURN_STRIDE,
                       bytes(0xa1), bytes(0xb2));
  for (int i = 0; i < rounds; i++)
    churn_round(v, i, is_b, &wrong);
  demo_vcpu_scan_stop(&v->vcpu);
  uint64_t seen = 0; /* the guest runs commands in order: once this is answered, no scan runs */
  if (guest_access(v, DEMO_DAX_GPA, false, &seen) || seen != bytes(is_b[0] ? 0xb2 : 0xa1))
    wrong++;
  check(v, wrong == 0);
  printf("  %d of %d guest loads after a replace saw the chunk's new file %s\n",
         rounds + 1 - wrong, rounds + 1, wrong ? "WRONG" : "ok");
  check_scans(v);
  demo_must(v, demo_mapping_remove(v, v->dax, 0, CHURN_CHUNKS * DEMO_CHUNK), "churn remove");
}

/* ---- the summary --------------------------------------------------------------------------- */

static void print_states(vmm *v) {
  struct { const char *name; mb_region_id id; } r[] = {
      {"ram_low", v->low}, {"pam_c", v->pam_c}, {"pam_e", v->pam_e}, {"pam_f", v->pam_f},
      {"rom_e", v->rom_e}, {"rom_f", v->rom_f}, {"ram_high", v->high}, {"dax", v->dax}};
  printf("\nregions:");
  for (size_t i = 0; i < sizeof r / sizeof r[0]; i++) {
    demo_pending p = {0};
    mb_region_state(v->mm, r[i].id, demo_on_done, &p);
    if (demo_finish(v, &p, -1, 0) == 0) printf(" %s=%s", r[i].name, state_names[p.value & 3]);
  }
}

static void print_partition(vmm *v) {
  demo_pending p = {0};
  mb_partition_ranges(v->part, demo_on_done, &p);
  if (demo_finish(v, &p, -1, 0)) return;
  mb_range_list *l = (mb_range_list *)(uintptr_t)p.value;
  printf("\npartition map:");
  for (size_t i = 0; i < l->count; i++)
    printf(" 0x%llx+0x%llx:%s", (unsigned long long)l->ranges[i].gpa,
           (unsigned long long)l->ranges[i].size, l->ranges[i].writable ? "rw" : "ro");
  free(l);
}

/* From the manager's introspection (mb_mm_inspect): the per-stage request latency. */
static void print_stages(vmm *v) {
  demo_pending p = {0};
  mb_mm_inspect(v->mm, demo_on_done, &p);
  if (demo_finish(v, &p, -1, 0)) return;
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

void demo_story_summary(vmm *v) {
  demo_vcpu *c = &v->vcpu;
  demo_devices *d = &v->dev;
  wait_guest_progress(v);
  print_states(v);
  print_partition(v);
  print_stages(v);
  printf("\nvCPU exits answered by the exit question: %llu mmio, %llu fault, %llu retried\n",
         (unsigned long long)atomic_load(&c->exits_mmio),
         (unsigned long long)atomic_load(&c->exits_fault),
         (unsigned long long)atomic_load(&c->exits_ram));
  printf("device model: %llu VGA loads, %llu VGA stores, %llu ROM stores dropped, "
         "%llu unassigned\n", (unsigned long long)atomic_load(&d->vga_reads),
         (unsigned long long)atomic_load(&d->vga_writes),
         (unsigned long long)atomic_load(&d->rom_writes),
         (unsigned long long)atomic_load(&d->unassigned));
  printf("guest work done meanwhile: %llu counter updates, %llu failed; VMM loop ticks: %llu\n",
         (unsigned long long)atomic_load(&c->guest_steps),
         (unsigned long long)atomic_load(&c->guest_errors), (unsigned long long)v->ticks);
}

void demo_story_check_counter(vmm *v) {
  uint64_t counter = 0, steps = atomic_load(&v->vcpu.guest_steps);
  int rc = mb_mapper_read(v->view, DEMO_GUEST_COUNTER, &counter, sizeof counter);
  bool ok = rc == 0 && counter == steps;
  check(v, ok);
  printf("the guest's counter in its RAM: %llu, its work: %llu %s\n",
         (unsigned long long)counter, (unsigned long long)steps, ok ? "ok" : "WRONG");
}
