/* test_observe.c: what a VMM observes of the library, end to end (suite 'trace'):
 *   - names and limits: a region name of 63 bytes is kept whole, a longer one is refused by
 *     the region manager; bytes that are not UTF-8 in a name still make valid JSON, in the
 *     inspection and in the trace; the trace's corr values are strings (above 2^53 too);
 *     the inspection's latency counts are named "samples";
 *   - the memory map as text (mb_mm_mtree) of a small known map, against golden/mtree.txt;
 *   - traces that survive a crash: a child process that traces a few calls, then aborts (or
 *     faults outside guest memory, through the library's SIGSEGV handler, after a guest fault
 *     that handler turned into an error): its trace file has those calls; mb_trace_flush.
 * The children are this program run again with "--child KIND TRACE" (no cmocka there: it
 * installs signal handlers of its own). TRACE_DIR is tests/trace (for the golden file). */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "membacking.h"
#include "region_manager.h"
#include "test_util.h"
#include "trace.h"

#define MiB (1ull << 20)

static char self_path[4096];

/* A new empty file from a mkstemp template (static storage). */
static const char *temp_path(void) {
  static char path[64];
  snprintf(path, sizeof path, "/tmp/mb-observe-XXXXXX");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  return path;
}

/* 0 when python3 reads path as JSON (strict UTF-8: every line a document, or with `lines`
 * false the whole file one) and each document `r` passes `check` (a Python expression, or
 * NULL). */
static int python_json(const char *path, bool lines, const char *check) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "python3 -c 'import json,sys\n"
           "f = open(sys.argv[1], encoding=\"utf-8\", errors=\"strict\")\n"
           "docs = [json.loads(l) for l in f if l.strip()] if %s else [json.load(f)]\n"
           "assert docs\n"
           "for r in docs:\n"
           "  assert %s, r\n' %s",
           lines ? "True" : "False", check ? check : "True", path);
  return system(cmd);
}

/* ---- 7. names and limits --------------------------------------------------------------------- */

static void on_rm_created(mb_loop *loop, void *arg) {
  mb_rm_config cfg = {.max_addr = 1ull << 32};
  *(mb_actor **)arg = mb_region_manager_create(loop, &cfg);
}

/* The region manager itself: a name that fills the whole field, without its NUL, is refused
 * (what a sender passes for a name too long); 63 bytes are taken. */
static void test_region_name_field(void **unused) {
  (void)unused;
  mb_loop *l = tu_start("rm");
  mb_actor *rm = NULL;
  assert_int_equal(mb_loop_exec(l, on_rm_created, &rm), 0);
  assert_non_null(rm);
  for (size_t len = 63; len <= 64; len++) {
    rm_region_add_msg *m = rm_region_add_new();
    memset(m->name, 'n', len);
    m->gpa = 0;
    m->size = 4096 * (len - 62);
    assert_int_equal(mb_call_sync(mb_actor_addr(rm), &m->hdr), len == 63 ? 0 : MB_E_INVALID);
    mb_msg_free(&m->hdr);
  }
  tu_stop(l);
}

typedef struct world {
  mb_loop *loop;
  mb_mm *mm;
} world;

static void world_init(world *w, int overlap) {
  w->loop = tu_start("mgr");
  mb_mm_config cfg = {.max_addr = 1ull << 32, .overlap = overlap, .loop = w->loop};
  assert_int_equal(mb_mm_create(&cfg, &w->mm), 0);
}

static void world_fini(world *w) {
  mb_mm_destroy(w->mm);
  tu_stop(w->loop);
}

static uint32_t add_region(world *w, const char *name, uint64_t gpa, uint64_t size, int prio,
                           bool device) {
  mb_region_params p = {name, gpa, size, (uint8_t)prio, device, 0};
  mb_region_id id = 0;
  assert_int_equal(mb_region_add_sync(w->mm, &p, &id), 0);
  return id;
}

static char *inspect(world *w) {
  char *json = NULL;
  assert_int_equal(mb_mm_inspect_sync(w->mm, &json), 0);
  return json;
}

static const char *write_temp(const char *text) {
  const char *path = temp_path();
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  assert_int_equal(fclose(f), 0);
  return path;
}

/* A 63-byte name is kept whole; a name with bytes that are not UTF-8 makes valid JSON (each
 * such byte U+FFFD); the latency records are "samples", not "count". */
static void test_inspect_names(void **unused) {
  (void)unused;
  world w;
  world_init(&w, MB_OVERLAP_NESTED);
  char name63[64];
  memset(name63, 'x', 63);
  name63[63] = '\0';
  add_region(&w, name63, 0, 64 * 1024, 0, false);
  add_region(&w, "bad\xff\xc3(\xed\xa0\x80\x01\"", MiB, 4096, 0, true);
  char *json = inspect(&w);
  char want[80];
  snprintf(want, sizeof want, "\"name\":\"%s\"", name63);
  assert_non_null(strstr(json, want));
  assert_non_null(strstr(json, "\"name\":\"bad\\ufffd\\ufffd(\\ufffd\\ufffd\\ufffd\\u0001\\\"\""));
  assert_non_null(strstr(json, "\"rm.region_add\":{\"samples\":"));
  assert_null(strstr(json, "\"count\""));
  const char *path = write_temp(json);
  assert_int_equal(python_json(path, false, NULL), 0);
  unlink(path);
  free(json);
  world_fini(&w);
}

/* The same name in a trace: every line valid JSON, the name as in the inspection; corr
 * values are strings, and the blocking calls' (top bit set) are above 2^53. */
static void test_trace_names_corr(void **unused) {
  (void)unused;
  const char *path = temp_path();
  char trace_path[64];
  snprintf(trace_path, sizeof trace_path, "%s", path);
  assert_int_equal(mb_trace_open(trace_path), 0);
  world w;
  world_init(&w, MB_OVERLAP_NESTED);
  add_region(&w, "bad\xff\xc3(", 0, 4096, 0, false);
  world_fini(&w);
  mb_trace_close();
  assert_int_equal(python_json(trace_path, true, "isinstance(r[\"corr\"], str)"), 0);
  char cmd[512];
  snprintf(cmd, sizeof cmd,
           "grep -q 'name=\\\\\"bad\\\\ufffd\\\\ufffd(' %s && "
           "python3 -c 'import json,sys; "
           "assert any(int(json.loads(l)[\"corr\"]) > 2**53 for l in open(sys.argv[1]))' %s",
           trace_path, trace_path);
  assert_int_equal(system(cmd), 0);
  unlink(trace_path);
}

/* ---- 8. the memory map as text --------------------------------------------------------------- */

static char *read_all(const char *path) {
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  char *text = NULL;
  size_t len = 0;
  FILE *mem = open_memstream(&text, &len);
  int c;
  while ((c = fgetc(f)) != EOF) fputc(c, mem);
  fclose(mem);
  fclose(f);
  return text;
}

static char *mtree_text(const char *json, int *rc) {
  char *text = NULL;
  size_t len = 0;
  FILE *out = open_memstream(&text, &len);
  *rc = mb_mm_mtree(json, out);
  fclose(out);
  return text;
}

/* A small known map: ram with two mappings and a ROM and a VGA window nested in it, a device
 * region above; one soft partition. Objects print as numbers: the text is the same every run. */
static void test_mtree_golden(void **unused) {
  (void)unused;
  world w;
  world_init(&w, MB_OVERLAP_NESTED);
  mb_object *lo = tu_memfd_byte("lo", 8 * MiB, 1), *hi = tu_memfd_byte("hi", 16 * MiB, 2);
  uint32_t ram = add_region(&w, "ram", 0, 16 * MiB, 255, false);
  mb_mapping_params mp = {ram, 0, 8 * MiB, lo, 0, true};
  assert_int_equal(mb_mapping_add_sync(w.mm, &mp), 0);
  mp = (mb_mapping_params){ram, 8 * MiB, 8 * MiB, hi, 0x1000, true};
  assert_int_equal(mb_mapping_add_sync(w.mm, &mp), 0);
  assert_int_equal(mb_region_map_sync(w.mm, ram, true), 0);
  add_region(&w, "vga", 0xa0000, 0x20000, 1, true);
  uint32_t rom = add_region(&w, "rom", 0xf0000, 0x10000, 2, false);
  mp = (mb_mapping_params){rom, 0, 0x10000, hi, 0x100000, false};
  assert_int_equal(mb_mapping_add_sync(w.mm, &mp), 0);
  assert_int_equal(mb_region_map_sync(w.mm, rom, false), 0);
  uint32_t apic = add_region(&w, "apic", 0xfee00000, 0x1000, 0, true);
  assert_int_equal(mb_region_map_sync(w.mm, apic, true), 0);
  mb_partition *part = NULL;
  assert_int_equal(mb_partition_add_sync(w.mm, &mb_partition_soft, NULL, &part), 0);
  char *json = inspect(&w), golden[4200];
  int rc;
  char *text = mtree_text(json, &rc);
  assert_int_equal(rc, 0);
  const char *dir = getenv("TRACE_DIR");
  snprintf(golden, sizeof golden, "%s/golden/mtree.txt", dir ? dir : ".");
  char *want = read_all(golden);
  if (strcmp(text, want) != 0) fail_msg("mb_mm_mtree:\n%s\nwanted (%s):\n%s", text, golden, want);
  free(want);
  free(text);
  free(json);
  mb_object_unref(lo);
  mb_object_unref(hi);
  world_fini(&w);
}

/* What is not an inspection is MB_E_INVALID, nothing printed; an empty map prints its header. */
static void test_mtree_invalid(void **unused) {
  (void)unused;
  static const char *const bad[] = {
      "",
      "{",
      "[]",
      "nul",
      "{\"max_addr\":1}",                                 /* no regions */
      "{\"regions\":[]}",                                 /* no max_addr */
      "{\"max_addr\":-1,\"regions\":[]}",
      "{\"max_addr\":1,\"regions\":[{}]}",              /* a region without its keys */
      "{\"max_addr\":1,\"regions\":[]} x",
      "{\"max_addr\":1,\"regions\":[],\"a\":\"\\ud800\"}", /* a lone surrogate */
      "{\"max_addr\":1,\"regions\":[],\"a\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
      "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}", /* too deep */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int rc;
    char *text = mtree_text(bad[i], &rc);
    if (rc != MB_E_INVALID || text[0]) fail_msg("'%s': %d, printed '%s'", bad[i], rc, text);
    free(text);
  }
  int rc;
  char *text = mtree_text(" {\"max_addr\":4096,\"overlap\":\"any\",\"regions\":[],\"n\":[1.5e3,"
                          "-2,true,false,null,\"\\u00e9\"]} ",
                          &rc);
  assert_int_equal(rc, 0);
  assert_string_equal(text, "memory map [0x00000000, 0x00001000), overlap any\n");
  free(text);
}

/* ---- 9. traces that survive a crash ---------------------------------------------------------- */

/* The child: traces three named region adds, then dies of `kind` ("abort" or "segv"). */
static int child(const char *kind, const char *path) {
  bool segv = strcmp(kind, "segv") == 0;
  struct sigaction cur;
  /* A sanitizer's SIGSEGV handler came first: the trace leaves SIGSEGV to it. */
  if (segv && (sigaction(SIGSEGV, NULL, &cur) != 0 || cur.sa_handler != SIG_DFL)) return 77;
  if (mb_trace_open(path) != 0) return 10;
  world w = {0};
  int err = 0;
  w.loop = mb_loop_start("mgr", &err);
  mb_mm_config cfg = {.max_addr = 1ull << 32, .loop = w.loop};
  if (!w.loop || mb_mm_create(&cfg, &w.mm) != 0) return 11;
  for (int i = 1; i <= 3; i++) {
    char name[16];
    snprintf(name, sizeof name, "crash-%d", i);
    mb_region_params p = {name, (uint64_t)i * 4096, 4096, 0, false, 0};
    mb_region_id id;
    if (mb_region_add_sync(w.mm, &p, &id) != 0) return 12;
  }
  if (!segv) abort();
  /* A guest fault the library's handler turns into an error, then one that is not its own. */
  uint8_t byte;
  if (mb_mapper_read(mb_mm_primary_mapper(w.mm), 4096, &byte, 1) != MB_E_UNMAPPED) return 13;
  static int *volatile nowhere; /* NULL, unknown to the compiler */
  *nowhere = 1;
  return 14;
}

/* Runs the child; its wait status. */
static int run_child(const char *kind, const char *path) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    execl(self_path, self_path, "--child", kind, path, (char *)NULL);
    _exit(127);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  return status;
}

/* The trace of a child that died of sig: the three region adds, each called and delivered,
 * every line a whole record (the tool reads the file). */
static void check_crash(const char *kind, int sig) {
  const char *path = temp_path();
  char trace_path[64];
  snprintf(trace_path, sizeof trace_path, "%s", path);
  int status = run_child(kind, trace_path);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
    unlink(trace_path);
    skip();
  }
  if (!WIFSIGNALED(status) || WTERMSIG(status) != sig)
    fail_msg("the %s child: wait status 0x%x", kind, status);
  trace t;
  assert_int_equal(trace_read(&t, trace_path, stderr), 0);
  int calls = 0, delivered = 0;
  for (size_t i = 0; i < t.nrecs; i++) {
    const trace_rec *r = &t.recs[i];
    if (strcmp(r->kind, "region_add") || !strstr(r->fields, "name=\"crash-")) continue;
    calls += r->ev == TRACE_CALL;
    delivered += r->ev == TRACE_DELIVER && strcmp(r->to_name, "region_manager") == 0;
  }
  trace_free(&t);
  unlink(trace_path);
  if (calls != 3 || delivered != 3) fail_msg("%s: %d calls, %d deliveries", kind, calls, delivered);
}

static void test_crash_abort(void **unused) {
  (void)unused;
  check_crash("abort", SIGABRT);
}

static void test_crash_segv(void **unused) {
  (void)unused;
  check_crash("segv", SIGSEGV);
}

/* mb_trace_flush: the records are in the file while the trace stays open. */
static void test_trace_flush(void **unused) {
  (void)unused;
  const char *path = temp_path();
  char trace_path[64];
  snprintf(trace_path, sizeof trace_path, "%s", path);
  assert_int_equal(mb_trace_open(trace_path), 0);
  world w;
  world_init(&w, MB_OVERLAP_NESTED);
  add_region(&w, "flushed", 0, 4096, 0, false);
  assert_int_equal(mb_trace_flush(), 0);
  char *text = read_all(trace_path);
  assert_non_null(strstr(text, "name=\\\"flushed\\\""));
  free(text);
  world_fini(&w);
  mb_trace_close();
  unlink(trace_path);
}

int main(int argc, char **argv) {
  if (argc == 4 && strcmp(argv[1], "--child") == 0) return child(argv[2], argv[3]);
  ssize_t n = readlink("/proc/self/exe", self_path, sizeof self_path - 1);
  if (n <= 0) return 1;
  self_path[n] = '\0';
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_region_name_field), cmocka_unit_test(test_inspect_names),
      cmocka_unit_test(test_trace_names_corr),  cmocka_unit_test(test_mtree_golden),
      cmocka_unit_test(test_mtree_invalid),     cmocka_unit_test(test_crash_abort),
      cmocka_unit_test(test_crash_segv),        cmocka_unit_test(test_trace_flush),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
