/* The node table alone: a name shows one node per value, a node's value
 * never changes, a lookup that fetched before a clear is sent back to fetch
 * again, superseded nodes are reported and marked, and nodes nobody holds
 * are handed to the drop hook. */
#include "cache.h"
#include "check.h"
#include "node.h"

#include <errno.h>
#include <string.h>

struct dropped {
	int count;
	struct node *last;
};

static void drop(struct node *n, void *ctx)
{
	struct dropped *d = ctx;

	d->count++;
	d->last = n;
	node_free(n);
}

/* Values are ordered by when they were made (blob seq), as fetches are. */
static struct blob *value(const char *s)
{
	return blob_new(s, strlen(s));
}

static struct node_spec file_spec(const char *src, struct blob *v)
{
	struct node_spec spec = {
	    .row = tree_child(tree_root(), "region"), .src = src, .value = v};

	return spec;
}

static struct node *child(struct node_table *t, const char *name, struct node_spec *spec)
{
	struct node *n = NULL;

	CHECK_EQ_INT(
	    node_child(t, node_root(t), name, spec, node_generation(t), false, &n), 0);
	return n;
}

static void test_one_node_per_value(void)
{
	struct dropped d = {0};
	struct node_table *t = node_table_create();
	struct blob *older = value("ap-south-1\n"), *v1 = value("eu-west-1\n");
	struct blob *same = value("eu-west-1\n"), *v2 = value("us-east-2\n");
	struct node_spec spec = file_spec("doc", v1);

	node_table_set_drop(t, drop, &d);
	struct node *a = child(t, "region", &spec);
	CHECK(a && a->value == v1 && a->attached);
	CHECK(child(t, "region", &spec) == a);
	CHECK_EQ_INT(a->nlookup, 2);

	/* The same bytes fetched again (a volatile value that did not change). */
	spec.value = same;
	CHECK(child(t, "region", &spec) == a);
	CHECK(a->value == v1);

	/* New bytes: a new node; the old one keeps its value while held. */
	spec.value = v2;
	struct node *b = child(t, "region", &spec);
	CHECK(b != a && b->value == v2 && b->attached);
	CHECK(!a->attached && a->value == v1);
	CHECK(node_find(t, node_root(t), "region") == b);
	node_forget(t, b, 1);

	/* A slow lookup that fetched before the node's value: the node. */
	spec.value = older;
	CHECK(child(t, "region", &spec) == b);
	CHECK(b->value == v2);

	/* The old node goes to the drop hook once the kernel forgets it. */
	CHECK_EQ_INT(d.count, 0);
	node_forget(t, a, 3);
	CHECK_EQ_INT(d.count, 1);
	CHECK(d.last == a);

	blob_unref(v1);
	blob_unref(same);
	blob_unref(v2);
	blob_unref(older);
	node_table_destroy(t);
}

static bool src_is_doc(struct node *n, void *ctx)
{
	(void)ctx;
	return n->src && strcmp(n->src, "doc") == 0;
}

static void note(struct node *n, void *ctx)
{
	struct dropped *seen = ctx;

	seen->count++;
	seen->last = n;
}

static void test_clear_and_generation(void)
{
	struct node_table *t = node_table_create();
	struct blob *old = value("old\n"), *fresh = value("fresh\n");
	struct node_spec spec = file_spec("doc", old);
	struct node_spec other = file_spec("other", old);
	struct dropped seen = {0}, dropped = {0};
	struct node *n = NULL;

	node_table_set_drop(t, drop, &dropped);

	struct node *known = child(t, "region", &spec);
	struct node *unknown = child(t, "account_id", &spec);
	struct node *elsewhere = child(t, "ami_id", &other);
	node_forget(t, unknown, 1); /* the kernel forgot it; still attached */

	/* A lookup reads the generation, then fetches (the old value)... */
	unsigned long generation = node_generation(t);
	/* ...while an rm clears the cache and supersedes what showed it. */
	node_supersede_matching(t, src_is_doc, NULL, note, &seen);
	CHECK_EQ_INT(seen.count, 1); /* only the node the kernel knows */
	CHECK(seen.last == known);
	CHECK(!known->attached && node_is_superseded(t, known));
	CHECK(elsewhere->attached && !node_is_superseded(t, elsewhere));
	CHECK(node_find(t, node_root(t), "account_id") == NULL);

	/* The lookup must fetch again rather than bind its old value. */
	CHECK_EQ_INT(node_child(t, node_root(t), "region", &spec, generation, false, &n),
		     -EAGAIN);
	CHECK(n == NULL);
	spec.value = fresh;
	n = child(t, "region", &spec);
	CHECK(n && n != known && n->value == fresh && !node_is_superseded(t, n));

	/* Out of attempts, a lookup answers with what it has, on a node the
	 * name does not keep (and that fs.c tells the kernel not to keep). */
	struct node *once = NULL;
	spec.value = old;
	CHECK_EQ_INT(
	    node_child(t, node_root(t), "region", &spec, generation, true, &once), 0);
	CHECK(once && once != n && once->value == old);
	CHECK(!once->attached && once->transient && !node_is_superseded(t, once));
	CHECK(node_find(t, node_root(t), "region") == n);
	node_forget(t, n, 1);
	int dropped_before = dropped.count;
	node_forget(t, once, 1);
	CHECK_EQ_INT(dropped.count, dropped_before + 1);
	spec.value = fresh;

	/* A lookup that bound its old value before the clear was over: the
	 * supersede that ends the clear unbinds it. */
	seen.count = 0;
	generation = node_generation(t);
	spec.value = old;
	struct node *early = NULL;
	CHECK_EQ_INT(
	    node_child(t, node_root(t), "account_id", &spec, generation, false, &early),
	    0);
	CHECK(early && early->value == old && early->attached);
	node_supersede_matching(t, src_is_doc, NULL, note, &seen);
	CHECK(!early->attached && node_is_superseded(t, early));
	CHECK(node_is_superseded(t, n)); /* region shows the same document */
	CHECK_EQ_INT(seen.count, 2);
	spec.value = fresh;
	n = child(t, "region", &spec);

	/* SIGHUP: everything below the root, a new generation. */
	generation = node_generation(t);
	seen.count = 0;
	node_detach_all(t, note, &seen);
	CHECK(node_generation(t) != generation);
	CHECK(node_is_superseded(t, n) && node_is_superseded(t, elsewhere));
	CHECK_EQ_INT(seen.count, 2); /* region (new) and ami_id */
	CHECK_EQ_INT(node_child(t, node_root(t), "region", &spec, generation, false, &n),
		     -EAGAIN);

	blob_unref(old);
	blob_unref(fresh);
	node_table_destroy(t);
}

static void test_known_names(void)
{
	struct node_table *t = node_table_create();
	struct blob *v = value("stop\n");
	struct node_spec spec = file_spec("meta-data/instance-action", v);

	CHECK(!node_known(t, node_root(t), "instance_action"));
	struct node *n = child(t, "instance_action", &spec);
	CHECK(node_known(t, node_root(t), "instance_action"));
	/* The kernel dropped the name after a failed lookup; a file open on
	 * the inode keeps its lookup reference. */
	node_name_dropped(t, node_root(t), "instance_action");
	CHECK(!node_known(t, node_root(t), "instance_action"));
	/* A lookup answers with the node again: the kernel has the name. */
	CHECK(child(t, "instance_action", &spec) == n);
	CHECK(node_known(t, node_root(t), "instance_action"));
	node_forget(t, n, 2);
	CHECK(!node_known(t, node_root(t), "instance_action"));

	blob_unref(v);
	node_table_destroy(t);
}

static void test_directories_and_detach(void)
{
	struct dropped d = {0};
	struct node_table *t = node_table_create();
	const struct tree_row *tags = tree_child(tree_root(), "tags");
	struct node_spec dir = {
	    .row = tags, .src = "meta-data/tags/instance/", .is_dir = true};
	struct node_spec tag = {.row = tree_child(tags, "*"),
				.src = "meta-data/tags/instance/Name"};
	struct blob *v = value("web-7\n");
	struct dropped told = {0};
	struct node *d1 = child(t, "tags", &dir), *f = NULL;

	node_table_set_drop(t, drop, &d);
	tag.value = v;
	CHECK_EQ_INT(node_child(t, d1, "Name", &tag, node_generation(t), false, &f), 0);
	CHECK(f && f->parent == d1 && f->attached);

	/* rm -r tags: the directory and what is below it are unbound. */
	node_detach(t, d1, note, &told);
	CHECK_EQ_INT(told.count, 1);
	CHECK(told.last == f);
	CHECK(!d1->attached && !f->attached && !node_is_superseded(t, f));
	/* A lookup below the removed directory still answers, unattached. */
	struct node *g = NULL;
	CHECK_EQ_INT(node_child(t, d1, "Name", &tag, node_generation(t), false, &g), 0);
	CHECK(g && g != f && !g->attached);
	node_forget(t, g, 1);
	node_forget(t, f, 1);
	CHECK_EQ_INT(d.count, 2);
	node_forget(t, d1, 1); /* its last child is gone too */
	CHECK_EQ_INT(d.count, 3);

	blob_unref(v);
	node_table_destroy(t);
}

int main(void)
{
	CHECK_EQ_INT(tree_init(), 0);
	test_one_node_per_value();
	test_clear_and_generation();
	test_known_names();
	test_directories_and_detach();
	return check_done("test_node");
}
