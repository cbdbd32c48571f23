/* scenario.c: the .mbs parser: lines, commands and their arguments, results, BYTES and RANGES.
 * The rules that span lines (live names, locks, labels) are in scenario_check.c. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "scenario_internal.h"

typedef scenario__parser parser;
typedef scenario__cursor cursor;
typedef scenario__tok tok;
#define TOK SCENARIO__TOK
#define fail scenario__fail

int scenario__fail(parser *P, const char *fmt, ...) {
  if (P->errlen == 0) return -1;
  int n = P->line ? snprintf(P->err, P->errlen, "%s:%u: ", P->file, P->line)
                  : snprintf(P->err, P->errlen, "%s: ", P->file);
  if (n >= 0 && (size_t)n < P->errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(P->err + n, P->errlen - (size_t)n, fmt, ap);
    va_end(ap);
  }
  return -1;
}

static void set_kind(parser *P, scenario_cmd *cmd, scenario_cmd_kind kind) {
  cmd->kind = kind;
  P->what = scenario_cmd_name(kind);
}

/* ---- arguments ------------------------------------------------------------------------------ */

/* Take the next argument. The end of the line or a `=>` where one is due: "missing WHAT". */
static int arg(parser *P, cursor *c, const char *what, tok *t) {
  if (!scenario__peek(c, t) || scenario__tok_is_arrow(*t))
    return fail(P, "%s: missing %s", P->what, what);
  scenario__next(c, t);
  return 0;
}

static int to_name(parser *P, tok t, const char *what, char out[SCENARIO_NAME_SIZE]) {
  switch (scenario__name_check(t)) {
  case SCENARIO__NAME_OK:
    memcpy(out, t.p, t.n);
    out[t.n] = '\0';
    return 0;
  case SCENARIO__NAME_TOO_LONG:
    return fail(P, "%s: %s '%.*s...' is longer than %d characters", P->what, what, TOK(t),
                SCENARIO_NAME_MAX);
  default:
    return fail(P, "%s: %s '%.*s' is not a valid name ([A-Za-z_][A-Za-z0-9_.-]*)", P->what, what,
                TOK(t));
  }
}

static int to_number(parser *P, tok t, const char *what, uint64_t *v) {
  switch (scenario__number(t, v)) {
  case SCENARIO__NUM_OK: return 0;
  case SCENARIO__NUM_OVERFLOW:
    return fail(P, "%s: %s '%.*s' does not fit in 64 bits", P->what, what, TOK(t));
  default: return fail(P, "%s: %s '%.*s' is not a number", P->what, what, TOK(t));
  }
}

static int arg_name(parser *P, cursor *c, const char *what, char out[SCENARIO_NAME_SIZE]) {
  tok t;
  return arg(P, c, what, &t) ? -1 : to_name(P, t, what, out);
}

static int arg_number(parser *P, cursor *c, const char *what, uint64_t *v) {
  tok t;
  return arg(P, c, what, &t) ? -1 : to_number(P, t, what, v);
}

/* Index of t in a NULL-terminated word list, or -1. */
static int word_index(tok t, const char *const *words) {
  for (int i = 0; words[i]; i++)
    if (scenario__tok_is(t, words[i])) return i;
  return -1;
}

/* The words of a list as "a, b or c", for messages. */
static const char *choices(const char *const *words, char *buf, size_t len) {
  size_t n = 0;
  buf[0] = '\0';
  for (int i = 0; words[i] && n < len; i++) {
    const char *sep = i == 0 ? "" : words[i + 1] ? ", " : " or ";
    n += (size_t)snprintf(buf + n, len - n, "%s%s", sep, words[i]);
  }
  return buf;
}

/* A required keyword from a NULL-terminated list; *i is its index. */
static int arg_word(parser *P, cursor *c, const char *const *words, int *i) {
  char list[128];
  tok t;
  if (arg(P, c, choices(words, list, sizeof list), &t)) return -1;
  if ((*i = word_index(t, words)) < 0)
    return fail(P, "%s: expected %s, got '%.*s'", P->what, list, TOK(t));
  return 0;
}

/* An optional rw|ro: true for ro. */
static bool opt_ro(cursor *c) {
  tok t;
  int i;
  if (!scenario__peek(c, &t) || (i = word_index(t, scenario__access_words)) < 0) return false;
  scenario__next(c, &t);
  return i == 1;
}

/* Take the next `key=value` option of a command into *value; false at the end of the options
 * (end of line or `=>`). */
static bool next_option(cursor *c, tok *t) {
  return scenario__peek(c, t) && !scenario__tok_is_arrow(*t) && scenario__next(c, t);
}

/* If t is "key=...", set *value to the part after '=' and return true. */
static bool option_is(tok t, const char *key, tok *value) {
  size_t n = strlen(key);
  if (t.n <= n || memcmp(t.p, key, n) != 0 || t.p[n] != '=') return false;
  value->p = t.p + n + 1;
  value->n = t.n - n - 1;
  return true;
}

static int duplicate_option(parser *P, bool *seen, tok t) {
  if (!*seen) {
    *seen = true;
    return 0;
  }
  return fail(P, "%s: option '%.*s' given twice", P->what, TOK(t));
}

/* ---- BYTES ---------------------------------------------------------------------------------- */

/* One BYTES token: hex digit pairs ("deadbeef") or HH*N. *len is how many bytes it stands for. */
static scenario__num bytes_token(tok t, uint64_t *len) {
  const char *star = memchr(t.p, '*', t.n);
  if (star) {
    if (star - t.p != 2 || scenario__hex_digit(t.p[0]) < 0 || scenario__hex_digit(t.p[1]) < 0)
      return SCENARIO__NUM_MALFORMED;
    tok count = {star + 1, t.n - 3};
    return scenario__number(count, len);
  }
  if (t.n == 0 || t.n % 2 != 0) return SCENARIO__NUM_MALFORMED;
  for (size_t i = 0; i < t.n; i++)
    if (scenario__hex_digit(t.p[i]) < 0) return SCENARIO__NUM_MALFORMED;
  *len = t.n / 2;
  return SCENARIO__NUM_OK;
}

static uint8_t hex_byte(const char *p) {
  return (uint8_t)(scenario__hex_digit(p[0]) << 4 | scenario__hex_digit(p[1]));
}

/* Charge a value of `total` bytes to the file's data (SCENARIO_DATA_MAX). */
static int data_limit(parser *P, const char *what, uint64_t total) {
  if (total <= SCENARIO_DATA_MAX - P->data) return 0;
  if (P->data == 0)
    return fail(P, "%s: %s is %" PRIu64 " bytes long, more than the %" PRIu64 " a file may hold",
                P->what, what, total, (uint64_t)SCENARIO_DATA_MAX);
  return fail(P,
              "%s: %s is %" PRIu64 " bytes long; with the %" PRIu64 " bytes of BYTES and "
              "HEXBYTES before it, more than the %" PRIu64 " a file may hold",
              P->what, what, total, P->data, (uint64_t)SCENARIO_DATA_MAX);
}

/* Decode the BYTES tokens up to the end of the line or a `=>`. With want_len, their total must
 * equal *want_len (a read's LEN). */
static int decode_bytes(parser *P, cursor *c, const char *what, const uint64_t *want_len,
                        scenario_bytes *out) {
  /* First pass: check every token and add up the length, so that nothing is allocated for a
   * token list that is wrong, and the buffer is allocated once. */
  cursor scan = *c;
  tok t;
  uint64_t total = 0, n = 0;
  size_t ntok = 0;
  for (; next_option(&scan, &t); ntok++) {
    switch (bytes_token(t, &n)) {
    case SCENARIO__NUM_OK: break;
    case SCENARIO__NUM_OVERFLOW:
      return fail(P, "%s: %s token '%.*s': count does not fit in 64 bits", P->what, what, TOK(t));
    default:
      return fail(P, "%s: malformed %s token '%.*s' (expected pairs of hex digits, or HH*N)",
                  P->what, what, TOK(t));
    }
    total = n > UINT64_MAX - total ? UINT64_MAX : total + n;
  }
  if (ntok == 0) return fail(P, "%s: missing %s", P->what, what);
  if (want_len && total != *want_len)
    return fail(P, "%s: %s is %" PRIu64 " bytes long, the read's LEN is %" PRIu64, P->what, what,
                total, *want_len);
  if (data_limit(P, what, total)) return -1;

  if (total > 0 && !(out->data = malloc(total))) return fail(P, "out of memory");
  out->len = total;
  P->data += total;
  size_t at = 0;
  while (next_option(c, &t)) {
    if (t.n > 2 && t.p[2] == '*') {
      bytes_token(t, &n);
      if (n > 0) memset(out->data + at, hex_byte(t.p), n);
      at += n;
    } else {
      for (size_t i = 0; i < t.n; i += 2) out->data[at++] = hex_byte(t.p + i);
    }
  }
  return 0;
}

/* ---- results -------------------------------------------------------------------------------- */

static int parse_error_code(parser *P, tok code, scenario_error *err) {
  const char *codes[SCENARIO_ERR_COUNT];
  char list[160];
  for (int e = SCENARIO_ERR_NONE + 1; e < SCENARIO_ERR_COUNT; e++) {
    codes[e - 1] = scenario_error_name((scenario_error)e);
    if (scenario__tok_is(code, codes[e - 1])) {
      *err = (scenario_error)e;
      return 0;
    }
  }
  codes[SCENARIO_ERR_COUNT - 1] = NULL;
  return fail(P, "%s: unknown error code '%.*s' (expected %s)", P->what, TOK(code),
              choices(codes, list, sizeof list));
}

/* The RESULT after `=>`. `read_len` is the LEN of the read that BYTES must match (the command
 * itself or the read an await waits for); NULL where BYTES are not allowed. */
static int parse_result(parser *P, cursor *c, scenario_cmd *cmd, const uint64_t *read_len) {
  scenario_expect *e = &cmd->expect;
  tok t, code;
  uint64_t n;
  if (!scenario__peek(c, &t)) return fail(P, "%s: missing RESULT after '=>'", P->what);
  if (scenario__tok_is(t, "ok")) {
    scenario__next(c, &t);
    e->kind = SCENARIO_EXPECT_OK;
  } else if (scenario__tok_starts(t, "error:")) {
    scenario__next(c, &t);
    code.p = t.p + 6;
    code.n = t.n - 6;
    if (parse_error_code(P, code, &e->error)) return -1;
    e->kind = SCENARIO_EXPECT_ERROR;
  } else if (!read_len || scenario__tok_starts(t, "error") || scenario__tok_starts(t, "ok")) {
    if (bytes_token(t, &n) == SCENARIO__NUM_OK)
      return fail(P, "%s: '=> BYTES' is only allowed after a read (expected ok or error:CODE)",
                  P->what);
    return fail(P, "%s: malformed result '%.*s' (expected ok or error:CODE)", P->what, TOK(t));
  } else {
    if (decode_bytes(P, c, "BYTES", read_len, &e->bytes)) return -1;
    e->kind = SCENARIO_EXPECT_BYTES;
  }
  if (scenario__next(c, &t))
    return fail(P, "%s: unexpected '%.*s' after the result", P->what, TOK(t));
  return 0;
}

static bool takes_result(scenario_cmd_kind kind) {
  return scenario_cmd_is_operation(kind) || kind == SCENARIO_AWAIT;
}

/* Up to the RESULT of a command: 0 at the end of the line, 1 after a `=>` that a RESULT must
 * follow, -1 after fail. */
static int result_due(parser *P, cursor *c, const scenario_cmd *cmd) {
  tok t;
  if (!scenario__next(c, &t)) return 0;
  if (!scenario__tok_is_arrow(t)) return fail(P, "%s: unexpected '%.*s'", P->what, TOK(t));
  if (!scenario__tok_is(t, "=>"))
    return fail(P, "%s: malformed '%.*s': '=>' must be followed by a space", P->what, TOK(t));
  if (P->in_async)
    return fail(P, "async: the result of %s is checked by its await (await LABEL => RESULT)",
                P->what);
  if (!takes_result(cmd->kind)) return fail(P, "%s takes no '=> RESULT'", P->what);
  return 1;
}

/* The end of a command: an optional `=> RESULT`, then nothing. `read_len` as for
 * parse_result. */
static int finish(parser *P, cursor *c, scenario_cmd *cmd, const uint64_t *read_len) {
  int due = result_due(P, c, cmd);
  return due <= 0 ? due : parse_result(P, c, cmd, read_len);
}

typedef enum ranges_kind { RANGES_ACCESS, RANGES_PAGES, RANGES_PROT } ranges_kind;
static int parse_ranges(parser *P, cursor *c, ranges_kind kind, scenario_ranges *out);

/* The end of a dirty sync (or of its await): `=> PAGES` is allowed besides ok and error:CODE. */
static int finish_pages(parser *P, cursor *c, scenario_cmd *cmd) {
  tok t;
  int due = result_due(P, c, cmd);
  if (due <= 0) return due;
  if (!scenario__peek(c, &t)) return fail(P, "%s: missing RESULT after '=>'", P->what);
  if (scenario__tok_is(t, "ok") || scenario__tok_starts(t, "error"))
    return parse_result(P, c, cmd, NULL);
  if (parse_ranges(P, c, RANGES_PAGES, &cmd->expect.pages)) return -1;
  cmd->expect.kind = SCENARIO_EXPECT_PAGES;
  if (scenario__next(c, &t))
    return fail(P, "%s: unexpected '%.*s' after the result", P->what, TOK(t));
  return 0;
}

/* ---- commands ------------------------------------------------------------------------------- */

/* Each parser below handles the commands that begin with one first word; `first` is the first
 * of their kinds in SCENARIO_COMMANDS ("region" -> SCENARIO_REGION_ADD). */

/* Pick the kind by the word that follows (the second word of its name: "map" in "region map").
 * The kinds sharing a first word are consecutive in SCENARIO_COMMANDS. */
static int pick_kind(parser *P, cursor *c, scenario_cmd *cmd, scenario_cmd_kind first) {
  const char *words[8];
  const char *name = scenario_cmd_name(first);
  size_t prefix = strcspn(name, " ") + 1, n = 0;
  for (int k = first; k < SCENARIO_CMD_KIND_COUNT && n + 1 < sizeof words / sizeof words[0]; k++) {
    if (strncmp(scenario_cmd_name((scenario_cmd_kind)k), name, prefix) != 0) break;
    words[n++] = scenario_cmd_name((scenario_cmd_kind)k) + prefix;
  }
  words[n] = NULL;
  int i;
  if (arg_word(P, c, words, &i)) return -1;
  set_kind(P, cmd, (scenario_cmd_kind)(first + i));
  return 0;
}

/* A VTL: 0, 1 or 2 (whether the manager has it is the run's business). */
static int to_vtl(parser *P, tok t, const char *what, uint8_t *vtl) {
  uint64_t v;
  if (to_number(P, t, what, &v)) return -1;
  if (v > SCENARIO_VTL_MAX)
    return fail(P, "%s: %s '%.*s' is not a VTL (0, 1 or 2)", P->what, what, TOK(t));
  *vtl = (uint8_t)v;
  return 0;
}

/* vtls=0[,1][,2]: the VTLs as a bit mask, and whether they are written strictly ascending
 * (the configuration check refuses a list that is not, and one without VTL 0). */
static int parse_vtl_list(parser *P, tok v, scenario_config *cfg) {
  int last = -1;
  cfg->vtls_ascending = true;
  for (const char *p = v.p, *end = v.p + v.n; p <= end;) {
    const char *comma = memchr(p, ',', (size_t)(end - p));
    tok item = {p, (size_t)((comma ? comma : end) - p)};
    uint8_t vtl;
    if (item.n == 0) return fail(P, "config: vtls '%.*s' has an empty item", TOK(v));
    if (to_vtl(P, item, "vtls item", &vtl)) return -1;
    if ((int)vtl <= last) cfg->vtls_ascending = false;
    last = vtl;
    cfg->vtls |= (uint8_t)(1u << vtl);
    p = comma ? comma + 1 : end + 1;
  }
  return 0;
}

static int parse_config(parser *P, cursor *c, scenario_cmd *cmd, scenario_cmd_kind first) {
  char list[64];
  tok t, v;
  set_kind(P, cmd, first);
  if (arg(P, c, "max_addr=, overlap=, vtls= or vtl0_alias=", &t)) return -1;
  if (option_is(t, "vtls", &v)) {
    cmd->config.key = SCENARIO_CONFIG_VTLS;
    if (parse_vtl_list(P, v, &cmd->config)) return -1;
  } else if (option_is(t, "vtl0_alias", &v)) {
    cmd->config.key = SCENARIO_CONFIG_VTL0_ALIAS;
    if (to_number(P, v, "vtl0_alias", &cmd->config.vtl0_alias)) return -1;
  } else if (option_is(t, "max_addr", &v)) {
    cmd->config.key = SCENARIO_CONFIG_MAX_ADDR;
    if (to_number(P, v, "max_addr", &cmd->config.max_addr)) return -1;
  } else if (option_is(t, "overlap", &v)) {
    int i = word_index(v, scenario__overlap_words);
    if (i < 0)
      return fail(P, "config: overlap must be %s, not '%.*s'",
                  choices(scenario__overlap_words, list, sizeof list), TOK(v));
    cmd->config.key = SCENARIO_CONFIG_OVERLAP;
    cmd->config.overlap = (scenario_overlap)i;
  } else {
    return fail(P,
                "config: unknown setting '%.*s' (expected max_addr=NUMBER, overlap=nested|any, "
                "vtls=0[,1][,2] or vtl0_alias=ADDR)",
                TOK(t));
  }
  return finish(P, c, cmd, NULL);
}

static int parse_require(parser *P, cursor *c, scenario_cmd *cmd, scenario_cmd_kind first) {
  static const char *const what[] = {[SCENARIO_REQUIRE_KVM] = "kvm", NULL};
  int i;
  set_kind(P, cmd, first);
  if (arg_word(P, c, what, &i)) return -1;
  cmd->require.what = SCENARIO_REQUIRE_KVM;
  return finish(P, c, cmd, NULL);
}

/* FILL: 0xHH or pages:0xHH. */
static int parse_fill(parser *P, tok v, scenario_object *o) {
  tok hex = v;
  o->fill = SCENARIO_FILL_BYTE;
  if (scenario__tok_starts(v, "pages:")) {
    o->fill = SCENARIO_FILL_PAGES;
    hex.p += 6;
    hex.n -= 6;
  }
  if (hex.n != 4 || !scenario__tok_starts(hex, "0x") || scenario__hex_digit(hex.p[2]) < 0 ||
      scenario__hex_digit(hex.p[3]) < 0)
    return fail(P, "object: fill '%.*s' is neither 0xHH nor pages:0xHH", TOK(v));
  o->fill_value = hex_byte(hex.p + 2);
  return 0;
}

static int parse_object(parser *P, cursor *c, scenario_cmd *cmd, scenario_cmd_kind first) {
  scenario_object *o = &cmd->object;
  int i;
  bool seen_fill = false;
  tok t, v;
  set_kind(P, cmd, first);
  if (arg_word(P, c, scenario__object_words, &i)) return -1;
  o->type = i;
  if (arg_name(P, c, "NAME", o->name) || arg_number(P, c, "SIZE", &o->size)) return -1;
  while (next_option(c, &t)) {
    if (!option_is(t, "fill", &v))
      return fail(P, "object: unexpected '%.*s' (expected fill=0xHH or fill=pages:0xHH)", TOK(t));
    if (duplicate_option(P, &seen_fill, t) || parse_fill(P, v, o)) return -1;
  }
  return finish(P, c, cmd, NULL);
}

static int parse_region_add(parser *P, cursor *c, scenario_cmd *cmd) {
  scenario_region *r = &cmd->region;
  bool seen_prio = false, seen_type = false, seen_vtl = false;
  char list[64];
  tok t, v;
  if (arg_name(P, c, "NAME", r->name) || arg_number(P, c, "GPA", &r->gpa) ||
      arg_number(P, c, "SIZE", &r->size))
    return -1;
  while (next_option(c, &t)) {
    if (option_is(t, "prio", &v)) {
      uint64_t prio;
      if (duplicate_option(P, &seen_prio, t) || to_number(P, v, "prio", &prio)) return -1;
      if (prio > 255) return fail(P, "region add: prio '%.*s' is not in 0..255", TOK(v));
      r->prio = (uint8_t)prio;
    } else if (option_is(t, "type", &v)) {
      int i = word_index(v, scenario__region_type_words);
      if (duplicate_option(P, &seen_type, t)) return -1;
      if (i < 0)
        return fail(P, "region add: type must be %s, not '%.*s'",
                    choices(scenario__region_type_words, list, sizeof list), TOK(v));
      r->type = (scenario_region_type)i;
    } else if (option_is(t, "vtl", &v)) {
      if (duplicate_option(P, &seen_vtl, t) || to_vtl(P, v, "vtl", &r->vtl)) return -1;
    } else {
      return fail(P, "region add: unexpected '%.*s' (expected prio=N, type=ram|device or vtl=N)",
                  TOK(t));
    }
  }
  return finish(P, c, cmd, NULL);
}

static int parse_region(parser *P, cursor *c, scenario_cmd *cmd, scenario_cmd_kind first) {
  if (pick_kind(P, c, cmd, first)) return -1;
  if (cmd->kind == SCENARIO_REGION_ADD) return parse_region_add(P, c, cmd);
  if (arg_name(P, c, "NAME", cmd->region.name)) return -1;
  if (cmd->kind == SCENARIO_REGION_MAP) cmd->region.ro = opt_ro(c);
  return finish(P, c, cmd, NULL);
}

static int parse_mapping(parser *P, cursor *c, scenario_cmd *cmd, scenario_cmd_kind first) {
  scenario_mapping *m = &cmd->mapping;
  if (pick_kind(P, c, cmd, first)) return -1;
  if (arg_name(P, c, "REGION", m->region) || arg_number(P, c, "OFFSET", &m->offset) ||
      arg_number(P, c, "SIZE", &m->size))
    return -1;
  if (cmd->kind != SCENARIO_MAPPING_REMOVE) {
    if (arg_name(P, c, "OBJECT", m->object) || arg_number(P, c, "OBJ_OFFSET", &m->obj_offset))
      return -1;
    m->ro = opt_ro(c);
  }
  return finish(P, c, cmd, NULL);
}

/* The options of a consumer add: [vtl=N]. */
static int consumer_options(parser *P, cursor *c, uint8_t *vtl) {
  bool seen_vtl = false;
  tok t, v;
  while (next_option(c, &t)) {
    if (!option_is(t, "vtl", &v))
      return fail(P, "%s: unexpected '%.*s' (expected vtl=N)", P->what, TOK(t));
    if (duplicate_option(P, &seen_vtl, t) || to_vtl(P, v, "vtl", vtl)) return -1;
  }
  return 0;
}

static int parse_mapper(parser *P, cursor *c, scenario_cmd *cmd, scenario_cmd_kind first) {
  int i;
  if (pick_kind(P, c, cmd, first) || arg_name(P, c, "NAME", cmd->mapper.name)) return -1;
  if (cmd->kind == SCENARIO_MAPPER_ADD) {
    if (arg_word(P, c, scenario__mapper_words, &i)) return -1;
    cmd->mapper.mode = i;
    if (consumer_options(P, c, &cmd->mapper.vtl)) return -1;
  }
  return finish(P, c, cmd, NULL);
}

static int parse_partition(parser *P, cursor *c, scenario_cmd *cmd, scenario_cmd_kind first) {
  int i;
  if (pick_kind(P, c, cmd, first) || arg_name(P, c, "NAME", cmd->partition.name)) return -1;
  if (cmd->kind == SCENARIO_PARTITION_ADD) {
    if (arg_word(P, c, scenario__partition_words, &i)) return -1;
    cmd->partition.backend = i;
    if (consumer_options(P, c, &cmd->partition.vtl)) return -1;
  }
  return finish(P, c, cmd, NULL);
}

/* protect VTL GPA SIZE none|ro|rw */
static int parse_protect(parser *P, cursor *c, scenario_cmd *cmd, scenario_cmd_kind first) {
  scenario_protect *p = &cmd->protect;
  tok t;
  int i;
  set_kind(P, cmd, first);
  if (arg(P, c, "VTL", &t) || to_vtl(P, t, "VTL", &p->vtl) ||
      arg_number(P, c, "GPA", &p->gpa) || arg_number(P, c, "SIZE", &p->size) ||
      arg_word(P, c, scenario__prot_words, &i))
    return -1;
  p->access = (scenario_prot)i;
  return finish(P, c, cmd, NULL);
}

/* The part after the mapper or partition name: GPA LEN, or GPA HEXBYTES. */
static int parse_io(parser *P, cursor *c, scenario_cmd *cmd) {
  scenario_io *io = &cmd->io;
  if (arg_number(P, c, "GPA", &io->gpa)) return -1;
  if (cmd->kind == SCENARIO_READ || cmd->kind == SCENARIO_GUEST_READ) {
    if (arg_number(P, c, "LEN", &io->len)) return -1;
    return finish(P, c, cmd, &io->len);
  }
  if (decode_bytes(P, c, "HEXBYTES", NULL, &io->data)) return -1;
  io->len = io->data.len;
  return finish(P, c, cmd, NULL);
}

/* read MAPPER ..., write MAPPER ... */
static int parse_access(parser *P, cursor *c, scenario_cmd *cmd, scenario_cmd_kind first) {
  set_kind(P, cmd, first);
  return arg_name(P, c, "MAPPER", cmd->io.target) ? -1 : parse_io(P, c, cmd);
}

/* guest PARTITION read|write ... */
static int parse_guest(parser *P, cursor *c, scenario_cmd *cmd, scenario_cmd_kind first) {
  if (arg_name(P, c, "PARTITION", cmd->io.target) || pick_kind(P, c, cmd, first)) return -1;
  return parse_io(P, c, cmd);
}

static int parse_lock(parser *P, cursor *c, scenario_cmd *cmd, scenario_cmd_kind first) {
  scenario_lock *l = &cmd->lock;
  tok t;
  set_kind(P, cmd, first);
  if (arg_name(P, c, "MAPPER", l->mapper) || arg_number(P, c, "GPA", &l->gpa) ||
      arg_number(P, c, "SIZE", &l->size))
    return -1;
  l->ro = opt_ro(c);
  if (arg(P, c, "'as NAME'", &t)) return -1;
  if (!scenario__tok_is(t, "as"))
    return fail(P, "lock: expected rw, ro or 'as NAME', got '%.*s'", TOK(t));
  if (arg_name(P, c, "NAME", l->name)) return -1;
  return finish(P, c, cmd, NULL);
}

static int parse_unlock(parser *P, cursor *c, scenario_cmd *cmd, scenario_cmd_kind first) {
  set_kind(P, cmd, first);
  return arg_name(P, c, "NAME", cmd->lock.name) ? -1 : finish(P, c, cmd, NULL);
}

static int parse_command(parser *P, cursor *c, scenario_cmd *cmd);

static int parse_async(parser *P, cursor *c, scenario_cmd *cmd, scenario_cmd_kind first) {
  tok t;
  set_kind(P, cmd, first);
  if (arg_name(P, c, "LABEL", cmd->async.label)) return -1;
  if (!scenario__peek(c, &t) || scenario__tok_is_arrow(t))
    return fail(P, "async: missing the COMMAND to start");
  if (!(cmd->async.inner = calloc(1, sizeof *cmd->async.inner))) return fail(P, "out of memory");
  cmd->async.inner->line = P->line;
  P->in_async = true;
  int rc = parse_command(P, c, cmd->async.inner);
  P->in_async = false;
  return rc;
}

/* The label of await or expect pending: the async command not yet awaited that it names, or
 * (*label NULL, async_index SCENARIO_NO_LABEL) none: the command fails with error:notfound. */
static int arg_label(parser *P, cursor *c, scenario_cmd *cmd, const scenario__live **label) {
  if (arg_name(P, c, "LABEL", cmd->label.label)) return -1;
  *label = scenario__label(P, cmd->label.label);
  cmd->label.async_index = *label ? (*label)->index : SCENARIO_NO_LABEL;
  return 0;
}

/* `=> BYTES` only when the label names a live read. */
static int parse_await(parser *P, cursor *c, scenario_cmd *cmd, scenario_cmd_kind first) {
  const scenario__live *label;
  set_kind(P, cmd, first);
  if (arg_label(P, c, cmd, &label)) return -1;
  bool is_read = label && (label->kind == SCENARIO_READ || label->kind == SCENARIO_GUEST_READ);
  uint64_t len = label ? label->len : 0;
  if (label && label->kind == SCENARIO_DIRTY_SYNC) return finish_pages(P, c, cmd);
  return finish(P, c, cmd, is_read ? &len : NULL);
}

static int parse_txn(parser *P, cursor *c, scenario_cmd *cmd, scenario_cmd_kind first) {
  return pick_kind(P, c, cmd, first) ? -1 : finish(P, c, cmd, NULL);
}

/* dirty start, dirty sync GPA SIZE [=> PAGES], dirty stop */
static int parse_dirty(parser *P, cursor *c, scenario_cmd *cmd, scenario_cmd_kind first) {
  if (pick_kind(P, c, cmd, first)) return -1;
  if (cmd->kind != SCENARIO_DIRTY_SYNC) return finish(P, c, cmd, NULL);
  if (arg_number(P, c, "GPA", &cmd->dirty.gpa) || arg_number(P, c, "SIZE", &cmd->dirty.size))
    return -1;
  return finish_pages(P, c, cmd);
}

/* A PAGES item: GPA+SIZE (no access). */
static int page_range_split(parser *P, tok t, tok *gpa, tok *size) {
  const char *plus = memchr(t.p, '+', t.n);
  if (!plus || memchr(t.p, ':', t.n))
    return fail(P, "%s: malformed page range '%.*s' (expected GPA+SIZE)", P->what, TOK(t));
  *gpa = (tok){t.p, (size_t)(plus - t.p)};
  *size = (tok){plus + 1, (size_t)(t.p + t.n - plus - 1)};
  return 0;
}

/* The access of a RANGES item: rw or ro, or for protections (prot) ro or none. */
static int range_access(parser *P, tok t, tok access, bool prot, scenario_range *r) {
  int i = word_index(access, scenario__prot_words);
  if (prot && (i == SCENARIO_PROT_NONE || i == SCENARIO_PROT_RO)) {
    r->none = i == SCENARIO_PROT_NONE;
    r->ro = i == SCENARIO_PROT_RO;
    return 0;
  }
  if (prot)
    return fail(P, "%s: range '%.*s' must end in :ro or :none (rw is what is not listed)",
                P->what, TOK(t));
  if ((i = word_index(access, scenario__access_words)) < 0)
    return fail(P, "%s: range '%.*s' must end in :rw or :ro", P->what, TOK(t));
  r->ro = i == 1;
  return 0;
}


/* RANGES item: GPA+SIZE:rw or GPA+SIZE:ro (protections: :ro or :none); PAGES item: GPA+SIZE. */
static int parse_range(parser *P, tok t, ranges_kind kind, scenario_range *r) {
  bool pages = kind == RANGES_PAGES;
  const char *plus = memchr(t.p, '+', t.n);
  const char *colon = plus ? memchr(plus, ':', (size_t)(t.p + t.n - plus)) : NULL;
  tok gpa, size;
  if (pages) {
    if (page_range_split(P, t, &gpa, &size)) return -1;
  } else if (!colon) {
    return fail(P, "%s: malformed range '%.*s' (expected GPA+SIZE:%s)", P->what, TOK(t),
                kind == RANGES_PROT ? "ro or GPA+SIZE:none" : "rw or GPA+SIZE:ro");
  } else {
    gpa = (tok){t.p, (size_t)(plus - t.p)};
    size = (tok){plus + 1, (size_t)(colon - plus - 1)};
    tok access = {colon + 1, (size_t)(t.p + t.n - colon - 1)};
    if (range_access(P, t, access, kind == RANGES_PROT, r)) return -1;
  }
  if (to_number(P, gpa, "range GPA", &r->gpa) || to_number(P, size, "range SIZE", &r->size))
    return -1;
  if (r->size == 0) return fail(P, "%s: range '%.*s' is empty", P->what, TOK(t));
  if (r->size > UINT64_MAX - r->gpa)
    return fail(P, "%s: range '%.*s' goes past 2^64", P->what, TOK(t));
  return 0;
}

/* RANGES (or PAGES): `none`, or items in ascending order. Adjacent items with the same access
 * are merged, as the actual state is before it is compared. */
static int parse_ranges(parser *P, cursor *c, ranges_kind kind, scenario_ranges *out) {
  bool pages = kind == RANGES_PAGES;
  const char *what = pages ? "PAGES" : "RANGES";
  cursor scan = *c;
  tok t;
  size_t n = 0;
  while (next_option(&scan, &t)) n++;
  if (n == 0)
    return fail(P, "%s: missing %s (none, or GPA+SIZE%s ...)", P->what, what,
                pages ? "" : kind == RANGES_PROT ? ":ro|none" : ":rw|ro");
  if (scenario__peek(c, &t) && scenario__tok_is(t, "none")) {
    scenario__next(c, &t);
    if (n > 1) return fail(P, "%s: 'none' must stand alone in %s", P->what, what);
    return 0;
  }
  if (!(out->items = calloc(n, sizeof *out->items))) return fail(P, "out of memory");
  while (next_option(c, &t)) {
    scenario_range r = {0};
    if (parse_range(P, t, kind, &r)) return -1;
    scenario_range *last = out->n ? &out->items[out->n - 1] : NULL;
    if (last && r.gpa < last->gpa + last->size)
      return fail(P,
                  "%s: range '%.*s' starts below the end of the one before (%s are "
                  "ascending and do not overlap)",
                  P->what, TOK(t), what);
    if (last && r.gpa == last->gpa + last->size && r.ro == last->ro && r.none == last->none)
      last->size += r.size;
    else
      out->items[out->n++] = r;
  }
  return 0;
}

static int parse_expect(parser *P, cursor *c, scenario_cmd *cmd, scenario_cmd_kind first) {
  const scenario__live *label;
  int i;
  tok t;
  if (pick_kind(P, c, cmd, first)) return -1;
  switch (cmd->kind) {
  case SCENARIO_EXPECT_PENDING:
    if (arg_label(P, c, cmd, &label)) return -1;
    break;
  case SCENARIO_EXPECT_REGION:
    if (arg_name(P, c, "NAME", cmd->expect_region.name) ||
        arg_word(P, c, scenario__state_words, &i))
      return -1;
    cmd->expect_region.state = (scenario_region_state)i;
    break;
  case SCENARIO_EXPECT_PROTECTION:
    if (arg(P, c, "VTL", &t) || to_vtl(P, t, "VTL", &cmd->expect_protection.vtl)) return -1;
    if (!scenario__vtl_protectable(P->sc, cmd->expect_protection.vtl))
      return fail(P,
                  "expect protection: VTL %u cannot be protected (config vtls has no higher VTL "
                  "above it, or does not list it)",
                  (unsigned)cmd->expect_protection.vtl);
    if (parse_ranges(P, c, RANGES_PROT, &cmd->expect_protection.ranges)) return -1;
    break;
  default:
    if (arg_name(P, c, "NAME", cmd->expect_ranges.name) ||
        parse_ranges(P, c, RANGES_ACCESS, &cmd->expect_ranges.ranges))
      return -1;
    break;
  }
  return finish(P, c, cmd, NULL);
}

/* ---- lines and files ------------------------------------------------------------------------ */

typedef int parse_fn(parser *P, cursor *c, scenario_cmd *cmd, scenario_cmd_kind first);

/* The parser of each first word, at the first kind whose name starts with it. */
static parse_fn *const parsers[SCENARIO_CMD_KIND_COUNT] = {
    [SCENARIO_CONFIG] = parse_config,
    [SCENARIO_REQUIRE] = parse_require,
    [SCENARIO_OBJECT] = parse_object,
    [SCENARIO_REGION_ADD] = parse_region,
    [SCENARIO_MAPPING_ADD] = parse_mapping,
    [SCENARIO_MAPPER_ADD] = parse_mapper,
    [SCENARIO_PARTITION_ADD] = parse_partition,
    [SCENARIO_READ] = parse_access,
    [SCENARIO_WRITE] = parse_access,
    [SCENARIO_GUEST_READ] = parse_guest,
    [SCENARIO_LOCK] = parse_lock,
    [SCENARIO_UNLOCK] = parse_unlock,
    [SCENARIO_ASYNC] = parse_async,
    [SCENARIO_AWAIT] = parse_await,
    [SCENARIO_EXPECT_PENDING] = parse_expect,
    [SCENARIO_TXN_BEGIN] = parse_txn,
    [SCENARIO_DIRTY_START] = parse_dirty,
    [SCENARIO_PROTECT] = parse_protect,
};

/* The first kind whose name starts with the word t, or SCENARIO_CMD_KIND_COUNT. */
static scenario_cmd_kind first_kind(tok t) {
  for (int k = 0; k < SCENARIO_CMD_KIND_COUNT; k++) {
    const char *name = scenario_cmd_name((scenario_cmd_kind)k);
    if (strcspn(name, " ") == t.n && memcmp(name, t.p, t.n) == 0) return (scenario_cmd_kind)k;
  }
  return SCENARIO_CMD_KIND_COUNT;
}

static int parse_command(parser *P, cursor *c, scenario_cmd *cmd) {
  tok t;
  scenario__next(c, &t);
  scenario_cmd_kind first = first_kind(t);
  if (first == SCENARIO_CMD_KIND_COUNT) return fail(P, "unknown command '%.*s'", TOK(t));
  /* Until pick_kind knows the whole name, messages name the first word. */
  memcpy(P->word, t.p, t.n);
  P->word[t.n] = '\0';
  P->what = P->word;
  if (P->in_async && !scenario_cmd_is_operation(first))
    return fail(P, "async: '%s' is not an operation that can be started", P->word);
  bool config = first == SCENARIO_CONFIG || first == SCENARIO_REQUIRE;
  if (config && P->past_config)
    return fail(P, "'%s' must come before every other command", P->word);
  if (!config && scenario__config_done(P)) return -1;
  return parsers[first](P, c, cmd, first);
}

/* The slot of a whole program: the next command of sc->cmds, zeroed. */
static scenario_cmd *append(parser *P) {
  scenario *sc = P->sc;
  if (sc->ncmds == P->cap) {
    size_t cap = P->cap ? P->cap * 2 : 64;
    scenario_cmd *cmds = realloc(sc->cmds, cap * sizeof *cmds);
    if (!cmds) return NULL;
    sc->cmds = cmds;
    P->cap = cap;
  }
  scenario_cmd *cmd = &sc->cmds[sc->ncmds++];
  memset(cmd, 0, sizeof *cmd);
  return cmd;
}

/* A config line's setting into the configuration (the last line of a key wins). */
static void config_apply(parser *P, const scenario_config *cfg) {
  scenario *sc = P->sc;
  P->setting_line[cfg->key] = P->line;
  switch (cfg->key) {
  case SCENARIO_CONFIG_MAX_ADDR: sc->max_addr = cfg->max_addr; break;
  case SCENARIO_CONFIG_OVERLAP: sc->overlap = cfg->overlap; break;
  case SCENARIO_CONFIG_VTLS:
    sc->vtls = cfg->vtls;
    P->vtls_ascending = cfg->vtls_ascending;
    break;
  case SCENARIO_CONFIG_VTL0_ALIAS: sc->vtl0_alias = cfg->vtl0_alias; break;
  case SCENARIO_CONFIG_KEYS: break;
  }
}

int scenario__parse_line(parser *P, const char *p, const char *end) {
  if (memchr(p, '\0', (size_t)(end - p))) return fail(P, "NUL byte in the line");
  for (const char *q = p; q < end; q++) {
    unsigned char ch = (unsigned char)*q;
    if (ch == '\r') return fail(P, "carriage return in the line (CRLF line endings?)");
    if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
      return fail(P, "unexpected control character 0x%02x", ch);
  }
  const char *comment = memchr(p, '#', (size_t)(end - p));
  cursor c = {p, comment ? comment : end};
  tok t;
  if (!scenario__peek(&c, &t)) return 0;

  scenario_cmd *cmd = P->slot(P);
  if (!cmd) return fail(P, "out of memory");
  cmd->line = P->line;
  if (parse_command(P, &c, cmd) || scenario__check(P, cmd, P->count)) return -1;
  P->count++;
  if (cmd->kind == SCENARIO_CONFIG) config_apply(P, &cmd->config);
  if (cmd->kind == SCENARIO_REQUIRE) P->sc->require_kvm = true;
  return 1;
}

/* The configuration is checked once, when the first other command (or the end) shows that
 * the last config line was read. */
int scenario__config_done(parser *P) {
  if (P->past_config) return 0;
  P->past_config = true;
  return scenario__config_check(P);
}

void scenario__parser_free(parser *P) {
  for (int i = 0; i < SCENARIO__NS_COUNT; i++) scenario__scope_free(&P->live[i]);
  scenario__scope_free(&P->txn_regions);
}

static int parse_text(const char *text, size_t len, const char *name, scenario **out, char *err,
                      size_t errlen) {
  parser P = {.file = name, .err = err, .errlen = errlen, .slot = append};
  int rc = -1;
  *out = NULL;
  if (errlen) err[0] = '\0';
  size_t namelen = strlen(name) + 1;
  P.sc = calloc(1, sizeof *P.sc);
  if (!P.sc || !(P.sc->name = malloc(namelen))) {
    fail(&P, "out of memory");
    goto done;
  }
  memcpy(P.sc->name, name, namelen);
  scenario__config_defaults(P.sc);

  const char *p = text, *end = text + len;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *eol = nl ? nl : end;
    P.line++;
    if (scenario__parse_line(&P, p, eol) < 0) goto done;
    p = nl ? nl + 1 : end;
  }
  rc = scenario__config_done(&P);
done:
  scenario__parser_free(&P);
  if (rc == 0)
    *out = P.sc;
  else
    scenario_free(P.sc);
  return rc;
}

int scenario_parse_string(const char *text, const char *name, scenario **out, char *err,
                          size_t errlen) {
  return parse_text(text, strlen(text), name, out, err, errlen);
}

int scenario_parse_text(const char *text, size_t len, const char *name, scenario **out, char *err,
                        size_t errlen) {
  return parse_text(text, len, name, out, err, errlen);
}

int scenario_parse_file(const char *path, scenario **out, char *err, size_t errlen) {
  parser P = {.file = path, .err = err, .errlen = errlen};
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) return fail(&P, "cannot open: %s", strerror(errno));

  char *buf = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len == cap) {
      cap = cap ? cap * 2 : 65536;
      char *grown = realloc(buf, cap);
      if (!grown) {
        free(buf);
        fclose(f);
        return fail(&P, "out of memory");
      }
      buf = grown;
    }
    size_t n = fread(buf + len, 1, cap - len, f);
    len += n;
    if (n == 0) break;
  }
  int rc = ferror(f) ? fail(&P, "read error: %s", strerror(errno)) : 0;
  fclose(f);
  if (rc == 0) rc = parse_text(buf, len, path, out, err, errlen);
  free(buf);
  return rc;
}

void scenario__cmd_clear(scenario_cmd *cmd) {
  free(cmd->expect.bytes.data);
  free(cmd->expect.pages.items);
  switch (cmd->kind) {
  case SCENARIO_WRITE:
  case SCENARIO_GUEST_WRITE: free(cmd->io.data.data); break;
  case SCENARIO_EXPECT_PARTITION:
  case SCENARIO_EXPECT_MAPPER: free(cmd->expect_ranges.ranges.items); break;
  case SCENARIO_EXPECT_PROTECTION: free(cmd->expect_protection.ranges.items); break;
  case SCENARIO_ASYNC:
    if (cmd->async.inner) scenario__cmd_clear(cmd->async.inner);
    free(cmd->async.inner);
    break;
  default: break;
  }
}

void scenario_cmd_free(scenario_cmd *cmd) {
  if (!cmd) return;
  scenario__cmd_clear(cmd);
  free(cmd);
}

void scenario_free(scenario *sc) {
  if (!sc) return;
  for (size_t i = 0; i < sc->ncmds; i++) scenario__cmd_clear(&sc->cmds[i]);
  free(sc->cmds);
  free(sc->name);
  free(sc);
}
