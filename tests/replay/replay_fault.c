/* replay_fault.c: --fault-check, the runner's side of the fault-injection sweep
 * (tests/fault/sweep.py). The library fails one system call of its choice (MB_FI, see
 * mem/fault_inject.h); what the file expects then no longer holds, so results are not checked.
 * What must hold whatever failed:
 *   - every consumer agrees with the manager: at each quiet point (no operation in flight), each
 *     eager VA mapper (the partitions' own included) has established exactly the mappings of the
 *     visible map, with their access; each lazy one a part of them, never more and never with
 *     another access; each partition maps exactly the visible pieces (holes included), with
 *     their region's access. The visible map, and the consumers the manager knows, come from its
 *     introspection (mb_mm_inspect); the named consumers are asked too (mb_*_ranges), and the
 *     manager must know exactly the consumers the script has;
 *   - the failure is reported: once it was injected, some operation answers an error the file
 *     did not expect, or a state query an error of the runtime (out of memory, ...), or the
 *     world cannot be set up, or the library answers one of the runner's own calls (a post to
 *     its loop, a barrier, a query of the checks) with an error;
 *   - nothing is left: after the teardown, as many fds are open as before, and no mapping of the
 *     library's (a reservation: anonymous, no access; or a view of a backing object) is new;
 *   - nothing hangs: an operation that never completes is allowed only behind a lock the script
 *     holds (a lock the file expected to fail may now succeed); the file stops there.
 * Crashes and memory leaks are the sanitizers' to find. */
#include <dirent.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fault_inject.h"
#include "replay.h"
#include "replay_json.h"

uint64_t replay_fault_injected(void) {
  uint64_t n = 0;
  for (int k = 0; k < MB_FI_KINDS; k++) n += mb_fi_injected((mb_fi_kind)k);
  return n;
}

/* The first error the library answered the runner's own calls with (posts, barriers, the
 * checks' queries) once a failure was injected: the library reported it, to the runner. Any
 * thread (the access worker posts too). */
static struct {
  pthread_mutex_t mu;
  int status;
  char what[96];
} runner = {PTHREAD_MUTEX_INITIALIZER, 0, ""};

void replay_runner_error(const char *what, int status) {
  if (status == 0 || replay_fault_injected() == 0) return;
  pthread_mutex_lock(&runner.mu);
  if (runner.status == 0) {
    runner.status = status;
    snprintf(runner.what, sizeof runner.what, "%s", what);
  }
  pthread_mutex_unlock(&runner.mu);
}

/* "WHAT: ERROR (N)" of the runner's first such error (malloc'd), or NULL. */
static char *runner_error(void) {
  pthread_mutex_lock(&runner.mu);
  char *s = runner.status ? replay_strdupf("%s: %s (%d)", runner.what,
                                           membacking_strerror(runner.status), runner.status)
                          : NULL;
  pthread_mutex_unlock(&runner.mu);
  return s;
}

bool replay_fault_reported(const replay_fault *f) {
  pthread_mutex_lock(&runner.mu);
  bool to_runner = runner.status != 0;
  pthread_mutex_unlock(&runner.mu);
  return f->report_line || to_runner;
}

/* ---- leaks: fds and mappings ------------------------------------------------------------------ */

static uint64_t fd_count(void) {
  DIR *d = opendir("/proc/self/fd");
  uint64_t n = 0;
  if (!d) return 0;
  for (struct dirent *e; (e = readdir(d));)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n - 1; /* the directory's own */
}

/* Smallest reservation worth reporting: thread stacks' guard pages are single pages, a
 * manager's VA range is at least max_addr. */
enum { RESERVATION_MIN = 64 << 10 };

/* The mappings that look like the library's, one "START-END PERMS PATH" line each: views of its
 * backing objects (memfds "membacking:NAME", files in "membacking-XXXXXX" directories) and
 * anonymous ranges without access (VA reservations). */
static char *library_maps(void) {
  FILE *in = fopen("/proc/self/maps", "r");
  char *text = NULL;
  size_t len = 0;
  FILE *out = open_memstream(&text, &len);
  char line[4096];
  while (in && out && fgets(line, sizeof line, in)) {
    unsigned long long a, b;
    char perms[8] = "", path[4096] = "";
    if (sscanf(line, "%llx-%llx %7s %*s %*s %*s %4095[^\n]", &a, &b, perms, path) < 3) continue;
    bool view = strstr(path, "membacking") != NULL;
    bool reservation = path[0] == '\0' && strcmp(perms, "---p") == 0 && b - a >= RESERVATION_MIN;
    if (view || reservation) fprintf(out, "%llx-%llx %s %s\n", a, b, perms, path);
  }
  if (in) fclose(in);
  if (out) fclose(out);
  return text;
}

/* Does [a, b) overlap a range of the `before` lines? A range the sanitizer's allocator split
 * off one it had at the start is not new. */
static bool overlaps_before(const char *before, unsigned long long a, unsigned long long b) {
  for (const char *p = before; p && *p;) {
    unsigned long long x, y;
    if (sscanf(p, "%llx-%llx", &x, &y) == 2 && x < b && a < y) return true;
    p = strchr(p, '\n');
    p = p ? p + 1 : NULL;
  }
  return false;
}

/* The library's mappings now that were not there before (malloc'd lines; NULL: none). */
static char *new_maps(const char *before) {
  char *now = library_maps(), *text = NULL;
  size_t len = 0;
  FILE *out = open_memstream(&text, &len);
  bool first = true;
  for (char *p = now, *nl; out && p && *p; p = nl ? nl + 1 : NULL) {
    nl = strchr(p, '\n');
    if (nl) *nl = '\0';
    unsigned long long a, b;
    if (sscanf(p, "%llx-%llx", &a, &b) == 2 && !overlaps_before(before, a, b)) {
      fprintf(out, "%s%s", first ? "" : "; ", p);
      first = false;
    }
  }
  if (out) fclose(out);
  free(now);
  if (text && !*text) {
    free(text);
    text = NULL;
  }
  return text;
}

void replay_fault_begin(replay_fault *f) {
  *f = (replay_fault){0};
  pthread_mutex_lock(&runner.mu);
  runner.status = 0;
  pthread_mutex_unlock(&runner.mu);
  uv_loop_t warm; /* libuv's first loop opens a pipe for good (its signal lock): open it now */
  if (uv_loop_init(&warm) == 0) uv_loop_close(&warm);
  f->fds = fd_count();
  f->maps = library_maps();
}

bool replay_fault_end(replay_fault *f, char **why) {
  uint64_t fds = fd_count();
  char *maps = new_maps(f->maps);
  bool ok = true;
  if (fds != f->fds) {
    *why = replay_strdupf("tearing down / %" PRIu64 " fds open, %" PRIu64 " before", fds, f->fds);
    ok = false;
  } else if (maps && mb_fi_injected(MB_FI_MUNMAP) > 0) {
    /* the kernel (so the injection says) kept those pages: the library cannot give them back */
    f->kept_maps = maps;
    maps = NULL;
  } else if (maps) {
    *why = replay_strdupf("tearing down / the library's mappings are left: %s", maps);
    ok = false;
  }
  free(maps);
  return ok;
}

void replay_fault_free(replay_fault *f) {
  free(f->maps);
  free(f->kept_maps);
  free(f->report_cmd);
  free(f->inject_cmd);
  *f = (replay_fault){0};
}

/* ---- what happened ---------------------------------------------------------------------------- */

static const char *injected_kinds(char *buf, size_t size) {
  size_t n = 0;
  buf[0] = '\0';
  for (int k = 0; k < MB_FI_KINDS; k++) {
    uint64_t i = mb_fi_injected((mb_fi_kind)k);
    if (i && n < size)
      n += (size_t)snprintf(buf + n, size - n, "%s%s x%" PRIu64, n ? ", " : "",
                            mb_fi_kind_name((mb_fi_kind)k), i);
  }
  return buf;
}

/* Who reported the failure, in words (malloc'd). */
static char *report_text(const replay_fault *f) {
  char *to_runner = runner_error(), *s;
  const char *cmd = f->report_cmd ? f->report_cmd : "?";
  const char *token = mb_error_token(f->report_status);
  if (!f->report_line && to_runner)
    s = replay_strdupf("reported to the runner: %s", to_runner);
  else if (!f->report_line)
    s = replay_strdupf("not reported");
  else if (!f->report_status) /* setting up: its message says it */
    s = replay_strdupf("reported at line %u '%s'", f->report_line, cmd);
  else
    s = replay_strdupf("reported at line %u '%s': %s (%d)", f->report_line, cmd,
                       token ? token : membacking_strerror(f->report_status), f->report_status);
  free(to_runner);
  return s;
}

char *replay_fault_summary(const replay_fault *f) {
  const char *spec = getenv("MB_FI");
  char kinds[256];
  if (replay_fault_injected() == 0)
    return replay_strdupf("MB_FI=%s: nothing injected (no such call)", spec ? spec : "");
  injected_kinds(kinds, sizeof kinds);
  char *when = f->inject_line ? replay_strdupf("during line %u '%s'", f->inject_line,
                                               f->inject_cmd ? f->inject_cmd : "?")
                              : replay_strdupf("during the teardown");
  char *report = report_text(f);
  char *s = replay_strdupf("MB_FI=%s: injected %s %s; %s; %u results differed%s%s%s%s",
                           spec ? spec : "", kinds, when ? when : "?", report ? report : "?",
                           f->diverged, f->stopped_line ? "; stopped behind a held lock" : "",
                           f->kept_maps ? "; VA the failed munmap kept: " : "",
                           f->kept_maps ? f->kept_maps : "",
                           f->inspect_failed ? "; an introspection failed" : "");
  free(when);
  free(report);
  return s;
}

/* An error answered after the injection reports it: an operation's that the file did not
 * expect, or a state query's that is no code of the format (notfound there is the echo of an
 * add that failed earlier, not a report). */
static void note_report(replay_fault *f, const replay_op *op, const scenario_cmd *shown) {
  bool query = !scenario_cmd_is_operation(op->cmd->kind);
  if (f->report_line || op->status == 0 || op->refusal || replay_fault_injected() == 0 ||
      (query && mb_error_token(op->status)))
    return;
  f->report_line = shown->line;
  f->report_status = op->status;
  f->report_cmd = replay_command_text(shown);
}

void replay_fault_result(replay_world *w, const replay_op *op, const scenario_cmd *shown,
                         bool matched) {
  if (!matched) note_report(w->fault, op, shown);
}

void replay_fault_unawaited(replay_world *w) {
  for (replay_op *op = w->ops; op; op = op->next)
    if (replay_op_is_done(op) && scenario_cmd_is_operation(op->cmd->kind))
      note_report(w->fault, op, op->cmd);
}

/* ---- consumers against the visible map -------------------------------------------------------- */

/* Ranges as the check builds them: an mb_range_list grown item by item. */
typedef struct list {
  mb_range_list *l;
  size_t cap;
} list;

static bool list_add(list *x, uint64_t gpa, uint64_t size, bool writable) {
  if (!x->l || x->l->count == x->cap) {
    size_t cap = x->cap ? 2 * x->cap : 16;
    mb_range_list *l = realloc(x->l, sizeof *l + cap * sizeof l->ranges[0]);
    if (!l) return false;
    if (!x->l) l->count = 0;
    x->l = l;
    x->cap = cap;
  }
  x->l->ranges[x->l->count++] = (mb_part_range){gpa, size, writable};
  return true;
}

/* JSON [{"gpa":..,"size":..,"access":"rw"|"ro"}, ...] appended to x. */
static bool list_from_json(list *x, const rjson *arr) {
  if (!arr || arr->type != RJSON_ARRAY) return false;
  for (size_t i = 0; i < arr->n; i++) {
    const rjson *r = &arr->items[i];
    const char *access = rjson_str(r, "access", "?");
    if (!list_add(x, rjson_u64(r, "gpa", 0), rjson_u64(r, "size", 0), strcmp(access, "rw") == 0))
      return false;
  }
  return true;
}

/* What the manager's visible map says each kind of consumer must show. */
typedef struct expected {
  scenario_ranges pieces;   /* a partition: every visible piece, its region's access */
  scenario_ranges mappings; /* an eager mapper: every visible mapping, its effective access */
} expected;

static bool norm(list *x, scenario_ranges *out) {
  mb_range_list empty = {0};
  bool ok = replay_ranges_normalise(x->l ? x->l : &empty, out);
  free(x->l);
  *x = (list){0};
  return ok;
}

static bool expected_from(const rjson *doc, expected *e) {
  const rjson *vis = rjson_get(doc, "visible");
  list pieces = {0}, maps = {0};
  bool ok = vis && vis->type == RJSON_ARRAY;
  for (size_t i = 0; ok && i < vis->n; i++) {
    const rjson *p = &vis->items[i];
    ok = list_add(&pieces, rjson_u64(p, "gpa", 0), rjson_u64(p, "size", 0),
                  strcmp(rjson_str(p, "access", "?"), "rw") == 0) &&
         list_from_json(&maps, rjson_get(p, "mappings"));
  }
  ok = norm(&pieces, &e->pieces) && ok;
  ok = norm(&maps, &e->mappings) && ok;
  return ok;
}

/* A lazy mapper's ranges: each inside one visible mapping run of the same access. */
static bool within(const scenario_ranges *have, const scenario_ranges *visible) {
  for (size_t i = 0; i < have->n; i++) {
    const scenario_range *h = &have->items[i];
    bool inside = false;
    for (size_t j = 0; j < visible->n && !inside; j++) {
      const scenario_range *v = &visible->items[j];
      inside = v->ro == h->ro && v->gpa <= h->gpa && h->gpa + h->size <= v->gpa + v->size;
    }
    if (!inside) return false;
  }
  return true;
}

/* "WHO shows RANGES / the visible map says RANGES" (malloc'd). */
static char *disagreement(const char *who, const scenario_ranges *have,
                          const scenario_ranges *want, bool lazy) {
  char *h = replay_ranges_text(have), *v = replay_ranges_text(want);
  char *s = replay_strdupf("%s shows %s; the visible map has %s%s", who, h ? h : "?", v ? v : "?",
                           lazy ? " (a lazy mapper may show less, never more)" : "");
  free(h);
  free(v);
  return s;
}

/* Compare one consumer's ranges (taken over: freed here) with what it must show. */
static char *compare(const char *who, list *have, const scenario_ranges *want, bool lazy) {
  scenario_ranges got;
  if (!norm(have, &got)) return replay_strdupf("%s: out of memory", who);
  bool ok = lazy ? within(&got, want) : replay_ranges_equal(&got, want);
  char *s = ok ? NULL : disagreement(who, &got, want, lazy);
  free(got.items);
  return s;
}

/* A named consumer's own answer (mb_mapper_ranges / mb_partition_ranges), on the client loop. */
typedef struct answer {
  bool done;
  int status;
  mb_range_list *l;
} answer;

static void on_ranges(void *ctx, int status, uint64_t value) {
  answer *a = ctx;
  a->status = status;
  a->l = status == 0 ? (mb_range_list *)(uintptr_t)value : NULL;
  a->done = true;
}

static int ask_ranges(replay_world *w, const replay_entry *e, list *out) {
  answer a = {false, 0, NULL};
  if (e->mapper) mb_mapper_ranges(e->mapper, on_ranges, &a);
  else mb_partition_ranges(e->partition, on_ranges, &a);
  while (!a.done) uv_run(&w->uv, UV_RUN_ONCE);
  *out = (list){a.l, a.l ? a.l->count : 0};
  replay_runner_error(e->mapper ? "mb_mapper_ranges" : "mb_partition_ranges", a.status);
  return a.status;
}

/* The entries of a table, shadowed ones included (the manager still has those). */
static size_t known(replay_world *w, replay_ns ns) { return w->tables[ns].n; }

static char *check_mappers(replay_world *w, const rjson *doc, const expected *e) {
  const rjson *ms = rjson_get(doc, "mappers");
  if (!ms || ms->type != RJSON_ARRAY) return replay_strdupf("introspection lists no mappers");
  size_t own = 0;
  char *why = NULL;
  for (size_t i = 0; i < ms->n && !why; i++) {
    const rjson *m = &ms->items[i];
    bool primary = rjson_bool(m, "primary", false), eager = rjson_bool(m, "eager", true);
    const char *base = rjson_str(m, "base", "?");
    char who[SCENARIO_NAME_SIZE + 64];
    snprintf(who, sizeof who, "the partitions' own mapper");
    if (!primary) {
      own++;
      snprintf(who, sizeof who, "a mapper the script does not have (base %s)", base);
      for (size_t j = 0; j < known(w, REPLAY_NS_MAPPER); j++) {
        const replay_entry *n = w->tables[REPLAY_NS_MAPPER].items[j];
        char b[32];
        snprintf(b, sizeof b, "%p", (void *)mb_mapper_base(n->mapper));
        if (strcmp(b, base) == 0) snprintf(who, sizeof who, "mapper %s (%s)", n->name,
                                           eager ? "eager" : "lazy");
      }
    }
    list have = {0};
    if (!list_from_json(&have, rjson_get(m, "established")))
      why = replay_strdupf("%s: no established ranges in the introspection", who);
    char *d = compare(who, &have, &e->mappings, !eager);
    if (!why) why = d;
    else free(d);
  }
  if (!why && own != known(w, REPLAY_NS_MAPPER))
    why = replay_strdupf("the manager has %zu mappers, the script %zu", own,
                         known(w, REPLAY_NS_MAPPER));
  for (size_t j = 0; j < known(w, REPLAY_NS_MAPPER) && !why; j++) {
    const replay_entry *n = w->tables[REPLAY_NS_MAPPER].items[j];
    list have = {0};
    char who[SCENARIO_NAME_SIZE + 32];
    snprintf(who, sizeof who, "mapper %s, asked,", n->name);
    if (ask_ranges(w, n, &have) == 0) /* else an injected failure: reported to the runner */
      why = compare(who, &have, &e->mappings, !mb_mapper_eager(n->mapper));
  }
  return why;
}

static char *check_partitions(replay_world *w, const rjson *doc, const expected *e) {
  const rjson *ps = rjson_get(doc, "partitions");
  if (!ps || ps->type != RJSON_ARRAY) return replay_strdupf("introspection lists no partitions");
  char *why = NULL;
  for (size_t i = 0; i < ps->n && !why; i++) {
    char who[64];
    snprintf(who, sizeof who, "partition #%zu of the manager's", i);
    list have = {0};
    if (!list_from_json(&have, rjson_get(&ps->items[i], "slots")))
      why = replay_strdupf("%s: no slots in the introspection", who);
    char *d = compare(who, &have, &e->pieces, false);
    if (!why) why = d;
    else free(d);
  }
  if (!why && ps->n != known(w, REPLAY_NS_PARTITION))
    why = replay_strdupf("the manager has %zu partitions, the script %zu", ps->n,
                         known(w, REPLAY_NS_PARTITION));
  for (size_t j = 0; j < known(w, REPLAY_NS_PARTITION) && !why; j++) {
    const replay_entry *n = w->tables[REPLAY_NS_PARTITION].items[j];
    list have = {0};
    char who[SCENARIO_NAME_SIZE + 32];
    snprintf(who, sizeof who, "partition %s", n->name);
    if (ask_ranges(w, n, &have) == 0) /* else an injected failure: reported to the runner */
      why = compare(who, &have, &e->pieces, false);
  }
  return why;
}

/* NULL when every consumer agrees with the visible map, else what disagrees (malloc'd). */
static char *check_consumers(replay_world *w) {
  char *json = NULL;
  int rc = mb_mm_inspect_sync(w->mm, &json);
  if (rc != 0) {
    free(json);
    w->fault->inspect_failed++;
    replay_runner_error("mb_mm_inspect_sync", rc);
    return NULL; /* nothing to compare with */
  }
  w->fault->checked_bytes += strlen(json);
  rjson *doc = rjson_parse(json);
  expected e = {{NULL, 0}, {NULL, 0}};
  char *why = NULL;
  if (!doc) why = replay_strdupf("the introspection is not JSON: %.200s", json);
  else if (!expected_from(doc, &e)) why = replay_strdupf("the introspection has no visible map");
  if (!why) why = check_mappers(w, doc, &e);
  if (!why) why = check_partitions(w, doc, &e);
  free(e.pieces.items);
  free(e.mappings.items);
  rjson_free(doc);
  free(json);
  return why;
}

static bool quiet(replay_world *w) {
  for (replay_op *o = w->ops; o; o = o->next)
    if (!replay_op_is_done(o)) return false;
  return true;
}

/* Which quiet points are checked: before the injection nothing can disagree (every scenario
 * passes without one), so the command it fired in, the CHECK_AFTER commands that follow, every
 * command whose result differed, and the last one; once CHECK_BYTES of introspection were read,
 * the last one only. (A check costs O(n) in a file of n mappings: checking every command of
 * large.mbs would take minutes a run.) A run without an injection, the sweep's counting run,
 * checks nothing: the calls the checks make are never the n-th. */
enum { CHECK_AFTER = 50 };
#define CHECK_BYTES (UINT64_C(8) << 20)

void replay_fault_note(replay_fault *f, const scenario_cmd *cmd) {
  if (!f->inject_line && replay_fault_injected() > 0) {
    f->inject_line = cmd->line;
    f->inject_cmd = replay_command_text(cmd);
  }
}

bool replay_fault_after(replay_world *w, const scenario_cmd *cmd, bool diverged, bool last,
                        char **why) {
  replay_fault *f = w->fault;
  replay_fault_note(f, cmd);
  bool soon = f->inject_line && f->since_inject++ <= CHECK_AFTER;
  bool afford = f->checked_bytes < CHECK_BYTES;
  if (f->stuck || !f->inject_line || !(((soon || diverged) && afford) || last)) return true;
  if (w->txn.open) return true; /* consumers show the state of the begin until the commit */
  replay_settle(w);
  if (!quiet(w)) return true; /* consumers may differ while an operation is under way */
  char *d = check_consumers(w);
  if (!d) return true;
  char *text = replay_command_text(cmd);
  *why = replay_strdupf("%s / consumers disagree with the manager afterwards: %s",
                        text ? text : "?", d);
  free(text);
  free(d);
  return false;
}
