/* scenario_check.c: the rules of a scenario that span lines.
 *
 * Each name space (regions, objects, mappers, partitions, locks, async labels) has a set of live
 * names. A name is live from the command that may have created it until the command known to
 * have deleted it (see "Liveness of names" in scenario.h). From that follow the checks: an add
 * may not reuse a live name, unlock needs a live lock, await and expect pending need a live
 * label, and a mapper with a live lock on it may not be removed. */
#include <string.h>

#include "scenario_internal.h"

#define fail scenario__fail

/* What a command does to the live names. */
typedef struct effect {
  enum { NO_EFFECT, ADDS, REMOVES } kind;
  scenario__ns ns;
  const char *name;
} effect;

static effect effect_of(const scenario_cmd *c) {
  switch (c->kind) {
  case SCENARIO_OBJECT: return (effect){ADDS, SCENARIO__NS_OBJECT, c->object.name};
  case SCENARIO_REGION_ADD: return (effect){ADDS, SCENARIO__NS_REGION, c->region.name};
  case SCENARIO_REGION_REMOVE: return (effect){REMOVES, SCENARIO__NS_REGION, c->region.name};
  case SCENARIO_MAPPER_ADD: return (effect){ADDS, SCENARIO__NS_MAPPER, c->mapper.name};
  case SCENARIO_MAPPER_REMOVE: return (effect){REMOVES, SCENARIO__NS_MAPPER, c->mapper.name};
  case SCENARIO_PARTITION_ADD: return (effect){ADDS, SCENARIO__NS_PARTITION, c->partition.name};
  case SCENARIO_PARTITION_REMOVE:
    return (effect){REMOVES, SCENARIO__NS_PARTITION, c->partition.name};
  case SCENARIO_LOCK: return (effect){ADDS, SCENARIO__NS_LOCK, c->lock.name};
  case SCENARIO_UNLOCK: return (effect){REMOVES, SCENARIO__NS_LOCK, c->lock.name};
  default: return (effect){NO_EFFECT, SCENARIO__NS_COUNT, NULL};
  }
}

static const char *const ns_names[SCENARIO__NS_COUNT] = {
    [SCENARIO__NS_REGION] = "region", [SCENARIO__NS_OBJECT] = "object",
    [SCENARIO__NS_MAPPER] = "mapper", [SCENARIO__NS_PARTITION] = "partition",
    [SCENARIO__NS_LOCK] = "lock",     [SCENARIO__NS_LABEL] = "async label",
};

const scenario__live *scenario__label(const scenario__parser *P, const char *label) {
  return scenario__scope_find(&P->live[SCENARIO__NS_LABEL], label);
}

static scenario__live *add_live(scenario__parser *P, scenario__ns ns, const char *name,
                                const char *ref) {
  scenario__live *l = scenario__scope_add(&P->live[ns], name);
  if (!l) {
    fail(P, "out of memory");
    return NULL;
  }
  l->line = P->line;
  if (ref) snprintf(l->ref, sizeof l->ref, "%s", ref);
  return l;
}

/* An async's label: what its await needs to know of the operation it started. */
static int add_label(scenario__parser *P, const scenario_cmd *async, size_t index) {
  const scenario_cmd *inner = async->async.inner;
  effect e = effect_of(inner);
  scenario__live *l = add_live(P, SCENARIO__NS_LABEL, async->async.label, e.name);
  if (!l) return -1;
  l->index = index;
  l->kind = inner->kind;
  bool read = inner->kind == SCENARIO_READ || inner->kind == SCENARIO_GUEST_READ;
  l->len = read ? inner->io.len : 0;
  return 0;
}

/* Remove a live name; with `line`, only if it became live on that line. */
static void remove_live(scenario__parser *P, scenario__ns ns, const char *name, unsigned line) {
  scenario__live *l = scenario__scope_find(&P->live[ns], name);
  if (l && (line == 0 || l->line == line)) scenario__scope_remove(&P->live[ns], l);
}

/* The rules an operation must meet when it starts, synchronously or under async. */
static int check_start(scenario__parser *P, const scenario_cmd *c) {
  effect e = effect_of(c);
  if (e.kind == ADDS) {
    const scenario__live *l = scenario__scope_find(&P->live[e.ns], e.name);
    if (l)
      return fail(P, "%s: %s name '%s' is still in use (since line %u)", scenario_cmd_name(c->kind),
                  ns_names[e.ns], e.name, l->line);
  }
  if (c->kind == SCENARIO_UNLOCK && !scenario__scope_find(&P->live[SCENARIO__NS_LOCK], e.name))
    return fail(P, "unlock: unknown lock '%s'", e.name);
  if (c->kind == SCENARIO_MAPPER_REMOVE) {
    /* Rare enough (mapper removal, with locks held) that a walk over the locks is fine. */
    const scenario__scope *locks = &P->live[SCENARIO__NS_LOCK];
    for (size_t i = 0; i < locks->cap; i++) {
      const scenario__live *l = &locks->slots[i];
      if (l->used && strcmp(l->ref, e.name) == 0)
        return fail(P,
                    "mapper remove: mapper '%s' still holds lock '%s' (line %u); unlock it first",
                    e.name, l->name, l->line);
    }
  }
  return 0;
}

static bool expects_success(const scenario_cmd *c) {
  return c->expect.kind != SCENARIO_EXPECT_ERROR;
}

/* The await of a live label: the name its operation added stays live only if it succeeded,
 * the name it removed goes only then. */
static int check_await(scenario__parser *P, const scenario_cmd *c) {
  const scenario__live *label = scenario__label(P, c->label.label); /* parse_await checked it */
  scenario_cmd inner = {.kind = label->kind};
  char name[SCENARIO_NAME_SIZE];
  unsigned line = label->line;
  snprintf(name, sizeof name, "%s", label->ref);
  remove_live(P, SCENARIO__NS_LABEL, c->label.label, 0);
  effect e = effect_of(&inner);
  if (e.kind == ADDS && !expects_success(c)) remove_live(P, e.ns, name, line);
  if (e.kind == REMOVES && expects_success(c)) remove_live(P, e.ns, name, 0);
  return 0;
}

int scenario__check(scenario__parser *P, const scenario_cmd *c, size_t index) {
  const scenario_cmd *inner;
  const scenario__live *label;
  effect e;

  switch (c->kind) {
  case SCENARIO_ASYNC:
    /* The inner operation starts now: an add reserves its name at once; a remove takes effect
     * at the await, when it is known to have completed. */
    label = scenario__label(P, c->async.label);
    if (label)
      return fail(P, "async: label '%s' is still in use (since line %u, not awaited yet)",
                  c->async.label, label->line);
    inner = c->async.inner;
    if (check_start(P, inner)) return -1;
    e = effect_of(inner);
    if (e.kind == ADDS &&
        !add_live(P, e.ns, e.name, inner->kind == SCENARIO_LOCK ? inner->lock.mapper : NULL))
      return -1;
    return add_label(P, c, index);

  case SCENARIO_AWAIT: return check_await(P, c);

  default:
    if (check_start(P, c)) return -1;
    e = effect_of(c);
    if (!expects_success(c)) return 0;
    if (e.kind == ADDS)
      return add_live(P, e.ns, e.name, c->kind == SCENARIO_LOCK ? c->lock.mapper : NULL) ? 0
                                                                                           : -1;
    if (e.kind == REMOVES) remove_live(P, e.ns, e.name, 0);
    return 0;
  }
}
