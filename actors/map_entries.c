/* map_entries.c: arrays of mb_map_entry (mapping_manager.h), made by the region manager for
 * its calls and released by whoever holds them last (the mapping manager, mostly).
 *
 * A DAX chunk's map, replace or unmap carries one entry, so one array of one entry comes and
 * goes per operation. With jemalloc (the default build) a few such arrays are kept per thread
 * for the next: the allocator's free looks every pointer up in its page map, which costs an
 * operation more than the rest of its release. Any array released with one entry has room for
 * one, whatever it was made with, so the cache needs no sizes. The libc build (the one the
 * sanitizers run) keeps none: they see every allocation. */
#include <stdlib.h>

#include "fault_inject.h" /* mb__malloc: MB_FI_ALLOC */
#include "mapping_manager.h"
#include "mb_hot.h"
#include "thread_exit.h"

#if MB_USE_JEMALLOC
enum { ONE_CACHE = 4 };

typedef struct one_cache {
  mb_map_entry *slot[ONE_CACHE];
  unsigned n;
  unsigned room; /* ONE_CACHE once the thread's exit drains the cache, else 0 */
  bool registered;
} one_cache;

static _Thread_local one_cache ones;

static void ones_drain(void *arg) {
  one_cache *c = arg;
  while (c->n > 0)
    free(c->slot[--c->n]);
  c->room = 0; /* the thread is ending: what it drops from now on is freed at once */
}
__attribute__((noinline, cold)) static void ones_register(void) {
  ones.room = mb__at_thread_exit(ones_drain, &ones) ? ONE_CACHE : 0;
  ones.registered = true;
}

static mb_map_entry *take_one(void) {
  return ones.n > 0 ? ones.slot[--ones.n] : NULL;
}

static bool keep_one(mb_map_entry *e) {
  if (__builtin_expect(!ones.registered, 0))
    ones_register();
  if (ones.n == ones.room)
    return false;
  ones.slot[ones.n++] = e;
  return true;
}
#else
static mb_map_entry *take_one(void) { return NULL; }
static bool keep_one(mb_map_entry *e) { return (void)e, false; }
#endif

MB_HOT mb_map_entry *mb_map_entries_alloc(size_t n) {
  if (n == 0 || n > SIZE_MAX / sizeof(mb_map_entry) || mb__fi_fail(MB_FI_ALLOC))
    return NULL;
  mb_map_entry *e = n == 1 ? take_one() : NULL;
  return e != NULL ? e : malloc(n * sizeof *e);
}

MB_HOT void mb_map_entries_drop(mb_map_entry *entries, uint32_t count) {
  if (entries != NULL && !(count == 1 && keep_one(entries)))
    free(entries);
}

MB_HOT void mb_map_entries_free(mb_map_entry *entries, uint32_t count) {
  if (entries == NULL)
    return;
  for (uint32_t i = 0; i < count; i++)
    mb_object_unref(entries[i].obj);
  mb_map_entries_drop(entries, count);
}
