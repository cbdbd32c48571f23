/* scenario.h: a scenario file (.mbs, see spec/scenario.md) as an in-memory program, its parser
 * and its printer.
 *
 * Program
 *   A scenario is the array of its commands in file order. Each command has its source line, a
 *   kind, a payload (the union member named next to the kind in SCENARIO_COMMANDS) and an
 *   expectation: none, `=> ok`, `=> error:CODE`, `=> BYTES` (reads) or `=> PAGES` (dirty syncs).
 *   Names are stored inline, numbers as uint64_t, BYTES and HEXBYTES decoded into byte buffers,
 *   RANGES and PAGES into arrays.
 *
 * What the parser checks, and what it leaves to the engine
 *   The parser rejects everything the format calls an error of the script (the replay program
 *   exits 2 on those): unknown commands and keywords, malformed numbers and values that do not
 *   fit in 64 bits, config/require after other commands, a configuration that does not hold
 *   together (checked after the last config line: scenario_check.c), bad names, defining a name
 *   that is live, BYTES whose length differs from the read's, `=> BYTES` after anything but a
 *   read, a result on a command that performs no operation, a VTL other than 0, 1 or 2, an
 *   `expect protection` of a VTL that cannot be protected (config vtls has no VTL above it).
 *   What the format makes a result of the run is left to the engine, which reports it as an
 *   error code: a command naming a region, object, mapper, partition, lock or async label that
 *   does not exist (`error:notfound`), an address or size that is not a multiple of 4 KiB, a
 *   zero size, a range that wraps or ends beyond max_addr (`error:invalid`), removing a mapper
 *   that holds locks (`error:invalid`), the transaction rules (`error:invalid`), a region,
 *   consumer or protection at a VTL that the configuration does not have or cannot protect
 *   (`error:invalid`), ...
 *
 * Liveness of names (the rule behind "defining a live name")
 *   A name is live from the command that may have created it until the command that is known to
 *   have deleted it. A synchronous add expected to fail (`=> error:CODE`) creates nothing; a
 *   remove expected to fail deletes nothing. Under `async`, an add reserves its name at once
 *   (released again if the await expects an error) and a remove or unlock takes effect at its
 *   `await` (when the await does not expect an error). Objects live to the end of the file. A
 *   transaction whose commit is expected to fail gives the region names back the liveness they
 *   had at its `txn begin` (a failed commit returns the manager to that state).
 *
 * Threads
 *   Every function is reentrant. A parsed scenario is never modified, so any thread may read it.
 */
#ifndef SCENARIO_H
#define SCENARIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  SCENARIO_NAME_MAX = 63,                     /* longest NAME, in characters */
  SCENARIO_NAME_SIZE = SCENARIO_NAME_MAX + 1, /* inline name buffers, NUL included */
  SCENARIO_PAGE_SIZE = 4096,                  /* the alignment of regions, mappings, ... */
};
/* max_addr when no `config max_addr=` line says otherwise: 64 GiB. */
#define SCENARIO_DEFAULT_MAX_ADDR (UINT64_C(64) << 30)
/* The parser refuses a file whose BYTES and HEXBYTES decode to more than this in all (64 MiB):
 * a program holds them all at once, and a few bytes of text (`00*1G`) must not cost gigabytes
 * of memory, or the seconds it takes to fill them. (The fuzzer's build sets a lower limit, so
 * that its inputs test the parser rather than memset.) */
#ifndef SCENARIO_DATA_MAX
#define SCENARIO_DATA_MAX (UINT64_C(64) << 20)
#endif

/* ---- the command set ------------------------------------------------------------------------ */

/* Every command kind: X(KIND, "name as written", union member of scenario_cmd). */
#define SCENARIO_COMMANDS(X)                                                                       \
  X(CONFIG, "config", config)                                                                      \
  X(REQUIRE, "require", require)                                                                   \
  X(OBJECT, "object", object)                                                                      \
  X(REGION_ADD, "region add", region)                                                              \
  X(REGION_MAP, "region map", region)                                                              \
  X(REGION_UNMAP, "region unmap", region)                                                          \
  X(REGION_REMOVE, "region remove", region)                                                        \
  X(MAPPING_ADD, "mapping add", mapping)                                                           \
  X(MAPPING_REMOVE, "mapping remove", mapping)                                                     \
  X(MAPPING_REPLACE, "mapping replace", mapping)                                                   \
  X(MAPPER_ADD, "mapper add", mapper)                                                              \
  X(MAPPER_REMOVE, "mapper remove", mapper)                                                        \
  X(PARTITION_ADD, "partition add", partition)                                                     \
  X(PARTITION_REMOVE, "partition remove", partition)                                               \
  X(READ, "read", io)                                                                              \
  X(WRITE, "write", io)                                                                            \
  X(GUEST_READ, "guest read", io)                                                                  \
  X(GUEST_WRITE, "guest write", io)                                                                \
  X(LOCK, "lock", lock)                                                                            \
  X(UNLOCK, "unlock", lock)                                                                        \
  X(ASYNC, "async", async)                                                                         \
  X(AWAIT, "await", label)                                                                         \
  X(EXPECT_PENDING, "expect pending", label)                                                       \
  X(EXPECT_REGION, "expect region", expect_region)                                                 \
  X(EXPECT_PARTITION, "expect partition", expect_ranges)                                           \
  X(EXPECT_MAPPER, "expect mapper", expect_ranges)                                                 \
  X(EXPECT_PROTECTION, "expect protection", expect_protection)                                     \
  X(TXN_BEGIN, "txn begin", txn)                                                                   \
  X(TXN_COMMIT, "txn commit", txn)                                                                 \
  X(DIRTY_START, "dirty start", dirty)                                                             \
  X(DIRTY_SYNC, "dirty sync", dirty)                                                               \
  X(DIRTY_STOP, "dirty stop", dirty)                                                               \
  X(PROTECT, "protect", protect)

typedef enum scenario_cmd_kind {
#define SCENARIO__KIND(kind, text, member) SCENARIO_##kind,
  SCENARIO_COMMANDS(SCENARIO__KIND)
#undef SCENARIO__KIND
  SCENARIO_CMD_KIND_COUNT
} scenario_cmd_kind;

/* "region add", "guest read", ...; "?" for a value out of range. */
const char *scenario_cmd_name(scenario_cmd_kind kind);
/* True for the commands that perform an operation: they may carry `=> RESULT` and may follow
 * `async LABEL`. False for config, require, async, await and the expect commands. */
bool scenario_cmd_is_operation(scenario_cmd_kind kind);

/* ---- error codes ---------------------------------------------------------------------------- */

/* The complete set of `error:CODE` codes: X(KIND, "code"). */
#define SCENARIO_ERRORS(X)                                                                         \
  X(OVERLAP, "overlap")                                                                            \
  X(INVALID, "invalid")                                                                            \
  X(NOTFOUND, "notfound")                                                                          \
  X(UNMAPPED, "unmapped")                                                                          \
  X(READONLY, "readonly")                                                                          \
  X(MMIO, "mmio")                                                                                  \
  X(FAULT, "fault")                                                                                \
  X(PROTECTED, "protected")                                                                        \
  X(RESOURCE, "resource")                                                                          \
  X(UNSUPPORTED, "unsupported")

typedef enum scenario_error {
  SCENARIO_ERR_NONE = 0, /* not a code: success, for an engine that maps results to codes */
#define SCENARIO__ERR(kind, text) SCENARIO_ERR_##kind,
  SCENARIO_ERRORS(SCENARIO__ERR)
#undef SCENARIO__ERR
  SCENARIO_ERR_COUNT
} scenario_error;

/* "overlap", "invalid", ...; "ok" for SCENARIO_ERR_NONE; "?" for a value out of range. */
const char *scenario_error_name(scenario_error err);

/* ---- values --------------------------------------------------------------------------------- */

/* Decoded BYTES or HEXBYTES. data is NULL only when len is 0. */
typedef struct scenario_bytes {
  uint8_t *data;
  size_t len;
} scenario_bytes;

/* One item of RANGES: guest range [gpa, gpa + size) and its access: rw, ro, or (only in
 * `expect protection`) none. size is never 0 and the range never wraps. */
typedef struct scenario_range {
  uint64_t gpa;
  uint64_t size;
  bool ro;
  bool none; /* `:none` (ro is then false) */
} scenario_range;

/* RANGES: n == 0 for `none`. Items are ascending, do not overlap, and are normalised like the
 * actual state they are compared with: adjacent items with the same access are merged. PAGES
 * (a dirty sync's answer) are the same with no access: every item's ro is false. */
typedef struct scenario_ranges {
  scenario_range *items;
  size_t n;
} scenario_ranges;

typedef enum scenario_expect_kind {
  SCENARIO_EXPECT_NONE,  /* no `=>`: the operation must succeed (a read: with any data) */
  SCENARIO_EXPECT_OK,    /* `=> ok` */
  SCENARIO_EXPECT_ERROR, /* `=> error:CODE`: .error */
  SCENARIO_EXPECT_BYTES, /* `=> BYTES` (reads, and awaits of reads): success with .bytes */
  SCENARIO_EXPECT_PAGES, /* `=> PAGES` (dirty syncs, and their awaits): success with .pages */
} scenario_expect_kind;

typedef struct scenario_expect {
  scenario_expect_kind kind;
  scenario_error error; /* SCENARIO_EXPECT_ERROR only */
  scenario_bytes bytes; /* SCENARIO_EXPECT_BYTES only; len equals the read's len */
  scenario_ranges pages; /* SCENARIO_EXPECT_PAGES only: the dirty pages answered (`none`: n 0) */
} scenario_expect;

/* ---- payloads ------------------------------------------------------------------------------- */

typedef enum scenario_overlap { SCENARIO_OVERLAP_NESTED, SCENARIO_OVERLAP_ANY } scenario_overlap;

/* The VTLs (0, 1, 2) as a bit mask: bit n is VTL n. */
enum { SCENARIO_VTL_MAX = 2, SCENARIO_DEFAULT_VTLS = 1 };

/* config max_addr=NUMBER | overlap=nested|any | vtls=0[,1][,2] | vtl0_alias=ADDR: one setting
 * per line. */
typedef struct scenario_config {
  enum {
    SCENARIO_CONFIG_MAX_ADDR,
    SCENARIO_CONFIG_OVERLAP,
    SCENARIO_CONFIG_VTLS,
    SCENARIO_CONFIG_VTL0_ALIAS,
    SCENARIO_CONFIG_KEYS
  } key;
  uint64_t max_addr;        /* key == SCENARIO_CONFIG_MAX_ADDR */
  scenario_overlap overlap; /* key == SCENARIO_CONFIG_OVERLAP */
  /* key == SCENARIO_CONFIG_VTLS: the VTLs listed (a bit mask), and whether they were written
   * strictly ascending (a list that is not fails the configuration check: exit 2). */
  uint8_t vtls;
  bool vtls_ascending;
  uint64_t vtl0_alias;      /* key == SCENARIO_CONFIG_VTL0_ALIAS (as written) */
} scenario_config;

/* require kvm (the only requirement there is). */
typedef struct scenario_require {
  enum { SCENARIO_REQUIRE_KVM } what;
} scenario_require;

/* object memfd|file NAME SIZE [fill=0xHH|fill=pages:0xHH]. No fill means SCENARIO_FILL_BYTE 0. */
typedef struct scenario_object {
  enum { SCENARIO_OBJECT_MEMFD, SCENARIO_OBJECT_FILE } type;
  char name[SCENARIO_NAME_SIZE];
  uint64_t size; /* not a multiple of SCENARIO_PAGE_SIZE: the object fails (error:invalid) */
  /* FILL: BYTE: every byte is fill_value; PAGES: every byte of page k is (fill_value + k) % 256. */
  enum { SCENARIO_FILL_BYTE, SCENARIO_FILL_PAGES } fill;
  uint8_t fill_value;
} scenario_object;

typedef enum scenario_region_type {
  SCENARIO_REGION_RAM,
  SCENARIO_REGION_DEVICE
} scenario_region_type;

/* region add NAME GPA SIZE [prio=N] [type=ram|device] [vtl=N]  uses name, gpa, size, prio,
 *                                                       type, vtl;
 * region map NAME [rw|ro]                               uses name, ro;
 * region unmap NAME, region remove NAME                 use name. */
typedef struct scenario_region {
  char name[SCENARIO_NAME_SIZE];
  uint64_t gpa;              /* any value: an unaligned one is the operation's error */
  uint64_t size;
  uint8_t prio;              /* default 0 */
  scenario_region_type type; /* default RAM */
  bool ro;                   /* default rw */
  uint8_t vtl;               /* 0..2, default 0 (one not configured: error:invalid at run time) */
} scenario_region;

/* mapping add|replace REGION OFFSET SIZE OBJECT OBJ_OFFSET [rw|ro]  uses every field;
 * mapping remove REGION OFFSET SIZE                                  uses region, offset, size.
 * offset, size and obj_offset as written (alignment is checked by the operation). */
typedef struct scenario_mapping {
  char region[SCENARIO_NAME_SIZE];
  uint64_t offset; /* relative to the region's start */
  uint64_t size;
  char object[SCENARIO_NAME_SIZE];
  uint64_t obj_offset;
  bool ro;
} scenario_mapping;

/* mapper add NAME eager|lazy [vtl=N]; mapper remove NAME (mode and vtl unused). */
typedef struct scenario_mapper {
  char name[SCENARIO_NAME_SIZE];
  enum { SCENARIO_MAPPER_EAGER, SCENARIO_MAPPER_LAZY } mode;
  uint8_t vtl; /* 0..2, default 0 */
} scenario_mapper;

/* partition add NAME soft|kvm [vtl=N]; partition remove NAME (backend and vtl unused). */
typedef struct scenario_partition {
  char name[SCENARIO_NAME_SIZE];
  enum { SCENARIO_PARTITION_SOFT, SCENARIO_PARTITION_KVM } backend;
  uint8_t vtl; /* 0..2, default 0 */
} scenario_partition;

/* read MAPPER GPA LEN, write MAPPER GPA HEXBYTES,
 * guest PARTITION read GPA LEN, guest PARTITION write GPA HEXBYTES.
 * Byte-granular. For a write, data holds HEXBYTES and len == data.len; for a read, data is
 * empty. target names a mapper (read, write) or a partition (guest read, guest write). */
typedef struct scenario_io {
  char target[SCENARIO_NAME_SIZE];
  uint64_t gpa;
  uint64_t len;
  scenario_bytes data;
} scenario_io;

/* lock MAPPER GPA SIZE [rw|ro] as NAME  uses every field (gpa, size as written);
 * unlock NAME                           uses name. */
typedef struct scenario_lock {
  char mapper[SCENARIO_NAME_SIZE];
  uint64_t gpa;
  uint64_t size;
  bool ro;
  char name[SCENARIO_NAME_SIZE];
} scenario_lock;

/* async LABEL COMMAND...: inner is an operation (scenario_cmd_is_operation) on the same line,
 * with no expectation of its own: its result is checked by the matching await. */
typedef struct scenario_async {
  char label[SCENARIO_NAME_SIZE];
  struct scenario_cmd *inner;
} scenario_async;

/* await LABEL [=> RESULT], expect pending LABEL: async_index is the index in scenario.cmds of
 * the `async LABEL` command the label refers to (an earlier, not yet awaited one), or
 * SCENARIO_NO_LABEL when no such label is live (the command fails with error:notfound). */
#define SCENARIO_NO_LABEL SIZE_MAX
typedef struct scenario_label {
  char label[SCENARIO_NAME_SIZE];
  size_t async_index;
} scenario_label;

typedef enum scenario_region_state {
  SCENARIO_STATE_ACTIVE,   /* mapped and wholly visible */
  SCENARIO_STATE_HIDDEN,   /* mapped but wholly covered by winners */
  SCENARIO_STATE_UNMAPPED, /* not mapped */
  SCENARIO_STATE_PARTIAL,  /* mapped and visible in pieces (only under overlap=any) */
} scenario_region_state;

/* expect region NAME active|hidden|unmapped|partial */
typedef struct scenario_expect_region {
  char name[SCENARIO_NAME_SIZE];
  scenario_region_state state;
} scenario_expect_region;

/* expect partition NAME RANGES, expect mapper NAME RANGES */
typedef struct scenario_expect_ranges {
  char name[SCENARIO_NAME_SIZE];
  scenario_ranges ranges;
} scenario_expect_ranges;

/* expect protection VTL RANGES: ranges items are ro or none (never rw: rw is what is not
 * listed). The parser refuses a VTL that cannot be protected (none above it in config vtls). */
typedef struct scenario_expect_protection {
  uint8_t vtl;
  scenario_ranges ranges;
} scenario_expect_protection;

/* protect VTL GPA SIZE none|ro|rw (gpa, size as written; the VTL 0..2: one that cannot be
 * protected is error:invalid at run time). */
typedef enum scenario_prot {
  SCENARIO_PROT_NONE,
  SCENARIO_PROT_RO,
  SCENARIO_PROT_RW
} scenario_prot;
typedef struct scenario_protect {
  uint8_t vtl;
  uint64_t gpa;
  uint64_t size;
  scenario_prot access;
} scenario_protect;

/* txn begin, txn commit: no arguments (the member exists because C has no empty struct). */
typedef struct scenario_txn {
  char none;
} scenario_txn;

/* dirty sync GPA SIZE (as written: alignment is checked by the operation); dirty start and
 * dirty stop have no arguments (gpa and size 0). */
typedef struct scenario_dirty {
  uint64_t gpa;
  uint64_t size;
} scenario_dirty;

/* ---- commands and programs ------------------------------------------------------------------ */

typedef struct scenario_cmd {
  scenario_cmd_kind kind;
  unsigned line;          /* 1-based line in the source */
  scenario_expect expect; /* only operations and await have one; else SCENARIO_EXPECT_NONE */
  union {                 /* the member SCENARIO_COMMANDS names for the kind */
    scenario_config config;
    scenario_require require;
    scenario_object object;
    scenario_region region;
    scenario_mapping mapping;
    scenario_mapper mapper;
    scenario_partition partition;
    scenario_io io;
    scenario_lock lock;
    scenario_async async;
    scenario_label label;
    scenario_expect_region expect_region;
    scenario_expect_ranges expect_ranges;
    scenario_txn txn;
    scenario_dirty dirty;
    scenario_expect_protection expect_protection;
    scenario_protect protect;
  };
} scenario_cmd;

typedef struct scenario {
  char *name;         /* the file name given to the parser, for messages */
  scenario_cmd *cmds; /* in file order */
  size_t ncmds;
  /* The configuration that config and require lines (all at the top) establish. */
  uint64_t max_addr;        /* SCENARIO_DEFAULT_MAX_ADDR unless configured */
  scenario_overlap overlap; /* SCENARIO_OVERLAP_NESTED unless configured */
  uint8_t vtls;             /* bit mask of the VTLs; SCENARIO_DEFAULT_VTLS (VTL 0) unless
                             * configured */
  uint64_t vtl0_alias;      /* 0 (none) unless configured */
  bool require_kvm;
} scenario;

/* Parse the file at `path`. On success returns 0 and sets *out (free it with scenario_free).
 * On failure returns -1, sets *out to NULL and writes to err (when errlen > 0) one line naming
 * the file, the line and the problem, e.g. "x.mbs:12: unknown command 'regoin'". */
int scenario_parse_file(const char *path, scenario **out, char *err, size_t errlen);
/* The same for a NUL-terminated text; `name` stands for the file name in messages. */
int scenario_parse_string(const char *text, const char *name, scenario **out, char *err,
                          size_t errlen);
/* The same for `len` bytes of text, which may hold NUL bytes (refused, as in a file). */
int scenario_parse_text(const char *text, size_t len, const char *name, scenario **out, char *err,
                        size_t errlen);
/* Free a scenario and everything it owns. NULL is fine. */
void scenario_free(scenario *sc);

/* ---- streaming ------------------------------------------------------------------------------ */

/* A file read one command at a time, for a program too long to hold: the stream keeps one line,
 * the names live at that point and what each live async label's await needs, never the
 * commands read before. It applies exactly the rules of scenario_parse_file, with the same
 * messages; the file's BYTES and HEXBYTES count against SCENARIO_DATA_MAX together, as there. */
typedef struct scenario_stream scenario_stream;

/* Open `path`. 0 and *out, or -1 with the message in err (the file cannot be opened, or no
 * memory). */
int scenario_stream_open(const char *path, scenario_stream **out, char *err, size_t errlen);
/* The next command: 1 and *out (the caller's: scenario_cmd_free), 0 at the end of the file, -1
 * when a line does not parse (or no memory; the stream answers -1 from then on): see
 * scenario_stream_error. Every command has the fields it would have in a parsed program; an
 * await's or expect pending's label.async_index is the index its async would have there (the
 * number of commands before it in the file), for the caller to match the two. */
int scenario_stream_next(scenario_stream *s, scenario_cmd **out);
/* After -1: one line naming the file, the line and the problem, as scenario_parse_file's. */
const char *scenario_stream_error(const scenario_stream *s);
/* The file's name and configuration so far (complete once the first command that is not
 * config or require has been read); cmds is NULL, ncmds counts the commands read. */
const scenario *scenario_stream_info(const scenario_stream *s);
/* Close the file and free the stream. NULL is fine. */
void scenario_stream_close(scenario_stream *s);
/* Free one command (of a stream) and everything it owns. NULL is fine. */
void scenario_cmd_free(scenario_cmd *cmd);

/* ---- comparing ------------------------------------------------------------------------------ */

/* Deep equality of two commands: kind, payload and expectation; line numbers aside. */
bool scenario_cmd_equal(const scenario_cmd *a, const scenario_cmd *b);
/* Deep equality of two programs: every command and the configuration. When they differ and
 * differs is not NULL, *differs is the index of the first command that differs (the shorter
 * program's length when one is a prefix of the other or only the configuration differs). */
bool scenario_equal(const scenario *a, const scenario *b, size_t *differs);

/* ---- printing ------------------------------------------------------------------------------- */

/* Write one command in canonical .mbs syntax, its `=> RESULT` included, without a newline.
 * Canonical: single spaces, defaults left out, addresses in hex, sizes with a K/M/G/T suffix when
 * they have one, BYTES compact. Parsing the printed text gives the same command back (for await,
 * expect pending and unlock: after the commands that precede it in its program). */
void scenario_print_command(FILE *f, const scenario_cmd *cmd);
/* Write every command, one per line: a scenario file equivalent to the one parsed. */
void scenario_print(FILE *f, const scenario *sc);
/* Write an expectation as it follows `=> `: "ok", "error:CODE", BYTES or PAGES; nothing for
 * NONE. */
void scenario_print_expect(FILE *f, const scenario_expect *e);

/* Format bytes in the BYTES syntax, compactly: every run of 8 or more equal bytes as HH*N, the
 * rest as hex runs ("00*4K deadbeef"); zero bytes as "00*0". Like snprintf: writes at most size
 * bytes into buf, NUL included, and returns the length the whole text needs (without the NUL). */
size_t scenario_format_bytes(char *buf, size_t size, const uint8_t *data, size_t len);
/* The same, written to a stream. */
void scenario_print_bytes(FILE *f, const uint8_t *data, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* SCENARIO_H */
