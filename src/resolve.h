/*
 * resolve: what a node holds. Answers "is this name there", "what bytes does
 * this file hold" and "what does this directory list" from the table (tree),
 * the cache and, on a miss, the fetcher. It also works out which cache
 * entries `rm` of a node clears. It knows nothing of FUSE: fs.c turns its
 * answers into replies.
 */
#ifndef IMDSFS_RESOLVE_H
#define IMDSFS_RESOLVE_H

#include "cache.h"
#include "node.h"

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

struct fetcher;
struct watch;

struct resolver {
	struct fetcher *fetcher;
	struct cache *cache;
	struct node_table *nodes;
	struct watch *watch; /* NULL without -o watch */
	bool hide_sensitive;
};

struct resolve_attr {
	bool is_dir;
	bool is_sensitive; /* mode 0400 */
	size_t size;
	struct timespec mtime; /* when the value was fetched; 0 when unknown */
};

/*
 * Look `name` up in `dir`: 0 with the node it shows, holding one new lookup
 * reference, or -errno (-ENOENT when IMDS has no such value). A file's
 * value is fetched (through the cache, or afresh when volatile), as its
 * node holds it and its size must be exact. Blocks on IMDS on a miss.
 */
int resolve_lookup(struct resolver *r, struct node *dir, const char *name, struct node **out);

/* The attributes of a node (from the value it holds). */
void resolve_attr_of(const struct node *node, struct resolve_attr *attr);

struct resolve_dirent {
	char *name;
	bool is_dir;
};

/* What `dir` lists: only names that can be looked up. IMDS is asked for
 * listings only (and for the volatile values whose presence is their
 * value). */
int resolve_list(struct resolver *r, const struct node *dir, struct resolve_dirent **out,
		 size_t *count);
void resolve_dirents_free(struct resolve_dirent *entries, size_t count);

/*
 * Clear what `node` shows and whatever it is derived from (a directory:
 * everything below it, listings included). The values dropped are marked
 * stale (cache.h), which is how node_unbind_stale() finds every other name
 * that showed them: a raw/ twin, a value derived from the same document.
 */
void resolve_clear(struct resolver *r, const struct node *node);

/* Whether `node`'s name is looked up afresh at every open: its value is
 * volatile, and not the watch's (which keeps it between polls). */
bool resolve_is_volatile(const struct resolver *r, const struct node *node);

#endif
