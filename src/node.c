/*
 * node: a hash table of (parent, name) -> attached node under one mutex, a
 * sibling list per directory for detaching subtrees, and a list of every
 * node for SIGHUP and clearing. The mutex covers only these structures;
 * nothing here blocks, and a node's value is never written after the node
 * is made, so reading it takes no lock.
 */
#include "node.h"
#include "cache.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define ROOT_INO 1 /* FUSE_ROOT_ID, without including FUSE here */

struct node_table {
	pthread_mutex_t lock;
	struct node *root;
	struct node **buckets;
	size_t nbuckets;
	size_t hashed;
	struct node *all;
	size_t count;
	unsigned long generation; /* see node_generation */
	void (*drop)(struct node *node, void *ctx); /* see node_table_set_drop */
	void *drop_ctx;
};

static uint64_t hash_name(uint64_t seed, const char *name)
{
	uint64_t h = seed ^ 1469598103934665603ULL;

	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		h = (h ^ *p) * 1099511628211ULL;
	return h;
}

static size_t bucket_of(const struct node_table *t, const struct node *parent, const char *name)
{
	return hash_name((uint64_t)(uintptr_t)parent, name) & (t->nbuckets - 1);
}

uint64_t node_stable_ino(const struct node *dir, const char *name)
{
	/* Small numbers are taken by the root and by tools' expectations. */
	uint64_t h = hash_name(dir->stable_ino, name);

	return h < 2 ? h + 2 : h;
}

static void link_all(struct node_table *t, struct node *n)
{
	n->all_next = t->all;
	n->all_prev = NULL;
	if (t->all)
		t->all->all_prev = n;
	t->all = n;
	t->count++;
}

void node_free(struct node *n)
{
	if (!n)
		return;
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

struct node_table *node_table_create(void)
{
	struct node_table *t = calloc(1, sizeof(*t));
	struct node_spec root = {.row = tree_root(), .base = "", .is_dir = true};

	if (!t)
		return NULL;
	t->nbuckets = 256;
	t->buckets = calloc(t->nbuckets, sizeof(*t->buckets));
	t->root = node_new("", &root);
	if (!t->buckets || !t->root) {
		free(t->buckets);
		node_free(t->root);
		free(t);
		return NULL;
	}
	t->root->attached = true;
	t->root->stable_ino = ROOT_INO;
	link_all(t, t->root);
	pthread_mutex_init(&t->lock, NULL);
	return t;
}

void node_table_destroy(struct node_table *t)
{
	if (!t)
		return;
	while (t->all) {
		struct node *n = t->all;
		t->all = n->all_next;
		node_free(n);
	}
	free(t->buckets);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

struct node *node_root(struct node_table *t)
{
	return t->root;
}

uint64_t node_ino(struct node_table *t, const struct node *n)
{
	return n == t->root ? ROOT_INO : (uint64_t)(uintptr_t)n;
}

struct node *node_from_ino(struct node_table *t, uint64_t ino)
{
	return ino == ROOT_INO ? t->root : (struct node *)(uintptr_t)ino;
}

static struct node **slot_of(struct node_table *t, const struct node *parent, const char *name)
{
	struct node **slot = &t->buckets[bucket_of(t, parent, name)];

	while (*slot && ((*slot)->parent != parent || strcmp((*slot)->name, name) != 0))
		slot = &(*slot)->hash_next;
	return slot;
}

static void grow(struct node_table *t)
{
	size_t old = t->nbuckets;
	struct node **old_buckets = t->buckets;
	struct node **buckets = calloc(old * 2, sizeof(*buckets));

	if (!buckets)
		return;
	t->buckets = buckets;
	t->nbuckets = old * 2;
	for (size_t i = 0; i < old; i++) {
		struct node *n = old_buckets[i];
		while (n) {
			struct node *next = n->hash_next;
			size_t b = bucket_of(t, n->parent, n->name);
			n->hash_next = buckets[b];
			buckets[b] = n;
			n = next;
		}
	}
	free(old_buckets);
}

/* Free `n` when nothing holds it any more, then its parent if that was the
 * last thing holding the parent. */
static void maybe_free(struct node_table *t, struct node *n)
{
	while (n && n != t->root && !n->attached && n->nlookup == 0 && n->children == 0) {
		struct node *parent = n->parent;

		if (n->all_prev)
			n->all_prev->all_next = n->all_next;
		else
			t->all = n->all_next;
		if (n->all_next)
			n->all_next->all_prev = n->all_prev;
		t->count--;
		if (t->drop)
			t->drop(n, t->drop_ctx);
		else
			node_free(n);
		if (!parent)
			break;
		parent->children--;
		n = parent;
	}
}

static void detach_locked(struct node_table *t, struct node *n, node_unbound_fn each, void *ctx,
			  bool supersede)
{
	if (!n->attached || n == t->root)
		return;
	n->superseded = supersede;
	while (n->first_child) {
		struct node *child = n->first_child;
		if (each && child->nlookup > 0)
			each(child, ctx);
		detach_locked(t, child, each, ctx, supersede);
	}

	struct node **slot = slot_of(t, n->parent, n->name);
	if (*slot == n)
		*slot = n->hash_next;
	t->hashed--;
	if (n->prev_sibling)
		n->prev_sibling->next_sibling = n->next_sibling;
	else
		n->parent->first_child = n->next_sibling;
	if (n->next_sibling)
		n->next_sibling->prev_sibling = n->prev_sibling;
	n->hash_next = n->next_sibling = n->prev_sibling = NULL;
	n->attached = false;
	maybe_free(t, n);
}

static bool same_place(const struct node *n, const struct node_spec *spec)
{
	return n->row == spec->row && n->is_dir == spec->is_dir &&
	       ((!n->src && !spec->src) || (n->src && spec->src && strcmp(n->src, spec->src) == 0)) &&
	       strcmp(n->base, spec->base ? spec->base : "") == 0;
}

/* Whether attached node `n` can answer for a lookup that got `value`: the
 * same bytes (a volatile value fetched again, unchanged), or newer ones. */
static bool shows_at_least(const struct node *n, const struct blob *value)
{
	if (!value || n->value == value)
		return true;
	if (!n->value)
		return false;
	return value->seq < n->value->seq ||
	       (n->value->len == value->len && memcmp(n->value->data, value->data, value->len) == 0);
}

unsigned long node_generation(struct node_table *t)
{
	unsigned long g;

	pthread_mutex_lock(&t->lock);
	g = t->generation;
	pthread_mutex_unlock(&t->lock);
	return g;
}

int node_child(struct node_table *t, struct node *parent, const char *name,
	       const struct node_spec *spec, unsigned long generation, bool last_attempt,
	       struct node **out)
{
	bool transient = false;
	struct node *n;
	int err = 0;

	pthread_mutex_lock(&t->lock);
	if (t->generation != generation) {
		if (!last_attempt) {
			err = -EAGAIN;
			goto out;
		}
		/* Out of attempts: answer with what was fetched, on a node
		 * that is nobody's to find and that the kernel must not keep. */
		transient = true;
	}
	n = transient ? NULL : *slot_of(t, parent, name);
	if (n && !(same_place(n, spec) && shows_at_least(n, spec->value))) {
		/* The name shows something else now: a volatile value that
		 * changed, or IMDS made a file a directory. The kernel is
		 * asking about this very name, so it learns of the new node
		 * from this lookup's reply. */
		detach_locked(t, n, NULL, NULL, false);
		n = NULL;
	}
	if (!n) {
		n = node_new(name, spec);
		if (!n) {
			err = -ENOMEM;
			goto out;
		}
		n->parent = parent;
		n->stable_ino = node_stable_ino(parent, name);
		parent->children++;
		link_all(t, n);
		n->transient = transient;
		/* Under a directory removed while we looked, the node answers
		 * this lookup but is nobody's to find again. */
		if (parent->attached && !transient) {
			n->attached = true;
			n->next_sibling = parent->first_child;
			if (parent->first_child)
				parent->first_child->prev_sibling = n;
			parent->first_child = n;
			struct node **slot = &t->buckets[bucket_of(t, parent, name)];
			n->hash_next = *slot;
			*slot = n;
			if (++t->hashed > t->nbuckets)
				grow(t);
		}
	}
	n->nlookup++;
	n->name_dropped = false;
	*out = n;
out:
	pthread_mutex_unlock(&t->lock);
	return err;
}

struct node *node_find(struct node_table *t, struct node *parent, const char *name)
{
	struct node *n;

	pthread_mutex_lock(&t->lock);
	n = *slot_of(t, parent, name);
	if (n)
		n->nlookup++;
	pthread_mutex_unlock(&t->lock);
	return n;
}

bool node_known(struct node_table *t, struct node *parent, const char *name)
{
	struct node *n;
	bool known;

	pthread_mutex_lock(&t->lock);
	n = *slot_of(t, parent, name);
	known = n && n->nlookup > 0 && !n->name_dropped;
	pthread_mutex_unlock(&t->lock);
	return known;
}

void node_name_dropped(struct node_table *t, struct node *parent, const char *name)
{
	struct node *n;

	pthread_mutex_lock(&t->lock);
	n = *slot_of(t, parent, name);
	if (n)
		n->name_dropped = true;
	pthread_mutex_unlock(&t->lock);
}

void node_forget(struct node_table *t, struct node *n, uint64_t count)
{
	pthread_mutex_lock(&t->lock);
	n->nlookup = n->nlookup > count ? n->nlookup - count : 0;
	maybe_free(t, n);
	pthread_mutex_unlock(&t->lock);
}

void node_detach(struct node_table *t, struct node *n, node_unbound_fn each, void *ctx)
{
	pthread_mutex_lock(&t->lock);
	detach_locked(t, n, each, ctx, false);
	pthread_mutex_unlock(&t->lock);
}

void node_supersede_matching(struct node_table *t, bool (*match)(struct node *, void *),
			     void *ctx, node_unbound_fn each, void *each_ctx)
{
	struct node **found = NULL;
	size_t count = 0, cap = 0;

	pthread_mutex_lock(&t->lock);
	t->generation++;
	for (struct node *n = t->all; n; n = n->all_next) {
		if (!n->attached || n->is_dir || !match(n, ctx))
			continue;
		if (count == cap) {
			size_t grown_cap = cap ? cap * 2 : 8;
			struct node **grown = realloc(found, grown_cap * sizeof(*grown));
			if (!grown)
				break;
			found = grown;
			cap = grown_cap;
		}
		found[count++] = n;
	}
	/* Files have no children: detaching one frees at most itself and
	 * directories above it, never another entry of `found`. */
	for (size_t i = 0; i < count; i++) {
		if (each && found[i]->nlookup > 0)
			each(found[i], each_ctx);
		detach_locked(t, found[i], NULL, NULL, true);
	}
	pthread_mutex_unlock(&t->lock);
	free(found);
}

void node_detach_all(struct node_table *t, node_unbound_fn each, void *ctx)
{
	pthread_mutex_lock(&t->lock);
	t->generation++;
	while (t->root->first_child) {
		struct node *child = t->root->first_child;
		if (each && child->nlookup > 0)
			each(child, ctx);
		detach_locked(t, child, each, ctx, true);
	}
	pthread_mutex_unlock(&t->lock);
}

bool node_is_superseded(struct node_table *t, struct node *n)
{
	bool superseded;

	pthread_mutex_lock(&t->lock);
	superseded = n->superseded;
	pthread_mutex_unlock(&t->lock);
	return superseded;
}

void node_table_set_drop(struct node_table *t, void (*drop)(struct node *, void *), void *ctx)
{
	pthread_mutex_lock(&t->lock);
	t->drop = drop;
	t->drop_ctx = ctx;
	pthread_mutex_unlock(&t->lock);
}
