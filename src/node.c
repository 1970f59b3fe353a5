/*
 * node: two hash tables under one mutex, one by FUSE id (every live node)
 * and one by (parent, name) (bound nodes only), and a list of bound
 * children per directory for unbinding subtrees. The mutex covers only
 * these structures and the fields node.h marks; nothing here blocks, and a
 * node's value is never written after the node is made, so reading it
 * takes no lock, only a reference.
 */
#include "node.h"
#include "cache.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define ROOT_INO 1 /* FUSE_ROOT_ID, without including FUSE here */

struct index {
	struct node **buckets;
	size_t nbuckets; /* a power of two */
	size_t count;
};

struct node_table {
	pthread_mutex_t lock; /* protects everything below, and node.h's marked fields */
	struct node *root;
	struct index by_ino;
	struct index by_name;
	uint64_t next_ino;
};

static uint64_t hash_name(uint64_t seed, const char *name)
{
	uint64_t h = seed ^ 1469598103934665603ULL;

	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		h = (h ^ *p) * 1099511628211ULL;
	return h;
}

static size_t ino_bucket(const struct index *x, uint64_t ino)
{
	return (size_t)((ino * 11400714819323198485ULL) >> 17) & (x->nbuckets - 1);
}

static size_t name_bucket(const struct index *x, const struct node *parent, const char *name)
{
	return hash_name((uint64_t)(uintptr_t)parent, name) & (x->nbuckets - 1);
}

uint64_t node_stable_ino(uint64_t dir, const char *name)
{
	/* Small numbers are taken by the root and by tools' expectations. */
	uint64_t h = hash_name(dir, name);

	return h < 2 ? h + 2 : h;
}

static int index_init(struct index *x)
{
	x->nbuckets = 256;
	x->count = 0;
	x->buckets = calloc(x->nbuckets, sizeof(*x->buckets));
	return x->buckets ? 0 : -ENOMEM;
}

/* Double the buckets when chains grow long; out of memory, keep the
 * longer chains (still correct). */
static void index_grow(struct index *x, bool by_name)
{
	size_t n = x->nbuckets * 2;
	struct node **buckets = calloc(n, sizeof(*buckets));
	struct index grown = {buckets, n, x->count};

	if (!buckets)
		return;
	for (size_t i = 0; i < x->nbuckets; i++) {
		struct node *node = x->buckets[i];
		while (node) {
			struct node **next = by_name ? &node->name_next : &node->ino_next;
			struct node *after = *next;
			size_t b = by_name ? name_bucket(&grown, node->parent, node->name)
					   : ino_bucket(&grown, node->ino);
			*next = buckets[b];
			buckets[b] = node;
			node = after;
		}
	}
	free(x->buckets);
	*x = grown;
}

static struct node **ino_slot(struct node_table *t, uint64_t ino)
{
	struct node **slot = &t->by_ino.buckets[ino_bucket(&t->by_ino, ino)];

	while (*slot && (*slot)->ino != ino)
		slot = &(*slot)->ino_next;
	return slot;
}

static struct node **name_slot(struct node_table *t, const struct node *parent, const char *name)
{
	struct node **slot = &t->by_name.buckets[name_bucket(&t->by_name, parent, name)];

	while (*slot && ((*slot)->parent != parent || strcmp((*slot)->name, name) != 0))
		slot = &(*slot)->name_next;
	return slot;
}

static void node_free(struct node *n)
{
	blob_unref(n->value);
	free(n->name);
	free(n->src);
	free(n->base);
	free(n);
}

static struct node *node_new(const char *name, const struct node_spec *spec)
{
	struct node *n = calloc(1, sizeof(*n));

	if (!n)
		return NULL;
	n->name = strdup(name);
	n->src = spec->src ? strdup(spec->src) : NULL;
	n->base = strdup(spec->base ? spec->base : "");
	if (!n->name || (spec->src && !n->src) || !n->base) {
		node_free(n);
		return NULL;
	}
	n->row = spec->row;
	n->is_dir = spec->is_dir;
	n->depth = spec->depth;
	n->value = spec->value ? blob_ref(spec->value) : NULL;
	return n;
}

static void add_by_ino(struct node_table *t, struct node *n)
{
	struct node **slot = &t->by_ino.buckets[ino_bucket(&t->by_ino, n->ino)];

	n->ino_next = *slot;
	*slot = n;
	if (++t->by_ino.count > t->by_ino.nbuckets)
		index_grow(&t->by_ino, false);
}

struct node_table *node_table_create(void)
{
	struct node_table *t = calloc(1, sizeof(*t));
	struct node_spec root = {.row = tree_root(), .base = "", .is_dir = true};

	if (!t)
		return NULL;
	t->root = node_new("", &root);
	if (!t->root || index_init(&t->by_ino) || index_init(&t->by_name)) {
		free(t->by_ino.buckets);
		free(t->by_name.buckets);
		if (t->root)
			node_free(t->root);
		free(t);
		return NULL;
	}
	t->root->ino = ROOT_INO;
	t->root->stable_ino = ROOT_INO;
	t->root->state = NODE_BOUND;
	t->next_ino = ROOT_INO + 1;
	add_by_ino(t, t->root);
	pthread_mutex_init(&t->lock, NULL);
	return t;
}

void node_table_destroy(struct node_table *t)
{
	if (!t)
		return;
	/* Every node, whatever holds it: the daemon is going away. */
	for (size_t i = 0; i < t->by_ino.nbuckets; i++) {
		struct node *n = t->by_ino.buckets[i];
		while (n) {
			struct node *next = n->ino_next;
			node_free(n);
			n = next;
		}
	}
	free(t->by_ino.buckets);
	free(t->by_name.buckets);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

struct node *node_root(struct node_table *t)
{
	return t->root;
}

/* Under the lock: free `n` if nothing holds it any more, then its parent
 * if that was the last thing holding the parent. */
static void maybe_free(struct node_table *t, struct node *n)
{
	while (n != t->root && n->state == NODE_UNBOUND && n->nlookup == 0 && n->refs == 0) {
		struct node *parent = n->parent;
		struct node **slot = ino_slot(t, n->ino);

		assert(*slot == n);
		*slot = n->ino_next;
		t->by_ino.count--;
		node_free(n);
		assert(parent->refs > 0);
		parent->refs--;
		n = parent;
	}
}

struct node *node_get(struct node_table *t, uint64_t ino)
{
	struct node *n;

	pthread_mutex_lock(&t->lock);
	n = *ino_slot(t, ino);
	if (n)
		n->refs++;
	pthread_mutex_unlock(&t->lock);
	return n;
}

struct node *node_find(struct node_table *t, struct node *parent, const char *name)
{
	struct node *n;

	pthread_mutex_lock(&t->lock);
	n = *name_slot(t, parent, name);
	if (n)
		n->refs++;
	pthread_mutex_unlock(&t->lock);
	return n;
}

struct node *node_find_path(struct node_table *t, const char *path)
{
	struct node *n = t->root;
	char name[TREE_NAME_MAX + 1];

	pthread_mutex_lock(&t->lock);
	while (n && *path) {
		size_t len = strcspn(path, "/");

		if (len > TREE_NAME_MAX) {
			n = NULL;
			break;
		}
		memcpy(name, path, len);
		name[len] = '\0';
		n = *name_slot(t, n, name);
		path += len + (path[len] == '/');
	}
	if (n)
		n->refs++;
	pthread_mutex_unlock(&t->lock);
	return n;
}

void node_put(struct node_table *t, struct node *n)
{
	pthread_mutex_lock(&t->lock);
	assert(n->refs > 0);
	n->refs--;
	maybe_free(t, n);
	pthread_mutex_unlock(&t->lock);
}

static void unbind_locked(struct node_table *t, struct node *n, node_name_fn each, void *ctx)
{
	struct node **slot;

	if (n->state != NODE_BOUND || n == t->root)
		return;
	while (n->first_child)
		unbind_locked(t, n->first_child, each, ctx);

	slot = name_slot(t, n->parent, n->name);
	assert(*slot == n);
	*slot = n->name_next;
	n->name_next = NULL;
	t->by_name.count--;
	if (n->prev_sibling)
		n->prev_sibling->next_sibling = n->next_sibling;
	else
		n->parent->first_child = n->next_sibling;
	if (n->next_sibling)
		n->next_sibling->prev_sibling = n->prev_sibling;
	n->next_sibling = n->prev_sibling = NULL;
	n->state = NODE_UNBOUND;
	if (each && n->nlookup > 0)
		each(n, ctx);
	maybe_free(t, n);
}

static void bind_locked(struct node_table *t, struct node *parent, struct node *n)
{
	struct node **slot = &t->by_name.buckets[name_bucket(&t->by_name, parent, n->name)];

	n->name_next = *slot;
	*slot = n;
	if (++t->by_name.count > t->by_name.nbuckets)
		index_grow(&t->by_name, true);
	n->next_sibling = parent->first_child;
	if (parent->first_child)
		parent->first_child->prev_sibling = n;
	parent->first_child = n;
	n->state = NODE_BOUND;
}

static bool same_place(const struct node *n, const struct node_spec *spec)
{
	return n->row == spec->row && n->is_dir == spec->is_dir &&
	       ((!n->src && !spec->src) || (n->src && spec->src && strcmp(n->src, spec->src) == 0)) &&
	       strcmp(n->base, spec->base ? spec->base : "") == 0;
}

/* Whether bound node `n` can answer for a lookup that got `value`: the
 * same bytes (a volatile value fetched again, unchanged), or newer ones. */
static bool shows_at_least(const struct node *n, const struct blob *value)
{
	if (!value || n->value == value)
		return true;
	if (!n->value || blob_is_stale(n->value))
		return false;
	return value->seq < n->value->seq || blob_equal(n->value, value);
}

int node_bind(struct node_table *t, struct node *parent, const char *name,
	      const struct node_spec *spec, struct node **out)
{
	struct node *n = NULL;
	bool can_bind;
	int err = 0;

	pthread_mutex_lock(&t->lock);
	/* The mark is read under the lock, so that a clear and its sweep
	 * (node_unbind_stale, which takes the lock) either come before and
	 * are seen here, or come after and unbind what is bound here. */
	can_bind = parent->state == NODE_BOUND && !(spec->value && blob_is_stale(spec->value));
	if (can_bind) {
		n = *name_slot(t, parent, name);
		if (n && !(same_place(n, spec) && shows_at_least(n, spec->value))) {
			/* The name shows something else now: a volatile value that
			 * changed, a value refetched after a clear, or IMDS made a
			 * file a directory. The kernel is asking about this very
			 * name, so it learns of the new node from this reply. */
			unbind_locked(t, n, NULL, NULL);
			n = NULL;
		}
	}
	if (!n) {
		n = node_new(name, spec);
		if (!n) {
			err = -ENOMEM;
			goto out;
		}
		n->ino = t->next_ino++;
		n->parent = parent;
		n->stable_ino = node_stable_ino(parent->stable_ino, name);
		n->state = NODE_UNBOUND;
		parent->refs++;
		add_by_ino(t, n);
		if (can_bind)
			bind_locked(t, parent, n);
	}
	n->nlookup++;
	*out = n;
out:
	pthread_mutex_unlock(&t->lock);
	return err;
}

void node_forget(struct node_table *t, uint64_t ino, uint64_t count)
{
	struct node *n;

	if (ino == ROOT_INO)
		return; /* the root lives as long as the mount */
	pthread_mutex_lock(&t->lock);
	n = *ino_slot(t, ino);
	/* The kernel forgets only what a lookup gave it, at most as often. */
	assert(n && n->nlookup >= count);
	n->nlookup -= count;
	maybe_free(t, n);
	pthread_mutex_unlock(&t->lock);
}

void node_unbind(struct node_table *t, struct node *n, node_name_fn each, void *ctx)
{
	pthread_mutex_lock(&t->lock);
	unbind_locked(t, n, each, ctx);
	pthread_mutex_unlock(&t->lock);
}

void node_unbind_stale(struct node_table *t, node_name_fn each, void *ctx)
{
	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->by_name.nbuckets; i++) {
		struct node **slot = &t->by_name.buckets[i];
		while (*slot) {
			struct node *n = *slot;
			/* Unbinding a file takes it, and only it, off this chain. */
			if (!n->is_dir && n->value && blob_is_stale(n->value))
				unbind_locked(t, n, each, ctx);
			else
				slot = &n->name_next;
		}
	}
	pthread_mutex_unlock(&t->lock);
}

void node_each_bound_dir(struct node_table *t, node_name_fn each, void *ctx)
{
	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < t->by_name.nbuckets; i++)
		for (struct node *n = t->by_name.buckets[i]; n; n = n->name_next)
			if (n->is_dir && n->nlookup > 0)
				each(n, ctx);
	pthread_mutex_unlock(&t->lock);
}

bool node_is_bound(struct node_table *t, const struct node *n)
{
	bool bound;

	pthread_mutex_lock(&t->lock);
	bound = n->state == NODE_BOUND;
	pthread_mutex_unlock(&t->lock);
	return bound;
}

size_t node_count(struct node_table *t)
{
	size_t n;

	pthread_mutex_lock(&t->lock);
	n = t->by_ino.count;
	pthread_mutex_unlock(&t->lock);
	return n;
}
