/* test_signals.c: the process-wide SIGSEGV/SIGBUS handlers as a VMM meets them (membacking.h,
 * "Signals"). Each case runs in a child process of its own, since handlers are per process:
 *   before    the VMM's handler is installed before the first manager: its own faults still
 *             reach it, guest faults are the library's;
 *   chain     installed after, calling the action it replaced for faults not its own;
 *   reinstall installed after without chaining, then mb_access_reinstall();
 *   default   no handler of the VMM's: a fault outside guest memory kills the process with
 *             SIGSEGV, as it would without membacking. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mb_access.h"
#include "membacking.h"

#define MiB (1ull << 20)

/* How a fault outside guest memory ends the child: SIGSEGV; under ASan, whose handler was
 * there before ours, its report and then abort() (abort_on_error=1, tests/meson.build); under
 * TSan its report and then exit code 66 (its default exitcode). */
#if defined(__SANITIZE_ADDRESS__)
#define WILD_DEATH SIGABRT
#elif defined(__SANITIZE_THREAD__)
#define WILD_EXIT 66
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define WILD_DEATH SIGABRT
#elif __has_feature(thread_sanitizer)
#define WILD_EXIT 66
#endif
#endif
#ifndef WILD_DEATH
#define WILD_DEATH SIGSEGV
#endif
#ifndef WILD_EXIT
#define WILD_EXIT 0 /* no exit status counts as that death */
#endif

static volatile sig_atomic_t vmm_faults;
static char *vmm_page; /* the VMM's own PROT_NONE page, which its handler opens */
static struct sigaction replaced;
static int chain;

static void vmm_handler(int sig, siginfo_t *si, void *uc) {
  char *a = si->si_addr;
  if (a >= vmm_page && a < vmm_page + 4096) {
    vmm_faults++;
    mprotect(vmm_page, 4096, PROT_READ | PROT_WRITE); /* the retried store now works */
    return;
  }
  if (chain && (replaced.sa_flags & SA_SIGINFO)) {
    replaced.sa_sigaction(sig, si, uc);
    return;
  }
  signal(sig, SIG_DFL); /* not ours, nothing to chain to: die of it */
}

static void install_vmm_handler(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = vmm_handler;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &replaced);
}

/* A manager on a loop thread of its own, or NULL. */
static mb_mm *start_manager(mb_loop **loop) {
  int err;
  mb_mm *mm = NULL;
  *loop = mb_loop_start("mgr", &err);
  mb_mm_config cfg = {.max_addr = 64 * MiB, .loop = *loop};
  return *loop && mb_mm_create(&cfg, &mm) == 0 ? mm : NULL;
}

/* A manager with a 2 MiB RAM region and nothing mapped at [1M, 2M): a guest read there must be
 * MB_E_UNMAPPED, and the VMM's own fault must reach its handler. 0 when both hold. */
static int check_both(const char *how, int install) {
  vmm_page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (install == 1)
    install_vmm_handler();
  mb_loop *loop;
  mb_mm *mm = start_manager(&loop);
  if (!mm)
    return 10;
  if (install >= 2)
    install_vmm_handler();
  if (install == 3 && mb_access_reinstall() != 0)
    return 11;
  mb_object *obj = NULL;
  mb_region_id r;
  mb_region_params p = {"ram", 0, 2 * MiB, 1, false, 0};
  mb_mapping_params mp = {0, 0, MiB, NULL, 0, true};
  if (mb_object_create(MB_OBJECT_MEMFD, MiB, "t", &obj) || mb_region_add_sync(mm, &p, &r))
    return 12;
  mp.region = r, mp.obj = obj;
  if (mb_mapping_add_sync(mm, &mp) || mb_region_map_sync(mm, r, true))
    return 13;
  uint8_t b;
  int guest = mb_mapper_read(mb_mm_primary_mapper(mm), MiB, &b, 1);
  vmm_page[0] = 1; /* the VMM's own fault */
  int ok = guest == MB_E_UNMAPPED && vmm_faults == 1 &&
           mb_mapper_read(mb_mm_primary_mapper(mm), 0, &b, 1) == 0;
  printf("%s: guest read %s, VMM faults %d: %s\n", how, membacking_strerror(guest),
         (int)vmm_faults, ok ? "ok" : "WRONG");
  mb_mm_destroy(mm);
  mb_object_unref(obj);
  mb_loop_stop(loop);
  mb_loop_free(loop);
  return ok ? 0 : 1;
}

/* No handler of the VMM's: the library's handler must not swallow a fault outside guest
 * memory. The child must die of SIGSEGV after the manager exists. */
static int wild_fault(void) {
  mb_loop *loop;
  if (!start_manager(&loop))
    return 10;
  volatile char *wild = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  wild[0] = 1;
  return 20; /* survived: wrong */
}

static int run_child(const char *how, int install, int want_signal) {
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0)
    _exit(install < 0 ? wild_fault() : check_both(how, install));
  int st;
  waitpid(pid, &st, 0);
  int ok = want_signal ? (WIFSIGNALED(st) && WTERMSIG(st) == want_signal) ||
                             (WILD_EXIT != 0 && WIFEXITED(st) && WEXITSTATUS(st) == WILD_EXIT)
                       : WIFEXITED(st) && WEXITSTATUS(st) == 0;
  if (!ok && WIFSIGNALED(st))
    printf("%s: the child died of signal %d\n", how, WTERMSIG(st));
  else if (!ok)
    printf("%s: the child exited with %d\n", how, WEXITSTATUS(st));
  return ok ? 0 : 1;
}

int main(void) {
  int failed = 0;
  failed += run_child("before", 1, 0);
  chain = 1;
  failed += run_child("chain", 2, 0);
  chain = 0;
  failed += run_child("reinstall", 3, 0);
  int wild = run_child("default", -1, WILD_DEATH);
  printf("default: a fault outside guest memory %s\n", wild ? "was NOT fatal" : "killed the process");
  failed += wild;
  printf("%d passed, %d failed\n", 4 - failed, failed);
  return failed ? 1 : 0;
}
