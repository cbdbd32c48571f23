/* baseline_syscalls.c: the kernel floors of the memory benchmarks (spec/bench.md):
 *
 *   syscalls.map_unmap    floor of map.soft, mapping.dax: the two mmaps a 2 MiB map + unmap
 *                         needs, made directly.
 *   syscalls.map_unmap_kvm floor of map.kvm: the same two mmaps plus the memory slot's
 *                         KVM_SET_USER_MEMORY_REGION add and delete (skipped without /dev/kvm).
 *   syscalls.map_replace  floor of mapping.replace: one MAP_FIXED mmap of a 2 MiB memfd over
 *                         another's, the two alternating.
 *   syscalls.mprotect     floor of access.change: mprotect of a populated 64 MiB shared memfd
 *                         mapping to PROT_READ and back to PROT_READ|PROT_WRITE.
 *   syscalls.fault_remote floor of fault.lazy: a fault served by another, sleeping thread.
 *   memcpy                floor of access.read: copying 64 KiB (throughput).
 *
 * Every setup() builds what it needs (memfds, reservations, threads) and teardown() removes
 * it; the operations themselves touch nothing else.
 */

#include "affinity.h"
#include "areas.h"
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__linux__)
#include <linux/kvm.h>
#define HAVE_KVM_H 1
#endif

#define MIB ((size_t)1 << 20)

/* A PROT_NONE, MAP_NORESERVE anonymous range: the shape of a VA reservation. */
static void *reserve(void *at, size_t size) {
  return mmap(at, size, PROT_NONE,
              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (at ? MAP_FIXED : 0), -1, 0);
}

/* A memfd of `size` bytes; filled (pages allocated) when `fill`. Returns the fd or -errno. */
static int make_memfd(const char *name, size_t size, bool fill) {
  int fd = memfd_create(name, MFD_CLOEXEC);
  if (fd < 0)
    return -errno;
  if (ftruncate(fd, (off_t)size) != 0)
    goto fail;
  if (fill) {
    char buf[4096];
    memset(buf, 0x5a, sizeof buf);
    for (size_t off = 0; off < size; off += sizeof buf)
      if (pwrite(fd, buf, sizeof buf < size - off ? sizeof buf : size - off, (off_t)off) < 0)
        goto fail;
  }
  return fd;
fail:;
  int err = -errno;
  close(fd);
  return err;
}

/* ---- syscalls.map_unmap ------------------------------------------------------------------ */

/* A 2 MiB slot, 2 MiB aligned, with reserved neighbours on both sides: mapping splits the
 * reservation's VMA and the PROT_NONE replacement merges it again, as for a guest region. */
enum { MAP_SLOT = 2 * MIB, MAP_RESERVATION = 8 * MIB };

typedef struct map_unmap {
  char *reservation;
  char *slot;
  int fd;
} map_unmap;

static int map_unmap_setup(mb_bench *b, void **state) {
  map_unmap *mu = calloc(1, sizeof *mu);
  if (mu == NULL)
    return -ENOMEM;
  mu->fd = make_memfd("mb-bench-map", MAP_SLOT, false);
  if (mu->fd < 0) {
    int err = mu->fd;
    free(mu);
    return mb_bench_fail(b, "memfd: %s", strerror(-err));
  }
  mu->reservation = reserve(NULL, MAP_RESERVATION);
  if (mu->reservation == MAP_FAILED) {
    int err = errno;
    close(mu->fd);
    free(mu);
    return mb_bench_fail(b, "reserve: %s", strerror(err));
  }
  uintptr_t slot = ((uintptr_t)mu->reservation + 2 * MAP_SLOT - 1) & ~(uintptr_t)(MAP_SLOT - 1);
  mu->slot = (char *)slot; /* in [reservation + 2 MiB, + 4 MiB): neighbours on both sides */
  *state = mu;
  return 0;
}

static int map_unmap_run(mb_bench *b, void *state, uint32_t n) {
  map_unmap *mu = state;
  for (uint32_t i = 0; i < n; i++) {
    if (mmap(mu->slot, MAP_SLOT, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, mu->fd, 0) ==
        MAP_FAILED)
      return mb_bench_fail(b, "mmap memfd: %s", strerror(errno));
    if (reserve(mu->slot, MAP_SLOT) == MAP_FAILED)
      return mb_bench_fail(b, "mmap PROT_NONE: %s", strerror(errno));
  }
  return 0;
}

static void map_unmap_teardown(void *state) {
  map_unmap *mu = state;
  munmap(mu->reservation, MAP_RESERVATION);
  close(mu->fd);
  free(mu);
}

/* ---- syscalls.map_replace ---------------------------------------------------------------- */

/* syscalls.map_unmap's slot, with one of two memfds always mapped there: each operation maps
 * the other one over it (MAP_FIXED replaces the old pages in one call, no hole between). */
typedef struct map_replace {
  char *reservation;
  char *slot;
  int fd[2];
  uint32_t next; /* operations so far: the slot holds fd[next % 2] */
} map_replace;

static void map_replace_free(map_replace *mr) {
  if (mr->reservation != NULL && mr->reservation != MAP_FAILED)
    munmap(mr->reservation, MAP_RESERVATION);
  for (int i = 0; i < 2; i++)
    if (mr->fd[i] >= 0)
      close(mr->fd[i]);
  free(mr);
}

static int map_replace_setup(mb_bench *b, void **state) {
  map_replace *mr = calloc(1, sizeof *mr);
  if (mr == NULL)
    return -ENOMEM;
  const char *what = NULL;
  int err = 0;
  if ((mr->fd[0] = make_memfd("mb-bench-map-a", MAP_SLOT, false)) < 0) {
    mr->fd[1] = -1, what = "memfd", err = -mr->fd[0];
  } else if ((mr->fd[1] = make_memfd("mb-bench-map-b", MAP_SLOT, false)) < 0) {
    what = "memfd", err = -mr->fd[1];
  } else if ((mr->reservation = reserve(NULL, MAP_RESERVATION)) == MAP_FAILED) {
    what = "reserve", err = errno;
  } else {
    uintptr_t at = ((uintptr_t)mr->reservation + 2 * MAP_SLOT - 1) & ~(uintptr_t)(MAP_SLOT - 1);
    mr->slot = (char *)at; /* as map_unmap's: neighbours on both sides */
    if (mmap(mr->slot, MAP_SLOT, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, mr->fd[0], 0) ==
        MAP_FAILED)
      what = "mmap memfd", err = errno;
  }
  if (what != NULL) {
    map_replace_free(mr);
    return mb_bench_fail(b, "%s: %s", what, strerror(err));
  }
  *state = mr;
  return 0;
}

static int map_replace_run(mb_bench *b, void *state, uint32_t n) {
  map_replace *mr = state;
  for (uint32_t i = 0; i < n; i++) {
    int fd = mr->fd[++mr->next % 2];
    if (mmap(mr->slot, MAP_SLOT, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) ==
        MAP_FAILED)
      return mb_bench_fail(b, "mmap memfd: %s", strerror(errno));
  }
  return 0;
}

static void map_replace_teardown(void *state) { map_replace_free(state); }

/* ---- syscalls.mprotect ------------------------------------------------------------------- */

/* A 64 MiB memfd mapped read-write, 2 MiB aligned, with reserved neighbours on both sides (as a
 * VA mapper's region, its own VMA), every page written once through the mapping so that its
 * page-table entries are present, as those of access.change's populated region. */
#define PROTECT_SIZE (64 * MIB)
#define PROTECT_RESERVATION (PROTECT_SIZE + 3 * MAP_SLOT)

typedef struct protect {
  char *reservation;
  char *slot;
  int fd;
} protect;

static void protect_free(protect *p) {
  if (p->reservation != NULL && p->reservation != MAP_FAILED)
    munmap(p->reservation, PROTECT_RESERVATION);
  if (p->fd >= 0)
    close(p->fd);
  free(p);
}

static int protect_setup(mb_bench *b, void **state) {
  protect *p = calloc(1, sizeof *p);
  if (p == NULL)
    return -ENOMEM;
  const char *what = NULL;
  int err = 0;
  if ((p->fd = make_memfd("mb-bench-protect", PROTECT_SIZE, false)) < 0) {
    what = "memfd", err = -p->fd;
  } else if ((p->reservation = reserve(NULL, PROTECT_RESERVATION)) == MAP_FAILED) {
    what = "reserve", err = errno;
  } else {
    uintptr_t at = ((uintptr_t)p->reservation + 2 * MAP_SLOT - 1) & ~(uintptr_t)(MAP_SLOT - 1);
    p->slot = (char *)at; /* in [reservation + 2 MiB, + 4 MiB): neighbours on both sides */
    if (mmap(p->slot, PROTECT_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, p->fd, 0) ==
        MAP_FAILED)
      what = "mmap memfd", err = errno;
  }
  if (what != NULL) {
    protect_free(p);
    return mb_bench_fail(b, "%s: %s", what, strerror(err));
  }
  for (size_t off = 0; off < PROTECT_SIZE; off += 4096)
    p->slot[off] = (char)0xa5;
  *state = p;
  return 0;
}

static int protect_run(mb_bench *b, void *state, uint32_t n) {
  protect *p = state;
  for (uint32_t i = 0; i < n; i++) {
    if (mprotect(p->slot, PROTECT_SIZE, PROT_READ) != 0)
      return mb_bench_fail(b, "mprotect PROT_READ: %s", strerror(errno));
    if (mprotect(p->slot, PROTECT_SIZE, PROT_READ | PROT_WRITE) != 0)
      return mb_bench_fail(b, "mprotect PROT_READ|PROT_WRITE: %s", strerror(errno));
  }
  return 0;
}

static void protect_teardown(void *state) { protect_free(state); }

/* ---- syscalls.map_unmap_kvm -------------------------------------------------------------- */

/* syscalls.map_unmap's slot, plus a KVM VM in which the 2 MiB are a memory slot while
 * mapped. The order is the runtime's: map = VA first, then the slot; unmap = the slot first
 * (KVM_SET_USER_MEMORY_REGION with size 0), then the PROT_NONE replacement. Like the kvm
 * backend's VM, this one already has one slot of its own (slot 0, 64 KiB of private memory
 * above the guest range) and no running vCPU. */
#ifdef HAVE_KVM_H
enum { KVM_GUEST_SLOT = 1, KVM_PRIV_SIZE = 64 * 1024 };
#define KVM_PRIV_GPA ((uint64_t)64 << 30)

typedef struct map_unmap_kvm {
  map_unmap mu;
  int kvm_fd, vm_fd;
  void *priv;
} map_unmap_kvm;

static void map_unmap_kvm_free(map_unmap_kvm *k) {
  if (k->vm_fd >= 0)
    close(k->vm_fd);
  if (k->kvm_fd >= 0)
    close(k->kvm_fd);
  if (k->priv != NULL && k->priv != MAP_FAILED)
    munmap(k->priv, KVM_PRIV_SIZE);
  if (k->mu.reservation != NULL && k->mu.reservation != MAP_FAILED)
    munmap(k->mu.reservation, MAP_RESERVATION);
  if (k->mu.fd >= 0)
    close(k->mu.fd);
  free(k);
}

static int kvm_slot(map_unmap_kvm *k, uint32_t slot, uint64_t gpa, uint64_t size, void *host) {
  struct kvm_userspace_memory_region r = {
      .slot = slot, .flags = 0, .guest_phys_addr = gpa, .memory_size = size,
      .userspace_addr = (uint64_t)(uintptr_t)host};
  return ioctl(k->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0 ? -errno : 0;
}

static int map_unmap_kvm_setup(mb_bench *b, void **state) {
  map_unmap_kvm *k = calloc(1, sizeof *k);
  if (k == NULL)
    return -ENOMEM;
  k->kvm_fd = k->vm_fd = k->mu.fd = -1;
  k->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (k->kvm_fd < 0) {
    int err = errno;
    map_unmap_kvm_free(k);
    return mb_bench_skip(b, "/dev/kvm: %s", strerror(err));
  }
  if (ioctl(k->kvm_fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
    map_unmap_kvm_free(k);
    return mb_bench_skip(b, "/dev/kvm: unexpected KVM API version");
  }
  k->vm_fd = ioctl(k->kvm_fd, KVM_CREATE_VM, 0);
  if (k->vm_fd < 0) {
    int err = errno;
    map_unmap_kvm_free(k);
    return mb_bench_skip(b, "KVM_CREATE_VM: %s", strerror(err));
  }
  const char *what = NULL;
  int err = 0;
  k->priv = mmap(NULL, KVM_PRIV_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (k->priv == MAP_FAILED) {
    what = "mmap", err = errno;
  } else if ((err = -kvm_slot(k, 0, KVM_PRIV_GPA, KVM_PRIV_SIZE, k->priv)) != 0) {
    what = "KVM_SET_USER_MEMORY_REGION";
  } else if ((k->mu.fd = make_memfd("mb-bench-map-kvm", MAP_SLOT, false)) < 0) {
    what = "memfd", err = -k->mu.fd;
  } else if ((k->mu.reservation = reserve(NULL, MAP_RESERVATION)) == MAP_FAILED) {
    what = "reserve", err = errno;
  }
  if (what != NULL) {
    map_unmap_kvm_free(k);
    return mb_bench_fail(b, "%s: %s", what, strerror(err));
  }
  uintptr_t slot = ((uintptr_t)k->mu.reservation + 2 * MAP_SLOT - 1) & ~(uintptr_t)(MAP_SLOT - 1);
  k->mu.slot = (char *)slot;
  *state = k;
  return 0;
}

static int map_unmap_kvm_run(mb_bench *b, void *state, uint32_t n) {
  map_unmap_kvm *k = state;
  for (uint32_t i = 0; i < n; i++) {
    int rc;
    if (mmap(k->mu.slot, MAP_SLOT, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, k->mu.fd, 0) ==
        MAP_FAILED)
      return mb_bench_fail(b, "mmap memfd: %s", strerror(errno));
    if ((rc = kvm_slot(k, KVM_GUEST_SLOT, 0, MAP_SLOT, k->mu.slot)) != 0)
      return mb_bench_fail(b, "memory slot add: %s", strerror(-rc));
    if ((rc = kvm_slot(k, KVM_GUEST_SLOT, 0, 0, k->mu.slot)) != 0)
      return mb_bench_fail(b, "memory slot delete: %s", strerror(-rc));
    if (reserve(k->mu.slot, MAP_SLOT) == MAP_FAILED)
      return mb_bench_fail(b, "mmap PROT_NONE: %s", strerror(errno));
  }
  return 0;
}

static void map_unmap_kvm_teardown(void *state) { map_unmap_kvm_free(state); }
#else
static int map_unmap_kvm_setup(mb_bench *b, void **state) {
  (void)state;
  return mb_bench_skip(b, "KVM needs Linux");
}
static int map_unmap_kvm_run(mb_bench *b, void *state, uint32_t n) {
  (void)b, (void)state, (void)n;
  return 0;
}
static void map_unmap_kvm_teardown(void *state) { (void)state; }
#endif

/* ---- syscalls.fault_remote ----------------------------------------------------------------- */

/* The faulting thread (the harness's) reads a PROT_NONE page. Its SIGSEGV handler posts a
 * request in `state`, wakes the mapper thread with FUTEX_WAKE and sleeps in FUTEX_WAIT until
 * the mapper has mmapped a memfd page there and answered; the read is then retried. The
 * handler is installed only while run() runs, so other benchmarks' handlers are untouched.
 * The two threads are pinned to one CPU (affinity.h), as fault.lazy's are. */
enum { FR_IDLE, FR_REQUEST, FR_DONE, FR_FAILED, FR_STOP };

typedef struct fault_remote {
  mb_bench_pin pin;  /* the faulting (harness) thread and the mapper thread on one CPU */
  char *reservation; /* 3 pages; the middle one faults */
  char *page;
  size_t pagesz;
  int fd;
  pthread_t mapper;
  _Atomic uint32_t state; /* FR_*: the futex word */
  int map_errno;          /* written by the mapper before FR_FAILED */
  struct sigaction old;
  sigjmp_buf escape;      /* out of the handler when the mapper failed */
} fault_remote;

static fault_remote *_Atomic fr_active; /* for the handler; set only inside run() */

static void futex_wait(_Atomic uint32_t *word, uint32_t expected) {
  syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *word) {
  syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static void *fr_mapper_main(void *arg) {
  fault_remote *fr = arg;
  mb_bench_pin_serving_self(&fr->pin);
  for (;;) {
    uint32_t s;
    while ((s = atomic_load_explicit(&fr->state, memory_order_acquire)) != FR_REQUEST &&
           s != FR_STOP)
      futex_wait(&fr->state, s);
    if (s == FR_STOP)
      return NULL;
    void *p = mmap(fr->page, fr->pagesz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fr->fd,
                   0);
    if (p == MAP_FAILED)
      fr->map_errno = errno;
    atomic_store_explicit(&fr->state, p == MAP_FAILED ? FR_FAILED : FR_DONE,
                          memory_order_release);
    futex_wake(&fr->state);
  }
}

static void fr_on_segv(int sig, siginfo_t *si, void *uctx) {
  (void)sig;
  (void)uctx;
  fault_remote *fr = atomic_load_explicit(&fr_active, memory_order_acquire);
  char *addr = si->si_addr;
  if (fr == NULL || addr < fr->page || addr >= fr->page + fr->pagesz) {
    /* Not ours: put the previous disposition back; the retried access reaches it. */
    sigaction(SIGSEGV, fr ? &fr->old : &(struct sigaction){.sa_handler = SIG_DFL}, NULL);
    return;
  }
  atomic_store_explicit(&fr->state, FR_REQUEST, memory_order_release);
  futex_wake(&fr->state);
  uint32_t s;
  while ((s = atomic_load_explicit(&fr->state, memory_order_acquire)) == FR_REQUEST)
    futex_wait(&fr->state, FR_REQUEST);
  if (s != FR_DONE)
    siglongjmp(fr->escape, 1);
}

static int fault_remote_setup(mb_bench *b, void **state) {
  fault_remote *fr = calloc(1, sizeof *fr);
  if (fr == NULL)
    return -ENOMEM;
  fr->pagesz = (size_t)sysconf(_SC_PAGESIZE);
  int err = mb_bench_pin_begin(&fr->pin);
  if (err != 0) {
    free(fr);
    return mb_bench_fail(b, "sched_setaffinity: %s", strerror(-err));
  }
  fr->fd = make_memfd("mb-bench-fault", fr->pagesz, true); /* the page exists: a minor fault */
  if (fr->fd < 0) {
    err = fr->fd;
    mb_bench_pin_end(&fr->pin);
    free(fr);
    return mb_bench_fail(b, "memfd: %s", strerror(-err));
  }
  fr->reservation = reserve(NULL, 3 * fr->pagesz);
  if (fr->reservation == MAP_FAILED) {
    err = errno;
    close(fr->fd);
    mb_bench_pin_end(&fr->pin);
    free(fr);
    return mb_bench_fail(b, "reserve: %s", strerror(err));
  }
  fr->page = fr->reservation + fr->pagesz;
  atomic_init(&fr->state, FR_IDLE);
  int rc = pthread_create(&fr->mapper, NULL, fr_mapper_main, fr);
  if (rc != 0) {
    munmap(fr->reservation, 3 * fr->pagesz);
    close(fr->fd);
    mb_bench_pin_end(&fr->pin);
    free(fr);
    return mb_bench_fail(b, "pthread_create: %s", strerror(rc));
  }
  *state = fr;
  return 0;
}

/* n faults; the untimed part re-protects the page. */
static int fault_remote_faults(mb_bench *b, fault_remote *fr, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) {
    if (reserve(fr->page, fr->pagesz) == MAP_FAILED)
      return mb_bench_fail(b, "mmap PROT_NONE: %s", strerror(errno));
    uint64_t t0 = mb_bench_now_ns();
    (void)*(volatile char *)fr->page;
    uint64_t t1 = mb_bench_now_ns();
    mb_bench_sample(b, (double)(t1 - t0));
  }
  return 0;
}

static int fault_remote_run(mb_bench *b, void *state, uint32_t n) {
  fault_remote *fr = state;
  struct sigaction sa = {.sa_sigaction = fr_on_segv, .sa_flags = SA_SIGINFO};
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGSEGV, &sa, &fr->old) != 0)
    return mb_bench_fail(b, "sigaction: %s", strerror(errno));
  atomic_store_explicit(&fr_active, fr, memory_order_release);
  int rc;
  if (sigsetjmp(fr->escape, 1) == 0)
    rc = fault_remote_faults(b, fr, n);
  else
    rc = mb_bench_fail(b, "mapper thread: mmap: %s", strerror(fr->map_errno));
  atomic_store_explicit(&fr_active, NULL, memory_order_release);
  sigaction(SIGSEGV, &fr->old, NULL);
  return rc;
}

static void fault_remote_teardown(void *state) {
  fault_remote *fr = state;
  atomic_store_explicit(&fr->state, FR_STOP, memory_order_release);
  futex_wake(&fr->state);
  pthread_join(fr->mapper, NULL);
  munmap(fr->reservation, 3 * fr->pagesz);
  close(fr->fd);
  mb_bench_pin_end(&fr->pin);
  free(fr);
}

/* ---- memcpy -------------------------------------------------------------------------------- */

/* From a memfd mapping (like guest RAM) to an anonymous buffer, both resident and warm. */
enum { COPY_BYTES = 64 * 1024 };

typedef struct copy {
  char *src, *dst;
  int fd;
} copy;

static int memcpy_setup(mb_bench *b, void **state) {
  copy *c = calloc(1, sizeof *c);
  if (c == NULL)
    return -ENOMEM;
  c->fd = make_memfd("mb-bench-copy", COPY_BYTES, true);
  if (c->fd < 0) {
    int err = c->fd;
    free(c);
    return mb_bench_fail(b, "memfd: %s", strerror(-err));
  }
  c->src = mmap(NULL, COPY_BYTES, PROT_READ, MAP_SHARED, c->fd, 0);
  c->dst = mmap(NULL, COPY_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (c->src == MAP_FAILED || c->dst == MAP_FAILED) {
    int err = errno;
    if (c->src != MAP_FAILED)
      munmap(c->src, COPY_BYTES);
    if (c->dst != MAP_FAILED)
      munmap(c->dst, COPY_BYTES);
    close(c->fd);
    free(c);
    return mb_bench_fail(b, "mmap: %s", strerror(err));
  }
  memcpy(c->dst, c->src, COPY_BYTES); /* fault both in */
  *state = c;
  return 0;
}

static int memcpy_run(mb_bench *b, void *state, uint32_t n) {
  (void)b;
  copy *c = state;
  for (uint32_t i = 0; i < n; i++) {
    memcpy(c->dst, c->src, COPY_BYTES);
    atomic_signal_fence(memory_order_seq_cst); /* every copy happens */
  }
  return 0;
}

static void memcpy_teardown(void *state) {
  copy *c = state;
  munmap(c->src, COPY_BYTES);
  munmap(c->dst, COPY_BYTES);
  close(c->fd);
  free(c);
}

/* ---- registration ------------------------------------------------------------------------- */

static const mb_bench_def syscall_benches[] = {
    {
        .name = "syscalls.map_unmap",
        .unit = MB_BENCH_NS,
        .setup = map_unmap_setup,
        .run = map_unmap_run,
        .teardown = map_unmap_teardown,
        .doc = "mmap(MAP_FIXED|MAP_SHARED) of a 2 MiB memfd in a PROT_NONE reservation, then "
               "its MAP_FIXED PROT_NONE replacement",
    },
    {
        .name = "syscalls.map_unmap_kvm",
        .unit = MB_BENCH_NS,
        .setup = map_unmap_kvm_setup,
        .run = map_unmap_kvm_run,
        .teardown = map_unmap_kvm_teardown,
        .doc = "syscalls.map_unmap plus KVM_SET_USER_MEMORY_REGION add and delete of the "
               "2 MiB as a memory slot",
    },
    {
        .name = "syscalls.map_replace",
        .unit = MB_BENCH_NS,
        .setup = map_replace_setup,
        .run = map_replace_run,
        .teardown = map_replace_teardown,
        .doc = "mmap(MAP_FIXED|MAP_SHARED) of a 2 MiB memfd over another's mapping, the two "
               "alternating",
    },
    {
        .name = "syscalls.mprotect",
        .unit = MB_BENCH_NS,
        .setup = protect_setup,
        .run = protect_run,
        .teardown = protect_teardown,
        .doc = "mprotect of a populated 64 MiB shared memfd mapping to PROT_READ, then back to "
               "PROT_READ|PROT_WRITE",
    },
    {
        .name = "syscalls.fault_remote",
        .unit = MB_BENCH_NS,
        .flags = MB_BENCH_SELF_TIMED,
        .samples = 10000,
        .setup = fault_remote_setup,
        .run = fault_remote_run,
        .teardown = fault_remote_teardown,
        .doc = "a read of a PROT_NONE page: SIGSEGV, a futex round trip to a mapper thread "
               "that mmaps the page, retry",
    },
    {
        .name = "memcpy",
        .unit = MB_BENCH_BPS,
        .bytes = COPY_BYTES,
        .setup = memcpy_setup,
        .run = memcpy_run,
        .teardown = memcpy_teardown,
        .doc = "memcpy of 64 KiB from a memfd mapping",
    },
};

void mb_bench_area_baseline_syscalls(void) { MB_BENCH_REGISTER_ALL(syscall_benches); }
