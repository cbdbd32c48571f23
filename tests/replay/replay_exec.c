/* replay_exec.c: the command executor. It reads a scenario's commands one at a time and runs
 * them in order in a fresh world: a synchronous operation is issued and waited for, `async`
 * issues without waiting, `await` waits and checks, `expect pending` lets every actor run out
 * of work first, and the state expectations query the manager, a partition or a mapper. The
 * first unmet expectation ends the file, except under --fault-check (replay_fault.c), where
 * the checks after each command decide. Before any file runs, replay_scan has read each one
 * through once to check it. */
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
               cmd->kind == SCENARIO_EXPECT_MAPPER || cmd->kind == SCENARIO_EXPECT_PROTECTION;
  return finish(w, op, cmd, state ? NULL : &cmd->expect, why);
}

/* A command that names no live label: answered notfound, checked like an operation. */
static bool exec_no_label(replay_world *w, const scenario_cmd *cmd, char **why) {
  replay_op *op = replay_op_answer(w, cmd, MB_E_NOTFOUND);
  if (op) return finish(w, op, cmd, &cmd->expect, why);
  *why = failure(cmd, replay_strdupf("failed: out of memory"));
  return false;
}

/* An operation the runner refused to start (its memory limit) fails the async line itself.
 * Inside a transaction an async is refused (error:invalid, at its await): a rule of the
 * script's sequencing, the runner's to apply (replay_txn.c). */
static bool exec_async(replay_world *w, const scenario_cmd *cmd, size_t index, char **why) {
  const scenario_cmd *inner = cmd->async.inner;
  replay_op *op = w->txn.open ? replay_op_answer(w, inner, MB_E_INVALID)
                              : replay_op_start(w, inner);
  if (!op) *why = failure(cmd, replay_strdupf("failed: out of memory"));
  if (op && op->refusal) {
    *why = failure(cmd, replay_strdupf("%s", op->refusal));
    replay_op_free(op);
    return false;
  }
  if (op) op->label = index + 1;
  return op != NULL;
}

/* The operation of the async that came `index` commands into the file, until its await. The
 * file stops at an async that did not start, so a label always finds one. */
static replay_op *labelled(replay_world *w, size_t index, const scenario_cmd *cmd, char **why) {
  for (replay_op *op = w->ops; op; op = op->next)
    if (op->label == index + 1) return op;
  *why = failure(cmd, replay_strdupf("its async did not start"));
  return NULL;
}

static bool exec_await(replay_world *w, const scenario_cmd *cmd, char **why) {
  if (cmd->label.async_index == SCENARIO_NO_LABEL) return exec_no_label(w, cmd, why);
  replay_op *op = labelled(w, cmd->label.async_index, cmd, why);
  if (!op) return false;
  op->label = 0;
  return finish(w, op, cmd, &cmd->expect, why);
}

static bool exec_pending(replay_world *w, const scenario_cmd *cmd, char **why) {
  if (cmd->label.async_index == SCENARIO_NO_LABEL) return exec_no_label(w, cmd, why);
  replay_op *op = labelled(w, cmd->label.async_index, cmd, why);
  if (!op) return false;
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

/* The file's command number `index`. */
static bool exec_command(replay_world *w, const scenario_cmd *cmd, size_t index, char **why) {
  switch (cmd->kind) {
  case SCENARIO_CONFIG:
  case SCENARIO_REQUIRE: return true; /* applied by the world's set-up */
  case SCENARIO_ASYNC: return exec_async(w, cmd, index, why);
  case SCENARIO_AWAIT: return exec_await(w, cmd, why);
  case SCENARIO_EXPECT_PENDING: return exec_pending(w, cmd, why);
  default: return exec_operation(w, cmd, why);
  }
}

/* After its line, a command that an operation still uses (an async's until its await, one that
 * never completed) goes with that operation; any other is freed. */
static void release(replay_world *w, scenario_cmd *cmd) {
  const scenario_cmd *inner = cmd->kind == SCENARIO_ASYNC ? cmd->async.inner : NULL;
  for (replay_op *op = w->ops; op; op = op->next) {
    if (op->cmd == cmd || (inner && op->cmd == inner)) {
      op->owned = cmd;
      return;
    }
  }
  scenario_cmd_free(cmd);
}

/* ---- a whole file ------------------------------------------------------------------------------ */

int replay_scan(const char *path, replay_file *f, char *err, size_t errlen) {
  *f = (replay_file){.first_line = 1, .last_line = 1};
  scenario_stream *s;
  if (scenario_stream_open(path, &s, err, errlen) != 0) return -1;
  scenario_cmd *cmd;
  int rc;
  while ((rc = scenario_stream_next(s, &cmd)) > 0) {
    if (scenario_stream_info(s)->ncmds == 1) f->first_line = cmd->line;
    f->last_line = cmd->line;
    f->uses_soft |= replay_adds_soft(cmd);
    scenario_cmd_free(cmd);
  }
  if (rc < 0) snprintf(err, errlen, "%s", scenario_stream_error(s));
  f->sc = *scenario_stream_info(s);
  f->sc.name = (char *)path;
  scenario_stream_close(s);
  return rc;
}

/* NULL when the file can run here, else why it is skipped (malloc'd). */
static char *skip_reason(const replay_file *file, const replay_config *cfg) {
  const char *why = NULL;
  if (file->sc.require_kvm) why = "require kvm";
  else if (cfg->kvm_partitions && file->uses_soft) why = "--partitions=kvm";
  char *missing = why ? replay_kvm_missing(&file->sc) : NULL;
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

typedef enum step { STEP_NEXT, STEP_STOP, STEP_FAIL } step;

/* Run the file's command number `index`; `last`: it is the file's last. */
static step run_command(replay_world *w, const scenario_cmd *cmd, size_t index, bool last,
                        char **message) {
  bool ok = exec_command(w, cmd, index, message), diverged = !ok;
  if (w->fault) replay_fault_note(w->fault, cmd);
  if (!ok && w->fault && (!w->fault->stuck || stop_here(w, cmd))) {
    free(*message); /* a result the injected failure changed: the checks below decide */
    *message = NULL;
    w->fault->diverged += !w->fault->stuck;
    if (w->fault->stuck) return STEP_STOP;
    ok = true;
  }
  if (ok && w->fault) ok = replay_fault_after(w, cmd, diverged, last, message);
  return ok ? STEP_NEXT : STEP_FAIL;
}

static replay_outcome run_commands(replay_world *w, const replay_file *file, scenario_stream *s,
                                   unsigned *line, char **message) {
  scenario_cmd *cmd;
  int rc;
  for (size_t i = 0; (rc = scenario_stream_next(s, &cmd)) > 0; i++) {
    step st = run_command(w, cmd, i, i + 1 == file->sc.ncmds, message);
    if (st == STEP_FAIL) *line = cmd->line;
    release(w, cmd);
    if (st != STEP_NEXT) return st == STEP_FAIL ? REPLAY_FAIL : REPLAY_PASS;
  }
  if (rc == 0 && w->txn.open) { /* spec "Transactions": a file may not end inside one */
    *line = file->last_line;
    *message = replay_strdupf("the end of the file / inside the transaction begun at line %u",
                              w->txn.line);
    return REPLAY_FAIL;
  }
  if (rc == 0) return REPLAY_PASS;
  *line = file->last_line; /* it parsed before anything ran: it changed since */
  *message = replay_strdupf("reading the file again / %s", scenario_stream_error(s));
  return REPLAY_FAIL;
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
static replay_outcome fault_verdict(replay_fault *f, replay_outcome out, const replay_file *file,
                                    unsigned *line, char **message) {
  char *why = NULL;
  out = check_reported(f, out, line, message);
  if (out == REPLAY_PASS && !replay_fault_end(f, &why)) {
    out = REPLAY_FAIL;
    *line = file->last_line;
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

/* Set up, run the commands as the file is read again, tear down. */
static replay_outcome run_file(const replay_file *file, const replay_config *cfg,
                               replay_fault *fault, unsigned *line, char **message) {
  replay_world w;
  char msg[256] = "";
  replay_outcome out = REPLAY_FAIL;
  scenario_stream *s = NULL;
  if (scenario_stream_open(file->sc.name, &s, msg, sizeof msg) != 0) {
    *line = file->first_line;
    *message = replay_strdupf("opening the file again / %s", msg);
    return REPLAY_FAIL;
  }
  if (replay_world_init(&w, &file->sc, cfg, msg, sizeof msg) == 0) {
    w.fault = fault;
    out = run_commands(&w, file, s, line, message);
  } else if (fault && replay_fault_injected() > 0) {
    out = REPLAY_PASS; /* the failure was reported where it happened */
    fault->inject_line = fault->report_line = file->first_line;
    fault->inject_cmd = replay_strdupf("setting up");
    fault->report_cmd = replay_strdupf("setting up: %s", msg);
  } else {
    *line = file->first_line;
    *message = replay_strdupf("setting up / %s", msg);
  }
  if (replay_world_fini(&w) != 0 && out == REPLAY_PASS) {
    out = REPLAY_FAIL;
    *line = file->last_line;
    *message = replay_strdupf("tearing down / the client loop still has handles open");
  }
  scenario_stream_close(s);
  return out;
}

replay_outcome replay_run(const replay_file *file, const replay_config *cfg, unsigned *line,
                          char **message) {
  *line = 0;
  *message = NULL;
  if ((*message = skip_reason(file, cfg))) return REPLAY_SKIP;
  replay_fault fault;
  if (cfg->fault_check) replay_fault_begin(&fault);
  replay_outcome out = run_file(file, cfg, cfg->fault_check ? &fault : NULL, line, message);
  if (cfg->fault_check) {
    out = fault_verdict(&fault, out, file, line, message);
    replay_fault_free(&fault);
  }
  return out;
}
