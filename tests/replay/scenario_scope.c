/* scenario_scope.c: a set of live names (one per name space of the format).
 *
 * Open addressing with linear probing. Removal shifts the following entries of the probe run
 * back instead of leaving a tombstone, so the invariant is simply: every entry lies between its
 * home slot and the first empty slot after it. */
#include <stdlib.h>
#include <string.h>

#include "scenario_internal.h"

static uint32_t hash_name(const char *s) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
  return h;
}

scenario__live *scenario__scope_find(const scenario__scope *s, const char *name) {
  if (s->cap == 0) return NULL;
  uint32_t h = hash_name(name);
  for (size_t i = h & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
    scenario__live *e = &s->slots[i];
    if (!e->used) return NULL;
    if (e->hash == h && strcmp(e->name, name) == 0) return e;
  }
}

static scenario__live *place(scenario__scope *s, uint32_t h) {
  size_t i = h & (s->cap - 1);
  while (s->slots[i].used) i = (i + 1) & (s->cap - 1);
  return &s->slots[i];
}

static int grow(scenario__scope *s) {
  size_t cap = s->cap ? s->cap * 2 : 16;
  scenario__live *old = s->slots;
  size_t oldcap = s->cap;
  s->slots = calloc(cap, sizeof *s->slots);
  if (!s->slots) {
    s->slots = old;
    return -1;
  }
  s->cap = cap;
  for (size_t i = 0; i < oldcap; i++)
    if (old[i].used) *place(s, old[i].hash) = old[i];
  free(old);
  return 0;
}

scenario__live *scenario__scope_add(scenario__scope *s, const char *name) {
  if ((s->n + 1) * 2 > s->cap && grow(s) != 0) return NULL;
  uint32_t h = hash_name(name);
  scenario__live *e = place(s, h);
  memset(e, 0, sizeof *e);
  snprintf(e->name, sizeof e->name, "%s", name);
  e->hash = h;
  e->used = true;
  s->n++;
  return e;
}

void scenario__scope_remove(scenario__scope *s, scenario__live *e) {
  size_t mask = s->cap - 1;
  size_t hole = (size_t)(e - s->slots);
  e->used = false;
  s->n--;
  for (size_t j = (hole + 1) & mask; s->slots[j].used; j = (j + 1) & mask) {
    size_t home = s->slots[j].hash & mask;
    /* The entry at j may stay if its home lies cyclically in (hole, j]. */
    bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
    if (stays) continue;
    s->slots[hole] = s->slots[j];
    s->slots[j].used = false;
    hole = j;
  }
}

int scenario__scope_copy(scenario__scope *dst, const scenario__scope *src) {
  *dst = (scenario__scope){NULL, 0, 0};
  if (src->cap == 0) return 0;
  if (!(dst->slots = malloc(src->cap * sizeof *dst->slots))) return -1;
  memcpy(dst->slots, src->slots, src->cap * sizeof *dst->slots);
  dst->cap = src->cap;
  dst->n = src->n;
  return 0;
}

void scenario__scope_free(scenario__scope *s) {
  free(s->slots);
  memset(s, 0, sizeof *s);
}
