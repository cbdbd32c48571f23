/* scenario_stream.c: a scenario file read one command at a time (scenario.h, "streaming"). Each
 * line goes through the parser that whole files go through (scenario__parse_line); only where
 * the command lands differs: a command of its own, handed to the caller, instead of the next
 * element of a program. */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "scenario_internal.h"

struct scenario_stream {
  scenario__parser P;
  scenario sc;        /* the configuration, the name; no commands */
  FILE *f;
  char *line;         /* getline's buffer: the longest line so far */
  size_t cap;
  scenario_cmd *cmd;  /* the slot of the line being parsed */
  bool failed;
  char err[512];
};

static scenario_cmd *own_slot(scenario__parser *P) {
  scenario_stream *s = (scenario_stream *)((char *)P - offsetof(scenario_stream, P));
  s->cmd = calloc(1, sizeof *s->cmd);
  return s->cmd;
}

int scenario_stream_open(const char *path, scenario_stream **out, char *err, size_t errlen) {
  scenario__parser E = {.file = path, .err = err, .errlen = errlen};
  *out = NULL;
  scenario_stream *s = calloc(1, sizeof *s);
  if (!s || !(s->sc.name = strdup(path))) {
    free(s);
    return scenario__fail(&E, "out of memory");
  }
  if (!(s->f = fopen(path, "rb"))) {
    int e = errno;
    scenario_stream_close(s);
    return scenario__fail(&E, "cannot open: %s", strerror(e));
  }
  scenario__config_defaults(&s->sc);
  s->P = (scenario__parser){.file = s->sc.name, .err = s->err, .errlen = sizeof s->err,
                            .sc = &s->sc, .slot = own_slot};
  *out = s;
  return 0;
}

/* The next line, its newline cut off: its end, or NULL at the end of the file (or after a
 * read error, reported). */
static const char *next_line(scenario_stream *s) {
  ssize_t n = getline(&s->line, &s->cap, s->f);
  if (n < 0) {
    if (ferror(s->f)) scenario__fail(&s->P, "read error: %s", strerror(errno));
    return NULL;
  }
  if (n > 0 && s->line[n - 1] == '\n') n--;
  return s->line + n;
}

int scenario_stream_next(scenario_stream *s, scenario_cmd **out) {
  *out = NULL;
  while (!s->failed) {
    const char *end = next_line(s);
    if (!end) {
      s->failed = ferror(s->f) != 0 || scenario__config_done(&s->P) != 0;
      return s->failed ? -1 : 0;
    }
    s->P.line++;
    int rc = scenario__parse_line(&s->P, s->line, end);
    s->sc.ncmds = s->P.count;
    if (rc > 0) *out = s->cmd;
    else scenario_cmd_free(s->cmd); /* a command begun on a line that does not parse */
    s->cmd = NULL;
    if (rc > 0) return 1;
    s->failed = rc < 0;
  }
  return -1;
}

const char *scenario_stream_error(const scenario_stream *s) { return s->err; }

const scenario *scenario_stream_info(const scenario_stream *s) { return &s->sc; }

void scenario_stream_close(scenario_stream *s) {
  if (!s) return;
  scenario__parser_free(&s->P);
  if (s->f) fclose(s->f);
  free(s->line);
  free(s->sc.name);
  free(s);
}
