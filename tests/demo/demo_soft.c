/* demo_soft.c: the soft vCPU, for hosts without /dev/kvm. It runs the guest program's steps
 * (demo_guest.c) in C on the same mailbox protocol, and makes each load and store the way the
 * soft partition's CPU would: mb_partition_access_sync is its memory path, nothing more. When
 * that CPU cannot make an access (MB_E_MMIO or MB_E_FAULT: where KVM would exit), the vCPU
 * takes the exit exactly as the KVM vCPU does: it asks the exit question
 * (mb_partition_classify) and acts on the answer (demo_vcpu_exit): the device model serves
 * MMIO, a fault fails the command, RAM (the exit raced with a change of the map) runs the
 * access again. */
#include <errno.h>
#include <string.h>

#include "demo.h"

/* One 8-byte load or store by the guest: 0 once it is done (by memory or the device model),
 * MB_E_FAULT, or -EIO when the vCPU failed. */
static int guest_access(demo_vcpu *v, uint64_t gpa, uint8_t buf[8], bool write) {
  for (;;) {
    int rc = mb_partition_access_sync(v->part, gpa, buf, 8, write);
    if (rc == 0)
      return 0;
    if (rc != MB_E_MMIO && rc != MB_E_FAULT) {
      demo_vcpu_fail(v, "the soft CPU's access at 0x%llx: %s", (unsigned long long)gpa,
                     membacking_strerror(rc));
      return -EIO;
    }
    mb_kvm_exit ex = {mb_partition_classify(v->part, gpa, 8, write), gpa, 8, write};
    switch (demo_vcpu_exit(v, &ex, buf)) {
    case DEMO_EXIT_EMULATED:
      return 0;
    case DEMO_EXIT_RETRY:
      continue;
    case DEMO_EXIT_FAULT:
      return MB_E_FAULT;
    default:
      return -EIO;
    }
  }
}

/* The program's SCAN: its counts are written once every load is done, as the program does. */
static void exec_scan(demo_vcpu *v, demo_mailbox *m) {
  uint64_t n[3] = {0, 0, 0}, other = 0;
  for (uint64_t off = 0; off < m->size; off += m->stride) {
    uint8_t b[8];
    uint64_t x;
    if (guest_access(v, m->gpa + off, b, false) != 0)
      return;
    memcpy(&x, b, sizeof x);
    int k = x == m->value ? 0 : x == m->alt ? 1 : 2;
    n[k]++;
    if (k == 2)
      other = x;
  }
  m->n_value = n[0], m->n_alt = n[1], m->n_other = n[2];
  if (n[2])
    m->other = other;
}

/* The program's READ, WRITE, WORK (which is `inc qword [gpa]`: a load, then a store) and SCAN. */
static void exec_command(demo_vcpu *v, demo_mailbox *m) {
  uint8_t b[8];
  uint64_t n;
  switch (m->cmd) {
  case DEMO_CMD_READ:
    if (guest_access(v, m->gpa, b, false) == 0)
      memcpy(&m->result, b, sizeof b);
    break;
  case DEMO_CMD_WRITE:
    memcpy(b, &m->value, sizeof b);
    guest_access(v, m->gpa, b, true);
    break;
  case DEMO_CMD_WORK:
    if (guest_access(v, m->gpa, b, false) != 0)
      break;
    memcpy(&n, b, sizeof n);
    n++;
    memcpy(b, &n, sizeof n);
    guest_access(v, m->gpa, b, true);
    break;
  case DEMO_CMD_SCAN:
    exec_scan(v, m);
    break;
  default:
    break;
  }
}

void demo_soft_vcpu_run(demo_vcpu *v) {
  while (!atomic_load(&v->failed) && demo_vcpu_doorbell(v))
    exec_command(v, v->mbox);
}
