/* record.h: recording a manager's operations in the scenario format (spec/scenario.md,
 * "Recording"), so that a VMM's run replays as a test. Internal to the public API's files. */
#ifndef MB_RECORD_H
#define MB_RECORD_H

#include "membacking.h"

typedef struct mb__rec mb__rec;

/* Open a recording for a manager: writes its config lines. NULL (and *err) on failure. */
mb__rec *mb__rec_open(const char *path, const mb_mm *mm, int overlap, int *err);
/* The path MEMBACKING_RECORD asks for, for the n-th manager of the process: PATH, PATH.1,
 * PATH.2, ... into buf; false when it is not set. */
bool mb__rec_env_path(char *buf, size_t len);
/* A region-manager request that completed with `status` (its message holds the request's
 * fields and the reply's). */
void mb__rec_request(mb__rec *r, mb_msg *msg, int status);
/* A region-manager request about to be sent (before mb__rec_request of its reply): a request
 * in flight while a lock or an unlock is written is recorded as `async` and `await`. */
void mb__rec_issue(mb__rec *r, const mb_msg *msg);
/* Locks, from any thread, through whichever open recording names the mapper: a lock through m
 * (the internal mapper) with its result and, when it succeeded, its handle h, written before
 * the handle is returned; an unlock of h written before the lock is released (status 0), or
 * refused (status: the API's answer). */
void mb__rec_lock(const mb_mapper *m, uint64_t gpa, uint64_t size, bool writable, uintptr_t h,
                  int status);
void mb__rec_unlock(uintptr_t h, int status);
/* Consumers: the handle is the name's key. */
void mb__rec_mapper(mb__rec *r, bool add, const mb_mapper *m, bool eager, int status);
void mb__rec_partition(mb__rec *r, bool add, const mb_partition *p, const char *backend,
                       int status);
/* At the manager's destruction: `expect` lines for every region and partition, then close.
 * Runs the state reads on the actors' loops (mb_loop_exec). */
void mb__rec_close(mb__rec *r, mb_mm *mm);

#endif
