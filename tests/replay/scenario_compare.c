/* scenario_compare.c: deep equality of commands and programs, field by field, for the tests
 * and the fuzzer that check parse -> print -> parse. Each payload has its own comparison; the
 * dispatch comes from SCENARIO_COMMANDS, so a new command kind cannot be left out. */
#include <string.h>

#include "scenario.h"

static bool same_name(const char *a, const char *b) { return strcmp(a, b) == 0; }

static bool same_bytes(const scenario_bytes *a, const scenario_bytes *b) {
  return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

static bool same_ranges(const scenario_ranges *x, const scenario_ranges *y) {
  if (x->n != y->n) return false;
  for (size_t i = 0; i < x->n; i++) {
    const scenario_range *r = &x->items[i], *s = &y->items[i];
    if (r->gpa != s->gpa || r->size != s->size || r->ro != s->ro || r->none != s->none)
      return false;
  }
  return true;
}

static bool same_expect(const scenario_expect *a, const scenario_expect *b) {
  if (a->kind != b->kind) return false;
  if (a->kind == SCENARIO_EXPECT_ERROR) return a->error == b->error;
  if (a->kind == SCENARIO_EXPECT_PAGES) return same_ranges(&a->pages, &b->pages);
  return a->kind != SCENARIO_EXPECT_BYTES || same_bytes(&a->bytes, &b->bytes);
}

/* ---- one function per payload, named after its union member ------------------------------- */

static bool config_equal(const scenario_config *a, const scenario_config *b) {
  if (a->key != b->key) return false;
  switch (a->key) {
  case SCENARIO_CONFIG_MAX_ADDR: return a->max_addr == b->max_addr;
  case SCENARIO_CONFIG_OVERLAP: return a->overlap == b->overlap;
  /* Only the set: how a line overridden by a later one was ordered is not part of the program
   * (the check looks at the last vtls line alone, whose printed form is ascending). */
  case SCENARIO_CONFIG_VTLS: return a->vtls == b->vtls;
  case SCENARIO_CONFIG_VTL0_ALIAS: return a->vtl0_alias == b->vtl0_alias;
  default: return false;
  }
}

static bool require_equal(const scenario_require *a, const scenario_require *b) {
  return a->what == b->what;
}

static bool object_equal(const scenario_object *a, const scenario_object *b) {
  return a->type == b->type && same_name(a->name, b->name) && a->size == b->size &&
         a->fill == b->fill && a->fill_value == b->fill_value;
}

static bool region_equal(const scenario_region *a, const scenario_region *b) {
  return same_name(a->name, b->name) && a->gpa == b->gpa && a->size == b->size &&
         a->prio == b->prio && a->type == b->type && a->ro == b->ro && a->vtl == b->vtl;
}

static bool mapping_equal(const scenario_mapping *a, const scenario_mapping *b) {
  return same_name(a->region, b->region) && a->offset == b->offset && a->size == b->size &&
         same_name(a->object, b->object) && a->obj_offset == b->obj_offset && a->ro == b->ro;
}

static bool mapper_equal(const scenario_mapper *a, const scenario_mapper *b) {
  return same_name(a->name, b->name) && a->mode == b->mode && a->vtl == b->vtl;
}

static bool partition_equal(const scenario_partition *a, const scenario_partition *b) {
  return same_name(a->name, b->name) && a->backend == b->backend && a->vtl == b->vtl;
}

static bool io_equal(const scenario_io *a, const scenario_io *b) {
  return same_name(a->target, b->target) && a->gpa == b->gpa && a->len == b->len &&
         same_bytes(&a->data, &b->data);
}

static bool lock_equal(const scenario_lock *a, const scenario_lock *b) {
  return same_name(a->mapper, b->mapper) && a->gpa == b->gpa && a->size == b->size &&
         a->ro == b->ro && same_name(a->name, b->name);
}

static bool async_equal(const scenario_async *a, const scenario_async *b) {
  return same_name(a->label, b->label) && scenario_cmd_equal(a->inner, b->inner);
}

static bool label_equal(const scenario_label *a, const scenario_label *b) {
  return same_name(a->label, b->label) && a->async_index == b->async_index;
}

static bool expect_region_equal(const scenario_expect_region *a, const scenario_expect_region *b) {
  return same_name(a->name, b->name) && a->state == b->state;
}

static bool expect_ranges_equal(const scenario_expect_ranges *a, const scenario_expect_ranges *b) {
  return same_name(a->name, b->name) && same_ranges(&a->ranges, &b->ranges);
}

static bool expect_protection_equal(const scenario_expect_protection *a,
                                    const scenario_expect_protection *b) {
  return a->vtl == b->vtl && same_ranges(&a->ranges, &b->ranges);
}

static bool protect_equal(const scenario_protect *a, const scenario_protect *b) {
  return a->vtl == b->vtl && a->gpa == b->gpa && a->size == b->size && a->access == b->access;
}

static bool txn_equal(const scenario_txn *a, const scenario_txn *b) {
  (void)a;
  (void)b;
  return true; /* no arguments */
}

static bool dirty_equal(const scenario_dirty *a, const scenario_dirty *b) {
  return a->gpa == b->gpa && a->size == b->size;
}

/* ---- commands and programs ------------------------------------------------------------------ */

bool scenario_cmd_equal(const scenario_cmd *a, const scenario_cmd *b) {
  if (a->kind != b->kind || !same_expect(&a->expect, &b->expect)) return false;
  switch (a->kind) {
#define SCENARIO__EQUAL(kind, text, member)                                                        \
  case SCENARIO_##kind: return member##_equal(&a->member, &b->member);
    SCENARIO_COMMANDS(SCENARIO__EQUAL)
#undef SCENARIO__EQUAL
  default: return false;
  }
}

bool scenario_equal(const scenario *a, const scenario *b, size_t *differs) {
  size_t n = a->ncmds < b->ncmds ? a->ncmds : b->ncmds;
  for (size_t i = 0; i < n; i++) {
    if (!scenario_cmd_equal(&a->cmds[i], &b->cmds[i])) {
      if (differs) *differs = i;
      return false;
    }
  }
  if (differs) *differs = n;
  return a->ncmds == b->ncmds && a->max_addr == b->max_addr && a->overlap == b->overlap &&
         a->vtls == b->vtls && a->vtl0_alias == b->vtl0_alias && a->require_kvm == b->require_kvm;
}
