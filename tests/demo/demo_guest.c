/* demo_guest.c: the guest's vCPU thread. It runs all the time: between probes it does guest
 * work (increments a counter in its RAM through the partition's view), and when the VMM hands
 * it a probe it performs that access and reports the outcome. It owns no loop: every access
 * is a blocking call into the partition, as a vCPU thread's exits would be. */
#include <pthread.h>
#include <sched.h>
#include <string.h>

#include "demo.h"

static void guest_work(demo_vcpu *v) {
  uint8_t b[8];
  uint64_t n;
  int rc = mb_partition_access_sync(v->part, DEMO_GUEST_COUNTER, b, sizeof b, false);
  if (!rc) {
    memcpy(&n, b, sizeof n);
    n++;
    memcpy(b, &n, sizeof n);
    rc = mb_partition_access_sync(v->part, DEMO_GUEST_COUNTER, b, sizeof b, true);
  }
  if (rc) atomic_fetch_add(&v->guest_errors, 1);
  else atomic_fetch_add(&v->guest_steps, 1);
}

static void wake_vmm(mb_loop *loop, void *arg) { (void)loop, (void)arg; }

static void answer(demo_vcpu *v, demo_probe *p) {
  p->status = mb_partition_access_sync(v->part, p->gpa, p->data, p->len, p->write);
  atomic_store(&v->answered, true);
  mb_loop_post(v->vmm_loop, wake_vmm, NULL); /* the VMM loop notices `answered` */
}

static void *vcpu_main(void *arg) {
  demo_vcpu *v = arg;
  while (!atomic_load(&v->stop)) {
    demo_probe *p = atomic_exchange(&v->pending, NULL);
    if (p) answer(v, p);
    else guest_work(v);
    sched_yield(); /* two cores: leave room for the VMM and the mapper */
  }
  atomic_store(&v->exited, true);
  mb_loop_post(v->vmm_loop, wake_vmm, NULL);
  return NULL;
}

int demo_vcpu_start(demo_vcpu *v, mb_partition *part, mb_loop *vmm_loop) {
  v->part = part;
  v->vmm_loop = vmm_loop;
  atomic_init(&v->stop, false);
  atomic_init(&v->pending, NULL);
  atomic_init(&v->answered, false);
  atomic_init(&v->guest_steps, 0);
  atomic_init(&v->guest_errors, 0);
  atomic_init(&v->exited, false);
  return pthread_create(&v->thread, NULL, vcpu_main, v) ? -1 : 0;
}

/* The vCPU may be inside a call into the partition, which runs on the VMM's loop: keep that
 * loop running until the vCPU has left. */
void demo_vcpu_stop(demo_vcpu *v, uv_loop_t *vmm_uv) {
  atomic_store(&v->stop, true);
  while (!atomic_load(&v->exited)) uv_run(vmm_uv, UV_RUN_ONCE);
  pthread_join(v->thread, NULL);
}

void demo_vcpu_probe(demo_vcpu *v, demo_probe *p) {
  atomic_store(&v->answered, false);
  atomic_store(&v->pending, p);
}
