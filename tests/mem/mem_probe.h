/* mem_probe.h: what the tests of mem/ ask the kernel about the process's address space: its
 * total size (VmSize: exact, so a test sees a page of VA kept or leaked whatever lies next to
 * it) and whether a page is mapped at all. Neither allocates nor maps anything. */
#ifndef MB_MEM_PROBE_H
#define MB_MEM_PROBE_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Bytes of address space the process has mapped (VmSize of /proc/self/status). */
static inline uint64_t mem_vm_size(void) {
  char buf[4096];
  int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  assert_true(fd >= 0);
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  assert_true(n > 0);
  buf[n] = '\0';
  const char *p = strstr(buf, "VmSize:");
  assert_non_null(p);
  return strtoull(p + strlen("VmSize:"), NULL, 10) * 1024;
}

/* True if the page holding p is mapped (with any protection, PROT_NONE included). */
static inline bool mem_mapped(const void *p) {
  void *page = (void *)((uintptr_t)p & ~(uintptr_t)4095);
  return msync(page, 4096, MS_ASYNC) == 0;
}

#endif
