/* range_tree.h: an intrusive, augmented, balanced (AVL) interval tree.
 *
 * The node (mb_rtree_node) lives inside the user's object; the tree never allocates. Each node
 * holds a half-open interval [start, end) with start < end; intervals may overlap. Every node
 * also caches the largest end in its subtree, so "everything overlapping [a, b)" costs
 * O(log n + k) for k results when the intervals are disjoint (the results are then adjacent in
 * order), and at most O((k + 1) log n) when they overlap. Insert and remove are O(log n).
 *
 * Order: nodes are sorted by start; nodes with equal start stay in insertion order (a new node
 * goes after every node with the same start). first/next/prev and the overlap iteration all
 * walk in this order.
 *
 * Lifetime: a node is linked from mb_rtree_insert until mb_rtree_remove. While linked its
 * start/end are read-only (change them by remove + insert, which keeps no hidden state, so a
 * removed node can be re-inserted at once with new bounds). To remove the current node while
 * iterating, fetch the next one first.
 *
 * Threads: none of this is synchronized; the owner serializes access (readers may share).
 */
#ifndef MB_RANGE_TREE_H
#define MB_RANGE_TREE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mb_rtree_node {
  struct mb_rtree_node *parent, *left, *right;
  uint64_t start, end;     /* the interval, read-only while linked */
  uint64_t subtree_max_end; /* max end over this node and its descendants */
  int height;              /* AVL height; a leaf is 1 */
} mb_rtree_node;

typedef struct mb_rtree {
  mb_rtree_node *root;
  size_t count;
} mb_rtree;

/* The object that embeds node `ptr` as its member `member` (container_of). */
#define mb_rtree_entry(ptr, type, member) \
  ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

#define MB_RTREE_INIT {NULL, 0}

void mb_rtree_init(mb_rtree *t);

/* Links n with interval [start, end). -EINVAL (and nothing changes) if start >= end. */
int mb_rtree_insert(mb_rtree *t, mb_rtree_node *n, uint64_t start, uint64_t end);
/* For trees whose intervals never overlap: links n with [start, end) unless that overlaps a
 * linked node (-EEXIST; nothing changes). One descent, no separate overlap query. -EINVAL
 * if start >= end. */
int mb_rtree_insert_disjoint(mb_rtree *t, mb_rtree_node *n, uint64_t start, uint64_t end);
/* Unlinks n, which must be linked in t; its links are cleared, its bounds kept. */
void mb_rtree_remove(mb_rtree *t, mb_rtree_node *n);

static inline size_t mb_rtree_count(const mb_rtree *t) {
  return t->count;
}
static inline bool mb_rtree_empty(const mb_rtree *t) {
  return t->root == NULL;
}

/* In-order walk; NULL at either end. */
mb_rtree_node *mb_rtree_first(const mb_rtree *t);
mb_rtree_node *mb_rtree_last(const mb_rtree *t);
mb_rtree_node *mb_rtree_next(const mb_rtree_node *n);
mb_rtree_node *mb_rtree_prev(const mb_rtree_node *n);

/* The first node (in order) with start >= x, or NULL. */
mb_rtree_node *mb_rtree_lower_bound(const mb_rtree *t, uint64_t x);

/* The first node overlapping [a, b) (node.start < b && node.end > a), or NULL; then each
 * following one. Pass the same a, b to next. An empty query (a >= b) finds nothing. */
static inline mb_rtree_node *mb_rtree_first_overlap(const mb_rtree *t, uint64_t a, uint64_t b);
mb_rtree_node *mb_rtree_next_overlap(const mb_rtree_node *n, uint64_t a, uint64_t b);

/* The first node containing addr (start <= addr < end), or NULL. With overlapping intervals,
 * the others follow from mb_rtree_next_overlap(n, addr, addr + 1). */
static inline mb_rtree_node *mb_rtree_find(const mb_rtree *t, uint64_t addr);

/* The search in the subtree of n, which reaches past a (subtree_max_end > a), for a < b. */
mb_rtree_node *mb__rtree_first_overlap(mb_rtree_node *n, uint64_t a, uint64_t b);

/* Inline: most queries are answered by the root's cached max end (an empty tree, or
 * everything ends at or before a). */
static inline mb_rtree_node *mb_rtree_first_overlap(const mb_rtree *t, uint64_t a, uint64_t b) {
  mb_rtree_node *r = t->root;
  if (r == NULL || a >= b || r->subtree_max_end <= a)
    return NULL;
  return mb__rtree_first_overlap(r, a, b);
}

static inline mb_rtree_node *mb_rtree_find(const mb_rtree *t, uint64_t addr) {
  /* No half-open interval with a 64-bit end can contain UINT64_MAX. */
  return addr == UINT64_MAX ? NULL : mb_rtree_first_overlap(t, addr, addr + 1);
}

#define mb_rtree_for_each(n, t) \
  for ((n) = mb_rtree_first(t); (n) != NULL; (n) = mb_rtree_next(n))
#define mb_rtree_for_each_overlap(n, t, a, b) \
  for ((n) = mb_rtree_first_overlap((t), (a), (b)); (n) != NULL; \
       (n) = mb_rtree_next_overlap((n), (a), (b)))

/* For tests: checks order, links, heights, balance, cached max ends and count.
 * Returns 0, or a negative number naming the first broken invariant. */
int mb__rtree_validate(const mb_rtree *t);

#ifdef __cplusplus
}
#endif

#endif /* MB_RANGE_TREE_H */
