/* The cache alone: hits, single flight (volatile values too), failures never
 * stored, clearing by key (with derived keys) and by prefix, volatile values
 * never stored, stale marks on what a clear dropped. */
#include "cache.h"
#include "check.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

struct counter {
	atomic_int calls;
	int result;
	const char *value;
	useconds_t delay;
};

static int fill(void *ctx, struct blob **out)
{
	struct counter *c = ctx;

	atomic_fetch_add(&c->calls, 1);
	if (c->delay)
		usleep(c->delay);
	if (c->result)
		return c->result;
	*out = blob_new(c->value, strlen(c->value));
	return 0;
}

static int get(struct cache *cache, const char *key, struct counter *c, const char *expect)
{
	struct blob *b = NULL;
	int err = cache_get(cache, key, true, fill, c, &b);

	if (!err) {
		CHECK(b != NULL);
		if (b && expect)
			CHECK(strcmp(b->data, expect) == 0);
		blob_unref(b);
	}
	return err;
}

static void test_hits_and_clear(void)
{
	struct cache *cache = cache_create();
	struct counter c = {.value = "v1"};

	CHECK_EQ_INT(get(cache, "meta-data/a", &c, "v1"), 0);
	CHECK_EQ_INT(get(cache, "meta-data/a", &c, "v1"), 0);
	CHECK_EQ_INT(c.calls, 1);

	CHECK_EQ_INT(get(cache, "meta-data/a#text:", &c, "v1"), 0);
	CHECK_EQ_INT(get(cache, "meta-data/ab", &c, "v1"), 0);
	CHECK_EQ_INT(cache_count(cache), 3);
	/* Clearing a key clears what is derived from it, not its neighbours. */
	cache_clear(cache, "meta-data/a");
	CHECK_EQ_INT(cache_count(cache), 1);
	c.value = "v2";
	CHECK_EQ_INT(get(cache, "meta-data/a", &c, "v2"), 0);
	CHECK_EQ_INT(get(cache, "meta-data/ab", &c, "v1"), 0);

	cache_clear_prefix(cache, "meta-data/");
	CHECK_EQ_INT(cache_count(cache), 0);

	/* Failures are not stored: the next reader fills again. */
	c.calls = 0;
	c.result = -ETIMEDOUT;
	CHECK_EQ_INT(get(cache, "k", &c, NULL), -ETIMEDOUT);
	CHECK_EQ_INT(get(cache, "k", &c, NULL), -ETIMEDOUT);
	CHECK_EQ_INT(c.calls, 2);
	CHECK_EQ_INT(cache_count(cache), 0);

	/* Volatile values are never stored. */
	c.result = 0;
	struct blob *b = NULL;
	c.calls = 0;
	CHECK_EQ_INT(cache_get(cache, "v", false, fill, &c, &b), 0);
	blob_unref(b);
	CHECK_EQ_INT(cache_get(cache, "v", false, fill, &c, &b), 0);
	blob_unref(b);
	CHECK_EQ_INT(c.calls, 2);
	CHECK_EQ_INT(cache_count(cache), 0);
	cache_destroy(cache);
}

struct reader {
	pthread_t thread;
	struct cache *cache;
	struct counter *counter;
	bool store;
	int err;
	char got[16];
};

static void *read_one(void *arg)
{
	struct reader *r = arg;
	struct blob *b = NULL;

	r->err = cache_get(r->cache, "cold", r->store, fill, r->counter, &b);
	if (!r->err) {
		snprintf(r->got, sizeof(r->got), "%s", b->data);
		blob_unref(b);
	}
	return NULL;
}

static void test_single_flight(void)
{
	enum { READERS = 32 };
	struct cache *cache = cache_create();
	struct counter c = {.value = "once", .delay = 200000};
	struct reader readers[READERS];

	/* Rounds: a value, a failure, a volatile value (shared while its one
	 * fill runs, then not kept). */
	for (int round = 0; round < 3; round++) {
		c.calls = 0;
		c.result = round == 1 ? -EIO : 0;
		cache_clear(cache, "cold");
		for (int i = 0; i < READERS; i++) {
			readers[i] = (struct reader){.cache = cache, .counter = &c, .store = round != 2};
			pthread_create(&readers[i].thread, NULL, read_one, &readers[i]);
		}
		for (int i = 0; i < READERS; i++) {
			pthread_join(readers[i].thread, NULL);
			CHECK_EQ_INT(readers[i].err, c.result);
			if (!c.result)
				CHECK(strcmp(readers[i].got, "once") == 0);
		}
		/* All readers overlapped with the one slow fill. */
		CHECK_EQ_INT(c.calls, 1);
	}
	CHECK_EQ_INT(cache_count(cache), 0); /* nor the failed or volatile ones */
	/* A volatile reader after the fill ended starts a new one. */
	c.calls = 0;
	c.delay = 0;
	readers[0] = (struct reader){.cache = cache, .counter = &c, .store = false};
	read_one(&readers[0]);
	CHECK_EQ_INT(c.calls, 1);
	cache_destroy(cache);
}

struct clearer_args {
	struct cache *cache;
};

static void *clear_soon(void *arg)
{
	struct clearer_args *a = arg;

	usleep(50000);
	cache_clear(a->cache, "racing");
	return NULL;
}

static void test_clear_during_fill(void)
{
	struct cache *cache = cache_create();
	struct counter c = {.value = "old", .delay = 200000};
	struct clearer_args args = {cache};
	pthread_t t;

	pthread_create(&t, NULL, clear_soon, &args);
	struct blob *b = NULL;
	CHECK_EQ_INT(cache_get(cache, "racing", true, fill, &c, &b), 0);
	pthread_join(t, NULL);
	/* The value fetched across the clear was not kept, and is stale. */
	CHECK(b && strcmp(b->data, "old") == 0 && blob_is_stale(b));
	blob_unref(b);
	CHECK_EQ_INT(cache_count(cache), 0);
	c.value = "new";
	c.delay = 0;
	CHECK_EQ_INT(cache_get(cache, "racing", true, fill, &c, &b), 0);
	CHECK(b && strcmp(b->data, "new") == 0 && !blob_is_stale(b));
	blob_unref(b);
	cache_destroy(cache);
}

/* What a clear drops is marked stale, with what is derived from it; what
 * it leaves is not; a volatile value is never stale for ending its fill. */
static void test_stale_marks(void)
{
	struct cache *cache = cache_create();
	struct counter c = {.value = "v"};
	struct blob *doc = NULL, *field = NULL, *other = NULL, *vol = NULL;

	CHECK_EQ_INT(cache_get(cache, "dynamic/doc", true, fill, &c, &doc), 0);
	CHECK_EQ_INT(cache_get(cache, "dynamic/doc#field:region", true, fill, &c, &field), 0);
	CHECK_EQ_INT(cache_get(cache, "dynamic/docs", true, fill, &c, &other), 0);
	CHECK_EQ_INT(cache_get(cache, "meta-data/spot", false, fill, &c, &vol), 0);
	CHECK(!blob_is_stale(doc) && !blob_is_stale(field) && !blob_is_stale(vol));
	cache_clear(cache, "dynamic/doc");
	CHECK(blob_is_stale(doc) && blob_is_stale(field));
	CHECK(!blob_is_stale(other) && !blob_is_stale(vol));
	cache_clear_prefix(cache, "");
	CHECK(blob_is_stale(other));
	blob_unref(doc);
	blob_unref(field);
	blob_unref(other);
	blob_unref(vol);
	cache_destroy(cache);
}

static void *fetch_fresh(void *arg)
{
	struct reader *r = arg;
	struct blob *b = NULL;

	r->err = cache_fetch(r->cache, "cold", fill, r->counter, &b);
	if (!r->err) {
		snprintf(r->got, sizeof(r->got), "%s", b->data);
		blob_unref(b);
	}
	return NULL;
}

/* What the watch's poller does: cache_put keeps a value or an absence
 * (answered without a fill), does nothing for the same bytes, and drops
 * (stale) what it replaces; cache_fetch always fills, sharing a reader's
 * fill under way and leaving the store alone. */
static void test_put_and_fetch(void)
{
	struct cache *cache = cache_create();
	struct counter c = {.value = "filled"};
	struct blob *v1 = blob_new("one", 3), *same = blob_new("one", 3), *v2 = blob_new("two", 3);
	struct blob *b = NULL, *derived = NULL;

	CHECK(cache_put(cache, "k", v1));
	CHECK_EQ_INT(cache_get(cache, "k", true, fill, &c, &b), 0);
	CHECK(b == v1 && c.calls == 0);
	blob_unref(b);
	CHECK(!cache_put(cache, "k", same));
	CHECK(!blob_is_stale(v1));
	CHECK_EQ_INT(cache_get(cache, "k#text:", true, fill, &c, &derived), 0);
	CHECK(cache_put(cache, "k", v2));
	CHECK(blob_is_stale(v1) && blob_is_stale(derived) && !blob_is_stale(v2));
	blob_unref(derived);
	c.calls = 0;
	CHECK(cache_put(cache, "k", NULL));
	CHECK(blob_is_stale(v2));
	CHECK_EQ_INT(cache_get(cache, "k", true, fill, &c, &b), -ENOENT);
	CHECK_EQ_INT(c.calls, 0);
	CHECK(!cache_put(cache, "k", NULL));
	/* No clear removes what the watch keeps. */
	cache_clear(cache, "k");
	cache_clear_prefix(cache, "");
	CHECK_EQ_INT(cache_get(cache, "k", true, fill, &c, &b), -ENOENT);
	CHECK_EQ_INT(c.calls, 0);
	CHECK(cache_put(cache, "k", v1));
	CHECK_EQ_INT(cache_get(cache, "k", true, fill, &c, &b), 0);
	CHECK(b == v1 && c.calls == 0);
	blob_unref(b);

	/* cache_fetch of a kept key fills afresh, and keeps nothing. */
	c.value = "fresh";
	CHECK_EQ_INT(cache_fetch(cache, "k", fill, &c, &b), 0);
	CHECK(strcmp(b->data, "fresh") == 0 && c.calls == 1);
	blob_unref(b);
	CHECK_EQ_INT(cache_get(cache, "k", true, fill, &c, &b), 0);
	CHECK(b == v1 && c.calls == 1);
	blob_unref(b);

	/* ... and shares a reader's fill under way. */
	struct reader reader = {.cache = cache, .counter = &c, .store = true};
	struct reader poller = {.cache = cache, .counter = &c};
	c.calls = 0;
	c.delay = 200000;
	c.value = "shared";
	pthread_create(&reader.thread, NULL, read_one, &reader);
	usleep(50000);
	pthread_create(&poller.thread, NULL, fetch_fresh, &poller);
	pthread_join(reader.thread, NULL);
	pthread_join(poller.thread, NULL);
	CHECK_EQ_INT(c.calls, 1);
	CHECK(strcmp(reader.got, "shared") == 0 && strcmp(poller.got, "shared") == 0);

	blob_unref(v1);
	blob_unref(same);
	blob_unref(v2);
	cache_destroy(cache);
}

int main(void)
{
	test_hits_and_clear();
	test_single_flight();
	test_clear_during_fill();
	test_stale_marks();
	test_put_and_fetch();
	return check_done("test_cache");
}
