/* mb_vtl.h: virtual trust levels (Hyper-V VSM) as the manager models them.
 *
 * A VM has VTL 0 and, optionally, VTL 1 and/or VTL 2 (mb_mm_config.vtls). Each VTL n has its
 * own view of guest memory: the regions whose VTL is <= n, resolved by priority among those
 * only, so a VTL-2 region is VTL 2's own memory. Consumers (VA mappers, partitions) are created
 * at a VTL and show its view; a VTL-2 consumer also shows VTL 0's view at the configured alias
 * (mb_mm_config.vtl0_alias + g), without VTL 0's protections. A higher VTL protects pages of a
 * lower VTL's view (VTL 0, or VTL 1 below VTL 2): none, read-only or read-write (the default);
 * protections belong to guest pages and outlive regions and mappings. The effective access of
 * a page at VTL n is the least of its region's access, its mapping's and VTL n's protection. */
#ifndef MB_VTL_H
#define MB_VTL_H

#include <stdint.h>

enum { MB_VTL_MAX = 2 };                 /* VTLs are 0, 1 and 2 */
enum { MB_PROT_NONE = 0, MB_PROT_RO = 1, MB_PROT_RW = 2 }; /* a protection's access */

/* A guest range with one protection. */
typedef struct mb_prot_item {
  uint64_t gpa, size;
  uint8_t access; /* MB_PROT_* */
} mb_prot_item;

#endif
