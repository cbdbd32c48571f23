/* scenario_print.c: a program back to .mbs text (canonical syntax), and the names of kinds and
 * error codes that parser and printer share. */
#include <inttypes.h>
#include <stdarg.h>
#include <string.h>

#include "scenario_internal.h"

static const char *const cmd_names[] = {
#define SCENARIO__NAME(kind, text, member) [SCENARIO_##kind] = text,
    SCENARIO_COMMANDS(SCENARIO__NAME)
#undef SCENARIO__NAME
};

static const char *const error_names[] = {[SCENARIO_ERR_NONE] = "ok",
#define SCENARIO__NAME(kind, text) [SCENARIO_ERR_##kind] = text,
                                          SCENARIO_ERRORS(SCENARIO__NAME)
#undef SCENARIO__NAME
};

const char *scenario_cmd_name(scenario_cmd_kind kind) {
  return (unsigned)kind < SCENARIO_CMD_KIND_COUNT ? cmd_names[kind] : "?";
}

const char *scenario_error_name(scenario_error err) {
  return (unsigned)err < SCENARIO_ERR_COUNT ? error_names[err] : "?";
}

bool scenario_cmd_is_operation(scenario_cmd_kind kind) {
  switch (kind) {
  case SCENARIO_CONFIG:
  case SCENARIO_REQUIRE:
  case SCENARIO_ASYNC:
  case SCENARIO_AWAIT:
  case SCENARIO_EXPECT_PENDING:
  case SCENARIO_EXPECT_REGION:
  case SCENARIO_EXPECT_PARTITION:
  case SCENARIO_EXPECT_MAPPER:
  case SCENARIO_EXPECT_PROTECTION: return false;
  default: return (unsigned)kind < SCENARIO_CMD_KIND_COUNT;
  }
}

/* ---- output: a stream, or a buffer with snprintf semantics ---------------------------------- */

typedef struct sink {
  FILE *f; /* when set, everything goes there */
  char *buf;
  size_t size;
  size_t len; /* what the whole text needs, even past size */
} sink;

static void put(sink *s, const char *p, size_t n) {
  if (s->f) {
    fwrite(p, 1, n, s->f);
  } else if (s->size > 0 && s->len < s->size - 1) {
    size_t room = s->size - 1 - s->len;
    memcpy(s->buf + s->len, p, n < room ? n : room);
  }
  s->len += n;
}

/* For short pieces only: names, keywords, numbers. */
__attribute__((format(printf, 2, 3))) static void putf(sink *s, const char *fmt, ...) {
  char tmp[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n > 0) put(s, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Addresses and offsets in hex ("0xf0000"); 0 as "0". */
static void put_addr(sink *s, uint64_t v) {
  if (v == 0)
    putf(s, "0");
  else
    putf(s, "0x%" PRIx64, v);
}

/* Sizes and counts with the largest binary suffix that divides them ("64K", "16M"). */
static void put_size(sink *s, uint64_t v) {
  static const struct {
    unsigned shift;
    char suffix;
  } units[] = {{40, 'T'}, {30, 'G'}, {20, 'M'}, {10, 'K'}};
  for (size_t i = 0; v != 0 && i < sizeof units / sizeof units[0]; i++) {
    if ((v & ((UINT64_C(1) << units[i].shift) - 1)) == 0) {
      putf(s, "%" PRIu64 "%c", v >> units[i].shift, units[i].suffix);
      return;
    }
  }
  putf(s, "%" PRIu64, v);
}

static void put_hex(sink *s, const uint8_t *d, size_t n) {
  static const char digits[] = "0123456789abcdef";
  char tmp[256];
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    tmp[k++] = digits[d[i] >> 4];
    tmp[k++] = digits[d[i] & 15];
    if (k == sizeof tmp) {
      put(s, tmp, k);
      k = 0;
    }
  }
  put(s, tmp, k);
}

/* How many bytes starting at i equal d[i]. Long runs (HH*N of up to SCENARIO_DATA_MAX bytes)
 * are skipped a block at a time: d[j..j+n] are all equal iff memcmp(d + j, d + j + 1, n) == 0. */
static size_t run_at(const uint8_t *d, size_t len, size_t i) {
  enum { BLOCK = 4096 };
  size_t j = i;
  while (len - j > BLOCK && memcmp(d + j, d + j + 1, BLOCK) == 0) j += BLOCK;
  j++;
  while (j < len && d[j] == d[i]) j++;
  return j - i;
}

enum { MIN_RUN = 8 }; /* shorter runs are cheaper, or no dearer, as hex */

static void put_bytes(sink *s, const uint8_t *d, size_t len) {
  if (len == 0) {
    putf(s, "00*0");
    return;
  }
  for (size_t i = 0; i < len;) {
    if (i > 0) putf(s, " ");
    size_t run = run_at(d, len, i);
    if (run >= MIN_RUN) {
      putf(s, "%02x*", d[i]);
      put_size(s, run);
      i += run;
      continue;
    }
    size_t j = i + run; /* hex up to the next long run */
    while (j < len && (run = run_at(d, len, j)) < MIN_RUN) j += run;
    put_hex(s, d + i, j - i);
    i = j;
  }
}

/* RANGES, or (access false) PAGES: the same items without their access. */
static void put_ranges(sink *s, const scenario_ranges *r, bool access) {
  if (r->n == 0) putf(s, "none");
  for (size_t i = 0; i < r->n; i++) {
    if (i > 0) putf(s, " ");
    put_addr(s, r->items[i].gpa);
    putf(s, "+");
    put_size(s, r->items[i].size);
    if (access && r->items[i].none) putf(s, ":%s", scenario__prot_words[SCENARIO_PROT_NONE]);
    else if (access) putf(s, ":%s", scenario__access_words[r->items[i].ro]);
  }
}

static void put_expect(sink *s, const scenario_expect *e) {
  switch (e->kind) {
  case SCENARIO_EXPECT_OK: putf(s, "ok"); break;
  case SCENARIO_EXPECT_ERROR: putf(s, "error:%s", scenario_error_name(e->error)); break;
  case SCENARIO_EXPECT_BYTES: put_bytes(s, e->bytes.data, e->bytes.len); break;
  case SCENARIO_EXPECT_PAGES: put_ranges(s, &e->pages, false); break;
  case SCENARIO_EXPECT_NONE: break;
  }
}

/* " NAME" arguments and flags. */
static void put_name(sink *s, const char *name) { putf(s, " %s", name); }

static void put_ro(sink *s, bool ro) {
  if (ro) putf(s, " %s", scenario__access_words[1]);
}

/* vtls=0,1,2: the VTLs of the mask, ascending. A list that was not written ascending fails the
 * configuration check, so a program never holds one. */
static void put_vtls(sink *s, uint8_t vtls) {
  const char *sep = "";
  putf(s, " vtls=");
  for (unsigned v = 0; v <= SCENARIO_VTL_MAX; v++) {
    if (!(vtls >> v & 1)) continue;
    putf(s, "%s%u", sep, v);
    sep = ",";
  }
}

static void put_config(sink *s, const scenario_config *c) {
  switch (c->key) {
  case SCENARIO_CONFIG_MAX_ADDR:
    putf(s, " max_addr=");
    put_size(s, c->max_addr);
    break;
  case SCENARIO_CONFIG_OVERLAP: putf(s, " overlap=%s", scenario__overlap_words[c->overlap]); break;
  case SCENARIO_CONFIG_VTLS: put_vtls(s, c->vtls); break;
  case SCENARIO_CONFIG_VTL0_ALIAS:
    putf(s, " vtl0_alias=");
    put_addr(s, c->vtl0_alias);
    break;
  case SCENARIO_CONFIG_KEYS: break;
  }
}

/* " vtl=N" unless it is the default, 0. */
static void put_vtl(sink *s, uint8_t vtl) {
  if (vtl != 0) putf(s, " vtl=%u", (unsigned)vtl);
}

static void put_cmd(sink *s, const scenario_cmd *c) {
  const char *name = scenario_cmd_name(c->kind);
  bool is_read = c->kind == SCENARIO_READ || c->kind == SCENARIO_GUEST_READ;
  if (c->kind == SCENARIO_GUEST_READ || c->kind == SCENARIO_GUEST_WRITE)
    putf(s, "guest %s %s ", c->io.target, name + strlen("guest ")); /* the name is split */
  else
    putf(s, "%s", name);

  switch (c->kind) {
  case SCENARIO_CONFIG: put_config(s, &c->config); break;
  case SCENARIO_REQUIRE: putf(s, " kvm"); break;
  case SCENARIO_OBJECT:
    putf(s, " %s %s ", scenario__object_words[c->object.type], c->object.name);
    put_size(s, c->object.size);
    if (c->object.fill == SCENARIO_FILL_PAGES)
      putf(s, " fill=pages:0x%02x", c->object.fill_value);
    else if (c->object.fill_value != 0)
      putf(s, " fill=0x%02x", c->object.fill_value);
    break;
  case SCENARIO_REGION_ADD:
    putf(s, " %s ", c->region.name);
    put_addr(s, c->region.gpa);
    putf(s, " ");
    put_size(s, c->region.size);
    if (c->region.prio != 0) putf(s, " prio=%u", (unsigned)c->region.prio);
    if (c->region.type != SCENARIO_REGION_RAM)
      putf(s, " type=%s", scenario__region_type_words[c->region.type]);
    put_vtl(s, c->region.vtl);
    break;
  case SCENARIO_REGION_MAP:
  case SCENARIO_REGION_UNMAP:
  case SCENARIO_REGION_REMOVE:
    put_name(s, c->region.name);
    put_ro(s, c->kind == SCENARIO_REGION_MAP && c->region.ro);
    break;
  case SCENARIO_MAPPING_ADD:
  case SCENARIO_MAPPING_REMOVE:
  case SCENARIO_MAPPING_REPLACE:
    putf(s, " %s ", c->mapping.region);
    put_addr(s, c->mapping.offset);
    putf(s, " ");
    put_size(s, c->mapping.size);
    if (c->kind != SCENARIO_MAPPING_REMOVE) {
      putf(s, " %s ", c->mapping.object);
      put_addr(s, c->mapping.obj_offset);
      put_ro(s, c->mapping.ro);
    }
    break;
  case SCENARIO_MAPPER_ADD:
    putf(s, " %s %s", c->mapper.name, scenario__mapper_words[c->mapper.mode]);
    put_vtl(s, c->mapper.vtl);
    break;
  case SCENARIO_MAPPER_REMOVE: put_name(s, c->mapper.name); break;
  case SCENARIO_PARTITION_ADD:
    putf(s, " %s %s", c->partition.name, scenario__partition_words[c->partition.backend]);
    put_vtl(s, c->partition.vtl);
    break;
  case SCENARIO_PARTITION_REMOVE: put_name(s, c->partition.name); break;
  case SCENARIO_READ:
  case SCENARIO_WRITE:
  case SCENARIO_GUEST_READ:
  case SCENARIO_GUEST_WRITE:
    if (c->kind == SCENARIO_READ || c->kind == SCENARIO_WRITE) putf(s, " %s ", c->io.target);
    put_addr(s, c->io.gpa);
    putf(s, " ");
    if (is_read)
      put_size(s, c->io.len);
    else
      put_bytes(s, c->io.data.data, c->io.data.len);
    break;
  case SCENARIO_LOCK:
    putf(s, " %s ", c->lock.mapper);
    put_addr(s, c->lock.gpa);
    putf(s, " ");
    put_size(s, c->lock.size);
    put_ro(s, c->lock.ro);
    putf(s, " as %s", c->lock.name);
    break;
  case SCENARIO_UNLOCK: put_name(s, c->lock.name); break;
  case SCENARIO_ASYNC:
    putf(s, " %s ", c->async.label);
    put_cmd(s, c->async.inner);
    break;
  case SCENARIO_AWAIT:
  case SCENARIO_EXPECT_PENDING: put_name(s, c->label.label); break;
  case SCENARIO_EXPECT_REGION:
    putf(s, " %s %s", c->expect_region.name, scenario__state_words[c->expect_region.state]);
    break;
  case SCENARIO_EXPECT_PARTITION:
  case SCENARIO_EXPECT_MAPPER:
    putf(s, " %s ", c->expect_ranges.name);
    put_ranges(s, &c->expect_ranges.ranges, true);
    break;
  case SCENARIO_EXPECT_PROTECTION:
    putf(s, " %u ", (unsigned)c->expect_protection.vtl);
    put_ranges(s, &c->expect_protection.ranges, true);
    break;
  case SCENARIO_PROTECT:
    putf(s, " %u ", (unsigned)c->protect.vtl);
    put_addr(s, c->protect.gpa);
    putf(s, " ");
    put_size(s, c->protect.size);
    putf(s, " %s", scenario__prot_words[c->protect.access]);
    break;
  case SCENARIO_DIRTY_SYNC:
    putf(s, " ");
    put_addr(s, c->dirty.gpa);
    putf(s, " ");
    put_size(s, c->dirty.size);
    break;
  case SCENARIO_DIRTY_START:
  case SCENARIO_DIRTY_STOP:
  case SCENARIO_TXN_BEGIN:
  case SCENARIO_TXN_COMMIT:
  case SCENARIO_CMD_KIND_COUNT: break;
  }
  if (c->expect.kind != SCENARIO_EXPECT_NONE) {
    putf(s, " => ");
    put_expect(s, &c->expect);
  }
}

void scenario_print_command(FILE *f, const scenario_cmd *cmd) {
  sink s = {.f = f};
  put_cmd(&s, cmd);
}

void scenario_print(FILE *f, const scenario *sc) {
  for (size_t i = 0; i < sc->ncmds; i++) {
    scenario_print_command(f, &sc->cmds[i]);
    fputc('\n', f);
  }
}

void scenario_print_expect(FILE *f, const scenario_expect *e) {
  sink s = {.f = f};
  put_expect(&s, e);
}

size_t scenario_format_bytes(char *buf, size_t size, const uint8_t *data, size_t len) {
  sink s = {.buf = buf, .size = size};
  put_bytes(&s, data, len);
  if (size > 0) buf[s.len < size ? s.len : size - 1] = '\0';
  return s.len;
}

void scenario_print_bytes(FILE *f, const uint8_t *data, size_t len) {
  sink s = {.f = f};
  put_bytes(&s, data, len);
}
