/* demo_devices.c: the VMM's device model, which serves every guest access the exit question
 * calls MMIO (nothing visible there, or a write to a read-only region):
 *   [0xa0000, 0xc0000)   VGA memory: the guest's writes are kept and read back
 *   [0xc0000, 0x100000)  the BIOS area: a write lands here only where it is read-only (the
 *                        ROM, or shadow RAM made read-only by the PAM registers): dropped
 *   anything else        unassigned: reads return all-ones (an empty bus), writes are dropped
 * Called on the vCPU thread only; the counters are read by the VMM. */
#include <stdlib.h>
#include <string.h>

#include "demo.h"

int demo_devices_init(demo_devices *d) {
  d->vga = malloc(DEMO_VGA_SIZE);
  if (!d->vga)
    return -1;
  memset(d->vga, DEMO_VGA_BLANK, DEMO_VGA_SIZE);
  atomic_init(&d->vga_reads, 0);
  atomic_init(&d->vga_writes, 0);
  atomic_init(&d->rom_writes, 0);
  atomic_init(&d->unassigned, 0);
  return 0;
}

void demo_devices_free(demo_devices *d) {
  free(d->vga);
  d->vga = NULL;
}

static bool in(uint64_t gpa, uint64_t start, uint64_t end) {
  return gpa >= start && gpa < end;
}

/* One byte of an access; the counters count accesses, by their first byte. */
static void device_byte(demo_devices *d, uint64_t gpa, uint8_t *b, bool write) {
  if (in(gpa, DEMO_VGA_BASE, DEMO_VGA_BASE + DEMO_VGA_SIZE)) {
    if (write)
      d->vga[gpa - DEMO_VGA_BASE] = *b;
    else
      *b = d->vga[gpa - DEMO_VGA_BASE];
  } else if (!write) {
    *b = 0xff;
  }
}

static _Atomic uint64_t *counter(demo_devices *d, uint64_t gpa, bool write) {
  if (in(gpa, DEMO_VGA_BASE, DEMO_VGA_BASE + DEMO_VGA_SIZE))
    return write ? &d->vga_writes : &d->vga_reads;
  if (write && in(gpa, DEMO_BIOS_BASE, DEMO_BIOS_END))
    return &d->rom_writes;
  return &d->unassigned;
}

void demo_devices_access(demo_devices *d, uint64_t gpa, uint8_t *data, uint32_t len,
                         bool write) {
  atomic_fetch_add(counter(d, gpa, write), 1);
  for (uint32_t i = 0; i < len; i++)
    device_byte(d, gpa + i, &data[i], write);
}
