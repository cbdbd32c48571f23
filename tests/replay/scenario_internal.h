/* scenario_internal.h: what the parser's files share (tokens, numbers, names, the parser's
 * state, the file-wide rules). Not for the engine: it reads scenario.h only. */
#ifndef SCENARIO_INTERNAL_H
#define SCENARIO_INTERNAL_H

#include "scenario.h"

/* ---- tokens (scenario_lex.c) ---------------------------------------------------------------- */

/* A token: a slice of the line, not NUL-terminated. */
typedef struct scenario__tok {
  const char *p;
  size_t n;
} scenario__tok;

/* The unread rest of a line, comment already cut off. */
typedef struct scenario__cursor {
  const char *p;
  const char *end;
} scenario__cursor;

/* Take the next space- or tab-separated token; false at the end of the line. */
bool scenario__next(scenario__cursor *c, scenario__tok *t);
/* Look at the next token without taking it. */
bool scenario__peek(const scenario__cursor *c, scenario__tok *t);
bool scenario__tok_is(scenario__tok t, const char *s);
bool scenario__tok_starts(scenario__tok t, const char *prefix);
/* Is t the start of a result (`=>`, or a mistyped one such as `=>ok`)? */
bool scenario__tok_is_arrow(scenario__tok t);
/* printf arguments for "%.*s" showing a token, cut to a readable length. */
#define SCENARIO__TOK(t) (int)((t).n > 60 ? 60 : (t).n), (t).p

typedef enum scenario__num {
  SCENARIO__NUM_OK,
  SCENARIO__NUM_MALFORMED,
  SCENARIO__NUM_OVERFLOW,
} scenario__num;
/* NUMBER: decimal or 0x-hex, optionally followed by K, M, G or T (binary). */
scenario__num scenario__number(scenario__tok t, uint64_t *out);
/* -1 when c is not a hex digit. */
int scenario__hex_digit(char c);

typedef enum scenario__name {
  SCENARIO__NAME_OK,
  SCENARIO__NAME_MALFORMED,
  SCENARIO__NAME_TOO_LONG,
} scenario__name;
/* NAME: [A-Za-z_][A-Za-z0-9_.-]*, at most SCENARIO_NAME_MAX characters. */
scenario__name scenario__name_check(scenario__tok t);

/* The words of enumerated values, indexed by the value, NULL-terminated: parser and printer
 * share them, so that each spelling is written once. */
extern const char *const scenario__access_words[];      /* rw, ro: index = ro */
extern const char *const scenario__overlap_words[];     /* scenario_overlap */
extern const char *const scenario__object_words[];      /* scenario_object.type */
extern const char *const scenario__region_type_words[]; /* scenario_region_type */
extern const char *const scenario__mapper_words[];      /* scenario_mapper.mode */
extern const char *const scenario__partition_words[];   /* scenario_partition.backend */
extern const char *const scenario__state_words[];       /* scenario_region_state */
extern const char *const scenario__prot_words[];        /* scenario_prot: none, ro, rw */

/* ---- live names (scenario_scope.c) ---------------------------------------------------------- */

/* One live name. For an async label: index is the async command's index in the program (its
 * ordinal in the file), kind and len are the kind of the operation it started and, for a
 * read, its LEN, ref is the name that operation adds or removes, if any, and opened_txn says
 * that it is a txn begin that opened the transaction the parser follows: what its await
 * needs, kept here so that a stream need not keep the async command itself. */
typedef struct scenario__live {
  char name[SCENARIO_NAME_SIZE];
  char ref[SCENARIO_NAME_SIZE];
  unsigned line; /* where it became live */
  size_t index;
  scenario_cmd_kind kind;
  uint64_t len;
  uint32_t hash;
  bool used;
  bool opened_txn;
} scenario__live;

/* A set of live names: open addressing, linear probing, no tombstones. */
typedef struct scenario__scope {
  scenario__live *slots;
  size_t cap; /* 0 or a power of two */
  size_t n;
} scenario__scope;

scenario__live *scenario__scope_find(const scenario__scope *s, const char *name);
/* Make dst (empty) a copy of src; -1 when out of memory (dst stays empty). */
int scenario__scope_copy(scenario__scope *dst, const scenario__scope *src);
/* Add a name that is not in the set; NULL when out of memory. */
scenario__live *scenario__scope_add(scenario__scope *s, const char *name);
void scenario__scope_remove(scenario__scope *s, scenario__live *e);
void scenario__scope_free(scenario__scope *s);

/* ---- the parser (scenario.c) and its file-wide rules (scenario_check.c) --------------------- */

/* The name spaces of the format: each has its own set of live names. */
typedef enum scenario__ns {
  SCENARIO__NS_REGION,
  SCENARIO__NS_OBJECT,
  SCENARIO__NS_MAPPER,
  SCENARIO__NS_PARTITION,
  SCENARIO__NS_LOCK,
  SCENARIO__NS_LABEL,
  SCENARIO__NS_COUNT
} scenario__ns;

typedef struct scenario__parser scenario__parser;

struct scenario__parser {
  const char *file; /* for messages */
  unsigned line;
  const char *what; /* the command being parsed ("region add"), for messages */
  char word[16];    /* the first word of the command being parsed */
  char *err;
  size_t errlen;
  scenario *sc;     /* the configuration; and, unless streaming, the commands */
  size_t cap;       /* allocated length of sc->cmds */
  size_t count;     /* commands parsed so far: the next one's index in the program */
  /* Where the next command goes: appended to sc->cmds, or a command of its own (a stream). */
  scenario_cmd *(*slot)(scenario__parser *P);
  bool past_config; /* a command other than config/require has been seen (the configuration
                     * was checked then) */
  unsigned setting_line[SCENARIO_CONFIG_KEYS]; /* the line of each config key
                                                * (scenario_config.key), 0: default */
  bool vtls_ascending; /* the config vtls line wrote its VTLs strictly ascending */
  bool in_async;    /* parsing the command an async line wraps */
  uint64_t data;    /* bytes of BYTES and HEXBYTES decoded so far: at most SCENARIO_DATA_MAX */
  scenario__scope live[SCENARIO__NS_COUNT];
  /* A transaction the script expects to be open: the region names live at its begin, which
   * a commit expected to fail gives back. */
  bool in_txn;
  scenario__scope txn_regions;
};

/* Report "file:line: message" and return -1. */
int scenario__fail(scenario__parser *P, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One line of a file, its newline cut off: 0 for a line without a command (blank, or only a
 * comment), 1 when its command was parsed into the slot that P->slot gave (and checked), -1
 * after scenario__fail (the slot, if one was taken, may hold part of a command). */
int scenario__parse_line(scenario__parser *P, const char *p, const char *end);
/* Free what a command owns (not the command itself). */
void scenario__cmd_clear(scenario_cmd *cmd);
/* The configuration is complete (the first other command begins, or the input ends): it is
 * checked, once. 0, or -1 after scenario__fail. */
int scenario__config_done(scenario__parser *P);
/* Free the parser's own state (live names), not the scenario. */
void scenario__parser_free(scenario__parser *P);

/* A live label, or NULL. */
const scenario__live *scenario__label(const scenario__parser *P, const char *label);
/* Apply the file-wide rules (live names, labels, transactions) to the command just parsed, the
 * program's command number `index`, and record its effect on the live names. */
int scenario__check(scenario__parser *P, const scenario_cmd *c, size_t index);
/* The configuration lines, checked together after the last of them (spec "Configuration"). */
int scenario__config_check(scenario__parser *P);
/* The configuration of a file without config lines. */
void scenario__config_defaults(scenario *sc);
/* Can VTL vtl be protected (`protect`, `expect protection`): configured, with a higher VTL
 * configured above it? */
bool scenario__vtl_protectable(const scenario *sc, unsigned vtl);

#endif /* SCENARIO_INTERNAL_H */
