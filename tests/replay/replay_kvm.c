/* replay_kvm.c: whether a file can run its kvm partitions here. `require kvm`, and
 * --partitions=kvm for a file that adds a soft partition, skip the whole file where /dev/kvm
 * cannot host a VM (spec/scenario.md, "Configuration"). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "replay.h"

char *replay_kvm_missing(const scenario *sc) {
  void *inst = NULL;
  int rc = mb_partition_kvm.create(sc->max_addr, NULL, &inst);
  if (rc == 0) {
    mb_partition_kvm.destroy(inst);
    return NULL;
  }
  if (access("/dev/kvm", R_OK | W_OK) != 0)
    return replay_strdupf("/dev/kvm is not usable here (%s)", strerror(errno));
  return replay_strdupf("cannot create a KVM VM here (%s)", membacking_strerror(rc));
}

bool replay_adds_soft(const scenario_cmd *c) {
  if (c->kind == SCENARIO_ASYNC) c = c->async.inner;
  return c->kind == SCENARIO_PARTITION_ADD && c->partition.backend == SCENARIO_PARTITION_SOFT;
}
