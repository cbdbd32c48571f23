/* scenario_lex.c: the lexical level of the .mbs format: tokens, NUMBER, NAME and keywords. */
#include <string.h>

#include "scenario_internal.h"

static bool is_blank(char c) { return c == ' ' || c == '\t'; }

bool scenario__peek(const scenario__cursor *c, scenario__tok *t) {
  const char *p = c->p;
  while (p < c->end && is_blank(*p)) p++;
  if (p == c->end) return false;
  const char *q = p;
  while (q < c->end && !is_blank(*q)) q++;
  t->p = p;
  t->n = (size_t)(q - p);
  return true;
}

bool scenario__next(scenario__cursor *c, scenario__tok *t) {
  if (!scenario__peek(c, t)) {
    c->p = c->end;
    return false;
  }
  c->p = t->p + t->n;
  return true;
}

bool scenario__tok_is(scenario__tok t, const char *s) {
  return strlen(s) == t.n && memcmp(t.p, s, t.n) == 0;
}

bool scenario__tok_starts(scenario__tok t, const char *prefix) {
  size_t n = strlen(prefix);
  return t.n >= n && memcmp(t.p, prefix, n) == 0;
}

bool scenario__tok_is_arrow(scenario__tok t) { return scenario__tok_starts(t, "=>"); }

int scenario__hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

scenario__num scenario__number(scenario__tok t, uint64_t *out) {
  const char *p = t.p, *end = t.p + t.n;
  unsigned shift = 0;
  if (p < end) {
    switch (end[-1]) {
    case 'K': shift = 10; break;
    case 'M': shift = 20; break;
    case 'G': shift = 30; break;
    case 'T': shift = 40; break;
    default: break;
    }
  }
  if (shift) end--;

  bool hex = end - p >= 2 && p[0] == '0' && p[1] == 'x';
  if (hex) p += 2;
  if (p == end) return SCENARIO__NUM_MALFORMED;

  /* A malformed token is reported as malformed even when its digits also overflow. */
  uint64_t v = 0;
  bool overflow = false;
  for (; p < end; p++) {
    int d = hex ? scenario__hex_digit(*p) : (*p >= '0' && *p <= '9' ? *p - '0' : -1);
    if (d < 0) return SCENARIO__NUM_MALFORMED;
    uint64_t base = hex ? 16 : 10;
    if (v > (UINT64_MAX - (uint64_t)d) / base) overflow = true;
    v = v * base + (uint64_t)d;
  }
  if (overflow || (shift && v > (UINT64_MAX >> shift))) return SCENARIO__NUM_OVERFLOW;
  *out = v << shift;
  return SCENARIO__NUM_OK;
}

static bool name_start(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static bool name_char(char c) {
  return name_start(c) || (c >= '0' && c <= '9') || c == '.' || c == '-';
}

scenario__name scenario__name_check(scenario__tok t) {
  if (t.n == 0 || !name_start(t.p[0])) return SCENARIO__NAME_MALFORMED;
  for (size_t i = 1; i < t.n; i++)
    if (!name_char(t.p[i])) return SCENARIO__NAME_MALFORMED;
  return t.n > SCENARIO_NAME_MAX ? SCENARIO__NAME_TOO_LONG : SCENARIO__NAME_OK;
}

const char *const scenario__access_words[] = {"rw", "ro", NULL};
const char *const scenario__prot_words[] = {
    [SCENARIO_PROT_NONE] = "none", [SCENARIO_PROT_RO] = "ro", [SCENARIO_PROT_RW] = "rw", NULL};
const char *const scenario__overlap_words[] = {
    [SCENARIO_OVERLAP_NESTED] = "nested", [SCENARIO_OVERLAP_ANY] = "any", NULL};
const char *const scenario__object_words[] = {
    [SCENARIO_OBJECT_MEMFD] = "memfd", [SCENARIO_OBJECT_FILE] = "file", NULL};
const char *const scenario__region_type_words[] = {
    [SCENARIO_REGION_RAM] = "ram", [SCENARIO_REGION_DEVICE] = "device", NULL};
const char *const scenario__mapper_words[] = {
    [SCENARIO_MAPPER_EAGER] = "eager", [SCENARIO_MAPPER_LAZY] = "lazy", NULL};
const char *const scenario__partition_words[] = {
    [SCENARIO_PARTITION_SOFT] = "soft", [SCENARIO_PARTITION_KVM] = "kvm", NULL};
const char *const scenario__state_words[] = {[SCENARIO_STATE_ACTIVE] = "active",
                                             [SCENARIO_STATE_HIDDEN] = "hidden",
                                             [SCENARIO_STATE_UNMAPPED] = "unmapped",
                                             [SCENARIO_STATE_PARTIAL] = "partial",
                                             NULL};
