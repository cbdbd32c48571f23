/* demo.h: membacking-demo, a small event-driven VMM on libuv that embeds membacking in its
 * own loop (attach mode). Shared between its files: the VMM (demo_main.c), the guest's vCPU
 * thread (demo_guest.c) and the latency table (demo_stats.c). */
#ifndef MB_DEMO_H
#define MB_DEMO_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "membacking.h"

/* ---- the vCPU: a thread that runs the guest and answers probes ----------------------------- */

/* A probe: the VMM asks the running guest to read `len` bytes at `gpa` (or write them) and
 * report what happened; the report comes back on the VMM's loop. */
typedef struct demo_probe {
  uint64_t gpa;
  uint32_t len;
  bool write;
  uint8_t data[16];
  int status;          /* 0, MB_E_MMIO, MB_E_FAULT */
} demo_probe;

typedef struct demo_vcpu {
  mb_partition *part;
  mb_loop *vmm_loop;
  pthread_t thread;
  _Atomic bool stop;
  _Atomic(demo_probe *) pending;  /* a probe for the guest, taken by the vCPU thread */
  _Atomic bool answered;          /* set by the vCPU thread, read by the VMM loop */
  _Atomic uint64_t guest_steps;   /* guest work done meanwhile (its own RAM counter) */
  _Atomic uint64_t guest_errors;  /* background accesses that failed (must stay 0) */
  _Atomic bool exited;
} demo_vcpu;

int demo_vcpu_start(demo_vcpu *v, mb_partition *part, mb_loop *vmm_loop);
void demo_vcpu_stop(demo_vcpu *v, uv_loop_t *vmm_uv);
/* Hand the probe to the guest; completes when `answered` is set (the vCPU thread posts a
 * wake-up to the VMM loop). */
void demo_vcpu_probe(demo_vcpu *v, demo_probe *p);

/* ---- latency per kind of operation --------------------------------------------------------- */

enum { DEMO_OP_REGION_MAP, DEMO_OP_REGION_UNMAP, DEMO_OP_ACCESS_CHANGE, DEMO_OP_MAPPING_ADD,
       DEMO_OP_MAPPING_REMOVE, DEMO_OP_REGION_ADD, DEMO_OP_KINDS };

void demo_stats_add(int kind, uint64_t ns);
void demo_stats_print(void);
void demo_stats_free(void);
uint64_t demo_now_ns(void);

/* The guest RAM location the guest increments as its background work. */
#define DEMO_GUEST_COUNTER 0x9000ull

#endif
