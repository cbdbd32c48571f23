/* test_vma_limit.c: the process's limit on memory mappings (vm.max_map_count) reached. A child
 * process (this program run again, so its allocator starts fresh) uses up its own mappings
 * with the limit as it is (no sysctl is changed: the limit is per process) and caps its
 * address space where it is (so no new mapping escapes by merging with a neighbour), then:
 *   - an eager mapping, which needs two more mappings in the VA mapper, fails with -ENOMEM,
 *     is rolled back, and the mapper names the limit once on stderr (F15);
 *   - a thread whose first allocation is a message of ours gets an error or an answer, not
 *     a crash (F6: jemalloc dereferenced NULL when it could not make that thread an arena);
 *   - once the mappings are given back, the same operations succeed.
 * The child is bounded in time (alarm); the parent checks its exit status and its stderr. */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mp_util.h"

#define CHILD_ARG "--exhaust-child"
/* A limit above MAX_LIMIT (some distributions set 1M or 2^31) would take too long to reach. */
enum { CHILD_SECONDS = 60, OUT_MAX = 1 << 16, MAX_LIMIT = 262144 };

static long max_map_count(void) {
  long max = -1;
  FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
  if (f != NULL && fscanf(f, "%ld", &max) != 1)
    max = -1;
  if (f != NULL)
    fclose(f);
  return max;
}

/* ---- the child ------------------------------------------------------------------------------- */

/* A thread that makes its first allocation (a message) only once the limit is reached, and
 * one more after it was lifted. */
typedef struct late_thread {
  pthread_t thread;
  sem_t go, done;
  mb_addr mm;
  int rc[2];
} late_thread;

static int list_call(mb_addr mm) {
  mm_list_msg *m = mm_list_new();
  if (m == NULL)
    return MB_ENOMEM;
  int rc = mb_call_sync(mm, &m->hdr);
  mb_map_entries_free(m->entries, m->entries ? m->count : 0);
  mb_msg_free(&m->hdr);
  return rc;
}

static void *late_main(void *p) {
  late_thread *t = p;
  for (int i = 0; i < 2; i++) {
    while (sem_wait(&t->go) != 0)
      continue;
    t->rc[i] = list_call(t->mm);
    sem_post(&t->done);
  }
  return NULL;
}

/* Lets the late thread make its next call; its result. */
static int late_call(late_thread *t, int i) {
  sem_post(&t->go);
  while (sem_wait(&t->done) != 0)
    continue;
  return t->rc[i];
}

/* Uses up the process's mappings, to the last one: the pages of one reservation, from its
 * second on, made read-only and read-write in turn, each splitting one more mapping off the
 * rest, until the kernel refuses. Returns the reservation (size *len). */
static void *exhaust(size_t *len, long *made) {
  *len = (size_t)(max_map_count() + 16) * PAGE;
  uint8_t *p = mmap(NULL, *len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    return NULL;
  *made = 0;
  for (size_t off = PAGE; off + PAGE < *len; off += PAGE, ++*made)
    if (mprotect(p + off, PAGE, *made % 2 ? PROT_READ | PROT_WRITE : PROT_READ) != 0)
      break;
  return p;
}

/* The process's address space in bytes (VmSize). */
static rlim_t vm_size(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  unsigned long kb = 0;
  while (f != NULL && fgets(line, sizeof line, f) != NULL)
    if (sscanf(line, "VmSize: %lu kB", &kb) == 1)
      break;
  if (f != NULL)
    fclose(f);
  return (rlim_t)kb * 1024;
}

/* A new mapping placed next to a compatible one merges with it and needs no new entry, so
 * at the limit some still succeed. Capping the address space where it is makes every new
 * one fail, as they do when the limit is reached with no such neighbour (the reproducer's
 * case); mappings replaced in place, as the VA mapper's are, are not affected by the cap. */
static void cap_address_space(bool on) {
  struct rlimit r;
  getrlimit(RLIMIT_AS, &r);
  r.rlim_cur = on ? vm_size() : r.rlim_max;
  setrlimit(RLIMIT_AS, &r);
}

/* An MM_MAP of one page of obj at gpa; MB_ENOMEM if even the request cannot be made. */
static int map_page(mb_addr mm, mb_object *obj, uint64_t gpa) {
  mb_map_entry *e = malloc(sizeof *e);
  mm_map_msg *m = mm_map_new();
  if (e == NULL || m == NULL) {
    free(e);
    mb_msg_free(m ? &m->hdr : NULL);
    return MB_ENOMEM;
  }
  *e = (mb_map_entry){gpa, PAGE, mb_object_ref(obj), 0, true};
  m->entries = e;
  m->count = 1;
  int rc = mb_call_sync(mm, &m->hdr);
  mb_msg_free(&m->hdr);
  return rc;
}

#define CHECK(cond)                                                                             \
  do {                                                                                          \
    if (!(cond)) {                                                                              \
      fprintf(stderr, "child: %s:%d: %s\n", __FILE__, __LINE__, #cond);                         \
      _exit(1);                                                                                 \
    }                                                                                           \
  } while (0)

static int child(void) {
  alarm(CHILD_SECONDS);
  mb_loop *l = tu_start("mm");
  mb_addr mm = mp_mm_create(l);
  mb_vam *e = mp_vam_add(l, mm, 1ull << 30, true);
  mb_object *obj = tu_memfd_pages("limit", PAGE, 7);
  /* warm up what the operations below allocate, as a long-running VMM would have */
  for (int i = 0; i < 4; i++) {
    CHECK(map_page(mm, obj, 16 * PAGE) == 0);
    CHECK(mp_unmap(mm, 16 * PAGE, PAGE) == 0);
  }
  late_thread late = {.mm = mm};
  CHECK(sem_init(&late.go, 0, 0) == 0 && sem_init(&late.done, 0, 0) == 0);
  CHECK(pthread_create(&late.thread, NULL, late_main, &late) == 0);

  size_t len = 0;
  long made = 0;
  void *hog = exhaust(&len, &made);
  CHECK(hog != NULL && made > 1000);
  cap_address_space(true);

  /* mapping a page inside the reservation splits it: two more mappings, refused */
  int rc = map_page(mm, obj, 16 * PAGE);
  fprintf(stderr, "child: map at the limit: %d\n", rc);
  CHECK(rc == -ENOMEM);
  CHECK(map_page(mm, obj, 32 * PAGE) == -ENOMEM);
  rc = late_call(&late, 0);
  fprintf(stderr, "child: first call of a new thread at the limit: %d\n", rc);
  CHECK(rc == 0 || rc == MB_ENOMEM);

  cap_address_space(false);
  CHECK(munmap(hog, len) == 0);
  CHECK(late_call(&late, 1) == 0);
  CHECK(pthread_join(late.thread, NULL) == 0);
  MP_EXPECT_NO_RANGES(e); /* the failed map left nothing behind */
  mb_map_entry *list = NULL;
  CHECK(mp_list(mm, &list) == 0);
  CHECK(map_page(mm, obj, 16 * PAGE) == 0);
  mp_expect_bytes(e, 16 * PAGE, PAGE, 16 * PAGE, 0, 7);
  CHECK(mp_unmap(mm, 16 * PAGE, PAGE) == 0);

  mb_object_unref(obj);
  mp_vam_drop(l, mm, e);
  tu_stop(l);
  return 0;
}

/* ---- the parent ------------------------------------------------------------------------------ */

/* Runs the child with its stderr into out (NUL-terminated); its wait status. */
static int run_child(char *out, size_t cap) {
  int fd[2];
  assert_int_equal(pipe(fd), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(fd[1], 2);
    close(fd[0]);
    close(fd[1]);
    execl("/proc/self/exe", "test-mapping-vma-limit", CHILD_ARG, (char *)NULL);
    _exit(127);
  }
  close(fd[1]);
  size_t n = 0;
  ssize_t k;
  while ((k = read(fd[0], out + n, cap - 1 - n)) > 0 || (k < 0 && errno == EINTR))
    n += k > 0 ? (size_t)k : 0;
  out[n] = '\0';
  close(fd[0]);
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  return status;
}

static void test_limit_reached(void **state) {
  (void)state;
  long max = max_map_count();
  if (max <= 0 || max > MAX_LIMIT) {
    print_message("vm.max_map_count is %ld: not reached here\n", max);
    skip();
  }
  char *out = malloc(OUT_MAX);
  assert_non_null(out);
  int status = run_child(out, OUT_MAX);
  print_message("%s", out);
  if (WIFSIGNALED(status))
    print_message("child: killed by signal %d (%s)\n", WTERMSIG(status),
                  strsignal(WTERMSIG(status)));
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  /* named once (the child was refused twice), with the limit */
  const char *line = strstr(out, "membacking: mmap refused");
  assert_non_null(line);
  assert_non_null(strstr(line, "vm.max_map_count is"));
  assert_null(strstr(line + 1, "membacking: mmap refused"));
  free(out);
}

int main(int argc, char **argv) {
#ifdef __SANITIZE_THREAD__
  (void)argc, (void)argv;
  return 77; /* TSan's own runtime maps memory per thread and aborts at the limit */
#endif
  if (argc > 1 && strcmp(argv[1], CHILD_ARG) == 0)
    return child();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_limit_reached),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
