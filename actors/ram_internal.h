/* ram_internal.h: what the RAM builder's files share (mb_ram.h): the built RAM, the checks,
 * and a runner of region operations in sequence, blocking or asynchronous.
 *   ram_check.c       the checks of a build, in the documented order, and their messages
 *   ram_builder.c     objects, the region plan, build and destroy
 *   ram_steps.c       running a list of region operations (sync or async)
 *   ram_visibility.c  the legacy windows' RAM visibility, one transaction per call */
#ifndef MB_RAM_INTERNAL_H
#define MB_RAM_INTERNAL_H

#include <stdarg.h>

#include "mb_ram.h"

/* One region of the RAM: its range, what backs it, and what the manager knows it by. */
typedef struct ram_region {
  mb_ram_range range;
  mb_object *obj;           /* borrowed from mb_ram.objs */
  uint64_t obj_off;
  mb_region_id id;
  bool added;               /* the manager has it (id valid) */
  bool window;              /* a region of the legacy split: its visibility may change */
  uint8_t vtl;              /* its request's */
  mb_ram_visibility vis;
} ram_region;

struct mb_ram {
  mb_mm *mm;
  ram_region *regions;      /* in guest address order */
  size_t count;
  mb_object **objs;         /* one per request, owned */
  size_t nobjs;
};

/* ---- checks (ram_check.c) ------------------------------------------------------------------ */

/* 0, or the first failure in the order of mb_ram.h, reported in *err (may be NULL). */
int mb__ram_check(const mb_ram_config *cfg, uint64_t max_addr, uint8_t vtls, mb_ram_error *err);
/* Fills *err (if not NULL) and returns code. */
int mb__ram_fail(mb_ram_error *err, int code, mb_ram_reason reason, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* A size for messages: "2 MiB", "16 KiB", else "0x1234 bytes". */
const char *mb__ram_size(char buf[32], uint64_t bytes);

/* ---- running region operations in sequence (ram_steps.c) ---------------------------------- */

typedef enum ram_step_kind {
  RS_REGION_ADD,            /* regions[reg]: add (stores id, sets added) */
  RS_MAPPING_ADD,           /* regions[reg]: its object, whole region, read-write */
  RS_REGION_MAP,            /* with `writable` */
  RS_REGION_UNMAP,
  RS_REGION_REMOVE,         /* clears added */
  RS_TXN_BEGIN,
  RS_TXN_COMMIT,
} ram_step_kind;

typedef struct ram_step {
  ram_step_kind kind;
  uint32_t reg;
  bool writable;
} ram_step;

typedef struct ram_run ram_run;
struct ram_run {
  mb_ram *ram;
  const ram_step *steps;
  size_t n;
  bool keep_going;          /* run every step (undo lists); else stop at the first failure */
  size_t next;              /* after the run: n, or the index of the step that failed */
  int status;               /* the first failure, or 0 */
  void (*finish)(ram_run *run); /* async: when the run is over, on the caller's loop */
  void *owner;
};

/* Runs the steps with membacking's blocking calls: the status. */
int mb__ram_run_sync(ram_run *run);
/* Runs them with the asynchronous calls, each issued when the one before completed, then
 * calls run->finish. Only on a thread that runs a loop. */
void mb__ram_run_async(ram_run *run);
/* Calls fn(arg) on the calling thread's loop later (never inside): the asynchronous forms'
 * way to complete. Without a loop (a caller's programming error) or memory for the post,
 * fn runs inside the call. */
void mb__ram_later(void (*fn)(void *arg), void *arg);

/* The step that sets a window to vis. */
ram_step mb__ram_vis_step(uint32_t reg, mb_ram_visibility vis);

#endif
