/* thread_exit.c: one thread key for every per-thread cache of the library (messages, entry
 * arrays, API operations), so that each is drained when its thread exits. */
#include <pthread.h>

#include "thread_exit.h"

enum { EXITS = 4 }; /* the caches there are, with room to spare */

typedef struct exits {
  void (*drain[EXITS])(void *);
  void *arg[EXITS];
  unsigned n;
} exits;

static _Thread_local exits mine;
static pthread_key_t key;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static bool key_ok;

static void run_exits(void *p) {
  exits *e = p;
  while (e->n > 0) {
    e->n--;
    e->drain[e->n](e->arg[e->n]);
  }
}

static void key_make(void) { key_ok = pthread_key_create(&key, run_exits) == 0; }

bool mb__at_thread_exit(void (*drain)(void *arg), void *arg) {
  pthread_once(&once, key_make);
  if (!key_ok || mine.n == EXITS || (mine.n == 0 && pthread_setspecific(key, &mine) != 0))
    return false;
  mine.drain[mine.n] = drain;
  mine.arg[mine.n++] = arg;
  return true;
}
