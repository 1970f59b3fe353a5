/*
 * watch: the poller. Each round it fetches every polled key (through the
 * cache, so a reader fetching the same key at the same time shares the
 * request), works out which watched names appeared, changed or went, makes
 * the kernel show it to file watchers (kernel_wake_watchers: a real
 * operation on the mount, done by this thread), and keeps the new values in
 * the cache (cache_put), where readers find them until the next round.
 *
 * The order of a round is what makes each watcher see its event on the
 * right inode: first the names that went (removed while the kernel still
 * finds them, leaves first), then the ones that changed (touched on the
 * inode the watcher holds); then the new values are kept, and the changed
 * files' old inodes dropped (so that a watcher of such a file sees it go
 * and can watch the new one); last the names that appeared are created,
 * parents first (the kernel makes IN_CREATE only for a name it looked up
 * and did not find: the poller's own lookups of them find nothing until
 * they are created, see watch_hides).
 *
 * What the poller keeps is never cleared by rm or SIGHUP (cache_put): the
 * next poll is its freshness, and the events rest on the kernel finding the
 * last round's state until this round's operations are done.
 *
 * A failed fetch is no change: its key keeps its last value, and so does
 * every key of every name that depends on it, which has no event that round
 * (its next round then still sees what changed).
 */
#include "watch.h"
#include "cache.h"
#include "fetch.h"
#include "kernel.h"
#include "log.h"
#include "resolve.h"
#include "tree.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* What the poller asks IMDS every round: the values that announce events,
 * and the listings that say whether the raw/ names of two of them exist. */
static const char *const polled[] = {
	"meta-data/spot/instance-action",
	"meta-data/instance-action",
	"meta-data/autoscaling/target-lifecycle-state",
	"meta-data/events/",
	"meta-data/events/recommendations/",
	"meta-data/events/recommendations/rebalance",
	"meta-data/events/maintenance/",
	"meta-data/events/maintenance/scheduled",
};
#define POLLED (sizeof(polled) / sizeof(polled[0]))

/*
 * The names watchers see (SPEC.md's table, and the names the raw/ ones
 * live in): one is there when its listing (if any) names it and its source
 * (if any) answers; it changed when its source's bytes did. `reported`
 * names get a log line.
 */
/* clang-format off */
static const struct watched {
	const char *path;    /* in the mount */
	bool is_dir;
	const char *source;  /* polled key whose value it shows, or NULL */
	const char *listing; /* polled listing that must name it, or NULL */
	bool reported;
} watched[] = {
/*	 path                                              dir    source                                          listing                                 reported */
	{"spot_instance_action",                           true,  "meta-data/spot/instance-action",               NULL,                                   true},
	{"spot_instance_action/action",                    false, "meta-data/spot/instance-action",               NULL,                                   false},
	{"spot_instance_action/time",                      false, "meta-data/spot/instance-action",               NULL,                                   false},
	{"instance_action",                                false, "meta-data/instance-action",                    NULL,                                   true},
	{"autoscaling_target_lifecycle_state",             false, "meta-data/autoscaling/target-lifecycle-state", NULL,                                   true},
	{"raw/meta-data/events/recommendations",           true,  NULL,                                           "meta-data/events/",                    false},
	{"raw/meta-data/events/recommendations/rebalance", false, "meta-data/events/recommendations/rebalance",   "meta-data/events/recommendations/",    true},
	{"raw/meta-data/events/maintenance",               true,  NULL,                                           "meta-data/events/",                    false},
	{"raw/meta-data/events/maintenance/scheduled",     false, "meta-data/events/maintenance/scheduled",       "meta-data/events/maintenance/",        true},
};
/* clang-format on */
#define WATCHED (sizeof(watched) / sizeof(watched[0]))

/* What one poll found for a key. */
struct found {
	bool known;	    /* the fetch answered (200 or 404) */
	struct blob *value; /* 200: the body; NULL: 404 */
};

/* A watched name as a round sees it. */
enum name_state { NAME_UNKNOWN, NAME_ABSENT, NAME_PRESENT };

struct watch {
	unsigned int seconds;
	struct resolver *resolver;
	struct kernel *kernel;
	char *mountpoint;
	pthread_t thread;
	bool running;
	bool can_wake; /* the mount was found, and is not read-only */

	pthread_mutex_t lock; /* protects the two below */
	pthread_cond_t cond;
	bool quit;
	bool hidden[WATCHED]; /* being created this round (watch_hides) */

	/* The poller's own (no lock). */
	struct found last[POLLED]; /* the values kept, as of the last rounds */
	bool failing;
};

static int key_index(const char *key)
{
	for (size_t i = 0; i < POLLED; i++)
		if (strcmp(polled[i], key) == 0)
			return (int)i;
	return -1;
}

int watch_check_table(void)
{
	for (size_t i = 0; i < WATCHED; i++) {
		const struct watched *n = &watched[i];
		const char *slash = strrchr(n->path, '/');
		size_t dir_len = slash ? (size_t)(slash - n->path) : 0;

		if ((n->source && key_index(n->source) < 0) ||
		    (n->listing && key_index(n->listing) < 0)) {
			log_error("watch: %s depends on a key that is not polled", n->path);
			return -EINVAL;
		}
		/* A raw/ name's listing is its directory's. */
		if (n->listing && (strncmp(n->path, "raw/", 4) != 0 || dir_len < 4 ||
				   strlen(n->listing) != dir_len - 4 + 1 ||
				   strncmp(n->listing, n->path + 4, dir_len - 4) != 0)) {
			log_error("watch: %s is not named by its listing %s", n->path, n->listing);
			return -EINVAL;
		}
		for (size_t j = 0; j < i; j++) {
			if (strcmp(watched[j].path, n->path) == 0) {
				log_error("watch: %s appears twice", n->path);
				return -EINVAL;
			}
		}
	}
	return 0;
}

int watch_create(unsigned int seconds, struct watch **out)
{
	struct watch *w = calloc(1, sizeof(*w));

	*out = NULL;
	if (!w)
		return -ENOMEM;
	w->seconds = seconds;
	pthread_mutex_init(&w->lock, NULL);
	pthread_condattr_t attr;
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&w->cond, &attr);
	pthread_condattr_destroy(&attr);
	*out = w;
	return 0;
}

static void found_clear(struct found *f)
{
	blob_unref(f->value);
	memset(f, 0, sizeof(*f));
}

void watch_destroy(struct watch *w)
{
	if (!w)
		return;
	watch_stop(w);
	for (size_t i = 0; i < POLLED; i++)
		found_clear(&w->last[i]);
	pthread_mutex_destroy(&w->lock);
	pthread_cond_destroy(&w->cond);
	free(w->mountpoint);
	free(w);
}

bool watch_serves(const struct watch *w, const char *path)
{
	return w && key_index(path) >= 0;
}

/* The path of `name` in directory `dir`, from the root, in `buf`; false
 * when it does not fit (then it is none of the watched ones). */
static bool path_of(const struct node *dir, const char *name, char *buf, size_t size)
{
	size_t len = strlen(name), at;

	if (len >= size)
		return false;
	at = size - len - 1;
	memcpy(buf + at, name, len + 1);
	for (const struct node *n = dir; n && n->parent; n = n->parent) {
		size_t part = strlen(n->name);
		if (part + 1 > at)
			return false;
		buf[--at] = '/';
		at -= part;
		memcpy(buf + at, n->name, part);
	}
	memmove(buf, buf + at, size - at);
	return true;
}

bool watch_hides(struct watch *w, const struct node *dir, const char *name)
{
	char path[256];
	bool hides = false;

	if (!w || !path_of(dir, name, path, sizeof(path)))
		return false;
	pthread_mutex_lock(&w->lock);
	for (size_t i = 0; i < WATCHED && !hides; i++)
		hides = w->hidden[i] && strcmp(watched[i].path, path) == 0;
	pthread_mutex_unlock(&w->lock);
	return hides;
}

struct poll_fill {
	struct watch *w;
	const char *path;
	char why[512];
};

static int fill_polled(void *ctx, struct blob **out)
{
	struct poll_fill *f = ctx;
	char *data;
	size_t len;
	int err = fetch_get_quietly(f->w->resolver->fetcher, f->path, &data, &len, f->why,
				    sizeof(f->why));

	if (err)
		return err;
	*out = blob_new(data, len);
	free(data);
	return *out ? 0 : -ENOMEM;
}

/* Fetch every polled key into `now`; the first failure's reason in `why`.
 * Returns whether every fetch answered. */
static bool fetch_all(struct watch *w, struct found now[POLLED], char *why, size_t why_size)
{
	bool all = true;

	why[0] = '\0';
	for (size_t i = 0; i < POLLED; i++) {
		struct poll_fill f = {w, polled[i], ""};
		struct blob *b = NULL;
		int err = cache_fetch(w->resolver->cache, polled[i], fill_polled, &f, &b);

		memset(&now[i], 0, sizeof(now[i]));
		if (err == 0 || err == -ENOENT) {
			now[i].known = true;
			now[i].value = b;
			continue;
		}
		all = false;
		if (!why[0])
			snprintf(why, why_size, "%s",
				 f.why[0] ? f.why : strerror(-err)); /* joined a reader's fetch */
	}
	return all;
}

/* Whether the listing `body` names `name` (a directory if `is_dir`):
 * NAME_PRESENT or NAME_ABSENT, or NAME_UNKNOWN when it cannot be read. */
static enum name_state listed(const struct blob *body, const char *name, bool is_dir)
{
	struct tree_listing l;
	const struct tree_entry *e;
	enum name_state state;

	if (!body)
		return NAME_ABSENT;
	if (tree_parse_listing(body->data, body->len, TREE_KEYS_LISTING, true, "watch", &l) != 0)
		return NAME_UNKNOWN;
	e = tree_listing_find(&l, name);
	state = e && e->is_dir == is_dir ? NAME_PRESENT : NAME_ABSENT;
	tree_listing_free(&l);
	return state;
}

static const char *leaf(const char *path)
{
	const char *slash = strrchr(path, '/');

	return slash ? slash + 1 : path;
}

/* The keys a watched name depends on: its source and its listing. */
static bool depends_on(const struct watched *n, size_t key)
{
	return (n->source && key_index(n->source) == (int)key) ||
	       (n->listing && key_index(n->listing) == (int)key);
}

static enum name_state state_of(const struct watched *n, const struct found keys[POLLED])
{
	const struct found *src = n->source ? &keys[key_index(n->source)] : NULL;
	const struct found *list = n->listing ? &keys[key_index(n->listing)] : NULL;
	enum name_state state = NAME_PRESENT;

	if ((src && !src->known) || (list && !list->known))
		return NAME_UNKNOWN;
	if (list)
		state = listed(list->value, leaf(n->path), n->is_dir);
	if (state == NAME_PRESENT && src && !src->value)
		state = NAME_ABSENT;
	return state;
}

static bool changed_value(const struct watched *n, const struct found *before,
			  const struct found *now)
{
	if (!n->source)
		return false;
	int i = key_index(n->source);
	return !blob_equal(before[i].value, now[i].value);
}

static unsigned int depth_of(const char *path)
{
	unsigned int d = 0;

	for (; *path; path++)
		d += *path == '/';
	return d;
}

/* What happens to each watched name this round. */
enum change { SAME, APPEARS, CHANGES, GOES };

/* Whether a name above watched[i] appears this round too (its creation
 * brings the name along, and nobody can watch inside it yet). */
static bool parent_appears(size_t i, const enum change change[WATCHED])
{
	for (size_t j = 0; j < WATCHED; j++) {
		size_t len = strlen(watched[j].path);
		if (j != i && change[j] == APPEARS &&
		    strncmp(watched[i].path, watched[j].path, len) == 0 &&
		    watched[i].path[len] == '/')
			return true;
	}
	return false;
}

static void tell_watchers(struct watch *w, const struct watched *n, enum kernel_event event)
{
	int err;

	if (!w->can_wake)
		return;
	err = kernel_wake_watchers(w->kernel, n->path, n->is_dir, event);
	if (err == -EROFS) {
		log_warning("watch: the mount is read-only: file watchers are not woken");
		w->can_wake = false;
	} else if (err) {
		log_debug("watch: %s: %s", n->path, strerror(-err));
	}
}

/* A changed file's inode as the kernel knows it now, to drop once the new
 * value is kept. */
struct old_inode {
	uint64_t parent, ino;
	char name[TREE_NAME_MAX + 1];
};

static bool find_old_inode(struct watch *w, const struct watched *n, struct old_inode *old)
{
	struct node *node = node_find_path(w->resolver->nodes, n->path);

	if (!node)
		return false;
	old->parent = node->parent->ino;
	old->ino = node->ino;
	snprintf(old->name, sizeof(old->name), "%s", node->name);
	node_put(w->resolver->nodes, node);
	return true;
}

/* Keep the stable keys' new values, and make every name whose value or
 * presence changed lead to a new node (or nothing). */
static void keep(struct watch *w, const struct found now[POLLED], const bool stable[POLLED],
		 const enum change change[WATCHED])
{
	struct kernel_batch batch = {0};
	bool changed = false;

	for (size_t k = 0; k < POLLED; k++)
		if (stable[k])
			changed |= cache_put(w->resolver->cache, polled[k], now[k].value);
	if (!changed)
		return;
	node_unbind_stale(w->resolver->nodes, kernel_note_name, &batch);
	/* A name can go with its value unchanged (its listing dropped it),
	 * and a directory has no value to go stale. */
	for (size_t i = 0; i < WATCHED; i++) {
		struct node *n;
		if (change[i] != GOES || !(n = node_find_path(w->resolver->nodes, watched[i].path)))
			continue;
		node_unbind(w->resolver->nodes, n, kernel_note_name, &batch);
		node_put(w->resolver->nodes, n);
	}
	kernel_names_changed(w->kernel, &batch);
}

/*
 * The round's order (see the top of this file): names that go, leaves
 * first, while the kernel still finds them; names that change, touched on
 * the inode their watchers hold; the new values kept; the changed files'
 * old inodes dropped; names that appear, created while the poller's own
 * lookups of them find nothing (watch_hides), parents first.
 */
static void round_of_events(struct watch *w, const struct found now[POLLED],
			    const bool stable[POLLED], const enum change change[WATCHED])
{
	struct old_inode olds[WATCHED];
	size_t order[WATCHED], nolds = 0;

	for (size_t i = 0; i < WATCHED; i++)
		order[i] = i;
	for (size_t i = 1; i < WATCHED; i++) /* deepest first */
		for (size_t j = i; j > 0 && depth_of(watched[order[j]].path) >
						 depth_of(watched[order[j - 1]].path);
		     j--) {
			size_t t = order[j];
			order[j] = order[j - 1];
			order[j - 1] = t;
		}

	for (size_t k = 0; k < WATCHED; k++)
		if (change[order[k]] == GOES)
			tell_watchers(w, &watched[order[k]], KERNEL_GONE);
	for (size_t k = 0; k < WATCHED; k++) {
		const struct watched *n = &watched[order[k]];
		if (change[order[k]] != CHANGES)
			continue;
		if (!n->is_dir && w->can_wake && find_old_inode(w, n, &olds[nolds]))
			nolds++;
		tell_watchers(w, n, KERNEL_CHANGED);
	}
	keep(w, now, stable, change);
	for (size_t k = 0; k < nolds; k++)
		kernel_drop_inode(w->kernel, olds[k].parent, olds[k].ino, olds[k].name);

	pthread_mutex_lock(&w->lock);
	for (size_t i = 0; i < WATCHED; i++)
		w->hidden[i] = change[i] == APPEARS;
	pthread_mutex_unlock(&w->lock);
	for (size_t k = WATCHED; k-- > 0;) {
		size_t i = order[k];
		if (change[i] == APPEARS && !parent_appears(i, change))
			tell_watchers(w, &watched[i], KERNEL_APPEARED);
	}
	pthread_mutex_lock(&w->lock);
	memset(w->hidden, 0, sizeof(w->hidden));
	pthread_mutex_unlock(&w->lock);

	static const char *const said[] = {[APPEARS] = "appeared", [CHANGES] = "changed",
					   [GOES] = "disappeared"};
	for (size_t i = 0; i < WATCHED; i++)
		if (watched[i].reported && change[i] != SAME)
			log_info("watch: %s %s", watched[i].path, said[change[i]]);
}

static bool keys_stable(size_t i, const bool stable[POLLED])
{
	for (size_t k = 0; k < POLLED; k++)
		if (depends_on(&watched[i], k) && !stable[k])
			return false;
	return true;
}

static void poll_once(struct watch *w)
{
	struct found now[POLLED];
	enum name_state before[WATCHED], after[WATCHED];
	enum change change[WATCHED];
	bool stable[POLLED], first = true, again;
	char why[512];

	if (!fetch_all(w, now, why, sizeof(why))) {
		if (!w->failing)
			log_warning("watch: polling IMDS fails (%s); the watched files keep their "
				    "last values",
				    why);
		w->failing = true;
	} else if (w->failing) {
		log_info("watch: polling IMDS works again");
		w->failing = false;
	}

	/* A key is kept only when every name that depends on it can be told
	 * this round: a name with one unknown key waits, with all its keys,
	 * so that its next round still sees what changed. */
	for (size_t k = 0; k < POLLED; k++) {
		stable[k] = now[k].known;
		first &= !w->last[k].known;
	}
	for (size_t i = 0; i < WATCHED; i++) {
		before[i] = state_of(&watched[i], w->last);
		after[i] = state_of(&watched[i], now);
	}
	do {
		again = false;
		for (size_t i = 0; i < WATCHED; i++) {
			if (after[i] != NAME_UNKNOWN && keys_stable(i, stable))
				continue;
			for (size_t k = 0; k < POLLED; k++) {
				if (depends_on(&watched[i], k) && stable[k]) {
					stable[k] = false;
					again = true;
				}
			}
		}
	} while (again);

	for (size_t i = 0; i < WATCHED; i++) {
		change[i] = SAME;
		if (first || before[i] == NAME_UNKNOWN || after[i] == NAME_UNKNOWN ||
		    !keys_stable(i, stable))
			continue;
		if (before[i] == NAME_PRESENT && after[i] == NAME_ABSENT)
			change[i] = GOES;
		else if (before[i] == NAME_ABSENT && after[i] == NAME_PRESENT)
			change[i] = APPEARS;
		else if (after[i] == NAME_PRESENT && changed_value(&watched[i], w->last, now))
			change[i] = CHANGES;
	}
	/* The first round only sets the scene: nothing changed before it. */
	if (first)
		keep(w, now, stable, change);
	else
		round_of_events(w, now, stable, change);

	for (size_t k = 0; k < POLLED; k++) {
		if (stable[k]) {
			found_clear(&w->last[k]);
			w->last[k] = now[k];
		} else {
			found_clear(&now[k]);
		}
	}
}

static void *poller(void *arg)
{
	struct watch *w = arg;
	struct timespec next;
	int err = kernel_events_begin(w->kernel, w->mountpoint);

	w->can_wake = err == 0;
	if (err)
		log_warning("watch: cannot find %s (%s): file watchers are not woken",
			    w->mountpoint, strerror(-err));
	clock_gettime(CLOCK_MONOTONIC, &next);
	for (;;) {
		pthread_mutex_lock(&w->lock);
		while (!w->quit && pthread_cond_timedwait(&w->cond, &w->lock, &next) != ETIMEDOUT)
			;
		bool quit = w->quit;
		pthread_mutex_unlock(&w->lock);
		if (quit)
			break;
		poll_once(w);
		/* The next round starts SECONDS after this one did, or now if
		 * this one took longer. */
		next.tv_sec += w->seconds;
		struct timespec t;
		clock_gettime(CLOCK_MONOTONIC, &t);
		if (t.tv_sec > next.tv_sec || (t.tv_sec == next.tv_sec && t.tv_nsec > next.tv_nsec))
			next = t;
	}
	return NULL;
}

int watch_start(struct watch *w, struct resolver *r, struct kernel *k, const char *mountpoint)
{
	int err;

	w->resolver = r;
	w->kernel = k;
	w->mountpoint = strdup(mountpoint);
	if (!w->mountpoint)
		return -ENOMEM;
	err = pthread_create(&w->thread, NULL, poller, w);
	if (err)
		return -err;
	w->running = true;
	log_info("watch: polling the event values every %u s", w->seconds);
	return 0;
}

void watch_quit(struct watch *w)
{
	if (!w)
		return;
	pthread_mutex_lock(&w->lock);
	w->quit = true;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

void watch_stop(struct watch *w)
{
	if (!w || !w->running)
		return;
	watch_quit(w);
	pthread_join(w->thread, NULL);
	w->running = false;
}
