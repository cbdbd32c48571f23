/* test_trace.c: membacking-trace's reader, linker and golden check (cmocka). The fixtures are
 * in TRACE_FIXTURES (tests/trace/fixtures); tests/trace/README.md describes small.trace. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "trace.h"

static const char *fixture(const char *name) {
  static char path[4096];
  const char *dir = getenv("TRACE_FIXTURES");
  snprintf(path, sizeof path, "%s/%s", dir ? dir : "fixtures", name);
  return path;
}

/* Parses a copy of `line`; returns 0 or -1 and leaves the message in err. */
static int parse(const char *line, trace_rec *r, char *err, size_t errlen) {
  static char buf[1024];
  snprintf(buf, sizeof buf, "%s", line);
  return trace_parse_line(buf, strlen(buf), r, err, errlen);
}

#define REC_HEAD "{\"seq\":7,\"t_ns\":100,\"ev\":\"call\",\"loop\":\"home\",\"from\":\"home/0.1\","
#define REC_TAIL \
  "\"to\":\"home/1.1\",\"kind\":\"add\",\"corr\":4294967297,\"status\":0,\"fields\":\"a=1\"}"

static void test_parse_good(void **unused) {
  (void)unused;
  trace_rec r;
  char err[256] = "";
  /* optional names missing, an unknown key of each scalar type, escapes, spaces */
  assert_int_equal(parse(" { \"seq\" : 18446744073709551615 , \"t_ns\":5,\"ev\":\"deliver\","
                         "\"loop\":\"a \\\"b\\\"\",\"from\":\"-\",\"to\":\"x/y/2.3\","
                         "\"kind\":\"k\","
                         "\"new\":[], \"corr\":0,\"status\":-2147483648,"
                         "\"fields\":\"n=\\\"\\u00e9\\ud83d\\ude00\\t\\\\\"} \r",
                         &r, err, sizeof err),
                   -1); /* "new":[] is nested: rejected */
  assert_non_null(strstr(err, "nested values are not supported"));
  assert_int_equal(parse("{\"seq\":18446744073709551615,\"t_ns\":5,\"ev\":\"deliver\","
                         "\"loop\":\"a \\\"b\\\"\",\"from\":\"-\",\"to\":\"x/y/2.3\","
                         "\"kind\":\"k\","
                         "\"n1\":1.5e3,\"n2\":true,\"n3\":null,\"n4\":\"s\",\"corr\":0,"
                         "\"status\":-2147483648,"
                         "\"fields\":\"n=\\\"\\u00e9\\ud83d\\ude00\\t\\\\\"} \r",
                         &r, err, sizeof err),
                   0);
  assert_true(r.seq == UINT64_MAX);
  assert_int_equal(r.ev, TRACE_DELIVER);
  assert_string_equal(r.loop, "a \"b\"");
  assert_string_equal(r.from, "-");
  assert_string_equal(r.to, "x/y/2.3");
  assert_string_equal(r.from_name, "");
  assert_string_equal(r.to_name, "");
  assert_int_equal(r.status, INT32_MIN);
  assert_string_equal(r.fields, "n=\"\xc3\xa9\xf0\x9f\x98\x80\t\\");

  assert_int_equal(parse(REC_HEAD "\"from_name\":\"loop\",\"to_name\":\"echo\"," REC_TAIL, &r, err,
                         sizeof err),
                   0);
  assert_string_equal(r.from_name, "loop");
  assert_string_equal(r.to_name, "echo");
  assert_true(r.corr == 4294967297ull);
  assert_int_equal(r.ev, TRACE_CALL);
}

/* corr as the runtime writes it, a decimal string (all 64 bits), and t_interp. */
static void test_parse_corr_interp(void **unused) {
  (void)unused;
  trace_rec r;
  char err[256] = "";
  assert_int_equal(parse(REC_HEAD "\"to\":\"home/1.1\",\"kind\":\"add\","
                                  "\"corr\":\"18446744073709551615\",\"status\":0,"
                                  "\"fields\":\"\",\"t_interp\":true}",
                         &r, err, sizeof err),
                   0);
  assert_true(r.corr == UINT64_MAX && r.t_interp);
  assert_int_equal(parse(REC_HEAD "\"t_interp\":false,\"to\":\"home/1.1\",\"kind\":\"add\","
                                  "\"corr\":\"0\",\"status\":0,\"fields\":\"\"}",
                         &r, err, sizeof err),
                   0);
  assert_true(r.corr == 0 && !r.t_interp);
  assert_int_equal(parse(REC_HEAD REC_TAIL, &r, err, sizeof err), 0); /* older: no t_interp */
  assert_false(r.t_interp);
}

static void test_parse_errors(void **unused) {
  (void)unused;
  static const struct {
    const char *line, *why;
  } bad[] = {
      {"", "expected '{'"},
      {"[1]", "expected '{'"},
      {"{}", "empty record"},
      {"{\"seq\":1}", "missing \"t_ns\""},
      {REC_HEAD "\"to\":\"home/1.1\",\"kind\":\"add\",\"corr\":1,\"status\":0}",
       "missing \"fields\""},
      {REC_HEAD "\"seq\":8," REC_TAIL, "duplicate key \"seq\""},
      {"{\"seq\":1.5", "not a fraction"},
      {"{\"seq\":-1", "must not be negative"},
      {"{\"seq\":01", "leading zero"},
      {"{\"seq\":18446744073709551616", "out of range"},
      {"{\"status\":2147483648", "out of range"},
      {"{\"seq\":\"1\"", "wants an integer"},
      {"{\"corr\":\"\"", "wants a decimal string"},
      {"{\"corr\":\"01\"", "wants a decimal string"},
      {"{\"corr\":\"1x\"", "wants a decimal string"},
      {"{\"corr\":\"-1\"", "wants a decimal string"},
      {"{\"corr\":\"18446744073709551616\"", "wants a decimal string"},
      {"{\"corr\":1.5", "not a fraction"},
      {"{\"t_interp\":1", "wants true or false"},
      {"{\"ev\":\"jump\"", "unknown event \"jump\""},
      {"{\"from\":\"home\"", "is not an address"},
      {"{\"to\":\"home/1\"", "is not an address"},
      {"{\"to\":\"home/1.x\"", "is not an address"},
      {"{\"kind\":\"add", "unterminated string"},
      {"{\"kind\":\"a\\x\"", "bad escape"},
      {"{\"kind\":\"a\tb\"", "control character 0x09"},
      {"{\"kind\":\"\\u0000\"", "\\u0000"},
      {"{\"kind\":\"\\ud800x\"", "surrogate"},
      {"{\"kind\":\"\\udc00\"", "lone low surrogate"},
      {"{\"kind\":\"\\u12g4\"", "bad hex digit"},
      {"{\"kind\" \"a\"}", "expected ':'"},
      {"{\"kind\":\"a\" \"b\"}", "expected '}'"},
      {"{\"x\":{}}", "nested values"},
      {"{\"x\":tru}", "bad value"},
      {"{\"x\":1.}", "bad number"},
      {REC_HEAD REC_TAIL " x", "text after the record"},
      {REC_HEAD REC_TAIL "}", "text after the record"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    trace_rec r;
    char err[256] = "";
    if (parse(bad[i].line, &r, err, sizeof err) != -1 || !strstr(err, bad[i].why) ||
        strncmp(err, "column ", 7) != 0)
      fail_msg("line %zu '%s': got '%s', wanted '%s'", i, bad[i].line, err, bad[i].why);
  }
  trace_rec r;
  char err[64], nul[] = "{\"seq\":1\0}";
  assert_int_equal(trace_parse_line(nul, sizeof nul - 1, &r, err, sizeof err), -1);
  assert_non_null(strstr(err, "NUL byte"));
}

/* Writes text to a temporary file; returns its path (static). */
static const char *temp_file(const char *text) {
  static char path[64];
  snprintf(path, sizeof path, "/tmp/test-trace-XXXXXX");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  return path;
}

static char *read_errors(const char *trace_text, int *rc, trace *t) {
  const char *path = temp_file(trace_text);
  char *msg = NULL;
  size_t len = 0;
  FILE *err = open_memstream(&msg, &len);
  *rc = trace_read(t, path, err);
  fclose(err);
  unlink(path);
  return msg;
}

#define LINE(seq)                                                                          \
  "{\"seq\":" #seq ",\"t_ns\":1,\"ev\":\"send\",\"loop\":\"l\",\"from\":\"l/0.1\","        \
  "\"to\":\"l/1.1\",\"kind\":\"k\",\"corr\":0,\"status\":0,\"fields\":\"\"}\n"

static void test_read_file(void **unused) {
  (void)unused;
  trace t;
  int rc;
  char *msg = read_errors(LINE(0) "\n" LINE(1) "{\"seq\":2,\"t_ns\"\n" LINE(3), &rc, &t);
  assert_int_equal(rc, -1);
  assert_non_null(strstr(msg, ":4: column 16: expected ':'")); /* blank lines count */
  free(msg);
  trace_free(&t);

  msg = read_errors(LINE(2) LINE(0) LINE(1), &rc, &t); /* out of order: sorted */
  assert_int_equal(rc, 0);
  assert_int_equal(t.nrecs, 3);
  assert_int_equal(t.ninterp, 0);
  for (size_t i = 0; i < 3; i++) assert_int_equal(t.recs[i].seq, i);
  assert_int_equal(t.recs[0].line, 2);
  free(msg);
  trace_free(&t);

  msg = read_errors(LINE(2) LINE(0) LINE(2), &rc, &t);
  assert_int_equal(rc, -1);
  assert_non_null(strstr(msg, ":3: duplicate seq 2 (also on line 1)"));
  free(msg);
  trace_free(&t);

  msg = read_errors(LINE(0) "{\"seq\":1", &rc, &t); /* a last line cut short */
  assert_int_equal(rc, -1);
  assert_non_null(strstr(msg, ":2: column 9: expected '}', found the end of the line"));
  free(msg);
  trace_free(&t);

  FILE *err = open_memstream(&msg, &(size_t){0});
  assert_int_equal(trace_read(&t, "/nonexistent/trace", err), -1);
  fclose(err);
  assert_non_null(strstr(msg, "/nonexistent/trace: No such file"));
  free(msg);
  trace_free(&t);
}

/* ---- linking: small.trace -------------------------------------------------------------------- */

static void load_small(trace *t) {
  assert_int_equal(trace_read(t, fixture("small.trace"), stderr), 0);
  assert_int_equal(trace_link(t, stderr), 0);
}

/* The request whose first record has this seq. */
static const trace_req *req_at(const trace *t, uint64_t seq) {
  for (size_t i = 0; i < t->nrecs; i++)
    if (t->recs[i].seq == seq)
      return t->recs[i].req == TRACE_NONE ? NULL : &t->reqs[t->recs[i].req];
  return NULL;
}

static const char *actor_name(const trace *t, size_t actor) { return t->actors[actor].name; }

static void test_link_nesting(void **unused) {
  (void)unused;
  trace t;
  load_small(&t);
  assert_int_equal(t.nactors, 8); /* vmm/0.1 mgr/1.1 mgr/2.1 va0 va2 part/1.1 va1 part/2.1 */
  const trace_req *map = req_at(&t, 0);
  assert_non_null(map);
  assert_string_equal(map->kind, "region_map");
  assert_int_equal(map->depth, 0);
  assert_true(map->parent == TRACE_NONE);
  assert_string_equal(actor_name(&t, t.hops[map->first_hop].actor), "region_manager");
  assert_int_equal(t.recs[t.hops[map->first_hop].end].seq, 18);
  assert_int_equal(t.recs[map->reply_end].seq, 19);

  /* The region manager's call has the same corr value as the API's: a different request. */
  const trace_req *mm = req_at(&t, 2);
  assert_true(mm != map && mm->corr == map->corr);
  assert_true(mm->parent == map->first_hop);
  assert_int_equal(mm->depth, 1);
  assert_int_equal(t.recs[t.hops[mm->first_hop].deliver].seq, 3);
  assert_int_equal(t.recs[mm->reply_end].seq, 13);
  for (uint64_t seq = 4; seq <= 5; seq++) { /* the mapping manager asks both mappers at once */
    const trace_req *vam = req_at(&t, seq);
    assert_true(vam->parent == mm->first_hop);
    assert_int_equal(vam->depth, 2);
    assert_string_equal(actor_name(&t, t.hops[vam->first_hop].actor), "va_mapper.eager");
  }
  const trace_req *pm = req_at(&t, 14);
  assert_true(pm->parent == map->first_hop);
  assert_string_equal(actor_name(&t, t.hops[pm->first_hop].actor), "soft");
  assert_true(t.recs[10].is_reply && t.recs[13].is_reply && !t.recs[3].is_reply);
  trace_free(&t);
}

static void test_link_edges(void **unused) {
  (void)unused;
  trace t;
  load_small(&t);
  /* A blocking call forwarded: two hops, no reply delivery, the reply ends it. */
  const trace_req *res = req_at(&t, 20);
  assert_true(res->requester == TRACE_NONE);
  size_t h1 = res->first_hop, h2 = t.hops[h1].next;
  assert_true(h2 != TRACE_NONE && t.hops[h2].next == TRACE_NONE);
  assert_string_equal(actor_name(&t, t.hops[h1].actor), "mapping_manager");
  assert_int_equal(t.recs[t.hops[h1].end].ev, TRACE_FORWARD);
  assert_string_equal(actor_name(&t, t.hops[h2].actor), "va_mapper.lazy");
  assert_int_equal(t.recs[res->reply].seq, 24);
  assert_true(res->reply_end == TRACE_NONE);
  /* One-way: no request. */
  assert_null(req_at(&t, 26));
  /* Bounced by the runtime: a reply without a hop. */
  const trace_req *gone = req_at(&t, 27);
  assert_true(gone->first_hop == TRACE_NONE);
  assert_int_equal(t.recs[gone->reply].status, -1001);
  assert_int_equal(t.recs[gone->reply_end].seq, 29);
  /* Interleaved calls from one requester, and a dropped reply. */
  const trace_req *add = req_at(&t, 30), *state = req_at(&t, 32);
  assert_int_equal(t.recs[add->reply_end].seq, 35);
  assert_int_equal(t.recs[state->reply_end].ev, TRACE_DROP);
  assert_true(add->parent == TRACE_NONE && state->parent == TRACE_NONE);
  trace_free(&t);
}

/* ---- golden check ------------------------------------------------------------------------- */

static int check(const trace *t, const char *golden, char **msg) {
  const char *path = temp_file(golden);
  size_t len;
  FILE *out = open_memstream(msg, &len);
  int rc = trace_check_golden(t, path, out);
  fclose(out);
  unlink(path);
  return rc;
}

static void test_golden(void **unused) {
  (void)unused;
  trace t;
  load_small(&t);
  char *text = NULL, *msg = NULL;
  size_t len;
  FILE *out = open_memstream(&text, &len);
  assert_int_equal(trace_write_golden(&t, out), 0);
  fclose(out);
  assert_int_equal(check(&t, text, &msg), 0);
  assert_string_equal(msg, "");
  free(msg);

  /* One kind changed: the first difference, with the actor and the trace line. */
  char *changed = strdup(text), *p = strstr(changed, "> region_add");
  memcpy(p, "> region_del", 12);
  assert_int_equal(check(&t, changed, &msg), 1);
  assert_non_null(strstr(msg, ": expected \"> region_del\"; the trace has \"> region_add\" "
                              "(actor region_manager mgr/1.1, at "));
  assert_non_null(strstr(msg, "small.trace:32)"));
  free(msg);
  free(changed);

  /* Cut short, and too long. */
  char *cut = strdup(text);
  *strstr(cut, "actor va_mapper.lazy") = '\0';
  assert_int_equal(check(&t, cut, &msg), 1);
  assert_non_null(strstr(msg, "the golden file ends; the trace goes on with \"actor va_mapper.lazy "
                              "va1/1.1\""));
  free(msg);
  free(cut);
  size_t n = strlen(text);
  char *longer = malloc(n + 16);
  snprintf(longer, n + 16, "%s> extra\n", text);
  assert_int_equal(check(&t, longer, &msg), 1);
  assert_non_null(strstr(msg, "expected \"> extra\"; the trace has no more deliveries"));
  free(msg);
  free(longer);
  free(text);

  out = open_memstream(&msg, &len);
  assert_int_equal(trace_check_golden(&t, "/nonexistent/golden", out), 2);
  fclose(out);
  free(msg);
  trace_free(&t);
}

/* ---- Chrome output ----------------------------------------------------------------------- */

/* Names and fields are bytes: what is not UTF-8 becomes U+FFFD, so the JSON stays valid. */
static void test_chrome_utf8(void **unused) {
  (void)unused;
  const char *path = temp_file(
      "{\"seq\":0,\"t_ns\":1,\"ev\":\"send\",\"loop\":\"l\",\"from\":\"-\",\"to\":\"l/1.1\","
      "\"kind\":\"k\",\"corr\":0,\"status\":0,\"fields\":\"\"}\n"
      "{\"seq\":1,\"t_ns\":2,\"ev\":\"deliver\",\"loop\":\"l\",\"from\":\"-\",\"to\":\"l/1.1\","
      "\"kind\":\"k\",\"to_name\":\"a\xff\",\"corr\":0,\"status\":0,"
      "\"fields\":\"\xc3\xa9 \xed\xa0\x80 \xe0\x80\x80 \xf4\x90\x80\x80 \xc3\"}\n");
  trace t;
  assert_int_equal(trace_read(&t, path, stderr), 0);
  unlink(path);
  assert_int_equal(trace_link(&t, stderr), 0);
  char *json = NULL;
  size_t len;
  FILE *out = open_memstream(&json, &len);
  assert_int_equal(trace_write_chrome(&t, out), 0);
  fclose(out);
  assert_non_null(strstr(json, "\"name\":\"a\\ufffd l/1.1\""));
  assert_non_null(strstr(json, "\"fields\":\"\xc3\xa9 \\ufffd\\ufffd\\ufffd \\ufffd\\ufffd\\ufffd "
                               "\\ufffd\\ufffd\\ufffd\\ufffd \\ufffd\""));
  free(json);
  trace_free(&t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_good),   cmocka_unit_test(test_parse_corr_interp),
      cmocka_unit_test(test_parse_errors),
      cmocka_unit_test(test_read_file),    cmocka_unit_test(test_link_nesting),
      cmocka_unit_test(test_link_edges),   cmocka_unit_test(test_golden),
      cmocka_unit_test(test_chrome_utf8),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
