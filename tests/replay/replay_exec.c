/* replay_exec.c: the command executor. It runs a scenario's commands in order in a fresh
 * world: a synchronous operation is issued and waited for, `async` issues without waiting,
 * `await` waits and checks, `expect pending` lets every actor run out of work first, and the
 * state expectations query the manager, a partition or a mapper. The first unmet expectation
 * ends the file, except under --fault-check (replay_fault.c), where the checks after each
 * command decide. */
#include <stdlib.h>
#include <string.h>

#include "replay.h"

/* "COMMAND / HAPPENED"; takes `got`. */
static char *failure(const scenario_cmd *cmd, char *got) {
  char *text = replay_command_text(cmd);
  char *s = replay_strdupf("%s / %s", text ? text : "?", got ? got : "?");
  free(text);
  free(got);
  return s;
}

/* Wait for op, check it against `e` (or the state `expect` asks for), free it. An op that
 * never completed is still in flight (its request is parked behind a lock, and in spread a
 * loop it started is in use): it stays on w->ops, and the world's teardown, which releases
 * the locks, lets it finish before freeing it. */
static bool finish(replay_world *w, replay_op *op, const scenario_cmd *shown,
                   const scenario_expect *e, char **why) {
  if (replay_wait(w, op) != 0) {
    *why = failure(shown, replay_strdupf("never completed: no actor has work left"));
    if (w->fault) w->fault->stuck = true;
    return false;
  }
  char *got = NULL;
  bool ok = e ? replay_check_result(op, e, &got) : replay_check_state(op, shown, &got);
  if (w->fault) replay_fault_result(w, op, shown, ok);
  if (!ok) *why = failure(shown, got);
  replay_op_free(op);
  return ok;
}

static bool exec_operation(replay_world *w, const scenario_cmd *cmd, char **why) {
  replay_op *op = replay_op_start(w, cmd);
  if (!op) {
    *why = failure(cmd, replay_strdupf("failed: out of memory"));
    return false;
  }
  bool state = cmd->kind == SCENARIO_EXPECT_REGION || cmd->kind == SCENARIO_EXPECT_PARTITION ||
               cmd->kind == SCENARIO_EXPECT_MAPPER;
  return finish(w, op, cmd, state ? NULL : &cmd->expect, why);
}

/* An operation the runner refused to start (its memory limit) fails the async line itself. */
static bool exec_async(replay_world *w, const scenario_cmd *cmd, size_t index, char **why) {
  replay_op *op = replay_op_start(w, cmd->async.inner);
  if (!op) *why = failure(cmd, replay_strdupf("failed: out of memory"));
  if (op && op->refusal) {
    *why = failure(cmd, replay_strdupf("%s", op->refusal));
    replay_op_free(op);
    return false;
  }
  w->labels[index] = op;
  return op != NULL;
}

static bool exec_await(replay_world *w, const scenario_cmd *cmd, char **why) {
  replay_op *op = w->labels[cmd->label.async_index];
  w->labels[cmd->label.async_index] = NULL;
  return finish(w, op, cmd, &cmd->expect, why);
}

static bool exec_pending(replay_world *w, const scenario_cmd *cmd, char **why) {
  replay_op *op = w->labels[cmd->label.async_index];
  replay_settle(w);
  if (!replay_op_is_done(op)) return true;
  char *result = NULL;
  scenario_expect any_error = {.kind = SCENARIO_EXPECT_OK};
  if (replay_check_result(op, &any_error, &result)) result = replay_strdupf("got ok");
  char *got = replay_strdupf("%s already completed (%s)", cmd->label.label, result ? result : "?");
  free(result);
  *why = failure(cmd, got);
  return false;
}

static bool exec_command(replay_world *w, size_t index, char **why) {
  const scenario_cmd *cmd = &w->sc->cmds[index];
  switch (cmd->kind) {
  case SCENARIO_CONFIG:
  case SCENARIO_REQUIRE: return true; /* applied by the world's set-up */
  case SCENARIO_ASYNC: return exec_async(w, cmd, index, why);
  case SCENARIO_AWAIT: return exec_await(w, cmd, why);
  case SCENARIO_EXPECT_PENDING: return exec_pending(w, cmd, why);
  default: return exec_operation(w, cmd, why);
  }
}

/* ---- a whole file ------------------------------------------------------------------------------ */

/* NULL when the file can run here, else why it is skipped (malloc'd). */
static char *skip_reason(const scenario *sc, const replay_config *cfg) {
  const char *why = NULL;
  if (sc->require_kvm) why = "require kvm";
  else if (cfg->kvm_partitions && replay_uses_soft(sc)) why = "--partitions=kvm";
  char *missing = why ? replay_kvm_missing(sc) : NULL;
  char *s = missing ? replay_strdupf("%s: %s", why, missing) : NULL;
  free(missing);
  return s;
}

/* --fault-check: an operation that never completes waits behind a lock the script holds (a lock
 * the file expected to fail may succeed now): the file stops there. Without a lock, it hangs. */
static bool stop_here(replay_world *w, const scenario_cmd *cmd) {
  if (!w->fault->stuck || w->tables[REPLAY_NS_LOCK].n == 0) return false;
  w->fault->stopped_line = cmd->line;
  return true;
}

static replay_outcome run_commands(replay_world *w, unsigned *line, char **message) {
  for (size_t i = 0; i < w->sc->ncmds; i++) {
    const scenario_cmd *cmd = &w->sc->cmds[i];
    bool ok = exec_command(w, i, message), diverged = !ok;
    if (w->fault) replay_fault_note(w->fault, cmd);
    if (!ok && w->fault && (!w->fault->stuck || stop_here(w, cmd))) {
      free(*message); /* a result the injected failure changed: the checks below decide */
      *message = NULL;
      w->fault->diverged += !w->fault->stuck;
      if (!w->fault->stuck) ok = true;
      else break;
    }
    if (ok && w->fault) ok = replay_fault_after(w, cmd, diverged, i + 1 == w->sc->ncmds, message);
    if (!ok) {
      *line = cmd->line;
      return REPLAY_FAIL;
    }
  }
  return REPLAY_PASS;
}

static unsigned first_line(const scenario *sc) { return sc->ncmds ? sc->cmds[0].line : 1; }
static unsigned last_line(const scenario *sc) {
  return sc->ncmds ? sc->cmds[sc->ncmds - 1].line : 1;
}

/* --fault-check: was the injected failure reported? Setting up counts as an operation. */
static replay_outcome check_reported(replay_fault *f, replay_outcome out, unsigned *line,
                                     char **message) {
  if (out != REPLAY_PASS || !f->inject_line || replay_fault_reported(f)) return out;
  *line = f->inject_line;
  *message = replay_strdupf("%s / the injected failure was not reported: no operation answered "
                            "an error", f->inject_cmd ? f->inject_cmd : "?");
  return REPLAY_FAIL;
}

/* --fault-check: the verdict, with what was injected, when, and who reported it. */
static replay_outcome fault_verdict(replay_fault *f, replay_outcome out, const scenario *sc,
                                    unsigned *line, char **message) {
  char *why = NULL;
  out = check_reported(f, out, line, message);
  if (out == REPLAY_PASS && !replay_fault_end(f, &why)) {
    out = REPLAY_FAIL;
    *line = last_line(sc);
    *message = why;
  }
  char *summary = replay_fault_summary(f);
  char *s = out == REPLAY_PASS ? replay_strdupf("%s", summary ? summary : "?")
                               : replay_strdupf("%s [%s]", *message ? *message : "? / ?",
                                                summary ? summary : "?");
  free(summary);
  free(*message);
  *message = s;
  return out;
}

replay_outcome replay_run(const scenario *sc, const replay_config *cfg, unsigned *line,
                          char **message) {
  *line = 0;
  *message = NULL;
  if ((*message = skip_reason(sc, cfg))) return REPLAY_SKIP;
  replay_fault fault;
  if (cfg->fault_check) replay_fault_begin(&fault);
  replay_world w;
  char msg[256] = "";
  replay_outcome out = REPLAY_FAIL;
  if (replay_world_init(&w, sc, cfg, msg, sizeof msg) == 0) {
    w.fault = cfg->fault_check ? &fault : NULL;
    out = run_commands(&w, line, message);
  } else if (cfg->fault_check && replay_fault_injected() > 0) {
    out = REPLAY_PASS; /* the failure was reported where it happened */
    fault.inject_line = fault.report_line = first_line(sc);
    fault.inject_cmd = replay_strdupf("setting up");
    fault.report_cmd = replay_strdupf("setting up: %s", msg);
  } else {
    *line = first_line(sc);
    *message = replay_strdupf("setting up / %s", msg);
  }
  if (replay_world_fini(&w) != 0 && out == REPLAY_PASS) {
    out = REPLAY_FAIL;
    *line = last_line(sc);
    *message = replay_strdupf("tearing down / the client loop still has handles open");
  }
  if (cfg->fault_check) {
    out = fault_verdict(&fault, out, sc, line, message);
    replay_fault_free(&fault);
  }
  return out;
}
