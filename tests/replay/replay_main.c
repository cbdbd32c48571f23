/* replay_main.c: membacking-replay, the scenario runner (spec/scenario.md, "Running"):
 *
 *   membacking-replay [--layout=single|spread] [--partitions=soft|kvm] [--fault-check]
 *                     [--peak-memory] [--quiet] FILE.mbs...
 *
 * --partitions=kvm runs every `partition add NAME soft` as a kvm partition (the kvm variant of
 * a scenario); a file that adds a soft partition is then skipped where /dev/kvm cannot host a
 * VM, as `require kvm` skips one. --partitions=soft (the default) runs each as written.
 *
 * --fault-check runs each file under an injected failure (a build with -Dfault_injection=true,
 * armed by MB_FI in the environment: mem/fault_inject.h): results the file expects are not
 * checked; consumers against the manager, the failure's report and leaks are (replay_fault.c).
 * PASS and FAIL lines end with what was injected, when, and which operation reported it.
 *
 * --peak-memory prints, on stderr at the end, the process's peak resident set (VmHWM): a run
 * holds what its file's live names and operations in flight need, not the file (replay.h,
 * "Memory"), and the tests check that with it.
 *
 * Arguments, checking every file first (a file that does not parse is a usage error: exit 2
 * before anything runs; replay_scan reads it through without keeping it), one PASS / SKIP /
 * FAIL line per file, the summary, the exit status. */
#include <stdlib.h>
#include <string.h>

#include "fault_inject.h"
#include "replay.h"

enum { EXIT_PASSED = 0, EXIT_FAILED = 1, EXIT_USAGE = 2, EXIT_ALL_SKIPPED = 77 };

typedef struct options {
  replay_config run;
  bool quiet;
  bool peak_memory;
  char **files;
  int nfiles;
} options;

static int usage(const char *why) {
  if (why) fprintf(stderr, "membacking-replay: %s\n", why);
  fprintf(stderr, "usage: membacking-replay [--layout=single|spread] [--partitions=soft|kvm] "
                  "[--fault-check] [--peak-memory] [--quiet] FILE.mbs...\n");
  return EXIT_USAGE;
}

/* 0, or the usage error's exit status. */
static int parse_options(int argc, char **argv, options *o) {
  *o = (options){{REPLAY_SINGLE, false, false}, false, false, NULL, 0};
  int i = 1;
  for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
    if (strcmp(argv[i], "--") == 0) {
      i++;
      break;
    } else if (strcmp(argv[i], "--layout=single") == 0) {
      o->run.layout = REPLAY_SINGLE;
    } else if (strcmp(argv[i], "--layout=spread") == 0) {
      o->run.layout = REPLAY_SPREAD;
    } else if (strcmp(argv[i], "--partitions=soft") == 0) {
      o->run.kvm_partitions = false;
    } else if (strcmp(argv[i], "--partitions=kvm") == 0) {
      o->run.kvm_partitions = true;
    } else if (strcmp(argv[i], "--fault-check") == 0) {
      o->run.fault_check = true;
    } else if (strcmp(argv[i], "--quiet") == 0) {
      o->quiet = true;
    } else if (strcmp(argv[i], "--peak-memory") == 0) {
      o->peak_memory = true;
    } else {
      fprintf(stderr, "membacking-replay: unknown option '%s'\n", argv[i]);
      return usage(NULL);
    }
  }
  o->files = argv + i;
  o->nfiles = argc - i;
  return o->nfiles > 0 ? 0 : usage("no scenario file given");
}

/* Check every file; NULL (after printing the parser's message) when one does not parse. */
static replay_file *scan_all(const options *o) {
  replay_file *files = calloc((size_t)o->nfiles, sizeof *files);
  if (!files) {
    fprintf(stderr, "membacking-replay: out of memory\n");
    return NULL;
  }
  for (int i = 0; i < o->nfiles; i++) {
    char err[512];
    if (replay_scan(o->files[i], &files[i], err, sizeof err) != 0) {
      fprintf(stderr, "%s\n", err);
      free(files);
      return NULL;
    }
  }
  return files;
}

typedef struct tally {
  int passed, failed, skipped;
} tally;

static void run_one(const options *o, const char *file, const replay_file *f, tally *t) {
  unsigned line = 0;
  char *message = NULL;
  switch (replay_run(f, &o->run, &line, &message)) {
  case REPLAY_PASS:
    t->passed++;
    if (!o->quiet && message) printf("PASS %s: %s\n", file, message); /* --fault-check */
    else if (!o->quiet) printf("PASS %s\n", file);
    break;
  case REPLAY_SKIP:
    t->skipped++;
    if (!o->quiet) printf("SKIP %s: %s\n", file, message ? message : "skipped");
    break;
  case REPLAY_FAIL:
    t->failed++;
    printf("FAIL %s:%u: %s\n", file, line, message ? message : "? / ?");
    break;
  }
  free(message);
  fflush(stdout);
}

/* "membacking-replay: peak resident set N KiB", from /proc/self/status. */
static void print_peak_memory(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  unsigned long kib = 0;
  bool found = false;
  while (f && !found && fgets(line, sizeof line, f))
    found = sscanf(line, "VmHWM: %lu kB", &kib) == 1;
  if (f) fclose(f);
  if (found) fprintf(stderr, "membacking-replay: peak resident set %lu KiB\n", kib);
  else fprintf(stderr, "membacking-replay: peak resident set unknown (no VmHWM)\n");
}

static int summary(const tally *t) {
  printf("%d passed, %d failed", t->passed, t->failed);
  if (t->skipped) printf(", %d skipped", t->skipped);
  printf("\n");
  fflush(stdout);
  if (t->failed) return EXIT_FAILED;
  if (t->passed) return EXIT_PASSED;
  return t->skipped ? EXIT_ALL_SKIPPED : EXIT_FAILED;
}

int main(int argc, char **argv) {
  options o;
  int rc = parse_options(argc, argv, &o);
  if (rc) return rc;
  replay_file *files = scan_all(&o);
  if (!files) return EXIT_USAGE;
  if (o.run.fault_check && !mb_fi_enabled()) {
    fprintf(stderr, "membacking-replay: --fault-check: this build injects no faults "
                    "(meson -Dfault_injection=true)\n");
    free(files);
    return EXIT_ALL_SKIPPED;
  }
  if ((rc = replay_worker_start()) != 0) {
    fprintf(stderr, "membacking-replay: starting the access worker: %s\n", mb_strerror(rc));
    free(files);
    return EXIT_FAILED;
  }
  tally t = {0, 0, 0};
  for (int i = 0; i < o.nfiles; i++) run_one(&o, o.files[i], &files[i], &t);
  replay_worker_stop();
  free(files);
  if (o.peak_memory) print_peak_memory();
  return summary(&t);
}
