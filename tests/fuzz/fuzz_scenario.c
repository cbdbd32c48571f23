/* fuzz_scenario.c: the scenario parser and printer under a fuzzer (libFuzzer's entry point).
 *
 * What must hold for any input, or the target aborts (a finding):
 *   - the parser refuses it with one message naming the file and a line of the input
 *     ("fuzz.mbs:LINE: ..."), or accepts it;
 *   - an accepted program, printed, parses again into the same program (scenario_equal);
 *   - printing that program gives the same text again.
 * Memory and time per input are bounded by the parser itself (SCENARIO_DATA_MAX); libFuzzer's
 * -timeout and -rss_limit_mb report any input that breaks those bounds. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scenario.h"

#define NAME "fuzz.mbs"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void finding(const char *what, const char *a, const char *b) {
  fprintf(stderr, "fuzz_scenario: %s\n", what);
  if (a) fprintf(stderr, "--- first:\n%s\n", a);
  if (b) fprintf(stderr, "--- second:\n%s\n", b);
  abort();
}

static char *print_program(const scenario *sc) {
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  if (!f) finding("open_memstream failed", NULL, NULL);
  scenario_print(f, sc);
  if (fclose(f) != 0) finding("printing failed", NULL, NULL);
  return text;
}

static char *print_command(const scenario_cmd *cmd) {
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  if (!f) finding("open_memstream failed", NULL, NULL);
  scenario_print_command(f, cmd);
  if (fclose(f) != 0) finding("printing failed", NULL, NULL);
  return text;
}

/* A refusal reads "fuzz.mbs:LINE: what", LINE between 1 and the input's number of lines. */
static void check_refusal(const char *err, const uint8_t *data, size_t size) {
  size_t lines = 1;
  for (size_t i = 0; i + 1 < size; i++) lines += data[i] == '\n';
  const char *p = err + strlen(NAME ":");
  char *end = NULL;
  unsigned long line = strncmp(err, NAME ":", strlen(NAME ":")) == 0 ? strtoul(p, &end, 10) : 0;
  if (line == 0 || line > lines || end == p || strncmp(end, ": ", 2) != 0 || end[2] == '\0')
    finding("a refusal that does not name the file and a line of it", err, NULL);
}

/* parse(print(a)) must be a; printing it again must give the same text. */
static void check_round_trip(const scenario *a) {
  char err[512];
  char *text = print_program(a);
  scenario *b = NULL;
  if (scenario_parse_string(text, NAME, &b, err, sizeof err) != 0)
    finding("the printed program does not parse", text, err);
  size_t at = 0;
  if (!scenario_equal(a, b, &at)) {
    char *x = at < a->ncmds ? print_command(&a->cmds[at]) : NULL;
    char *y = at < b->ncmds ? print_command(&b->cmds[at]) : NULL;
    finding("parsing the printed program gives another program", x ? x : text, y);
  }
  char *again = print_program(b);
  if (strcmp(text, again) != 0)
    finding("printing the program again gives another text", text, again);
  free(again);
  scenario_free(b);
  free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[512];
  scenario *sc = NULL;
  if (scenario_parse_text((const char *)data, size, NAME, &sc, err, sizeof err) != 0) {
    check_refusal(err, data, size);
    return 0;
  }
  check_round_trip(sc);
  scenario_free(sc);
  return 0;
}
