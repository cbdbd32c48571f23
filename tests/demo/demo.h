/* demo.h: membacking-demo, a small event-driven VMM on libuv that embeds membacking in its
 * own loop (attach mode) and runs its guest on a vCPU thread of its own. Its files:
 *   demo_main.c     the VMM: its loop, the guest memory map, memory operations, main
 *   demo_story.c    the story: changes to the map, and what the running guest must see
 *   demo_vcpu.c     the vCPU thread's common part: mailbox protocol, the exit question
 *   demo_kvm.c      the VMM's KVM VM and its vCPU (KVM_RUN on the guest program)
 *   demo_soft.c     the soft vCPU: the same program, through the soft partition
 *   demo_guest.c    the guest program (x86-64 machine code) and its mailbox
 *   demo_devices.c  the device model: VGA memory, writes to ROM, unassigned addresses
 *   demo_stats.c    the latency of each kind of memory operation */
#ifndef MB_DEMO_H
#define MB_DEMO_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "membacking.h"

#define KiB (1ull << 10)
#define MiB (1ull << 20)
#define GiB (1ull << 30)

/* ---- the guest program and its mailbox (demo_guest.c) ----------------------------------------
 *
 * The guest runs one command at a time from its mailbox, with real loads and stores, and rings
 * the doorbell (an OUT to DEMO_DOORBELL_PORT) when it is done; the VMM then puts the next
 * command in the mailbox. After STOP the VMM does not run the guest again. SCAN loads 8 bytes
 * every `stride` bytes of [gpa, gpa + size) and counts the loads that found `value`, `alt`
 * or anything else. */
enum { DEMO_CMD_NONE, DEMO_CMD_READ, DEMO_CMD_WRITE, DEMO_CMD_WORK, DEMO_CMD_SCAN, DEMO_CMD_STOP };

typedef struct demo_mailbox {
  uint64_t cmd, gpa, value;  /* written by the VMM while the guest waits at the doorbell */
  uint64_t result;           /* what a READ loaded: written by the guest */
  uint64_t size, stride, alt; /* SCAN: written by the VMM */
  uint64_t n_value, n_alt;   /* SCAN: what the guest counted, */
  uint64_t n_other, other;   /* and the last value that was neither */
} demo_mailbox;

extern const uint8_t demo_guest_code[];
extern const size_t demo_guest_code_size;
enum {
  DEMO_GUEST_EXEC = 0x00,      /* runs the command in the mailbox */
  DEMO_GUEST_DONE = 0x8b,      /* the doorbell; then back to EXEC */
  DEMO_GUEST_MAILBOX = 0x3000, /* the mailbox's distance from the code (RIP-relative) */
  DEMO_DOORBELL_PORT = 0xe0,
};

/* The guest RAM location the guest increments as its background work (DEMO_CMD_WORK). */
#define DEMO_GUEST_COUNTER 0x9000ull

/* ---- the device model (demo_devices.c) ----------------------------------------------------- */

#define DEMO_VGA_BASE 0xa0000ull
#define DEMO_VGA_SIZE (128 * KiB)
#define DEMO_VGA_BLANK 0x20 /* what VGA memory holds before the guest writes it */
#define DEMO_BIOS_BASE 0xc0000ull
#define DEMO_BIOS_END 0x100000ull

typedef struct demo_devices {
  uint8_t *vga; /* VGA memory: touched by the vCPU thread only */
  _Atomic uint64_t vga_reads, vga_writes, rom_writes, unassigned;
} demo_devices;

int demo_devices_init(demo_devices *d);
void demo_devices_free(demo_devices *d);
/* An MMIO access the guest made (vCPU thread): a read fills data[0, len). */
void demo_devices_access(demo_devices *d, uint64_t gpa, uint8_t *data, uint32_t len, bool write);

/* ---- the vCPU (demo_vcpu.c, demo_kvm.c, demo_soft.c) --------------------------------------- */

/* A probe: the VMM asks the running guest to load 8 bytes at gpa (or store `value` there) and
 * report what happened; the report comes back on the VMM's loop. */
typedef struct demo_probe {
  uint64_t gpa;
  uint64_t value;  /* the value to store, or what the load returned */
  bool write;
  int status;      /* 0, MB_E_MMIO (the device model served it), MB_E_FAULT, -EIO (no vCPU) */
} demo_probe;

typedef struct demo_kvm demo_kvm;

/* What the guest scans in the background while `scanning` is set (the VMM fills the range
 * before it sets it), and what the scans found. An exit on the way is a failure of the scan: a
 * range that never has a hole must never make the guest exit. */
typedef struct demo_scan {
  uint64_t gpa, size, stride, value, alt;
  _Atomic bool scanning;
  _Atomic uint64_t scans, n_value, n_alt, n_other, other, failed, exits;
} demo_scan;

typedef struct demo_vcpu {
  /* set before the thread starts, then read-only */
  mb_partition *part;
  mb_mapper *ram;          /* the partitions' VA mapper: RAM for exits that raced a change */
  demo_devices *dev;
  mb_loop *vmm_loop;
  demo_kvm *kvm;           /* NULL: the soft vCPU */
  demo_mailbox *mbox;      /* the guest's (kvm) or soft_mbox */
  demo_mailbox soft_mbox;
  pthread_t thread;
  /* shared between the vCPU thread and the VMM */
  _Atomic bool stop, answered, exited, failed;
  _Atomic(demo_probe *) pending;
  _Atomic uint64_t guest_steps, guest_errors; /* background work done / failed (must be 0) */
  _Atomic uint64_t exits_mmio, exits_fault, exits_ram;
  demo_scan scan;
  /* the vCPU thread's own */
  demo_probe *current;     /* the probe in the mailbox, NULL for background work */
  int outcome;             /* of the command in the mailbox: 0, MB_E_MMIO, MB_E_FAULT */
  unsigned retries;        /* RAM answers in a row for the command in the mailbox */
  bool scan_next;          /* background work alternates WORK and SCAN while scanning */
} demo_vcpu;

int demo_vcpu_start(demo_vcpu *v);
void demo_vcpu_stop(demo_vcpu *v, uv_loop_t *vmm_uv);
/* Hand the probe to the guest; it is answered when `answered` (or `exited`) is set, and the
 * vCPU thread posts a wake-up to the VMM loop then. */
void demo_vcpu_probe(demo_vcpu *v, demo_probe *p);
/* The guest's background work scans [gpa, gpa + size) by stride, counting loads of value, of
 * alt and of anything else, until demo_vcpu_scan_stop (counts start from 0). */
void demo_vcpu_scan_start(demo_vcpu *v, uint64_t gpa, uint64_t size, uint64_t stride,
                          uint64_t value, uint64_t alt);
void demo_vcpu_scan_stop(demo_vcpu *v);

/* vCPU thread: the guest rang the doorbell. Completes the command in the mailbox and puts the
 * next one there; false when that one is STOP. */
bool demo_vcpu_doorbell(demo_vcpu *v);
/* vCPU thread: what to do about a guest access that exited, as the exit question answered it
 * (ex->kind). MMIO: the device model serves it (a read fills data) -> DEMO_EXIT_EMULATED;
 * RAM: the exit raced with a change of the map -> DEMO_EXIT_RETRY; FAULT: the command failed
 * -> DEMO_EXIT_FAULT; a vCPU that retried too often has failed -> DEMO_EXIT_FAILED. data is
 * NULL for an access that is not pending (a memory-fault exit): MMIO then means retry. */
enum { DEMO_EXIT_EMULATED, DEMO_EXIT_RETRY, DEMO_EXIT_FAULT, DEMO_EXIT_FAILED };
int demo_vcpu_exit(demo_vcpu *v, const mb_kvm_exit *ex, uint8_t *data);
/* vCPU thread: something the demo does not expect; says so on stdout, and the vCPU stops. */
void demo_vcpu_fail(demo_vcpu *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The VMM's own KVM VM (demo_kvm.c): /dev/kvm, the VM, its private memory (the guest program,
 * the mailbox, page tables) in slot DEMO_SLOT_PRIVATE above the guest's range, and one vCPU in
 * long mode. membacking gets slots [DEMO_SLOT_FIRST, +DEMO_SLOT_COUNT). 0, or the error of the
 * step named in *step (a negative errno, MB_E_UNSUPPORTED, MB_E_INVALID); a failure at the
 * first step, DEMO_KVM_STEP_OPEN, means this host has no usable /dev/kvm. */
enum { DEMO_SLOT_PRIVATE = 0, DEMO_SLOT_FIRST = 8, DEMO_SLOT_COUNT = 512 };
#define DEMO_KVM_STEP_OPEN "open /dev/kvm"
int demo_kvm_open(demo_kvm **out, uint64_t guest_end, const char **step);
void demo_kvm_close(demo_kvm *k);
int demo_kvm_vm_fd(const demo_kvm *k);
demo_mailbox *demo_kvm_mailbox(demo_kvm *k);
/* The vCPU thread's work until STOP or a failure: on the KVM vCPU (kvm set) or the soft one. */
void demo_kvm_vcpu_run(demo_vcpu *v);
void demo_soft_vcpu_run(demo_vcpu *v);

/* ---- the VMM (demo_main.c) ----------------------------------------------------------------- */

#define DEMO_DAX_GPA (4 * GiB)
#define DEMO_CHUNK (2 * MiB)

typedef struct vmm {
  uv_loop_t uv;
  uv_timer_t tick;
  uint64_t ticks;
  mb_loop *loop;
  mb_mm *mm;
  mb_partition *part;
  mb_mapper *view;  /* the VMM's own view of guest memory (the primary mapper) */
  mb_ram *guest;    /* guest RAM, built by the RAM builder (mb_ram.h), legacy layout */
  mb_object *rom, *dax_a, *dax_b;
  /* RAM regions of the legacy split (pam_c, pam_e: the first 16 KiB window of the segment),
   * the ROM under the BIOS windows (rom_e: the first of its four 16 KiB pieces) */
  mb_region_id low, pam_c, pam_e, pam_f, rom_e, rom_f, high, dax;
  demo_kvm *kvm;    /* NULL: the soft vCPU */
  demo_devices dev;
  demo_vcpu vcpu;
  bool uv_ready, vcpu_running;
  int checks, failures;
} vmm;

/* Memory operations, issued on the VMM's loop; each keeps serving the loop until it completes
 * and records its latency. */
mb_region_id demo_region_add(vmm *v, const char *name, uint64_t gpa, uint64_t size,
                             uint8_t prio, bool device);
int demo_region_map(vmm *v, mb_region_id id, bool writable, int kind);
int demo_region_unmap(vmm *v, mb_region_id id);
int demo_mapping_add(vmm *v, mb_region_id id, uint64_t off, uint64_t size, mb_object *obj,
                     uint64_t obj_off, bool writable);
int demo_mapping_remove(vmm *v, mb_region_id id, uint64_t off, uint64_t size);
int demo_mapping_replace(vmm *v, mb_region_id id, uint64_t off, uint64_t size, mb_object *obj,
                         uint64_t obj_off, bool writable);
int demo_txn_begin(vmm *v);
int demo_txn_commit(vmm *v);
/* The chipset's PAM registers: legacy windows switched in one call (one transaction). */
int demo_ram_windows(vmm *v, const mb_ram_window *w, size_t n, int kind);
/* The operation succeeded, else it is a failure of the story. */
void demo_must(vmm *v, int rc, const char *what);
/* An asynchronous call in flight: pass demo_on_done and the demo_pending as its completion,
 * then demo_finish serves the loop until it completes and returns its status; with kind >= 0
 * it records the latency since t0 under that kind. */
typedef struct demo_pending {
  bool done;
  int status;
  uint64_t value;
} demo_pending;
void demo_on_done(void *ctx, int status, uint64_t value);
int demo_finish(vmm *v, demo_pending *p, int kind, uint64_t t0);

/* ---- the story (demo_story.c) -------------------------------------------------------------- */

void demo_story_boot(vmm *v);
void demo_story_pam(vmm *v);
void demo_story_pam_txn(vmm *v);
void demo_story_dax(vmm *v);
void demo_story_churn(vmm *v, int rounds);
void demo_story_summary(vmm *v);
/* After the vCPU stopped: the guest's counter in its RAM is its work, as the VMM sees it. */
void demo_story_check_counter(vmm *v);

/* ---- latency per kind of operation (demo_stats.c) ------------------------------------------ */

enum { DEMO_OP_REGION_MAP, DEMO_OP_REGION_UNMAP, DEMO_OP_ACCESS_CHANGE, DEMO_OP_MAPPING_ADD,
       DEMO_OP_MAPPING_REMOVE, DEMO_OP_MAPPING_REPLACE, DEMO_OP_TXN_COMMIT, DEMO_OP_REGION_ADD,
       DEMO_OP_KINDS };

void demo_stats_add(int kind, uint64_t ns);
void demo_stats_print(void);
void demo_stats_free(void);
uint64_t demo_now_ns(void);

#endif
