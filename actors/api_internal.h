/* api_internal.h: what the public API's files (membacking.c, membacking_consumers.c) share:
 * the manager's handle and the two ways of issuing a request. */
#ifndef MB_API_INTERNAL_H
#define MB_API_INTERNAL_H

#include <pthread.h>

#include "mapping_manager.h"
#include "membacking.h"
#include "partition_mapper.h"
#include "region_manager.h"
#include "record.h"
#include "va_mapper.h"

struct mb_mapper {
  mb_mm *mm;
  mb_vam *vam;
  mb_loop *loop;
  mb_mapper *prev, *next;
};

struct mb_partition {
  mb_mm *mm;
  const mb_partition_ops *ops;
  mb_actor *actor;
  mb_loop *loop;
  mb_partition *prev, *next;
};

struct mb_mm {
  mb_loop *loop;          /* region manager and mapping manager */
  mb_actor *rm, *mm;
  uint64_t max_addr;
  mb_loop *part_loop;
  mb_vam *part_vam;       /* the partitions' eager VA mapper */
  mb_mapper primary;      /* the public handle of part_vam (never on the mappers list) */
  mb_gpa_map *gpa_map;    /* the visible map, published for exit handlers (classify) */
  pthread_mutex_t lock;   /* guards the two lists below */
  mb_mapper *mappers;
  mb_partition *partitions;
  int overlap;
  mb__rec *rec;           /* NULL unless recording */
  void *insp_signal;      /* the dump-on-signal handle, on `loop` */
  int signum;
};

/* Reads the operation's value out of its reply (a region id, a state, ...). */
typedef uint64_t (*mb__value_fn)(mb_msg *reply);

/* Asynchronous form: send `msg` as a request from the calling thread's loop; done() runs there
 * with the status and value. `obj`, if not NULL, is a reference released after completion.
 * `rec`, if not NULL, records the completed request. */
void mb__api_submit(mb__rec *rec, mb_addr to, mb_msg *msg, mb__value_fn value, mb_object *obj,
                    mb_done_fn done, void *ctx);
/* Blocking form: the status; *value filled when value_fn and value are given. */
int mb__api_call(mb__rec *rec, mb_addr to, mb_msg *msg, mb__value_fn value_fn, uint64_t *value);

/* Destroy a mapper or partition on its loop and unlink it from its manager (blocking). The
 * mapper's: 0, or mb_vam_destroy's error (its VA could not be released; it is gone anyway). */
int mb__mapper_destroy(mb_mapper *m);
void mb__partition_destroy(mb_partition *p);

/* Close the dump-on-signal handle, if any (inspect.c). */
void mb__inspect_stop(mb_mm *mm);

/* Turn a ranges reply (a malloc'd mb_part_range array) into an mb_range_list. */
mb_range_list *mb__range_list(mb_part_range *ranges, uint32_t count);

#endif
