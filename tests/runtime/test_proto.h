/* test_proto.h: the message set the runtime tests use. */
#ifndef MB_TEST_PROTO_H
#define MB_TEST_PROTO_H

#include "mb_protocol.h"

#define T_SEQ_FIELDS(F) F(uint32_t, sender) F(uint64_t, seq)
#define T_ADD_FIELDS(F) F(int64_t, a) F(int64_t, b) F(int64_t, sum)
typedef char t_text[24];
#define T_NOTE_FIELDS(F) F(t_text, text) F(bool, flag) F(void *, ptr) F(int32_t, neg)
#define T_MESSAGES(M)                  \
  M(t, T_SEQ, seq, T_SEQ_FIELDS)       \
  M(t, T_ADD, add, T_ADD_FIELDS)       \
  M(t, T_NOTE, note, T_NOTE_FIELDS)
MB_PROTOCOL_DECLARE(t, T_MESSAGES)

#endif
