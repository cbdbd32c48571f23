/* demo_vcpu.c: the VMM's vCPU thread, the part that does not depend on what runs the guest
 * (KVM in demo_kvm.c, the soft vCPU in demo_soft.c):
 *   - the mailbox protocol: at each doorbell, the command the guest finished is reported (a
 *     probe's answer goes back to the VMM's loop, a scan's counts to demo_scan) and the next
 *     one is put in the mailbox: a probe the VMM handed over, STOP, or else background work:
 *     the guest's counter, or while the VMM has a scan running, the counter and the scan in
 *     turn;
 *   - the exit question's answer, turned into an action: device MMIO goes to the device model,
 *     a fault fails the command, RAM means the exit raced with a change of the map (retry).
 * The thread never waits for a loop except through the soft partition's accesses. */
#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>

#include "demo.h"

/* RAM answers in a row for one command before the vCPU gives up: an operation in flight keeps
 * the answer RAM only until it completes. */
enum { RETRY_MAX = 1000000 };

static void wake_vmm(mb_loop *loop, void *arg) { (void)loop, (void)arg; }

static void answer(demo_vcpu *v, demo_probe *p, int status) {
  p->status = status;
  v->current = NULL;
  atomic_store(&v->answered, true);
  mb_loop_post(v->vmm_loop, wake_vmm, NULL); /* the VMM loop notices `answered` */
}

static void finish_scan(demo_scan *s, const demo_mailbox *m, int outcome) {
  if (outcome) {
    atomic_fetch_add(&s->failed, 1);
    return;
  }
  atomic_fetch_add(&s->scans, 1);
  atomic_fetch_add(&s->n_value, m->n_value);
  atomic_fetch_add(&s->n_alt, m->n_alt);
  atomic_fetch_add(&s->n_other, m->n_other);
  if (m->n_other)
    atomic_store(&s->other, m->other);
}

/* The command in the mailbox is done: report it. */
static void finish_command(demo_vcpu *v) {
  const demo_mailbox *m = v->mbox;
  if (m->cmd == DEMO_CMD_WORK)
    atomic_fetch_add(v->outcome ? &v->guest_errors : &v->guest_steps, 1);
  if (m->cmd == DEMO_CMD_SCAN)
    finish_scan(&v->scan, m, v->outcome);
  demo_probe *p = v->current;
  if (!p)
    return;
  if (!p->write && v->outcome != MB_E_FAULT)
    p->value = m->result;
  answer(v, p, v->outcome);
}

static void next_command(demo_vcpu *v) {
  demo_mailbox *m = v->mbox;
  v->outcome = 0;
  v->retries = 0;
  if (atomic_load(&v->stop)) {
    *m = (demo_mailbox){.cmd = DEMO_CMD_STOP};
    return;
  }
  demo_probe *p = atomic_exchange(&v->pending, NULL);
  if (p) {
    v->current = p;
    *m = (demo_mailbox){.cmd = p->write ? DEMO_CMD_WRITE : DEMO_CMD_READ, .gpa = p->gpa,
                        .value = p->value};
    return;
  }
  sched_yield(); /* two cores: leave room for the VMM and its memory operations */
  const demo_scan *s = &v->scan;
  v->scan_next = !v->scan_next && atomic_load(&s->scanning);
  if (v->scan_next)
    *m = (demo_mailbox){.cmd = DEMO_CMD_SCAN, .gpa = s->gpa, .value = s->value,
                        .size = s->size, .stride = s->stride, .alt = s->alt};
  else
    *m = (demo_mailbox){.cmd = DEMO_CMD_WORK, .gpa = DEMO_GUEST_COUNTER};
}

bool demo_vcpu_doorbell(demo_vcpu *v) {
  finish_command(v);
  next_command(v);
  return v->mbox->cmd != DEMO_CMD_STOP;
}

/* data NULL: nothing is pending (a memory-fault exit: the instruction did not run), so MMIO
 * cannot be served now; running it again gives an MMIO exit that can. */
int demo_vcpu_exit(demo_vcpu *v, const mb_kvm_exit *ex, uint8_t *data) {
  if (v->mbox->cmd == DEMO_CMD_SCAN)
    atomic_fetch_add(&v->scan.exits, 1);
  if (ex->kind == MB_GPA_MMIO && data) {
    atomic_fetch_add(&v->exits_mmio, 1);
    demo_devices_access(v->dev, ex->gpa, data, (uint32_t)ex->len, ex->write);
    v->outcome = MB_E_MMIO;
    return DEMO_EXIT_EMULATED;
  }
  if (ex->kind == MB_GPA_FAULT) {
    atomic_fetch_add(&v->exits_fault, 1);
    v->outcome = MB_E_FAULT;
    return DEMO_EXIT_FAULT;
  }
  if (ex->kind != MB_GPA_RAM && ex->kind != MB_GPA_MMIO) {
    demo_vcpu_fail(v, "the exit question at 0x%llx answered %s", (unsigned long long)ex->gpa,
                   membacking_strerror(ex->kind));
    return DEMO_EXIT_FAILED;
  }
  atomic_fetch_add(&v->exits_ram, 1);
  if (++v->retries > RETRY_MAX) {
    demo_vcpu_fail(v, "guest RAM at 0x%llx stayed out of the guest's reach",
                   (unsigned long long)ex->gpa);
    return DEMO_EXIT_FAILED;
  }
  if (v->retries > 1)
    sched_yield(); /* let the operation in flight complete */
  return DEMO_EXIT_RETRY;
}

void demo_vcpu_fail(demo_vcpu *v, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("  vCPU FAILED: ");
  vprintf(fmt, ap);
  printf("\n");
  va_end(ap);
  atomic_store(&v->failed, true);
}

static void scan_reset(demo_scan *s) {
  _Atomic uint64_t *counts[] = {&s->scans, &s->n_value, &s->n_alt, &s->n_other,
                                &s->other, &s->failed, &s->exits};
  for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++)
    atomic_store(counts[i], 0);
}

/* ---- the thread, as the VMM sees it -------------------------------------------------------- */

static void *vcpu_main(void *arg) {
  demo_vcpu *v = arg;
  if (v->kvm)
    demo_kvm_vcpu_run(v);
  else
    demo_soft_vcpu_run(v);
  if (v->current)
    answer(v, v->current, -EIO); /* the vCPU failed in the middle of a probe */
  atomic_store(&v->exited, true);
  mb_loop_post(v->vmm_loop, wake_vmm, NULL);
  return NULL;
}

int demo_vcpu_start(demo_vcpu *v) {
  atomic_init(&v->stop, false);
  atomic_init(&v->answered, false);
  atomic_init(&v->exited, false);
  atomic_init(&v->failed, false);
  atomic_init(&v->pending, NULL);
  atomic_init(&v->guest_steps, 0);
  atomic_init(&v->guest_errors, 0);
  atomic_init(&v->exits_mmio, 0);
  atomic_init(&v->exits_fault, 0);
  atomic_init(&v->exits_ram, 0);
  atomic_init(&v->scan.scanning, false);
  scan_reset(&v->scan);
  v->current = NULL;
  v->outcome = 0;
  v->retries = 0;
  v->scan_next = false;
  v->mbox = v->kvm ? demo_kvm_mailbox(v->kvm) : &v->soft_mbox;
  *v->mbox = (demo_mailbox){.cmd = DEMO_CMD_NONE};
  return pthread_create(&v->thread, NULL, vcpu_main, v) ? -1 : 0;
}

/* A soft vCPU may be inside an access through the partition, which runs on the VMM's loop:
 * keep that loop running until the vCPU has left. */
void demo_vcpu_stop(demo_vcpu *v, uv_loop_t *vmm_uv) {
  atomic_store(&v->stop, true);
  while (!atomic_load(&v->exited))
    uv_run(vmm_uv, UV_RUN_ONCE);
  pthread_join(v->thread, NULL);
}

void demo_vcpu_probe(demo_vcpu *v, demo_probe *p) {
  atomic_store(&v->answered, false);
  atomic_store(&v->pending, p);
}

void demo_vcpu_scan_start(demo_vcpu *v, uint64_t gpa, uint64_t size, uint64_t stride,
                          uint64_t value, uint64_t alt) {
  demo_scan *s = &v->scan;
  s->gpa = gpa, s->size = size, s->stride = stride, s->value = value, s->alt = alt;
  scan_reset(s);
  atomic_store(&s->scanning, true); /* publishes the range to the vCPU thread */
}

void demo_vcpu_scan_stop(demo_vcpu *v) { atomic_store(&v->scan.scanning, false); }
