/* inspect.c: a manager's whole state as JSON (mb_mm_inspect), gathered on each actor's own
 * thread with direct reads: regions with their mappings, the visible map, what is pending,
 * each VA mapper's established ranges, fault counters and held locks, each partition's
 * slots, and the request latency of every stage (region manager, mapping manager, each VA
 * mapper, each partition mapper). A signal can dump it too (mb_mm_inspect_on_signal). */
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>

#include "api_internal.h"
#include "json_out.h"

typedef struct insp {
  mb_mm *mm;
  FILE *f;
  void *item; /* the mapper or partition being read */
} insp;

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

static void at_managers(mb_loop *loop, void *arg) {
  (void)loop;
  insp *in = arg;
  mb__region_manager_inspect(in->mm->rm, in->f);
  fputs(",\"stages\":{\"region_manager\":", in->f);
  latency_json(in->f, in->mm->rm);
  fputs(",\"mapping_manager\":", in->f);
  latency_json(in->f, in->mm->mm);
  fputc('}', in->f);
}

static void at_mapper(mb_loop *loop, void *arg) {
  insp *in = arg;
  mb_mapper *m = in->item;
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

static void at_partition(mb_loop *loop, void *arg) {
  (void)loop;
  insp *in = arg;
  mb_partition *p = in->item;
  mb_part_range *r = NULL;
  uint32_t n = 0;
  bool first = true;
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

/* The manager's mappers, then its partitions, in one array (NULL with zero counts on no
 * memory: the dump then lists none). */
static void **snapshot(mb_mm *mm, size_t *nm, size_t *np) {
  pthread_mutex_lock(&mm->lock);
  for (mb_mapper *m = mm->mappers; m; m = m->next) (*nm)++;
  for (mb_partition *p = mm->partitions; p; p = p->next) (*np)++;
  void **items = malloc((*nm + *np + 1) * sizeof *items);
  size_t i = 0;
  if (items) {
    for (mb_mapper *m = mm->mappers; m; m = m->next) items[i++] = m;
    for (mb_partition *p = mm->partitions; p; p = p->next) items[i++] = p;
  } else {
    *nm = *np = 0;
  }
  pthread_mutex_unlock(&mm->lock);
  return items;
}

static void gather(insp *in) {
  mb_mm *mm = in->mm;
  fprintf(in->f, "{\"max_addr\":%" PRIu64 ",\"overlap\":\"%s\",", mm->max_addr,
          mm->overlap == MB_OVERLAP_ANY ? "any" : "nested");
  mb_loop_exec(mm->loop, at_managers, in);
  fputs(",\"mappers\":[", in->f);
  in->item = &mm->primary;
  mb_loop_exec(mm->part_loop, at_mapper, in);
  /* Snapshot the consumers, then read each on its loop without the lock: a consumer loop
   * finishing an add takes that lock, and would wait for us while we wait for it. */
  size_t nm = 0, np = 0;
  void **items = snapshot(mm, &nm, &np);
  for (size_t i = 0; i < nm; i++) {
    fputc(',', in->f);
    in->item = items[i];
    mb_loop_exec(((mb_mapper *)items[i])->loop, at_mapper, in);
  }
  fputs("],\"partitions\":[", in->f);
  for (size_t i = 0; i < np; i++) {
    if (i) fputc(',', in->f);
    in->item = items[nm + i];
    mb_loop_exec(((mb_partition *)items[nm + i])->loop, at_partition, in);
  }
  free(items);
  fputs("]}\n", in->f);
}

int mb_mm_inspect_sync(mb_mm *mm, char **json) {
  size_t len = 0;
  insp in = {mm, open_memstream(json, &len), NULL};
  if (!in.f) return MB_ENOMEM;
  gather(&in);
  return fclose(in.f) ? MB_ENOMEM : 0;
}

typedef struct insp_async {
  mb_done_fn done;
  void *ctx;
  char *json;
  int rc;
} insp_async;

static void insp_finish(mb_loop *loop, void *arg) {
  (void)loop;
  insp_async *a = arg;
  a->done(a->ctx, a->rc, (uint64_t)(uintptr_t)a->json);
  free(a);
}

void mb_mm_inspect(mb_mm *mm, mb_done_fn done, void *ctx) {
  insp_async *a = calloc(1, sizeof *a);
  mb_loop *here = mb_loop_current();
  if (!a || !here) {
    free(a);
    done(ctx, here ? MB_ENOMEM : MB_EINVAL, 0);
    return;
  }
  *a = (insp_async){done, ctx, NULL, 0};
  a->rc = mb_mm_inspect_sync(mm, &a->json);
  if (mb_loop_post(here, insp_finish, a)) {
    free(a->json);
    free(a);
  }
}

/* ---- a dump on a signal ------------------------------------------------------------------- */

typedef struct insp_signal {
  uv_signal_t h;
  mb_mm *mm;
  char path[4096];
} insp_signal;

static void on_signal(uv_signal_t *h, int signum) {
  (void)signum;
  insp_signal *s = (insp_signal *)h;
  FILE *f = s->path[0] ? fopen(s->path, "w") : stderr;
  if (!f) return;
  insp in = {s->mm, f, NULL};
  gather(&in);
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
  insp_signal *s = calloc(1, sizeof *s);
  if (!s) return MB_ENOMEM;
  s->mm = mm;
  snprintf(s->path, sizeof s->path, "%s", path ? path : "");
  mm->signum = signum;
  mm->insp_signal = s;
  return mb_loop_exec(mm->loop, signal_start, s);
}

void mb__inspect_stop(mb_mm *mm) {
  if (mm->insp_signal) mb_loop_exec(mm->loop, signal_stop, mm->insp_signal);
  mm->insp_signal = NULL;
}
