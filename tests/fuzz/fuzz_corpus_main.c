/* fuzz_corpus_main.c: runs the fuzz target once over every input of the corpus, for builds
 * without libFuzzer (gcc): the inputs the fuzzer kept become a regression test of the parser
 * and printer, under every sanitizer those builds use.
 *
 *   fuzz-scenario-corpus DIR|FILE...
 */
#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Read a whole file; NULL (after a message) when it cannot be read. */
static uint8_t *slurp(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    perror(path);
    return NULL;
  }
  uint8_t *buf = NULL;
  size_t len = 0, cap = 0, n;
  do {
    if (len == cap) {
      cap = cap ? 2 * cap : 4096;
      uint8_t *grown = realloc(buf, cap);
      if (!grown) break;
      buf = grown;
    }
    n = fread(buf + len, 1, cap - len, f);
    len += n;
  } while (n > 0);
  bool ok = !ferror(f) && len < cap;
  fclose(f);
  if (!ok) {
    fprintf(stderr, "%s: cannot read it\n", path);
    free(buf);
    return NULL;
  }
  *size = len;
  return buf;
}

static int run_file(const char *path) {
  size_t size = 0;
  uint8_t *data = slurp(path, &size);
  if (!data) return -1;
  LLVMFuzzerTestOneInput(data, size); /* aborts on a finding */
  free(data);
  return 1;
}

/* Every regular file of a directory (not recursive). The count, or -1. */
static int run_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) {
    perror(dir);
    return -1;
  }
  int n = 0;
  for (struct dirent *e; n >= 0 && (e = readdir(d));) {
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) n = run_file(path) < 0 ? -1 : n + 1;
  }
  closedir(d);
  return n;
}

int main(int argc, char **argv) {
  int total = 0;
  for (int i = 1; i < argc; i++) {
    struct stat st;
    int n = stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode) ? run_dir(argv[i]) : run_file(argv[i]);
    if (n < 0) return 1;
    total += n;
  }
  printf("%d inputs: parse, print, parse again agree\n", total);
  return total > 0 ? 0 : 1;
}
