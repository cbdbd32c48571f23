/* replay_check.c: comparing what happened with what a scenario expects, and saying what
 * happened in the scenario's own syntax ("got error:readonly", "got 0+16K:rw 16K+16K:ro"). */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "replay.h"

char *replay_strdupf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *s = NULL;
  if (vasprintf(&s, fmt, ap) < 0) s = NULL;
  va_end(ap);
  return s;
}

/* Capture what print(f, arg) writes; newlines become spaces so it stays on one line. */
static char *capture(void (*print)(FILE *f, const void *arg), const void *arg) {
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  if (!f) return NULL;
  print(f, arg);
  if (fclose(f) != 0) {
    free(text);
    return NULL;
  }
  for (char *p = text; p && *p; p++)
    if (*p == '\n' || *p == '\r') *p = ' ';
  return text;
}

static void print_command(FILE *f, const void *cmd) { scenario_print_command(f, cmd); }

char *replay_command_text(const scenario_cmd *cmd) { return capture(print_command, cmd); }

/* ---- results ----------------------------------------------------------------------------------- */

const char *replay_error_token(int status) { return mb_result_token(status); }

static bool is_read(scenario_cmd_kind kind) {
  return kind == SCENARIO_READ || kind == SCENARIO_GUEST_READ;
}

static char *bytes_text(const uint8_t *data, size_t len) {
  size_t n = scenario_format_bytes(NULL, 0, data, len);
  char *s = malloc(n + 1);
  if (s) scenario_format_bytes(s, n + 1, data, len);
  return s;
}

static char *pages_got(const replay_op *op);

/* What an operation's completion amounts to, in scenario terms. */
static char *happened(const replay_op *op) {
  if (op->refusal) return replay_strdupf("%s", op->refusal);
  const char *token = replay_error_token(op->status);
  if (op->status != 0 && token) return replay_strdupf("got error:%s", token);
  if (op->status != 0)
    return replay_strdupf("failed: %s (%d)", membacking_strerror(op->status), op->status);
  if (op->cmd->kind == SCENARIO_DIRTY_SYNC) return pages_got(op);
  if (!is_read(op->cmd->kind)) return replay_strdupf("got ok");
  char *bytes = bytes_text(op->buf, op->len);
  char *s = replay_strdupf("got %s", bytes ? bytes : "?");
  free(bytes);
  return s;
}

/* A dirty sync's answer against PAGES: both normalised (the library's ranges are all
 * writable, PAGES items never ro). Out of memory: no match (happened() says it again). */
static bool pages_equal(const replay_op *op, const scenario_ranges *want) {
  scenario_ranges actual;
  if (!replay_ranges_normalise(op->ranges, &actual)) return false;
  bool ok = replay_ranges_equal(&actual, want);
  free(actual.items);
  return ok;
}

/* A refused op (the runner's memory limit) meets no expectation: it is not the library's
 * answer, whatever its status. */
bool replay_check_result(const replay_op *op, const scenario_expect *e, char **got) {
  const char *token = replay_error_token(op->status);
  bool ok = false;
  switch (e->kind) {
  case SCENARIO_EXPECT_NONE:
  case SCENARIO_EXPECT_OK: ok = op->status == 0; break;
  case SCENARIO_EXPECT_ERROR:
    ok = op->status != 0 && token && strcmp(token, scenario_error_name(e->error)) == 0;
    break;
  case SCENARIO_EXPECT_BYTES:
    ok = op->status == 0 && op->len == e->bytes.len &&
         (op->len == 0 || memcmp(op->buf, e->bytes.data, op->len) == 0);
    break;
  case SCENARIO_EXPECT_PAGES: ok = op->status == 0 && pages_equal(op, &e->pages); break;
  }
  if (op->refusal) ok = false;
  if (!ok) *got = happened(op);
  return ok;
}

/* ---- region states ----------------------------------------------------------------------------- */

static const char *state_name(int state) {
  switch (state) {
  case MB_REGION_UNMAPPED: return "unmapped";
  case MB_REGION_HIDDEN: return "hidden";
  case MB_REGION_ACTIVE: return "active";
  case MB_REGION_PARTIAL: return "partial";
  default: return "?";
  }
}

static int state_of(scenario_region_state s) {
  switch (s) {
  case SCENARIO_STATE_ACTIVE: return MB_REGION_ACTIVE;
  case SCENARIO_STATE_HIDDEN: return MB_REGION_HIDDEN;
  case SCENARIO_STATE_UNMAPPED: return MB_REGION_UNMAPPED;
  case SCENARIO_STATE_PARTIAL: return MB_REGION_PARTIAL;
  }
  return -1;
}

static bool check_region(const replay_op *op, const scenario_cmd *expect, char **got) {
  int state = (int)op->value;
  if (state == state_of(expect->expect_region.state)) return true;
  *got = replay_strdupf("got %s", state_name(state));
  return false;
}

/* ---- ranges ------------------------------------------------------------------------------------ */

static int by_gpa(const void *a, const void *b) {
  const scenario_range *x = a, *y = b;
  return x->gpa < y->gpa ? -1 : x->gpa > y->gpa;
}

bool replay_ranges_normalise(const mb_range_list *l, scenario_ranges *r) {
  *r = (scenario_ranges){NULL, 0};
  if (!l || l->count == 0) return true;
  if (!(r->items = calloc(l->count, sizeof *r->items))) return false;
  for (size_t i = 0; i < l->count; i++)
    r->items[i] =
        (scenario_range){l->ranges[i].gpa, l->ranges[i].size, !l->ranges[i].writable, false};
  qsort(r->items, l->count, sizeof *r->items, by_gpa);
  for (size_t i = 0; i < l->count; i++) {
    scenario_range *last = r->n ? &r->items[r->n - 1] : NULL;
    if (last && last->gpa + last->size == r->items[i].gpa && last->ro == r->items[i].ro)
      last->size += r->items[i].size;
    else
      r->items[r->n++] = r->items[i];
  }
  return true;
}

bool replay_ranges_equal(const scenario_ranges *a, const scenario_ranges *b) {
  if (a->n != b->n) return false;
  for (size_t i = 0; i < a->n; i++) {
    const scenario_range *x = &a->items[i], *y = &b->items[i];
    if (x->gpa != y->gpa || x->size != y->size || x->ro != y->ro) return false;
  }
  return true;
}

/* RANGES text through the scenario printer: an `expect mapper` line, minus its head. */
char *replay_ranges_text(const scenario_ranges *r) {
  scenario_cmd c = {.kind = SCENARIO_EXPECT_MAPPER};
  c.expect_ranges.name[0] = 'x';
  c.expect_ranges.ranges = *r;
  char *line = replay_command_text(&c);
  const char *head = "expect mapper x ";
  char *s = line && strncmp(line, head, strlen(head)) == 0
                ? replay_strdupf("%s", line + strlen(head))
                : NULL;
  free(line);
  return s;
}

/* PAGES text through the scenario printer: an expectation of pages. */
static void print_pages(FILE *f, const void *pages) {
  scenario_expect e = {.kind = SCENARIO_EXPECT_PAGES, .pages = *(const scenario_ranges *)pages};
  scenario_print_expect(f, &e);
}

char *replay_pages_text(const scenario_ranges *r) { return capture(print_pages, r); }

/* "got PAGES" for a dirty sync that succeeded. */
static char *pages_got(const replay_op *op) {
  scenario_ranges actual;
  if (!replay_ranges_normalise(op->ranges, &actual)) return replay_strdupf("failed: out of memory");
  char *text = replay_pages_text(&actual);
  char *s = text ? replay_strdupf("got %s", text) : NULL;
  free(text);
  free(actual.items);
  return s;
}

static char *ranges_text(const scenario_ranges *r) {
  char *text = replay_ranges_text(r);
  char *s = text ? replay_strdupf("got %s", text) : NULL;
  free(text);
  return s;
}

static bool check_ranges(const replay_op *op, const scenario_cmd *expect, char **got) {
  scenario_ranges actual;
  if (!replay_ranges_normalise(op->ranges, &actual)) {
    *got = replay_strdupf("failed: out of memory");
    return false;
  }
  bool ok = replay_ranges_equal(&actual, &expect->expect_ranges.ranges);
  if (!ok) *got = ranges_text(&actual);
  free(actual.items);
  return ok;
}

bool replay_check_state(const replay_op *op, const scenario_cmd *expect, char **got) {
  if (op->status != 0) {
    *got = happened(op);
    return false;
  }
  if (expect->kind == SCENARIO_EXPECT_REGION) return check_region(op, expect, got);
  if (expect->kind == SCENARIO_EXPECT_PROTECTION) return replay_check_protection(op, expect, got);
  return check_ranges(op, expect, got);
}
