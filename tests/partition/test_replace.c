/* test_replace.c: mb_mapping_replace is atomic for every reader. A mapping of the window is
 * replaced back and forth between two memfds (every byte 0xa1, every byte 0xb2) many times
 * while readers on threads of their own keep reading every page of it:
 *   kvm     a vCPU of the test's own KVM VM (membacking attached to it, as a VMM does) runs a
 *           guest program that loads every page and counts what it saw; every KVM_RUN must
 *           end at the program's doorbell: no MMIO exit, no EFAULT, no memory-fault exit;
 *   soft    guest accesses through a soft partition (mb_partition_access_sync), and the exit
 *           question about the chunk's pages (mb_partition_classify: RAM throughout);
 *   mapper  mb_mapper_read through the primary mapper, an eager mapper and a lazy mapper.
 * Every access must succeed (never MB_E_UNMAPPED, MB_E_FAULT or MB_E_MMIO) and every byte read
 * must be the old file's or the new one's: the guest's aligned 8-byte loads are single
 * instructions, so each finds one pattern whole; a copy of 8 bytes by mb_mapper_read or a soft
 * access is not promised to be one load (under TSan it is a byte loop), so one that races the
 * switch may mix the two (counted as torn). Once a replace has completed, a scan that ran
 * wholly after it sees only the new pattern. The kvm run exits 77 (skipped) without a usable
 * /dev/kvm; the nested rig (tests/kvmrig) runs it on real KVM where the host has none. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mb_access.h"
#include "membacking.h"
#include "test_util.h"

#define KiB (1ull << 10)
#define MiB (1ull << 20)
#define MAX_ADDR (64 * MiB)
#define WINDOW (16 * MiB) /* the region: [16M, 17M), the churned mapping at its start */
#define CHUNK (64 * KiB)
#define PAGE 4096ull
#define PATTERN_A 0xa1a1a1a1a1a1a1a1ull
#define PATTERN_B 0xb2b2b2b2b2b2b2b2ull
#define ROUNDS 200

/* ---- the world: a manager with the window, and the two files --------------------------------- */

typedef struct world {
  mb_loop *mgr, *part_loop;
  mb_mm *mm;
  mb_object *a, *b;
  mb_region_id win;
} world;

static void world_init(world *w) {
  assert_int_equal(mb_access_reinstall(), 0);
  w->mgr = tu_start("mgr");
  w->part_loop = tu_start("part");
  mb_mm_config cfg = {.max_addr = MAX_ADDR, .loop = w->mgr, .part_loop = w->part_loop};
  assert_int_equal(mb_mm_create(&cfg, &w->mm), 0);
  w->a = tu_memfd_byte("a", CHUNK, 0xa1);
  w->b = tu_memfd_byte("b", CHUNK, 0xb2);
  mb_region_params rp = {"win", WINDOW, MiB, 1, true, 0};
  assert_int_equal(mb_region_add_sync(w->mm, &rp, &w->win), 0);
  mb_mapping_params mp = {w->win, 0, CHUNK, w->a, 0, true};
  assert_int_equal(mb_mapping_add_sync(w->mm, &mp), 0);
  assert_int_equal(mb_region_map_sync(w->mm, w->win, true), 0);
}

static void world_fini(world *w) {
  mb_mm_destroy(w->mm);
  mb_object_unref(w->a);
  mb_object_unref(w->b);
  tu_stop(w->part_loop);
  tu_stop(w->mgr);
}

/* ---- readers ------------------------------------------------------------------------------------
 *
 * `published` is round * 2 while the mapping shows round's file (odd rounds: b), round * 2 - 1
 * while the replace to it runs. A scan that found the same even value before and after it ran
 * wholly inside one settled state: it must see only that state's pattern. */
static atomic_uint_fast64_t published;
static atomic_bool stop_readers;

typedef struct scan_stats {
  uint64_t a, b, torn, other, errors;
  uint64_t ram; /* the exit question's RAM answers (classify) */
  uint64_t last_other;
  int last_error;
} scan_stats;

typedef struct reader reader;
struct reader {
  const char *name;
  bool (*scan)(reader *r, scan_stats *s); /* one pass over the chunk; false: cannot go on */
  void *ctx;
  bool no_values;       /* it asks questions about the pages instead of reading them */
  pthread_t thread;
  scan_stats total;     /* the reader's own until it is joined */
  uint64_t stale;       /* values not all of the state's pattern in scans of a settled state */
  atomic_ulong settled; /* scans of a settled state */
  atomic_bool done;
};

/* Every byte of v is a's or b's. */
static bool a_or_b_bytes(uint64_t v) {
  for (int i = 0; i < 8; i++, v >>= 8)
    if ((uint8_t)v != (uint8_t)PATTERN_A && (uint8_t)v != (uint8_t)PATTERN_B)
      return false;
  return true;
}

static void count_value(scan_stats *s, uint64_t v) {
  if (v == PATTERN_A)
    s->a++;
  else if (v == PATTERN_B)
    s->b++;
  else if (a_or_b_bytes(v))
    s->torn++;
  else
    s->other++, s->last_other = v;
}

static void count_error(scan_stats *s, int rc) {
  s->errors++;
  s->last_error = rc;
}

static void add_stats(scan_stats *to, const scan_stats *s) {
  to->a += s->a, to->b += s->b, to->torn += s->torn, to->other += s->other;
  to->errors += s->errors, to->ram += s->ram;
  if (s->other)
    to->last_other = s->last_other;
  if (s->errors)
    to->last_error = s->last_error;
}

static void *reader_main(void *arg) {
  reader *r = arg;
  while (!atomic_load(&stop_readers)) {
    uint64_t before = atomic_load(&published);
    scan_stats s = {0};
    bool ok = r->scan(r, &s);
    uint64_t after = atomic_load(&published);
    add_stats(&r->total, &s);
    if (!ok)
      break;
    if (before == after && before % 2 == 0) {
      r->stale += ((before / 2) % 2 ? s.a : s.b) + s.torn;
      atomic_fetch_add(&r->settled, 1);
    }
  }
  atomic_store(&r->done, true);
  return NULL;
}

static void readers_start(reader *rs, size_t n) {
  atomic_store(&published, 0);
  atomic_store(&stop_readers, false);
  for (size_t i = 0; i < n; i++) {
    atomic_init(&rs[i].settled, 0);
    atomic_init(&rs[i].done, false);
    assert_int_equal(pthread_create(&rs[i].thread, NULL, reader_main, &rs[i]), 0);
  }
}

/* Each reader has scanned the state just published at least once (or has stopped). */
static void readers_wait_settled(reader *rs, size_t n) {
  unsigned long seen[8];
  assert_true(n <= 8);
  for (size_t i = 0; i < n; i++)
    seen[i] = atomic_load(&rs[i].settled);
  for (size_t i = 0; i < n; i++)
    while (atomic_load(&rs[i].settled) == seen[i] && !atomic_load(&rs[i].done))
      sched_yield();
}

static void readers_stop(reader *rs, size_t n) {
  atomic_store(&stop_readers, true);
  for (size_t i = 0; i < n; i++)
    pthread_join(rs[i].thread, NULL);
}

static void reader_print(reader *r) {
  const scan_stats *t = &r->total;
  if (r->no_values) {
    printf("%-8s %8llu questions: %llu RAM, %llu not (last %d), %lu settled scans\n", r->name,
           (unsigned long long)(t->ram + t->errors), (unsigned long long)t->ram,
           (unsigned long long)t->errors, t->errors ? t->last_error : 0,
           atomic_load(&r->settled));
    return;
  }
  printf("%-8s %8llu reads: %llu of a, %llu of b, %llu torn, %llu other (last 0x%016llx), "
         "%llu failed (last %s), %llu stale, %lu settled scans\n", r->name,
         (unsigned long long)(t->a + t->b + t->torn + t->other + t->errors),
         (unsigned long long)t->a, (unsigned long long)t->b, (unsigned long long)t->torn,
         (unsigned long long)t->other, (unsigned long long)t->last_other,
         (unsigned long long)t->errors, t->errors ? membacking_strerror(t->last_error) : "-",
         (unsigned long long)r->stale, atomic_load(&r->settled));
}

static void readers_check(reader *rs, size_t n) {
  for (size_t i = 0; i < n; i++) {
    reader *r = &rs[i];
    const scan_stats *t = &r->total;
    reader_print(r);
    assert_int_equal(t->errors, 0);
    assert_int_equal(t->other, 0);
    assert_int_equal(r->stale, 0);
    assert_true(r->no_values || (t->a > 0 && t->b > 0));
    assert_true(atomic_load(&r->settled) >= ROUNDS);
  }
}

/* ---- the churn ------------------------------------------------------------------------------- */

static void churn(world *w, reader *rs, size_t n) {
  readers_start(rs, n);
  readers_wait_settled(rs, n);
  for (uint64_t round = 1; round <= ROUNDS; round++) {
    mb_mapping_params mp = {w->win, 0, CHUNK, round % 2 ? w->b : w->a, 0, true};
    atomic_store(&published, round * 2 - 1);
    int rc = mb_mapping_replace_sync(w->mm, &mp);
    if (rc != 0) {
      readers_stop(rs, n); /* before the assertion leaves this frame */
      fail_msg("replace %llu: %s", (unsigned long long)round, membacking_strerror(rc));
    }
    atomic_store(&published, round * 2);
    readers_wait_settled(rs, n);
  }
  readers_stop(rs, n);
  readers_check(rs, n);
}

/* ---- soft: guest accesses through a soft partition ------------------------------------------- */

static bool soft_scan(reader *r, scan_stats *s) {
  for (uint64_t off = 0; off < CHUNK; off += PAGE) {
    uint64_t v = 0;
    int rc = mb_partition_access_sync(r->ctx, WINDOW + off, &v, sizeof v, false);
    if (rc)
      count_error(s, rc);
    else
      count_value(s, v);
  }
  return true;
}

/* A page that stays RAM across an operation is RAM throughout. */
static bool classify_scan(reader *r, scan_stats *s) {
  for (uint64_t off = 0; off < CHUNK; off += PAGE) {
    int kind = mb_partition_classify(r->ctx, WINDOW + off, 8, off % (2 * PAGE) != 0);
    if (kind == MB_GPA_RAM)
      s->ram++;
    else
      count_error(s, kind);
  }
  return true;
}

static void test_soft(void **unused) {
  (void)unused;
  world w;
  world_init(&w);
  mb_loop *l = tu_start("soft");
  mb_partition *p = NULL;
  assert_int_equal(mb_partition_add_sync(w.mm, &mb_partition_soft, l, &p), 0);
  reader rs[] = {{.name = "soft", .scan = soft_scan, .ctx = p},
                 {.name = "classify", .scan = classify_scan, .ctx = p, .no_values = true}};
  churn(&w, rs, 2);
  assert_int_equal(mb_partition_remove_sync(p), 0);
  world_fini(&w);
  tu_stop(l);
}

/* ---- mapper: mb_mapper_read through three mappers -------------------------------------------- */

static bool mapper_scan(reader *r, scan_stats *s) {
  for (uint64_t off = 0; off < CHUNK; off += PAGE) {
    uint64_t v = 0;
    int rc = mb_mapper_read(r->ctx, WINDOW + off, &v, sizeof v);
    if (rc)
      count_error(s, rc);
    else
      count_value(s, v);
  }
  return true;
}

static void test_mapper(void **unused) {
  (void)unused;
  world w;
  world_init(&w);
  mb_loop *le = tu_start("eager"), *ll = tu_start("lazy");
  mb_mapper *eager = NULL, *lazy = NULL;
  assert_int_equal(mb_mapper_add_sync(w.mm, le, true, &eager), 0);
  assert_int_equal(mb_mapper_add_sync(w.mm, ll, false, &lazy), 0);
  reader rs[] = {{.name = "primary", .scan = mapper_scan, .ctx = mb_mm_primary_mapper(w.mm)},
                 {.name = "eager", .scan = mapper_scan, .ctx = eager},
                 {.name = "lazy", .scan = mapper_scan, .ctx = lazy}};
  churn(&w, rs, 3);
  assert_int_equal(mb_mapper_remove_sync(eager), 0);
  assert_int_equal(mb_mapper_remove_sync(lazy), 0);
  world_fini(&w);
  tu_stop(le);
  tu_stop(ll);
}

/* ---- kvm: a vCPU of the test's own VM -------------------------------------------------------- */

#if defined(__x86_64__) && defined(__linux__)

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "kvm_vcpu.h"

#ifndef KVM_EXIT_MEMORY_FAULT
#define KVM_EXIT_MEMORY_FAULT 39
#endif

/* The guest program: scans [gpa, gpa + size) by stride, counts the 8-byte values equal to a,
 * to b and to neither, rings the doorbell (OUT 0xe0) and starts over. It reads its mailbox
 * (kvm_vcpu.h's data page, 0x3000 after the code) at each start.
 *   start: lea rbx, [rip + mailbox]
 *          mov rdi, [rbx]; mov rsi, [rbx + 8]; mov r12, [rbx + 16]   ; gpa, size, stride
 *          mov rdx, [rbx + 24]; mov rcx, [rbx + 32]                  ; a, b
 *          xor r8d, r8d; xor r9d, r9d; xor r10d, r10d; xor r11d, r11d ; offset, counts
 *   loop:  mov rax, [rdi + r8]
 *          cmp rax, rdx; je isa
 *          cmp rax, rcx; je isb
 *          inc r11; mov [rbx + 64], rax; jmp next                    ; neither: keep it
 *   isa:   inc r9; jmp next
 *   isb:   inc r10
 *   next:  add r8, r12; cmp r8, rsi; jb loop
 *          mov [rbx + 40], r9; mov [rbx + 48], r10; mov [rbx + 56], r11
 *          out 0xe0, al
 *          jmp start */
static const uint8_t scan_code[] = {
    0x48, 0x8d, 0x1d, 0xf9, 0x2f, 0x00, 0x00, /* 00 lea rbx, [rip + 0x2ff9] (= 0x3000) */
    0x48, 0x8b, 0x3b,                         /* 07 mov rdi, [rbx] */
    0x48, 0x8b, 0x73, 0x08,                   /* 0a mov rsi, [rbx + 8] */
    0x4c, 0x8b, 0x63, 0x10,                   /* 0e mov r12, [rbx + 16] */
    0x48, 0x8b, 0x53, 0x18,                   /* 12 mov rdx, [rbx + 24] */
    0x48, 0x8b, 0x4b, 0x20,                   /* 16 mov rcx, [rbx + 32] */
    0x45, 0x31, 0xc0,                         /* 1a xor r8d, r8d */
    0x45, 0x31, 0xc9,                         /* 1d xor r9d, r9d */
    0x45, 0x31, 0xd2,                         /* 20 xor r10d, r10d */
    0x45, 0x31, 0xdb,                         /* 23 xor r11d, r11d */
    0x4a, 0x8b, 0x04, 0x07,                   /* 26 loop: mov rax, [rdi + r8] */
    0x48, 0x39, 0xd0,                         /* 2a cmp rax, rdx */
    0x74, 0x0e,                               /* 2d je 0x3d (isa) */
    0x48, 0x39, 0xc8,                         /* 2f cmp rax, rcx */
    0x74, 0x0e,                               /* 32 je 0x42 (isb) */
    0x49, 0xff, 0xc3,                         /* 34 inc r11 */
    0x48, 0x89, 0x43, 0x40,                   /* 37 mov [rbx + 64], rax */
    0xeb, 0x08,                               /* 3b jmp 0x45 (next) */
    0x49, 0xff, 0xc1,                         /* 3d isa: inc r9 */
    0xeb, 0x03,                               /* 40 jmp 0x45 (next) */
    0x49, 0xff, 0xc2,                         /* 42 isb: inc r10 */
    0x4d, 0x01, 0xe0,                         /* 45 next: add r8, r12 */
    0x49, 0x39, 0xf0,                         /* 48 cmp r8, rsi */
    0x72, 0xd9,                               /* 4b jb 0x26 (loop) */
    0x4c, 0x89, 0x4b, 0x28,                   /* 4d mov [rbx + 40], r9 */
    0x4c, 0x89, 0x53, 0x30,                   /* 51 mov [rbx + 48], r10 */
    0x4c, 0x89, 0x5b, 0x38,                   /* 55 mov [rbx + 56], r11 */
    0xe6, 0xe0,                               /* 59 out 0xe0, al */
    0xeb, 0xa3,                               /* 5b jmp 0x00 */
};
enum { DOORBELL_PORT = 0xe0, SLOT_PRIVATE = 0, SLOT_FIRST = 8 };

typedef struct scan_mailbox {
  uint64_t gpa, size, stride, a, b; /* the test's */
  uint64_t n_a, n_b, n_other, last_other; /* the guest's, at each doorbell */
} scan_mailbox;
_Static_assert(offsetof(scan_mailbox, n_a) == 40 && offsetof(scan_mailbox, last_other) == 64,
               "the program reads and writes the mailbox at these offsets");

typedef struct vm {
  int kvm_fd, vm_fd;
  mb_kvm_lm lm;
  mb_kvm_vcpu vcpu;
  mb_partition *part; /* membacking's slots of this VM: the exit question */
} vm;

static scan_mailbox *vm_mailbox(vm *v) {
  return (scan_mailbox *)(void *)(v->lm.host + MB_KVM_LM_DATA);
}

/* The VM, its private slot with the program, and the vCPU in long mode at the program's start.
 * false: no usable /dev/kvm here (*why says which step). */
static bool vm_open(vm *v, const char **why) {
  *v = (vm){.kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC), .vm_fd = -1, .vcpu.fd = -1};
  *why = "open /dev/kvm";
  if (v->kvm_fd < 0)
    return false;
  *why = "KVM API version and capabilities";
  if (!mb__kvm_usable(v->kvm_fd))
    return false;
  v->vm_fd = ioctl(v->kvm_fd, KVM_CREATE_VM, 0);
  *why = "KVM_CREATE_VM";
  if (v->vm_fd < 0)
    return false;
  struct kvm_cpuid2 *cpuid = NULL;
  *why = "the vCPU in long mode";
  bool ok = mb__kvm_cpuid_get(v->kvm_fd, &cpuid) == 0 &&
            mb__kvm_lm_plan(&v->lm, cpuid, MAX_ADDR, MB_KVM_LM_PAGE) == 0 &&
            mb__kvm_lm_alloc(&v->lm, scan_code, sizeof scan_code) == 0 &&
            mb__kvm_lm_slot(&v->lm, v->vm_fd, SLOT_PRIVATE) == 0 &&
            mb__kvm_vcpu_create(&v->vcpu, v->kvm_fd, v->vm_fd, 0, cpuid, &v->lm) == 0;
  free(cpuid);
  struct kvm_regs regs = {.rip = v->lm.base + MB_KVM_LM_CODE,
                          .rsp = mb__kvm_lm_stack_top(&v->lm), .rflags = 0x2};
  return ok && ioctl(v->vcpu.fd, KVM_SET_REGS, &regs) == 0;
}

static void vm_close(vm *v) {
  mb__kvm_vcpu_destroy(&v->vcpu);
  if (v->vm_fd >= 0)
    close(v->vm_fd);
  mb__kvm_lm_free(&v->lm);
  if (v->kvm_fd >= 0)
    close(v->kvm_fd);
}

/* Says everything about a KVM_RUN outcome that is not the doorbell. */
static void vm_report(vm *v, int rc, int err) {
  const struct kvm_run *run = v->vcpu.run;
  mb_kvm_exit ex = {0};
  int q = mb_partition_classify_exit(v->part, rc, err, run, &ex);
  printf("vCPU: KVM_RUN %d (%s), exit reason %u; the exit question: %s, gpa 0x%llx\n", rc,
         rc < 0 ? strerror(err) : "ok", run->exit_reason,
         q ? membacking_strerror(q) : ex.kind == MB_GPA_RAM ? "RAM (raced)"
                                    : ex.kind == MB_GPA_MMIO ? "MMIO" : "FAULT",
         (unsigned long long)ex.gpa);
}

/* One run of the program over the chunk: KVM_RUN until its doorbell. */
static bool kvm_scan(reader *r, scan_stats *s) {
  vm *v = r->ctx;
  const struct kvm_run *run = v->vcpu.run;
  for (;;) {
    int rc = ioctl(v->vcpu.fd, KVM_RUN, 0), err = rc < 0 ? errno : 0;
    if ((rc < 0 && (err == EINTR || err == EAGAIN)) ||
        (rc == 0 && run->exit_reason == KVM_EXIT_INTR))
      continue;
    if (rc == 0 && run->exit_reason == KVM_EXIT_IO && run->io.port == DOORBELL_PORT)
      break;
    vm_report(v, rc, err);
    count_error(s, rc < 0 ? -err : MB_E_MMIO);
    return false;
  }
  const scan_mailbox *m = vm_mailbox(v);
  s->a = m->n_a, s->b = m->n_b, s->other = m->n_other, s->last_other = m->last_other;
  return true;
}

static vm the_vm; /* opened by main: without it the test is skipped */

static void test_kvm(void **unused) {
  (void)unused;
  vm *v = &the_vm;
  world w;
  world_init(&w);
  mb_kvm_attach_config kc = {.vm_fd = v->vm_fd, .slot_first = SLOT_FIRST};
  mb_partition_params pp = {&mb_partition_kvm_attach, &kc, NULL, 0};
  assert_int_equal(mb_partition_attach_sync(w.mm, &pp, &v->part), 0);
  *vm_mailbox(v) = (scan_mailbox){WINDOW, CHUNK, PAGE, PATTERN_A, PATTERN_B, 0, 0, 0, 0};
  reader r = {.name = "vCPU", .scan = kvm_scan, .ctx = v};
  churn(&w, &r, 1);
  assert_int_equal(mb_partition_remove_sync(v->part), 0);
  world_fini(&w);
}

static int run_kvm(void) {
  const char *why = "";
  if (!vm_open(&the_vm, &why)) {
    printf("SKIP: no usable /dev/kvm here (%s): the KVM replace test was not run\n", why);
    vm_close(&the_vm);
    return 77;
  }
  const struct CMUnitTest t[] = {cmocka_unit_test(test_kvm)};
  int rc = cmocka_run_group_tests_name("replace-kvm", t, NULL, NULL);
  vm_close(&the_vm);
  return rc;
}

#endif

/* ---- main ------------------------------------------------------------------------------------ */

int main(int argc, char **argv) {
  const char *what = argc == 2 ? argv[1] : "";
  if (strcmp(what, "soft") == 0) {
    const struct CMUnitTest t[] = {cmocka_unit_test(test_soft)};
    return cmocka_run_group_tests_name("replace-soft", t, NULL, NULL);
  }
  if (strcmp(what, "mapper") == 0) {
    const struct CMUnitTest t[] = {cmocka_unit_test(test_mapper)};
    return cmocka_run_group_tests_name("replace-mapper", t, NULL, NULL);
  }
  if (strcmp(what, "kvm") == 0) {
#if defined(__x86_64__) && defined(__linux__)
    return run_kvm();
#else
    printf("SKIP: no KVM on this platform\n");
    return 77;
#endif
  }
  fprintf(stderr, "usage: %s soft|mapper|kvm\n", argv[0]);
  return 2;
}
