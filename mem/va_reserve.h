/* va_reserve.h: a reserved span of host virtual addresses into which guest memory is mapped.
 *
 * mb_va_reserve takes one PROT_NONE, MAP_NORESERVE anonymous mapping (64 GiB costs nothing
 * but address space). Ranges inside it are then replaced in place (MAP_FIXED) by file
 * mappings, private anonymous memory, or PROT_NONE again. While the reservation lives nothing
 * inside it is ever munmap'd, so no other mmap in the process can land in a hole; only
 * mb_va_release gives the span back.
 *
 * Offsets and lengths are relative to the base, must be 4 KiB aligned, non-zero (len) and
 * inside the reservation; anything else is -EINVAL and changes nothing. System call failures
 * return -errno (each system call goes through fault_inject.h, so tests can fail any one).
 *
 * Threads: reserve/release are called by the owner with no other user of the span. The map
 * functions may run from any thread; calls on disjoint ranges do not interfere, calls on
 * overlapping ranges must be ordered by the caller. Other threads may touch the memory at any
 * time (through mb_access_* if the range may be unmapped).
 */
#ifndef MB_VA_RESERVE_H
#define MB_VA_RESERVE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mb_va {
  uint8_t *base; /* NULL when nothing is reserved; read-only for users */
  uint64_t size; /* bytes, a multiple of 4 KiB; read-only for users */
  /* Drops: the changes that may take rights away from mapped pages, counted as each begins
   * and as it ends. Unmaps, protects to read-only or none and failed maps count themselves;
   * a map over pages that had more rights is bracketed by its caller (mb_va_drop_begin). A
   * drop that begins before a copy's fault and had not ended when the copy began overlapped
   * the copy (mb_va_dropped_since). */
  _Atomic uint64_t drops_begun, drops_ended;
} mb_va;

/* Base alignment of mb_va_reserve: 1 GiB for spans of at least 1 GiB, else 2 MiB, so
 * transparent huge pages and KVM's large pages (which need host and guest addresses equally
 * aligned) can back guest RAM from guest address 0 on. */
#define MB_VA_ALIGN_SMALL (2ull << 20)
#define MB_VA_ALIGN_LARGE (1ull << 30)
static inline uint64_t mb_va_align_for(uint64_t size) {
  return size >= MB_VA_ALIGN_LARGE ? MB_VA_ALIGN_LARGE : MB_VA_ALIGN_SMALL;
}

/* Reserves size bytes (non-zero, 4 KiB aligned) at an address the kernel picks, aligned to
 * mb_va_align_for(size). Only size bytes stay reserved (see mb_va_reserve_aligned). */
int mb_va_reserve(mb_va *va, uint64_t size);
/* Same, with base aligned to align (a power of two >= 4 KiB). Reserves size + align - 4 KiB,
 * then unmaps the excess on both sides; if that fails, gives the whole span back and returns
 * the error. *va is zeroed on failure. */
int mb_va_reserve_aligned(mb_va *va, uint64_t size, uint64_t align);
/* Unmaps the whole span (all mappings in it) and zeroes *va: 0. A zeroed va is a no-op (0).
 * If the kernel refuses (-errno, e.g. -ENOMEM when vm.max_map_count is reached), nothing was
 * released and *va is unchanged: the span is still reserved and the caller may retry. */
int mb_va_release(mb_va *va);

static inline void *mb_va_ptr(const mb_va *va, uint64_t off) {
  return va->base + off;
}

/* 0 if [off, off + len) is a valid non-empty aligned range of the reservation, else -EINVAL. */
int mb_va_check(const mb_va *va, uint64_t off, uint64_t len);

/* Maps fd bytes [fd_off, fd_off + len) shared at off, PROT_READ or PROT_READ|PROT_WRITE.
 * fd_off must be 4 KiB aligned. On failure the range is left PROT_NONE (reserved). */
int mb_va_map_fd(mb_va *va, uint64_t off, uint64_t len, int fd, uint64_t fd_off,
                 bool writable);
/* The same; with thp, then madvise(MADV_HUGEPAGE) on the new mapping (a hint: its failure is
 * ignored). */
int mb_va_map_fd_hint(mb_va *va, uint64_t off, uint64_t len, int fd, uint64_t fd_off,
                      bool writable, bool thp);
/* Maps fresh zeroed private anonymous memory at off. On failure the range is PROT_NONE. */
int mb_va_map_anon(mb_va *va, uint64_t off, uint64_t len, bool writable);
/* Changes access to an already mapped range (read-only or read-write). Only for mapped
 * ranges: on a reserved range it would expose zero pages. On failure part of the range may
 * already have the new protection (mprotect semantics). */
int mb_va_protect(mb_va *va, uint64_t off, uint64_t len, bool writable);
/* Takes every right from an already mapped range: accesses fault, the mapping stays (its
 * bytes come back with mb_va_protect). */
int mb_va_protect_none(mb_va *va, uint64_t off, uint64_t len);
/* Replaces the range by a PROT_NONE reservation again; accesses fault afterwards. */
int mb_va_unmap(mb_va *va, uint64_t off, uint64_t len);

/* Bracket a map that may take rights away: one over pages that had more (a read-only map
 * over writable ones, say). Any thread. */
void mb_va_drop_begin(mb_va *va);
void mb_va_drop_end(mb_va *va);

/* A copy into the span that faults may have written part of the page it faulted on, when a
 * drop took the page's rights away under it (mb_access.h): read mb_va_drops_ended before the
 * copy and, after its fault, ask mb_va_dropped_since with that value. false: no drop
 * overlapped the copy, so the faulting page was out of reach all along and nothing of it was
 * written. */
static inline uint64_t mb_va_drops_ended(mb_va *va) {
  return atomic_load(&va->drops_ended);
}
static inline bool mb_va_dropped_since(mb_va *va, uint64_t ended) {
  return atomic_load(&va->drops_begun) != ended;
}

#ifdef __cplusplus
}
#endif

#endif /* MB_VA_RESERVE_H */
