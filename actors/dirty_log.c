/* dirty_log.c: marks from users' threads and the writable locks' registry (dirty_log.h). */
#include "dirty_log.h"

void mb__dirty_log_init(mb_dirty_log *l) {
  atomic_init(&l->on, NULL);
  l->set = NULL;
  pthread_mutex_init(&l->lock, NULL);
  l->holds.prev = l->holds.next = &l->holds;
}

void mb__dirty_log_fini(mb_dirty_log *l) {
  mb_dirty_set_destroy(l->set);
  l->set = NULL;
  pthread_mutex_destroy(&l->lock);
}

void mb__dirty_mark(mb_dirty_log *l, uint64_t gpa, uint64_t len) {
  mb_dirty_set *s = atomic_load_explicit(&l->on, memory_order_acquire);
  if (s != NULL)
    (void)mb_dirty_set_mark_range(s, gpa, len); /* a range past the set: never written */
}

void mb__dirty_hold(mb_dirty_log *l, mb_dirty_hold *h, uint64_t gpa, uint64_t size) {
  h->gpa = gpa;
  h->size = size;
  pthread_mutex_lock(&l->lock);
  h->prev = &l->holds;
  h->next = l->holds.next;
  h->next->prev = h;
  l->holds.next = h;
  pthread_mutex_unlock(&l->lock);
  mb__dirty_mark(l, gpa, size);
}

void mb__dirty_release(mb_dirty_log *l, mb_dirty_hold *h) {
  pthread_mutex_lock(&l->lock);
  h->prev->next = h->next;
  h->next->prev = h->prev;
  pthread_mutex_unlock(&l->lock);
  h->prev = h->next = h;
  mb__dirty_mark(l, h->gpa, h->size); /* after the holder's last write */
}

void mb__dirty_mark_held(mb_dirty_log *l, mb_dirty_set *s, uint64_t gpa, uint64_t size) {
  pthread_mutex_lock(&l->lock);
  for (mb_dirty_hold *h = l->holds.next; h != &l->holds; h = h->next) {
    uint64_t a = h->gpa > gpa ? h->gpa : gpa;
    uint64_t b = h->gpa + h->size < gpa + size ? h->gpa + h->size : gpa + size;
    if (a < b)
      (void)mb_dirty_set_mark_range(s, a, b - a);
  }
  pthread_mutex_unlock(&l->lock);
}
