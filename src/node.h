/*
 * node: the inodes the kernel knows, and which one each name shows.
 *
 * A node is a name in a directory bound to a tree row and to the IMDS path
 * it reads; a file node also holds its value, fixed when the node is made.
 * An inode's bytes, size and mode so never change: the kernel may keep its
 * pages and attributes for as long as it likes, reads need no lock, and an
 * open file reads the one value it was opened with, whatever happens to the
 * name. When a name must show another value (rm, SIGHUP, a volatile value
 * that changed), the name is bound to a new node; the old one lives on,
 * unchanged, until nothing can use it any more.
 *
 * A node's life is one state and two counts:
 *
 *   BOUND ---- rm, rmdir, SIGHUP, a stale value, a new node for the name --> UNBOUND
 *   (made bound by node_bind, or made UNBOUND when it must answer once
 *   without being found again: see node_bind)
 *
 *   freed when UNBOUND, nlookup == 0 (the kernel forgot it) and refs == 0
 *   (no request, no child, no caller holds it).
 *
 * FUSE node ids are a counter, never reused: a request or a notice for a
 * node that is gone finds nothing rather than another node.
 */
#ifndef IMDSFS_NODE_H
#define IMDSFS_NODE_H

#include "tree.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct blob;

enum node_state {
	NODE_BOUND,   /* what its name shows now: lookups of the name answer it */
	NODE_UNBOUND, /* no lookup answers it again; kept while anything holds it */
};

struct node {
	/* Fixed when the node is made. */
	uint64_t ino;	     /* FUSE node id */
	struct node *parent; /* NULL for the root; each node holds a ref on it */
	char *name;
	const struct tree_row *row;
	char *src;	     /* file: IMDS path of its value; dir: of its listing, or NULL */
	char *base;	     /* the IMDS prefix child rows' sources are relative to */
	struct blob *value;  /* a file's bytes; NULL for a directory */
	uint64_t stable_ino; /* st_ino: a hash of the path, the same across rm */
	unsigned int depth;  /* directories below raw/ */
	bool is_dir;
	atomic_uint lookups; /* a directory's LOOKUPs being answered (fs.c) */

	/* Protected by the table's lock. */
	enum node_state state;
	uint64_t nlookup;   /* the kernel's references: lookups answered, less FORGETs */
	unsigned int refs;  /* the daemon's: node_get callers, children */
	struct node *ino_next;		       /* chain of the table's index by ino */
	struct node *name_next;		       /* chain of its index by (parent, name): bound only */
	struct node *first_child, *next_sibling, *prev_sibling; /* bound children */
};

/* What a new child stands for. */
struct node_spec {
	const struct tree_row *row;
	const char *src;
	const char *base;
	struct blob *value; /* a file's bytes (the node takes a reference) */
	bool is_dir;
	unsigned int depth;
};

struct node_table;

/* Returns NULL when out of memory. */
struct node_table *node_table_create(void);
void node_table_destroy(struct node_table *table);

/* The root (FUSE_ROOT_ID); never freed before the table. */
struct node *node_root(struct node_table *table);

/* The node with FUSE id `ino`, with one more ref (drop it with node_put),
 * or NULL if there is none (any more). Takes the table lock. */
struct node *node_get(struct node_table *table, uint64_t ino);
void node_put(struct node_table *table, struct node *node);

/* The st_ino of entry `name` in the directory whose st_ino is `dir`. */
uint64_t node_stable_ino(uint64_t dir, const char *name);

/* The child bound as `name` in `parent`, with one more ref (drop it with
 * node_put), or NULL. */
struct node *node_find(struct node_table *table, struct node *parent, const char *name);

/*
 * The node the kernel is to be given for `name` in `parent`, which `spec`
 * describes, with one more kernel reference (nlookup), in *out:
 * - the bound node, when it stands for the same thing and shows the same
 *   bytes, or newer ones (a lookup that fetched slowly must not bring back
 *   an older value);
 * - otherwise a new node, bound in the old one's place;
 * - but an UNBOUND new node when spec->value is stale (it was fetched
 *   across a clear: it may answer this lookup, which overlapped the clear,
 *   but no later one) or when `parent` is itself unbound (a cwd inside a
 *   removed directory): the caller tells the kernel not to keep its name.
 * Returns 0 or -ENOMEM. Takes the table lock; never blocks otherwise.
 */
int node_bind(struct node_table *table, struct node *parent, const char *name,
	      const struct node_spec *spec, struct node **out);

/* The kernel dropped `count` of its references to node `ino` (FORGET). */
void node_forget(struct node_table *table, uint64_t ino, uint64_t count);

/* Told of a node whose name the kernel holds (nlookup > 0) and must look
 * up again; called under the table lock, so it must not block or call back
 * into the table. */
typedef void (*node_name_fn)(const struct node *node, void *ctx);

/* The node bound at `path` ("a/b/c", from the root), with one more ref
 * (drop it with node_put), or NULL. */
struct node *node_find_path(struct node_table *table, const char *path);

/* Unbind `node` and everything bound below it; `each` (may be NULL) hears
 * of the nodes the kernel holds. */
void node_unbind(struct node_table *table, struct node *node, node_name_fn each, void *ctx);

/* Unbind every bound file whose value is stale (blob_is_stale: a clear
 * dropped it from the cache); `each` hears of those the kernel holds. Run
 * after the clear: a lookup that binds later sees the mark (node_bind). */
void node_unbind_stale(struct node_table *table, node_name_fn each, void *ctx);

/* Tell `each` of every bound directory below the root that the kernel
 * holds, unbinding none: their names still lead where they did, but what
 * they list may have changed (SIGHUP). Called under the table lock. */
void node_each_bound_dir(struct node_table *table, node_name_fn each, void *ctx);

/* Whether `node` is bound now (a snapshot). */
bool node_is_bound(struct node_table *table, const struct node *node);

/* Live nodes, bound and unbound (for tests and the benchmark). */
size_t node_count(struct node_table *table);

#endif
