/* The node table alone: a name shows one node per value, a node's value
 * never changes, a stale value or an unbound parent gives an unbound node,
 * rm's unbinding finds every name that showed a cleared value, node ids are
 * never reused, and a node lives exactly as long as something holds it. */
#include "cache.h"
#include "check.h"
#include "node.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* Values are ordered by when they were made (blob seq), as fetches are. */
static struct blob *value(const char *s)
{
	return blob_new(s, strlen(s));
}

static int fill_with(void *ctx, struct blob **out)
{
	*out = value(ctx);
	return 0;
}

/* A value held by `cache` under `key`, as resolve.c gets them. */
static struct blob *cached(struct cache *cache, const char *key, const char *bytes)
{
	struct blob *b = NULL;

	CHECK_EQ_INT(cache_get(cache, key, true, fill_with, (void *)bytes, &b), 0);
	return b;
}

static struct node_spec file_spec(const char *src, struct blob *v)
{
	struct node_spec spec = {.row = tree_child(tree_root(), "region"), .src = src, .value = v};

	return spec;
}

static struct node_spec dir_spec(const char *base)
{
	struct node_spec spec = {.row = tree_child(tree_root(), "network"), .base = base, .is_dir = true};

	return spec;
}

static struct node *bind(struct node_table *t, struct node *parent, const char *name,
			 struct node_spec spec)
{
	struct node *n = NULL;

	CHECK_EQ_INT(node_bind(t, parent, name, &spec, &n), 0);
	return n;
}

struct heard {
	int count;
	char names[8][32];
};

static void hear(const struct node *n, void *ctx)
{
	struct heard *h = ctx;

	if (h->count < 8)
		snprintf(h->names[h->count], sizeof(h->names[0]), "%s", n->name);
	h->count++;
}

static void test_one_node_per_value(void)
{
	struct node_table *t = node_table_create();
	struct node *root = node_root(t);
	struct blob *older = value("ap-south-1\n"), *v1 = value("eu-west-1\n");
	struct blob *same = value("eu-west-1\n"), *v2 = value("us-east-2\n");

	struct node *a = bind(t, root, "region", file_spec("doc", v1));
	CHECK(a && a->value == v1 && node_is_bound(t, a) && a->ino > 1);
	CHECK(bind(t, root, "region", file_spec("doc", v1)) == a);
	/* The same bytes fetched again (a volatile value): the same node. */
	CHECK(bind(t, root, "region", file_spec("doc", same)) == a);
	/* A slow lookup that fetched before the bound value was made gets the
	 * newer node, never brings the older one back. */
	CHECK(bind(t, root, "region", file_spec("doc", older)) == a);
	CHECK_EQ_INT(a->nlookup, 4);

	/* New bytes: a new node, bound in a's place; a keeps its value. */
	struct node *b = bind(t, root, "region", file_spec("doc", v2));
	CHECK(b && b != a && b->value == v2 && b->ino > a->ino);
	CHECK(node_is_bound(t, b) && !node_is_bound(t, a));
	CHECK(a->value == v1 && strcmp(a->value->data, "eu-west-1\n") == 0);
	CHECK(node_find(t, root, "region") == b);
	node_put(t, b);

	/* a lives while the kernel holds it, and its id is never given again. */
	uint64_t a_ino = a->ino;
	struct node *held = node_get(t, a_ino);
	CHECK(held == a);
	node_forget(t, a_ino, 4);
	struct node *still = node_get(t, a_ino); /* the ref from node_get keeps it */
	CHECK(still == a);
	node_put(t, still);
	CHECK_EQ_INT(node_count(t), 3); /* root, a, b */
	node_put(t, held);
	CHECK(node_get(t, a_ino) == NULL);
	CHECK_EQ_INT(node_count(t), 2);

	/* A bound node the kernel forgot stays, for the next lookup. */
	node_forget(t, b->ino, 1);
	CHECK_EQ_INT(node_count(t), 2);
	CHECK(bind(t, root, "region", file_spec("doc", v2)) == b);

	/* Another place (a raw/ twin, a directory) under the name: new node. */
	struct node *c = bind(t, root, "region", file_spec("other", v2));
	CHECK(c != b && node_is_bound(t, c));
	node_forget(t, b->ino, 1);
	node_forget(t, c->ino, 1);
	node_table_destroy(t);
	blob_unref(older);
	blob_unref(v1);
	blob_unref(same);
	blob_unref(v2);
}

static void test_stale_values_unbind(void)
{
	struct node_table *t = node_table_create();
	struct cache *cache = cache_create();
	struct node *root = node_root(t);
	struct blob *doc = cached(cache, "doc#field:region", "eu-west-1\n");
	struct blob *raw = cached(cache, "doc", "{...}");
	struct blob *other = cached(cache, "ami", "ami-1\n");
	struct heard heard = {0};

	struct node *region = bind(t, root, "region", file_spec("doc", doc));
	struct node *twin = bind(t, root, "document", file_spec("doc", raw));
	struct node *ami = bind(t, root, "ami_id", file_spec("ami", other));
	/* The kernel forgot the twin: unbinding it tells nobody. */
	node_forget(t, twin->ino, 1);

	cache_clear(cache, "doc");
	node_unbind_stale(t, hear, &heard);
	CHECK_EQ_INT(heard.count, 1);
	CHECK(strcmp(heard.names[0], "region") == 0);
	CHECK(!node_is_bound(t, region) && node_is_bound(t, ami));
	CHECK(node_find(t, root, "document") == NULL);
	CHECK_EQ_INT(node_count(t), 3); /* root, region (held by the kernel), ami */

	/* A lookup that fetched the old value across the clear answers with
	 * an unbound node: the next lookup asks again. */
	struct node *late = bind(t, root, "region", file_spec("doc", doc));
	CHECK(late != region && !node_is_bound(t, late));
	CHECK(node_find(t, root, "region") == NULL);
	struct blob *fresh = cached(cache, "doc#field:region", "eu-west-2\n");
	struct node *now = bind(t, root, "region", file_spec("doc", fresh));
	CHECK(node_is_bound(t, now) && now->value == fresh);

	node_forget(t, late->ino, 1);
	node_forget(t, region->ino, 1);
	CHECK_EQ_INT(node_count(t), 3); /* root, ami, now */
	node_table_destroy(t);
	cache_destroy(cache);
	blob_unref(doc);
	blob_unref(raw);
	blob_unref(other);
	blob_unref(fresh);
}

static void test_subtrees(void)
{
	struct node_table *t = node_table_create();
	struct node *root = node_root(t);
	struct blob *v = value("vpc-1\n");
	struct heard heard = {0};

	struct node *net = bind(t, root, "network", dir_spec("n/"));
	struct node *mac = bind(t, net, "mac", dir_spec("n/m/"));
	struct node *vpc = bind(t, mac, "vpc_id", file_spec("n/m/vpc", v));
	CHECK(node_find(t, mac, "vpc_id") == vpc);
	node_put(t, vpc);

	/* rmdir network: the subtree is unbound; `each` hears of what the
	 * kernel holds. */
	node_unbind(t, net, hear, &heard);
	CHECK_EQ_INT(heard.count, 3);
	CHECK(!node_is_bound(t, net) && !node_is_bound(t, mac) && !node_is_bound(t, vpc));
	CHECK(node_find(t, root, "network") == NULL && node_find(t, mac, "vpc_id") == NULL);

	/* A cwd inside the removed directory still looks names up: it gets
	 * unbound nodes (never found again). */
	struct node *again = bind(t, mac, "vpc_id", file_spec("n/m/vpc", v));
	CHECK(again != vpc && !node_is_bound(t, again));

	/* Forgotten children first, then their parents: everything goes. */
	node_forget(t, again->ino, 1);
	node_forget(t, vpc->ino, 1);
	node_forget(t, mac->ino, 1);
	CHECK_EQ_INT(node_count(t), 2); /* root, net */
	node_forget(t, net->ino, 1);
	CHECK_EQ_INT(node_count(t), 1);

	/* SIGHUP hears of the bound directories the kernel holds, and keeps
	 * them bound (a cwd inside keeps its place). */
	net = bind(t, root, "network", dir_spec("n/"));
	mac = bind(t, net, "mac", dir_spec("n/m/"));
	node_forget(t, mac->ino, 1);
	heard.count = 0;
	node_each_bound_dir(t, hear, &heard);
	CHECK_EQ_INT(heard.count, 1);
	CHECK(strcmp(heard.names[0], "network") == 0);
	CHECK(node_is_bound(t, net) && node_is_bound(t, mac));
	node_unbind(t, net, NULL, NULL);
	node_forget(t, net->ino, 1);
	CHECK_EQ_INT(node_count(t), 1);
	node_table_destroy(t);
	blob_unref(v);
}

/* Many names in many directories: the indexes grow and stay right. */
static void test_many(void)
{
	enum { DIRS = 40, FILES = 50 };
	struct node_table *t = node_table_create();
	struct node *root = node_root(t);
	struct blob *v = value("x");
	struct node *dirs[DIRS];
	uint64_t files[DIRS][FILES];
	char name[32];

	for (int d = 0; d < DIRS; d++) {
		snprintf(name, sizeof(name), "d%d", d);
		dirs[d] = bind(t, root, name, dir_spec(name));
		for (int f = 0; f < FILES; f++) {
			snprintf(name, sizeof(name), "f%d", f);
			files[d][f] = bind(t, dirs[d], name, file_spec(name, v))->ino;
		}
	}
	CHECK_EQ_INT(node_count(t), 1 + DIRS + DIRS * FILES);
	for (int d = 0; d < DIRS; d++) {
		snprintf(name, sizeof(name), "f%d", d % FILES);
		struct node *n = node_find(t, dirs[d], name);
		CHECK(n && n->parent == dirs[d] && strcmp(n->name, name) == 0);
		if (n) {
			struct node *by_ino = node_get(t, n->ino);
			CHECK(by_ino == n);
			node_put(t, by_ino);
			node_put(t, n);
		}
	}
	for (int d = 0; d < DIRS; d++)
		node_unbind(t, dirs[d], NULL, NULL);
	CHECK_EQ_INT(node_count(t), 1 + DIRS + DIRS * FILES); /* all held by the kernel */
	/* The kernel's forgets, directories before their files: a directory
	 * lives while a child does. */
	for (int d = 0; d < DIRS; d++)
		node_forget(t, dirs[d]->ino, 1);
	CHECK_EQ_INT(node_count(t), 1 + DIRS + DIRS * FILES);
	for (int d = 0; d < DIRS; d++)
		for (int f = 0; f < FILES; f++)
			node_forget(t, files[d][f], 1);
	CHECK_EQ_INT(node_count(t), 1);
	node_table_destroy(t);
	blob_unref(v);
}

int main(void)
{
	if (tree_init() != 0)
		return 1;
	test_one_node_per_value();
	test_stale_values_unbind();
	test_subtrees();
	test_many();
	return check_done("test_node");
}
