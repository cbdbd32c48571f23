/* trace_main.c: membacking-trace, a message trace (MEMBACKING_TRACE=path) made readable:
 *
 *   membacking-trace [--text|--chrome|--stages|--golden] TRACE
 *   membacking-trace --check GOLDEN TRACE
 *   membacking-trace --mtree INSPECTION
 *
 * TRACE "-" is stdin. The output goes to stdout. Exit status: 0, 1 when --check finds a
 * difference, 2 on a usage error, an unreadable or malformed trace (FILE:LINE: what).
 * --mtree is not about traces: it prints a saved mb_mm_inspect dump as the memory map
 * (mb_mm_mtree), next to the other views of a run. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "membacking.h"
#include "trace.h"

enum { EXIT_OK = 0, EXIT_DIFFERS = 1, EXIT_USAGE = 2 };

static int usage(const char *why) {
  if (why) fprintf(stderr, "membacking-trace: %s\n", why);
  fprintf(stderr, "usage: membacking-trace [--text|--chrome|--stages|--golden] TRACE\n"
                  "       membacking-trace --check GOLDEN TRACE\n"
                  "       membacking-trace --mtree INSPECTION\n");
  return EXIT_USAGE;
}

/* The whole of a file ("-": stdin), NUL-terminated; NULL with errno. */
static char *slurp(const char *path) {
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
  if (!f) return NULL;
  char *text = NULL, buf[65536];
  size_t len = 0, n;
  FILE *mem = open_memstream(&text, &len);
  while (mem && (n = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, n, mem);
  int err = !mem ? ENOMEM : ferror(f) ? EIO : 0;
  if (mem && fclose(mem) && !err) err = ENOMEM;
  if (f != stdin) fclose(f);
  if (err) {
    free(text);
    errno = err;
    return NULL;
  }
  return text;
}

static int mtree(const char *path) {
  char *json = slurp(path);
  if (!json) {
    fprintf(stderr, "%s: %s\n", path, strerror(errno));
    return EXIT_USAGE;
  }
  int rc = mb_mm_mtree(json, stdout);
  free(json);
  if (rc == 0 && fflush(stdout) == 0) return EXIT_OK;
  const char *why = rc == MB_E_INVALID ? "not an inspection (mb_mm_inspect's JSON)"
                                       : membacking_strerror(rc);
  fprintf(stderr, "%s: %s\n", path, why);
  return EXIT_USAGE;
}

/* Interpolated times make stage times approximate (runtime/trace.c, "t_ns"). */
static void warn_sampled(const trace *t) {
  if (!t->ninterp) return;
  fprintf(stderr,
          "membacking-trace: warning: %zu of %zu records of %s have interpolated times (the "
          "trace was recorded with sampled times): stage times are approximate; record with "
          "MEMBACKING_TRACE_TIMES=exact\n",
          t->ninterp, t->nrecs, t->path);
}

typedef int (*writer_fn)(const trace *t, FILE *out);

int main(int argc, char **argv) {
  static const struct {
    const char *opt;
    writer_fn write;
  } modes[] = {{"--text", trace_write_text},
               {"--chrome", trace_write_chrome},
               {"--stages", trace_write_stages},
               {"--golden", trace_write_golden},
               {"--check", NULL},
               {"--mtree", NULL}};
  enum { NMODES = sizeof modes / sizeof modes[0], CHECK = 4, MTREE = 5 };
  int m = 0, i = 1;
  if (argc > 1 && strncmp(argv[1], "--", 2) == 0 && strcmp(argv[1], "--") != 0) {
    for (m = 0; m < NMODES && strcmp(argv[1], modes[m].opt) != 0; m++) continue;
    if (m == NMODES) {
      fprintf(stderr, "membacking-trace: unknown option '%s'\n", argv[1]);
      return usage(NULL);
    }
    i = 2;
  } else if (argc > 1 && strcmp(argv[1], "--") == 0) {
    i = 2;
  }
  const char *golden = NULL;
  if (m == CHECK) {
    if (i >= argc) return usage("--check wants a golden file and a trace");
    golden = argv[i++];
  }
  if (argc - i != 1) return usage(argc - i ? "one file at a time" : "no file given");
  if (m == MTREE) return mtree(argv[i]);
  trace t;
  if (trace_read(&t, argv[i], stderr) || trace_link(&t, stderr)) {
    trace_free(&t);
    return EXIT_USAGE;
  }
  int rc = EXIT_OK;
  if (golden) {
    rc = trace_check_golden(&t, golden, stdout);
  } else if (modes[m].write(&t, stdout) || fflush(stdout)) {
    fprintf(stderr, "membacking-trace: out of memory, or cannot write the output\n");
    rc = EXIT_USAGE;
  }
  if (modes[m].write == trace_write_stages) warn_sampled(&t);
  trace_free(&t);
  return rc;
}
