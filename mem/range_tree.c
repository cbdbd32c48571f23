/* range_tree.c: the AVL interval tree behind range_tree.h.
 *
 * Invariants (checked by mb__rtree_validate):
 *   - in-order, starts never decrease (ties keep insertion order: equal starts go right);
 *   - for every node, |height(left) - height(right)| <= 1 and height = 1 + max of the two;
 *   - subtree_max_end = max(end, left->subtree_max_end, right->subtree_max_end).
 * Every structural change ends with fix_upwards() from the lowest touched node, which
 * restores height and subtree_max_end and rebalances on the way up; it stops only where a
 * subtree kept both (nothing above can change then), which keeps the augmentation exact.
 */
#include "mb_hot.h"
#include "range_tree.h"

#include <assert.h>
#include <errno.h>

static int height(const mb_rtree_node *n) {
  return n ? n->height : 0;
}

static uint64_t max_end(const mb_rtree_node *n) {
  return n ? n->subtree_max_end : 0;
}

static void update(mb_rtree_node *n) {
  int hl = height(n->left), hr = height(n->right);
  uint64_t m = n->end, ml = max_end(n->left), mr = max_end(n->right);
  if (ml > m)
    m = ml;
  if (mr > m)
    m = mr;
  n->height = 1 + (hl > hr ? hl : hr);
  n->subtree_max_end = m;
}

/* Makes `repl` take old's place under old's parent (or as the root). */
static void replace_child(mb_rtree *t, mb_rtree_node *parent, mb_rtree_node *old,
                          mb_rtree_node *repl) {
  if (parent == NULL)
    t->root = repl;
  else if (parent->left == old)
    parent->left = repl;
  else
    parent->right = repl;
  if (repl != NULL)
    repl->parent = parent;
}

static mb_rtree_node *rotate_left(mb_rtree *t, mb_rtree_node *x) {
  mb_rtree_node *y = x->right;
  replace_child(t, x->parent, x, y);
  x->right = y->left;
  if (y->left != NULL)
    y->left->parent = x;
  y->left = x;
  x->parent = y;
  update(x);
  update(y);
  return y;
}

static mb_rtree_node *rotate_right(mb_rtree *t, mb_rtree_node *x) {
  mb_rtree_node *y = x->left;
  replace_child(t, x->parent, x, y);
  x->left = y->right;
  if (y->right != NULL)
    y->right->parent = x;
  y->right = x;
  x->parent = y;
  update(x);
  update(y);
  return y;
}

/* Restores n's cached fields and its balance; returns the node now at n's position. */
MB_HOT static mb_rtree_node *rebalance(mb_rtree *t, mb_rtree_node *n) {
  int hl = height(n->left), hr = height(n->right);
  if (hl - hr > 1) {
    if (height(n->left->left) < height(n->left->right))
      rotate_left(t, n->left);
    return rotate_right(t, n);
  }
  if (hr - hl > 1) {
    if (height(n->right->right) < height(n->right->left))
      rotate_right(t, n->right);
    return rotate_left(t, n);
  }
  update(n);
  return n;
}

/* A node's cached fields depend only on its own interval and its children's cached fields,
 * so the walk may stop at the first position whose subtree kept its height and max end:
 * nothing above it can change. The one exception is `pin`, a node that took another's
 * position (and its cached fields): it has an interval of its own, so the walk goes on at
 * least up to it. */
MB_HOT static void fix_upwards(mb_rtree *t, mb_rtree_node *n, const mb_rtree_node *pin) {
  while (n != NULL) {
    int h = n->height;
    uint64_t m = n->subtree_max_end;
    if (n == pin)
      pin = NULL;
    n = rebalance(t, n);
    if (pin == NULL && n->height == h && n->subtree_max_end == m)
      return;
    n = n->parent;
  }
}

void mb_rtree_init(mb_rtree *t) {
  t->root = NULL;
  t->count = 0;
}

/* Links n with [start, end) as a new leaf. A disjoint insert (the tree's intervals never
 * overlap) also refuses one that overlaps a node: the new interval's neighbours in order
 * (the last nodes the descent left to the right and to the left) are on its path, and in
 * such a tree it overlaps a node iff it overlaps one of them, so checking each node passed
 * is enough. */
static inline int insert(mb_rtree *t, mb_rtree_node *n, uint64_t start, uint64_t end,
                         bool disjoint) {
  if (start >= end)
    return -EINVAL;
  mb_rtree_node *parent = NULL, **link = &t->root;
  while (*link != NULL) {
    parent = *link;
    bool left = start < parent->start;
    if (disjoint && (left ? end > parent->start : start < parent->end))
      return -EEXIST;
    link = left ? &parent->left : &parent->right;
  }
  n->start = start;
  n->end = end;
  n->subtree_max_end = end;
  n->height = 1;
  n->parent = parent;
  n->left = n->right = NULL;
  *link = n;
  t->count++;
  fix_upwards(t, parent, NULL);
  return 0;
}

MB_HOT int mb_rtree_insert(mb_rtree *t, mb_rtree_node *n, uint64_t start, uint64_t end) {
  return insert(t, n, start, end, false);
}

int mb_rtree_insert_disjoint(mb_rtree *t, mb_rtree_node *n, uint64_t start, uint64_t end) {
  return insert(t, n, start, end, true);
}

static mb_rtree_node *leftmost(mb_rtree_node *n) {
  while (n->left != NULL)
    n = n->left;
  return n;
}

static mb_rtree_node *rightmost(mb_rtree_node *n) {
  while (n->right != NULL)
    n = n->right;
  return n;
}

MB_HOT void mb_rtree_remove(mb_rtree *t, mb_rtree_node *n) {
  mb_rtree_node *fix_from, *pin = NULL;
  assert(t->count > 0);
  if (n->left == NULL || n->right == NULL) {
    fix_from = n->parent;
    replace_child(t, n->parent, n, n->left ? n->left : n->right);
  } else {
    /* Two children: the in-order successor s (no left child) takes n's place. */
    mb_rtree_node *s = leftmost(n->right);
    if (s->parent != n) {
      fix_from = s->parent;
      replace_child(t, s->parent, s, s->right);
      s->right = n->right;
      s->right->parent = s;
    } else {
      fix_from = s;
    }
    s->left = n->left;
    s->left->parent = s;
    s->height = n->height;
    s->subtree_max_end = n->subtree_max_end;
    replace_child(t, n->parent, n, s);
    pin = s;
  }
  n->parent = n->left = n->right = NULL;
  t->count--;
  fix_upwards(t, fix_from, pin);
}

mb_rtree_node *mb_rtree_first(const mb_rtree *t) {
  return t->root ? leftmost(t->root) : NULL;
}

mb_rtree_node *mb_rtree_last(const mb_rtree *t) {
  return t->root ? rightmost(t->root) : NULL;
}

mb_rtree_node *mb_rtree_next(const mb_rtree_node *n) {
  if (n->right != NULL)
    return leftmost(n->right);
  while (n->parent != NULL && n == n->parent->right)
    n = n->parent;
  return n->parent;
}

mb_rtree_node *mb_rtree_prev(const mb_rtree_node *n) {
  if (n->left != NULL)
    return rightmost(n->left);
  while (n->parent != NULL && n == n->parent->left)
    n = n->parent;
  return n->parent;
}

mb_rtree_node *mb_rtree_lower_bound(const mb_rtree *t, uint64_t x) {
  mb_rtree_node *n = t->root, *best = NULL;
  while (n != NULL) {
    if (n->start >= x) {
      best = n;
      n = n->left;
    } else {
      n = n->right;
    }
  }
  return best;
}

/* The first node in n's subtree overlapping [a, b), given that the subtree holds some node
 * with end > a (max_end(n) > a). Going left whenever the left subtree holds such a node is
 * safe: if that node starts before b it overlaps and precedes n; if not, neither n nor
 * anything after it can start before b. */
mb_rtree_node *mb__rtree_first_overlap(mb_rtree_node *n, uint64_t a, uint64_t b) {
  while (n != NULL) {
    if (max_end(n->left) > a) {
      n = n->left;
      continue;
    }
    if (n->start >= b)
      return NULL;
    if (n->end > a)
      return n;
    n = n->right;
  }
  return NULL;
}

MB_HOT mb_rtree_node *mb_rtree_next_overlap(const mb_rtree_node *n, uint64_t a, uint64_t b) {
  if (a >= b)
    return NULL;
  for (;;) {
    /* Everything after n is: n's right subtree, then the first ancestor reached from its
     * left side, then that ancestor's right subtree, and so on. */
    if (max_end(n->right) > a)
      return mb__rtree_first_overlap(n->right, a, b);
    while (n->parent != NULL && n == n->parent->right)
      n = n->parent;
    mb_rtree_node *p = n->parent;
    if (p == NULL || p->start >= b)
      return NULL;
    if (p->end > a)
      return p;
    n = p;
  }
}

/* ---- validation (tests) ---------------------------------------------------------------- */

/* Checks n's subtree; returns its size, or a negative invariant number. */
static long validate_subtree(const mb_rtree_node *n) {
  if (n == NULL)
    return 0;
  if (n->start >= n->end)
    return -1;
  if (n->left != NULL && (n->left->parent != n || n->left->start > n->start))
    return -2;
  if (n->right != NULL && (n->right->parent != n || n->right->start < n->start))
    return -3;
  long l = validate_subtree(n->left), r = validate_subtree(n->right);
  if (l < 0)
    return l;
  if (r < 0)
    return r;
  int hl = height(n->left), hr = height(n->right);
  if (n->height != 1 + (hl > hr ? hl : hr) || hl - hr > 1 || hr - hl > 1)
    return -4;
  uint64_t m = n->end;
  if (max_end(n->left) > m)
    m = max_end(n->left);
  if (max_end(n->right) > m)
    m = max_end(n->right);
  if (n->subtree_max_end != m)
    return -5;
  return 1 + l + r;
}

int mb__rtree_validate(const mb_rtree *t) {
  if (t->root != NULL && t->root->parent != NULL)
    return -6;
  long size = validate_subtree(t->root);
  if (size < 0)
    return (int)size;
  if ((size_t)size != t->count)
    return -7;
  /* Local child/parent order checks miss deeper violations; check the whole sequence. */
  uint64_t prev = 0;
  for (const mb_rtree_node *n = mb_rtree_first(t); n != NULL; n = mb_rtree_next(n)) {
    if (n->start < prev)
      return -8;
    prev = n->start;
  }
  return 0;
}
