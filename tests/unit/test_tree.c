/* The tree table's invariants (as libfuse's test_mount_flags checks its
 * mount_flags[] table), the listing parser, the name rules and formatting. */
#include "check.h"
#include "tree.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void test_table(void)
{
	CHECK_EQ_INT(tree_init(), 0);
	CHECK(strcmp(tree_root()->path, "") == 0);
	for (size_t i = 1; i < tree_row_count; i++) {
		const struct tree_row *row = &tree_rows[i];
		const struct tree_row *parent = tree_row_parent(row);

		CHECK(parent != NULL);
		CHECK(tree_row_is_dir(parent));
		CHECK(tree_child(parent, tree_row_name(row)) == row);
		/* Names the cleaned-up view shows are valid file names. */
		if (strcmp(tree_row_name(row), "*") != 0)
			CHECK(tree_name_is_valid(tree_row_name(row), strlen(tree_row_name(row))));
		for (size_t j = 0; j < i; j++)
			CHECK(strcmp(tree_rows[j].path, row->path) != 0);
		if (row->kind == TREE_FILE)
			CHECK(row->source != NULL);
		/* Sources are relative: never a leading '/' or "latest/". */
		if (row->source)
			CHECK(row->source[0] != '/' && strncmp(row->source, "latest", 6) != 0);
	}
	/* Every row of SPEC.md's top-level table is here. */
	static const char *const spec_names[] = {
		"account_id", "ami_id", "ami_launch_index", "ami_manifest_path",
		"autoscaling_target_lifecycle_state", "availability_zone",
		"availability_zone_id", "domain", "iam_info", "iam_security_credentials",
		"instance_action", "instance_id", "instance_identity_document",
		"instance_life_cycle", "instance_profile_arn", "instance_profile_id",
		"instance_profile_name", "instance_type", "kernel_id", "mac", "partition",
		"private_hostname", "private_ipv4", "public_hostname", "public_ipv4", "region",
		"reservation_id", "security_groups", "spot_instance_action", "user_data", "tags",
		"public_keys", "network", "raw",
	};
	for (size_t i = 0; i < sizeof(spec_names) / sizeof(spec_names[0]); i++)
		CHECK(tree_child(tree_root(), spec_names[i]) != NULL);

	const struct tree_row *ifaces = tree_child(tree_child(tree_root(), "network"), "interfaces");
	static const char *const iface_names[] = {
		"device_number", "interface_id", "ipv4_associations", "ipv6s", "ipv6_prefix",
		"mac", "owner_id", "private_hostname", "private_ipv4s", "public_hostname",
		"public_ipv4s", "security_groups", "security_group_ids", "subnet_id",
		"subnet_ipv4_cidr_block", "subnet_ipv6_cidr_blocks", "vpc_id",
		"vpc_ipv4_cidr_block", "vpc_ipv4_cidr_blocks", "vpc_ipv6_cidr_blocks",
	};
	CHECK(ifaces && ifaces->kind == TREE_MAPPING);
	const struct tree_row *iface = ifaces ? tree_child(ifaces, "*") : NULL;
	CHECK(iface != NULL);
	size_t n = 0;
	for (const struct tree_row *r = tree_next_child(iface, NULL); r; r = tree_next_child(iface, r))
		n++;
	CHECK_EQ_INT(n, sizeof(iface_names) / sizeof(iface_names[0]));
	for (size_t i = 0; iface && i < sizeof(iface_names) / sizeof(iface_names[0]); i++)
		CHECK(tree_child(iface, iface_names[i]) != NULL);
}

static void test_paths(void)
{
	CHECK(tree_path_is_volatile("meta-data/instance-action"));
	CHECK(tree_path_is_volatile("meta-data/spot/instance-action"));
	CHECK(tree_path_is_volatile("meta-data/spot/"));
	CHECK(tree_path_is_volatile("meta-data/events/maintenance/scheduled"));
	CHECK(tree_path_is_volatile("meta-data/autoscaling/target-lifecycle-state"));
	CHECK(tree_path_is_volatile("meta-data/iam/security-credentials/role"));
	CHECK(!tree_path_is_volatile("meta-data/instance-id"));
	CHECK(!tree_path_is_volatile("meta-data/spotless"));
	CHECK(!tree_path_is_volatile("meta-data/iam/info"));

	CHECK(tree_path_is_sensitive("user-data"));
	CHECK(tree_path_is_sensitive("meta-data/iam/security-credentials/role"));
	CHECK(tree_path_is_sensitive("meta-data/identity-credentials/ec2/security-credentials/ec2-instance"));
	CHECK(tree_path_is_sensitive("meta-data/identity-credentials/ec2/info"));
	CHECK(!tree_path_is_sensitive("meta-data/iam/info"));
	CHECK(!tree_path_is_sensitive("meta-data/iam/security-credentials/"));
	CHECK(!tree_path_is_sensitive("user-data-not"));
	CHECK(tree_dir_is_sensitive("meta-data/iam/security-credentials/"));
	CHECK(tree_dir_is_sensitive("meta-data/identity-credentials/ec2/"));
	CHECK(!tree_dir_is_sensitive("meta-data/iam/"));
}

static void test_names(void)
{
	CHECK(tree_name_is_valid("Name", 4));
	CHECK(tree_name_is_valid("0e:49:61:0f:c3:11", 17));
	CHECK(tree_name_is_valid("...", 3));
	CHECK(!tree_name_is_valid("", 0));
	CHECK(!tree_name_is_valid(".", 1));
	CHECK(!tree_name_is_valid("..", 2));
	CHECK(!tree_name_is_valid("a/b", 3));
	CHECK(!tree_name_is_valid("a\0b", 3));
	char long_name[300];
	memset(long_name, 'x', sizeof(long_name));
	CHECK(tree_name_is_valid(long_name, 255));
	CHECK(!tree_name_is_valid(long_name, 256));
}

static void test_listing(void)
{
	struct tree_listing l;
	const char body[] = "ami-id\nblock-device-mapping/\n\n.\n..\na/b\nx\0y\nami-id\nnetwork/\nlast";

	CHECK_EQ_INT(tree_parse_listing(body, sizeof(body) - 1, TREE_KEYS_LISTING, true, "t/", &l), 0);
	CHECK_EQ_INT(l.count, 4);
	CHECK(strcmp(l.entries[0].name, "ami-id") == 0 && !l.entries[0].is_dir);
	CHECK(strcmp(l.entries[1].name, "block-device-mapping") == 0 && l.entries[1].is_dir);
	CHECK(strcmp(l.entries[2].name, "network") == 0 && l.entries[2].is_dir);
	CHECK(strcmp(l.entries[3].name, "last") == 0);
	CHECK_EQ_INT(l.skipped, 6); /* empty, ".", "..", "a/b", NUL, duplicate */
	CHECK(tree_listing_find(&l, "network") == &l.entries[2]);
	CHECK(tree_listing_find(&l, "nope") == NULL);
	tree_listing_free(&l);

	/* public-keys/: raw/ shows directory N, the cleaned view the name. */
	const char keys[] = "0=alice\n1=bob\nbad\n=x\n2=..\n";
	CHECK_EQ_INT(tree_parse_listing(keys, strlen(keys), TREE_KEYS_LISTING, true, "k/", &l), 0);
	CHECK_EQ_INT(l.count, 5);
	CHECK(strcmp(l.entries[0].name, "0") == 0 && l.entries[0].is_dir);
	tree_listing_free(&l);
	CHECK_EQ_INT(tree_parse_listing(keys, strlen(keys), TREE_KEYS_INDEXED, false, "k/", &l), 0);
	CHECK_EQ_INT(l.count, 2);
	CHECK(strcmp(l.entries[0].name, "alice") == 0 && strcmp(l.entries[0].remote, "0") == 0);
	CHECK(strcmp(l.entries[1].name, "bob") == 0 && strcmp(l.entries[1].remote, "1") == 0);
	CHECK_EQ_INT(l.skipped, 3);
	tree_listing_free(&l);

	/* A trailing newline is not an empty line; an empty body lists nothing. */
	CHECK_EQ_INT(tree_parse_listing("a\n", 2, TREE_KEYS_LINES, false, "x", &l), 0);
	CHECK_EQ_INT(l.count, 1);
	CHECK_EQ_INT(l.skipped, 0);
	tree_listing_free(&l);
	CHECK_EQ_INT(tree_parse_listing("", 0, TREE_KEYS_LINES, false, "x", &l), 0);
	CHECK_EQ_INT(l.count, 0);
	tree_listing_free(&l);

	/* A huge listing parses in reasonable time and drops duplicates. */
	size_t lines = 100000, cap = lines * 12, len = 0;
	char *big = malloc(cap);
	for (size_t i = 0; i < lines; i++)
		len += (size_t)snprintf(big + len, cap - len, "n%zu\n", i % 50000);
	CHECK_EQ_INT(tree_parse_listing(big, len, TREE_KEYS_LISTING, true, "big/", &l), 0);
	CHECK_EQ_INT(l.count, 50000);
	CHECK_EQ_INT(l.skipped, 50000);
	tree_listing_free(&l);
	free(big);
}

static void expect_format(enum tree_format format, const char *field, const char *body,
			  int expect_err, const char *expect)
{
	char *out = NULL;
	size_t len = 0;
	int err = tree_format_value(format, field, body, strlen(body), "test", &out, &len);

	CHECK_EQ_INT(err, expect_err);
	if (!err && expect) {
		CHECK_EQ_INT(len, strlen(expect));
		CHECK(out && memcmp(out, expect, len) == 0);
	}
	free(out);
}

static void test_format(void)
{
	expect_format(TREE_TEXT, NULL, "0", 0, "0\n");
	expect_format(TREE_TEXT, NULL, "", 0, "");
	expect_format(TREE_TEXT, NULL, "a\nb", 0, "a\nb\n");
	expect_format(TREE_TEXT, NULL, "a\n", 0, "a\n");
	expect_format(TREE_BYTES, NULL, "a", 0, "a");
	expect_format(TREE_JSON, NULL, "{\"a\": 1}", 0, "{\"a\": 1}\n");
	expect_format(TREE_JSON, NULL, "{\"a\": 1}\n", 0, "{\"a\": 1}\n");
	expect_format(TREE_JSON, NULL, "{\"a\": 1} x", -EIO, NULL);
	expect_format(TREE_JSON, NULL, "{not json", -EIO, NULL);
	expect_format(TREE_JSON, NULL, "", -EIO, NULL);
	expect_format(TREE_JSON_FIELD, "region", "{\"region\": \"eu-west-1\"}", 0, "eu-west-1\n");
	expect_format(TREE_JSON_FIELD, "region", "{\"region\": \"\"}", 0, "\n");
	expect_format(TREE_JSON_FIELD, "region", "{\"region\": \"caf\\u00e9\"}", 0, "caf\xc3\xa9\n");
	expect_format(TREE_JSON_FIELD, "region", "{\"other\": 1}", -EIO, NULL);
	expect_format(TREE_JSON_FIELD, "region", "{\"region\": null}", -ENOENT, NULL);
	expect_format(TREE_JSON_FIELD, "region", "{\"region\": 5}", -EIO, NULL);
	expect_format(TREE_JSON_FIELD, "region", "[1, 2]", -EIO, NULL);
	expect_format(TREE_JSON_FIELD_LAST_PART, "Arn",
		      "{\"Arn\": \"arn:aws:iam::1:instance-profile/path/web\"}", 0, "web\n");
	expect_format(TREE_JSON_FIELD_LAST_PART, "Arn", "{\"Arn\": \"noslash\"}", 0, "noslash\n");
}

int main(void)
{
	test_table();
	test_paths();
	test_names();
	test_listing();
	test_format();
	return check_done("test_tree");
}
