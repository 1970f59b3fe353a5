/*
 * node: the inodes the kernel knows, and what each one stands for.
 *
 * A node is a name in a directory bound to a tree row and to the IMDS path
 * it reads; a file node also holds its value, fixed when the node is made.
 * An inode's bytes and size so never change: the kernel may keep its pages
 * and attributes for as long as it likes, and reads need no open (the
 * daemon runs with FUSE_CAP_NO_OPEN_SUPPORT) and no lock. When a name must
 * show another value (rm, SIGHUP, a volatile value that changed), the name
 * gets a new node; the old one lives on, unchanged, for the files still
 * open on it, until the kernel forgets it.
 *
 * A node's FUSE inode number is its address (as libfuse's passthrough_ll
 * does), so finding a node from a request takes no lock.
 */
#ifndef IMDSFS_NODE_H
#define IMDSFS_NODE_H

#include "tree.h"

#include <stdbool.h>
#include <stdint.h>

struct blob;

struct node {
	struct node *parent;
	char *name;
	const struct tree_row *row;
	char *src;	    /* file: IMDS path of its value; dir: of its listing, or NULL */
	char *base;	    /* the IMDS prefix child rows' sources are relative to */
	struct blob *value; /* a file's bytes, never changed; NULL for a directory */
	uint64_t stable_ino; /* st_ino: a hash of the path, the same across rm */
	unsigned int depth;  /* directories below raw/ */
	bool is_dir;
	bool transient; /* made for one answer, bound to no name (node_child) */

	/* Owned by the table's lock. */
	bool attached;	   /* the node its name shows now */
	bool superseded;   /* unbound because its value was cleared (see below) */
	bool name_dropped; /* the kernel let go of its name (node_name_dropped) */
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
	struct blob *value; /* a file's bytes (the node takes a reference) */
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
 * How many times names were unbound because cached values were cleared
 * (node_supersede_matching, node_detach_all). A lookup reads it before it
 * fetches, and hands it to node_child.
 */
unsigned long node_generation(struct node_table *table);

/*
 * The node `name` in `parent` shows for `spec`, with one more lookup
 * reference, in *out. The attached one when it stands for the same thing
 * and shows the same bytes or newer ones (a lookup that fetched slowly
 * must not bring back an older value); otherwise a new node, attached in
 * its place. Returns 0, -ENOMEM, or -EAGAIN when the generation is no
 * longer `generation`: a clear came after the caller fetched spec->value,
 * which may be stale, so it should fetch again. On its `last_attempt` the
 * caller gets a transient node instead, bound to no name, for the kernel
 * to use once and not keep.
 */
int node_child(struct node_table *table, struct node *parent, const char *name,
	       const struct node_spec *spec, unsigned long generation, bool last_attempt,
	       struct node **out);

/* The attached child `name` with one more lookup reference (drop it with
 * node_forget), or NULL. */
struct node *node_find(struct node_table *table, struct node *parent, const char *name);

/* Whether the kernel holds the node attached as `name` in `parent`, by
 * that name as far as we know. */
bool node_known(struct node_table *table, struct node *parent, const char *name);
/* The kernel dropped its name for the node attached as `name` (it may
 * still hold the inode, for a file open on it) until a lookup of the name
 * answers with that node again. */
void node_name_dropped(struct node_table *table, struct node *parent, const char *name);

/* The kernel dropped `count` lookup references. */
void node_forget(struct node_table *table, struct node *node, uint64_t count);

/* Told of each node the kernel knows (nlookup > 0) that is unbound from
 * its name; called under the table lock (so it must not block or call back
 * into the table), while the node and its parent are still valid. */
typedef void (*node_unbound_fn)(struct node *node, void *ctx);

/* Unbind `node` (and everything below it) from its name; `each` hears of
 * the nodes below it. */
void node_detach(struct node_table *table, struct node *node, node_unbound_fn each, void *ctx);

/*
 * Unbind every attached file node for which match() says yes (its cached
 * value was cleared under another name: a raw/ twin, a value derived from
 * the same document), telling `each` of those the kernel knows, and start
 * a new generation. Called after the cache is cleared, so that a lookup
 * that fetched before the clear either finds its node unbound here or is
 * told to fetch again by node_child. match() runs under the table lock.
 *
 * A superseded node keeps its value for the files open on it, but the
 * kernel may still reach it through a name it cached: fs.c refuses it to
 * path lookups (ESTALE), and the kernel then walks the path again and
 * finds the new node.
 */
void node_supersede_matching(struct node_table *table, bool (*match)(struct node *node, void *ctx),
			     void *ctx, node_unbound_fn each, void *each_ctx);

/* Unbind and supersede every node below the root (SIGHUP, after the
 * cache is cleared) and start a new generation; `each` hears of all the
 * known nodes. */
void node_detach_all(struct node_table *table, node_unbound_fn each, void *ctx);

bool node_is_superseded(struct node_table *table, struct node *node);

/*
 * How the table gets rid of a node nobody holds any more: `drop` takes it
 * over, to free it with node_free a moment later (fs.c does, as a READ can
 * still be answering from it when the kernel forgets it). NULL: at once.
 * Called under the table lock.
 */
void node_table_set_drop(struct node_table *table, void (*drop)(struct node *node, void *ctx),
			 void *ctx);
/* Free a node the table dropped, with its value. */
void node_free(struct node *node);

#endif
