/* trace_main.c: membacking-trace, a message trace (MEMBACKING_TRACE=path) made readable:
 *
 *   membacking-trace [--text|--chrome|--stages|--golden] TRACE
 *   membacking-trace --check GOLDEN TRACE
 *
 * TRACE "-" is stdin. The output goes to stdout. Exit status: 0, 1 when --check finds a
 * difference, 2 on a usage error, an unreadable or malformed trace (FILE:LINE: what). */
#include <stdlib.h>
#include <string.h>

#include "trace.h"

enum { EXIT_OK = 0, EXIT_DIFFERS = 1, EXIT_USAGE = 2 };

static int usage(const char *why) {
  if (why) fprintf(stderr, "membacking-trace: %s\n", why);
  fprintf(stderr, "usage: membacking-trace [--text|--chrome|--stages|--golden] TRACE\n"
                  "       membacking-trace --check GOLDEN TRACE\n");
  return EXIT_USAGE;
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
               {"--check", NULL}};
  int m = 0, i = 1;
  if (argc > 1 && strncmp(argv[1], "--", 2) == 0 && strcmp(argv[1], "--") != 0) {
    for (m = 0; m < 5 && strcmp(argv[1], modes[m].opt) != 0; m++) continue;
    if (m == 5) {
      fprintf(stderr, "membacking-trace: unknown option '%s'\n", argv[1]);
      return usage(NULL);
    }
    i = 2;
  } else if (argc > 1 && strcmp(argv[1], "--") == 0) {
    i = 2;
  }
  const char *golden = NULL;
  if (!modes[m].write) {
    if (i >= argc) return usage("--check wants a golden file and a trace");
    golden = argv[i++];
  }
  if (argc - i != 1) return usage(argc - i ? "one trace at a time" : "no trace given");
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
  trace_free(&t);
  return rc;
}
