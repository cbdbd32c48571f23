/* protect_page.h: what protect.kvm (bench_protect.c) and its floor syscalls.slot_split
 * (baseline_slot_split.c) share: the guest's shape and the page both sides protect.
 *
 * 1 GiB of RAM at GPA 0 (one memfd, one memory slot while nothing is protected) in a guest
 * range of 4 GiB, so both VMs place their private memory (kvm_vcpu.h: slot 0, at the end of
 * the guest range) at the same GPA. The page is the first of the RAM's second half: a
 * protection splits the slot into two halves around it. */
#ifndef MB_BENCH_PROTECT_PAGE_H
#define MB_BENCH_PROTECT_PAGE_H

#include <stdint.h>

#define PROTECT_MAX_ADDR ((uint64_t)4 << 30) /* the guest range */
#define PROTECT_RAM_SIZE ((uint64_t)1 << 30) /* the RAM at GPA 0: 1 GiB */
#define PROTECT_PAGE_SIZE ((uint64_t)4096)
#define PROTECT_GPA (PROTECT_RAM_SIZE / 2) /* the page protected ro, then rw again */

#endif
