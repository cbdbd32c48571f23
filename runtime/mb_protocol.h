/* mb_protocol.h: declare an actor's message set once; everything else is generated from it.
 *
 * An actor's header lists its messages with an X-macro, each message's fields with another:
 *
 *   #define ECHO_PING_FIELDS(F) F(uint64_t, seq) F(uint32_t, value)
 *   #define ECHO_ADD_FIELDS(F)  F(int64_t, a) F(int64_t, b) F(int64_t, sum)
 *   #define ECHO_MESSAGES(M) \
 *     M(echo, ECHO_PING, ping, ECHO_PING_FIELDS) \
 *     M(echo, ECHO_ADD,  add,  ECHO_ADD_FIELDS)
 *   MB_PROTOCOL_DECLARE(echo, ECHO_MESSAGES)
 *
 * and exactly one .c file says MB_PROTOCOL_DEFINE(echo, ECHO_MESSAGES) (or
 * MB_PROTOCOL_DEFINE_DISPOSE(echo, ECHO_MESSAGES, fn) when messages own memory that the runtime
 * must release if it drops them undelivered). That yields:
 *   - enum echo_kind { ECHO_PING, ECHO_ADD, echo_kind_count };
 *   - per message a struct echo_ping_msg { mb_msg hdr; uint64_t seq; uint32_t value; };
 *   - echo_ping_new(): a zeroed message of the right kind and size, so the kind and the
 *     payload type cannot disagree at a send site;
 *   - echo_ping_of(mb_msg *): the checked downcast a handler uses after switching on kind;
 *   - const mb_protocol echo_protocol: kind names for traces and a formatter that prints any
 *     message of the protocol as "name=value ..." text (mb_msg_format).
 *
 * A request and its reply share one struct: the reply fields are written in place. Field
 * types: integers, bool, pointers, char arrays (printed as strings) and any other type
 * (printed as hex bytes). Array fields go through a typedef (typedef char name_t[64]). No
 * char * fields: messages cross threads, strings travel inline.
 */
#ifndef MB_PROTOCOL_H
#define MB_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mb_runtime.h"

struct mb_protocol {
  const char *name;
  uint32_t nkinds;
  const char *const *kind_names;
  void (*format)(const mb_msg *msg, char *buf, size_t len);
  /* Optional: release what a message owns (an array a reply carries, ...) when the runtime
   * drops it undelivered: a reply whose requester is gone, a one-way message to a gone actor. */
  void (*dispose)(mb_msg *msg);
};

/* Kind name of a message ("?" when out of range). */
const char *mb_msg_kind_name(const mb_msg *msg);
/* Format a message's fields as text into buf (always NUL-terminated). */
void mb_msg_format(const mb_msg *msg, char *buf, size_t len);

/* Field formatters, chosen by type with _Generic; each appends " name=value". */
typedef size_t (*mb__fmt_fn)(char *buf, size_t len, const char *name, const void *p, size_t sz);
size_t mb__fmt_uint(char *buf, size_t len, const char *name, const void *p, size_t sz);
size_t mb__fmt_int(char *buf, size_t len, const char *name, const void *p, size_t sz);
size_t mb__fmt_bool(char *buf, size_t len, const char *name, const void *p, size_t sz);
size_t mb__fmt_ptr(char *buf, size_t len, const char *name, const void *p, size_t sz);
size_t mb__fmt_str(char *buf, size_t len, const char *name, const void *p, size_t sz);
size_t mb__fmt_hex(char *buf, size_t len, const char *name, const void *p, size_t sz);

#define MB__FMT_SELECT(x)                                                                      \
  _Generic((x),                                                                                \
      bool: mb__fmt_bool,                                                                      \
      char *: mb__fmt_str,                                                                     \
      const char *: mb__fmt_str,                                                               \
      unsigned char: mb__fmt_uint, unsigned short: mb__fmt_uint, unsigned int: mb__fmt_uint,    \
      unsigned long: mb__fmt_uint, unsigned long long: mb__fmt_uint,                           \
      signed char: mb__fmt_int, short: mb__fmt_int, int: mb__fmt_int, long: mb__fmt_int,       \
      long long: mb__fmt_int,                                                                  \
      void *: mb__fmt_ptr, const void *: mb__fmt_ptr,                                          \
      default: mb__fmt_hex)

/* ---- generators ---------------------------------------------------------------------------- */

#define MB__FIELD_DECL(type, field) type field;
#define MB__KIND_ENUM(P, KIND, name, FIELDS) KIND,
#define MB__MSG_STRUCT(P, KIND, name, FIELDS)                                              \
  typedef struct P##_##name##_msg {                                                        \
    mb_msg hdr;                                                                                \
    FIELDS(MB__FIELD_DECL)                                                                     \
  } P##_##name##_msg;                                                                      \
  static inline P##_##name##_msg *P##_##name##_new(void) {                             \
    return (P##_##name##_msg *)mb_msg_new(&P##_protocol, KIND,                         \
                                              sizeof(P##_##name##_msg));                   \
  }                                                                                            \
  static inline P##_##name##_msg *P##_##name##_of(mb_msg *m) {                         \
    return (m && m->proto == &P##_protocol && m->kind == KIND)                             \
               ? (P##_##name##_msg *)(void *)m                                             \
               : NULL;                                                                         \
  }

#define MB_PROTOCOL_DECLARE(P, MESSAGES)                                                   \
  enum P##_kind { MESSAGES(MB__KIND_ENUM) P##_kind_count };                            \
  extern const mb_protocol P##_protocol;                                                   \
  MESSAGES(MB__MSG_STRUCT)

#define MB__KIND_NAME(P, KIND, name, FIELDS) #name,
#define MB__FIELD_FMT(type, field)                                                             \
  n += MB__FMT_SELECT(m->field)(buf + n, len - n, #field, (const void *)&m->field,             \
                                sizeof m->field);                                             \
  if (n >= len) return;
#define MB__KIND_FMT(P, KIND, name, FIELDS)                                                \
  case KIND: {                                                                                 \
    const P##_##name##_msg *m = (const P##_##name##_msg *)(const void *)msg;           \
    (void)m;                                                                                   \
    FIELDS(MB__FIELD_FMT)                                                                      \
    return;                                                                                    \
  }

#define MB_PROTOCOL_DEFINE(P, MESSAGES) MB_PROTOCOL_DEFINE_DISPOSE(P, MESSAGES, NULL)
#define MB_PROTOCOL_DEFINE_DISPOSE(P, MESSAGES, DISPOSE)                                   \
  static const char *const P##__kind_names[] = {MESSAGES(MB__KIND_NAME)};                  \
  static void P##__format(const mb_msg *msg, char *buf, size_t len) {                      \
    size_t n = 0;                                                                              \
    buf[0] = '\0';                                                                             \
    switch ((enum P##_kind)msg->kind) {                                                    \
      MESSAGES(MB__KIND_FMT)                                                                   \
    default:                                                                                   \
      return;                                                                                  \
    }                                                                                          \
  }                                                                                            \
  const mb_protocol P##_protocol = {#P, P##_kind_count, P##__kind_names, P##__format, \
                                    DISPOSE}

#endif
