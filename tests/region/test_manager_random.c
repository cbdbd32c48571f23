/* test_manager_random.c: the region manager against a brute-force model, on random sequences
 * of every request (fixed seeds), under both overlap policies, with injected failures of
 * random nested calls. After each request the fake mapping manager's visible mappings, every
 * partition's pieces and every region's state must equal what a per-page computation of the
 * winners says; a request that failed must have changed nothing. Requests run inside random
 * transactions too: there the regions' states follow the requests at once, the consumers
 * keep the state from the begin until the commit, and a commit that fails puts everything
 * back as it was at the begin. One variant runs each fake partition mapper on a loop thread
 * of its own. */
#include "rm_fakes.h"
#include "rm_model.h"

#define PG 4096ull
#define NPAGES 64
#define NSLOT 16
#define NOBJ 3
#define OBJ_PAGES 32

typedef struct mpage {
  int obj; /* -1: nothing mapped */
  uint64_t obj_page;
  bool writable;
} mpage;

typedef struct mreg {
  bool live;
  uint32_t id;
  uint64_t start, end; /* pages */
  uint8_t prio;
  uint64_t order;
  bool mapped, writable;
  mpage map[NPAGES]; /* region-relative pages */
} mreg;

typedef struct model {
  fx *f;
  int overlap;
  uint64_t rng, order;
  mreg r[NSLOT];
  uint32_t dead_ids[64];
  int ndead;
  bool part_added[FX_MAXP];
  mb_object *obj[NOBJ];
  bool in_txn; /* the state at its begin: what the consumers show until the commit */
  mreg saved[NSLOT];
  uint32_t saved_dead[64];
  int saved_ndead;
} model;

static uint64_t rnd(model *m) { return tu_xorshift(&m->rng); }

static uint64_t below(model *m, uint64_t n) { return rnd(m) % n; }

static mreg *winner_of(mreg *regs, uint64_t pg) {
  mreg *w = NULL;
  for (int i = 0; i < NSLOT; i++) {
    mreg *r = &regs[i];
    if (!r->live || !r->mapped || pg < r->start || pg >= r->end) continue;
    if (!w || r->prio > w->prio || (r->prio == w->prio && r->order < w->order)) w = r;
  }
  return w;
}

static mreg *winner(model *m, uint64_t pg) { return winner_of(m->r, pg); }

static int expected_state(model *m, mreg *r) {
  if (!r->mapped) return MB_REGION_UNMAPPED;
  uint64_t won = 0;
  for (uint64_t p = r->start; p < r->end; p++) won += winner(m, p) == r;
  return won == 0 ? MB_REGION_HIDDEN : won == r->end - r->start ? MB_REGION_ACTIVE : MB_REGION_PARTIAL;
}

static void check(model *m, const char *what) {
  fx *f = m->f;
  fx_no_violations(f);
  mreg *win[NPAGES]; /* what the consumers show */
  for (uint64_t p = 0; p < NPAGES; p++) win[p] = winner_of(m->in_txn ? m->saved : m->r, p);
  /* visible mappings, page by page, normalized */
  fx_list want = {calloc(NPAGES, sizeof(fx_ent)), 0, NPAGES};
  for (uint64_t p = 0; p < NPAGES; p++) {
    mreg *w = win[p];
    if (!w) continue;
    mpage *mp = &w->map[p - w->start];
    if (mp->obj < 0) continue;
    want.v[want.n++] = (fx_ent){p * PG, PG, m->obj[mp->obj], mp->obj_page * PG, mp->writable && w->writable};
  }
  fx_normalize(&want);
  fx_list got = fx_snapshot(f, &f->mm);
  fx_normalize(&got);
  if (!fx_list_equal(&want, &got)) fail_msg("%s: visible mappings differ (%zu vs %zu entries)", what, got.n, want.n);
  free(got.v);
  /* pieces: maximal runs of one winner, with its access */
  want.n = 0;
  for (uint64_t p = 0; p < NPAGES;) {
    uint64_t q = p + 1;
    while (q < NPAGES && win[q] == win[p]) q++;
    if (win[p]) want.v[want.n++] = (fx_ent){p * PG, (q - p) * PG, NULL, 0, win[p]->writable};
    p = q;
  }
  for (int i = 0; i < f->npm; i++) {
    if (!m->part_added[i]) continue;
    fx_list pieces = fx_snapshot(f, &f->pm[i]);
    if (!fx_list_equal(&want, &pieces)) fail_msg("%s: partition %d pieces differ (%zu vs %zu)", what, i, pieces.n, want.n);
    free(pieces.v);
  }
  free(want.v);
  /* the published map (what an exit handler is told) agrees, page by page */
  for (uint64_t p = 0; p < NPAGES; p++) {
    int rd = mb_gpa_map_classify(f->gpa_map, p * PG, PG, false, NULL);
    int wr = mb_gpa_map_classify(f->gpa_map, p * PG, PG, true, NULL);
    if (rd != (win[p] ? MB_GPA_RAM : MB_GPA_MMIO) ||
        wr != (win[p] && win[p]->writable ? MB_GPA_RAM : MB_GPA_MMIO))
      fail_msg("%s: page %" PRIu64 " classified %d/%d", what, p, rd, wr);
  }
  for (int i = 0; i < NSLOT; i++) {
    mreg *r = &m->r[i];
    if (!r->live) continue;
    int st = fx_region_state(f, r->id);
    if (st != expected_state(m, r)) fail_msg("%s: region %u state %d, expected %d", what, r->id, st, expected_state(m, r));
  }
}

static int admit(model *m, uint64_t s, uint64_t e, uint8_t prio) {
  if (m->overlap == MB_OVERLAP_ANY) return 0;
  for (int i = 0; i < NSLOT; i++) {
    mreg *o = &m->r[i];
    if (!o->live || o->end <= s || e <= o->start) continue;
    if (!rm_model_nests(o->start, o->end, o->prio, s, e, prio)) return MB_E_OVERLAP;
  }
  return 0;
}

/* A random id: a live region's, a removed one's, or one never given. */
static uint32_t pick_id(model *m, mreg **slot) {
  *slot = NULL;
  uint64_t k = below(m, 20);
  if (k == 0 && m->ndead > 0) return m->dead_ids[below(m, (uint64_t)m->ndead)];
  if (k == 1) return 100000;
  mreg *r = &m->r[below(m, NSLOT)];
  if (!r->live) return 0;
  *slot = r;
  return r->id;
}

/* A random page range for a region of `pages` pages: usually inside, sometimes not. */
static void pick_range(model *m, uint64_t pages, uint64_t *off, uint64_t *size) {
  *size = 1 + below(m, pages);
  *off = below(m, pages - *size + 1);
  if (below(m, 16) == 0) *size += 1 + below(m, 4); /* past the end */
}

/* Begin or commit a transaction (a commit may fail: an injected failure). */
static void txn_step(model *m, int i, int *want, int *got, char *what, size_t len) {
  fx *f = m->f;
  bool begin = !m->in_txn || below(m, 8) == 0; /* a begin inside one is refused */
  *want = begin && m->in_txn ? MB_E_INVALID : 0;
  *got = fx_txn(f, begin);
  snprintf(what, len, "step %d: txn %s", i, begin ? "begin" : "commit");
  if (begin && !m->in_txn && *got == 0) {
    memcpy(m->saved, m->r, sizeof m->r);
    memcpy(m->saved_dead, m->dead_ids, sizeof m->dead_ids);
    m->saved_ndead = m->ndead;
    m->in_txn = true;
  } else if (!begin) {
    m->in_txn = false;
    if (*got != 0) { /* rolled back */
      memcpy(m->r, m->saved, sizeof m->r);
      memcpy(m->dead_ids, m->saved_dead, sizeof m->dead_ids);
      m->ndead = m->saved_ndead;
    }
  }
}

static void step(model *m, int i) {
  fx *f = m->f;
  mreg *r;
  uint32_t id;
  int want = 0, got = 0;
  char what[96] = "";
  bool inject = below(m, 3) == 0;
  if (inject) fx_fail_in(f, (long)below(m, below(m, 2) ? 3 : 12), -ENOMEM);
  int failed0 = f->failed;
  switch (below(m, 11)) {
  case 0:
  case 1: { /* region add */
    mreg *slot = NULL;
    for (int s = 0; s < NSLOT && !slot; s++)
      if (!m->r[s].live) slot = &m->r[s];
    if (!slot) {
      snprintf(what, sizeof what, "step %d: no free slot", i);
      break;
    }
    uint64_t size = 1 + below(m, 24), start = below(m, NPAGES - size + 1);
    if (m->overlap == MB_OVERLAP_NESTED && below(m, 2)) {
      size = 1ull << below(m, 6);
      start = below(m, NPAGES / size) * size;
    }
    uint8_t prio = (uint8_t)below(m, 4);
    bool bad = below(m, 12) == 0;
    uint64_t gpa = start * PG + (bad && below(m, 2) ? 512 : 0);
    uint64_t end = bad ? NPAGES + 1 : start + size;
    want = bad ? MB_E_INVALID : admit(m, start, end, prio);
    int64_t v = fx_region_add(f, "r", gpa, (end - start) * PG, prio);
    got = v < 0 ? (int)v : 0;
    snprintf(what, sizeof what, "step %d: region add %" PRIu64 "+%" PRIu64 " prio %u", i, start, end - start, prio);
    if (got == 0) {
      *slot = (mreg){.live = true, .id = (uint32_t)v, .start = start, .end = end, .prio = prio, .order = m->order++};
      for (int p = 0; p < NPAGES; p++) slot->map[p].obj = -1;
    }
    break;
  }
  case 2: { /* region map */
    id = pick_id(m, &r);
    bool w = below(m, 2);
    want = r ? 0 : MB_E_NOTFOUND;
    got = fx_region_map(f, id, w);
    snprintf(what, sizeof what, "step %d: region map %u %s", i, id, w ? "rw" : "ro");
    if (got == 0 && r) r->mapped = true, r->writable = w;
    break;
  }
  case 3: { /* region unmap / remove */
    id = pick_id(m, &r);
    bool remove = below(m, 3) == 0;
    want = r ? 0 : MB_E_NOTFOUND;
    got = remove ? fx_region_remove(f, id) : fx_region_unmap(f, id);
    snprintf(what, sizeof what, "step %d: region %s %u", i, remove ? "remove" : "unmap", id);
    if (got == 0 && r) {
      r->mapped = false;
      if (remove) {
        r->live = false;
        if (m->ndead < 64) m->dead_ids[m->ndead++] = id;
      }
    }
    break;
  }
  case 4:
  case 5: { /* mapping add */
    id = pick_id(m, &r);
    uint64_t pages = r ? r->end - r->start : 4, off, size;
    pick_range(m, pages, &off, &size);
    int o = (int)below(m, NOBJ);
    uint64_t oo = below(m, OBJ_PAGES);
    bool w = below(m, 3) != 0;
    bool replace = below(m, 3) == 0;
    if (!r) want = MB_E_NOTFOUND;
    else if (off + size > pages || oo + size > OBJ_PAGES) want = MB_E_INVALID;
    else {
      want = 0;
      for (uint64_t p = off; p < off + size && !replace; p++)
        if (r->map[p].obj >= 0) want = MB_E_OVERLAP;
    }
    got = replace ? fx_mapping_replace(f, id, off * PG, size * PG, m->obj[o], oo * PG, w)
                  : fx_mapping_add(f, id, off * PG, size * PG, m->obj[o], oo * PG, w);
    snprintf(what, sizeof what, "step %d: mapping %s %u %" PRIu64 "+%" PRIu64, i,
             replace ? "replace" : "add", id, off, size);
    if (got == 0 && r)
      for (uint64_t p = 0; p < size; p++) r->map[off + p] = (mpage){o, oo + p, w};
    break;
  }
  case 6: { /* mapping remove */
    id = pick_id(m, &r);
    uint64_t pages = r ? r->end - r->start : 4, off, size;
    pick_range(m, pages, &off, &size);
    want = !r ? MB_E_NOTFOUND : off + size > pages ? MB_E_INVALID : 0;
    got = fx_mapping_remove(f, id, off * PG, size * PG);
    snprintf(what, sizeof what, "step %d: mapping remove %u %" PRIu64 "+%" PRIu64, i, id, off, size);
    if (got == 0 && r)
      for (uint64_t p = off; p < off + size; p++) r->map[p].obj = -1;
    break;
  }
  case 9:
  case 10:
    txn_step(m, i, &want, &got, what, sizeof what);
    break;
  case 7: { /* partitions */
    int p = (int)below(m, (uint64_t)f->npm);
    if (m->in_txn) { /* no consumer changes inside a transaction */
      want = MB_E_INVALID;
      got = m->part_added[p] ? fx_partition_remove(f, p) : fx_partition_add(f, p);
    } else if (m->part_added[p] && below(m, 2)) {
      want = 0;
      got = fx_partition_remove(f, p);
      if (got == 0) {
        m->part_added[p] = false;
        pthread_mutex_lock(&f->lock); /* as if destroyed: its pieces go with it */
        f->pm[p].state.n = 0;
        pthread_mutex_unlock(&f->lock);
      }
    } else {
      want = m->part_added[p] ? MB_E_INVALID : 0;
      got = fx_partition_add(f, p);
      if (got == 0) m->part_added[p] = true;
      else if (!m->part_added[p]) {
        pthread_mutex_lock(&f->lock); /* a failed add left nothing behind */
        assert_int_equal(f->pm[p].state.n, 0);
        pthread_mutex_unlock(&f->lock);
      }
    }
    snprintf(what, sizeof what, "step %d: partition %d", i, p);
    break;
  }
  default: { /* state of an unknown region */
    id = pick_id(m, &r);
    got = fx_region_state(f, id);
    want = r ? expected_state(m, r) : MB_E_NOTFOUND;
    snprintf(what, sizeof what, "step %d: region state %u", i, id);
    break;
  }
  }
  fx_fail_off(f);
  if (f->failed != failed0) {
    /* an injected failure: the request answers it and the model stays as it was */
    if (got != -ENOMEM) fail_msg("%s: status %d after an injected failure", what, got);
    check(m, what);
    return;
  }
  (void)inject;
  if (got != want) fail_msg("%s: status %d, expected %d", what, got, want);
  check(m, what);
}

static void run(int overlap, uint64_t seed, int steps, int npm, bool threaded) {
  model *m = calloc(1, sizeof *m);
  assert_non_null(m);
  m->overlap = overlap;
  m->rng = seed;
  m->f = fx_new(overlap, NPAGES * PG, npm, threaded);
  const char *names[NOBJ] = {"o0", "o1", "o2"};
  for (int i = 0; i < NOBJ; i++) m->obj[i] = fx_object(m->f, names[i], OBJ_PAGES * PG);
  for (int i = 0; i < steps; i++) step(m, i);
  fx_free(m->f);
  free(m);
}

static void test_random_nested(void **unused) {
  (void)unused;
  for (uint64_t s = 1; s <= 6; s++) run(MB_OVERLAP_NESTED, s * 0x9e3779b97f4a7c15ull, 3000, 2, false);
}

static void test_random_any(void **unused) {
  (void)unused;
  for (uint64_t s = 1; s <= 6; s++) run(MB_OVERLAP_ANY, s * 0x2545f4914f6cdd1dull, 3000, 2, false);
}

static void test_random_threaded(void **unused) {
  (void)unused;
  run(MB_OVERLAP_ANY, 0x1234567887654321ull, 800, 3, true);
  run(MB_OVERLAP_NESTED, 0x0badc0ffee0ddf00ull, 800, 3, true);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_random_nested),
      cmocka_unit_test(test_random_any),
      cmocka_unit_test(test_random_threaded),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
