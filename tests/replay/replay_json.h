/* replay_json.h: a small JSON reader for the runner's fault check, which reads the manager's
 * introspection (mb_mm_inspect). It holds the whole document as a tree; numbers that are
 * integers are exact up to 64 bits (guest addresses), others are kept as doubles. */
#ifndef REPLAY_JSON_H
#define REPLAY_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum rjson_type { RJSON_NULL, RJSON_BOOL, RJSON_NUMBER, RJSON_STRING, RJSON_ARRAY,
                          RJSON_OBJECT } rjson_type;

typedef struct rjson rjson;
struct rjson {
  rjson_type type;
  bool boolean;
  bool integer;    /* a number without fraction or exponent, 0..UINT64_MAX: in u */
  uint64_t u;
  double d;
  char *string;    /* RJSON_STRING; for a member of an object, its key is in key */
  char *key;
  rjson *items;    /* the elements of an array or the members of an object */
  size_t n;
};

/* Parse text; NULL when it is not one JSON value (or out of memory). */
rjson *rjson_parse(const char *text);
void rjson_free(rjson *v);
/* The member `key` of an object, or NULL (also when v is not an object). */
const rjson *rjson_get(const rjson *v, const char *key);
/* The member's value as an integer / a string / a bool, or `dflt` when absent or another type. */
uint64_t rjson_u64(const rjson *v, const char *key, uint64_t dflt);
const char *rjson_str(const rjson *v, const char *key, const char *dflt);
bool rjson_bool(const rjson *v, const char *key, bool dflt);

#endif
