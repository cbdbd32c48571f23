/* scenario_check.c: the rules of a scenario that span lines.
 *
 * Each name space (regions, objects, mappers, partitions, locks, async labels) has a set of live
 * names. A name is live from the command that may have created it until the command known to
 * have deleted it (see "Liveness of names" in scenario.h). From that follows the one check: a
 * definition may not reuse a live name (an error of the script). A name that is not live is
 * the run's business (error:notfound), and so are the rules that depend on the state (a mapper
 * that holds locks, the transaction rules): they are results, not errors of the script.
 *
 * The configuration lines are checked together once the last of them was read. */
#include <inttypes.h>
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
static int add_label(scenario__parser *P, const scenario_cmd *async, size_t index,
                     bool opened_txn) {
  const scenario_cmd *inner = async->async.inner;
  effect e = effect_of(inner);
  scenario__live *l = add_live(P, SCENARIO__NS_LABEL, async->async.label, e.name);
  if (!l) return -1;
  l->index = index;
  l->kind = inner->kind;
  bool read = inner->kind == SCENARIO_READ || inner->kind == SCENARIO_GUEST_READ;
  l->len = read ? inner->io.len : 0;
  l->opened_txn = opened_txn;
  return 0;
}

/* Remove a live name; with `line`, only if it became live on that line. */
static void remove_live(scenario__parser *P, scenario__ns ns, const char *name, unsigned line) {
  scenario__live *l = scenario__scope_find(&P->live[ns], name);
  if (l && (line == 0 || l->line == line)) scenario__scope_remove(&P->live[ns], l);
}

/* The rule an operation must meet when it starts, synchronously or under async: a definition
 * does not reuse a live name. */
static int check_start(scenario__parser *P, const scenario_cmd *c) {
  effect e = effect_of(c);
  const scenario__live *l = e.kind == ADDS ? scenario__scope_find(&P->live[e.ns], e.name) : NULL;
  if (l)
    return fail(P, "%s: %s name '%s' is still in use (since line %u)", scenario_cmd_name(c->kind),
                ns_names[e.ns], e.name, l->line);
  return 0;
}

static bool expects_success(const scenario_cmd *c) {
  return c->expect.kind != SCENARIO_EXPECT_ERROR;
}

/* ---- transactions ----------------------------------------------------------------------------
 * Inside a transaction only region and mapping commands change the manager (consumer commands,
 * locks and async are refused), so the region names are what a failed commit takes back. */

static int txn_begin(scenario__parser *P) {
  if (P->in_txn) return 0; /* refused at run time: the one open stays */
  if (scenario__scope_copy(&P->txn_regions, &P->live[SCENARIO__NS_REGION]))
    return fail(P, "out of memory");
  P->in_txn = true;
  return 0;
}

/* The end of the open transaction; `failed`: its region names go back to those of its begin. */
static void txn_end(scenario__parser *P, bool failed) {
  if (!P->in_txn) return;
  scenario__scope *regions = &P->live[SCENARIO__NS_REGION];
  if (failed) {
    scenario__scope_free(regions);
    *regions = P->txn_regions;
  } else {
    scenario__scope_free(&P->txn_regions);
  }
  P->txn_regions = (scenario__scope){NULL, 0, 0};
  P->in_txn = false;
}

/* A synchronous txn command. Under async a begin outside a transaction opens one as it starts
 * (its await ends it again if it expects an error); a commit under async never commits (async
 * inside a transaction is refused, and outside one there is nothing to commit). */
static int check_txn(scenario__parser *P, const scenario_cmd *c) {
  if (c->kind == SCENARIO_TXN_BEGIN) return expects_success(c) ? txn_begin(P) : 0;
  txn_end(P, !expects_success(c));
  return 0;
}

/* The await of a live label: the name its operation added stays live only if it succeeded,
 * the name it removed goes only then. */
static int check_await(scenario__parser *P, const scenario_cmd *c) {
  const scenario__live *label = scenario__label(P, c->label.label);
  if (!label) return 0; /* error:notfound at run time */
  scenario_cmd inner = {.kind = label->kind};
  char name[SCENARIO_NAME_SIZE];
  unsigned line = label->line;
  bool opened_txn = label->opened_txn;
  snprintf(name, sizeof name, "%s", label->ref);
  remove_live(P, SCENARIO__NS_LABEL, c->label.label, 0);
  if (opened_txn && !expects_success(c)) txn_end(P, true);
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
    bool opens = inner->kind == SCENARIO_TXN_BEGIN && !P->in_txn;
    if (opens && txn_begin(P)) return -1;
    e = effect_of(inner);
    if (e.kind == ADDS && !add_live(P, e.ns, e.name, NULL)) return -1;
    return add_label(P, c, index, opens);

  case SCENARIO_AWAIT: return check_await(P, c);

  case SCENARIO_TXN_BEGIN:
  case SCENARIO_TXN_COMMIT: return check_txn(P, c);

  default:
    if (check_start(P, c)) return -1;
    e = effect_of(c);
    if (!expects_success(c)) return 0;
    if (e.kind == ADDS) return add_live(P, e.ns, e.name, NULL) ? 0 : -1;
    if (e.kind == REMOVES) remove_live(P, e.ns, e.name, 0);
    return 0;
  }
}

/* ---- the configuration -----------------------------------------------------------------------
 * One function per rule, each naming the line of the setting it refuses; rules that relate
 * settings to each other (VTLs, an alias at or above max_addr) join this list. */

static int max_addr_rule(scenario__parser *P) {
  uint64_t max = P->sc->max_addr;
  if (max != 0 && max % SCENARIO_PAGE_SIZE == 0) return 0;
  P->line = P->setting_line[SCENARIO_CONFIG_MAX_ADDR];
  return fail(P, "config: max_addr 0x%" PRIx64 " is %s", max,
              max ? "not a multiple of 4 KiB" : "zero");
}

/* vtls: strictly ascending, VTL 0 included. */
static int vtls_rule(scenario__parser *P) {
  const scenario *sc = P->sc;
  if (!P->setting_line[SCENARIO_CONFIG_VTLS] || (P->vtls_ascending && (sc->vtls & 1))) return 0;
  P->line = P->setting_line[SCENARIO_CONFIG_VTLS];
  return fail(P, "config: vtls %s", P->vtls_ascending ? "must include VTL 0"
                                                      : "must be listed in ascending order, "
                                                        "each once");
}

/* vtl0_alias: only with VTL 2, a multiple of 4 KiB at or above max_addr. */
static int alias_rule(scenario__parser *P) {
  const scenario *sc = P->sc;
  uint64_t alias = sc->vtl0_alias;
  if (!P->setting_line[SCENARIO_CONFIG_VTL0_ALIAS]) return 0;
  P->line = P->setting_line[SCENARIO_CONFIG_VTL0_ALIAS];
  if (!(sc->vtls & (1u << 2)))
    return fail(P, "config: vtl0_alias needs VTL 2 (config vtls=...,2)");
  if (alias % SCENARIO_PAGE_SIZE != 0)
    return fail(P, "config: vtl0_alias 0x%" PRIx64 " is not a multiple of 4 KiB", alias);
  if (alias < sc->max_addr)
    return fail(P, "config: vtl0_alias 0x%" PRIx64 " is below max_addr 0x%" PRIx64, alias,
                sc->max_addr);
  return 0;
}

void scenario__config_defaults(scenario *sc) {
  sc->max_addr = SCENARIO_DEFAULT_MAX_ADDR;
  sc->overlap = SCENARIO_OVERLAP_NESTED;
  sc->vtls = SCENARIO_DEFAULT_VTLS;
  sc->vtl0_alias = 0;
}

bool scenario__vtl_protectable(const scenario *sc, unsigned vtl) {
  return vtl <= SCENARIO_VTL_MAX && (sc->vtls >> vtl & 1) && (sc->vtls >> (vtl + 1)) != 0;
}

int scenario__config_check(scenario__parser *P) {
  static int (*const rules[])(scenario__parser *) = {max_addr_rule, vtls_rule, alias_rule};
  unsigned line = P->line;
  for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++)
    if (rules[i](P)) return -1;
  P->line = line;
  return 0;
}
