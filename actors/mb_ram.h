/* mb_ram.h: a VM's RAM built the way a VMM describes it, in one call (OpenVMM's
 * GuestMemoryBuilder, RamBackingRequest and RamVisibilityControl), on top of the manager's
 * regions and mappings (membacking.h). Included by membacking.h.
 *
 * A build takes backing requests: each is a list of guest ranges laid back to back in one
 * backing object (one per host NUMA node, or one for the VM), in list order from object
 * offset 0. For each range it adds a RAM region (priority MB_RAM_PRIORITY, named "ram"), maps
 * the backing into it read-write, and maps the region; the regions are the request's VTL's
 * (mb_region_params.vtl: VTL 2's private memory, say, which lower VTLs do not see). With
 * x86_legacy, the range that starts at 0 and covers 1 MiB (VTL 0's) is split at 0xa0000,
 * 0xc0000, every 16 KiB up to 0xf0000, and 0x100000: 16 regions, the VGA window and each PAM
 * window a region of its own, whose RAM visibility mb_ram_set_visibility switches as a
 * chipset's PAM registers do.
 *
 * Errors: every call returns 0 or a code of membacking.h (MB_E_*, the runtime's, a negative
 * errno for what the host refused), and the build and visibility calls also fill the
 * caller's mb_ram_error (may be NULL) with that code, which check failed (mb_ram_reason), and
 * a message that names the request, the range and the sizes. The build checks everything
 * before it allocates anything, in this order (the first failure is reported):
 *   for each request, in order:
 *     1. private memory with the legacy layout           MB_RAM_PRIVATE_WITH_LEGACY
 *     2. private memory with an existing fd               MB_RAM_PRIVATE_WITH_EXISTING
 *     3. a NUMA node: no libnuma in this build            MB_RAM_NUMA_UNSUPPORTED
 *        (MB_E_UNSUPPORTED); a node the host lacks        MB_RAM_NUMA_NODE (MB_E_INVALID)
 *     4. a hugepage size not a power of two (MB_E_INVALID), or not 2 MiB or 1 GiB, the
 *        sizes x86 hugetlb has (MB_E_UNSUPPORTED)          MB_RAM_HUGEPAGE_SIZE
 *     5. hugepages with private memory                    MB_RAM_HUGEPAGE_WITH_PRIVATE
 *     6. hugepages with an existing fd                    MB_RAM_HUGEPAGE_WITH_EXISTING
 *     7. hugepages with the legacy layout                 MB_RAM_HUGEPAGE_WITH_LEGACY
 *     8. a VTL the manager does not have                  MB_RAM_VTL
 *   9. legacy layout without a VTL-0 range [0, >= 1 MiB)  MB_RAM_NO_LEGACY_RAM
 *  10. a hugepage request's range not aligned to its hugepage size    MB_RAM_HUGEPAGE_ALIGN
 *  11. two ranges that overlap (in one request or two, whatever their VTLs)
 *                                                        MB_RAM_OVERLAP (MB_E_OVERLAP)
 *  12. a range past the manager's max address            MB_RAM_PAST_MAX
 *  13. no requests, a request with no ranges, an empty range, a range not 4 KiB aligned
 *                                                        MB_RAM_EMPTY_OR_UNALIGNED
 * (all MB_E_INVALID unless said). Then it allocates: objects first (MB_RAM_ALLOC: the host's
 * refusal; a hugetlb pool that is short is -ENOSPC and the message gives the size, the
 * hugepage size and the page count), then regions (MB_RAM_REGION: the manager's refusal,
 * e.g. MB_E_OVERLAP with a region the VMM added before). A failure at any point undoes
 * everything done so far: no region, object or fd is left.
 *
 * Threads: mb_ram_build, mb_ram_set_visibility and mb_ram_destroy are asynchronous as in
 * membacking.h: call them on a thread that runs a runtime loop; done(ctx, status, value)
 * runs later on that loop, exactly once, never inside the call (value: the mb_ram * of a
 * build). The _sync forms block: call them from a thread that runs none of the manager's
 * loops (its loop, part_loop, its mappers' and partitions' loops), as every _sync call of
 * membacking.h (MB_EDEADLK otherwise). Objects are created (and, with prefetch, populated)
 * on the calling thread inside the call, in both forms. One mb_ram is used by one thread at a
 * time (the VMM's, as its chipset model): its calls must not overlap. The regions are the
 * manager's: mb_region_state and mb_mm_inspect see them; change a legacy window's visibility
 * through mb_ram_set_visibility only (it remembers what it set). mb_ram_region_count/
 * mb_ram_region are plain reads, any thread.
 */
#ifndef MB_RAM_H
#define MB_RAM_H

#include "membacking.h"

#ifdef __cplusplus
extern "C" {
#endif

/* OpenVMM's priorities: RAM overrides anything else; device regions (ROM, MMIO) lie below. */
enum { MB_RAM_PRIORITY = 255, MB_DEVICE_PRIORITY = 0 };

typedef struct mb_ram mb_ram;

typedef struct mb_ram_range {
  uint64_t gpa, size;
} mb_ram_range;

typedef struct mb_ram_request {
  const mb_ram_range *ranges; /* laid back to back in the backing, in this order */
  size_t count;
  bool private_memory;        /* private memory (MB_OBJECT_ANON) instead of a shared memfd */
  bool use_existing_fd;       /* reuse existing_fd (restore path): imported with
                               * mb_object_import_fd for the requests's total size; the caller
                               * keeps its fd; its contents show in guest memory */
  int existing_fd;
  uint64_t hugepage_size;     /* 0: normal pages; MB_HUGEPAGE_2M or MB_HUGEPAGE_1G: a hugetlb
                               * memfd, every page reserved at build time */
  bool transparent_hugepages; /* MADV_HUGEPAGE on every mapping of the backing */
  bool prefetch;              /* allocate every page at build time */
  bool use_numa_node;         /* bind the backing's pages to host NUMA node numa_node */
  uint32_t numa_node;
  uint8_t vtl;                /* whose RAM it is: seen by that VTL and higher ones (0: VTL 0's,
                               * everybody's) */
} mb_ram_request;

typedef struct mb_ram_config {
  const mb_ram_request *requests;
  size_t count;
  bool x86_legacy;            /* split [0, 1 MiB) into the PC's windows (above) */
} mb_ram_config;

typedef enum mb_ram_reason {
  MB_RAM_OK = 0,
  MB_RAM_PRIVATE_WITH_LEGACY,
  MB_RAM_PRIVATE_WITH_EXISTING,
  MB_RAM_NUMA_UNSUPPORTED,
  MB_RAM_NUMA_NODE,
  MB_RAM_HUGEPAGE_SIZE,
  MB_RAM_HUGEPAGE_WITH_PRIVATE,
  MB_RAM_HUGEPAGE_WITH_EXISTING,
  MB_RAM_HUGEPAGE_WITH_LEGACY,
  MB_RAM_NO_LEGACY_RAM,
  MB_RAM_HUGEPAGE_ALIGN,
  MB_RAM_OVERLAP,
  MB_RAM_PAST_MAX,
  MB_RAM_EMPTY_OR_UNALIGNED,
  MB_RAM_ALLOC,               /* creating or importing a backing object failed */
  MB_RAM_REGION,              /* the manager refused a region or mapping operation */
  MB_RAM_BAD_WINDOW,          /* visibility: no legacy window with exactly this range, a
                               * window twice, or an unknown visibility */
  MB_RAM_VTL,                 /* a request at a VTL the manager does not have */
} mb_ram_reason;

enum { MB_RAM_MESSAGE_MAX = 256 };
typedef struct mb_ram_error {
  int code;                   /* what the call returns (or passes to done) */
  mb_ram_reason reason;
  char message[MB_RAM_MESSAGE_MAX]; /* "" when code is 0 */
} mb_ram_error;

/* Build the RAM (see above). The config and its arrays are read inside the call only; err
 * (if not NULL) must stay valid until done runs. */
void mb_ram_build(mb_mm *mm, const mb_ram_config *cfg, mb_ram_error *err, mb_done_fn done,
                  void *ctx);
int mb_ram_build_sync(mb_mm *mm, const mb_ram_config *cfg, mb_ram **out, mb_ram_error *err);

/* Remove every region of the RAM and drop its objects, then free it (ram is invalid after
 * the call, whatever it answers). 0, or the first removal the manager refused; the objects
 * go anyway. Destroy the RAM before its manager (mb_mm_destroy). */
void mb_ram_destroy(mb_ram *ram, mb_done_fn done, void *ctx);
int mb_ram_destroy_sync(mb_ram *ram);

/* The regions the build made, in guest address order: count, and the i-th one's range and
 * id (false for i out of range). */
size_t mb_ram_region_count(const mb_ram *ram);
bool mb_ram_region(const mb_ram *ram, size_t i, mb_ram_range *range, mb_region_id *id);

/* ---- RAM visibility control (the chipset's PAM registers) ------------------------------------
 *
 * A legacy window (one of the 16 regions of the split, named by its exact range) is RAM
 * read-write (mb_region_map writable), RAM read-only (mapped read-only: guest writes exit as
 * MMIO, to the device below or to nothing), or not RAM (unmapped: the ROM or device region
 * below shows, or nothing). A call switches every window it lists in ONE transaction
 * (mb_txn_begin/commit): every consumer moves from the old map to the new at once, and a
 * failure (an mmap, a KVM slot change) leaves every window as it was. Windows already as
 * asked cost nothing. MB_E_INVALID (MB_RAM_BAD_WINDOW) for a range that is not exactly a
 * legacy window, a window listed twice, or an unknown visibility, before anything changes;
 * the manager's own MB_E_INVALID when a transaction is already open. Under the default
 * overlap policy (MB_OVERLAP_NESTED) a ROM or device region below a window has the window's
 * range (or lies inside it); MB_OVERLAP_ANY admits one ROM under several windows. */
typedef enum mb_ram_visibility {
  MB_RAM_RW = 0,              /* the state after a build */
  MB_RAM_RO = 1,
  MB_RAM_NONE = 2,
} mb_ram_visibility;

typedef struct mb_ram_window {
  uint64_t gpa, size;
  mb_ram_visibility vis;
} mb_ram_window;

/* The windows are read inside the call only. */
void mb_ram_set_visibility(mb_ram *ram, const mb_ram_window *w, size_t n, mb_ram_error *err,
                           mb_done_fn done, void *ctx);
int mb_ram_set_visibility_sync(mb_ram *ram, const mb_ram_window *w, size_t n,
                               mb_ram_error *err);
/* A window's visibility now (MB_RAM_RW for RAM that is not a legacy window), or -1 for a
 * range that is no region of the RAM. */
int mb_ram_visibility_of(const mb_ram *ram, uint64_t gpa, uint64_t size);

#ifdef __cplusplus
}
#endif
#endif
