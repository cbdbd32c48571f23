/* test_vtl_model.c: virtual trust levels (membacking.h, mb_vtl.h; spec "Virtual trust levels")
 * through the public API against a page-granular model, on random sequences (fixed seeds;
 * MB_SEED=N overrides them, MB_STEPS=N the length). A small guest (64 pages) gets random
 * region adds at random VTLs, priorities and ranges, maps (rw/ro), unmaps, removes, mapping
 * adds, removes and replaces of three memfd objects whose pages hold distinct bytes,
 * protections of VTL 0 and 1 (none, ro, rw, over mapped and unmapped pages alike), writes
 * through every consumer, random transactions (some commits made to fail at a host call:
 * mem/fault_inject.h) and consumers removed and added again. The model computes, per page,
 * each view (the mapped regions with vtl <= n; highest priority, then earliest added), the
 * effective access (the least of region, mapping and protection) and VTL 2's alias (VTL 0's
 * view at alias + g, unprotected). After each step every consumer must agree with it (an
 * eager mapper per VTL, a lazy VTL-0 mapper, the primary mapper, a soft and a fake-KVM
 * partition per VTL): accesses (the bytes, or the error of the first failing byte), ranges,
 * the partitions' mb_partition_classify answers and the fake VMs' memory slots; and the
 * manager: mb_protections and each region's mb_region_state. Accesses are sampled every step
 * and swept over every page every SWEEP steps.
 *
 * Built with the library's sources compiled again with MB_FAULT_INJECTION (tests/api/meson.build)
 * so that a commit can be made to fail in every build. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fault_inject.h"
#include "mb_access.h"
#include "membacking.h"
#include "test_util.h"
#include "tu_fake_vm.h"

#define PG 4096ull
enum { PAGES = 64, ALIASP = 128, CPAGES = ALIASP + PAGES, OBJS = 3, OBJ_PAGES = 64, REGS = 12 };
enum { PRIOS = 4, MAXSPAN = 16, SWEEP = 40, HISTORY = 16 };
#define MAX_ADDR (PAGES * PG)
#define ALIAS (ALIASP * PG)

#if defined(__SANITIZE_ADDRESS__)
#define SLOW_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SLOW_BUILD 1
#endif
#endif
#ifdef SLOW_BUILD
enum { STEPS = 250 };
#else
enum { STEPS = 1000 };
#endif

/* ---- the model ------------------------------------------------------------------------------- */

typedef struct mpage {
  int8_t obj; /* -1: no mapping (a hole) */
  uint8_t opg;
  bool rw;
} mpage;

typedef struct mreg {
  bool live, mapped, rw;
  uint8_t vtl, prio;
  mb_region_id id;
  uint32_t first, pages;
  uint64_t seq; /* add order: the earlier wins a tie */
  mpage map[PAGES]; /* region-relative pages */
} mreg;

typedef struct mstate {
  mreg reg[REGS];
  uint8_t prot[2][PAGES]; /* VTL 0's and VTL 1's protections (MB_PROT_*) */
  uint64_t seq;
} mstate;

/* What a consumer shows at one of its pages: the region (NULL: nothing visible), its mapping
 * there, and the protection that applies. */
typedef struct cpage {
  const mreg *r;
  mpage m;
  uint8_t prot;
} cpage;

typedef struct run_cfg {
  const char *name;
  uint8_t vtls;
  bool alias;
  int overlap;
  uint64_t seed;
} run_cfg;

/* ---- the world ------------------------------------------------------------------------------- */

/* Access answers, counted to show what a run covered. */
enum { O_OK, O_UNMAPPED, O_READONLY, O_PROTECTED, O_MMIO, O_FAULT, O_INVALID, OUTCOMES };
static const char *const outcome_names[OUTCOMES] = {"ok", "unmapped", "readonly", "protected",
                                                    "mmio", "fault", "invalid"};

static int outcome(int rc) {
  switch (rc) {
  case 0: return O_OK;
  case MB_E_UNMAPPED: return O_UNMAPPED;
  case MB_E_READONLY: return O_READONLY;
  case MB_E_PROTECTED: return O_PROTECTED;
  case MB_E_MMIO: return O_MMIO;
  case MB_E_FAULT: return O_FAULT;
  default: return O_INVALID;
  }
}

/* Consumers: an eager mapper per VTL, a lazy one at VTL 0, the primary mapper (VTL 0's view
 * without protections), and per VTL a soft partition and a kvm_attach one on a fake VM
 * (tests/common/tu_fake_vm.h: KVM's slot rules; its slots must be the partition's map). */
enum { C_M0, C_M1, C_M2, C_LAZY, C_PRIMARY, C_P0, C_P1, C_P2, C_K0, C_K1, C_K2, CONS };
enum { SLOT_FIRST = 1, SLOT_COUNT = TU_FAKE_SLOTS - 1 };

typedef struct consumer {
  const char *name;
  bool live, part, eager, primary, protect, fake;
  uint8_t vtl;
  mb_mapper *m;
  mb_partition *p;
  tu_fake_vm *vm; /* a kvm_attach partition's VM */
} consumer;

typedef struct world {
  const run_cfg *cfg;
  mb_loop *mgr, *ml, *pl;
  mb_mm *mm;
  consumer c[CONS];
  mb_object *obj[OBJS];
  uint8_t objb[OBJS][OBJ_PAGES]; /* every byte of an object's page (pages stay uniform) */
  mstate st;    /* the manager's state */
  mstate saved; /* in a transaction: the state at its begin, which the consumers show */
  bool in_txn;
  mb_region_id dead; /* an id removed earlier (0: none yet) */
  uint64_t rng;
  int step;
  char hist[HISTORY][160]; /* the last operations, for a failure's report */
  int hist_step[HISTORY], notes;
  unsigned seen[OUTCOMES], commits, rollbacks, nospace; /* what a run covered */
  tu_fake_vm vm[3];
} world;

static world W;

static uint64_t rnd(void) { return tu_xorshift(&W.rng); }
static uint64_t below(uint64_t n) { return rnd() % n; }

static void note(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int i = W.notes++ % HISTORY;
  vsnprintf(W.hist[i], sizeof W.hist[0], fmt, ap);
  va_end(ap);
  W.hist_step[i] = W.step;
}

/* A status as the scenario format names it. */
static const char *tok(int rc) {
  const char *t = mb_error_token(rc);
  return rc == 0 ? "ok" : t ? t : "other";
}

static void report(const char *what) {
  print_error("run %s seed %#llx (MB_SEED) failed at step %d: %s\nlast operations:\n",
              W.cfg->name, (unsigned long long)W.cfg->seed, W.step, what);
  for (int n = W.notes - HISTORY; n < W.notes; n++)
    if (n >= 0)
      print_error("  step %d: %s\n", W.hist_step[n % HISTORY], W.hist[n % HISTORY]);
}

#define CHECK_EQ(got, want, ...)                                                                 \
  do {                                                                                           \
    long long got_ = (long long)(got), want_ = (long long)(want);                                \
    if (got_ != want_) {                                                                         \
      char what_[256];                                                                           \
      snprintf(what_, sizeof what_, __VA_ARGS__);                                                \
      report(what_);                                                                             \
      fail_msg("%s: got %lld, want %lld", what_, got_, want_);                                   \
    }                                                                                            \
  } while (0)

static bool has_vtl(unsigned n) { return n <= MB_VTL_MAX && ((W.cfg->vtls >> n) & 1); }
static bool protectable(unsigned n) { return n < 2 && (W.cfg->vtls >> (n + 1)) != 0; }
static const mstate *shown(void) { return W.in_txn ? &W.saved : &W.st; }

static const mreg *winner(const mstate *s, unsigned view, uint64_t g) {
  const mreg *best = NULL;
  for (int i = 0; i < REGS; i++) {
    const mreg *r = &s->reg[i];
    if (!r->live || !r->mapped || r->vtl > view || g < r->first || g >= r->first + r->pages)
      continue;
    if (!best || r->prio > best->prio || (r->prio == best->prio && r->seq < best->seq)) best = r;
  }
  return best;
}

/* Pages of a consumer's space: [0, max) and, at VTL 2 with an alias, up to alias + max. */
static uint64_t cpages(const consumer *c) { return c->vtl == 2 && W.cfg->alias ? CPAGES : PAGES; }

static cpage consumer_page(const mstate *s, const consumer *c, uint64_t x) {
  cpage out = {NULL, {-1, 0, false}, MB_PROT_RW};
  unsigned view = c->vtl;
  uint64_t g = x;
  if (x >= PAGES) {
    if (!(c->vtl == 2 && W.cfg->alias) || x < ALIASP) return out;
    view = 0, g = x - ALIASP;
  } else if (c->protect && protectable(c->vtl)) {
    out.prot = s->prot[c->vtl][g];
  }
  out.r = winner(s, view, g);
  if (out.r) out.m = out.r->map[g - out.r->first];
  return out;
}

/* Through a mapper: unmapped, then readonly, then protected. */
static int mapper_verdict(cpage p, bool write) {
  if (!p.r || p.m.obj < 0) return MB_E_UNMAPPED;
  if (write && (!p.r->rw || !p.m.rw)) return MB_E_READONLY;
  if (p.prot == MB_PROT_NONE || (write && p.prot == MB_PROT_RO)) return MB_E_PROTECTED;
  return 0;
}

/* Through a partition: mmio, then protected, then fault. */
static int part_verdict(cpage p, bool write) {
  if (!p.r || (write && !p.r->rw)) return MB_E_MMIO;
  if (p.prot == MB_PROT_NONE || (write && p.prot == MB_PROT_RO)) return MB_E_PROTECTED;
  if (p.m.obj < 0 || (write && !p.m.rw)) return MB_E_FAULT;
  return 0;
}

/* The expected answer of an access of [gpa, gpa + len) (len > 0), and its first failing page. */
static int expect_access(const consumer *c, uint64_t gpa, uint64_t len, bool write,
                         uint64_t *fail) {
  *fail = UINT64_MAX;
  if (gpa + len > cpages(c) * PG) return MB_E_INVALID;
  for (uint64_t x = gpa / PG; x <= (gpa + len - 1) / PG; x++) {
    cpage p = consumer_page(shown(), c, x);
    int v = c->part ? part_verdict(p, write) : mapper_verdict(p, write);
    if (v) {
      *fail = x;
      return v;
    }
  }
  return 0;
}

/* A page's range access as the consumer's ranges show it: -1 absent, 0 ro, 1 rw. */
static int range_access(const consumer *c, uint64_t x) {
  cpage p = consumer_page(shown(), c, x);
  if (!p.r || p.prot == MB_PROT_NONE) return -1;
  if (c->part) return p.r->rw && p.prot == MB_PROT_RW;
  if (p.m.obj < 0) return -1;
  return p.r->rw && p.m.rw && p.prot == MB_PROT_RW;
}

static uint8_t *page_byte(const consumer *c, uint64_t x) {
  cpage p = consumer_page(shown(), c, x);
  return &W.objb[p.m.obj][p.m.opg];
}

/* ---- checks against the model ---------------------------------------------------------------- */

static int consumer_access(consumer *c, uint64_t gpa, void *buf, size_t len, bool write) {
  if (c->part) return mb_partition_access_sync(c->p, gpa, buf, len, write);
  return write ? mb_mapper_write(c->m, gpa, buf, len) : mb_mapper_read(c->m, gpa, buf, len);
}

static void check_read(consumer *c, uint64_t gpa, uint64_t len) {
  static uint8_t buf[4 * PG];
  uint64_t fail;
  int want = expect_access(c, gpa, len, false, &fail);
  int rc = consumer_access(c, gpa, buf, len, false);
  W.seen[outcome(rc)]++;
  CHECK_EQ(rc, want, "read %s %#llx+%llu (first failing page %lld)", c->name,
           (unsigned long long)gpa, (unsigned long long)len, (long long)fail);
  for (uint64_t i = 0; rc == 0 && i < len; i++)
    CHECK_EQ(buf[i], *page_byte(c, (gpa + i) / PG), "read %s byte at %#llx", c->name,
             (unsigned long long)(gpa + i));
}

/* A write of whole pages with one new byte: the pages before the first failing one change. */
static void do_write(consumer *c, uint64_t x, uint64_t n) {
  static uint8_t buf[4 * PG];
  uint8_t v = (uint8_t)rnd();
  memset(buf, v, n * PG);
  uint64_t fail;
  int want = expect_access(c, x * PG, n * PG, true, &fail);
  note("write %s page %llu x%llu byte %#x (want %s)", c->name, (unsigned long long)x,
       (unsigned long long)n, v, tok(want));
  int rc = consumer_access(c, x * PG, buf, n * PG, true);
  W.seen[outcome(rc)]++;
  CHECK_EQ(rc, want, "write %s pages %llu+%llu", c->name, (unsigned long long)x,
           (unsigned long long)n);
  if (want == MB_E_INVALID) return;
  for (uint64_t p = x; p < x + n && p < fail; p++)
    *page_byte(c, p) = v;
}

static void check_classify(consumer *c, uint64_t gpa, uint64_t len, bool write) {
  uint64_t fail;
  int v = expect_access(c, gpa, len, write, &fail);
  int want = v == 0                ? MB_GPA_RAM
             : v == MB_E_MMIO      ? MB_GPA_MMIO
             : v == MB_E_PROTECTED ? MB_GPA_PROTECTED
             : v == MB_E_FAULT     ? MB_GPA_FAULT
                                   : MB_E_INVALID;
  CHECK_EQ(mb_partition_classify(c->p, gpa, len, write), want, "classify %s %#llx+%llu %s",
           c->name, (unsigned long long)gpa, (unsigned long long)len, write ? "write" : "read");
}

/* The consumer's ranges, page by page (-1 absent, 0 ro, 1 rw). */
static void actual_ranges(consumer *c, int8_t *acc) {
  mb_range_list *l = NULL;
  int rc = c->part ? mb_partition_ranges_sync(c->p, &l) : mb_mapper_ranges_sync(c->m, &l);
  CHECK_EQ(rc, 0, "ranges of %s", c->name);
  memset(acc, -1, CPAGES);
  uint64_t end = 0;
  for (size_t i = 0; i < l->count; i++) {
    const mb_part_range *r = &l->ranges[i];
    CHECK_EQ(r->gpa % PG == 0 && r->size % PG == 0 && r->size > 0 && r->gpa >= end &&
                 r->gpa + r->size <= cpages(c) * PG,
             1, "%s's range %zu [%#llx, +%#llx) is aligned, ascending and inside", c->name, i,
             (unsigned long long)r->gpa, (unsigned long long)r->size);
    for (uint64_t x = r->gpa / PG; x < (r->gpa + r->size) / PG; x++)
      acc[x] = r->writable;
    end = r->gpa + r->size;
  }
  free(l);
}

/* A kvm_attach partition's VM holds exactly its map: slots over the present pages, read-only
 * where the map is, each page at the host VA of what it shows (VTL 0's view: the primary
 * mapper's), which reads the model's byte, or faults at a hole. */
static void check_slots(consumer *c) {
  struct kvm_userspace_memory_region sl[TU_FAKE_SLOTS];
  if (c->vm == NULL) /* not a kvm_attach partition (and GCC's -Warray-bounds sees none) */
    return;
  tu_fake_slots(c->vm, sl);
  int8_t acc[CPAGES];
  memset(acc, -1, sizeof acc);
  const uint8_t *base0 = mb_mapper_base(W.c[C_PRIMARY].m);
  for (int i = SLOT_FIRST; i < TU_FAKE_SLOTS; i++) {
    const struct kvm_userspace_memory_region *k = &sl[i];
    if (!k->memory_size) continue;
    CHECK_EQ(k->guest_phys_addr % PG == 0 && k->memory_size % PG == 0 &&
                 k->guest_phys_addr + k->memory_size <= cpages(c) * PG,
             1, "%s's slot %d [%#llx, +%#llx) is aligned and inside", c->name, i,
             (unsigned long long)k->guest_phys_addr, (unsigned long long)k->memory_size);
    uint64_t first = k->guest_phys_addr / PG, end = first + k->memory_size / PG;
    for (uint64_t x = first; x < end; x++) {
      acc[x] = !(k->flags & KVM_MEM_READONLY);
      const uint8_t *host = (const uint8_t *)(uintptr_t)k->userspace_addr + (x - first) * PG;
      if (c->vtl == 0 || x >= PAGES)
        CHECK_EQ(host == base0 + (x >= PAGES ? x - ALIASP : x) * PG, 1,
                 "%s's page %llu is at the primary mapper's VA", c->name, (unsigned long long)x);
      cpage p = consumer_page(shown(), c, x);
      uint8_t b = 0;
      int rc = mb_access_read(&b, host, 1, NULL);
      CHECK_EQ(rc, p.m.obj < 0 ? -EFAULT : 0, "%s's page %llu read by its slot's VA", c->name,
               (unsigned long long)x);
      if (rc == 0)
        CHECK_EQ(b, W.objb[p.m.obj][p.m.opg], "%s's page %llu by its slot's VA", c->name,
                 (unsigned long long)x);
    }
  }
  for (uint64_t x = 0; x < cpages(c); x++)
    CHECK_EQ(acc[x], range_access(c, x), "%s's slots at page %llu (-1 none, 0 ro, 1 rw)", c->name,
             (unsigned long long)x);
}

/* Eager mappers and partitions show exactly the model's effective map; a lazy mapper a part
 * of it, with the same access. */
static void check_ranges(consumer *c) {
  int8_t acc[CPAGES];
  actual_ranges(c, acc);
  for (uint64_t x = 0; x < cpages(c); x++) {
    int want = range_access(c, x);
    if (!c->eager && acc[x] == -1) continue;
    CHECK_EQ(acc[x], want, "%s's ranges at page %llu (-1 absent, 0 ro, 1 rw)", c->name,
             (unsigned long long)x);
  }
}

static void check_protections(void) {
  for (unsigned v = 0; v < 2; v++) {
    if (!has_vtl(v) || !protectable(v)) continue;
    mb_prot_list *l = NULL;
    CHECK_EQ(mb_protections_sync(W.mm, (uint8_t)v, &l), 0, "protections of VTL %u", v);
    uint8_t got[PAGES];
    memset(got, MB_PROT_RW, sizeof got);
    uint64_t end = 0;
    for (size_t i = 0; i < l->count; i++) {
      const mb_prot_item *it = &l->items[i];
      CHECK_EQ(it->gpa % PG == 0 && it->size % PG == 0 && it->size && it->gpa >= end &&
                   it->gpa + it->size <= MAX_ADDR && it->access != MB_PROT_RW,
               1, "VTL %u protection item %zu is aligned, ascending, inside, not rw", v, i);
      CHECK_EQ(i == 0 || it->gpa > end || it->access != l->items[i - 1].access, 1,
               "VTL %u protection item %zu is merged with the one before", v, i);
      for (uint64_t g = it->gpa / PG; g < (it->gpa + it->size) / PG; g++)
        got[g] = it->access;
      end = it->gpa + it->size;
    }
    free(l);
    for (uint64_t g = 0; g < PAGES; g++)
      CHECK_EQ(got[g], W.st.prot[v][g], "VTL %u protection of page %llu", v,
               (unsigned long long)g);
  }
}

/* A region's state in its own VTL's view, in the manager's state. */
static int model_state(const mreg *r) {
  if (!r->mapped) return MB_REGION_UNMAPPED;
  uint32_t won = 0;
  for (uint32_t i = 0; i < r->pages; i++)
    won += winner(&W.st, r->vtl, r->first + i) == r;
  return won == r->pages ? MB_REGION_ACTIVE : won == 0 ? MB_REGION_HIDDEN : MB_REGION_PARTIAL;
}

static void check_regions(void) {
  for (int i = 0; i < REGS; i++) {
    const mreg *r = &W.st.reg[i];
    if (!r->live) continue;
    int state = -1;
    CHECK_EQ(mb_region_state_sync(W.mm, r->id, &state), 0, "state of region %u", r->id);
    CHECK_EQ(state, model_state(r), "state of region %u (vtl %u prio %u pages %u+%u)", r->id,
             r->vtl, r->prio, r->first, r->pages);
  }
}

/* A random access of a consumer: anywhere in its space (past it now and then), any length. */
static void sample_reads(consumer *c, int n) {
  uint64_t space = cpages(c) * PG;
  for (int i = 0; i < n; i++) {
    uint64_t len = 1 + below(3 * PG);
    uint64_t gpa = below(space + (below(8) == 0 ? 2 * PG : 0));
    if (gpa + len > space && below(2)) gpa = space - len;
    check_read(c, gpa, len);
    if (c->part) check_classify(c, gpa, len, below(2));
  }
}

static void sweep(consumer *c) {
  for (uint64_t x = 0; x < cpages(c); x++) {
    check_read(c, x * PG, PG);
    if (c->part) {
      check_classify(c, x * PG, PG, false);
      check_classify(c, x * PG, PG, true);
    }
  }
}

static void op_write(void);

/* What each consumer shows (sampled, or swept whole), after one more write somewhere. */
static void check_all(bool full) {
  op_write();
  for (int i = 0; i < CONS; i++) {
    consumer *c = &W.c[i];
    if (!c->live) continue;
    check_ranges(c);
    if (c->fake) check_slots(c);
    if (full)
      sweep(c);
    else
      sample_reads(c, 3);
  }
  check_protections();
  check_regions();
}

/* ---- operations ------------------------------------------------------------------------------ */

/* Whether a request took effect as the model says (else it must have changed nothing). A
 * change may need more memory slots than a fake VM has: -ENOSPC, outside a transaction. */
static bool took(int rc, int want, const char *what) {
  if (rc == -ENOSPC && want == 0 && !W.in_txn) {
    W.nospace++;
    return false;
  }
  CHECK_EQ(rc, want, "%s", what);
  return want == 0;
}

static mreg *any_region(void) {
  int live[REGS], n = 0;
  for (int i = 0; i < REGS; i++)
    if (W.st.reg[i].live) live[n++] = i;
  return n ? &W.st.reg[live[below((uint64_t)n)]] : NULL;
}

static bool nests(const mreg *o, uint32_t first, uint32_t pages, uint8_t prio) {
  uint32_t s = first, e = first + pages, os = o->first, oe = o->first + o->pages;
  if (e <= os || oe <= s) return true;
  return o->prio < prio   ? (s <= os && oe <= e)
         : o->prio > prio ? (os <= s && e <= oe)
                          : (os == s && oe == e);
}

/* A random range; under nested, often one that nests with an existing region. */
static void region_shape(uint32_t *first, uint32_t *pages, uint8_t *prio) {
  const mreg *o = W.cfg->overlap == MB_OVERLAP_NESTED && below(3) ? any_region() : NULL;
  *first = (uint32_t)below(PAGES);
  *pages = 1 + (uint32_t)below(PAGES - *first < MAXSPAN ? PAGES - *first : MAXSPAN);
  *prio = (uint8_t)below(PRIOS);
  if (!o) return;
  switch (below(3)) {
  case 0: /* inside it, lower */
    *first = o->first + (uint32_t)below(o->pages);
    *pages = 1 + (uint32_t)below(o->first + o->pages - *first);
    *prio = o->prio ? (uint8_t)below(o->prio) : 0;
    break;
  case 1: /* the same range and priority */
    *first = o->first, *pages = o->pages, *prio = o->prio;
    break;
  default: /* around it, higher */
    *first = (uint32_t)below(o->first + 1);
    *pages = o->first + o->pages - *first + (uint32_t)below(PAGES - o->first - o->pages + 1);
    *prio = (uint8_t)(o->prio + below(2));
    break;
  }
}

static void op_region_add(void) {
  int slot = -1;
  for (int i = 0; i < REGS && slot < 0; i++)
    if (!W.st.reg[i].live) slot = i;
  if (slot < 0) return;
  uint32_t first, pages;
  uint8_t prio, vtl = (uint8_t)below(3);
  region_shape(&first, &pages, &prio);
  if (!has_vtl(vtl) && below(4)) vtl = 0; /* an unconfigured VTL now and then */
  if (below(30) == 0) vtl = 3;
  int want = has_vtl(vtl) ? 0 : MB_E_INVALID;
  for (int i = 0; i < REGS && !want; i++)
    if (W.st.reg[i].live && W.cfg->overlap == MB_OVERLAP_NESTED &&
        !nests(&W.st.reg[i], first, pages, prio))
      want = MB_E_OVERLAP;
  note("region add pages %u+%u prio %u vtl %u (want %s)", first, pages, prio, vtl, tok(want));
  mb_region_params p = {"r", first * PG, pages * PG, prio, below(4) == 0, vtl};
  mb_region_id id = 0;
  CHECK_EQ(mb_region_add_sync(W.mm, &p, &id), want, "region add");
  if (want) return;
  mreg *r = &W.st.reg[slot];
  memset(r, 0, sizeof *r);
  *r = (mreg){.live = true, .vtl = vtl, .prio = prio, .id = id, .first = first, .pages = pages,
              .seq = ++W.st.seq};
  for (int i = 0; i < PAGES; i++)
    r->map[i].obj = -1;
}

static void op_region_map(mreg *r) {
  bool rw = below(3) != 0;
  note("region map %u %s", r->id, rw ? "rw" : "ro");
  if (took(mb_region_map_sync(W.mm, r->id, rw), 0, "region map")) r->mapped = true, r->rw = rw;
}

static void op_region_unmap(mreg *r) {
  note("region unmap %u", r->id);
  if (took(mb_region_unmap_sync(W.mm, r->id), 0, "region unmap")) r->mapped = false;
}

static void op_region_remove(mreg *r) {
  note("region remove %u", r->id);
  if (!took(mb_region_remove_sync(W.mm, r->id), 0, "region remove")) return;
  r->live = false;
  W.dead = r->id;
}

/* A mapping add (or replace) of random pages of a random object: an add mostly fills a hole
 * (up to the next mapping); now and then it overlaps one, or runs past the region's end. */
static void op_mapping(mreg *r, bool replace) {
  uint32_t off = (uint32_t)below(r->pages), size = 1 + (uint32_t)below(r->pages - off);
  if (!replace && below(4)) {
    uint32_t end = off;
    while (end < r->pages && r->map[end].obj < 0)
      end++;
    if (end > off) size = end - off;
  }
  bool bad = below(25) == 0;
  if (bad) size = r->pages - off + 1;
  int o = (int)below(OBJS);
  uint32_t oo = (uint32_t)below(OBJ_PAGES - size + 1);
  bool rw = below(4) != 0;
  int want = bad ? MB_E_INVALID : 0;
  for (uint32_t i = 0; i < size && !want && !replace; i++)
    if (r->map[off + i].obj >= 0) want = MB_E_OVERLAP;
  note("mapping %s region %u pages %u+%u obj %d page %u %s (want %s)", replace ? "replace" : "add",
       r->id, off, size, o, oo, rw ? "rw" : "ro", tok(want));
  mb_mapping_params p = {r->id, off * PG, size * PG, W.obj[o], oo * PG, rw};
  int rc = replace ? mb_mapping_replace_sync(W.mm, &p) : mb_mapping_add_sync(W.mm, &p);
  if (!took(rc, want, replace ? "mapping replace" : "mapping add")) return;
  for (uint32_t i = 0; i < size; i++)
    r->map[off + i] = (mpage){(int8_t)o, (uint8_t)(oo + i), rw};
}

static void op_mapping_remove(mreg *r) {
  uint32_t off = (uint32_t)below(r->pages), size = 1 + (uint32_t)below(r->pages - off);
  note("mapping remove region %u pages %u+%u", r->id, off, size);
  if (!took(mb_mapping_remove_sync(W.mm, r->id, off * PG, size * PG), 0, "mapping remove"))
    return;
  for (uint32_t i = 0; i < size; i++)
    r->map[off + i].obj = -1;
}

static void op_protect(void) {
  uint8_t vtl = (uint8_t)below(3);
  uint64_t first = below(PAGES);
  uint64_t pages = 1 + below(PAGES - first < MAXSPAN ? PAGES - first : MAXSPAN);
  if (below(20) == 0) pages = PAGES - first + 1; /* past max_addr */
  int access = (int)below(3);
  int want = has_vtl(vtl) && protectable(vtl) && first + pages <= PAGES ? 0 : MB_E_INVALID;
  static const char *const names[] = {"none", "ro", "rw"};
  note("protect %u pages %llu+%llu %s (want %s)", vtl, (unsigned long long)first,
       (unsigned long long)pages, names[access], tok(want));
  if (!took(mb_protect_sync(W.mm, vtl, first * PG, pages * PG, access), want, "protect"))
    return;
  for (uint64_t g = first; g < first + pages; g++)
    W.st.prot[vtl][g] = (uint8_t)access;
}

static consumer *any_consumer(bool with_primary) {
  for (;;) {
    consumer *c = &W.c[below(CONS)];
    if (c->live && (with_primary || !c->primary)) return c;
  }
}

static void op_write(void) {
  consumer *c = any_consumer(true);
  uint64_t n = 1 + below(3), space = cpages(c);
  uint64_t x = below(space - n + 1 + (below(10) == 0));
  do_write(c, x, n);
}

static void consumer_add(consumer *c) {
  int rc;
  if (c->part) {
    mb_kvm_attach_config kc; /* copied by the attach */
    mb_partition_params pp = {.ops = &mb_partition_soft};
    if (c->fake) pp = tu_fake_params(c->vm, &kc, SLOT_FIRST, SLOT_COUNT);
    pp.loop = W.pl, pp.vtl = c->vtl;
    rc = mb_partition_attach_sync(W.mm, &pp, &c->p);
  } else {
    rc = mb_mapper_add_vtl_sync(W.mm, W.ml, c->eager, c->vtl, &c->m);
    if (!rc)
      CHECK_EQ(mb_mapper_size(c->m), cpages(c) * PG, "mb_mapper_size of %s", c->name);
  }
  CHECK_EQ(rc, 0, "add %s", c->name);
  c->live = true;
}

static int consumer_remove(consumer *c) {
  return c->part ? mb_partition_remove_sync(c->p) : mb_mapper_remove_sync(c->m);
}

/* A consumer removed and added again: the new one shows everything at once (a protecting
 * mapper gets its VTL's protections before any mapping). In a transaction both are refused. */
static void op_consumer_again(void) {
  consumer *c = any_consumer(false);
  note("%s again%s", c->name, W.in_txn ? " (in a transaction: refused)" : "");
  if (W.in_txn) {
    CHECK_EQ(consumer_remove(c), MB_E_INVALID, "remove %s in a transaction", c->name);
    mb_mapper *m = NULL;
    CHECK_EQ(mb_mapper_add_vtl_sync(W.mm, W.ml, true, c->vtl, &m), MB_E_INVALID,
             "mapper add in a transaction");
    return;
  }
  CHECK_EQ(consumer_remove(c), 0, "remove %s", c->name);
  c->live = false;
  consumer_add(c);
}

static void op_txn(void) {
  if (!W.in_txn) {
    note("txn begin");
    CHECK_EQ(mb_txn_begin_sync(W.mm), 0, "txn begin");
    W.saved = W.st;
    W.in_txn = true;
    return;
  }
  /* One commit in two is made to fail at a random host call, when it makes that many. */
  static const mb_fi_kind kinds[] = {MB_FI_MMAP, MB_FI_MPROTECT, MB_FI_MUNMAP,
                                     MB_FI_KVM_SET_REGION};
  mb_fi_kind kind = kinds[below(4)];
  bool arm = below(2) == 0;
  uint64_t n = 1 + below(3);
  note("txn commit%s%s #%llu", arm ? ", failing " : "", arm ? mb_fi_kind_name(kind) : "",
       (unsigned long long)n);
  mb_fi_reset();
  if (arm) assert_int_equal(mb_fi_arm(kind, n, ENOMEM), 0);
  int rc = mb_txn_commit_sync(W.mm);
  uint64_t injected = mb_fi_injected(kind);
  mb_fi_reset();
  W.in_txn = false;
  W.commits++;
  W.rollbacks += rc != 0;
  W.nospace += rc == -ENOSPC;
  if (!injected && rc != -ENOSPC) CHECK_EQ(rc, 0, "txn commit (nothing injected)");
  if (rc == 0) return;
  CHECK_EQ(rc == -ENOMEM || rc == -ENOSPC, 1, "txn commit with %s #%llu failing (%d)",
           mb_fi_kind_name(kind), (unsigned long long)n, rc);
  W.st = W.saved; /* rolled back: the regions added inside it are gone */
}

/* Requests the model refuses: a removed region, a VTL that cannot be protected. */
static void op_refused(void) {
  if (W.dead) {
    bool live = false;
    for (int i = 0; i < REGS; i++)
      live |= W.st.reg[i].live && W.st.reg[i].id == W.dead;
    if (!live) {
      note("region map of removed %u", W.dead);
      CHECK_EQ(mb_region_map_sync(W.mm, W.dead, true), MB_E_NOTFOUND, "map removed region");
    }
  }
  mb_prot_list *l = NULL;
  CHECK_EQ(mb_protections_sync(W.mm, 2, &l), MB_E_INVALID, "protections of VTL 2");
  if (W.in_txn) return;
  uint8_t vtl = has_vtl(1) ? 3 : 1; /* a VTL the manager does not have */
  mb_mapper *m = NULL;
  CHECK_EQ(mb_mapper_add_vtl_sync(W.mm, W.ml, below(2), vtl, &m), MB_E_INVALID,
           "mapper add at VTL %u", vtl);
  mb_partition *p = NULL;
  mb_partition_params pp = {.ops = &mb_partition_soft, .loop = W.pl, .vtl = vtl};
  CHECK_EQ(mb_partition_attach_sync(W.mm, &pp, &p), MB_E_INVALID, "partition add at VTL %u", vtl);
}

static void step(void) {
  mreg *r = any_region();
  int k = (int)below(100);
  if (k < 10 || !r)
    op_region_add();
  else if (k < 24)
    op_region_map(r);
  else if (k < 28)
    op_region_unmap(r);
  else if (k < 31)
    op_region_remove(r);
  else if (k < 47)
    op_mapping(r, false);
  else if (k < 54)
    op_mapping(r, true);
  else if (k < 58)
    op_mapping_remove(r);
  else if (k < 71)
    op_protect();
  else if (k < 87)
    op_write();
  else if (k < 94)
    op_txn();
  else if (k < 97)
    op_consumer_again();
  else
    op_refused();
}

/* ---- runs ------------------------------------------------------------------------------------ */

static void world_init(const run_cfg *cfg) {
  memset(&W, 0, sizeof W);
  W.cfg = cfg;
  W.rng = cfg->seed;
  memset(W.st.prot, MB_PROT_RW, sizeof W.st.prot);
  assert_int_equal(mb_access_reinstall(), 0);
  W.mgr = tu_start("mgr");
  W.ml = tu_start("mappers");
  W.pl = tu_start("parts");
  mb_mm_config mc = {.max_addr = MAX_ADDR, .overlap = cfg->overlap, .loop = W.mgr,
                     .vtls = cfg->vtls, .vtl0_alias = cfg->alias ? ALIAS : 0};
  assert_int_equal(mb_mm_create(&mc, &W.mm), 0);
  for (int o = 0; o < OBJS; o++) {
    uint8_t base = (uint8_t)(0x10 + 0x50 * o);
    W.obj[o] = tu_memfd_pages("obj", OBJ_PAGES * PG, base);
    for (int k = 0; k < OBJ_PAGES; k++)
      W.objb[o][k] = (uint8_t)(base + k);
  }
  static const char *const names[CONS] = {"m0", "m1", "m2", "lazy0", "primary", "p0",
                                          "p1", "p2", "k0", "k1", "k2"};
  static const uint8_t vtl[CONS] = {0, 1, 2, 0, 0, 0, 1, 2, 0, 1, 2};
  for (int i = 0; i < CONS; i++) {
    consumer *c = &W.c[i];
    *c = (consumer){.name = names[i], .part = i >= C_P0, .eager = i != C_LAZY,
                    .primary = i == C_PRIMARY, .protect = i != C_PRIMARY, .vtl = vtl[i],
                    .fake = i >= C_K0, .vm = i >= C_K0 ? &W.vm[vtl[i]] : NULL};
    if (c->fake) tu_fake_init(c->vm);
    if (!has_vtl(c->vtl)) continue;
    if (c->primary) {
      c->m = mb_mm_primary_mapper(W.mm);
      c->live = true;
    } else {
      consumer_add(c);
    }
  }
}

static void world_fini(void) {
  mb_mm_destroy(W.mm);
  for (int v = 0; v < 3; v++) {
    CHECK_EQ(W.vm[v].violations, 0, "deletes of missing slots in VTL %d's fake VM", v);
    tu_fake_fini(&W.vm[v]);
  }
  for (int o = 0; o < OBJS; o++)
    mb_object_unref(W.obj[o]);
  tu_stop(W.mgr);
  tu_stop(W.ml);
  tu_stop(W.pl);
}

static void run(const run_cfg *cfg_in) {
  run_cfg cfg = *cfg_in;
  const char *env = getenv("MB_SEED");
  if (env) cfg.seed = strtoull(env, NULL, 0);
  if (!cfg.seed) cfg.seed = 1;
  int steps = getenv("MB_STEPS") ? atoi(getenv("MB_STEPS")) : STEPS;
  print_message("run %s: seed %#llx, %d steps\n", cfg.name, (unsigned long long)cfg.seed, steps);
  world_init(&cfg);
  check_all(true);
  for (W.step = 0; W.step < steps; W.step++) {
    step();
    check_all(W.step % SWEEP == SWEEP - 1);
  }
  if (W.in_txn) {
    W.step++;
    op_txn();
  }
  check_all(true);
  world_fini();
  char line[256];
  size_t at = 0;
  for (int o = 0; o < OUTCOMES; o++)
    at += (size_t)snprintf(line + at, sizeof line - at, " %s %u", outcome_names[o], W.seen[o]);
  print_message("accesses:%s; commits %u, rolled back %u; out of slots %u\n", line, W.commits,
                W.rollbacks, W.nospace);
}

/* VTLs 0, 1 and 2 (VTL 0 and VTL 1 protectable), regions overlapping at will. */
static void test_three_vtls_any(void **unused) {
  (void)unused;
  run(&(run_cfg){"vtls=0,1,2 overlap=any", 0x7, false, MB_OVERLAP_ANY, 0x5eed0001ull});
}

/* VTLs 0 and 2 with VTL 0's alias for VTL 2. */
static void test_alias_any(void **unused) {
  (void)unused;
  run(&(run_cfg){"vtls=0,2 alias overlap=any", 0x5, true, MB_OVERLAP_ANY, 0x5eed0002ull});
}

/* Every VTL and the alias, regions nested. */
static void test_three_vtls_alias_nested(void **unused) {
  (void)unused;
  run(&(run_cfg){"vtls=0,1,2 alias overlap=nested", 0x7, true, MB_OVERLAP_NESTED,
                 0x5eed0003ull});
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_three_vtls_any),
      cmocka_unit_test(test_alias_any),
      cmocka_unit_test(test_three_vtls_alias_nested),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
