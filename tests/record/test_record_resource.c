/* test_record_resource.c: what the host refuses is recorded as `error:resource` (spec
 * "Recording"; the API answers a negative errno or MB_ENOMEM). A child process (this program
 * run again, so its allocator starts fresh) records its manager, then uses up its own memory
 * mappings (vm.max_map_count: the limit is per process, no sysctl is changed) and caps its
 * address space where it is, so that a mapping add, which needs new mappings in the
 * partitions' VA mapper, is refused by the kernel. Once the mappings are given back the same
 * add succeeds. The parent reads the recording: the refused add is a line of the format with
 * `=> error:resource`, not a comment, and the later one is `=> ok`. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "membacking.h"
#include "test_util.h"

#define CHILD_ARG "--exhaust-child"
/* A limit above MAX_LIMIT (some distributions set 1M or 2^31) would take too long to reach. */
enum { PAGE = 4096, CHILD_SECONDS = 60, MAX_LIMIT = 262144, TEXT_MAX = 1 << 16 };

static long max_map_count(void) {
  long max = -1;
  FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
  if (f && fscanf(f, "%ld", &max) != 1) max = -1;
  if (f) fclose(f);
  return max;
}

/* ---- the child ------------------------------------------------------------------------------- */

#define CHECK(cond)                                                                             \
  do {                                                                                          \
    if (!(cond)) {                                                                              \
      fprintf(stderr, "child: %s:%d: %s\n", __FILE__, __LINE__, #cond);                         \
      _exit(1);                                                                                 \
    }                                                                                           \
  } while (0)

/* Uses up the process's mappings: the pages of one reservation made read-only and read-write
 * in turn, each splitting one more mapping off the rest, until the kernel refuses. */
static void *exhaust(size_t *len) {
  *len = (size_t)(max_map_count() + 16) * PAGE;
  uint8_t *p = mmap(NULL, *len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return NULL;
  for (size_t off = PAGE, i = 0; off + PAGE < *len; off += PAGE, i++)
    if (mprotect(p + off, PAGE, i % 2 ? PROT_READ | PROT_WRITE : PROT_READ) != 0) break;
  return p;
}

/* The address space capped where it is (VmSize), so that no new mapping escapes the limit by
 * merging with a neighbour; or uncapped. */
static void cap_address_space(bool on) {
  struct rlimit r;
  unsigned long kb = 0;
  char line[256];
  FILE *f = fopen("/proc/self/status", "r");
  while (f && fgets(line, sizeof line, f) && sscanf(line, "VmSize: %lu kB", &kb) != 1) continue;
  if (f) fclose(f);
  getrlimit(RLIMIT_AS, &r);
  r.rlim_cur = on ? (rlim_t)kb * 1024 : r.rlim_max;
  setrlimit(RLIMIT_AS, &r);
}

static int child(const char *path) {
  alarm(CHILD_SECONDS);
  int err = 0;
  mb_loop *loop = mb_loop_start("mm", &err);
  mb_mm *mm = NULL;
  mb_mm_config cfg = {.max_addr = 1ull << 30, .loop = loop};
  CHECK(loop && mb_mm_create(&cfg, &mm) == 0 && mb_mm_record(mm, path) == 0);
  mb_object *obj = NULL;
  CHECK(mb_object_create(MB_OBJECT_MEMFD, 64 * 1024, "ram", &obj) == 0);
  mb_region_params rp = {"ram", 0, 1 << 20, 0, false, 0};
  mb_region_id id;
  CHECK(mb_region_add_sync(mm, &rp, &id) == 0 && mb_region_map_sync(mm, id, true) == 0);
  mb_mapping_params mp = {id, 0, PAGE, obj, 0, true};
  CHECK(mb_mapping_add_sync(mm, &mp) == 0); /* what a refused one needs is warm */

  size_t len = 0;
  void *hog = exhaust(&len);
  CHECK(hog != NULL);
  cap_address_space(true);
  mp.offset = mp.obj_offset = 8 * PAGE;
  int rc = mb_mapping_add_sync(mm, &mp);
  cap_address_space(false);
  CHECK(munmap(hog, len) == 0);
  fprintf(stderr, "child: a mapping add at the limit: %d (%s)\n", rc, membacking_strerror(rc));
  CHECK(rc == MB_ENOMEM || (rc < 0 && rc > MB_EGONE)); /* the host's: an errno, or memory */
  CHECK(mb_mapping_add_sync(mm, &mp) == 0);

  mb_mm_destroy(mm); /* closes the recording */
  mb_object_unref(obj);
  CHECK(mb_loop_stop(loop) == 0);
  mb_loop_free(loop);
  return 0;
}

/* ---- the parent ------------------------------------------------------------------------------ */

static int run_child(const char *path) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    execl("/proc/self/exe", "test-record-resource", CHILD_ARG, path, (char *)NULL);
    _exit(127);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  return status;
}

static char *read_text(const char *path) {
  char *text = calloc(1, TEXT_MAX);
  FILE *f = fopen(path, "r");
  assert_non_null(text);
  assert_non_null(f);
  size_t n = fread(text, 1, TEXT_MAX - 1, f);
  text[n] = '\0';
  fclose(f);
  return text;
}

static void test_refused_add_recorded(void **state) {
  (void)state;
  long max = max_map_count();
  if (max <= 0 || max > MAX_LIMIT) {
    print_message("vm.max_map_count is %ld: not reached here\n", max);
    skip();
  }
  char path[] = "/tmp/test_record_resource_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  int status = run_child(path);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  char *text = read_text(path);
  unlink(path);
  print_message("%s", text);
  const char *refused = "\nmapping add ram 0x8000 0x1000 o1 0x8000 rw => error:resource\n";
  const char *later = "\nmapping add ram 0x8000 0x1000 o1 0x8000 rw => ok\n";
  const char *at = strstr(text, refused);
  assert_non_null(at);
  assert_non_null(strstr(at, later));
  assert_null(strstr(text, "not replayable"));
  free(text);
}

int main(int argc, char **argv) {
#ifdef __SANITIZE_THREAD__
  (void)argc, (void)argv;
  return 77; /* TSan's own runtime maps memory per thread and aborts at the limit */
#endif
  if (argc > 2 && strcmp(argv[1], CHILD_ARG) == 0) return child(argv[2]);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_refused_add_recorded),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
