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

/* A NUMBER that must be a multiple of 4 KiB: addresses and sizes of regions, mappings, locks
 * and objects. */
static int arg_pages(parser *P, cursor *c, const char *what, uint64_t *v) {
  tok t;
  if (arg(P, c, what, &t) || to_number(P, t, what, v)) return -1;
  if (*v % SCENARIO_PAGE_SIZE != 0)
    return fail(P, "%s: %s '%.*s' is not a multiple of 4 KiB", P->what, what, TOK(t));
  return 0;
}

/* Index of t in a NULL-terminated word list, or -1. */
static int word_index(tok t, const char *const *words) {
  for (int i = 0; words[i]; i++)
    if (scenario__tok_is(t, words[i])) return i;
  return -1;
}

/* A required keyword; `what` lists the choices for messages ("eager or lazy"). */
static int arg_word(parser *P, cursor *c, const char *what, const char *const *words, int *i) {
  tok t;
  if (arg(P, c, what, &t)) return -1;
  if ((*i = word_index(t, words)) < 0)
    return fail(P, "%s: expected %s, got '%.*s'", P->what, what, TOK(t));
  return 0;
}

/* An optional keyword: taken when the next token is one of words; else `dflt`. */
static int opt_word(cursor *c, const char *const *words, int dflt) {
  tok t;
  int i;
  if (!scenario__peek(c, &t) || (i = word_index(t, words)) < 0) return dflt;
  scenario__next(c, &t);
  return i;
}

static const char *const access_words[] = {"rw", "ro", NULL};

static bool opt_ro(cursor *c) { return opt_word(c, access_words, 0) == 1; }

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
  if (total > SCENARIO_BYTES_MAX)
    return fail(P, "%s: %s is %" PRIu64 " bytes long, more than the %" PRIu64 " this parser takes",
                P->what, what, total, (uint64_t)SCENARIO_BYTES_MAX);

  if (total > 0 && !(out->data = malloc(total))) return fail(P, "out of memory");
  out->len = total;
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
  for (int e = SCENARIO_ERR_NONE + 1; e < SCENARIO_ERR_COUNT; e++) {
    if (scenario__tok_is(code, scenario_error_name((scenario_error)e))) {
      *err = (scenario_error)e;
      return 0;
    }
  }
  return fail(P,
              "%s: unknown error code '%.*s' (expected overlap, invalid, notfound, unmapped, "
              "readonly, mmio, fault or unsupported)",
              P->what, TOK(code));
}

/* The RESULT after `=>`. `read` is the read whose LEN BYTES must match (the command itself or
 * the read an await waits for); NULL where BYTES are not allowed. */
static int parse_result(parser *P, cursor *c, scenario_cmd *cmd, const scenario_cmd *read) {
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
  } else if (!read || scenario__tok_starts(t, "error") || scenario__tok_starts(t, "ok")) {
    if (bytes_token(t, &n) == SCENARIO__NUM_OK)
      return fail(P, "%s: '=> BYTES' is only allowed after a read (expected ok or error:CODE)",
                  P->what);
    return fail(P, "%s: malformed result '%.*s' (expected ok or error:CODE)", P->what, TOK(t));
  } else {
    if (decode_bytes(P, c, "BYTES", &read->io.len, &e->bytes)) return -1;
    e->kind = SCENARIO_EXPECT_BYTES;
  }
  if (scenario__next(c, &t))
    return fail(P, "%s: unexpected '%.*s' after the result", P->what, TOK(t));
  return 0;
}

static bool takes_result(scenario_cmd_kind kind) {
  return scenario_cmd_is_operation(kind) || kind == SCENARIO_AWAIT;
}

/* The end of a command: an optional `=> RESULT`, then nothing. `read` as for parse_result. */
static int finish(parser *P, cursor *c, scenario_cmd *cmd, const scenario_cmd *read) {
  tok t;
  if (!scenario__next(c, &t)) return 0;
  if (!scenario__tok_is_arrow(t)) return fail(P, "%s: unexpected '%.*s'", P->what, TOK(t));
  if (!scenario__tok_is(t, "=>"))
    return fail(P, "%s: malformed '%.*s': '=>' must be followed by a space", P->what, TOK(t));
  if (P->in_async)
    return fail(P, "async: the result of %s is checked by its await (await LABEL => RESULT)",
                P->what);
  if (!takes_result(cmd->kind)) return fail(P, "%s takes no '=> RESULT'", P->what);
  return parse_result(P, c, cmd, read);
}

/* ---- commands ------------------------------------------------------------------------------- */

/* The word after a command's first word ("add" in "region add"). */
static int subcommand(parser *P, cursor *c, const char *first, const char *const *words,
                      const char *choices, int *i) {
  tok t;
  if (!scenario__peek(c, &t) || scenario__tok_is_arrow(t))
    return fail(P, "%s: missing %s", first, choices);
  scenario__next(c, &t);
  if ((*i = word_index(t, words)) < 0)
    return fail(P, "unknown command '%s %.*s' (expected %s %s)", first, TOK(t), first, choices);
  return 0;
}

static int parse_config(parser *P, cursor *c, scenario_cmd *cmd) {
  static const char *const overlap_words[] = {"nested", "any", NULL};
  tok t, v;
  set_kind(P, cmd, SCENARIO_CONFIG);
  if (arg(P, c, "max_addr=NUMBER or overlap=nested|any", &t)) return -1;
  if (option_is(t, "max_addr", &v)) {
    cmd->config.key = SCENARIO_CONFIG_MAX_ADDR;
    if (to_number(P, v, "max_addr", &cmd->config.max_addr)) return -1;
  } else if (option_is(t, "overlap", &v)) {
    int i = word_index(v, overlap_words);
    if (i < 0) return fail(P, "config: overlap must be nested or any, not '%.*s'", TOK(v));
    cmd->config.key = SCENARIO_CONFIG_OVERLAP;
    cmd->config.overlap = i == 0 ? SCENARIO_OVERLAP_NESTED : SCENARIO_OVERLAP_ANY;
  } else {
    return fail(P, "config: unknown setting '%.*s' (expected max_addr=NUMBER or overlap=...)",
                TOK(t));
  }
  return finish(P, c, cmd, NULL);
}

static int parse_require(parser *P, cursor *c, scenario_cmd *cmd) {
  static const char *const words[] = {"kvm", NULL};
  int i;
  set_kind(P, cmd, SCENARIO_REQUIRE);
  if (arg_word(P, c, "kvm", words, &i)) return -1;
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

static int parse_object(parser *P, cursor *c, scenario_cmd *cmd) {
  static const char *const types[] = {"memfd", "file", NULL};
  scenario_object *o = &cmd->object;
  int i;
  bool seen_fill = false;
  tok t, v;
  set_kind(P, cmd, SCENARIO_OBJECT);
  if (arg_word(P, c, "memfd or file", types, &i)) return -1;
  o->type = i == 0 ? SCENARIO_OBJECT_MEMFD : SCENARIO_OBJECT_FILE;
  if (arg_name(P, c, "NAME", o->name) || arg_pages(P, c, "SIZE", &o->size)) return -1;
  while (next_option(c, &t)) {
    if (!option_is(t, "fill", &v))
      return fail(P, "object: unexpected '%.*s' (expected fill=0xHH or fill=pages:0xHH)", TOK(t));
    if (duplicate_option(P, &seen_fill, t) || parse_fill(P, v, o)) return -1;
  }
  return finish(P, c, cmd, NULL);
}

static int parse_region_add(parser *P, cursor *c, scenario_cmd *cmd) {
  static const char *const types[] = {"ram", "device", NULL};
  scenario_region *r = &cmd->region;
  bool seen_prio = false, seen_type = false;
  tok t, v;
  if (arg_name(P, c, "NAME", r->name) || arg_pages(P, c, "GPA", &r->gpa) ||
      arg_pages(P, c, "SIZE", &r->size))
    return -1;
  while (next_option(c, &t)) {
    if (option_is(t, "prio", &v)) {
      uint64_t prio;
      if (duplicate_option(P, &seen_prio, t) || to_number(P, v, "prio", &prio)) return -1;
      if (prio > 255) return fail(P, "region add: prio '%.*s' is not in 0..255", TOK(v));
      r->prio = (uint8_t)prio;
    } else if (option_is(t, "type", &v)) {
      int i = word_index(v, types);
      if (duplicate_option(P, &seen_type, t)) return -1;
      if (i < 0) return fail(P, "region add: type must be ram or device, not '%.*s'", TOK(v));
      r->type = i == 0 ? SCENARIO_REGION_RAM : SCENARIO_REGION_DEVICE;
    } else {
      return fail(P, "region add: unexpected '%.*s' (expected prio=N or type=ram|device)", TOK(t));
    }
  }
  return finish(P, c, cmd, NULL);
}

static int parse_region(parser *P, cursor *c, scenario_cmd *cmd) {
  static const char *const words[] = {"add", "map", "unmap", "remove", NULL};
  static const scenario_cmd_kind kinds[] = {SCENARIO_REGION_ADD, SCENARIO_REGION_MAP,
                                            SCENARIO_REGION_UNMAP, SCENARIO_REGION_REMOVE};
  int i;
  if (subcommand(P, c, "region", words, "add, map, unmap or remove", &i)) return -1;
  set_kind(P, cmd, kinds[i]);
  if (cmd->kind == SCENARIO_REGION_ADD) return parse_region_add(P, c, cmd);
  if (arg_name(P, c, "NAME", cmd->region.name)) return -1;
  if (cmd->kind == SCENARIO_REGION_MAP) cmd->region.ro = opt_ro(c);
  return finish(P, c, cmd, NULL);
}

static int parse_mapping(parser *P, cursor *c, scenario_cmd *cmd) {
  static const char *const words[] = {"add", "remove", "replace", NULL};
  static const scenario_cmd_kind kinds[] = {SCENARIO_MAPPING_ADD, SCENARIO_MAPPING_REMOVE,
                                            SCENARIO_MAPPING_REPLACE};
  scenario_mapping *m = &cmd->mapping;
  int i;
  if (subcommand(P, c, "mapping", words, "add, remove or replace", &i)) return -1;
  set_kind(P, cmd, kinds[i]);
  if (arg_name(P, c, "REGION", m->region) || arg_pages(P, c, "OFFSET", &m->offset) ||
      arg_pages(P, c, "SIZE", &m->size))
    return -1;
  if (cmd->kind != SCENARIO_MAPPING_REMOVE) {
    if (arg_name(P, c, "OBJECT", m->object) || arg_pages(P, c, "OBJ_OFFSET", &m->obj_offset))
      return -1;
    m->ro = opt_ro(c);
  }
  return finish(P, c, cmd, NULL);
}

static int parse_mapper(parser *P, cursor *c, scenario_cmd *cmd) {
  static const char *const words[] = {"add", "remove", NULL};
  static const char *const modes[] = {"eager", "lazy", NULL};
  int i;
  if (subcommand(P, c, "mapper", words, "add or remove", &i)) return -1;
  set_kind(P, cmd, i == 0 ? SCENARIO_MAPPER_ADD : SCENARIO_MAPPER_REMOVE);
  if (arg_name(P, c, "NAME", cmd->mapper.name)) return -1;
  if (cmd->kind == SCENARIO_MAPPER_ADD) {
    if (arg_word(P, c, "eager or lazy", modes, &i)) return -1;
    cmd->mapper.mode = i == 0 ? SCENARIO_MAPPER_EAGER : SCENARIO_MAPPER_LAZY;
  }
  return finish(P, c, cmd, NULL);
}

static int parse_partition(parser *P, cursor *c, scenario_cmd *cmd) {
  static const char *const words[] = {"add", "remove", NULL};
  static const char *const backends[] = {"soft", "kvm", NULL};
  int i;
  if (subcommand(P, c, "partition", words, "add or remove", &i)) return -1;
  set_kind(P, cmd, i == 0 ? SCENARIO_PARTITION_ADD : SCENARIO_PARTITION_REMOVE);
  if (arg_name(P, c, "NAME", cmd->partition.name)) return -1;
  if (cmd->kind == SCENARIO_PARTITION_ADD) {
    if (arg_word(P, c, "soft or kvm", backends, &i)) return -1;
    cmd->partition.backend = i == 0 ? SCENARIO_PARTITION_SOFT : SCENARIO_PARTITION_KVM;
  }
  return finish(P, c, cmd, NULL);
}

/* The part after the mapper or partition name: GPA LEN, or GPA HEXBYTES. */
static int parse_io(parser *P, cursor *c, scenario_cmd *cmd) {
  scenario_io *io = &cmd->io;
  if (arg_number(P, c, "GPA", &io->gpa)) return -1;
  if (cmd->kind == SCENARIO_READ || cmd->kind == SCENARIO_GUEST_READ) {
    if (arg_number(P, c, "LEN", &io->len)) return -1;
    return finish(P, c, cmd, cmd);
  }
  if (decode_bytes(P, c, "HEXBYTES", NULL, &io->data)) return -1;
  io->len = io->data.len;
  return finish(P, c, cmd, NULL);
}

static int parse_read(parser *P, cursor *c, scenario_cmd *cmd) {
  set_kind(P, cmd, SCENARIO_READ);
  return arg_name(P, c, "MAPPER", cmd->io.target) ? -1 : parse_io(P, c, cmd);
}

static int parse_write(parser *P, cursor *c, scenario_cmd *cmd) {
  set_kind(P, cmd, SCENARIO_WRITE);
  return arg_name(P, c, "MAPPER", cmd->io.target) ? -1 : parse_io(P, c, cmd);
}

static int parse_guest(parser *P, cursor *c, scenario_cmd *cmd) {
  static const char *const words[] = {"read", "write", NULL};
  int i;
  P->what = "guest";
  if (arg_name(P, c, "PARTITION", cmd->io.target) ||
      arg_word(P, c, "read or write after the partition", words, &i))
    return -1;
  set_kind(P, cmd, i == 0 ? SCENARIO_GUEST_READ : SCENARIO_GUEST_WRITE);
  return parse_io(P, c, cmd);
}

static int parse_lock(parser *P, cursor *c, scenario_cmd *cmd) {
  scenario_lock *l = &cmd->lock;
  tok t;
  set_kind(P, cmd, SCENARIO_LOCK);
  if (arg_name(P, c, "MAPPER", l->mapper) || arg_pages(P, c, "GPA", &l->gpa) ||
      arg_pages(P, c, "SIZE", &l->size))
    return -1;
  l->ro = opt_ro(c);
  if (arg(P, c, "'as NAME'", &t)) return -1;
  if (!scenario__tok_is(t, "as"))
    return fail(P, "lock: expected rw, ro or 'as NAME', got '%.*s'", TOK(t));
  if (arg_name(P, c, "NAME", l->name)) return -1;
  return finish(P, c, cmd, NULL);
}

static int parse_unlock(parser *P, cursor *c, scenario_cmd *cmd) {
  set_kind(P, cmd, SCENARIO_UNLOCK);
  return arg_name(P, c, "NAME", cmd->lock.name) ? -1 : finish(P, c, cmd, NULL);
}

static int parse_command(parser *P, cursor *c, scenario_cmd *cmd);

static int parse_async(parser *P, cursor *c, scenario_cmd *cmd) {
  tok t;
  set_kind(P, cmd, SCENARIO_ASYNC);
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

/* The label of await or expect pending: it must name an async command not yet awaited. */
static int arg_label(parser *P, cursor *c, scenario_cmd *cmd, const scenario_cmd **async) {
  if (arg_name(P, c, "LABEL", cmd->label.label)) return -1;
  *async = scenario__label_async(P, cmd->label.label);
  if (!*async) return fail(P, "%s: unknown label '%s'", P->what, cmd->label.label);
  cmd->label.async_index = (size_t)(*async - P->sc->cmds);
  return 0;
}

static int parse_await(parser *P, cursor *c, scenario_cmd *cmd) {
  const scenario_cmd *async;
  set_kind(P, cmd, SCENARIO_AWAIT);
  if (arg_label(P, c, cmd, &async)) return -1;
  const scenario_cmd *inner = async->async.inner;
  bool is_read = inner->kind == SCENARIO_READ || inner->kind == SCENARIO_GUEST_READ;
  return finish(P, c, cmd, is_read ? inner : NULL);
}

/* RANGES item: GPA+SIZE:rw or GPA+SIZE:ro. */
static int parse_range(parser *P, tok t, scenario_range *r) {
  const char *plus = memchr(t.p, '+', t.n);
  const char *colon = plus ? memchr(plus, ':', (size_t)(t.p + t.n - plus)) : NULL;
  if (!colon)
    return fail(P, "%s: malformed range '%.*s' (expected GPA+SIZE:rw or GPA+SIZE:ro)", P->what,
                TOK(t));
  tok gpa = {t.p, (size_t)(plus - t.p)}, size = {plus + 1, (size_t)(colon - plus - 1)};
  tok access = {colon + 1, (size_t)(t.p + t.n - colon - 1)};
  int i = word_index(access, access_words);
  if (i < 0) return fail(P, "%s: range '%.*s' must end in :rw or :ro", P->what, TOK(t));
  if (to_number(P, gpa, "range GPA", &r->gpa) || to_number(P, size, "range SIZE", &r->size))
    return -1;
  if (r->size == 0) return fail(P, "%s: range '%.*s' is empty", P->what, TOK(t));
  if (r->size > UINT64_MAX - r->gpa)
    return fail(P, "%s: range '%.*s' goes past 2^64", P->what, TOK(t));
  r->ro = i == 1;
  return 0;
}

/* RANGES: `none`, or items in ascending order. Adjacent items with the same access are merged,
 * as the actual state is before it is compared. */
static int parse_ranges(parser *P, cursor *c, scenario_ranges *out) {
  cursor scan = *c;
  tok t;
  size_t n = 0;
  while (next_option(&scan, &t)) n++;
  if (n == 0) return fail(P, "%s: missing RANGES (none, or GPA+SIZE:rw|ro ...)", P->what);
  if (scenario__peek(c, &t) && scenario__tok_is(t, "none")) {
    scenario__next(c, &t);
    if (n > 1) return fail(P, "%s: 'none' must stand alone in RANGES", P->what);
    return 0;
  }
  if (!(out->items = calloc(n, sizeof *out->items))) return fail(P, "out of memory");
  while (next_option(c, &t)) {
    scenario_range r = {0};
    if (parse_range(P, t, &r)) return -1;
    scenario_range *last = out->n ? &out->items[out->n - 1] : NULL;
    if (last && r.gpa < last->gpa + last->size)
      return fail(P,
                  "%s: range '%.*s' starts below the end of the one before (RANGES are "
                  "ascending and do not overlap)",
                  P->what, TOK(t));
    if (last && r.gpa == last->gpa + last->size && r.ro == last->ro)
      last->size += r.size;
    else
      out->items[out->n++] = r;
  }
  return 0;
}

static int parse_expect(parser *P, cursor *c, scenario_cmd *cmd) {
  static const char *const words[] = {"pending", "region", "partition", "mapper", NULL};
  static const scenario_cmd_kind kinds[] = {SCENARIO_EXPECT_PENDING, SCENARIO_EXPECT_REGION,
                                            SCENARIO_EXPECT_PARTITION, SCENARIO_EXPECT_MAPPER};
  static const char *const states[] = {"active", "hidden", "unmapped", "partial", NULL};
  static const scenario_region_state state_of[] = {SCENARIO_STATE_ACTIVE, SCENARIO_STATE_HIDDEN,
                                                   SCENARIO_STATE_UNMAPPED, SCENARIO_STATE_PARTIAL};
  const scenario_cmd *async;
  int i;
  if (subcommand(P, c, "expect", words, "pending, region, partition or mapper", &i)) return -1;
  set_kind(P, cmd, kinds[i]);
  switch (cmd->kind) {
  case SCENARIO_EXPECT_PENDING:
    if (arg_label(P, c, cmd, &async)) return -1;
    break;
  case SCENARIO_EXPECT_REGION:
    if (arg_name(P, c, "NAME", cmd->expect_region.name) ||
        arg_word(P, c, "active, hidden, unmapped or partial", states, &i))
      return -1;
    cmd->expect_region.state = state_of[i];
    break;
  default:
    if (arg_name(P, c, "NAME", cmd->expect_ranges.name) ||
        parse_ranges(P, c, &cmd->expect_ranges.ranges))
      return -1;
    break;
  }
  return finish(P, c, cmd, NULL);
}

/* ---- lines and files ------------------------------------------------------------------------ */

/* First words of commands. `operation`: it may follow `async LABEL`; `config`: it must come
 * before every other command. */
static const struct {
  const char *word;
  int (*parse)(parser *P, cursor *c, scenario_cmd *cmd);
  bool operation;
  bool config;
} commands[] = {
    {"config", parse_config, false, true},       {"require", parse_require, false, true},
    {"object", parse_object, true, false},       {"region", parse_region, true, false},
    {"mapping", parse_mapping, true, false},     {"mapper", parse_mapper, true, false},
    {"partition", parse_partition, true, false}, {"read", parse_read, true, false},
    {"write", parse_write, true, false},         {"guest", parse_guest, true, false},
    {"lock", parse_lock, true, false},           {"unlock", parse_unlock, true, false},
    {"async", parse_async, false, false},        {"await", parse_await, false, false},
    {"expect", parse_expect, false, false},
};

static int parse_command(parser *P, cursor *c, scenario_cmd *cmd) {
  tok t;
  scenario__next(c, &t);
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
    if (!scenario__tok_is(t, commands[i].word)) continue;
    if (P->in_async && !commands[i].operation)
      return fail(P, "async: '%.*s' is not an operation that can be started", TOK(t));
    if (commands[i].config && P->past_config)
      return fail(P, "'%.*s' must come before every other command", TOK(t));
    return commands[i].parse(P, c, cmd);
  }
  return fail(P, "unknown command '%.*s'", TOK(t));
}

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
  cmd->line = P->line;
  return cmd;
}

static int parse_line(parser *P, const char *p, const char *end) {
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

  scenario_cmd *cmd = append(P);
  if (!cmd) return fail(P, "out of memory");
  if (parse_command(P, &c, cmd) || scenario__check(P)) return -1;
  switch (cmd->kind) {
  case SCENARIO_CONFIG:
    if (cmd->config.key == SCENARIO_CONFIG_MAX_ADDR)
      P->sc->max_addr = cmd->config.max_addr;
    else
      P->sc->overlap = cmd->config.overlap;
    break;
  case SCENARIO_REQUIRE: P->sc->require_kvm = true; break;
  default: P->past_config = true; break;
  }
  return 0;
}

static int parse_text(const char *text, size_t len, const char *name, scenario **out, char *err,
                      size_t errlen) {
  parser P = {.file = name, .err = err, .errlen = errlen};
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
  P.sc->max_addr = SCENARIO_DEFAULT_MAX_ADDR;
  P.sc->overlap = SCENARIO_OVERLAP_NESTED;

  const char *p = text, *end = text + len;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *eol = nl ? nl : end;
    P.line++;
    if (memchr(p, '\0', (size_t)(eol - p))) {
      fail(&P, "NUL byte in the line");
      goto done;
    }
    if (parse_line(&P, p, eol)) goto done;
    p = nl ? nl + 1 : end;
  }
  rc = 0;
done:
  for (int i = 0; i < SCENARIO__NS_COUNT; i++) scenario__scope_free(&P.live[i]);
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

static void free_cmd(scenario_cmd *cmd) {
  free(cmd->expect.bytes.data);
  switch (cmd->kind) {
  case SCENARIO_WRITE:
  case SCENARIO_GUEST_WRITE: free(cmd->io.data.data); break;
  case SCENARIO_EXPECT_PARTITION:
  case SCENARIO_EXPECT_MAPPER: free(cmd->expect_ranges.ranges.items); break;
  case SCENARIO_ASYNC:
    if (cmd->async.inner) free_cmd(cmd->async.inner);
    free(cmd->async.inner);
    break;
  default: break;
  }
}

void scenario_free(scenario *sc) {
  if (!sc) return;
  for (size_t i = 0; i < sc->ncmds; i++) free_cmd(&sc->cmds[i]);
  free(sc->cmds);
  free(sc->name);
  free(sc);
}
