/* fault_inject.c: the fault-injection seam's state (see fault_inject.h). Without
 * MB_FAULT_INJECTION (a build option, off by default so the library pays nothing) the API
 * still exists and says injection is off: mb_fi_enabled() is false and mb_fi_arm() answers
 * MB_E_UNSUPPORTED. The tests that need injection compile their own injecting copy of the
 * sources, so they run in every build; the sweep runs in the -Dfault_injection=true build. */
#include "fault_inject.h"

#include <dlfcn.h>
#include <errno.h>
#include <execinfo.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mb_errors.h"

static const char *const kind_names[MB_FI_KINDS] = {
    [MB_FI_MMAP] = "mmap",
    [MB_FI_MUNMAP] = "munmap",
    [MB_FI_MPROTECT] = "mprotect",
    [MB_FI_MEMFD_CREATE] = "memfd_create",
    [MB_FI_FTRUNCATE] = "ftruncate",
    [MB_FI_KVM_SET_REGION] = "kvm_set_region",
    [MB_FI_ALLOC] = "alloc",
};

const char *mb_fi_kind_name(mb_fi_kind kind) {
  return (unsigned)kind < MB_FI_KINDS ? kind_names[kind] : NULL;
}

#ifdef MB_FAULT_INJECTION

/* Invariant: a call fails iff its number (1-based since the reset) is fire_at, or is later
 * and persist is set; fire_at == 0 means disarmed. err and persist are stored before fire_at
 * (release) and read after it (acquire), so a call that sees an armed fire_at sees its errno. */
typedef struct fi_slot {
  atomic_uint_least64_t calls, injected, fire_at;
  atomic_int err;
  atomic_bool persist;
} fi_slot;

static fi_slot slots[MB_FI_KINDS];

bool mb_fi_enabled(void) {
  return true;
}

static int arm(mb_fi_kind kind, uint64_t n, int err, bool persist) {
  if ((unsigned)kind >= MB_FI_KINDS || err <= 0)
    return MB_E_INVALID;
  fi_slot *s = &slots[kind];
  atomic_store_explicit(&s->err, err, memory_order_relaxed);
  atomic_store_explicit(&s->persist, persist, memory_order_relaxed);
  uint64_t at = n == 0 ? 0 : atomic_load(&s->calls) + n;
  atomic_store_explicit(&s->fire_at, at, memory_order_release);
  return 0;
}

int mb_fi_arm(mb_fi_kind kind, uint64_t n, int err) {
  return arm(kind, n, err, false);
}

int mb_fi_arm_persist(mb_fi_kind kind, uint64_t n, int err) {
  return arm(kind, n, err, true);
}

void mb_fi_reset(void) {
  for (int k = 0; k < MB_FI_KINDS; k++) {
    atomic_store(&slots[k].fire_at, 0);
    atomic_store(&slots[k].calls, 0);
    atomic_store(&slots[k].injected, 0);
  }
}

uint64_t mb_fi_calls(mb_fi_kind kind) {
  return (unsigned)kind < MB_FI_KINDS ? atomic_load(&slots[kind].calls) : 0;
}

uint64_t mb_fi_injected(mb_fi_kind kind) {
  return (unsigned)kind < MB_FI_KINDS ? atomic_load(&slots[kind].injected) : 0;
}

static bool trace_injections; /* MB_FI_TRACE=1, set before main */

/* "mb_fi: injected KIND call N at: FILE+0xOFFSET ..." on stderr: return addresses relative to
 * the object they lie in, for addr2line (tests/fault/sweep.py names the functions). */
static void print_trace(mb_fi_kind kind, uint64_t n) {
  void *pcs[24];
  int depth = backtrace(pcs, 24);
  char line[4096];
  size_t len = (size_t)snprintf(line, sizeof line, "mb_fi: injected %s call %llu at:",
                                kind_names[kind] ? kind_names[kind] : "?", (unsigned long long)n);
  for (int i = 1; i < depth && len < sizeof line; i++) {
    Dl_info info;
    if (dladdr(pcs[i], &info) && info.dli_fname && info.dli_fbase)
      len += (size_t)snprintf(line + len, sizeof line - len, " %s+%#lx", info.dli_fname,
                              (unsigned long)((char *)pcs[i] - (char *)info.dli_fbase));
    else
      len += (size_t)snprintf(line + len, sizeof line - len, " %p", pcs[i]);
  }
  fprintf(stderr, "%s\n", line);
}

bool mb__fi_fail(mb_fi_kind kind) {
  fi_slot *s = &slots[kind];
  uint64_t n = atomic_fetch_add_explicit(&s->calls, 1, memory_order_relaxed) + 1;
  uint64_t at = atomic_load_explicit(&s->fire_at, memory_order_acquire);
  if (at == 0 || n < at || (n > at && !atomic_load_explicit(&s->persist, memory_order_relaxed)))
    return false;
  atomic_fetch_add_explicit(&s->injected, 1, memory_order_relaxed);
  if (trace_injections) print_trace(kind, n);
  errno = atomic_load_explicit(&s->err, memory_order_relaxed);
  return true;
}

/* ---- arming from the environment (MB_FI, MB_FI_COUNT: see fault_inject.h) ---------------- */

static int errno_of(const char *s) {
  static const struct {
    const char *name;
    int err;
  } names[] = {{"ENOMEM", ENOMEM}, {"EMFILE", EMFILE}, {"ENFILE", ENFILE}, {"ENOSPC", ENOSPC},
               {"EAGAIN", EAGAIN}, {"EINTR", EINTR},   {"EFAULT", EFAULT}, {"EINVAL", EINVAL},
               {"EEXIST", EEXIST}, {"EPERM", EPERM},   {"EACCES", EACCES}, {"ENODEV", ENODEV},
               {"EBUSY", EBUSY},   {"EIO", EIO}};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strcmp(s, names[i].name) == 0) return names[i].err;
  char *end;
  long v = strtol(s, &end, 10);
  return *s && !*end && v > 0 && v < 4096 ? (int)v : 0;
}

/* One item "KIND:N[:ERRNO]" (modified in place); false when it does not parse. */
static bool parse_item(char *item, mb_fi_kind *kind, uint64_t *n, int *err) {
  char *name = strtok_r(item, ":", &item), *num = strtok_r(NULL, ":", &item);
  char *e = strtok_r(NULL, ":", &item), *end = NULL;
  if (!name || !num || strtok_r(NULL, ":", &item)) return false;
  *kind = MB_FI_KINDS;
  for (int k = 0; k < MB_FI_KINDS; k++)
    if (kind_names[k] && strcmp(name, kind_names[k]) == 0) *kind = (mb_fi_kind)k;
  *n = strtoull(num, &end, 0);
  *err = e ? errno_of(e) : ENOMEM;
  return *kind != MB_FI_KINDS && *num && !*end && *n > 0 && *err > 0;
}

/* Every item parses, or nothing is armed. */
static bool arm_from(const char *spec) {
  struct { mb_fi_kind kind; uint64_t n; int err; } want[MB_FI_KINDS];
  size_t count = 0;
  char *copy = strdup(spec), *rest = copy, *item;
  bool ok = copy != NULL;
  while (ok && (item = strtok_r(rest, ",", &rest))) {
    ok = count < MB_FI_KINDS &&
         parse_item(item, &want[count].kind, &want[count].n, &want[count].err);
    count++;
  }
  free(copy);
  for (size_t i = 0; ok && i < count; i++) mb_fi_arm(want[i].kind, want[i].n, want[i].err);
  return ok && count > 0;
}

static void print_counts(void) {
  for (int k = 0; k < MB_FI_KINDS; k++)
    fprintf(stderr, "mb_fi: %s calls=%llu injected=%llu\n",
            kind_names[k] ? kind_names[k] : "?", (unsigned long long)mb_fi_calls((mb_fi_kind)k),
            (unsigned long long)mb_fi_injected((mb_fi_kind)k));
}

__attribute__((constructor)) static void arm_from_env(void) {
  const char *spec = getenv("MB_FI"), *count = getenv("MB_FI_COUNT");
  const char *trace = getenv("MB_FI_TRACE");
  trace_injections = trace && strcmp(trace, "1") == 0;
  if (spec && *spec && !arm_from(spec))
    fprintf(stderr, "membacking: MB_FI=\"%s\" does not parse (KIND:N[:ERRNO],...): nothing "
                    "armed\n", spec);
  if (count && strcmp(count, "1") == 0) atexit(print_counts);
}

#else /* !MB_FAULT_INJECTION */

bool mb_fi_enabled(void) {
  return false;
}

int mb_fi_arm(mb_fi_kind kind, uint64_t n, int err) {
  (void)kind, (void)n, (void)err;
  return MB_E_UNSUPPORTED;
}

int mb_fi_arm_persist(mb_fi_kind kind, uint64_t n, int err) {
  (void)kind, (void)n, (void)err;
  return MB_E_UNSUPPORTED;
}

void mb_fi_reset(void) {
}

uint64_t mb_fi_calls(mb_fi_kind kind) {
  (void)kind;
  return 0;
}

uint64_t mb_fi_injected(mb_fi_kind kind) {
  (void)kind;
  return 0;
}

#endif
