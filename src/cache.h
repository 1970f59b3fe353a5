/*
 * cache: IMDS path (or a value derived from one) -> bytes, in memory.
 *
 * A value is fetched on first use and then served from memory until it is
 * cleared. Concurrent readers of one missing value share a single fill
 * ("single flight"). Failed fills are never stored. Clearing is by key (a
 * key also clears the values derived from it, stored as "key#...") or by
 * prefix. The lock is never held while a fill runs.
 */
#ifndef IMDSFS_CACHE_H
#define IMDSFS_CACHE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

/* Forms derived from a blob's bytes (a parsed listing), one per slot. */
#define BLOB_ANNEX_SLOTS 6

struct blob_annex {
	_Atomic(void *) value;
	void (*destroy)(void *value);
};

/* Immutable, reference-counted bytes. */
struct blob {
	atomic_uint refs;
	/*
	 * Set once the cache no longer answers with these bytes: an rm or
	 * SIGHUP cleared their key, or the fill that made them began before
	 * such a clear. Never cleared again. A name must not stay bound to a
	 * stale value (node.h); a reader may still be given one that it
	 * fetched while the clear happened.
	 */
	atomic_bool stale;
	size_t len;
	struct timespec fetched; /* when it was fetched: st_mtime */
	unsigned long long seq;	 /* order of making: of two fetches of one value,
				  * the later one has the larger seq, whatever
				  * the wall clock did */
	struct blob_annex annex[BLOB_ANNEX_SLOTS];
	char data[]; /* len bytes, then a NUL not counted in len */
};

/* Copies len bytes; returns NULL when out of memory. */
struct blob *blob_new(const char *data, size_t len);
struct blob *blob_ref(struct blob *blob);
void blob_unref(struct blob *blob);

/*
 * Work done once per value rather than once per access: attach `value`
 * (derived from the bytes) in `slot`, freed with the blob by `destroy`. If
 * another thread attached one first, `value` is destroyed and theirs is
 * returned. Lock-free.
 */
void *blob_annex_set(struct blob *blob, unsigned int slot, void *value,
		     void (*destroy)(void *value));
/* What `slot` holds, or NULL. */
void *blob_annex_get(struct blob *blob, unsigned int slot);

/* Produces the value of a key: 0 and a new blob, or -errno. */
typedef int (*cache_fill_fn)(void *ctx, struct blob **out);

struct cache;

struct cache *cache_create(void);
void cache_destroy(struct cache *cache);

/* Whether two blobs hold the same bytes (NULL equals only NULL). */
bool blob_equal(const struct blob *a, const struct blob *b);

/* Whether the cache has dropped `blob` (see struct blob). */
bool blob_is_stale(const struct blob *blob);

/*
 * The value of `key`. A cached value is returned at once; otherwise the
 * caller fills it, or waits for the thread already filling it (single
 * flight). When `store` is false the value is volatile: nothing is kept
 * once the fill ends, so a caller shares a fill that is under way and
 * otherwise starts a new one. Blocks while a fill runs, never holding the
 * cache lock. Returns 0 with a reference the caller drops with
 * blob_unref(), or the fill's -errno (or the -ENOENT cache_put kept).
 */
int cache_get(struct cache *cache, const char *key, bool store, cache_fill_fn fill, void *ctx,
	      struct blob **out);

/*
 * A fresh value of `key`, whatever the cache holds: the fill under way for
 * it, shared, or a new fill, whose result is not kept. For the watch's
 * poller, which then decides what to keep (cache_put). Blocks like
 * cache_get().
 */
int cache_fetch(struct cache *cache, const char *key, cache_fill_fn fill, void *ctx,
		struct blob **out);

/*
 * Keep what the watch's poller found for `key`: `value`, or (NULL) that
 * IMDS has nothing there, which cache_get() then answers with -ENOENT until
 * another put. No clear removes it (the next poll is its freshness, and the
 * poller's events rest on it); what is derived from it is cleared as
 * usual. When the cache holds the same already, does nothing and returns
 * false; otherwise drops what it held for `key` and what is derived from it
 * (stale, as a clear does) and returns true.
 */
bool cache_put(struct cache *cache, const char *key, struct blob *value);

/* Drop `key` and every "key#..." derived from it, and mark their values
 * stale; a fill under way for one of them makes a stale value. What
 * cache_put() kept stays. */
void cache_clear(struct cache *cache, const char *key);
/* Drop every key that starts with `prefix` ("" drops everything), as
 * cache_clear() does. */
void cache_clear_prefix(struct cache *cache, const char *prefix);
/* Number of values held (for tests). */
size_t cache_count(struct cache *cache);

#endif
