/* partition.h: the partition backend interface. A backend is a hypervisor partition's guest
 * physical address space; the partition mapper actor (actors/partition_mapper.h) drives one
 * instance. Each backend lives in its own file (soft.c, kvm.c) and exports one ops table.
 *
 * Threads: an instance is used by one thread at a time (its partition mapper's loop thread).
 * Ranges: gpa and size are 4 KiB multiples; map() is only called for a range that overlaps no
 * mapped range; unmap() only with exactly a range that map() mapped (a "piece"). A caller that
 * breaks this gets -EEXIST / -ENOENT (never a crash); a malformed range gets MB_E_INVALID. */
#ifndef MB_PARTITION_H
#define MB_PARTITION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mb_errors.h"

typedef struct mb_part_range {
  uint64_t gpa, size;
  bool writable;
} mb_part_range;

typedef struct mb_partition_ops {
  const char *name; /* "soft", "kvm" */
  /* Make an instance for guest addresses below max_addr. 0, or MB_E_UNSUPPORTED when the
   * backend cannot run here (no /dev/kvm), or a negative errno. */
  int (*create)(uint64_t max_addr, void **inst);
  void (*destroy)(void *inst); /* unmaps everything */
  /* Map [gpa, gpa+size) to host memory at host_va (the VA mapper's base + gpa). -ENOSPC when
   * the backend has no room left (kvm: out of memory slots). */
  int (*map)(void *inst, uint64_t gpa, uint64_t size, void *host_va, bool writable);
  int (*unmap)(void *inst, uint64_t gpa, uint64_t size);
  /* A guest access, as the guest's CPU would make it: 0, MB_E_MMIO (not mapped, or a write to
   * a read-only range) or MB_E_FAULT (mapped, but the host memory cannot serve it); decided
   * at the first byte that fails (earlier bytes may have been copied). MB_E_INVALID when
   * gpa + len wraps or exceeds max_addr. */
  int (*access)(void *inst, uint64_t gpa, void *buf, size_t len, bool write);
  /* The mapped ranges in ascending order: writes up to max entries, returns the total. */
  size_t (*ranges)(void *inst, mb_part_range *out, size_t max);
} mb_partition_ops;

extern const mb_partition_ops mb_partition_soft; /* in-process: follows its recorded map */
extern const mb_partition_ops mb_partition_kvm;  /* a KVM VM; MB_E_UNSUPPORTED without /dev/kvm */

#endif
