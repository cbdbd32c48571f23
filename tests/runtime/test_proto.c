/* test_proto.c: the one definition of the tests' protocol. */
#include "test_proto.h"

MB_PROTOCOL_DEFINE(t, T_MESSAGES);
