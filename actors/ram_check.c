/* ram_check.c: the checks of a RAM build, made before anything is allocated, in the order
 * mb_ram.h documents (OpenVMM's GuestMemoryBuilder::build order first: per request the
 * incompatible options, then the layout, alignment, overlap, bounds and shape of the ranges),
 * each with a message that names the request, the range and the sizes. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ram_internal.h"

#define LEGACY_END 0x100000ull

int mb__ram_fail(mb_ram_error *err, int code, mb_ram_reason reason, const char *fmt, ...) {
  if (err == NULL) return code;
  err->code = code;
  err->reason = reason;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof err->message, fmt, ap);
  va_end(ap);
  return code;
}

const char *mb__ram_size(char buf[32], uint64_t bytes) {
  static const char *const units[] = {"GiB", "MiB", "KiB"};
  for (int i = 0; i < 3; i++) {
    uint64_t unit = 1ull << (30 - 10 * i);
    if (bytes >= unit && bytes % unit == 0) {
      snprintf(buf, 32, "%" PRIu64 " %s", bytes / unit, units[i]);
      return buf;
    }
  }
  snprintf(buf, 32, "0x%" PRIx64 " bytes", bytes);
  return buf;
}

/* ---- per request: options that do not go together ------------------------------------------ */

static bool power_of_two(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

static int check_numa(const mb_ram_request *q, size_t i, mb_ram_error *err) {
  int rc = mb_host_numa_check(q->numa_node);
  if (rc == MB_E_UNSUPPORTED)
    return mb__ram_fail(err, rc, MB_RAM_NUMA_UNSUPPORTED,
                        "request %zu: host NUMA node %" PRIu32 " asked for, but this build "
                        "has no libnuma (or the host no NUMA support)", i, q->numa_node);
  if (rc != 0)
    return mb__ram_fail(err, rc, MB_RAM_NUMA_NODE,
                        "request %zu: host NUMA node %" PRIu32 " does not exist on this host",
                        i, q->numa_node);
  return 0;
}

static int check_hugepage_size(const mb_ram_request *q, size_t i, mb_ram_error *err) {
  char a[32];
  uint64_t hp = q->hugepage_size;
  if (!power_of_two(hp) || hp < MB_PAGE_SIZE)
    return mb__ram_fail(err, MB_E_INVALID, MB_RAM_HUGEPAGE_SIZE,
                        "request %zu: hugepage size %s is not a power of two of at least "
                        "4 KiB", i, mb__ram_size(a, hp));
  if (hp != MB_HUGEPAGE_2M && hp != MB_HUGEPAGE_1G)
    return mb__ram_fail(err, MB_E_UNSUPPORTED, MB_RAM_HUGEPAGE_SIZE,
                        "request %zu: hugepage size %s is not supported (2 MiB or 1 GiB)", i,
                        mb__ram_size(a, hp));
  return 0;
}

static int check_hugepages(const mb_ram_request *q, size_t i, bool legacy, mb_ram_error *err) {
  int rc = check_hugepage_size(q, i, err);
  if (rc) return rc;
  char a[32];
  const char *hp = mb__ram_size(a, q->hugepage_size);
  if (q->private_memory)
    return mb__ram_fail(err, MB_E_INVALID, MB_RAM_HUGEPAGE_WITH_PRIVATE,
                        "request %zu: %s hugepages cannot back private memory", i, hp);
  if (q->use_existing_fd)
    return mb__ram_fail(err, MB_E_INVALID, MB_RAM_HUGEPAGE_WITH_EXISTING,
                        "request %zu: %s hugepages cannot back an existing fd (%d)", i, hp,
                        q->existing_fd);
  if (legacy)
    return mb__ram_fail(err, MB_E_INVALID, MB_RAM_HUGEPAGE_WITH_LEGACY,
                        "request %zu: %s hugepages cannot back the x86 legacy layout (its "
                        "windows are 16 KiB)", i, hp);
  return 0;
}

static int check_vtl(const mb_ram_request *q, size_t i, uint8_t vtls, mb_ram_error *err) {
  if (q->vtl <= MB_VTL_MAX && ((vtls >> q->vtl) & 1)) return 0;
  return mb__ram_fail(err, MB_E_INVALID, MB_RAM_VTL,
                      "request %zu: VTL %u, which the manager does not have (VTL mask 0x%x)",
                      i, (unsigned)q->vtl, (unsigned)vtls);
}

static int check_options(const mb_ram_request *q, size_t i, bool legacy, uint8_t vtls,
                         mb_ram_error *err) {
  if (q->private_memory && legacy)
    return mb__ram_fail(err, MB_E_INVALID, MB_RAM_PRIVATE_WITH_LEGACY,
                        "request %zu: private memory cannot back the x86 legacy layout (its "
                        "windows are unmapped and mapped again)", i);
  if (q->private_memory && q->use_existing_fd)
    return mb__ram_fail(err, MB_E_INVALID, MB_RAM_PRIVATE_WITH_EXISTING,
                        "request %zu: private memory cannot reuse an existing fd (%d)", i,
                        q->existing_fd);
  int rc = q->use_numa_node ? check_numa(q, i, err) : 0;
  if (rc == 0 && q->hugepage_size != 0) rc = check_hugepages(q, i, legacy, err);
  if (rc == 0) rc = check_vtl(q, i, vtls, err);
  return rc;
}

/* ---- the ranges ---------------------------------------------------------------------------- */

/* The legacy windows are VTL 0's: a chipset's PAM registers switch what the guest sees. */
static int check_legacy_ram(const mb_ram_config *cfg, mb_ram_error *err) {
  for (size_t i = 0; i < cfg->count; i++)
    for (size_t k = 0; k < cfg->requests[i].count; k++) {
      const mb_ram_range *g = &cfg->requests[i].ranges[k];
      if (g->gpa != 0 || g->size < LEGACY_END) continue;
      if (cfg->requests[i].vtl == 0) return 0;
      return mb__ram_fail(err, MB_E_INVALID, MB_RAM_NO_LEGACY_RAM,
                          "x86 legacy layout: request %zu range %zu covers 1 MiB from 0 but is "
                          "VTL %u's; the legacy windows are VTL 0's", i, k,
                          (unsigned)cfg->requests[i].vtl);
    }
  return mb__ram_fail(err, MB_E_INVALID, MB_RAM_NO_LEGACY_RAM,
                      "x86 legacy layout: no range starts at 0 and covers 1 MiB");
}

static int check_hugepage_align(const mb_ram_config *cfg, mb_ram_error *err) {
  char a[32], b[32];
  for (size_t i = 0; i < cfg->count; i++) {
    const mb_ram_request *q = &cfg->requests[i];
    for (size_t k = 0; q->hugepage_size && k < q->count; k++) {
      const mb_ram_range *g = &q->ranges[k];
      if (((g->gpa | g->size) & (q->hugepage_size - 1)) == 0) continue;
      return mb__ram_fail(err, MB_E_INVALID, MB_RAM_HUGEPAGE_ALIGN,
                          "request %zu range %zu [0x%" PRIx64 ", +%s): not aligned to the "
                          "hugepage size %s", i, k, g->gpa, mb__ram_size(a, g->size),
                          mb__ram_size(b, q->hugepage_size));
    }
  }
  return 0;
}

/* Every range of every request, with where it came from, for the overlap check. */
typedef struct flat_range {
  uint64_t start, end; /* end saturates: a range that wraps is past any max address */
  size_t req, idx;
} flat_range;

static int by_start(const void *a, const void *b) {
  const flat_range *x = a, *y = b;
  return x->start < y->start ? -1 : x->start > y->start;
}

static int overlap_error(const flat_range *x, const flat_range *y, mb_ram_error *err) {
  return mb__ram_fail(err, MB_E_OVERLAP, MB_RAM_OVERLAP,
                      "request %zu range %zu [0x%" PRIx64 ", 0x%" PRIx64 ") overlaps request "
                      "%zu range %zu [0x%" PRIx64 ", 0x%" PRIx64 ")", x->req, x->idx, x->start,
                      x->end, y->req, y->idx, y->start, y->end);
}

static int check_overlap(const mb_ram_config *cfg, size_t total, mb_ram_error *err) {
  flat_range *f = calloc(total ? total : 1, sizeof *f);
  if (f == NULL) return mb__ram_fail(err, MB_ENOMEM, MB_RAM_ALLOC, "out of memory");
  size_t n = 0;
  for (size_t i = 0; i < cfg->count; i++)
    for (size_t k = 0; k < cfg->requests[i].count; k++) {
      const mb_ram_range *g = &cfg->requests[i].ranges[k];
      uint64_t end = g->size > UINT64_MAX - g->gpa ? UINT64_MAX : g->gpa + g->size;
      if (g->size) f[n++] = (flat_range){g->gpa, end, i, k};
    }
  qsort(f, n, sizeof *f, by_start);
  int rc = 0;
  for (size_t j = 1; j < n && rc == 0; j++)
    if (f[j].start < f[j - 1].end) rc = overlap_error(&f[j - 1], &f[j], err);
  free(f);
  return rc;
}

static int check_bounds(const mb_ram_config *cfg, uint64_t max_addr, mb_ram_error *err) {
  char a[32], b[32];
  for (size_t i = 0; i < cfg->count; i++)
    for (size_t k = 0; k < cfg->requests[i].count; k++) {
      const mb_ram_range *g = &cfg->requests[i].ranges[k];
      if (g->gpa <= max_addr && g->size <= max_addr - g->gpa) continue;
      return mb__ram_fail(err, MB_E_INVALID, MB_RAM_PAST_MAX,
                          "request %zu range %zu [0x%" PRIx64 ", +%s) ends past the manager's "
                          "max address 0x%" PRIx64 " (%s)", i, k, g->gpa,
                          mb__ram_size(a, g->size), max_addr, mb__ram_size(b, max_addr));
    }
  return 0;
}

static int check_shape(const mb_ram_config *cfg, mb_ram_error *err) {
  char a[32];
  if (cfg->count == 0)
    return mb__ram_fail(err, MB_E_INVALID, MB_RAM_EMPTY_OR_UNALIGNED, "no backing requests");
  for (size_t i = 0; i < cfg->count; i++) {
    const mb_ram_request *q = &cfg->requests[i];
    if (q->count == 0 || q->ranges == NULL)
      return mb__ram_fail(err, MB_E_INVALID, MB_RAM_EMPTY_OR_UNALIGNED,
                          "request %zu has no ranges", i);
    for (size_t k = 0; k < q->count; k++) {
      const mb_ram_range *g = &q->ranges[k];
      if (g->size != 0 && mb_page_aligned(g->gpa | g->size)) continue;
      return mb__ram_fail(err, MB_E_INVALID, MB_RAM_EMPTY_OR_UNALIGNED,
                          "request %zu range %zu [0x%" PRIx64 ", +%s): %s", i, k, g->gpa,
                          mb__ram_size(a, g->size),
                          g->size ? "not 4 KiB aligned" : "empty");
    }
  }
  return 0;
}

/* Requests with no range array are looked at as having none, so every step can loop over
 * them; check_shape reports them last. */
int mb__ram_check(const mb_ram_config *cfg, uint64_t max_addr, uint8_t vtls, mb_ram_error *err) {
  if (cfg == NULL || (cfg->count && cfg->requests == NULL))
    return mb__ram_fail(err, MB_E_INVALID, MB_RAM_EMPTY_OR_UNALIGNED, "no configuration");
  mb_ram_config c = *cfg;
  mb_ram_request *q = calloc(c.count ? c.count : 1, sizeof *q);
  if (q == NULL) return mb__ram_fail(err, MB_ENOMEM, MB_RAM_ALLOC, "out of memory");
  size_t total = 0;
  for (size_t i = 0; i < c.count; i++) {
    q[i] = cfg->requests[i];
    if (q[i].ranges == NULL) q[i].count = 0;
    total += q[i].count;
  }
  c.requests = q;
  int rc = 0;
  for (size_t i = 0; i < c.count && rc == 0; i++) rc = check_options(&q[i], i, c.x86_legacy, vtls, err);
  if (rc == 0 && c.x86_legacy) rc = check_legacy_ram(&c, err);
  if (rc == 0) rc = check_hugepage_align(&c, err);
  if (rc == 0) rc = check_overlap(&c, total, err);
  if (rc == 0) rc = check_bounds(&c, max_addr, err);
  if (rc == 0) rc = check_shape(cfg, err);
  free(q);
  return rc;
}
