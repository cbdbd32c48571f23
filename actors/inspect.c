/* inspect.c: a manager's whole state as JSON (mb_mm_inspect), gathered piece by piece, each
 * on its actor's own thread with direct reads: regions with their mappings, the visible map,
 * what is pending, each VA mapper's established ranges, fault counters and held locks, each
 * partition's slots, and the request latency of every stage (region manager, mapping
 * manager, each VA mapper, each partition mapper). The blocking form runs each piece with
 * mb_loop_exec; the asynchronous form posts each piece to its loop, which posts the next,
 * and the last answers the caller: the caller's loop never waits. A signal can dump it too
 * (mb_mm_inspect_on_signal). */
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>

#include "api_internal.h"
#include "fault_inject.h" /* MB_FI_ALLOC: tests fail these allocations */
#include "json_out.h"
/* Per message kind: "samples" is the number of requests timed (one in MB_LATENCY_SAMPLE),
 * not of requests handled: named so that nobody reads it as a request count. */
static void latency_json(FILE *f, const mb_actor *a) {
  const mb_latency *l = NULL;
  size_t n = a ? mb_actor_latency(a, &l) : 0;
  bool first = true;
  fputc('{', f);
  for (size_t i = 0; i < n; i++) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", l[i].proto ? l[i].proto->name : "?",
             l[i].proto && l[i].kind < l[i].proto->nkinds ? l[i].proto->kind_names[l[i].kind]
                                                          : "?");
    mb__json_sep(f, &first);
    mb__json_str(f, key);
    fprintf(f, ":{\"samples\":%" PRIu64 ",\"p50_ns\":%" PRIu64 ",\"p99_ns\":%" PRIu64
               ",\"max_ns\":%" PRIu64 "}",
            l[i].count, mb_latency_quantile(&l[i], 0.5), mb_latency_quantile(&l[i], 0.99),
            l[i].max_ns);
  }
  fputc('}', f);
}

/* The pieces, in the order of the JSON: the managers, then the mappers (the primary first),
 * then the partitions. A consumer is named by its handle and read on its own loop, where it
 * is killed: one removed meanwhile is left out. */
typedef enum piece_kind { PIECE_MANAGERS, PIECE_MAPPER, PIECE_PARTITION, PIECE_END } piece_kind;

typedef struct piece {
  piece_kind kind;
  mb__handle h;
  mb_loop *loop;
} piece;

typedef struct insp {
  mb_mm *mm;     /* a reference */
  FILE *f;       /* a memstream into text */
  char *text;
  size_t len;
  piece *pieces;
  size_t n, next;
  bool first;    /* no element yet in the current array */
  int rc;
  mb__answer answer; /* the asynchronous form's */
  mb_done_fn done;
  void *ctx;
} insp;

static void at_managers(insp *in) {
  mb_mm *mm = in->mm;
  pthread_mutex_lock(&mm->lock);
  bool dead = mm->dead; /* destroy_managers runs on this loop, after dead is set */
  pthread_mutex_unlock(&mm->lock);
  if (dead || !mm->rm) { /* or a creation refused later (membacking.c, primary_registered) */
    in->rc = MB_EGONE;
    return;
  }
  mb__region_manager_inspect(mm->rm, in->f);
  fputs(",\"stages\":{\"region_manager\":", in->f);
  latency_json(in->f, mm->rm);
  fputs(",\"mapping_manager\":", in->f);
  latency_json(in->f, mm->mm);
  fputc('}', in->f);
}

static void at_mapper(insp *in, mb_loop *loop, mb__handle h) {
  mb_mapper *m = mb__h_obj(h, MB__H_MAPPER);
  if (!m) return;
  mb__json_sep(in->f, &in->first);
  mb_vam_stats s = mb_vam_stats_get(m->vam);
  fprintf(in->f, "{\"primary\":%s,\"eager\":%s,\"base\":\"%p\",\"faults\":%" PRIu64
                 ",\"resolved\":%" PRIu64 ",\"unmapped\":%" PRIu64 ",",
          m == &in->mm->primary ? "true" : "false", mb_vam_eager(m->vam) ? "true" : "false",
          (void *)mb_vam_base(m->vam), s.faults, s.resolved, s.unmapped);
  mb__vam_inspect(m->vam, in->f);
  fputs(",\"latency\":", in->f);
  latency_json(in->f, mb_actor_at(loop, mb_vam_addr(m->vam)));
  fputc('}', in->f);
}

static void at_partition(insp *in, mb__handle h) {
  mb_partition *p = mb__h_obj(h, MB__H_PARTITION);
  if (!p) return;
  mb_part_range *r = NULL;
  uint32_t n = 0;
  bool first = true;
  mb__json_sep(in->f, &in->first);
  fputs("{\"backend\":", in->f);
  mb__json_str(in->f, p->ops->name ? p->ops->name : "?");
  fputs(",\"slots\":[", in->f);
  if (mb__partition_mapper_ranges(p->actor, &r, &n) == 0)
    for (uint32_t i = 0; i < n; i++) {
      mb__json_sep(in->f, &first);
      fprintf(in->f, "{\"gpa\":%" PRIu64 ",\"size\":%" PRIu64 ",\"access\":\"%s\"}", r[i].gpa,
              r[i].size, r[i].writable ? "rw" : "ro");
    }
  free(r);
  fputs("],\"latency\":", in->f);
  latency_json(in->f, p->actor);
  fputc('}', in->f);
}

/* The JSON between a piece of kind `from` and one of kind `to`. */
static void between(insp *in, piece_kind from, piece_kind to) {
  static const char *const open[] = {"", ",\"mappers\":[", "],\"partitions\":[", "]}\n"};
  for (int k = (int)from + 1; k <= (int)to; k++) {
    fputs(open[k], in->f);
    in->first = true;
  }
}

static piece_kind kind_at(const insp *in, size_t i) {
  return i < in->n ? in->pieces[i].kind : PIECE_END;
}

/* On the piece's loop: the next piece, and what comes before it. */
static void piece_run(mb_loop *loop, void *arg) {
  insp *in = arg;
  piece *p = &in->pieces[in->next];
  if (in->next > 0) between(in, kind_at(in, in->next - 1), p->kind);
  if (mb_loop_stopping(loop)) in->rc = MB_ESTOPPED;
  else if (p->kind == PIECE_MANAGERS) at_managers(in);
  else if (p->kind == PIECE_MAPPER) at_mapper(in, loop, p->h);
  else at_partition(in, p->h);
  in->next++;
}

/* The pieces of a manager (under its lock); false when out of memory. */
static bool snapshot(insp *in) {
  mb_mm *mm = in->mm;
  pthread_mutex_lock(&mm->lock);
  size_t n = 2;
  for (mb_mapper *m = mm->mappers; m; m = m->next) n++;
  for (mb_partition *p = mm->partitions; p; p = p->next) n++;
  piece *v = in->pieces = mb__malloc(n * sizeof *v);
  if (v) {
    v[0] = (piece){PIECE_MANAGERS, 0, mm->loop};
    v[1] = (piece){PIECE_MAPPER, mm->primary.h, mm->part_loop};
    in->n = 2;
    for (mb_mapper *m = mm->mappers; m; m = m->next)
      v[in->n++] = (piece){PIECE_MAPPER, m->h, m->loop};
    for (mb_partition *p = mm->partitions; p; p = p->next)
      v[in->n++] = (piece){PIECE_PARTITION, p->h, p->loop};
  }
  pthread_mutex_unlock(&mm->lock);
  return v != NULL;
}

static void insp_free(insp *in) {
  if (in->f) fclose(in->f);
  free(in->text);
  free(in->pieces);
  mb__mm_unref(in->mm);
  free(in);
}

/* An inspection of mm, its first bytes written; NULL when out of memory. */
static insp *insp_open(mb_mm *mm) {
  insp *in = mb__calloc(1, sizeof *in);
  if (!in) return NULL;
  mb__mm_ref(mm);
  in->mm = mm;
  in->f = open_memstream(&in->text, &in->len);
  if (!in->f || !snapshot(in)) {
    insp_free(in);
    return NULL;
  }
  fprintf(in->f, "{\"max_addr\":%" PRIu64 ",\"overlap\":\"%s\",", mm->max_addr,
          mm->overlap == MB_OVERLAP_ANY ? "any" : "nested");
  return in;
}

/* The text, once every piece is in (NULL, and in->rc set, on any failure). */
static char *insp_text(insp *in) {
  if (!in->rc) between(in, kind_at(in, in->n - 1), PIECE_END);
  int rc = fclose(in->f) ? MB_ENOMEM : 0;
  in->f = NULL;
  if (!in->rc) in->rc = rc;
  char *text = in->rc ? NULL : in->text;
  if (in->rc) free(in->text);
  in->text = NULL;
  return text;
}

/* The blocking form's pieces, each on its loop in turn. */
static void gather(insp *in) {
  while (!in->rc && in->next < in->n) {
    int rc = mb_loop_exec(in->pieces[in->next].loop, piece_run, in);
    if (rc) in->rc = rc;
  }
}

int mb_mm_inspect_sync(mb_mm *mm, char **json) {
  *json = NULL;
  insp *in = insp_open(mm);
  if (!in) return MB_ENOMEM;
  gather(in);
  *json = insp_text(in);
  int rc = in->rc;
  insp_free(in);
  return rc;
}

/* ---- the asynchronous form ---------------------------------------------------------------- */

static void insp_answered(void *arg, bool delivered) {
  insp *in = arg;
  char *json = insp_text(in);
  int rc = in->rc;
  mb_done_fn done = in->done;
  void *ctx = in->ctx;
  insp_free(in);
  if (delivered) done(ctx, rc, (uint64_t)(uintptr_t)json);
  else free(json); /* the caller's loop is gone */
}

/* On the piece's loop: the piece, then the next one posted to its own loop, or the answer. */
static void piece_step(mb_loop *loop, void *arg) {
  insp *in = arg;
  piece_run(loop, in);
  if (!in->rc && in->next < in->n) {
    int rc = mb_loop_post(in->pieces[in->next].loop, piece_step, in);
    if (rc == 0) return;
    in->rc = rc;
  }
  mb__answer_send(&in->answer);
}

void mb_mm_inspect(mb_mm *mm, mb_done_fn done, void *ctx) {
  mb_loop *here = mb_loop_current();
  insp *in = here ? insp_open(mm) : NULL;
  int rc = !here ? MB_EINVAL
           : !in ? MB_ENOMEM
                 : mb__answer_make(&in->answer, here, insp_answered, in);
  if (rc) {
    if (in) insp_free(in);
    done(ctx, rc == MB_EINVAL ? MB_EINVAL : MB_ENOMEM, 0);
    return;
  }
  in->done = done;
  in->ctx = ctx;
  rc = mb_loop_post(in->pieces[0].loop, piece_step, in);
  if (rc == 0) return;
  in->rc = rc;
  mb__answer_send(&in->answer); /* later, on this loop */
}

/* ---- a dump on a signal ------------------------------------------------------------------- */

typedef struct insp_signal {
  uv_signal_t h;
  mb_mm *mm;
  char path[4096];
} insp_signal;

/* A dump is whole or an error, never half of one. */
static void on_signal(uv_signal_t *h, int signum) {
  (void)signum;
  insp_signal *s = (insp_signal *)h;
  FILE *f = s->path[0] ? fopen(s->path, "w") : stderr;
  if (!f) return;
  insp *in = insp_open(s->mm);
  mb_loop_enter(s->mm->loop); /* a lending manager loop: not while a borrower runs its turn */
  if (in) gather(in);
  mb_loop_leave(s->mm->loop);
  char *json = in ? insp_text(in) : NULL;
  if (json) fputs(json, f);
  else fprintf(f, "{\"error\":\"%s\"}\n", membacking_strerror(in ? in->rc : MB_ENOMEM));
  free(json);
  if (in) insp_free(in);
  if (f != stderr) fclose(f);
  else fflush(f);
}

static void signal_closed(uv_handle_t *h) { free(h); }

static void signal_start(mb_loop *loop, void *arg) {
  insp_signal *s = arg;
  uv_signal_init(mb_loop_uv(loop), &s->h);
  uv_unref((uv_handle_t *)&s->h); /* a dump request never keeps a loop alive */
  uv_signal_start(&s->h, on_signal, s->mm->signum);
}

static void signal_stop(mb_loop *loop, void *arg) {
  (void)loop;
  uv_close((uv_handle_t *)arg, signal_closed);
}

int mb_mm_inspect_on_signal(mb_mm *mm, int signum, const char *path) {
  if (mm->insp_signal || signum <= 0 || signum >= NSIG) return MB_E_INVALID;
  insp_signal *s = mb__calloc(1, sizeof *s);
  if (!s) return MB_ENOMEM;
  s->mm = mm;
  snprintf(s->path, sizeof s->path, "%s", path ? path : "");
  mm->signum = signum;
  int rc = mb_loop_exec(mm->loop, signal_start, s);
  if (rc) free(s);
  else mm->insp_signal = s;
  return rc;
}

void mb__inspect_stop(mb_mm *mm) {
  if (mm->insp_signal) mb__exec_must(mm->loop, signal_stop, mm->insp_signal);
  mm->insp_signal = NULL;
}
