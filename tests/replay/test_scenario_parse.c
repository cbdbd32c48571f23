/* test_scenario_parse.c: the .mbs parser and printer against spec/scenario.md. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "scenario.h"

/* ---- allocation failures -------------------------------------------------------------------- */

/* The executable is linked with --wrap for malloc, calloc and realloc, so the parser's
 * allocations come here: alloc_countdown == 0 makes the next one fail. */
static long alloc_countdown = -1;
/* Bytes asked for by malloc and calloc since the last reset (realloc: the new size). */
static uint64_t alloc_bytes;
void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
static bool alloc_fails(void) { return alloc_countdown >= 0 && alloc_countdown-- == 0; }
void *__wrap_malloc(size_t n) {
  alloc_bytes += n;
  return alloc_fails() ? NULL : __real_malloc(n);
}
void *__wrap_calloc(size_t n, size_t size) {
  alloc_bytes += (uint64_t)n * size;
  return alloc_fails() ? NULL : __real_calloc(n, size);
}
void *__wrap_realloc(void *p, size_t n) {
  alloc_bytes += n;
  return alloc_fails() ? NULL : __real_realloc(p, n);
}

/* ---- helpers -------------------------------------------------------------------------------- */

static char *write_temp(const char *data, size_t len) {
  char *path = strdup("/tmp/test_scenario_XXXXXX");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, data, len), (ssize_t)len);
  close(fd);
  return path;
}

/* A message without the file name it starts with. */
static const char *after_name(const char *err) {
  const char *colon = strchr(err, ':');
  return colon ? colon : err;
}

static void stream_same_info(const scenario_stream *s, const scenario *want) {
  const scenario *info = scenario_stream_info(s);
  assert_int_equal(info->ncmds, want->ncmds);
  assert_null(info->cmds);
  assert_int_equal(info->max_addr, want->max_addr);
  assert_int_equal(info->overlap, want->overlap);
  assert_int_equal(info->require_kvm, want->require_kvm);
}

/* Read the file at `path` through a stream: the same commands and configuration as `want`,
 * or (want NULL) the commands before the line that does not parse, then the same message as
 * `err`, file name aside, from then on. */
static void stream_agrees(const char *path, const scenario *want, const char *err) {
  char serr[512];
  scenario_stream *s = NULL;
  assert_int_equal(scenario_stream_open(path, &s, serr, sizeof serr), 0);
  scenario_cmd *cmd;
  int rc;
  size_t i = 0;
  for (; (rc = scenario_stream_next(s, &cmd)) > 0; i++) {
    if (want && (i >= want->ncmds || !scenario_cmd_equal(cmd, &want->cmds[i]) ||
                 cmd->line != want->cmds[i].line))
      fail_msg("%s: the stream's command %zu differs from the parsed program's", path, i);
    scenario_cmd_free(cmd);
  }
  assert_null(cmd);
  if (want) {
    assert_int_equal(rc, 0);
    stream_same_info(s, want);
  } else {
    assert_int_equal(rc, -1);
    assert_int_equal(scenario_stream_next(s, &cmd), -1);
    assert_string_equal(after_name(scenario_stream_error(s)), after_name(err));
  }
  scenario_stream_close(s);
}

/* The same for a text (the stream's allocations are not counted in alloc_bytes). */
static void stream_agrees_text(const char *text, const scenario *want, const char *err) {
  uint64_t bytes = alloc_bytes;
  char *path = write_temp(text, strlen(text));
  stream_agrees(path, want, err);
  unlink(path);
  free(path);
  alloc_bytes = bytes;
}

/* Parsed whole, and read through a stream alike. */
static scenario *parse_ok(const char *text) {
  char err[512];
  scenario *sc = NULL;
  int rc = scenario_parse_string(text, "t.mbs", &sc, err, sizeof err);
  if (rc != 0) fail_msg("unexpected parse error: %s\n--- text:\n%s", err, text);
  assert_non_null(sc);
  stream_agrees_text(text, sc, NULL);
  return sc;
}

/* The text must fail to parse with a message that starts "t.mbs:LINE: " and contains `what`. */
static void parse_err_at(const char *text, unsigned line, const char *what) {
  char err[512], prefix[32];
  scenario *sc = (scenario *)1;
  int rc = scenario_parse_string(text, "t.mbs", &sc, err, sizeof err);
  if (rc == 0) fail_msg("parsed, but should fail with '%s'\n--- text:\n%s", what, text);
  assert_null(sc);
  snprintf(prefix, sizeof prefix, "t.mbs:%u: ", line);
  if (strncmp(err, prefix, strlen(prefix)) != 0 || !strstr(err, what))
    fail_msg("message '%s' should start '%s' and contain '%s'", err, prefix, what);
  stream_agrees_text(text, NULL, err);
}

/* The same for the last line of the text. */
static void parse_err(const char *text, const char *what) {
  unsigned line = 1;
  size_t n = strlen(text);
  for (size_t i = 0; i + 1 < n; i++) line += text[i] == '\n';
  parse_err_at(text, line, what);
}

/* Parse a one-command text (after an optional prelude) and return its last command. */
static scenario *last_sc;
static const scenario_cmd *last_cmd(const char *text) {
  scenario_free(last_sc);
  last_sc = NULL; /* a parse that fails the test must not leave it to be freed again */
  last_sc = parse_ok(text);
  assert_true(last_sc->ncmds > 0);
  return &last_sc->cmds[last_sc->ncmds - 1];
}

static int teardown_last(void **state) {
  (void)state;
  scenario_free(last_sc);
  last_sc = NULL;
  return 0;
}

static char *print_program(const scenario *sc) {
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  assert_non_null(f);
  scenario_print(f, sc);
  fclose(f);
  return text;
}

static char *print_cmd(const scenario_cmd *c) {
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  assert_non_null(f);
  scenario_print_command(f, c);
  fclose(f);
  return text;
}

static void assert_printed(const scenario_cmd *c, const char *want) {
  char *got = print_cmd(c);
  assert_string_equal(got, want);
  free(got);
}

static void assert_same_program(const scenario *a, const scenario *b) {
  assert_int_equal(a->ncmds, b->ncmds);
  size_t i;
  if (!scenario_equal(a, b, &i) && i < a->ncmds) {
    char *x = print_cmd(&a->cmds[i]), *y = print_cmd(&b->cmds[i]);
    fail_msg("command %zu differs: '%s' / '%s'", i, x, y);
  }
  assert_int_equal(a->max_addr, b->max_addr);
  assert_int_equal(a->overlap, b->overlap);
  assert_int_equal(a->require_kvm, b->require_kvm);
}

/* parse -> print -> parse gives the same program, and printing is then stable. */
static void assert_round_trip(const char *text) {
  scenario *a = parse_ok(text);
  char *printed = print_program(a);
  scenario *b = parse_ok(printed);
  assert_same_program(a, b);
  char *again = print_program(b);
  assert_string_equal(printed, again);
  free(printed);
  free(again);
  scenario_free(a);
  scenario_free(b);
}

/* ---- the spec's example --------------------------------------------------------------------- */

static const char spec_example[] =
    "# A ROM window over RAM hides the RAM beneath it until it is unmapped.\n"
    "object memfd ram 16M fill=0x11\n"
    "object memfd rom 64K fill=0xee\n"
    "region add ram 0 16M prio=255\n"
    "mapping add ram 0 16M ram 0\n"
    "region map ram\n"
    "region add rom 0xf0000 64K prio=0 type=device\n"
    "mapping add rom 0 64K rom 0 ro\n"
    "mapper add m0 eager\n"
    "partition add p0 soft\n"
    "read m0 0xf0000 4 => 11111111\n"
    "expect partition p0 0+16M:rw\n"
    "region remove ram\n"
    "region map rom ro\n"
    "expect partition p0 0xf0000+64K:ro\n"
    "read m0 0xf0000 2 => eeee\n"
    "write m0 0xf0000 00 => error:readonly\n"
    "guest p0 write 0xf0000 00 => error:mmio\n"
    "guest p0 read 0x1000 1 => error:mmio\n";

static void test_spec_example(void **state) {
  (void)state;
  scenario *sc = parse_ok(spec_example);
  assert_int_equal(sc->ncmds, 18);
  assert_string_equal(sc->name, "t.mbs");
  assert_int_equal(sc->max_addr, SCENARIO_DEFAULT_MAX_ADDR);
  assert_int_equal(sc->overlap, SCENARIO_OVERLAP_NESTED);
  assert_false(sc->require_kvm);

  const scenario_cmd *c = &sc->cmds[0];
  assert_int_equal(c->kind, SCENARIO_OBJECT);
  assert_int_equal(c->line, 2);
  assert_string_equal(c->object.name, "ram");
  assert_int_equal(c->object.size, 16 << 20);
  assert_int_equal(c->object.fill, SCENARIO_FILL_BYTE);
  assert_int_equal(c->object.fill_value, 0x11);

  c = &sc->cmds[9];
  assert_int_equal(c->kind, SCENARIO_READ);
  assert_int_equal(c->line, 11);
  assert_int_equal(c->expect.kind, SCENARIO_EXPECT_BYTES);
  assert_int_equal(c->expect.bytes.len, 4);
  assert_memory_equal(c->expect.bytes.data, "\x11\x11\x11\x11", 4);

  c = &sc->cmds[13];
  assert_int_equal(c->kind, SCENARIO_EXPECT_PARTITION);
  assert_int_equal(c->expect_ranges.ranges.n, 1);
  assert_int_equal(c->expect_ranges.ranges.items[0].gpa, 0xf0000);
  assert_int_equal(c->expect_ranges.ranges.items[0].size, 64 << 10);
  assert_true(c->expect_ranges.ranges.items[0].ro);

  c = &sc->cmds[16];
  assert_int_equal(c->kind, SCENARIO_GUEST_WRITE);
  assert_string_equal(c->io.target, "p0");
  assert_int_equal(c->io.len, 1);
  assert_int_equal(c->expect.kind, SCENARIO_EXPECT_ERROR);
  assert_int_equal(c->expect.error, SCENARIO_ERR_MMIO);
  scenario_free(sc);
}

/* ---- lexical rules -------------------------------------------------------------------------- */

/* Numbers as a region's GPA, which takes any value (alignment is the operation's business). */
static uint64_t number_of(const char *number) {
  char text[128];
  snprintf(text, sizeof text, "region add r %s 4K\n", number);
  scenario *sc = parse_ok(text);
  uint64_t v = sc->cmds[0].region.gpa;
  scenario_free(sc);
  return v;
}

static void bad_number(const char *number, const char *what) {
  char text[128];
  snprintf(text, sizeof text, "region add r %s 4K\n", number);
  parse_err(text, what);
}

static void test_numbers(void **state) {
  (void)state;
  assert_int_equal(number_of("0"), 0);
  assert_int_equal(number_of("4096"), 4096);
  assert_int_equal(number_of("007"), 7);
  assert_int_equal(number_of("0x1000"), 0x1000);
  assert_int_equal(number_of("0xDeadBeef"), 0xdeadbeef);
  assert_int_equal(number_of("4K"), 4096);
  assert_int_equal(number_of("2M"), 2 << 20);
  assert_int_equal(number_of("1G"), 1 << 30);
  assert_int_equal(number_of("3T"), UINT64_C(3) << 40);
  assert_int_equal(number_of("0x10K"), 16 << 10);
  assert_int_equal(number_of("18446744073709551615"), UINT64_MAX);
  assert_int_equal(number_of("0xffffffffffffffff"), UINT64_MAX);
  assert_int_equal(number_of("0x0000000000000000000001"), 1);
  assert_int_equal(number_of("16777215T"), UINT64_C(16777215) << 40);

  bad_number("18446744073709551616",
             "region add: GPA '18446744073709551616' does not fit in 64 bits");
  bad_number("0x10000000000000000", "does not fit in 64 bits");
  bad_number("16777216T", "does not fit in 64 bits");
  bad_number("17179869184G", "does not fit in 64 bits");
  bad_number("99999999999999999999999K", "does not fit in 64 bits");
  static const char *const malformed[] = {"",     "0x",  "K",   "0xK", "4k",  "-1",  "+1",   "1.5",
                                          "0X10", "1KB", "0xg", "1 K", "12a", "1KK", "0x1g0"};
  for (size_t i = 0; i < sizeof malformed / sizeof malformed[0]; i++) {
    char text[64];
    snprintf(text, sizeof text, "region add r %s 4K\n", malformed[i]);
    scenario *sc = NULL;
    char err[256];
    assert_int_not_equal(scenario_parse_string(text, "t.mbs", &sc, err, sizeof err), 0);
    assert_non_null(strstr(err, "t.mbs:1: region add: "));
  }
  bad_number("0x1g0", "region add: GPA '0x1g0' is not a number");
  /* A malformed token is reported as such even when it would also overflow. */
  bad_number("99999999999999999999999x", "is not a number");
}

static void test_comments_blank_lines_tabs(void **state) {
  (void)state;
  scenario *sc = parse_ok("\n"
                          "# comment only\n"
                          "   \t  \n"
                          "\tobject\tmemfd  o \t 4K   # trailing comment\n"
                          "#\n"
                          "mapper add m eager# comment right after a token\n"
                          "read m 0 1 => ab # the result ends before the comment\n"
                          "   # indented comment");
  assert_int_equal(sc->ncmds, 3);
  assert_int_equal(sc->cmds[0].line, 4);
  assert_string_equal(sc->cmds[0].object.name, "o");
  assert_int_equal(sc->cmds[1].line, 6);
  assert_int_equal(sc->cmds[1].mapper.mode, SCENARIO_MAPPER_EAGER);
  assert_int_equal(sc->cmds[2].line, 7);
  assert_int_equal(sc->cmds[2].expect.bytes.len, 1);
  scenario_free(sc);

  sc = parse_ok("");
  assert_int_equal(sc->ncmds, 0);
  scenario_free(sc);
  sc = parse_ok("# nothing\n\n");
  assert_int_equal(sc->ncmds, 0);
  scenario_free(sc);
  /* The last line need not end in a newline. */
  sc = parse_ok("mapper add m lazy");
  assert_int_equal(sc->ncmds, 1);
  scenario_free(sc);
}

static void test_bad_characters(void **state) {
  (void)state;
  parse_err("mapper add m eager\r\n", "carriage return");
  parse_err("mapper add m eager # crlf\r\n", "carriage return");
  parse_err("mapper add m\x0b eager\n", "unexpected control character 0x0b");
  parse_err("mapper add m eager\x7f\n", "unexpected control character 0x7f");
  /* Keywords are lower case. */
  parse_err("Mapper add m eager\n", "unknown command 'Mapper'");
  parse_err("mapper ADD m eager\n", "mapper: expected add or remove, got 'ADD'");
  parse_err("mapper add m EAGER\n", "mapper add: expected eager or lazy, got 'EAGER'");
}

static void test_names(void **state) {
  (void)state;
  const scenario_cmd *c = last_cmd("mapper add _a.b-c.9 eager\n");
  assert_string_equal(c->mapper.name, "_a.b-c.9");

  char text[256];
  char name[80];
  memset(name, 'n', 63);
  name[63] = '\0';
  snprintf(text, sizeof text, "mapper add %s eager\n", name);
  c = last_cmd(text);
  assert_string_equal(c->mapper.name, name);
  name[63] = 'n';
  name[64] = '\0';
  snprintf(text, sizeof text, "mapper add %s eager\n", name);
  /* The message shows the first 60 characters. */
  parse_err(text,
            "mapper add: NAME 'nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn...' is "
            "longer than 63 characters");

  parse_err("mapper add 9m eager\n", "mapper add: NAME '9m' is not a valid name");
  parse_err("mapper add -m eager\n", "is not a valid name");
  parse_err("mapper add .m eager\n", "is not a valid name");
  parse_err("mapper add m! eager\n", "is not a valid name");
  parse_err("mapper add m/x eager\n", "is not a valid name");
  parse_err("region add r:1 0 4K\n", "region add: NAME 'r:1' is not a valid name");
  parse_err("object memfd o+ 4K\n", "object: NAME 'o+' is not a valid name");
  parse_err("mapping add r 0 4K o$ 0\n", "mapping add: OBJECT 'o$' is not a valid name");
  parse_err("lock m 0 4K as 1L\n", "lock: NAME '1L' is not a valid name");
  parse_err("async 1a mapper add m eager\n", "async: LABEL '1a' is not a valid name");
  parse_err("read m\xc3\xa9 0 1\n", "read: MAPPER");
}

/* ---- commands ------------------------------------------------------------------------------- */

static void test_config_and_require(void **state) {
  (void)state;
  scenario *sc = parse_ok("# header comment\n"
                          "config max_addr=1T\n"
                          "require kvm\n"
                          "config overlap=any\n"
                          "\n"
                          "mapper add m eager\n");
  assert_int_equal(sc->ncmds, 4);
  assert_int_equal(sc->cmds[0].kind, SCENARIO_CONFIG);
  assert_int_equal(sc->cmds[0].config.key, SCENARIO_CONFIG_MAX_ADDR);
  assert_int_equal(sc->cmds[0].config.max_addr, UINT64_C(1) << 40);
  assert_int_equal(sc->cmds[1].kind, SCENARIO_REQUIRE);
  assert_int_equal(sc->cmds[1].require.what, SCENARIO_REQUIRE_KVM);
  assert_int_equal(sc->cmds[2].config.key, SCENARIO_CONFIG_OVERLAP);
  assert_int_equal(sc->cmds[2].config.overlap, SCENARIO_OVERLAP_ANY);
  assert_int_equal(sc->max_addr, UINT64_C(1) << 40);
  assert_int_equal(sc->overlap, SCENARIO_OVERLAP_ANY);
  assert_true(sc->require_kvm);
  scenario_free(sc);

  sc = parse_ok("config overlap=nested\n");
  assert_int_equal(sc->overlap, SCENARIO_OVERLAP_NESTED);
  scenario_free(sc);

  parse_err("mapper add m eager\nconfig max_addr=4G\n",
            "'config' must come before every other command");
  parse_err("object memfd o 4K\nrequire kvm\n", "'require' must come before every other command");
  parse_err("config overlap=some\n", "config: overlap must be nested or any, not 'some'");
  parse_err("config speed=1\n", "config: unknown setting 'speed=1'");
  parse_err("config max_addr\n", "config: unknown setting 'max_addr'");
  parse_err("config max_addr=\n", "config: max_addr '' is not a number");
  parse_err("config\n", "config: missing max_addr=, overlap=, vtls= or vtl0_alias=");
  parse_err("config max_addr=1G overlap=any\n", "config: unexpected 'overlap=any'");
  parse_err("config max_addr=1G => ok\n", "config takes no '=> RESULT'");
  parse_err("require\n", "require: missing kvm");
  parse_err("require xen\n", "require: expected kvm, got 'xen'");
  parse_err("require kvm kvm\n", "require: unexpected 'kvm'");
  parse_err("require kvm => ok\n", "require takes no '=> RESULT'");
}

/* The config lines are checked together once the last of them was read (at the first other
 * command, or at the end of the file), and a violation names the line of the setting. */
static void test_config_together(void **state) {
  (void)state;
  scenario *sc = parse_ok("config max_addr=0x1001\nconfig max_addr=4G\nobject memfd o 4K\n");
  assert_int_equal(sc->max_addr, UINT64_C(4) << 30); /* the last one counts */
  scenario_free(sc);
  parse_err_at("config max_addr=0x40000800\nconfig overlap=any\nrequire kvm\nobject memfd o 4K\n",
               1, "config: max_addr 0x40000800 is not a multiple of 4 KiB");
  parse_err_at("config overlap=any\nconfig max_addr=0\n# only config lines\n", 2,
               "config: max_addr 0x0 is zero");
  parse_err_at("config max_addr=4G\nconfig max_addr=6K\nconfig overlap=any\n", 2,
               "is not a multiple of 4 KiB");
  /* The check comes as the first other command begins: before its arguments are read (a
   * command that is not one at all is refused first). */
  parse_err_at("config max_addr=1\nregion add r\n", 1, "config: max_addr 0x1");
  parse_err_at("config max_addr=1\nregoin add r 0 4K\n", 2, "unknown command 'regoin'");
}

static void test_objects(void **state) {
  (void)state;
  const scenario_cmd *c = last_cmd("object memfd a 8K\n");
  assert_int_equal(c->kind, SCENARIO_OBJECT);
  assert_int_equal(c->object.type, SCENARIO_OBJECT_MEMFD);
  assert_int_equal(c->object.size, 8192);
  assert_int_equal(c->object.fill, SCENARIO_FILL_BYTE);
  assert_int_equal(c->object.fill_value, 0);
  assert_int_equal(c->expect.kind, SCENARIO_EXPECT_NONE);

  c = last_cmd("object file b 0x2000 fill=pages:0xF0 => ok\n");
  assert_int_equal(c->object.type, SCENARIO_OBJECT_FILE);
  assert_string_equal(c->object.name, "b");
  assert_int_equal(c->object.size, 0x2000);
  assert_int_equal(c->object.fill, SCENARIO_FILL_PAGES);
  assert_int_equal(c->object.fill_value, 0xf0);
  assert_int_equal(c->expect.kind, SCENARIO_EXPECT_OK);

  /* A zero size is the run's business (error:invalid), not a parse error. */
  c = last_cmd("object memfd z 0 => error:invalid\n");
  assert_int_equal(c->object.size, 0);
  assert_int_equal(c->expect.error, SCENARIO_ERR_INVALID);

  /* Nor is an unaligned size (spec "Lexical rules": alignment is a rule of the operation). */
  c = last_cmd("object memfd a 4097\n");
  assert_int_equal(c->object.size, 4097);
  c = last_cmd("object file a 2K fill=0x11 => error:invalid\n");
  assert_int_equal(c->object.size, 2048);
  parse_err("object shm a 4K\n", "object: expected memfd or file, got 'shm'");
  parse_err("object memfd a\n", "object: missing SIZE");
  parse_err("object memfd a => ok\n", "object: missing SIZE");
  parse_err("object memfd a 4K fill=0x1\n", "object: fill '0x1' is neither 0xHH nor pages:0xHH");
  parse_err("object memfd a 4K fill=0x123\n", "is neither 0xHH nor pages:0xHH");
  parse_err("object memfd a 4K fill=11\n", "is neither 0xHH nor pages:0xHH");
  parse_err("object memfd a 4K fill=pages:11\n", "is neither 0xHH nor pages:0xHH");
  parse_err("object memfd a 4K fill=0xzz\n", "is neither 0xHH nor pages:0xHH");
  parse_err("object memfd a 4K fill=0x11 fill=0x22\n", "object: option 'fill=0x22' given twice");
  parse_err("object memfd a 4K size=1\n", "object: unexpected 'size=1'");
}

static void test_regions(void **state) {
  (void)state;
  const scenario_cmd *c = last_cmd("region add r 0x100000 1M\n");
  assert_int_equal(c->kind, SCENARIO_REGION_ADD);
  assert_string_equal(c->region.name, "r");
  assert_int_equal(c->region.gpa, 0x100000);
  assert_int_equal(c->region.size, 1 << 20);
  assert_int_equal(c->region.prio, 0);
  assert_int_equal(c->region.type, SCENARIO_REGION_RAM);

  c = last_cmd("region add r 4G 2G type=device prio=0x10\n");
  assert_int_equal(c->region.gpa, UINT64_C(4) << 30);
  assert_int_equal(c->region.prio, 16);
  assert_int_equal(c->region.type, SCENARIO_REGION_DEVICE);
  c = last_cmd("region add r 0 4K prio=255 type=ram => error:overlap\n");
  assert_int_equal(c->region.prio, 255);
  assert_int_equal(c->expect.error, SCENARIO_ERR_OVERLAP);

  c = last_cmd("region map r\n");
  assert_int_equal(c->kind, SCENARIO_REGION_MAP);
  assert_false(c->region.ro);
  c = last_cmd("region map r rw\n");
  assert_false(c->region.ro);
  c = last_cmd("region map r ro => error:notfound\n");
  assert_true(c->region.ro);
  assert_int_equal(c->expect.error, SCENARIO_ERR_NOTFOUND);
  c = last_cmd("region unmap r\n");
  assert_int_equal(c->kind, SCENARIO_REGION_UNMAP);
  assert_string_equal(c->region.name, "r");
  c = last_cmd("region remove r => ok\n");
  assert_int_equal(c->kind, SCENARIO_REGION_REMOVE);

  c = last_cmd("region add r 0x800 6K => error:invalid\n"); /* alignment: a result */
  assert_int_equal(c->region.gpa, 0x800);
  assert_int_equal(c->region.size, 6 << 10);
  parse_err("region add r 0 4K prio=256\n", "region add: prio '256' is not in 0..255");
  parse_err("region add r 0 4K prio=1K\n", "region add: prio '1K' is not in 0..255");
  parse_err("region add r 0 4K prio=x\n", "region add: prio 'x' is not a number");
  parse_err("region add r 0 4K type=rom\n", "region add: type must be ram or device, not 'rom'");
  parse_err("region add r 0 4K prio=1 prio=2\n", "option 'prio=2' given twice");
  parse_err("region add r 0 4K type=ram type=ram\n", "option 'type=ram' given twice");
  parse_err("region add r 0 4K ro\n", "region add: unexpected 'ro'");
  parse_err("region add r 0\n", "region add: missing SIZE");
  parse_err("region add\n", "region add: missing NAME");
  parse_err("region map r rx\n", "region map: unexpected 'rx'");
  parse_err("region map r ro ro\n", "region map: unexpected 'ro'");
  parse_err("region unmap r ro\n", "region unmap: unexpected 'ro'");
  parse_err("region ad r 0 4K\n", "region: expected add, map, unmap or remove, got 'ad'");
  parse_err("region\n", "region: missing add, map, unmap or remove");
}

static void test_mappings(void **state) {
  (void)state;
  const scenario_cmd *c = last_cmd("mapping add r 0x2000 8K o 0x10000\n");
  assert_int_equal(c->kind, SCENARIO_MAPPING_ADD);
  assert_string_equal(c->mapping.region, "r");
  assert_int_equal(c->mapping.offset, 0x2000);
  assert_int_equal(c->mapping.size, 8192);
  assert_string_equal(c->mapping.object, "o");
  assert_int_equal(c->mapping.obj_offset, 0x10000);
  assert_false(c->mapping.ro);
  c = last_cmd("mapping add r 0 4K o 0 ro => error:overlap\n");
  assert_true(c->mapping.ro);
  c = last_cmd("mapping replace r 0 4K o 4K rw\n");
  assert_int_equal(c->kind, SCENARIO_MAPPING_REPLACE);
  assert_false(c->mapping.ro);
  c = last_cmd("mapping replace r 0 4K o 4K ro => error:resource\n");
  assert_true(c->mapping.ro);
  assert_int_equal(c->expect.error, SCENARIO_ERR_RESOURCE);
  c = last_cmd("mapping remove r 4K 4K\n");
  assert_int_equal(c->kind, SCENARIO_MAPPING_REMOVE);
  assert_int_equal(c->mapping.offset, 4096);
  assert_string_equal(c->mapping.object, "");

  /* Unaligned OFFSET, SIZE and OBJ_OFFSET parse: the operation answers error:invalid. */
  c = last_cmd("mapping add r 1 100 o 0x10 => error:invalid\n");
  assert_int_equal(c->mapping.offset, 1);
  assert_int_equal(c->mapping.size, 100);
  assert_int_equal(c->mapping.obj_offset, 0x10);
  c = last_cmd("mapping replace r 0 4K o 1\n");
  assert_int_equal(c->mapping.obj_offset, 1);
  c = last_cmd("mapping remove r 0 1\n");
  assert_int_equal(c->mapping.size, 1);
  parse_err("mapping remove r 0 4K o 0\n", "mapping remove: unexpected 'o'");
  parse_err("mapping add r 0 4K o\n", "mapping add: missing OBJ_OFFSET");
  parse_err("mapping add r 0 4K o 0 rx\n", "mapping add: unexpected 'rx'");
  parse_err("mapping move r 0 4K\n", "mapping: expected add, remove or replace, got 'move'");
}

static void test_consumers(void **state) {
  (void)state;
  const scenario_cmd *c = last_cmd("mapper add m lazy\n");
  assert_int_equal(c->kind, SCENARIO_MAPPER_ADD);
  assert_int_equal(c->mapper.mode, SCENARIO_MAPPER_LAZY);
  c = last_cmd("mapper remove m => error:notfound\n");
  assert_int_equal(c->kind, SCENARIO_MAPPER_REMOVE);
  assert_string_equal(c->mapper.name, "m");
  c = last_cmd("partition add p kvm\n");
  assert_int_equal(c->kind, SCENARIO_PARTITION_ADD);
  assert_int_equal(c->partition.backend, SCENARIO_PARTITION_KVM);
  c = last_cmd("partition add p soft => ok\n");
  assert_int_equal(c->partition.backend, SCENARIO_PARTITION_SOFT);
  c = last_cmd("partition remove p\n");
  assert_int_equal(c->kind, SCENARIO_PARTITION_REMOVE);
  assert_string_equal(c->partition.name, "p");

  parse_err("mapper add m\n", "mapper add: missing eager or lazy");
  parse_err("mapper add m fast\n", "mapper add: expected eager or lazy, got 'fast'");
  parse_err("mapper remove m eager\n", "mapper remove: unexpected 'eager'");
  parse_err("partition add p\n", "partition add: missing soft or kvm");
  parse_err("partition add p hyperv\n", "partition add: expected soft or kvm, got 'hyperv'");
  parse_err("partition del p\n", "partition: expected add or remove, got 'del'");
}

static void test_accesses(void **state) {
  (void)state;
  const scenario_cmd *c = last_cmd("read m 0x1001 3\n");
  assert_int_equal(c->kind, SCENARIO_READ);
  assert_string_equal(c->io.target, "m");
  assert_int_equal(c->io.gpa, 0x1001);
  assert_int_equal(c->io.len, 3);
  assert_int_equal(c->io.data.len, 0);
  assert_int_equal(c->expect.kind, SCENARIO_EXPECT_NONE);

  c = last_cmd("read m 7 2 => error:unmapped\n");
  assert_int_equal(c->expect.kind, SCENARIO_EXPECT_ERROR);
  assert_int_equal(c->expect.error, SCENARIO_ERR_UNMAPPED);
  c = last_cmd("read m 7 2 => ok\n");
  assert_int_equal(c->expect.kind, SCENARIO_EXPECT_OK);

  c = last_cmd("write m 0x3 dead BE*2 ef\n");
  assert_int_equal(c->kind, SCENARIO_WRITE);
  assert_int_equal(c->io.gpa, 3);
  assert_int_equal(c->io.len, 5);
  assert_int_equal(c->io.data.len, 5);
  assert_memory_equal(c->io.data.data, "\xde\xad\xbe\xbe\xef", 5);
  c = last_cmd("write m 0 00 => error:readonly\n");
  assert_int_equal(c->expect.error, SCENARIO_ERR_READONLY);

  c = last_cmd("guest p read 0x1000 2 => 0102\n");
  assert_int_equal(c->kind, SCENARIO_GUEST_READ);
  assert_string_equal(c->io.target, "p");
  assert_int_equal(c->io.len, 2);
  assert_memory_equal(c->expect.bytes.data, "\x01\x02", 2);
  c = last_cmd("guest p write 0x1000 ff*4K => error:fault\n");
  assert_int_equal(c->kind, SCENARIO_GUEST_WRITE);
  assert_int_equal(c->io.len, 4096);
  assert_int_equal(c->io.data.data[4095], 0xff);
  assert_int_equal(c->expect.error, SCENARIO_ERR_FAULT);

  parse_err("read m 0\n", "read: missing LEN");
  parse_err("read m 0 => 00\n", "read: missing LEN");
  parse_err("read m 0 1 2\n", "read: unexpected '2'");
  parse_err("read m x 1\n", "read: GPA 'x' is not a number");
  parse_err("write m 0\n", "write: missing HEXBYTES");
  parse_err("write m 0 => ok\n", "write: missing HEXBYTES");
  parse_err("write m 0 0\n", "write: malformed HEXBYTES token '0'");
  parse_err("write m 0 00 zz\n", "write: malformed HEXBYTES token 'zz'");
  parse_err("write m 0 00 => 00\n", "write: '=> BYTES' is only allowed after a read");
  parse_err("guest p peek 0 1\n", "guest: expected read or write, got 'peek'");
  parse_err("guest read 0 1\n", "guest: expected read or write, got '0'");
  parse_err("guest p\n", "guest: missing read or write");
  parse_err("guest p read 0\n", "guest read: missing LEN");
  parse_err("guest p write 0 00 => 00\n", "guest write: '=> BYTES' is only allowed after a read");
  parse_err("guest p read 0 1 => 0000\n", "guest read: BYTES is 2 bytes long, the read's LEN is 1");
}

static void test_bytes(void **state) {
  (void)state;
  const scenario_cmd *c = last_cmd("read m 0 12 => de AD beEF 00*4 11*0 0A*2 ff*0x2\n");
  assert_int_equal(c->expect.kind, SCENARIO_EXPECT_BYTES);
  assert_int_equal(c->expect.bytes.len, 12);
  assert_memory_equal(c->expect.bytes.data, "\xde\xad\xbe\xef\x00\x00\x00\x00\x0a\x0a\xff\xff", 12);
  c = last_cmd("read m 0 1K => 5a*1K\n");
  assert_int_equal(c->expect.bytes.len, 1024);
  assert_int_equal(c->expect.bytes.data[1023], 0x5a);
  /* A read of length 0 can only expect the empty BYTES HH*0 (or ok / error:CODE). */
  c = last_cmd("read m 0 0 => 00*0\n");
  assert_int_equal(c->expect.kind, SCENARIO_EXPECT_BYTES);
  assert_int_equal(c->expect.bytes.len, 0);

  parse_err("read m 0 4 => 1111\n", "read: BYTES is 2 bytes long, the read's LEN is 4");
  parse_err("read m 0 4 => 11*5\n", "read: BYTES is 5 bytes long, the read's LEN is 4");
  parse_err("read m 0 4 => 11*1T\n",
            "read: BYTES is 1099511627776 bytes long, the read's LEN is 4");
  parse_err("read m 0 4 => 111\n", "read: malformed BYTES token '111'");
  parse_err("read m 0 4 => 1*4\n", "read: malformed BYTES token '1*4'");
  parse_err("read m 0 4 => 111*4\n", "read: malformed BYTES token '111*4'");
  parse_err("read m 0 4 => 11*\n", "read: malformed BYTES token '11*'");
  parse_err("read m 0 4 => 11*x\n", "read: malformed BYTES token '11*x'");
  parse_err("read m 0 4 => 11*2*2\n", "read: malformed BYTES token '11*2*2'");
  parse_err("read m 0 4 => 0x11223344\n", "read: malformed BYTES token '0x11223344'");
  parse_err("read m 0 4 => 11*99999999999999999999\n", "count does not fit in 64 bits");
  parse_err("read m 0 4 => 1111 1111 => ok\n", "read: unexpected '=>' after the result");
  parse_err("write m 0 00*2G\n", "write: HEXBYTES is 2147483648 bytes long, more than the");
  parse_err("write m 0 00*1G 00\n", "write: HEXBYTES is 1073741825 bytes long");
  parse_err("write m 0 ff*0xffffffffffffffff 00*1\n", "write: HEXBYTES is 18446744073709551615");
}

/* BYTES and HEXBYTES are bounded per file, not only per line: six short lines of 00*1G once
 * took gigabytes and seconds. The parser refuses the line that passes SCENARIO_DATA_MAX,
 * before allocating for it, and never holds more than that. */
static void test_bytes_per_file(void **state) {
  (void)state;
  assert_int_equal(SCENARIO_DATA_MAX, 64 << 20);
  alloc_bytes = 0;
  parse_err_at("write m 0 00*1G\nwrite m 0 00*1G\n", 1, "write: HEXBYTES is 1073741824");
  parse_err("write m 0 00*40M\nwrite m 0 11*20M\nwrite m 0 22*4M 33\n",
            "write: HEXBYTES is 4194305 bytes long; with the 62914560 bytes of BYTES and "
            "HEXBYTES before it, more than the 67108864 a file may hold");
  parse_err("read m 0 60M => 00*60M\nasync a read m 0 8M\nawait a => 01*8M\n",
            "await: BYTES is 8388608 bytes long; with the 62914560 bytes");
  parse_err("write m 0 da*0874401614 da*0\n", "more than the 67108864 a file may hold");
  assert_true(alloc_bytes < (UINT64_C(130) << 20)); /* 60M + 62M held, nothing for the rest */

  /* Exactly the limit parses; a file of many small values adds up like one large one. */
  scenario *sc = parse_ok("write m 0 00*32M\nread m 0 32M => ff*32M\nwrite m 0 00*0\n");
  assert_int_equal(sc->cmds[1].expect.bytes.len, 32 << 20);
  scenario_free(sc);
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  for (int i = 0; i < 1024; i++) fprintf(f, "write m %d 5a*64K\n", i);
  fprintf(f, "write m 0 00\n");
  fclose(f);
  parse_err_at(text, 1025, "write: HEXBYTES is 1 bytes long; with the 67108864 bytes");
  free(text);
}

static void test_results(void **state) {
  (void)state;
  static const struct {
    const char *code;
    scenario_error err;
  } codes[] = {{"overlap", SCENARIO_ERR_OVERLAP},   {"invalid", SCENARIO_ERR_INVALID},
               {"notfound", SCENARIO_ERR_NOTFOUND}, {"unmapped", SCENARIO_ERR_UNMAPPED},
               {"readonly", SCENARIO_ERR_READONLY}, {"mmio", SCENARIO_ERR_MMIO},
               {"fault", SCENARIO_ERR_FAULT},       {"unsupported", SCENARIO_ERR_UNSUPPORTED}};
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    char text[64];
    snprintf(text, sizeof text, "region unmap r => error:%s\n", codes[i].code);
    const scenario_cmd *c = last_cmd(text);
    assert_int_equal(c->expect.kind, SCENARIO_EXPECT_ERROR);
    assert_int_equal(c->expect.error, codes[i].err);
    assert_string_equal(scenario_error_name(codes[i].err), codes[i].code);
  }
  assert_string_equal(scenario_error_name(SCENARIO_ERR_NONE), "ok");
  assert_string_equal(scenario_error_name(SCENARIO_ERR_COUNT), "?");

  parse_err("region unmap r =>\n", "region unmap: missing RESULT after '=>'");
  parse_err("region unmap r =>ok\n",
            "region unmap: malformed '=>ok': '=>' must be followed by a space");
  parse_err("region unmap r => => ok\n", "region unmap: malformed result '=>'");
  parse_err("region unmap r => ok ok\n", "region unmap: unexpected 'ok' after the result");
  parse_err("region unmap r => okay\n",
            "region unmap: malformed result 'okay' (expected ok or error:CODE)");
  parse_err("region unmap r => OK\n", "region unmap: malformed result 'OK'");
  parse_err("region unmap r => error\n", "region unmap: malformed result 'error'");
  parse_err("read m 0 1 => error\n", "read: malformed result 'error'");
  parse_err("region unmap r => error:\n", "region unmap: unknown error code ''");
  parse_err("region unmap r => error:nope\n",
            "region unmap: unknown error code 'nope' (expected overlap");
  parse_err("region unmap r => error:OVERLAP\n", "unknown error code 'OVERLAP'");
  parse_err("region unmap r => error:overlap error:invalid\n",
            "unexpected 'error:invalid' after the result");
  parse_err("region unmap r => 00\n", "region unmap: '=> BYTES' is only allowed after a read");
  parse_err("region unmap r -> ok\n", "region unmap: unexpected '->'");
  parse_err("expect region r active => ok\n", "expect region takes no '=> RESULT'");
  parse_err("expect mapper m none => ok\n", "expect mapper takes no '=> RESULT'");
}

static void test_locks(void **state) {
  (void)state;
  const scenario_cmd *c = last_cmd("lock m 0x1000 8K as L\nunlock L\n");
  assert_int_equal(c->kind, SCENARIO_UNLOCK);
  assert_string_equal(c->lock.name, "L");
  c = &last_sc->cmds[0];
  assert_int_equal(c->kind, SCENARIO_LOCK);
  assert_string_equal(c->lock.mapper, "m");
  assert_int_equal(c->lock.gpa, 0x1000);
  assert_int_equal(c->lock.size, 8192);
  assert_false(c->lock.ro);
  assert_string_equal(c->lock.name, "L");
  c = last_cmd("lock m 0 4K ro as L => ok\n");
  assert_true(c->lock.ro);
  c = last_cmd("lock m 0 4K rw as L => error:unmapped\n");
  assert_false(c->lock.ro);
  assert_int_equal(c->expect.error, SCENARIO_ERR_UNMAPPED);

  c = last_cmd("lock m 0x10 1 as L => error:invalid\n"); /* alignment: a result */
  assert_int_equal(c->lock.gpa, 0x10);
  assert_int_equal(c->lock.size, 1);

  parse_err("lock m 0 4K L\n", "lock: expected rw, ro or 'as NAME', got 'L'");
  parse_err("lock m 0 4K\n", "lock: missing 'as NAME'");
  parse_err("lock m 0 4K as\n", "lock: missing NAME");
  parse_err("lock m 0 4K ro as L extra\n", "lock: unexpected 'extra'");
  parse_err("unlock\n", "unlock: missing NAME");
  parse_err("unlock L L\n", "unlock: unexpected 'L'");

  /* A lock that is not live is error:notfound at run time: never taken, released, or
   * expected to fail (a failed definition defines nothing, so the name may be taken again). */
  c = last_cmd("unlock L => error:notfound\n");
  assert_int_equal(c->expect.error, SCENARIO_ERR_NOTFOUND);
  scenario *sc = parse_ok("lock m 0 4K as L\nunlock L\nunlock L => error:notfound\n"
                          "lock m 0 4K as L => error:unmapped\nunlock L => error:notfound\n"
                          "lock m 0 4K as L\n");
  scenario_free(sc);
  parse_err("lock m 0 4K as L\nlock n 0 4K as L => error:unmapped\n",
            "lock: lock name 'L' is still in use (since line 1)");
  /* An unlock expected to fail leaves the lock live. */
  parse_err("lock m 0 4K as L\nunlock L => error:notfound\nlock m 0 4K as L\n",
            "lock name 'L' is still in use");

  /* Removing a mapper that holds locks is error:invalid at run time; it leaves the mapper and
   * its locks live. */
  sc = parse_ok("mapper add m eager\nlock m 0 4K as L\nmapper remove m => error:invalid\n"
                "async a mapper remove m\nawait a => error:invalid\nunlock L\nmapper remove m\n");
  scenario_free(sc);
  parse_err("mapper add m eager\nlock m 0 4K as L\nmapper remove m => error:invalid\n"
            "lock m 0 4K as L\n",
            "t.mbs:4: lock: lock name 'L' is still in use (since line 2)");
}

static void test_async(void **state) {
  (void)state;
  scenario *sc = parse_ok("mapper add m eager\n"
                          "lock m 0 4K as L\n"
                          "async a region unmap r\n"
                          "expect pending a\n"
                          "unlock L\n"
                          "await a => ok\n"
                          "async b read m 0x10 2\n"
                          "await b => abcd\n"
                          "async a write m 0 00\n"
                          "await a\n");
  assert_int_equal(sc->ncmds, 10);
  const scenario_cmd *c = &sc->cmds[2];
  assert_int_equal(c->kind, SCENARIO_ASYNC);
  assert_string_equal(c->async.label, "a");
  assert_non_null(c->async.inner);
  assert_int_equal(c->async.inner->kind, SCENARIO_REGION_UNMAP);
  assert_int_equal(c->async.inner->line, 3);
  assert_int_equal(c->async.inner->expect.kind, SCENARIO_EXPECT_NONE);
  assert_string_equal(c->async.inner->region.name, "r");
  c = &sc->cmds[3];
  assert_int_equal(c->kind, SCENARIO_EXPECT_PENDING);
  assert_string_equal(c->label.label, "a");
  assert_int_equal(c->label.async_index, 2);
  c = &sc->cmds[5];
  assert_int_equal(c->kind, SCENARIO_AWAIT);
  assert_int_equal(c->label.async_index, 2);
  assert_int_equal(c->expect.kind, SCENARIO_EXPECT_OK);
  c = &sc->cmds[7];
  assert_int_equal(c->label.async_index, 6);
  assert_int_equal(c->expect.kind, SCENARIO_EXPECT_BYTES);
  assert_memory_equal(c->expect.bytes.data, "\xab\xcd", 2);
  c = &sc->cmds[9];
  assert_int_equal(c->label.async_index, 8);
  assert_int_equal(c->expect.kind, SCENARIO_EXPECT_NONE);
  scenario_free(sc);

  /* Every operation may be started asynchronously. */
  sc = parse_ok("async a1 object memfd o 4K\n"
                "async a2 region add r 0 4K prio=3\nasync a3 region map r ro\n"
                "async a4 region unmap r\nasync a5 region remove r\n"
                "async a6 mapping add r 0 4K o 0\nasync a7 mapping remove r 0 4K\n"
                "async a8 mapping replace r 0 4K o 0\nasync a9 mapper add m lazy\n"
                "async b1 mapper remove m\nasync b2 partition add p soft\n"
                "async b3 partition remove p\nasync b4 read m 0 1\nasync b5 write m 0 00\n"
                "async b6 guest p read 0 1\nasync b7 guest p write 0 00\n"
                "async b8 lock m 0 4K as L\nasync b9 unlock L\n"
                "async c1 txn begin\nasync c2 txn commit\n");
  assert_int_equal(sc->ncmds, 20);
  for (size_t i = 0; i < sc->ncmds; i++) {
    assert_int_equal(sc->cmds[i].kind, SCENARIO_ASYNC);
    assert_true(scenario_cmd_is_operation(sc->cmds[i].async.inner->kind));
  }
  scenario_free(sc);

  parse_err("async a read m 0 1 => 00\n", "async: the result of read is checked by its await");
  parse_err("async a region unmap r => ok\n",
            "async: the result of region unmap is checked by its await");
  parse_err("async a\n", "async: missing the COMMAND to start");
  parse_err("async a => ok\n", "async: missing the COMMAND to start");
  parse_err("async a async b region unmap r\n",
            "async: 'async' is not an operation that can be started");
  parse_err("async a await b\n", "async: 'await' is not an operation");
  parse_err("async a expect region r active\n", "async: 'expect' is not an operation");
  parse_err("async a config overlap=any\n", "async: 'config' is not an operation");
  parse_err("async a frobnicate\n", "unknown command 'frobnicate'");
  parse_err("async a region unmap r\nasync a region map r\n",
            "async: label 'a' is still in use (since line 1, not awaited yet)");
  /* A label that is not live is error:notfound at run time (spec "Lexical rules"): its
   * command has no async (SCENARIO_NO_LABEL), and takes no BYTES. */
  sc = parse_ok("await a\nasync a region unmap r\nawait a\nawait a => error:notfound\n"
                "expect pending a\nasync a read m 0 1\nawait b => error:notfound\n");
  assert_int_equal(sc->cmds[0].label.async_index, SCENARIO_NO_LABEL);
  assert_int_equal(sc->cmds[2].label.async_index, 1);
  assert_int_equal(sc->cmds[3].label.async_index, SCENARIO_NO_LABEL);
  assert_int_equal(sc->cmds[3].expect.error, SCENARIO_ERR_NOTFOUND);
  assert_int_equal(sc->cmds[4].kind, SCENARIO_EXPECT_PENDING);
  assert_int_equal(sc->cmds[4].label.async_index, SCENARIO_NO_LABEL);
  scenario_free(sc);
  parse_err("await nosuch => 00\n", "await: '=> BYTES' is only allowed after a read");
  parse_err("async a region unmap r\nexpect pending a => ok\n",
            "expect pending takes no '=> RESULT'");
  parse_err("async a region unmap r\nawait a => 00\n",
            "await: '=> BYTES' is only allowed after a read");
  parse_err("async a read m 0 4\nawait a => 00\n",
            "await: BYTES is 1 bytes long, the read's LEN is 4");
  parse_err("async a guest p read 0 2\nawait a => 0000 00\n", "await: BYTES is 3 bytes long");
  parse_err("async a region unmap r\nawait a ok\n", "await: unexpected 'ok'");
}

static void test_expect(void **state) {
  (void)state;
  static const struct {
    const char *word;
    scenario_region_state state;
  } states[] = {{"active", SCENARIO_STATE_ACTIVE},
                {"hidden", SCENARIO_STATE_HIDDEN},
                {"unmapped", SCENARIO_STATE_UNMAPPED},
                {"partial", SCENARIO_STATE_PARTIAL}};
  for (size_t i = 0; i < 4; i++) {
    char text[64];
    snprintf(text, sizeof text, "expect region r %s\n", states[i].word);
    const scenario_cmd *c = last_cmd(text);
    assert_int_equal(c->kind, SCENARIO_EXPECT_REGION);
    assert_string_equal(c->expect_region.name, "r");
    assert_int_equal(c->expect_region.state, states[i].state);
  }

  const scenario_cmd *c = last_cmd("expect partition p none\n");
  assert_int_equal(c->kind, SCENARIO_EXPECT_PARTITION);
  assert_string_equal(c->expect_ranges.name, "p");
  assert_int_equal(c->expect_ranges.ranges.n, 0);
  assert_null(c->expect_ranges.ranges.items);

  c = last_cmd("expect mapper m 0+4K:rw 0x2000+8K:ro 16K+4K:rw 20K+4K:rw 0x100000000+1G:ro\n");
  assert_int_equal(c->kind, SCENARIO_EXPECT_MAPPER);
  const scenario_ranges *r = &c->expect_ranges.ranges;
  assert_int_equal(r->n, 4); /* the two adjacent rw items at 16K and 20K merge */
  assert_int_equal(r->items[0].gpa, 0);
  assert_int_equal(r->items[0].size, 4096);
  assert_false(r->items[0].ro);
  assert_int_equal(r->items[1].gpa, 0x2000);
  assert_int_equal(r->items[1].size, 8192);
  assert_true(r->items[1].ro);
  assert_int_equal(r->items[2].gpa, 16384);
  assert_int_equal(r->items[2].size, 8192);
  assert_false(r->items[2].ro);
  assert_int_equal(r->items[3].gpa, UINT64_C(1) << 32);
  assert_int_equal(r->items[3].size, 1 << 30);
  assert_true(r->items[3].ro);
  /* Adjacent items with different access stay apart. */
  c = last_cmd("expect mapper m 0+4K:rw 4K+4K:ro\n");
  assert_int_equal(c->expect_ranges.ranges.n, 2);
  /* Byte-granular items are accepted (they just never match what the library maps). */
  c = last_cmd("expect mapper m 0x10+0x20:rw\n");
  assert_int_equal(c->expect_ranges.ranges.items[0].size, 0x20);

  parse_err("expect region r gone\n",
            "expect region: expected active, hidden, unmapped or partial, got 'gone'");
  parse_err("expect region r\n", "expect region: missing active, hidden, unmapped or partial");
  parse_err("expect region r active hidden\n", "expect region: unexpected 'hidden'");
  parse_err("expect partition p\n", "expect partition: missing RANGES");
  parse_err("expect partition p none 0+4K:rw\n",
            "expect partition: 'none' must stand alone in RANGES");
  parse_err("expect partition p 0+4K:rw none\n", "expect partition: malformed range 'none'");
  parse_err("expect partition p 0+4K\n", "expect partition: malformed range '0+4K'");
  parse_err("expect partition p 0:rw\n", "expect partition: malformed range '0:rw'");
  parse_err("expect partition p 0+4K:rx\n",
            "expect partition: range '0+4K:rx' must end in :rw or :ro");
  parse_err("expect partition p 0+4K:RW\n", "must end in :rw or :ro");
  parse_err("expect partition p x+4K:rw\n", "expect partition: range GPA 'x' is not a number");
  parse_err("expect partition p 0+:rw\n", "expect partition: range SIZE '' is not a number");
  parse_err("expect partition p 0+0x10000000000000000:rw\n",
            "range SIZE '0x10000000000000000' does not fit in 64 bits");
  parse_err("expect partition p 0+0:rw\n", "expect partition: range '0+0:rw' is empty");
  parse_err("expect partition p 0xfffffffffffff000+8K:rw\n",
            "range '0xfffffffffffff000+8K:rw' goes past 2^64");
  parse_err("expect mapper m 8K+4K:rw 0+4K:rw\n",
            "expect mapper: range '0+4K:rw' starts below the end of the one before");
  parse_err("expect mapper m 0+8K:rw 4K+8K:ro\n", "range '4K+8K:ro' starts below the end");
  parse_err("expect mapper m 0+4K:rw 0+4K:rw\n", "starts below the end");
  parse_err("expect frobs m none\n",
            "expect: expected pending, region, partition, mapper or protection, got 'frobs'");
}

/* ---- virtual trust levels ------------------------------------------------------------------- */

/* config vtls= and vtl0_alias=, and the vtl=N options of region, mapper and partition adds. */
static void test_vtl_syntax(void **state) {
  (void)state;
  scenario *sc = parse_ok("config max_addr=4G\nconfig vtls=0,1,2\nconfig vtl0_alias=4G\n");
  assert_int_equal(sc->vtls, 7);
  assert_int_equal(sc->vtl0_alias, UINT64_C(4) << 30);
  assert_int_equal(sc->cmds[1].config.key, SCENARIO_CONFIG_VTLS);
  assert_int_equal(sc->cmds[1].config.vtls, 7);
  assert_true(sc->cmds[1].config.vtls_ascending);
  assert_int_equal(sc->cmds[2].config.key, SCENARIO_CONFIG_VTL0_ALIAS);
  scenario_free(sc);
  sc = parse_ok("object memfd o 4K\n"); /* the defaults: VTL 0 alone, no alias */
  assert_int_equal(sc->vtls, SCENARIO_DEFAULT_VTLS);
  assert_int_equal(sc->vtl0_alias, 0);
  scenario_free(sc);
  sc = parse_ok("config vtls=0,2\n");
  assert_int_equal(sc->vtls, 5);
  scenario_free(sc);

  const scenario_cmd *c = last_cmd("region add r 0 4K vtl=2 prio=3\n");
  assert_int_equal(c->region.vtl, 2);
  assert_int_equal(c->region.prio, 3);
  assert_int_equal(last_cmd("region add r 0 4K\n")->region.vtl, 0);
  c = last_cmd("mapper add m lazy vtl=1\n");
  assert_int_equal(c->mapper.mode, SCENARIO_MAPPER_LAZY);
  assert_int_equal(c->mapper.vtl, 1);
  c = last_cmd("partition add p kvm vtl=2 => error:invalid\n");
  assert_int_equal(c->partition.backend, SCENARIO_PARTITION_KVM);
  assert_int_equal(c->partition.vtl, 2);
  assert_int_equal(c->expect.error, SCENARIO_ERR_INVALID);
  /* A VTL the configuration does not have is the run's business (error:invalid). */
  assert_int_equal(last_cmd("region add r 0 4K vtl=1 => error:invalid\n")->region.vtl, 1);
  assert_int_equal(last_cmd("async a mapper add m eager vtl=2\n")->async.inner->mapper.vtl, 2);

  parse_err("config vtls=0,3\n", "config: vtls item '3' is not a VTL (0, 1 or 2)");
  parse_err("config vtls=0,,2\n", "config: vtls '0,,2' has an empty item");
  parse_err("config vtls=0,\n", "config: vtls '0,' has an empty item");
  parse_err("config vtls=\n", "config: vtls '' has an empty item");
  parse_err("config vtls=0;1\n", "config: vtls item '0;1' is not a number");
  parse_err("config vtl0_alias=x\n", "config: vtl0_alias 'x' is not a number");
  parse_err("region add r 0 4K vtl=3\n", "region add: vtl '3' is not a VTL (0, 1 or 2)");
  parse_err("region add r 0 4K vtl=0 vtl=1\n", "region add: option 'vtl=1' given twice");
  parse_err("region add r 0 4K vtl\n", "region add: unexpected 'vtl'");
  parse_err("mapper add m eager vtl=x\n", "mapper add: vtl 'x' is not a number");
  parse_err("mapper add m eager prio=1\n", "mapper add: unexpected 'prio=1' (expected vtl=N)");
  parse_err("mapper add m eager vtl=1 vtl=1\n", "mapper add: option 'vtl=1' given twice");
  parse_err("mapper remove m vtl=1\n", "mapper remove: unexpected 'vtl=1'");
  parse_err("partition add p soft vtl=9\n", "partition add: vtl '9' is not a VTL");
  parse_err("partition remove p vtl=0\n", "partition remove: unexpected 'vtl=0'");
}

/* The config lines are checked together (exit 2): vtls ascending with VTL 0, an alias only
 * with VTL 2, a multiple of 4 KiB at or above max_addr; the violation names its line. */
static void test_vtl_config_checks(void **state) {
  (void)state;
  /* The alias may come before vtls and max_addr: the check waits for the last config line. */
  scenario *sc = parse_ok("config vtl0_alias=1G\nconfig vtls=0,2\nconfig max_addr=1G\n"
                          "region add r 0 4K\n");
  assert_int_equal(sc->vtl0_alias, UINT64_C(1) << 30);
  scenario_free(sc);
  sc = parse_ok("config vtls=0,1\nconfig vtls=0\n"); /* the last one counts */
  assert_int_equal(sc->vtls, 1);
  scenario_free(sc);

  parse_err_at("config vtls=1,2\nobject memfd o 4K\n", 1, "config: vtls must include VTL 0");
  parse_err_at("config vtls=2,0\nobject memfd o 4K\n", 1,
               "config: vtls must be listed in ascending order");
  parse_err_at("config vtls=0,0,2\n", 1, "config: vtls must be listed in ascending order");
  parse_err_at("config max_addr=1G\nconfig vtl0_alias=1G\nregion add r 0 4K\n", 2,
               "config: vtl0_alias needs VTL 2");
  parse_err_at("config vtls=0,1\nconfig vtl0_alias=64G\n", 2, "config: vtl0_alias needs VTL 2");
  parse_err_at("config vtls=0,2\nconfig vtl0_alias=0x1000000800\n", 2,
               "config: vtl0_alias 0x1000000800 is not a multiple of 4 KiB");
  parse_err_at("config vtls=0,2\nconfig vtl0_alias=32G\n", 2,
               "config: vtl0_alias 0x800000000 is below max_addr 0x1000000000");
  parse_err_at("config vtl0_alias=1G\nconfig vtls=0,2\nconfig max_addr=2G\n", 1,
               "is below max_addr 0x80000000");
  parse_err_at("config vtls=0,2\nconfig vtl0_alias=0\n", 2, "config: vtl0_alias 0x0 is below");
}

/* protect VTL GPA SIZE none|ro|rw, expect protection VTL RANGES, error:protected. */
static void test_vtl_protect(void **state) {
  (void)state;
  const scenario_cmd *c = last_cmd("protect 0 0x2000 8K ro\n");
  assert_int_equal(c->kind, SCENARIO_PROTECT);
  assert_int_equal(c->protect.vtl, 0);
  assert_int_equal(c->protect.gpa, 0x2000);
  assert_int_equal(c->protect.size, 8192);
  assert_int_equal(c->protect.access, SCENARIO_PROT_RO);
  assert_int_equal(last_cmd("protect 1 0 4K none\n")->protect.access, SCENARIO_PROT_NONE);
  assert_int_equal(last_cmd("protect 0 0 4K rw\n")->protect.access, SCENARIO_PROT_RW);
  /* VTL 2, or one not configured, and unaligned ranges: results, not errors of the script. */
  c = last_cmd("protect 2 0x801 1 ro => error:invalid\n");
  assert_int_equal(c->protect.vtl, 2);
  assert_int_equal(c->protect.size, 1);
  c = last_cmd("async a protect 0 0 4K none\nawait a => error:protected\n");
  assert_int_equal(c->expect.error, SCENARIO_ERR_PROTECTED);
  c = last_cmd("txn begin\nprotect 0 0 4K ro => ok\ntxn commit\n");
  assert_int_equal(last_sc->cmds[1].kind, SCENARIO_PROTECT);
  c = last_cmd("write m 0 00 => error:protected\n");
  assert_int_equal(c->expect.error, SCENARIO_ERR_PROTECTED);
  assert_string_equal(scenario_error_name(SCENARIO_ERR_PROTECTED), "protected");

  c = last_cmd("config vtls=0,1,2\nexpect protection 1 0+4K:none 4K+4K:none 8K+4K:ro\n");
  assert_int_equal(c->kind, SCENARIO_EXPECT_PROTECTION);
  assert_int_equal(c->expect_protection.vtl, 1);
  const scenario_ranges *r = &c->expect_protection.ranges;
  assert_int_equal(r->n, 2); /* adjacent items of one access merge */
  assert_true(r->items[0].none);
  assert_false(r->items[0].ro);
  assert_int_equal(r->items[0].size, 8192);
  assert_true(r->items[1].ro);
  assert_false(r->items[1].none);
  c = last_cmd("config vtls=0,1\nexpect protection 0 none\n");
  assert_int_equal(c->expect_protection.ranges.n, 0);

  parse_err("protect\n", "protect: missing VTL");
  parse_err("protect 0 0 4K\n", "protect: missing none, ro or rw");
  parse_err("protect 0 0 4K wo\n", "protect: expected none, ro or rw, got 'wo'");
  parse_err("protect 3 0 4K ro\n", "protect: VTL '3' is not a VTL (0, 1 or 2)");
  parse_err("protect 0 0 4K ro rw\n", "protect: unexpected 'rw'");
  parse_err("protect 0 0 4K ro => 00\n", "'=> BYTES' is only allowed after a read");
  /* expect protection of a VTL that cannot be protected: an error of the script. */
  parse_err("expect protection 0 none\n", "expect protection: VTL 0 cannot be protected");
  parse_err("config vtls=0,2\nexpect protection 2 none\n", "VTL 2 cannot be protected");
  parse_err("config vtls=0,1\nexpect protection 1 none\n", "VTL 1 cannot be protected");
  parse_err("config vtls=0,2\nexpect protection 1 none\n", "VTL 1 cannot be protected");
  parse_err("config vtls=0,2\nexpect protection 3 none\n", "VTL '3' is not a VTL");
  parse_err("config vtls=0,2\nexpect protection 0 0+4K:rw\n",
            "expect protection: range '0+4K:rw' must end in :ro or :none");
  parse_err("config vtls=0,2\nexpect protection 0 0+4K\n",
            "malformed range '0+4K' (expected GPA+SIZE:ro or GPA+SIZE:none)");
  parse_err("config vtls=0,2\nexpect protection 0\n", "expect protection: missing RANGES");
  parse_err("config vtls=0,2\nexpect protection 0 0+4K:none => ok\n",
            "expect protection takes no '=> RESULT'");
  parse_err("config vtls=0,2\nasync a expect protection 0 none\n",
            "async: 'expect' is not an operation");
  parse_err("expect mapper m 0+4K:none\n", "range '0+4K:none' must end in :rw or :ro");
  parse_err("expect partition p 0+4K:none\n", "must end in :rw or :ro");
}

/* ---- names and their liveness --------------------------------------------------------------- */

static void test_live_names(void **state) {
  (void)state;
  parse_err("region add r 0 4K\nregion add r 4K 4K\n",
            "region add: region name 'r' is still in use (since line 1)");
  parse_err("object memfd o 4K\nobject file o 8K\n",
            "object: object name 'o' is still in use (since line 1)");
  parse_err("mapper add m eager\nmapper add m lazy\n",
            "mapper add: mapper name 'm' is still in use");
  parse_err("partition add p soft\npartition add p soft\n",
            "partition add: partition name 'p' is still in use");
  parse_err("lock m 0 4K as L\nlock m 4K 4K as L\n",
            "lock: lock name 'L' is still in use (since line 1)");

  /* Re-adding after a remove is fine; each name space is separate. */
  scenario *sc = parse_ok("region add r 0 4K\nregion remove r\nregion add r 0 4K\n"
                          "mapper add m eager\nmapper remove m => ok\nmapper add m lazy\n"
                          "partition add p soft\npartition remove p\npartition add p kvm\n"
                          "lock m 0 4K as L\nunlock L\nlock m 0 4K as L\n"
                          "object memfd x 4K\nregion add x 0 4K\nmapper add x eager\n"
                          "partition add x soft\nlock x 0 4K as x\nasync x region unmap x\n");
  scenario_free(sc);

  /* An add expected to fail creates nothing; a remove expected to fail deletes nothing. */
  sc = parse_ok("region add r 0 4K => error:overlap\nregion add r 0 4K\n"
                "object memfd o 0 => error:invalid\nobject memfd o 4K\n"
                "mapper add m eager => error:unsupported\nmapper add m eager\n");
  scenario_free(sc);
  parse_err("region add r 0 4K\nregion remove r => error:notfound\nregion add r 0 4K\n",
            "region name 'r' is still in use (since line 1)");
  /* Reusing a live name is an error even where the add is expected to fail. */
  parse_err("region add r 0 4K\nregion add r 0 4K => error:overlap\n",
            "region name 'r' is still in use");
  /* Objects live to the end of the file. */
  parse_err("object memfd o 4K\nregion remove o\nobject memfd o 4K\n",
            "object name 'o' is still in use");

  /* Names used before being defined are the run's business (error:notfound). */
  sc = parse_ok("region map nothing => error:notfound\nmapping add r 0 4K o 0 => error:notfound\n"
                "read m 0 1 => error:notfound\nregion remove gone => error:notfound\n"
                "mapper remove m => error:notfound\npartition remove p\n"
                "expect region nothing unmapped\nexpect mapper nomapper none\n");
  scenario_free(sc);

  /* async: an add reserves its name at once, and releases it when its await expects an error;
   * a remove takes effect at its await. */
  parse_err("async a region add r 0 4K\nregion add r 0 4K\n",
            "region name 'r' is still in use (since line 1)");
  sc = parse_ok("async a region add r 0 4K\nawait a => error:overlap\nregion add r 0 4K\n");
  scenario_free(sc);
  parse_err("async a region add r 0 4K\nawait a\nregion add r 0 4K\n",
            "region name 'r' is still in use");
  parse_err("region add r 0 4K\nasync a region remove r\nregion add r 0 4K\n",
            "region name 'r' is still in use");
  sc = parse_ok("region add r 0 4K\nasync a region remove r\nawait a\nregion add r 0 4K\n");
  scenario_free(sc);
  parse_err(
      "region add r 0 4K\nasync a region remove r\nawait a => error:notfound\nregion add r 0 4K\n",
      "region name 'r' is still in use");
  /* The failed await releases only the reservation its own async made. */
  sc = parse_ok("async a region add r 0 4K\nasync b region remove r\nawait b\nregion add r 0 4K\n"
                "await a => error:overlap\nregion remove r\n");
  scenario_free(sc);
  parse_err("async a region add r 0 4K\nasync b region remove r\nawait b\nregion add r 0 4K\n"
            "await a => error:overlap\nregion add r 0 4K\n",
            "t.mbs:6: region add: region name 'r' is still in use (since line 4)");
  /* An async lock reserves its name at once; an async unlock releases it at its await. */
  parse_err("async a lock m 0 4K as L\nlock m 0 4K as L\n",
            "lock: lock name 'L' is still in use (since line 1)");
  sc = parse_ok("async a lock m 0 4K as L\nawait a => error:unmapped\nlock m 0 4K as L\n");
  scenario_free(sc);
  parse_err("lock m 0 4K as L\nasync a unlock L\nlock m 0 4K as L\n",
            "lock name 'L' is still in use");
  sc = parse_ok("lock m 0 4K as L\nasync a unlock L\nawait a\nlock m 0 4K as L\n"
                "async b unlock M\nawait b => error:notfound\n");
  scenario_free(sc);
  /* Labels are reusable once awaited. */
  sc = parse_ok("async a region unmap r\nawait a\nasync a region map r\nawait a\n");
  scenario_free(sc);
}

/* Transactions: their commands, and what a commit that fails does to the region names. */
static void test_txn(void **state) {
  (void)state;
  const scenario_cmd *c = last_cmd("txn begin\n");
  assert_int_equal(c->kind, SCENARIO_TXN_BEGIN);
  assert_true(scenario_cmd_is_operation(c->kind));
  c = last_cmd("txn commit => error:invalid\n");
  assert_int_equal(c->kind, SCENARIO_TXN_COMMIT);
  assert_int_equal(c->expect.error, SCENARIO_ERR_INVALID);
  assert_string_equal(scenario_cmd_name(SCENARIO_TXN_COMMIT), "txn commit");
  parse_err("txn\n", "txn: missing begin or commit");
  parse_err("txn abort\n", "txn: expected begin or commit, got 'abort'");
  parse_err("txn begin now\n", "txn begin: unexpected 'now'");
  parse_err("txn commit => 00\n", "txn commit: '=> BYTES' is only allowed after a read");

  /* A commit that succeeds keeps what the transaction did to the names. */
  scenario *sc = parse_ok("region add r 0 4K\ntxn begin\nregion remove r\nregion add s 0 4K\n"
                          "txn commit\nregion add r 0 4K\n");
  scenario_free(sc);
  parse_err("txn begin\nregion add s 0 4K\ntxn commit => ok\nregion add s 0 4K\n",
            "t.mbs:4: region add: region name 's' is still in use (since line 2)");
  /* One that fails returns them to the begin: s was never defined, r was never removed. */
  sc = parse_ok("region add r 0 4K\ntxn begin\nregion remove r\nregion add s 0 4K\n"
                "txn commit => error:resource\nregion add s 0 4K\n");
  scenario_free(sc);
  parse_err("region add r 0 4K\ntxn begin\nregion remove r\ntxn commit => error:resource\n"
            "region add r 0 4K\n",
            "t.mbs:5: region add: region name 'r' is still in use (since line 1)");
  /* A begin expected to fail opens nothing; a second begin keeps the first one's names. */
  sc = parse_ok("txn begin => error:invalid\nregion add s 0 4K\ntxn commit => error:invalid\n"
                "region remove s\nregion add s 0 4K\n");
  scenario_free(sc);
  sc = parse_ok("txn begin\nregion add s 0 4K\ntxn begin => error:invalid\nregion add t 0 4K\n"
                "txn commit => error:resource\nregion add s 0 4K\nregion add t 0 4K\n");
  scenario_free(sc);
  /* Under async a begin opens the transaction as it starts; an await that expects an error
   * ends it again. An async commit commits nothing. */
  sc = parse_ok("async b txn begin\nregion add s 0 4K\nawait b => error:invalid\n"
                "region add s 0 4K\n");
  scenario_free(sc);
  /* An async begin inside a transaction (refused) does not end it when awaited. */
  parse_err("txn begin\nregion add s 0 4K\nasync b txn begin\nawait b => error:invalid\n"
            "txn commit\nregion add s 0 4K\n",
            "t.mbs:6: region add: region name 's' is still in use (since line 2)");
  parse_err("txn begin\nregion add s 0 4K\nasync c txn commit\nawait c => error:invalid\n"
            "txn commit => error:resource\nregion add s 0 4K\nregion add s 0 4K\n",
            "t.mbs:7: region add: region name 's' is still in use (since line 6)");
  /* Consumers, locks and labels are no business of the transaction's names. */
  sc = parse_ok("txn begin\nmapper add m eager => error:invalid\nlock m 0 4K as L => error:invalid\n"
                "txn commit => error:resource\nmapper add m eager\nlock m 0 4K as L\n");
  scenario_free(sc);
}

/* ---- dirty-page tracking --------------------------------------------------------------------- */

static void test_dirty(void **state) {
  (void)state;
  const scenario_cmd *c = last_cmd("dirty start\n");
  assert_int_equal(c->kind, SCENARIO_DIRTY_START);
  assert_true(scenario_cmd_is_operation(c->kind));
  assert_int_equal(c->expect.kind, SCENARIO_EXPECT_NONE);
  c = last_cmd("dirty stop => error:invalid\n");
  assert_int_equal(c->kind, SCENARIO_DIRTY_STOP);
  assert_int_equal(c->expect.error, SCENARIO_ERR_INVALID);
  c = last_cmd("dirty sync 0x1000 64K\n");
  assert_int_equal(c->kind, SCENARIO_DIRTY_SYNC);
  assert_int_equal(c->dirty.gpa, 0x1000);
  assert_int_equal(c->dirty.size, 65536);
  assert_int_equal(c->expect.kind, SCENARIO_EXPECT_NONE);
  c = last_cmd("dirty sync 0 4K => ok\n");
  assert_int_equal(c->expect.kind, SCENARIO_EXPECT_OK);
  c = last_cmd("dirty sync 0 4K => none\n");
  assert_int_equal(c->expect.kind, SCENARIO_EXPECT_PAGES);
  assert_int_equal(c->expect.pages.n, 0);
  assert_null(c->expect.pages.items);
  /* Adjacent items merge (PAGES are normalised as RANGES are); every item is rw. */
  c = last_cmd("dirty sync 0 1M => 0+4K 4K+4K 0x10000+8K 0x12000+4K 0x20000+4K\n");
  const scenario_ranges *p = &c->expect.pages;
  assert_int_equal(p->n, 3);
  assert_int_equal(p->items[0].gpa, 0);
  assert_int_equal(p->items[0].size, 8192);
  assert_int_equal(p->items[1].gpa, 0x10000);
  assert_int_equal(p->items[1].size, 12288);
  assert_int_equal(p->items[2].gpa, 0x20000);
  for (size_t i = 0; i < p->n; i++) assert_false(p->items[i].ro);
  /* An unaligned, empty or too large range parses: the operation answers invalid. */
  c = last_cmd("dirty sync 0x801 0 => error:invalid\n");
  assert_int_equal(c->dirty.gpa, 0x801);
  assert_int_equal(c->dirty.size, 0);
  /* Inside a transaction, and under async with its await: PAGES there too. */
  scenario *sc = parse_ok("txn begin\ndirty start\ndirty sync 0 4K => none\ndirty stop\n"
                          "txn commit\n");
  scenario_free(sc);
  c = last_cmd("async a dirty sync 0 8K\nawait a => 0+8K\n");
  assert_int_equal(c->kind, SCENARIO_AWAIT);
  assert_int_equal(c->expect.kind, SCENARIO_EXPECT_PAGES);
  assert_int_equal(c->expect.pages.items[0].size, 8192);
  c = last_cmd("async a dirty start\nawait a => error:invalid\n");
  assert_int_equal(c->expect.error, SCENARIO_ERR_INVALID);

  parse_err("dirty\n", "dirty: missing start, sync or stop");
  parse_err("dirty clear\n", "dirty: expected start, sync or stop, got 'clear'");
  parse_err("dirty start 0 4K\n", "dirty start: unexpected '0'");
  parse_err("dirty stop => none\n", "dirty stop: malformed result 'none' (expected ok or");
  parse_err("dirty start => 0+4K\n", "dirty start: malformed result '0+4K'");
  parse_err("dirty sync\n", "dirty sync: missing GPA");
  parse_err("dirty sync 0\n", "dirty sync: missing SIZE");
  parse_err("dirty sync 0 => none\n", "dirty sync: missing SIZE");
  parse_err("dirty sync x 4K\n", "dirty sync: GPA 'x' is not a number");
  parse_err("dirty sync 0 4K 8K\n", "dirty sync: unexpected '8K'");
  parse_err("dirty sync 0 4K =>\n", "dirty sync: missing RESULT after '=>'");
  parse_err("dirty sync 0 4K => 0+4K:rw\n",
            "dirty sync: malformed page range '0+4K:rw' (expected GPA+SIZE)");
  parse_err("dirty sync 0 4K => 0x1000\n", "dirty sync: malformed page range '0x1000'");
  parse_err("dirty sync 0 4K => none 0+4K\n", "dirty sync: 'none' must stand alone in PAGES");
  parse_err("dirty sync 0 4K => 0+4K none\n", "dirty sync: malformed page range 'none'");
  parse_err("dirty sync 0 4K => 0+0\n", "dirty sync: range '0+0' is empty");
  parse_err("dirty sync 0 4K => 8K+4K 0+4K\n",
            "dirty sync: range '0+4K' starts below the end of the one before (PAGES are");
  parse_err("dirty sync 0 4K => 0+4K => ok\n", "dirty sync: unexpected '=>' after the result");
  parse_err("dirty sync 0 4K => 00*4\n", "dirty sync: malformed page range '00*4'");
  parse_err("dirty sync 0 4K => error:dirty\n", "dirty sync: unknown error code 'dirty'");
  parse_err("async a dirty sync 0 4K => none\n",
            "async: the result of dirty sync is checked by its await");
  parse_err("read m 0 4 => 0+4K\n", "read: malformed BYTES token '0+4K'");
  parse_err("async a read m 0 2\nawait a => 0+4K\n", "await: malformed BYTES token '0+4K'");
  parse_err("async a dirty stop\nawait a => none\n", "await: malformed result 'none'");
  parse_err("await a => none\n", "await: malformed result 'none'");
  parse_err("expect mapper m 0+4K\n", "expect mapper: malformed range '0+4K'");
}

/* ---- unknown commands, missing and extra arguments ------------------------------------------ */

static void test_unknown_and_malformed(void **state) {
  (void)state;
  parse_err_at("# comment\n\nregion add r 0 4K\nregoin add r 0 4K\n", 4,
               "unknown command 'regoin'");
  parse_err("=> ok\n", "unknown command '=>'");
  parse_err("ok\n", "unknown command 'ok'");
  parse_err("read\n", "read: missing MAPPER");
  parse_err("unlock L extra\n", "unlock: unexpected 'extra'");
  parse_err("await\n", "await: missing LABEL");
  parse_err("expect\n", "expect: missing pending, region, partition, mapper or protection");
  parse_err("mapper\n", "mapper: missing add or remove");
  parse_err("partition\n", "partition: missing add or remove");
  parse_err("mapping\n", "mapping: missing add, remove or replace");
  parse_err("object\n", "object: missing memfd or file");
  parse_err("guest\n", "guest: missing PARTITION");
  /* The message names the file and line exactly as given. */
  scenario *sc = (scenario *)1;
  char err[256];
  assert_int_not_equal(scenario_parse_string("\n\nfoo\n", "dir/x.mbs", &sc, err, sizeof err), 0);
  assert_null(sc);
  assert_string_equal(err, "dir/x.mbs:3: unknown command 'foo'");
  /* A long token is cut in the message, and a small buffer truncates it safely. */
  char text[600];
  memset(text, 'z', 500);
  text[500] = '\0';
  assert_int_not_equal(scenario_parse_string(text, "x.mbs", &sc, err, sizeof err), 0);
  assert_true(strlen(err) < 100);
  char tiny[8];
  assert_int_not_equal(scenario_parse_string("foo\n", "x.mbs", &sc, tiny, sizeof tiny), 0);
  assert_string_equal(tiny, "x.mbs:1");
  assert_int_not_equal(scenario_parse_string("foo\n", "x.mbs", &sc, NULL, 0), 0);
}

/* ---- files ---------------------------------------------------------------------------------- */

static void test_parse_file(void **state) {
  (void)state;
  char err[512];
  scenario *sc = NULL;
  char *path = write_temp(spec_example, sizeof spec_example - 1);
  assert_int_equal(scenario_parse_file(path, &sc, err, sizeof err), 0);
  assert_int_equal(sc->ncmds, 18);
  assert_string_equal(sc->name, path);
  scenario_free(sc);
  unlink(path);
  free(path);

  static const char bad[] = "mapper add m eager\n\nmapper add m lazy\n";
  path = write_temp(bad, sizeof bad - 1);
  assert_int_not_equal(scenario_parse_file(path, &sc, err, sizeof err), 0);
  assert_null(sc);
  char want[256];
  snprintf(want, sizeof want, "%s:3: mapper add: mapper name 'm' is still in use (since line 1)",
           path);
  assert_string_equal(err, want);
  unlink(path);
  free(path);

  static const char nul[] = "mapper add m eager\nmapper\0 add n eager\n";
  path = write_temp(nul, sizeof nul - 1);
  assert_int_not_equal(scenario_parse_file(path, &sc, err, sizeof err), 0);
  snprintf(want, sizeof want, "%s:2: NUL byte in the line", path);
  assert_string_equal(err, want);
  unlink(path);
  free(path);

  assert_int_not_equal(scenario_parse_file("/nonexistent/x.mbs", &sc, err, sizeof err), 0);
  assert_null(sc);
  assert_string_equal(err, "/nonexistent/x.mbs: cannot open: No such file or directory");
  scenario_stream *s = (scenario_stream *)1;
  assert_int_not_equal(scenario_stream_open("/nonexistent/x.mbs", &s, err, sizeof err), 0);
  assert_null(s);
  assert_string_equal(err, "/nonexistent/x.mbs: cannot open: No such file or directory");
}

/* A stream holds one line and the live names, not the file: the commands it handed out are
 * the caller's, and an async's await is matched by the async's index in the file. */
static void test_stream(void **state) {
  (void)state;
  static const char text[] = "config max_addr=1G\n# a comment\n\nmapper add m eager\n"
                             "async a read m 0 2\nasync b mapper remove m\nawait b\n"
                             "read m 0 1\nawait a => 0102";
  char *path = write_temp(text, sizeof text - 1);
  char err[512];
  scenario_stream *s = NULL;
  assert_int_equal(scenario_stream_open(path, &s, err, sizeof err), 0);
  assert_string_equal(scenario_stream_info(s)->name, path);
  scenario_cmd *c[7];
  for (int i = 0; i < 7; i++) assert_int_equal(scenario_stream_next(s, &c[i]), 1);
  assert_int_equal(scenario_stream_info(s)->max_addr, UINT64_C(1) << 30);
  assert_int_equal(scenario_stream_info(s)->ncmds, 7);
  assert_int_equal(c[1]->line, 4);
  assert_int_equal(c[2]->kind, SCENARIO_ASYNC);
  assert_int_equal(c[4]->label.async_index, 3); /* await b: the async of line 6 */
  assert_int_equal(c[6]->label.async_index, 2);
  assert_int_equal(c[6]->line, 9);
  assert_int_equal(c[6]->expect.bytes.len, 2);
  scenario_cmd *end = (scenario_cmd *)1;
  assert_int_equal(scenario_stream_next(s, &end), 0);
  assert_null(end);
  scenario_stream_close(s);
  for (int i = 0; i < 7; i++) scenario_cmd_free(c[i]); /* after the stream: they are ours */
  scenario_cmd_free(NULL);
  scenario_stream_close(NULL);
  unlink(path);
  free(path);
}

/* Every .mbs of a directory parses and round-trips; the number of them. */
static int scenario_dir_files(const char *dir, bool *found_example) {
  DIR *d = opendir(dir);
  if (!d) fail_msg("cannot open %s", dir);
  int n = 0;
  for (struct dirent *e; (e = readdir(d));) {
    size_t len = strlen(e->d_name);
    if (len < 4 || strcmp(e->d_name + len - 4, ".mbs") != 0) continue;
    char path[4096], err[512];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    scenario *sc = NULL;
    if (scenario_parse_file(path, &sc, err, sizeof err) != 0) fail_msg("%s", err);
    stream_agrees(path, sc, NULL);
    char *printed = print_program(sc);
    scenario *again = parse_ok(printed);
    assert_same_program(sc, again);
    if (strcmp(e->d_name, "example.mbs") == 0) {
      *found_example = true;
      scenario *spec = parse_ok(spec_example);
      assert_same_program(sc, spec);
      scenario_free(spec);
    }
    free(printed);
    scenario_free(again);
    scenario_free(sc);
    n++;
  }
  closedir(d);
  return n;
}

/* Every scenario in tests/scenarios/ and tests/scenarios/vtl/ parses, and round-trips through
 * the printer. */
static void test_scenario_files(void **state) {
  (void)state;
  const char *dir = getenv("SCENARIO_DIR");
  if (!dir) skip();
  bool found_example = false;
  char vtl[4096];
  snprintf(vtl, sizeof vtl, "%s/vtl", dir);
  assert_true(scenario_dir_files(dir, &found_example) >= 3);
  assert_true(found_example);
  assert_true(scenario_dir_files(vtl, &found_example) >= 10);
}

/* ---- printing ------------------------------------------------------------------------------- */

static void assert_bytes_format(const uint8_t *data, size_t len, const char *want) {
  char buf[256];
  size_t n = scenario_format_bytes(buf, sizeof buf, data, len);
  assert_string_equal(buf, want);
  assert_int_equal(n, strlen(want));
}

static void test_format_bytes(void **state) {
  (void)state;
  uint8_t d[8192] = {0};
  assert_bytes_format(d, 0, "00*0");
  assert_bytes_format((const uint8_t *)"\xde\xad\xbe\xef", 4, "deadbeef");
  memset(d, 0x11, 7);
  assert_bytes_format(d, 7, "11111111111111");
  memset(d, 0x11, 8);
  assert_bytes_format(d, 8, "11*8");
  memset(d, 0, 4096);
  assert_bytes_format(d, 4096, "00*4K");
  memset(d, 0xab, 3000);
  assert_bytes_format(d, 3000, "ab*3000");
  /* Runs inside data: hex, run, hex, run. */
  memcpy(d, "\x01\x02", 2);
  memset(d + 2, 0xff, 10);
  memcpy(d + 12, "\x03\x03\x03", 3);
  memset(d + 15, 0, 1024);
  assert_bytes_format(d, 15 + 1024, "0102 ff*10 030303 00*1K");
  /* A short run between long ones stays hex, next to its neighbours. */
  memset(d, 0xaa, 9);
  memset(d + 9, 0xbb, 7);
  d[16] = 0xcc;
  memset(d + 17, 0xdd, 8);
  assert_bytes_format(d, 25, "aa*9 bbbbbbbbbbbbbbcc dd*8");

  /* snprintf semantics */
  char small[5];
  assert_int_equal(scenario_format_bytes(small, sizeof small, (const uint8_t *)"\x12\x34\x56", 3),
                   6);
  assert_string_equal(small, "1234");
  assert_int_equal(scenario_format_bytes(NULL, 0, (const uint8_t *)"\x12", 1), 2);
  /* Long hex output (more than any internal chunk) is complete. */
  for (size_t i = 0; i < 1000; i++) d[i] = (uint8_t)(i * 7 + i / 3);
  char *big = malloc(4096);
  size_t n = scenario_format_bytes(big, 4096, d, 1000);
  assert_int_equal(n, strlen(big));
  scenario *sc = NULL;
  char *text = malloc(n + 64), err[256];
  snprintf(text, n + 64, "write m 0 %s\n", big);
  assert_int_equal(scenario_parse_string(text, "t.mbs", &sc, err, sizeof err), 0);
  assert_int_equal(sc->cmds[0].io.data.len, 1000);
  assert_memory_equal(sc->cmds[0].io.data.data, d, 1000);
  scenario_free(sc);
  free(text);
  free(big);

  char *out = NULL;
  size_t outlen = 0;
  FILE *f = open_memstream(&out, &outlen);
  scenario_print_bytes(f, (const uint8_t *)"\0\0\0\0\0\0\0\0\x01", 9);
  fclose(f);
  assert_string_equal(out, "00*8 01");
  free(out);
}

static void test_print_canonical(void **state) {
  (void)state;
  assert_printed(last_cmd("config   max_addr=0x1000000000\n"), "config max_addr=64G");
  assert_printed(last_cmd("config max_addr=0x3000\n"), "config max_addr=12K");
  assert_printed(last_cmd("config overlap=any\n"), "config overlap=any");
  assert_printed(last_cmd("require kvm\n"), "require kvm");
  assert_printed(last_cmd("object memfd ram 16777216 fill=0x11\n"),
                 "object memfd ram 16M fill=0x11");
  assert_printed(last_cmd("object file f 4K fill=0x00\n"), "object file f 4K");
  assert_printed(last_cmd("object file f 4K fill=pages:0x00\n"),
                 "object file f 4K fill=pages:0x00");
  assert_printed(last_cmd("region add rom 983040 0x10000 type=device prio=0\n"),
                 "region add rom 0xf0000 64K type=device");
  assert_printed(last_cmd("region add r 0 3G prio=7 type=ram\n"), "region add r 0 3G prio=7");
  assert_printed(last_cmd("region map r rw\n"), "region map r");
  assert_printed(last_cmd("region map r ro\n"), "region map r ro");
  assert_printed(last_cmd("mapping add rom 0 64K rom 0 ro\n"), "mapping add rom 0 64K rom 0 ro");
  assert_printed(last_cmd("mapping replace r 4K 12K o 8K rw => error:resource\n"),
                 "mapping replace r 0x1000 12K o 0x2000 => error:resource");
  assert_printed(last_cmd("mapping add r 0x801 0x801 o 1\n"), "mapping add r 0x801 2049 o 0x1");
  assert_printed(last_cmd("txn begin => ok\n"), "txn begin => ok");
  assert_printed(last_cmd("txn commit\n"), "txn commit");
  assert_printed(last_cmd("async t txn begin\n"), "async t txn begin");
  assert_printed(last_cmd("await nosuch => error:notfound\n"), "await nosuch => error:notfound");
  assert_printed(last_cmd("mapping remove r 0x3000 4K\n"), "mapping remove r 0x3000 4K");
  assert_printed(last_cmd("read m0 0xf0000 4 => 11111111\n"), "read m0 0xf0000 4 => 11111111");
  assert_printed(last_cmd("read m0 0 4096 => 00*4096\n"), "read m0 0 4K => 00*4K");
  assert_printed(last_cmd("write m0 0xF0000 00 => error:readonly\n"),
                 "write m0 0xf0000 00 => error:readonly");
  assert_printed(last_cmd("guest p0 read 0x1000 1 => ok\n"), "guest p0 read 0x1000 1 => ok");
  assert_printed(last_cmd("guest p0 write 1 00*16\n"), "guest p0 write 0x1 00*16");
  assert_printed(last_cmd("lock m 0 4K rw as L\n"), "lock m 0 4K as L");
  assert_printed(last_cmd("lock m 0 4K ro as L => error:readonly\n"),
                 "lock m 0 4K ro as L => error:readonly");
  assert_printed(last_cmd("lock m 0 4K as L\nunlock L\n"), "unlock L");
  assert_printed(last_cmd("async a1 mapping add r 0 4K o 0 ro\n"),
                 "async a1 mapping add r 0 4K o 0 ro");
  assert_printed(last_cmd("async a read m 0 2\nawait a => 0102\n"), "await a => 0102");
  assert_printed(last_cmd("async a read m 0 2\nexpect pending a\n"), "expect pending a");
  assert_printed(last_cmd("expect region r partial\n"), "expect region r partial");
  assert_printed(last_cmd("expect partition p0 0+8K:rw 8K+8K:rw 0x4000+4K:ro\n"),
                 "expect partition p0 0+16K:rw 0x4000+4K:ro");
  assert_printed(last_cmd("expect mapper m none\n"), "expect mapper m none");
  assert_printed(last_cmd("mapper add m lazy\n"), "mapper add m lazy");
  assert_printed(last_cmd("mapper remove m\n"), "mapper remove m");
  assert_printed(last_cmd("partition add p kvm\n"), "partition add p kvm");
  assert_printed(last_cmd("partition remove p => error:notfound\n"),
                 "partition remove p => error:notfound");
  assert_printed(last_cmd("dirty start => ok\n"), "dirty start => ok");
  assert_printed(last_cmd("dirty stop\n"), "dirty stop");
  assert_printed(last_cmd("dirty sync 0 0x100000\n"), "dirty sync 0 1M");
  assert_printed(last_cmd("dirty sync 4096 12K => 4096+4K 8K+4K\n"),
                 "dirty sync 0x1000 12K => 0x1000+8K");
  assert_printed(last_cmd("dirty sync 0x801 0 => error:invalid\n"),
                 "dirty sync 0x801 0 => error:invalid");
  assert_printed(last_cmd("dirty sync 0 64G => none\n"), "dirty sync 0 64G => none");
  assert_printed(last_cmd("async d dirty sync 0 8K\nawait d => 0+4K 0x100000+1M\n"),
                 "await d => 0+4K 0x100000+1M");
  assert_printed(last_cmd("config vtls=0,2\n"), "config vtls=0,2");
  assert_printed(last_cmd("config vtls=0\n"), "config vtls=0");
  assert_printed(last_cmd("config vtls=0,1,2\nconfig vtl0_alias=0x1000000000\n"),
                 "config vtl0_alias=0x1000000000");
  assert_printed(last_cmd("region add r 0 4K vtl=0\n"), "region add r 0 4K");
  assert_printed(last_cmd("region add r 0 4K vtl=2 type=device prio=1\n"),
                 "region add r 0 4K prio=1 type=device vtl=2");
  assert_printed(last_cmd("mapper add m eager vtl=1\n"), "mapper add m eager vtl=1");
  assert_printed(last_cmd("partition add p soft vtl=0\n"), "partition add p soft");
  assert_printed(last_cmd("partition add p kvm vtl=2\n"), "partition add p kvm vtl=2");
  assert_printed(last_cmd("protect 0 8192 0x1000 none => ok\n"), "protect 0 0x2000 4K none => ok");
  assert_printed(last_cmd("protect 1 0 1M rw\n"), "protect 1 0 1M rw");
  assert_printed(last_cmd("config vtls=0,1\nexpect protection 0 4K+4K:ro 8K+4K:ro 12K+4K:none\n"),
                 "expect protection 0 0x1000+8K:ro 0x3000+4K:none");
  assert_printed(last_cmd("config vtls=0,1\nexpect protection 0 none\n"),
                 "expect protection 0 none");
  assert_printed(last_cmd("read m 0 1 => error:protected\n"), "read m 0 1 => error:protected");

  scenario_expect e = {.kind = SCENARIO_EXPECT_ERROR, .error = SCENARIO_ERR_FAULT};
  char *out = NULL;
  size_t outlen = 0;
  FILE *f = open_memstream(&out, &outlen);
  scenario_print_expect(f, &e);
  fclose(f);
  assert_string_equal(out, "error:fault");
  free(out);
  assert_string_equal(scenario_cmd_name(SCENARIO_GUEST_READ), "guest read");
  assert_string_equal(scenario_cmd_name(SCENARIO_CMD_KIND_COUNT), "?");
}

static void test_round_trip(void **state) {
  (void)state;
  assert_round_trip(spec_example);
  assert_round_trip("config max_addr=1T\nconfig overlap=any\nrequire kvm\n"
                    "object memfd a 64K fill=pages:0x7f\nobject file b 1M fill=0x00\n"
                    "object file c 8K fill=0x80 => ok\n"
                    "region add r0 0 1G prio=9 type=device => ok\nregion add r1 1G 4K\n"
                    "region map r0 ro\nregion map r1 rw => error:notfound\nregion unmap r0\n"
                    "region remove r0 => error:notfound\n"
                    "mapping add r1 0 4K a 0 ro\nmapping replace r1 0 4K b 0x1000\n"
                    "mapping remove r1 0 4K => ok\n"
                    "mapper add m0 eager\nmapper add m1 lazy => ok\npartition add p0 soft\n"
                    "partition add p1 kvm => error:unsupported\n"
                    "read m0 0x123 5 => 0102030405\nread m1 0 9000 => 00*8K 11*808\n"
                    "read m0 1 1 => error:unmapped\nread m0 1 1\n"
                    "write m0 0x10 deadbeef 00*100 ff => ok\nwrite m1 7 00*0\n"
                    "guest p0 read 0x1000 16 => 00*16\nguest p0 write 0x2000 abcd => error:fault\n"
                    "lock m0 0 8K ro as L1 => ok\nlock m1 0x4000 4K as L2\nunlock L1\n"
                    "async a1 unlock L2\nexpect pending a1\nawait a1 => ok\n"
                    "async a2 guest p0 read 0 3\nawait a2 => 00aa00\n"
                    "async a3 mapping replace r1 0 4K a 0 ro\nawait a3 => error:unsupported\n"
                    "expect region r1 active\nexpect region r0 hidden\n"
                    "expect partition p0 0+4K:rw 4K+4K:ro 0x100000+1M:rw\n"
                    "expect mapper m1 none\nmapper remove m0\npartition remove p0 => ok\n"
                    "txn begin\nregion add r2 2G 6K => error:invalid\ntxn begin => error:invalid\n"
                    "txn commit => error:resource\nasync t txn begin\nawait t\ntxn commit\n"
                    "unlock L1 => error:notfound\nawait a1 => error:notfound\n"
                    "dirty sync 0 4K => error:invalid\ndirty start\ndirty start => error:invalid\n"
                    "dirty sync 0x1000 1M\ndirty sync 0 64G => none\ndirty sync 1 1 => ok\n"
                    "dirty sync 0 2M => 0+4K 8K+8K 0x100000+1M\nasync d dirty sync 0 4K\n"
                    "await d => 0+4K\nasync e dirty stop\nawait e\n"
                    "async f dirty sync 0 4K\nawait f => none\n"
                    "txn begin\ndirty start\ndirty sync 0 8K => 0+8K\ndirty stop\ntxn commit\n");
  assert_round_trip("config max_addr=1G\nconfig vtls=0,1,2\nconfig vtl0_alias=4G\n"
                    "object memfd o 1M\nregion add r0 0 1M vtl=1\nregion add r2 0 1M prio=1 vtl=2\n"
                    "region add r 1M 1M\nmapper add m0 eager\nmapper add m2 lazy vtl=2\n"
                    "partition add p1 soft vtl=1 => ok\npartition add p2 kvm vtl=2\n"
                    "protect 0 0 4K none\nprotect 1 4K 8K ro => ok\n"
                    "protect 2 0 4K rw => error:invalid\n"
                    "read m2 0x40000000 4 => error:protected\nasync a protect 0 0 4K rw\n"
                    "await a => error:protected\ntxn begin\nprotect 0 0 4K ro\ntxn commit\n"
                    "expect protection 0 0+4K:ro 4K+8K:none\nexpect protection 1 none\n");
}

/* scenario_equal tells apart programs that differ in any one field (the round-trip checks,
 * here and in the fuzzer, rely on it). */
static void test_compare(void **state) {
  (void)state;
  static const char *const pairs[][2] = {
      {"config max_addr=1G\n", "config max_addr=2G\n"},
      {"config overlap=any\n", "config overlap=nested\n"},
      {"object memfd o 4K fill=0x01\n", "object memfd o 4K fill=pages:0x01\n"},
      {"object memfd o 4K\n", "object file o 4K\n"},
      {"region add r 0 4K\n", "region add r 0 8K\n"},
      {"region add r 0 4K prio=1\n", "region add r 0 4K prio=2\n"},
      {"region add r 0 4K type=device\n", "region add r 0 4K\n"},
      {"region map r\n", "region map r ro\n"},
      {"region map r => error:notfound\n", "region map r => error:invalid\n"},
      {"region map r => ok\n", "region map r\n"},
      {"mapping add r 0 4K o 0\n", "mapping add r 0 4K o 4K\n"},
      {"mapping add r 0 4K o 0\n", "mapping replace r 0 4K o 0\n"},
      {"mapper add m eager\n", "mapper add m lazy\n"},
      {"partition add p soft\n", "partition add p kvm\n"},
      {"read m 0 4 => 00*4\n", "read m 0 4 => 00*3 01\n"},
      {"write m 0 aa\n", "write m 0 ab\n"},
      {"guest p read 0 1\n", "read p 0 1\n"},
      {"lock m 0 4K ro as L\n", "lock m 0 4K as L\n"},
      {"async a region map r\n", "async a region map r ro\n"},
      {"async a region map r\nawait a\n", "async a region map r\nawait a => ok\n"},
      {"expect region r active\n", "expect region r hidden\n"},
      {"expect mapper m 0+4K:rw\n", "expect mapper m 0+4K:ro\n"},
      {"expect mapper m 0+4K:rw\n", "expect partition m 0+4K:rw\n"},
      {"expect mapper m 0+4K:rw\n", "expect mapper m 0+4K:rw 8K+4K:rw\n"},
      {"require kvm\n", "region map r\n"},
      {"region map r\n", "region map r\nregion map r\n"},
      {"txn begin\n", "txn commit\n"},
      {"txn commit\n", "txn commit => error:invalid\n"},
      {"await a\n", "await b\n"},
      {"dirty start\n", "dirty stop\n"},
      {"dirty start\n", "dirty start => error:invalid\n"},
      {"dirty sync 0 4K\n", "dirty sync 4K 4K\n"},
      {"dirty sync 0 4K\n", "dirty sync 0 8K\n"},
      {"dirty sync 0 4K\n", "dirty sync 0 4K => ok\n"},
      {"config vtls=0,1\n", "config vtls=0,2\n"},
      {"config vtls=0\n", "config max_addr=64G\n"},
      {"config vtls=0,2\nconfig vtl0_alias=64G\n", "config vtls=0,2\nconfig vtl0_alias=128G\n"},
      {"region add r 0 4K vtl=1\n", "region add r 0 4K vtl=2\n"},
      {"mapper add m eager vtl=1\n", "mapper add m eager\n"},
      {"partition add p soft vtl=2\n", "partition add p soft vtl=1\n"},
      {"protect 0 0 4K ro\n", "protect 1 0 4K ro\n"},
      {"protect 0 0 4K ro\n", "protect 0 4K 4K ro\n"},
      {"protect 0 0 4K ro\n", "protect 0 0 8K ro\n"},
      {"protect 0 0 4K ro\n", "protect 0 0 4K none\n"},
      {"read m 0 1 => error:protected\n", "read m 0 1 => error:mmio\n"},
      {"config vtls=0,1,2\nexpect protection 0 0+4K:ro\n",
       "config vtls=0,1,2\nexpect protection 1 0+4K:ro\n"},
      {"config vtls=0,1,2\nexpect protection 0 0+4K:ro\n",
       "config vtls=0,1,2\nexpect protection 0 0+4K:none\n"},
      {"dirty sync 0 4K => ok\n", "dirty sync 0 4K => none\n"},
      {"dirty sync 0 8K => none\n", "dirty sync 0 8K => 0+4K\n"},
      {"dirty sync 0 8K => 0+4K\n", "dirty sync 0 8K => 4K+4K\n"},
      {"dirty sync 0 8K => 0+4K\n", "dirty sync 0 8K => 0+8K\n"},
      {"dirty sync 0 1M => 0+4K\n", "dirty sync 0 1M => 0+4K 8K+4K\n"},
      {"dirty sync 0 4K => error:invalid\n", "dirty sync 0 4K => error:notfound\n"},
      {"async a dirty sync 0 4K\nawait a => none\n", "async a dirty sync 0 4K\nawait a\n"},
  };
  for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
    scenario *a = parse_ok(pairs[i][0]), *b = parse_ok(pairs[i][1]), *c = parse_ok(pairs[i][0]);
    size_t at = 99;
    if (scenario_equal(a, b, &at) || scenario_equal(b, a, NULL))
      fail_msg("'%s' and '%s' compare equal", pairs[i][0], pairs[i][1]);
    assert_true(at <= a->ncmds);
    assert_true(scenario_equal(a, c, NULL));
    scenario_free(a);
    scenario_free(b);
    scenario_free(c);
  }
}

/* Make each allocation of a parse fail in turn: the parse fails cleanly with "out of memory"
 * (the sanitizer build checks that nothing leaks), until every allocation succeeds. */
static int parse_with_failures(const char *text, const char *path) {
  for (long i = 0;; i++) {
    char err[256] = "";
    scenario *sc = (scenario *)1;
    alloc_countdown = i;
    int rc = path ? scenario_parse_file(path, &sc, err, sizeof err)
                  : scenario_parse_string(text, "t.mbs", &sc, err, sizeof err);
    bool exhausted = alloc_countdown >= 0; /* no allocation was made to fail */
    alloc_countdown = -1;
    if (rc == 0) {
      assert_true(exhausted);
      scenario_free(sc);
      return (int)i;
    }
    assert_null(sc);
    if (!strstr(err, "out of memory")) fail_msg("allocation %ld: %s", i, err);
  }
}

/* The same for a stream: open, or any line, fails cleanly with "out of memory". */
static int stream_with_failures(const char *path) {
  for (long i = 0;; i++) {
    char err[256] = "";
    scenario_stream *s = NULL;
    scenario_cmd *cmd;
    alloc_countdown = i;
    int rc = scenario_stream_open(path, &s, err, sizeof err);
    while (rc == 0 && (rc = scenario_stream_next(s, &cmd)) > 0) {
      scenario_cmd_free(cmd);
      rc = 0;
    }
    bool exhausted = alloc_countdown >= 0;
    alloc_countdown = -1;
    const char *why = s ? scenario_stream_error(s) : err;
    if (rc != 0 && !strstr(why, "out of memory")) fail_msg("allocation %ld: %s", i, why);
    scenario_stream_close(s);
    if (rc == 0) {
      assert_true(exhausted);
      return (int)i;
    }
  }
}

static void test_allocation_failures(void **state) {
  (void)state;
  /* Enough commands and live names to grow every array and table. */
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  fputs(spec_example, f);
  for (int i = 0; i < 80; i++) fprintf(f, "mapper add x%d eager\nlock x%d 0 4K as L%d\n", i, i, i);
  fputs("async a read m0 0 3\nawait a => 00*2 01\nwrite m0 0 ff*5 01\n"
        "expect mapper m0 0+4K:rw 8K+4K:ro\n"
        "txn begin\nregion add tr 64M 4K\ntxn commit => error:resource\n"
        "dirty start\ndirty sync 0 1M => 0+4K 8K+4K 16K+4K\nasync d dirty sync 0 4K\n"
        "await d => 0+4K\n",
        f);
  fclose(f);
  int n = parse_with_failures(text, NULL);
  assert_true(n > 20);
  char *path = write_temp(text, len);
  assert_true(parse_with_failures(NULL, path) > n); /* and the file's buffer */
  assert_true(stream_with_failures(path) > 80);
  unlink(path);
  free(path);
  free(text);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_spec_example),
      cmocka_unit_test(test_numbers),
      cmocka_unit_test(test_comments_blank_lines_tabs),
      cmocka_unit_test(test_bad_characters),
      cmocka_unit_test_teardown(test_names, teardown_last),
      cmocka_unit_test(test_config_and_require),
      cmocka_unit_test(test_config_together),
      cmocka_unit_test_teardown(test_objects, teardown_last),
      cmocka_unit_test_teardown(test_regions, teardown_last),
      cmocka_unit_test_teardown(test_mappings, teardown_last),
      cmocka_unit_test_teardown(test_consumers, teardown_last),
      cmocka_unit_test_teardown(test_accesses, teardown_last),
      cmocka_unit_test_teardown(test_bytes, teardown_last),
      cmocka_unit_test(test_bytes_per_file),
      cmocka_unit_test_teardown(test_results, teardown_last),
      cmocka_unit_test_teardown(test_locks, teardown_last),
      cmocka_unit_test(test_async),
      cmocka_unit_test_teardown(test_expect, teardown_last),
      cmocka_unit_test_teardown(test_vtl_syntax, teardown_last),
      cmocka_unit_test(test_vtl_config_checks),
      cmocka_unit_test_teardown(test_vtl_protect, teardown_last),
      cmocka_unit_test(test_live_names),
      cmocka_unit_test_teardown(test_txn, teardown_last),
      cmocka_unit_test_teardown(test_dirty, teardown_last),
      cmocka_unit_test(test_unknown_and_malformed),
      cmocka_unit_test(test_parse_file),
      cmocka_unit_test(test_stream),
      cmocka_unit_test(test_scenario_files),
      cmocka_unit_test(test_format_bytes),
      cmocka_unit_test_teardown(test_print_canonical, teardown_last),
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_compare),
      cmocka_unit_test(test_allocation_failures),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
