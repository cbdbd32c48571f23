/* demo_vcpu.c: the VMM's vCPU thread, the part that does not depend on what runs the guest
 * (KVM in demo_kvm.c, the soft vCPU in demo_soft.c):
 *   - the mailbox protocol: at each doorbell, the command the guest finished is reported (a
 *     probe's answer goes back to the VMM's loop) and the next one is put in the mailbox: a
 *     probe the VMM handed over, STOP, or else background work on the guest's counter;
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

/* The command in the mailbox is done: report it. */
static void finish_command(demo_vcpu *v) {
  const demo_mailbox *m = v->mbox;
  if (m->cmd == DEMO_CMD_WORK)
    atomic_fetch_add(v->outcome ? &v->guest_errors : &v->guest_steps, 1);
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
    *m = (demo_mailbox){p->write ? DEMO_CMD_WRITE : DEMO_CMD_READ, p->gpa, p->value, 0};
    return;
  }
  sched_yield(); /* two cores: leave room for the VMM and its memory operations */
  *m = (demo_mailbox){DEMO_CMD_WORK, DEMO_GUEST_COUNTER, 0, 0};
}

bool demo_vcpu_doorbell(demo_vcpu *v) {
  finish_command(v);
  next_command(v);
  return v->mbox->cmd != DEMO_CMD_STOP;
}

/* data NULL: nothing is pending (a memory-fault exit: the instruction did not run), so MMIO
 * cannot be served now; running it again gives an MMIO exit that can. */
int demo_vcpu_exit(demo_vcpu *v, const mb_kvm_exit *ex, uint8_t *data) {
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
  v->current = NULL;
  v->outcome = 0;
  v->retries = 0;
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
