/*
 * cache: a chained hash table under one mutex. The mutex covers only table
 * operations; fills run unlocked, and the threads that want a value being
 * filled wait on a condition variable. An entry that is cleared while its
 * fill runs is unlinked at once (a new reader starts a fresh fill) and
 * freed by the last thread that still holds it. A volatile entry is in the
 * table only while its fill runs: that is what lets concurrent readers of
 * one volatile value share a request, and no reader ever get a value whose
 * fetch ended before it asked.
 */
#include "cache.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct entry {
	struct entry *next;
	char *key;
	struct blob *value; /* set once the fill succeeded */
	int err;	    /* the fill's result */
	bool filling;
	bool detached;	     /* no longer in the table */
	bool cleared;	     /* detached by a clear: its value is stale */
	bool pinned;	     /* the watch's (cache_put): no clear removes it */
	unsigned int holders; /* threads waiting for, or reading, a detached entry */
};

struct cache {
	pthread_mutex_t lock;
	pthread_cond_t filled;
	struct entry **buckets;
	size_t nbuckets; /* a power of two */
	size_t count;
};

static atomic_ullong blobs_made;

struct blob *blob_new(const char *data, size_t len)
{
	struct blob *b = malloc(sizeof(*b) + len + 1);

	if (!b)
		return NULL;
	atomic_init(&b->refs, 1);
	atomic_init(&b->stale, false);
	for (unsigned int i = 0; i < BLOB_ANNEX_SLOTS; i++) {
		atomic_init(&b->annex[i].value, NULL);
		b->annex[i].destroy = NULL;
	}
	b->len = len;
	clock_gettime(CLOCK_REALTIME, &b->fetched);
	b->seq = atomic_fetch_add(&blobs_made, 1);
	if (len)
		memcpy(b->data, data, len);
	b->data[len] = '\0';
	return b;
}

struct blob *blob_ref(struct blob *b)
{
	atomic_fetch_add(&b->refs, 1);
	return b;
}

void blob_unref(struct blob *b)
{
	if (!b || atomic_fetch_sub(&b->refs, 1) != 1)
		return;
	for (unsigned int i = 0; i < BLOB_ANNEX_SLOTS; i++) {
		void *value = atomic_load(&b->annex[i].value);
		if (value)
			b->annex[i].destroy(value);
	}
	free(b);
}

bool blob_equal(const struct blob *a, const struct blob *b)
{
	if (!a || !b)
		return a == b;
	return a->len == b->len && memcmp(a->data, b->data, a->len) == 0;
}

bool blob_is_stale(const struct blob *b)
{
	return atomic_load(&b->stale);
}

void *blob_annex_set(struct blob *b, unsigned int slot, void *value, void (*destroy)(void *))
{
	void *expected = NULL;

	if (atomic_compare_exchange_strong(&b->annex[slot].value, &expected, value)) {
		/* Read only when the last reference goes, after every writer. */
		b->annex[slot].destroy = destroy;
		return value;
	}
	destroy(value);
	return expected;
}

void *blob_annex_get(struct blob *b, unsigned int slot)
{
	return atomic_load(&b->annex[slot].value);
}

static uint64_t hash_key(const char *key)
{
	uint64_t h = 1469598103934665603ULL;

	for (const unsigned char *p = (const unsigned char *)key; *p; p++)
		h = (h ^ *p) * 1099511628211ULL;
	return h;
}

struct cache *cache_create(void)
{
	struct cache *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->nbuckets = 64;
	c->buckets = calloc(c->nbuckets, sizeof(*c->buckets));
	if (!c->buckets) {
		free(c);
		return NULL;
	}
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->filled, NULL);
	return c;
}

static void entry_free(struct entry *e)
{
	blob_unref(e->value);
	free(e->key);
	free(e);
}

static struct entry **slot_of(struct cache *c, const char *key)
{
	struct entry **slot = &c->buckets[hash_key(key) & (c->nbuckets - 1)];

	while (*slot && strcmp((*slot)->key, key) != 0)
		slot = &(*slot)->next;
	return slot;
}

static void grow(struct cache *c)
{
	size_t n = c->nbuckets * 2;
	struct entry **buckets = calloc(n, sizeof(*buckets));

	if (!buckets)
		return; /* keep the longer chains; still correct */
	for (size_t i = 0; i < c->nbuckets; i++) {
		struct entry *e = c->buckets[i];
		while (e) {
			struct entry *next = e->next;
			size_t b = hash_key(e->key) & (n - 1);
			e->next = buckets[b];
			buckets[b] = e;
			e = next;
		}
	}
	free(c->buckets);
	c->buckets = buckets;
	c->nbuckets = n;
}

/* Take `e` out of the table; free it unless a thread still holds it. */
static void unlink_entry(struct cache *c, struct entry **slot)
{
	struct entry *e = *slot;

	*slot = e->next;
	e->next = NULL;
	e->detached = true;
	c->count--;
	if (!e->filling && e->holders == 0)
		entry_free(e);
}

/* The result of a finished fill for a thread that held `e`. */
static int take_result(struct cache *c, struct entry *e, struct blob **out)
{
	int err = e->err;

	if (err == 0)
		*out = blob_ref(e->value);
	if (e->detached && --e->holders == 0)
		entry_free(e);
	else if (!e->detached)
		e->holders--;
	(void)c;
	return err;
}

/* How a caller wants a key's value (cache_get, cache_fetch). */
enum want {
	WANT_STORED,   /* the cached value, filled and kept if there is none */
	WANT_VOLATILE, /* the fill under way, or a new one; nothing kept */
	WANT_FRESH,    /* as WANT_VOLATILE, but never what is stored */
};

static int get(struct cache *c, const char *key, enum want want, cache_fill_fn fill, void *ctx,
	       struct blob **out)
{
	struct entry **slot, *e;
	struct blob *value = NULL;
	int err;

	*out = NULL;
	pthread_mutex_lock(&c->lock);
	slot = slot_of(c, key);
	e = *slot;
	if (e && !e->filling && want != WANT_FRESH) {
		/* A value, or what the poller found there: nothing (-ENOENT). */
		err = e->err;
		if (!err)
			*out = blob_ref(e->value);
		pthread_mutex_unlock(&c->lock);
		return err;
	}
	if (e && e->filling) {
		e->holders++;
		while (e->filling)
			pthread_cond_wait(&c->filled, &c->lock);
		err = take_result(c, e, out);
		pthread_mutex_unlock(&c->lock);
		return err;
	}
	if (e) {
		/* WANT_FRESH of a stored key: readers are answered from the
		 * store meanwhile, so there is no flight to share. */
		pthread_mutex_unlock(&c->lock);
		return fill(ctx, out);
	}

	e = calloc(1, sizeof(*e));
	if (!e || !(e->key = strdup(key))) {
		free(e);
		pthread_mutex_unlock(&c->lock);
		return -ENOMEM;
	}
	e->filling = true;
	e->holders = 1;
	*slot = e;
	c->count++;
	if (c->count > c->nbuckets)
		grow(c);
	pthread_mutex_unlock(&c->lock);

	err = fill(ctx, &value);

	pthread_mutex_lock(&c->lock);
	e->filling = false;
	e->err = err;
	e->value = err ? NULL : value;
	if (err && value)
		blob_unref(value);
	if (e->value && e->cleared)
		atomic_store(&e->value->stale, true); /* fetched across a clear */
	if ((err || want != WANT_STORED) && !e->detached) {
		/* Failures are never cached, nor volatile values: the next
		 * reader fills again. */
		unlink_entry(c, slot_of(c, key));
	}
	pthread_cond_broadcast(&c->filled);
	err = take_result(c, e, out);
	pthread_mutex_unlock(&c->lock);
	return err;
}

int cache_get(struct cache *c, const char *key, bool store, cache_fill_fn fill, void *ctx,
	      struct blob **out)
{
	return get(c, key, store ? WANT_STORED : WANT_VOLATILE, fill, ctx, out);
}

int cache_fetch(struct cache *c, const char *key, cache_fill_fn fill, void *ctx,
		struct blob **out)
{
	return get(c, key, WANT_FRESH, fill, ctx, out);
}

static bool is_derived_from(const char *key, const char *base, size_t base_len)
{
	return strncmp(key, base, base_len) == 0 && (key[base_len] == '\0' || key[base_len] == '#');
}

/* Under the lock. Pinned entries stay unless `pinned_too`. */
static void clear_matching_locked(struct cache *c, const char *what, bool prefix, bool pinned_too)
{
	size_t len = strlen(what);

	for (size_t i = 0; i < c->nbuckets; i++) {
		struct entry **slot = &c->buckets[i];
		while (*slot) {
			const char *k = (*slot)->key;
			bool match = (prefix ? strncmp(k, what, len) == 0
					     : is_derived_from(k, what, len)) &&
				     (pinned_too || !(*slot)->pinned);
			if (match) {
				struct entry *e = *slot;

				e->cleared = true;
				if (e->value)
					atomic_store(&e->value->stale, true);
				unlink_entry(c, slot);
			} else
				slot = &(*slot)->next;
		}
	}
}

static void clear_matching(struct cache *c, const char *what, bool prefix)
{
	pthread_mutex_lock(&c->lock);
	clear_matching_locked(c, what, prefix, false);
	pthread_mutex_unlock(&c->lock);
}

void cache_clear(struct cache *c, const char *key)
{
	clear_matching(c, key, false);
}

void cache_clear_prefix(struct cache *c, const char *prefix)
{
	clear_matching(c, prefix, true);
}

static bool holds(const struct entry *e, const struct blob *value)
{
	if (e->filling)
		return false;
	return value ? !e->err && blob_equal(e->value, value) : e->err == -ENOENT;
}

bool cache_put(struct cache *c, const char *key, struct blob *value)
{
	struct entry *e, **slot;
	bool changed = false;

	pthread_mutex_lock(&c->lock);
	e = *slot_of(c, key);
	if (e && holds(e, value))
		goto out;
	e = calloc(1, sizeof(*e));
	if (!e || !(e->key = strdup(key))) {
		/* Out of memory: what was held goes, so readers ask IMDS. */
		free(e);
		clear_matching_locked(c, key, false, true);
		changed = true;
		goto out;
	}
	clear_matching_locked(c, key, false, true);
	e->value = value ? blob_ref(value) : NULL;
	e->err = value ? 0 : -ENOENT;
	e->pinned = true;
	slot = slot_of(c, key);
	*slot = e;
	c->count++;
	if (c->count > c->nbuckets)
		grow(c);
	changed = true;
out:
	pthread_mutex_unlock(&c->lock);
	return changed;
}

size_t cache_count(struct cache *c)
{
	size_t n;

	pthread_mutex_lock(&c->lock);
	n = c->count;
	pthread_mutex_unlock(&c->lock);
	return n;
}

void cache_destroy(struct cache *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	clear_matching_locked(c, "", true, true);
	pthread_mutex_unlock(&c->lock);
	free(c->buckets);
	pthread_mutex_destroy(&c->lock);
	pthread_cond_destroy(&c->filled);
	free(c);
}
