/* replay.h: membacking-replay's internals: the world a scenario runs in (loops, the manager,
 * the name tables), the operations in flight, and the executor that drives them.
 *
 * Threads
 *   Everything here runs on the main thread, which runs the client loop (an mb_loop attached
 *   to a uv_loop_t of its own) and issues every operation with the asynchronous API. The one
 *   exception is the access worker (replay_worker.c): it performs the mapper reads, writes and
 *   locks that may block on the mapping manager (a lazy mapper's that faults pages in), one
 *   at a time, and hands each back through the operation's `done` flag and a post to the
 *   client loop (a lock's completion runs on the client loop, which then owns the lock under
 *   its name). Those that cannot block run on the main thread, when the worker has nothing
 *   queued before them: an eager mapper's (a fault there is an error at once), and in single
 *   a lazy mapper's that needs no fault-in (replay_ops.c, try_here). Unlock never blocks: it
 *   runs on the main thread.
 *
 * Memory
 *   A file is read twice, one command at a time (scenario_stream): once to check it all before
 *   anything runs (replay_scan), once as it runs. A command is freed once it ran, unless an
 *   operation still in flight uses it (an async's, or one that never completed): that one
 *   keeps it. So what a run holds does not grow with the file's length.
 */
#ifndef REPLAY_H
#define REPLAY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <uv.h>

#include "membacking.h"
#include "scenario.h"

/* ---- the world: loops, the manager, names ---------------------------------------------------- */

typedef enum replay_layout {
  REPLAY_SINGLE, /* every actor on the client loop, in the calling thread */
  REPLAY_SPREAD, /* managers on one started loop; each mapper and partition on its own */
} replay_layout;

/* Name spaces: one table each. */
typedef enum replay_ns {
  REPLAY_NS_REGION,
  REPLAY_NS_OBJECT,
  REPLAY_NS_MAPPER,
  REPLAY_NS_PARTITION,
  REPLAY_NS_LOCK,
  REPLAY_NS_COUNT
} replay_ns;

/* A live name and what it stands for. Referenced by its table while it is live and by every
 * operation in flight that uses it; freed (its object released, its loop stopped) with the
 * last reference. */
typedef struct replay_entry {
  char name[SCENARIO_NAME_SIZE];
  unsigned refs;
  bool live; /* still in its table */
  bool shadowed; /* --fault-check: the name was defined again while this one lived (its
                  * remove had failed); lookups skip it, the table keeps it to the end */
  mb_region_id region;
  mb_object *object;
  mb_mapper *mapper;
  mb_partition *partition;
  mb_lock *lock;         /* a lock: held until unlock (or the world's teardown) */
  struct replay_entry *owner; /* a lock: its mapper's entry (referenced) */
  mb_loop *loop; /* spread: the started loop the mapper or partition runs on */
  uint64_t span; /* a mapper or partition: the guest addresses it shows, [0, span): max_addr,
                  * or for VTL 2 with an alias vtl0_alias + max_addr (replay_consumer_span) */
} replay_entry;

typedef struct replay_table {
  replay_entry **items;
  size_t n, cap;
} replay_table;

/* How a file is run: the layout, and the backend that stands in for `soft` partitions. */
typedef struct replay_config {
  replay_layout layout;
  bool kvm_partitions; /* --partitions=kvm: every `partition add NAME soft` makes a kvm one */
  bool fault_check;    /* --fault-check: see replay_fault.c */
} replay_config;

/* The memory a file may make the runner use at run time: access buffers live at once plus
 * objects with a fill (their every page is written), in bytes. The parser bounds a file's
 * decoded BYTES and HEXBYTES separately (SCENARIO_DATA_MAX). */
#define REPLAY_MEMORY_MAX (UINT64_C(256) << 20)

typedef struct replay_op replay_op;

/* A file as the runner knows it before it runs it: what the first pass over it found. */
typedef struct replay_file {
  scenario sc;          /* its name and configuration; cmds NULL, ncmds: how many there are */
  bool uses_soft;       /* it adds a soft partition (sync or async) */
  unsigned first_line;  /* of its first command, and of its last (1 when it has none) */
  unsigned last_line;
} replay_file;

/* What --fault-check has seen of the injected failure so far (replay_fault.c). */
typedef struct replay_fault {
  uint64_t fds;            /* open fds before the world was set up */
  char *maps;              /* the library's mappings then (/proc/self/maps lines) */
  unsigned diverged;       /* results or states that differed from the file's */
  unsigned report_line;    /* the first operation that answered an error it was not expected
                            * to, once the failure was injected (0: none yet) */
  int report_status;
  char *report_cmd;
  unsigned inject_line;    /* the command during which the injection was first seen */
  char *inject_cmd;
  unsigned since_inject;   /* commands run since then */
  uint64_t checked_bytes;  /* introspection the checks read (it bounds their cost) */
  bool stuck;              /* an operation never completed */
  unsigned stopped_line;   /* the file stopped there: it waits behind a lock the script holds */
  unsigned inspect_failed; /* introspections that failed (nothing to compare with) */
  char *kept_maps;         /* mappings left after an injected munmap failure (the kernel's) */
} replay_fault;

/* The transaction the script has open (spec "Transactions", replay_txn.c): open from the
 * moment its begin is issued (closed again if the begin fails) until its commit completes.
 * The region names it defined and removed are kept (referenced) for a commit that fails:
 * the manager then returns to the state of the begin, and so do the names. */
typedef struct replay_txn {
  bool open;
  unsigned line;        /* of its txn begin */
  replay_table added;   /* region entries named inside it */
  replay_table removed; /* region entries whose names it removed */
} replay_txn;

typedef struct replay_world {
  const scenario *sc;
  replay_layout layout;
  bool kvm_partitions;
  uv_loop_t uv;
  bool uv_live, timer_live;
  uv_timer_t stall_timer;  /* asks a long wait to check whether anything can still happen */
  bool stall_check;
  mb_loop *client;         /* attached to uv; the main thread runs it */
  mb_loop *mgr_loop;       /* region manager + mapping manager */
  mb_loop *part_loop;      /* the partitions' own VA mapper */
  mb_loop **started;       /* every started loop still running (spread), for barriers */
  size_t nstarted, capstarted;
  mb_mm *mm;
  replay_table tables[REPLAY_NS_COUNT];
  replay_op *ops;          /* every operation not yet freed */
  uint64_t completions;    /* operations completed, for quiescence */
  uint64_t memory;         /* charged against REPLAY_MEMORY_MAX: live buffers, filled objects */
  /* single: no actor has work left (replay_settle said so), and since then the runner has
   * neither pumped the client loop nor issued anything but the reads and writes it ran on
   * this thread, which send nothing. Every actor runs on this thread, and only when it pumps
   * the loop: the world is still quiescent, and an access needs no new settle. */
  bool quiet;
  replay_fault *fault;     /* --fault-check: its observations (owned by replay_run); else NULL */
  replay_txn txn;
} replay_world;

/* Set up loops and the manager for `sc`. 0, or an error (msg filled). */
int replay_world_init(replay_world *w, const scenario *sc, const replay_config *cfg, char *msg,
                      size_t msglen);
/* Tear everything down: waits for what is in flight, destroys the manager, releases every
 * name, stops the loops and closes the client loop. 0, or -1 when the uv loop would not
 * close (a leak). */
int replay_world_fini(replay_world *w);
/* Release every lock still held under a name (the scenario ended without its unlock). */
void replay_locks_release(replay_world *w);

/* Start a loop of the layout for a mapper or partition (NULL in single: the client loop is
 * used). *err set on failure. */
mb_loop *replay_loop_new(replay_world *w, const char *what, const char *name, int *err);
/* Stop and free a loop made by replay_loop_new (NULL is fine). */
void replay_loop_free(replay_world *w, mb_loop *loop);

/* Name tables. lookup: the live entry, or NULL. add: a new live entry (NULL: no memory).
 * remove: takes it out of its table (dropping the table's reference). */
replay_entry *replay_name_lookup(replay_world *w, replay_ns ns, const char *name);
replay_entry *replay_name_add(replay_world *w, replay_ns ns, const char *name);
void replay_name_remove(replay_world *w, replay_ns ns, replay_entry *e);
/* Put an entry that replay_name_remove took out back into its table (a failed commit). NULL
 * when out of memory (the entry stays out). */
replay_entry *replay_name_restore(replay_world *w, replay_ns ns, replay_entry *e);
replay_entry *replay_entry_ref(replay_entry *e);
void replay_entry_unref(replay_world *w, replay_entry *e);

/* ---- waiting: the client loop, barriers, quiescence -------------------------------------------- */

/* Pump the client loop until op has completed. 0, or -1 when nothing is left that could
 * complete it (every loop quiescent and it is still pending). */
int replay_wait(replay_world *w, replay_op *op);
/* Pump and barrier every loop until no actor has work left and the worker is idle. */
void replay_settle(replay_world *w);
/* Arm / disarm the stall check timer. */
int replay_stall_timer_init(replay_world *w);
void replay_stall_timer_close(replay_world *w);

/* ---- operations ------------------------------------------------------------------------------ */

typedef void (*replay_apply_fn)(replay_op *op);

/* One operation: issued by replay_op_start, completed exactly once (op->done), freed by the
 * executor after it checked the result. */
struct replay_op {
  replay_world *w;
  const scenario_cmd *cmd; /* the operation (the inner command of an async) */
  scenario_cmd *owned;     /* the file's command that cmd is part of, once the op outlives
                            * its line (an async's, or one that never completed): freed with it */
  size_t label;            /* an async's: 1 + the async's index in the file, until awaited */
  atomic_bool done;
  int status;              /* 0 or a negative code */
  uint64_t value;          /* the API's value: id, state, pointer */
  uint8_t *buf;            /* read / guest access data */
  size_t len;
  uint64_t charged;        /* bytes of w->memory it holds: its buffer, a filled object's */
  char *refusal;           /* why the runner itself did not issue it (malloc'd), if it did not */
  replay_entry *entry;     /* the name it acts on (referenced), if any */
  mb_loop *new_loop;       /* spread: the loop started for the mapper or partition it adds */
  mb_range_list *ranges;   /* expect partition / mapper: the actual ranges; a dirty sync's
                            * answer */
  mb_prot_list *prots;     /* expect protection: the actual protections */
  replay_apply_fn apply;   /* updates the world at completion (main thread) */
  replay_op *next;         /* in w->ops */
};

/* Issue the operation `cmd` (an operation, or an expect command that queries state). Never
 * NULL unless out of memory; the returned op may already be done. */
replay_op *replay_op_start(replay_world *w, const scenario_cmd *cmd);
/* An op for `cmd` that the runner answers itself with `status`, issuing nothing (a rule of the
 * format the runner enforces: an unknown label, async inside a transaction). NULL when out of
 * memory. */
replay_op *replay_op_answer(replay_world *w, const scenario_cmd *cmd, int status);
/* Completion, as the API's mb_done_fn (ctx = op), or called directly for an answer the runner
 * gives itself (notfound, unsupported). */
void replay_op_done(void *ctx, int status, uint64_t value);
static inline bool replay_op_is_done(replay_op *op) {
  return atomic_load_explicit(&op->done, memory_order_acquire);
}
void replay_op_free(replay_op *op);

/* ---- transactions (replay_txn.c) ------------------------------------------------------------- */

/* txn begin and txn commit, as start functions of replay_ops.c. */
void replay_txn_begin(replay_world *w, replay_op *op);
void replay_txn_commit(replay_world *w, replay_op *op);
/* A region name defined (added true) or removed while a transaction is open. */
void replay_txn_note(replay_world *w, replay_entry *e, bool added);
/* Forget what the transaction kept (the world's teardown). */
void replay_txn_fini(replay_world *w);

/* ---- virtual trust levels (replay_vtl.c) ----------------------------------------------------- */

/* The guest addresses a consumer at `vtl` shows: [0, max_addr), and for VTL 2 of a file with
 * an alias also VTL 0's view at [vtl0_alias, vtl0_alias + max_addr). The end. */
uint64_t replay_consumer_span(const scenario *sc, uint8_t vtl);
/* protect and expect protection, as start functions of replay_ops.c; the protections an
 * expect protection got are left in op->prots. */
void replay_protect(replay_world *w, replay_op *op);
void replay_expect_protection(replay_world *w, replay_op *op);
/* Compare them with an expect protection command; on a mismatch *got says what they were. */
bool replay_check_protection(const replay_op *op, const scenario_cmd *expect, char **got);

/* ---- dirty-page tracking (replay_dirty.c) ---------------------------------------------------- */

/* dirty start, dirty stop and dirty sync, as start functions of replay_ops.c; a sync's answer
 * is left in op->ranges. */
void replay_dirty_start(replay_world *w, replay_op *op);
void replay_dirty_stop(replay_world *w, replay_op *op);
void replay_dirty_sync(replay_world *w, replay_op *op);

/* ---- the access worker ----------------------------------------------------------------------- */

/* One thread for the whole process; accesses run one at a time in submission order. */
int replay_worker_start(void);
void replay_worker_stop(void);
/* Queue a mapper read, write or lock (op->cmd READ, WRITE or LOCK, op->entry the mapper,
 * op->buf for an access). A lock completes through replay_op_done on the client loop, with
 * the mb_lock * as its value. */
int replay_worker_submit(replay_op *op);
/* True when no access is queued or running: every submitted op is done (a lock: its
 * completion is queued on the client loop). */
bool replay_worker_idle(void);
/* Wait until the worker's last wake-up post returned (no pumping needed): after that, and
 * once idle, the worker no longer touches the client loop, which may then be stopped. */
void replay_worker_quiet(void);

/* ---- checking results ------------------------------------------------------------------------- */

/* The scenario code of a status ("overlap", ..., "resource" for the runtime's MB_ENOMEM and a
 * negative errno: what the host refused), or NULL for one the format has no code for. */
const char *replay_error_token(int status);
/* Compare a completed op with an expectation; on a mismatch set *got to what happened
 * ("got ...", malloc'd) and return false. */
bool replay_check_result(const replay_op *op, const scenario_expect *e, char **got);
/* Compare state answers with expect region / partition / mapper commands. */
bool replay_check_state(const replay_op *op, const scenario_cmd *expect, char **got);
/* Ranges as RANGES are written: ascending, adjacent ranges with the same access merged
 * (r->items malloc'd). False when out of memory. */
bool replay_ranges_normalise(const mb_range_list *l, scenario_ranges *r);
bool replay_ranges_equal(const scenario_ranges *a, const scenario_ranges *b);
/* RANGES text ("none", "0+16M:rw 16M+16K:ro"), malloc'd. */
char *replay_ranges_text(const scenario_ranges *r);
/* PAGES text ("none", "0x1000+8K"), malloc'd. */
char *replay_pages_text(const scenario_ranges *r);

/* ---- the executor ------------------------------------------------------------------------------ */

typedef enum replay_outcome { REPLAY_PASS, REPLAY_FAIL, REPLAY_SKIP } replay_outcome;

/* The first pass over the file at `path`: check every line, and find what running it needs to
 * know beforehand. 0, or -1 with the parser's message in err. f->sc.name is path (not copied). */
int replay_scan(const char *path, replay_file *f, char *err, size_t errlen);
/* Run a file that replay_scan checked, in a fresh world, reading it again as it runs. On FAIL,
 * *fail_line and *message are set ("EXPECTED / HAPPENED", one line, malloc'd); on SKIP,
 * *message says why. */
replay_outcome replay_run(const replay_file *file, const replay_config *cfg, unsigned *fail_line,
                          char **message);

/* ---- --fault-check: consumers against the manager after an injected failure -------------------
 *
 * The library is built with fault injection and armed from the environment (MB_FI, see
 * mem/fault_inject.h). A result that differs from the file's is not a failure; instead, at
 * every quiet point (no operation in flight) each consumer must agree with the manager's
 * visible map, and after the teardown no fd and none of the library's mappings may be left. */

/* Before the world is set up: what a clean teardown must come back to. */
void replay_fault_begin(replay_fault *f);
/* An operation finished (matched: its result was the file's). */
void replay_fault_result(replay_world *w, const replay_op *op, const scenario_cmd *shown,
                         bool matched);
/* Async operations never awaited (w->ops, done) report too: at the end of the file. */
void replay_fault_unawaited(replay_world *w);
/* After command `cmd` ran (its result differed from the file's: diverged): notes the
 * injection, and checks the consumers when the world is quiet (at the points replay_fault.c
 * says). False (with *why: "WHAT / HAPPENED", malloc'd) on a disagreement. */
bool replay_fault_after(replay_world *w, const scenario_cmd *cmd, bool diverged, bool last,
                        char **why);
/* Note that the injection fired during `cmd`, if it did and was not noted before. */
void replay_fault_note(replay_fault *f, const scenario_cmd *cmd);
/* Did an operation, or one of the runner's own calls of the library, report it? */
bool replay_fault_reported(const replay_fault *f);
/* The library answered one of the runner's own calls (a post, a barrier, a query of the
 * checks) with `status`: after an injection, that reports it. Any thread. */
void replay_runner_error(const char *what, int status);
/* After the teardown: leaks. False (with *why) when something was left behind. */
bool replay_fault_end(replay_fault *f, char **why);
/* One line saying what was injected, when, and who reported it (malloc'd). */
char *replay_fault_summary(const replay_fault *f);
void replay_fault_free(replay_fault *f);
/* Failures injected so far, over every kind. */
uint64_t replay_fault_injected(void);

/* ---- kvm ------------------------------------------------------------------------------------- */

/* NULL when a kvm partition can be made here, else why not (malloc'd), for a SKIP line. */
char *replay_kvm_missing(const scenario *sc);
/* Does the command add a soft partition (a sync or async `partition add NAME soft`)? */
bool replay_adds_soft(const scenario_cmd *cmd);

/* Helpers: malloc'd printf, and a command printed canonically on one line. */
char *replay_strdupf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char *replay_command_text(const scenario_cmd *cmd);

#endif
