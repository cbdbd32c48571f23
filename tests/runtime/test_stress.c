/* test_stress.c: 4 loops, 8 sender actors, 4 receivers, over a million messages (one-way and
 * requests mixed) across every pair of loops; every receiver checks per-sender order and
 * the totals are checked at the end. Bounded: senders pace themselves in chunks. */
#include <stdatomic.h>

#include "rt_util.h"

enum { LOOPS = 4, SENDERS_PER_LOOP = 2, SENDERS = LOOPS * SENDERS_PER_LOOP };
enum { PER_PAIR = 32768, CHUNK = 256, CALL_EVERY = 64 };

typedef struct receiver {
  uint64_t next[SENDERS];
  _Atomic uint64_t got;
} receiver;

typedef struct sender {
  uint32_t id;
  uint64_t sent;               /* per receiver, the same for all */
  mb_addr rx[LOOPS];
  _Atomic uint64_t replies;
  _Atomic bool done;
} sender;

static void rx_handle(mb_actor *self, mb_msg *msg) {
  receiver *r = mb_actor_state(self);
  t_seq_msg *m = t_seq_of(msg);
  assert_non_null(m);
  assert_int_equal(m->seq, r->next[m->sender]);
  r->next[m->sender]++;
  atomic_fetch_add_explicit(&r->got, 1, memory_order_release);
  if (mb_msg_is_request(msg)) mb_reply(msg, MB_OK);
}

static void on_ack(mb_actor *self, mb_msg *reply, void *ctx) {
  (void)self;
  assert_int_equal(reply->status, MB_OK);
  atomic_fetch_add_explicit(&((sender *)ctx)->replies, 1, memory_order_relaxed);
}

static void tx_handle(mb_actor *self, mb_msg *go) {
  sender *s = mb_actor_state(self);
  uint64_t end = s->sent + CHUNK < PER_PAIR ? s->sent + CHUNK : PER_PAIR;
  for (; s->sent < end; s->sent++) {
    for (int r = 0; r < LOOPS; r++) {
      t_seq_msg *m = t_seq_new();
      m->sender = s->id;
      m->seq = s->sent;
      if (s->sent % CALL_EVERY == 0) mb_call(self, s->rx[r], &m->hdr, on_ack, s);
      else assert_int_equal(mb_send(self, s->rx[r], &m->hdr), MB_OK);
    }
  }
  if (s->sent < PER_PAIR) mb_send(self, mb_actor_addr(self), go); /* next chunk, later */
  else atomic_store(&s->done, true);
}

static const mb_actor_type rx_type = {"rx", rx_handle, NULL, 0, NULL};
static const mb_actor_type tx_type = {"tx", tx_handle, NULL, 0, NULL};

static void test_stress_four_loops(void **unused) {
  (void)unused;
  mb_loop *loops[LOOPS];
  static receiver rx[LOOPS];
  static sender tx[SENDERS];
  memset(rx, 0, sizeof rx);
  memset(tx, 0, sizeof tx);
  mb_addr rx_addr[LOOPS];
  for (int i = 0; i < LOOPS; i++) {
    loops[i] = tu_start("stress");
    rx_addr[i] = rt_spawn_on(loops[i], &rx_type, &rx[i], "rx");
  }
  mb_addr tx_addr[SENDERS];
  for (uint32_t i = 0; i < SENDERS; i++) {
    tx[i].id = i;
    memcpy(tx[i].rx, rx_addr, sizeof rx_addr);
    tx_addr[i] = rt_spawn_on(loops[i % LOOPS], &tx_type, &tx[i], "tx");
  }
  for (int i = 0; i < SENDERS; i++) assert_int_equal(mb_send_from(tx_addr[i], &t_seq_new()->hdr), 0);
  const uint64_t per_rx = (uint64_t)SENDERS * PER_PAIR;
  const uint64_t calls = (PER_PAIR + CALL_EVERY - 1) / CALL_EVERY * LOOPS;
  for (int i = 0; i < LOOPS; i++)
    while (atomic_load(&rx[i].got) < per_rx) sched_yield();
  for (int i = 0; i < SENDERS; i++)
    while (!atomic_load(&tx[i].done) || atomic_load(&tx[i].replies) < calls) sched_yield();
  uint64_t delivered = 0;
  for (int i = 0; i < LOOPS; i++) {
    for (int s = 0; s < SENDERS; s++) assert_int_equal(rx[i].next[s], PER_PAIR);
    delivered += mb_loop_stats_get(loops[i]).delivered;
  }
  assert_true(delivered >= LOOPS * per_rx); /* >= 1,048,576 messages, plus replies and chunks */
  for (int i = 0; i < LOOPS; i++) tu_stop(loops[i]);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_stress_four_loops)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
