/* mb_hot.h: the mark of the functions a memory operation runs end to end. */
#ifndef MB_HOT_H
#define MB_HOT_H

/* The functions one map, unmap or replace runs from the caller's request to its completion,
 * through every actor on the way: the compiler places them together (.text.hot), so the
 * operation's code spans a few pages instead of being spread over the whole library. On a
 * host with page-table isolation and no PCID the operation's own system call (the mmap)
 * empties the TLB, and each distinct page the path touches after it costs a miss:
 * mapping.replace measured 1.42x -> 1.39x its floor from this placement alone (bench/README).
 * A function earns the mark by being on that path in every operation, not by being fast. */
#define MB_HOT __attribute__((section(".text.hot.membacking")))

/* The planning and ending of the rare kinds (transactions, protections, dirty logging,
 * partitions coming): never inlined into the hot functions that dispatch on a request's kind,
 * which would otherwise spread a map's few hot lines over pages of code it never runs. */
#define MB_COLD __attribute__((noinline, cold))

#endif
