/*
 * node: the inodes the kernel knows, and what each one stands for.
 *
 * A node is a name in a directory bound to a tree row and to the IMDS path
 * it reads. Its FUSE inode number is its address (as libfuse's
 * passthrough_ll does), so finding a node from a request takes no lock.
 * Nodes live while the kernel holds a lookup reference or while they are
 * attached to their name; `rm` detaches a node, so the next lookup of that
 * name makes a new inode with no stale page cache or attributes.
 */
#ifndef IMDSFS_NODE_H
#define IMDSFS_NODE_H

#include "tree.h"

#include <stdbool.h>
#include <stdint.h>

struct node {
	struct node *parent;
	char *name;
	const struct tree_row *row;
	char *src;	    /* file: IMDS path of its value; dir: of its listing, or NULL */
	char *base;	    /* the IMDS prefix child rows' sources are relative to */
	uint64_t stable_ino; /* st_ino: a hash of the path, the same across rm */
	unsigned int depth;  /* directories below raw/ */
	bool is_dir;

	/* Owned by the table's lock. */
	struct blob *held; /* the bytes this inode shows (see node_hold) */
	bool attached;
	bool superseded; /* unbound because its value changed (node_supersede) */
	uint64_t nlookup;
	unsigned int children; /* child nodes whose parent pointer is this node */
	struct node *first_child, *next_sibling, *prev_sibling;
	struct node *hash_next;
	struct node *all_next, *all_prev;
};

/* What a new child stands for. */
struct node_spec {
	const struct tree_row *row;
	const char *src;
	const char *base;
	bool is_dir;
	unsigned int depth;
};

struct node_table;

struct node_table *node_table_create(void);
void node_table_destroy(struct node_table *table);

struct node *node_root(struct node_table *table);
/* FUSE inode number <-> node (FUSE_ROOT_ID is the root). No lock. */
uint64_t node_ino(struct node_table *table, const struct node *node);
struct node *node_from_ino(struct node_table *table, uint64_t ino);

/* The st_ino of entry `name` in `dir`, for readdir. */
uint64_t node_stable_ino(const struct node *dir, const char *name);

/*
 * The child `name` of `parent`, made from `spec` unless one that matches it
 * is attached already (one that no longer matches is detached and
 * replaced). Takes a lookup reference when `lookup`. NULL when out of memory.
 */
struct node *node_child(struct node_table *table, struct node *parent, const char *name,
			const struct node_spec *spec, bool lookup);

/* The attached child `name` with one more lookup reference (drop it with
 * node_forget), or NULL. */
struct node *node_find(struct node_table *table, struct node *parent, const char *name);

/* The kernel dropped `count` lookup references. */
void node_forget(struct node_table *table, struct node *node, uint64_t count);

/* Told of each node the kernel knows that a detach unbinds below the one
 * asked for; called under the table lock (so it must not block or call back
 * into the table), before the node is unbound. */
typedef void (*node_detached_fn)(struct node *node, void *ctx);

/* Unbind `node` (and everything below it) from its name. */
void node_detach(struct node_table *table, struct node *node, node_detached_fn each, void *ctx);

/*
 * Unbind `node` because the value it shows changed under another name (rm
 * of a raw/ twin, of a value derived from the same document) or by SIGHUP.
 * Its inode keeps its value for the files open on it, but refuses new
 * opens and path lookups with ESTALE: the kernel then walks the path again,
 * revalidating every name, and finds the new node. An inode's value so
 * never changes, so the kernel's pages and size for it are never wrong.
 */
void node_supersede(struct node_table *table, struct node *node);
bool node_is_superseded(struct node_table *table, struct node *node);
/* node_supersede every attached file node for which match() says yes
 * (called under the table lock: it must not block). */
void node_supersede_matching(struct node_table *table, bool (*match)(struct node *node, void *ctx),
			     void *ctx);

/* Unbind every child of the root (SIGHUP), superseding them; `each` hears
 * of all of them. */
void node_detach_all(struct node_table *table, node_detached_fn each, void *ctx);

/* Call fn for every node the kernel holds (nlookup > 0), under the table
 * lock: fn must not block or call back into the table. */
void node_for_each_known(struct node_table *table, void (*fn)(struct node *node, void *ctx),
			 void *ctx);

struct blob;

/*
 * The bytes a file node last showed the kernel (its size came from them):
 * an open serves these, so that what is read matches the size the kernel
 * has. node_hold keeps `content` unless the node already holds a value
 * fetched later (a slow lookup must not bring back an older value), and
 * returns a new reference to what the node holds. node_held returns a new
 * reference or NULL. Detaching a directory drops the values held below it
 * (a removed directory's inodes can linger in the kernel for long).
 */
struct blob *node_hold(struct node_table *table, struct node *node, struct blob *content);

/*
 * How a freed node lets go of the value it held: `drop` takes over the
 * reference (fs.c frees it a moment later, as a READ may still be sending
 * it). NULL: at once. Called under the table lock.
 */
void node_table_set_drop(struct node_table *table, void (*drop)(struct blob *blob, void *ctx),
			 void *ctx);
struct blob *node_held(struct node_table *table, struct node *node);


#endif
