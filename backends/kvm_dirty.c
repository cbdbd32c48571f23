/* kvm_dirty.c: dirty logging of the kvm_attach slots (the protocol is in mb_partition.h).
 *
 * Each writable slot of membacking's carries KVM_MEM_LOG_DIRTY_PAGES while tracking is on
 * (pc->logging says whether it does: it changes only when the kernel said yes). The kernel
 * keeps one bit per page of the slot. In manual mode (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) a
 * KVM_GET_DIRTY_LOG copies the bits out and leaves them, and KVM_CLEAR_DIRTY_LOG clears the
 * bits it is given and write-protects those pages again; it takes a first page that is a
 * multiple of 64 and a count that is a multiple of 64 unless it runs to the slot's end. So a
 * collect clears exactly the bits it read, within the range widened to those boundaries, and
 * moves exactly those into the set: a bit it does not clear stays in the kernel and is moved
 * by a later collect, and none is moved twice. In legacy mode the GET clears everything it
 * answers, so all of it goes into the set. */
#include <errno.h>
#include <stdlib.h>

#include "dirty_set.h"
#include "kvm_attach.h"
#include "mb_range.h"

#if defined(__linux__)

#include <linux/kvm.h>
#include <sys/ioctl.h>

/* ---- the kernel's calls, or the VMM's hooks --------------------------------------------- */

static int get_log(mb_kvm_attach *a, uint32_t slot, uint64_t *bits) {
  struct kvm_dirty_log l = {.slot = slot, .dirty_bitmap = bits};
  if (a->get_dirty_log)
    return a->get_dirty_log(a->hook_ctx, &l);
  return ioctl(a->vm_fd, KVM_GET_DIRTY_LOG, &l) < 0 ? -errno : 0;
}

static int clear_log(mb_kvm_attach *a, uint32_t slot, uint64_t first, uint64_t n,
                     uint64_t *bits) {
  struct kvm_clear_dirty_log l = {
      .slot = slot, .num_pages = (uint32_t)n, .first_page = first, .dirty_bitmap = bits};
  if (a->clear_dirty_log)
    return a->clear_dirty_log(a->hook_ctx, &l);
  return ioctl(a->vm_fd, KVM_CLEAR_DIRTY_LOG, &l) < 0 ? -errno : 0;
}

static int enable_manual(mb_kvm_attach *a) {
  struct kvm_enable_cap cap = {.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                               .args = {KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE}};
  if (a->enable_cap)
    return a->enable_cap(a->hook_ctx, &cap);
  return ioctl(a->vm_fd, KVM_ENABLE_CAP, &cap) < 0 ? -errno : 0;
}

/* Manual mode if the kernel has it, else legacy; decided once. */
static int choose_mode(mb_kvm_attach *a) {
  if (a->log_mode != MB_KVM_LOG_UNKNOWN)
    return 0;
  int rc = enable_manual(a);
  if (rc == -EINVAL || rc == -ENOTTY) /* no such capability here */
    a->log_mode = MB_KVM_LOG_LEGACY, rc = 0;
  else if (rc == 0)
    a->log_mode = MB_KVM_LOG_MANUAL;
  return rc;
}

/* ---- one slot's log ----------------------------------------------------------------------- */

static uint64_t piece_pages(const mb_piece *pc) {
  return (pc->node.end - pc->node.start) / MB_PAGE_SIZE;
}

/* The piece's log into a->log (grown as needed): 0 or -errno. Whole 64-bit words: the kernel
 * writes its bitmap in longs. */
static int read_log(mb_kvm_attach *a, mb_piece *pc) {
  size_t words = (size_t)((piece_pages(pc) + 63) / 64);
  if (words > a->log_words) {
    uint64_t *log = realloc(a->log, words * sizeof *log);
    if (!log)
      return -ENOMEM;
    a->log = log, a->log_words = words;
  }
  return get_log(a, pc->slot, a->log);
}

/* Moves the bits of a->log in words [w0, w1) of the piece's log into the set, clearing them in
 * the kernel first in manual mode (zero words at the ends are left out: nothing to clear). */
static int move_words(mb_kvm_attach *a, mb_piece *pc, size_t w0, size_t w1, bool mark) {
  while (w0 < w1 && a->log[w0] == 0)
    w0++;
  while (w1 > w0 && a->log[w1 - 1] == 0)
    w1--;
  if (w0 == w1)
    return 0;
  uint64_t first = (uint64_t)w0 * 64, npages = piece_pages(pc);
  uint64_t n = ((uint64_t)w1 * 64 < npages ? (uint64_t)w1 * 64 : npages) - first;
  if (a->log_mode == MB_KVM_LOG_MANUAL) {
    int rc = clear_log(a, pc->slot, first, n, &a->log[w0]);
    if (rc != 0)
      return rc;
  }
  if (mark)
    mb_dirty_set_mark_bitmap(a->dirty, pc->node.start + first * MB_PAGE_SIZE, &a->log[w0], n);
  return 0;
}

/* The piece's whole log: into the set (mark) or forgotten. */
static int take_whole(mb_kvm_attach *a, mb_piece *pc, bool mark) {
  int rc = read_log(a, pc);
  return rc ? rc : move_words(a, pc, 0, (size_t)((piece_pages(pc) + 63) / 64), mark);
}

int mb__kvm_dirty_save(mb_kvm_attach *a, mb_piece *pc) {
  return take_whole(a, pc, true);
}

/* The part of the piece's log in [gpa, end) (which overlaps it), widened to 64 pages. */
static int collect_piece(mb_kvm_attach *a, mb_piece *pc, uint64_t gpa, uint64_t end) {
  int rc = read_log(a, pc);
  if (rc != 0)
    return rc;
  uint64_t npages = piece_pages(pc);
  if (a->log_mode == MB_KVM_LOG_LEGACY) /* the kernel cleared it all: keep it all */
    return move_words(a, pc, 0, (size_t)((npages + 63) / 64), true);
  uint64_t lo = gpa > pc->node.start ? gpa : pc->node.start;
  uint64_t hi = end < pc->node.end ? end : pc->node.end;
  uint64_t p0 = (lo - pc->node.start) / MB_PAGE_SIZE, p1 = (hi - pc->node.start) / MB_PAGE_SIZE;
  return move_words(a, pc, (size_t)(p0 / 64), (size_t)((p1 + 63) / 64), true);
}

/* ---- the partition's calls --------------------------------------------------------------- */

/* Logging off again for the writable pieces before stop (a failed start). */
static void unlog_before(mb_kvm_attach *a, mb_piece *stop) {
  for (mb_rtree_node *n = mb_rtree_first(&a->pieces); n && mb_piece_of(n) != stop;
       n = mb_rtree_next(n))
    if (mb_piece_of(n)->logging)
      (void)mb__kvm_attach_relog(a, mb_piece_of(n), false);
}

/* Logging on for one writable piece. A slot still logging from before (a stop that could not
 * clear its flag) has its old log emptied first: it holds writes from before the start. */
static int log_piece(mb_kvm_attach *a, mb_piece *pc) {
  if (pc->logging)
    return take_whole(a, pc, false);
  return pc->writable ? mb__kvm_attach_relog(a, pc, true) : 0;
}

int mb__kvm_dirty_start(mb_kvm_attach *a, mb_dirty_set *set) {
  if (a->dirty || !set)
    return MB_E_INVALID;
  int rc = choose_mode(a);
  if (rc != 0)
    return rc;
  for (mb_rtree_node *n = mb_rtree_first(&a->pieces); n; n = mb_rtree_next(n)) {
    if ((rc = log_piece(a, mb_piece_of(n))) != 0) {
      unlog_before(a, mb_piece_of(n));
      return rc;
    }
  }
  a->dirty = set;
  return 0;
}

int mb__kvm_dirty_collect(mb_kvm_attach *a, uint64_t gpa, uint64_t size) {
  if (!a->dirty || !mb_page_aligned(gpa | size) || size > a->max_addr ||
      gpa > a->max_addr - size)
    return MB_E_INVALID;
  if (size == 0)
    return 0;
  uint64_t end = gpa + size;
  for (mb_rtree_node *n = mb_rtree_first_overlap(&a->pieces, gpa, end); n;
       n = mb_rtree_next_overlap(n, gpa, end)) {
    if (!mb_piece_of(n)->logging)
      continue;
    int rc = collect_piece(a, mb_piece_of(n), gpa, end);
    if (rc != 0)
      return rc;
  }
  return 0;
}

void mb__kvm_dirty_stop(mb_kvm_attach *a) {
  for (mb_rtree_node *n = mb_rtree_first(&a->pieces); n; n = mb_rtree_next(n))
    if (mb_piece_of(n)->logging)
      (void)mb__kvm_attach_relog(a, mb_piece_of(n), false); /* else it logs on, unread */
  a->dirty = NULL;
  free(a->log);
  a->log = NULL;
  a->log_words = 0;
}

#endif
