/* mb_runtime.h: the actor runtime on libuv (loops, actors, messages, calls, tracing).
 *
 * Model
 *   A loop (mb_loop) is one libuv loop plus the runtime's scheduler. It either runs on a thread
 *   the runtime starts (mb_loop_start) or is attached to a uv_loop_t the embedder already runs
 *   (mb_loop_attach). An actor (mb_actor) lives on one loop: it has state, a handler and a
 *   mailbox. Actors are addressed by mb_addr values, which stay safe to use after the actor
 *   is gone: a request to a gone actor is answered with MB_EGONE, a one-way message is dropped
 *   and counted (mb_loop_stats).
 *
 * Delivery and ordering
 *   A same-loop send appends to the receiver's local queue: no atomics, no system call. A
 *   cross-loop send pushes onto the receiving loop's lock-free MPSC inbox; only the push that
 *   finds the loop asleep wakes it (one eventfd per loop, never uv_async_send). Messages are
 *   enqueued immediately (no sender-side batching), so delivery is causal: if sending m1
 *   happens-before sending m2 and both go to one actor, m1 is handled first. That includes
 *   per-sender FIFO. An actor handles at most MB_BATCH messages per turn, so one busy actor
 *   cannot starve the others on its loop.
 *
 * Requests
 *   A request is a message with a reply port and a correlation id. The receiver answers by
 *   filling the message's reply fields and calling mb_reply(); the same message travels back,
 *   so a round trip allocates nothing. Every request ends in exactly one reply or one error:
 *   a handler that returns without replying or keeping the message, a kept message freed
 *   unanswered, a gone receiver and a stopping loop all produce an error reply
 *   (MB_ENOREPLY, MB_EGONE, MB_ESTOPPED). Replies run on the requester's loop.
 *
 * Serialized actors
 *   An actor created with MB_ACTOR_SERIALIZED finishes one operation before it starts the
 *   next: while it has calls outstanding (or holds, mb_actor_hold) it still receives the
 *   replies to its calls, but its new messages wait, in order.
 *
 * Threads
 *   Functions taking an mb_actor *self run on that actor's loop thread (inside a handler or a
 *   reply callback). mb_send_from, mb_call_sync, mb_loop_exec and mb_loop_post may be called
 *   from any thread, including threads that own no loop. mb_loop_* lifecycle functions are
 *   called by the thread that owns the loop object (see each function).
 *
 * Out of memory
 *   An allocation of the runtime's own that fails (a message, an actor, a loop) is an error
 *   return, MB_ENOMEM, that leaves nothing half made. libuv's policy differs: it aborts the
 *   process when it cannot allocate inside uv_loop_init (to start its signal watcher) and
 *   when uv_poll_start has to grow the loop's table of watched descriptors. The runtime
 *   calls them only while making a loop: uv_loop_init in mb_loop_start, and uv_poll_start
 *   (for the loop's eventfd) in mb_loop_start and mb_loop_attach, each after every
 *   allocation of its own for that loop, so an allocation failure of ours never follows a
 *   libuv call it would have to undo. Once a loop is made, nothing the runtime does on it
 *   allocates in libuv: sends, calls, replies, mb_loop_exec and mb_loop_post allocate only
 *   messages (MB_ENOMEM), and mb_loop_stop allocates nothing (a started loop's stop request
 *   is made with the loop).
 *   With -Dallocator=jemalloc, the process's first message creates every automatic jemalloc
 *   arena (4 per CPU, ~125 KiB each): jemalloc 5.3 crashes when a thread's first allocation
 *   needs a new arena and the host refuses the mapping (at vm.max_map_count), and with all of
 *   them made no thread's first allocation needs one (runtime/msg.c).
 */
#ifndef MB_RUNTIME_H
#define MB_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* libuv's loop type, declared as uv.h declares it (so this header needs no feature macros). */
typedef struct uv_loop_s uv_loop_t;

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ------------------------------------------------------------------------------ */

enum {
  MB_OK = 0,
  MB_EGONE = -1001,     /* the receiving actor does not exist (destroyed, never created) */
  MB_ESTOPPED = -1002,  /* the receiving or the replying loop is stopping or stopped */
  MB_ENOREPLY = -1003,  /* the receiver dropped the request without answering it */
  MB_EDEADLK = -1004,   /* a blocking call from a loop thread it would wait for (the
                         * receiver's own; membacking.h: any loop the operation needs) */
  MB_ENOMEM = -1005,    /* out of memory */
  MB_EINVAL = -1006,    /* a bad argument */
};
/* A static description of an error code (runtime codes, or negative errno/libuv codes). */
const char *mb_strerror(int err);

/* ---- addresses, messages --------------------------------------------------------------- */

typedef struct mb_loop mb_loop;
typedef struct mb_actor mb_actor;
typedef struct mb_protocol mb_protocol;

/* An actor's address. Copy it freely; the zero value addresses nobody. */
typedef struct mb_addr {
  mb_loop *loop;
  uint32_t slot;
  uint32_t gen;
} mb_addr;

/* Message header; the payload follows it in the same allocation (see mb_protocol.h). */
/* MB_ATOMIC_LINK: the inbox link is atomic in the library (C11); C++ sees a plain pointer of
 * the same size and alignment (checked in runtime/msg.c) and never touches it. */
#ifdef __cplusplus
#define MB_ATOMIC_LINK(T) T
#else
#define MB_ATOMIC_LINK(T) T _Atomic
#endif
typedef struct mb_msg {
  MB_ATOMIC_LINK(struct mb_msg *) next__; /* inbox link; runtime use only */
  struct mb_msg *qnext__;        /* local queue link; runtime use only */
  mb_addr to;                    /* receiver */
  mb_addr from;                  /* sender actor, zero for a thread that is not an actor */
  const mb_protocol *proto;      /* the protocol the kind belongs to */
  uint32_t kind;                 /* message kind within proto */
  uint32_t size;                 /* allocation size, header included */
  uint64_t corr;                 /* correlation id; 0 for a one-way message */
  void *reply__;                 /* reply route: the waiter of a blocking call, or the
                                  * context of cb__; runtime use only */
  void (*cb__)(struct mb_actor *, struct mb_msg *, void *); /* reply callback; runtime only */
  int32_t status;                /* in a reply: MB_OK or a negative error */
  uint32_t flags__;              /* runtime use only */
  uint64_t t_deliver__;          /* delivery time of a timed request; runtime use only */
} mb_msg;

/* Allocate a zeroed message of `size` bytes (header included) of `kind` in `proto`. */
mb_msg *mb_msg_new(const mb_protocol *proto, uint32_t kind, size_t size);
/* Free a message. Freeing an unanswered request answers it with MB_ENOREPLY. */
void mb_msg_free(mb_msg *msg);
/* Keep a delivered message past its handler: the handler now owns it (to reply later). */
void mb_msg_keep(mb_msg *msg);
static inline bool mb_msg_is_request(const mb_msg *msg) { return msg->corr != 0; }

/* ---- loops --------------------------------------------------------------------------------- */

typedef struct mb_loop_stats {
  uint64_t delivered;   /* messages handed to handlers */
  uint64_t dropped;     /* one-way messages to gone actors */
  uint64_t bounced;     /* requests answered with an error by the runtime */
  uint64_t wakeups;     /* eventfd wake-ups received */
  uint64_t actors;      /* live actors */
  uint64_t lent;        /* turns another thread ran for this loop while it slept (MB_LOOP_LEND) */
  uint64_t lingers;     /* turns that watched the inbox before sleeping ... */
  uint64_t linger_hits; /* ... and found a message that way (no wake-up needed) */
} mb_loop_stats;

/* Start a loop on a new thread. Returns NULL (and *err: MB_ENOMEM, or a libuv or negative
 * errno code) on failure, with nothing left behind. libuv aborts the process if it runs out
 * of memory inside (see "Out of memory" above). */
mb_loop *mb_loop_start(const char *name, int *err);
/* mb_loop_start with flags:
 *   MB_LOOP_LEND  while the loop sleeps, a thread that runs another loop (attached or
 *                 started) and sends to it may run its turn itself instead of waking it (no
 *                 wake-up, no thread switch; a thread that runs no loop always wakes it),
 *                 for the messages of actors whose type allows it (mb_actor_type.lendable);
 *                 anything else still runs on the loop's own thread, in order. The
 *                 library's actors allow it for their memory work. A libuv callback of yours
 *                 on mb_loop_uv(loop) that touches the loop's actors brackets that with
 *                 mb_loop_enter / mb_loop_leave. */
enum { MB_LOOP_LEND = 1u << 0 };
mb_loop *mb_loop_start_flags(const char *name, unsigned flags, int *err);
/* On a lending loop's own thread, outside the runtime's callbacks: wait until no other thread
 * runs the loop's turn, and keep it so until mb_loop_leave. No effect on other loops. */
void mb_loop_enter(mb_loop *loop);
void mb_loop_leave(mb_loop *loop);
/* True while the calling thread runs this loop's turn for it (MB_LOOP_LEND): no libuv call
 * on the loop is allowed then. */
bool mb_loop_is_lent(const mb_loop *loop);
/* After a turn that talked to another loop, a loop may watch its inbox for up to max_ns
 * before it sleeps, so that an answer coming back soon costs no wake-up. It does so only
 * while it pays: while the loop it talked to is running, and less often after watches that
 * found nothing. Default: 20 us for a started loop, 0 (never) for an attached one, whose
 * thread is the VMM's. Call on the loop's thread, or before it runs. */
void mb_loop_set_linger(mb_loop *loop, uint32_t max_ns);
/* Attach the runtime to a uv_loop_t that the caller runs. Call from the thread running `uv`
 * (or before it runs). The caller keeps calling uv_run; the runtime adds one poll handle
 * and one idle handle, as libuv's own handles behave: they keep uv_run(UV_RUN_DEFAULT) going
 * only while the loop has something to serve or to wait for, that is while an actor other
 * than its built-in one lives on it (a manager or consumer placed on this loop: until it is
 * destroyed), or a call or an asynchronous operation started from it has not answered yet
 * (mb_loop_ref). Otherwise uv_run returns once the VMM's own handles let it; messages sent to
 * the loop meanwhile wait for the next uv_run.
 * NULL (and *err) on failure; when a handle was already made, its close completes on the
 * caller's next uv_run. libuv aborts if it runs out of memory growing its watcher table. */
mb_loop *mb_loop_attach(uv_loop_t *uv, const char *name, int *err);
/* Stop a loop: pending and later requests to its actors get MB_ESTOPPED, its actors are
 * destroyed, its handles closed. For a started loop, call from any thread but its own (its
 * own: MB_EDEADLK); it joins the thread and closes the uv loop (uv_loop_close() == 0). For an
 * attached loop, call from the thread running it (another thread: MB_EDEADLK), from a libuv
 * callback, a handler or a reply callback alike: from a handler or reply callback of the
 * runtime the stop takes effect once that callback returns (the loop stays usable until then);
 * the handles close on the caller's next uv_run, and mb_loop_free may be called at once. */
int mb_loop_stop(mb_loop *loop);
/* An operation in flight that finishes with a callback on an attached loop keeps the VMM's
 * uv_run going, as a libuv request does: mb_loop_ref when it starts, mb_loop_unref once its
 * callback has run, both on the loop's thread. Calls (mb_call) and the library's own
 * asynchronous operations do this by themselves. No effect on a started loop. */
void mb_loop_ref(mb_loop *loop);
void mb_loop_unref(mb_loop *loop);
/* Free a stopped loop. No thread may still send to its actors. */
void mb_loop_free(mb_loop *loop);

/* The loop's own built-in actor: a requester for code that is not an actor (an embedding VMM
 * in attach mode makes its calls as this actor; replies then run on the loop). */
mb_actor *mb_loop_actor(mb_loop *loop);
uv_loop_t *mb_loop_uv(mb_loop *loop);
const char *mb_loop_name(const mb_loop *loop);
bool mb_loop_is_current(const mb_loop *loop); /* is the calling thread running `loop`? */
mb_loop *mb_loop_current(void);                /* the loop the calling thread runs, or NULL */
/* Snapshot of counters; exact when called on the loop's thread, approximate elsewhere. */
mb_loop_stats mb_loop_stats_get(const mb_loop *loop);

typedef void (*mb_exec_fn)(mb_loop *loop, void *arg);
/* Run fn(loop, arg) on the loop's thread and wait for it (inline when already there). */
int mb_loop_exec(mb_loop *loop, mb_exec_fn fn, void *arg);
/* Queue fn(loop, arg) to run on the loop's thread; fn runs with arg even when the loop is
 * stopping (check mb_loop_stopping) so arg can be released. Posted by an attached loop's own
 * thread, it keeps that loop's uv_run going until it has run (mb_loop_ref). */
int mb_loop_post(mb_loop *loop, mb_exec_fn fn, void *arg);
bool mb_loop_stopping(const mb_loop *loop);

/* ---- actors -------------------------------------------------------------------------------- */

/* MB_ACTOR_SERIALIZED: see "Serialized actors" above.
 * MB_ACTOR_PROMPT_REPLIES: a reply to one of the actor's calls, sent by an actor of the same
 *   loop while this one is idle (not running, nothing queued, not scheduled), runs its
 *   callback at once, inside the replier's mb_reply, instead of in a turn of its own: one
 *   queue and one turn less per round trip. The replier's handler goes on after the
 *   callback returns, so what the callback sends is queued before what the replier sends
 *   after its mb_reply, and the callback must not destroy the replier (or an actor whose
 *   handler may be on the stack below it). Never in a borrowed turn (MB_LOOP_LEND); at most
 *   a few deep. */
enum { MB_ACTOR_SERIALIZED = 1u << 0, MB_ACTOR_PROMPT_REPLIES = 1u << 1 };
enum { MB_BATCH = 64 }; /* messages one actor handles per turn */

typedef void (*mb_handler_fn)(mb_actor *self, mb_msg *msg);
typedef void (*mb_actor_dtor_fn)(mb_actor *self);

typedef struct mb_actor_type {
  const char *name;             /* for traces and stats */
  mb_handler_fn handle;         /* one-way messages and requests */
  mb_actor_dtor_fn destroy;     /* optional: release state when the actor goes */
  uint32_t flags;               /* MB_ACTOR_SERIALIZED, MB_ACTOR_PROMPT_REPLIES */
  /* optional: true for a message whose handling may run on a thread that runs the turn of a
   * sleeping MB_LOOP_LEND loop for it: no libuv call, no blocking wait, no thread-bound
   * state; messages such a handler sends to actors of its own loop must be lendable too. */
  bool (*lendable)(const mb_msg *msg);
} mb_actor_type;

/* Create an actor on `loop`; call on the loop's thread (use mb_loop_exec from elsewhere). */
mb_actor *mb_actor_create(mb_loop *loop, const mb_actor_type *type, void *state, const char *name);
/* Destroy an actor; call on its loop's thread. Queued requests get MB_EGONE; its outstanding
 * calls' replies are dropped when they arrive. Safe to call from its own handler. */
void mb_actor_destroy(mb_actor *actor);
mb_addr mb_actor_addr(const mb_actor *actor);
/* The live actor at `addr` on `loop`, or NULL; on that loop's thread. */
mb_actor *mb_actor_at(mb_loop *loop, mb_addr addr);
void *mb_actor_state(const mb_actor *actor);
mb_loop *mb_actor_loop(const mb_actor *actor);
const char *mb_actor_name(const mb_actor *actor);
/* A serialized actor holds back new messages while it is held (count-based). */
void mb_actor_hold(mb_actor *self);
void mb_actor_release(mb_actor *self);

/* ---- sending ------------------------------------------------------------------------------ */

/* One-way send from an actor. Always consumes msg. Returns MB_OK, or MB_EGONE/MB_ESTOPPED
 * when the receiver is known to be gone at send time (the message is then dropped). */
int mb_send(mb_actor *self, mb_addr to, mb_msg *msg);
/* One-way send from any thread, with no sender actor. */
int mb_send_from(mb_addr to, mb_msg *msg);

typedef void (*mb_reply_fn)(mb_actor *self, mb_msg *reply, void *ctx);
/* Request from an actor: cb(self, reply, ctx) runs later on self's loop with the same message
 * (reply->status set); the runtime frees it after cb unless cb keeps or resends it. Always
 * exactly once, never inside mb_call itself. */
void mb_call(mb_actor *self, mb_addr to, mb_msg *msg, mb_reply_fn cb, void *ctx);
/* Blocking request from a thread that does not run `to`'s loop (a vCPU thread, a faulting
 * thread, a test). Returns msg->status; the caller keeps msg (holding the reply fields). */
int mb_call_sync(mb_addr to, mb_msg *msg);
/* Answer a request (inside its handler or later, on the receiver's loop). */
void mb_reply(mb_msg *msg, int status);
/* Forward a delivered message to another actor unchanged (a request keeps its reply port). */
int mb_forward(mb_actor *self, mb_addr to, mb_msg *msg);

/* ---- request latency per actor ------------------------------------------------------------ */

/* How long an actor took to answer requests of one kind: from their delivery to its reply
 * (nested calls included), in log-scale buckets (4 per power of two, from 1 ns). One request
 * in MB_LATENCY_SAMPLE is timed (the first one of each run of that many), so `count` is the
 * number of samples. */
enum { MB_LATENCY_BUCKETS = 4 * 40, MB_LATENCY_SAMPLE = 16 };
typedef struct mb_latency {
  const mb_protocol *proto;
  uint32_t kind;
  uint64_t count, total_ns, max_ns;
  uint32_t buckets[MB_LATENCY_BUCKETS];
} mb_latency;

/* Start (or stop) timing the requests an actor answers; on its loop's thread. Off by default:
 * it costs two clock reads per timed request. */
void mb_actor_time_requests(mb_actor *actor, bool on);
/* The actor's latency records, one per (protocol, kind) seen; on its loop's thread. */
size_t mb_actor_latency(const mb_actor *actor, const mb_latency **out);
/* The q-quantile (0..1) of a record, in ns (the upper edge of its bucket). */
uint64_t mb_latency_quantile(const mb_latency *l, double q);

/* ---- tracing ------------------------------------------------------------------------------ */

/* Record every send and delivery to `path` (JSON lines, see runtime/trace.c); NULL stops.
 * MEMBACKING_TRACE=path in the environment starts it at the first loop's creation.
 * Records are buffered per thread and written when a buffer fills, when its thread ends, at
 * mb_trace_flush and mb_trace_close, at exit(), and on a fatal signal: the first open
 * installs a handler (once per process) for each of SIGABRT, SIGBUS, SIGFPE, SIGILL and
 * SIGSEGV whose action is then the default, which writes what is buffered (best effort) and
 * then dies of the signal as the default action would. Signals someone else handles are left
 * alone: a trace opened after the first mb_mm_create (whose fault handler owns SIGSEGV and
 * SIGBUS from then on) is not written on those two; MEMBACKING_TRACE always opens before. */
int mb_trace_open(const char *path);
void mb_trace_close(void);
/* Write every thread's buffered records to the open trace now (e.g. before a planned abort
 * or exec, or to read the file while the program runs). Any thread; not from a signal
 * handler. 0, or the negative errno of a write that failed since the last call (its records
 * are lost). */
int mb_trace_flush(void);
/* Stop (paused) or resume recording into the open trace, which stays open: to trace only a
 * window of interest. Opening a trace resumes. No effect when no trace is open. */
void mb_trace_pause(bool paused);

#ifdef __cplusplus
}
#endif
#endif
