/*
 * tree: the table of the cleaned-up tree, and the rules for what IMDS sends.
 *
 * Adding a metadata file is one row. The table is checked at start-up
 * (tree_init) and by tests/unit/test_tree.c: unique paths, every parent a
 * directory row, every mapping with exactly one entry row.
 */
#include "tree.h"
#include "log.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MD  "meta-data/"
#define DOC "dynamic/instance-identity/document"
#define IAM "meta-data/iam/info"

/* clang-format off */
const struct tree_row tree_rows[] = {
/*	 path                                    kind          source                        format                     presence         flags               field                 keys               entries */
	{"",                                     TREE_DIR,     NULL,                         TREE_TEXT,                 TREE_ALWAYS},
	{"account_id",                           TREE_FILE,    DOC,                          TREE_JSON_FIELD,           TREE_LISTED,     0,                  "accountId"},
	{"ami_id",                               TREE_FILE,    MD "ami-id",                  TREE_TEXT,                 TREE_LISTED},
	{"ami_launch_index",                     TREE_FILE,    MD "ami-launch-index",        TREE_TEXT,                 TREE_LISTED},
	{"ami_manifest_path",                    TREE_FILE,    MD "ami-manifest-path",       TREE_TEXT,                 TREE_LISTED},
	{"autoscaling_target_lifecycle_state",   TREE_FILE,    MD "autoscaling/target-lifecycle-state", TREE_TEXT,      TREE_IF_ANSWERS},
	{"availability_zone",                    TREE_FILE,    MD "placement/availability-zone", TREE_TEXT,             TREE_LISTED},
	{"availability_zone_id",                 TREE_FILE,    MD "placement/availability-zone-id", TREE_TEXT,          TREE_LISTED},
	{"domain",                               TREE_FILE,    MD "services/domain",         TREE_TEXT,                 TREE_LISTED},
	{"iam_info",                             TREE_FILE,    IAM,                          TREE_JSON,                 TREE_LISTED},
	{"iam_security_credentials",             TREE_FILE,    MD "iam/security-credentials/", TREE_JSON,               TREE_IF_ANSWERS, TREE_VIA_ROLE},
	{"instance_action",                      TREE_FILE,    MD "instance-action",         TREE_TEXT,                 TREE_LISTED},
	{"instance_id",                          TREE_FILE,    MD "instance-id",             TREE_TEXT,                 TREE_LISTED},
	{"instance_identity_document",           TREE_FILE,    DOC,                          TREE_JSON,                 TREE_LISTED},
	{"instance_life_cycle",                  TREE_FILE,    MD "instance-life-cycle",     TREE_TEXT,                 TREE_LISTED},
	{"instance_profile_arn",                 TREE_FILE,    IAM,                          TREE_JSON_FIELD,           TREE_LISTED,     0,                  "InstanceProfileArn"},
	{"instance_profile_id",                  TREE_FILE,    IAM,                          TREE_JSON_FIELD,           TREE_LISTED,     0,                  "InstanceProfileId"},
	{"instance_profile_name",                TREE_FILE,    IAM,                          TREE_JSON_FIELD_LAST_PART, TREE_LISTED,     0,                  "InstanceProfileArn"},
	{"instance_type",                        TREE_FILE,    MD "instance-type",           TREE_TEXT,                 TREE_LISTED},
	{"kernel_id",                            TREE_FILE,    MD "kernel-id",               TREE_TEXT,                 TREE_LISTED},
	{"mac",                                  TREE_FILE,    MD "mac",                     TREE_TEXT,                 TREE_LISTED},
	{"partition",                            TREE_FILE,    MD "services/partition",      TREE_TEXT,                 TREE_LISTED},
	{"private_hostname",                     TREE_FILE,    MD "local-hostname",          TREE_TEXT,                 TREE_LISTED},
	{"private_ipv4",                         TREE_FILE,    MD "local-ipv4",              TREE_TEXT,                 TREE_LISTED},
	{"public_hostname",                      TREE_FILE,    MD "public-hostname",         TREE_TEXT,                 TREE_LISTED},
	{"public_ipv4",                          TREE_FILE,    MD "public-ipv4",             TREE_TEXT,                 TREE_LISTED},
	{"region",                               TREE_FILE,    DOC,                          TREE_JSON_FIELD,           TREE_LISTED,     0,                  "region"},
	{"reservation_id",                       TREE_FILE,    MD "reservation-id",          TREE_TEXT,                 TREE_LISTED},
	{"security_groups",                      TREE_FILE,    MD "security-groups",         TREE_TEXT,                 TREE_LISTED},
	{"spot_instance_action",                 TREE_DIR,     MD "spot/instance-action",    TREE_JSON,                 TREE_IF_ANSWERS},
	{"spot_instance_action/action",          TREE_FILE,    MD "spot/instance-action",    TREE_JSON_FIELD,           TREE_ALWAYS,     0,                  "action"},
	{"spot_instance_action/time",            TREE_FILE,    MD "spot/instance-action",    TREE_JSON_FIELD,           TREE_ALWAYS,     0,                  "time"},
	{"user_data",                            TREE_FILE,    "user-data",                  TREE_BYTES,                TREE_LISTED},
	{"tags",                                 TREE_MAPPING, MD "tags/instance/",          TREE_TEXT,                 TREE_IF_ANSWERS, 0,                  NULL,                 TREE_KEYS_LISTING, MD "tags/instance/"},
	{"tags/*",                               TREE_FILE,    "",                           TREE_TEXT,                 TREE_ALWAYS},
	{"public_keys",                          TREE_MAPPING, MD "public-keys/",            TREE_TEXT,                 TREE_ALWAYS,     0,                  NULL,                 TREE_KEYS_INDEXED, MD "public-keys/"},
	{"public_keys/*",                        TREE_DIR,     NULL,                         TREE_TEXT,                 TREE_ALWAYS},
	{"public_keys/*/openssh_key",            TREE_FILE,    "openssh-key",                TREE_TEXT,                 TREE_LISTED},
	{"network",                              TREE_DIR,     NULL,                         TREE_TEXT,                 TREE_ALWAYS},
	{"network/interfaces",                   TREE_MAPPING, MD "network/interfaces/macs/", TREE_TEXT,                TREE_ALWAYS,     0,                  NULL,                 TREE_KEYS_LISTING, MD "network/interfaces/macs/"},
	{"network/interfaces/*",                 TREE_DIR,     NULL,                         TREE_TEXT,                 TREE_ALWAYS},
	{"network/interfaces/*/device_number",   TREE_FILE,    "device-number",              TREE_TEXT,                 TREE_LISTED},
	{"network/interfaces/*/interface_id",    TREE_FILE,    "interface-id",               TREE_TEXT,                 TREE_LISTED},
	{"network/interfaces/*/ipv4_associations", TREE_MAPPING, "public-ipv4s",             TREE_TEXT,                 TREE_ALWAYS,     0,                  NULL,                 TREE_KEYS_LINES,   "ipv4-associations/"},
	{"network/interfaces/*/ipv4_associations/*", TREE_FILE, "",                          TREE_TEXT,                 TREE_ALWAYS},
	{"network/interfaces/*/ipv6s",           TREE_FILE,    "ipv6s",                      TREE_TEXT,                 TREE_ALWAYS,     TREE_EMPTY_ON_404},
	{"network/interfaces/*/ipv6_prefix",     TREE_FILE,    "ipv6-prefix",                TREE_TEXT,                 TREE_ALWAYS,     TREE_EMPTY_ON_404},
	{"network/interfaces/*/mac",             TREE_FILE,    "mac",                        TREE_TEXT,                 TREE_LISTED},
	{"network/interfaces/*/owner_id",        TREE_FILE,    "owner-id",                   TREE_TEXT,                 TREE_LISTED},
	{"network/interfaces/*/private_hostname", TREE_FILE,   "local-hostname",             TREE_TEXT,                 TREE_LISTED},
	{"network/interfaces/*/private_ipv4s",   TREE_FILE,    "local-ipv4s",                TREE_TEXT,                 TREE_LISTED},
	{"network/interfaces/*/public_hostname", TREE_FILE,    "public-hostname",            TREE_TEXT,                 TREE_LISTED},
	{"network/interfaces/*/public_ipv4s",    TREE_FILE,    "public-ipv4s",               TREE_TEXT,                 TREE_ALWAYS,     TREE_EMPTY_ON_404},
	{"network/interfaces/*/security_groups", TREE_FILE,    "security-groups",            TREE_TEXT,                 TREE_LISTED},
	{"network/interfaces/*/security_group_ids", TREE_FILE, "security-group-ids",         TREE_TEXT,                 TREE_LISTED},
	{"network/interfaces/*/subnet_id",       TREE_FILE,    "subnet-id",                  TREE_TEXT,                 TREE_LISTED},
	{"network/interfaces/*/subnet_ipv4_cidr_block", TREE_FILE, "subnet-ipv4-cidr-block", TREE_TEXT,                 TREE_LISTED},
	{"network/interfaces/*/subnet_ipv6_cidr_blocks", TREE_FILE, "subnet-ipv6-cidr-blocks", TREE_TEXT,               TREE_ALWAYS,     TREE_EMPTY_ON_404},
	{"network/interfaces/*/vpc_id",          TREE_FILE,    "vpc-id",                     TREE_TEXT,                 TREE_LISTED},
	{"network/interfaces/*/vpc_ipv4_cidr_block", TREE_FILE, "vpc-ipv4-cidr-block",       TREE_TEXT,                 TREE_LISTED},
	{"network/interfaces/*/vpc_ipv4_cidr_blocks", TREE_FILE, "vpc-ipv4-cidr-blocks",     TREE_TEXT,                 TREE_ALWAYS,     TREE_EMPTY_ON_404},
	{"network/interfaces/*/vpc_ipv6_cidr_blocks", TREE_FILE, "vpc-ipv6-cidr-blocks",     TREE_TEXT,                 TREE_ALWAYS,     TREE_EMPTY_ON_404},
	{"raw",                                  TREE_DIR,     NULL,                         TREE_BYTES,                TREE_ALWAYS},
	{"raw/dynamic",                          TREE_RAW_DIR, "dynamic/",                   TREE_BYTES,                TREE_LISTED},
	{"raw/meta-data",                        TREE_RAW_DIR, "meta-data/",                 TREE_BYTES,                TREE_LISTED},
	{"raw/user-data",                        TREE_RAW_FILE, "user-data",                 TREE_BYTES,                TREE_LISTED},
};
/* clang-format on */

const size_t tree_row_count = sizeof(tree_rows) / sizeof(tree_rows[0]);

/* Every directory and file of raw/ below the rows above is one of these;
 * its node carries its IMDS path. */
static const struct tree_row raw_dir_row = {"raw/**", TREE_RAW_DIR, "", TREE_BYTES, TREE_LISTED};
static const struct tree_row raw_file_row = {"raw/**", TREE_RAW_FILE, "", TREE_BYTES, TREE_LISTED};

/* Volatile subtrees of IMDS (SPEC.md, "Caching"). */
static const char *const volatile_roots[] = {
	"meta-data/instance-action", "meta-data/spot", "meta-data/events",
	"meta-data/autoscaling",     "meta-data/iam/security-credentials",
};

/* Subtrees that hold only credentials (SPEC.md, "Permissions"). */
static const char *const sensitive_roots[] = {
	"meta-data/iam/security-credentials",
	"meta-data/identity-credentials",
};

static const struct tree_row *parents[sizeof(tree_rows) / sizeof(tree_rows[0])];

const struct tree_row *tree_root(void)
{
	return &tree_rows[0];
}

const struct tree_row *tree_raw_dir_row(void)
{
	return &raw_dir_row;
}

const struct tree_row *tree_raw_file_row(void)
{
	return &raw_file_row;
}

bool tree_row_is_dir(const struct tree_row *row)
{
	return row->kind == TREE_DIR || row->kind == TREE_MAPPING || row->kind == TREE_RAW_DIR;
}

const char *tree_row_name(const struct tree_row *row)
{
	const char *slash = strrchr(row->path, '/');

	return slash ? slash + 1 : row->path;
}

/* Whether `row`'s path is `dir`'s path plus one component. */
static bool is_child_path(const struct tree_row *dir, const struct tree_row *row)
{
	size_t n = strlen(dir->path);

	if (row == &tree_rows[0])
		return false;
	if (n == 0)
		return strchr(row->path, '/') == NULL;
	return strncmp(row->path, dir->path, n) == 0 && row->path[n] == '/' &&
	       strchr(row->path + n + 1, '/') == NULL;
}

const struct tree_row *tree_row_parent(const struct tree_row *row)
{
	if (row < tree_rows || row >= tree_rows + tree_row_count)
		return NULL;
	return parents[row - tree_rows];
}

const struct tree_row *tree_next_child(const struct tree_row *dir, const struct tree_row *prev)
{
	const struct tree_row *row = prev ? prev + 1 : tree_rows;

	if (dir < tree_rows || dir >= tree_rows + tree_row_count)
		return NULL;
	for (; row < tree_rows + tree_row_count; row++)
		if (parents[row - tree_rows] == dir)
			return row;
	return NULL;
}

const struct tree_row *tree_child(const struct tree_row *dir, const char *name)
{
	for (const struct tree_row *row = tree_next_child(dir, NULL); row;
	     row = tree_next_child(dir, row))
		if (strcmp(tree_row_name(row), name) == 0)
			return row;
	return NULL;
}

int tree_init(void)
{
	for (size_t i = 1; i < tree_row_count; i++) {
		const struct tree_row *row = &tree_rows[i];

		parents[i] = NULL;
		for (size_t j = 0; j < tree_row_count; j++)
			if (is_child_path(&tree_rows[j], row))
				parents[i] = &tree_rows[j];
		if (!parents[i] || !tree_row_is_dir(parents[i])) {
			log_error("tree row '%s' has no directory row above it", row->path);
			return -EINVAL;
		}
		for (size_t j = 0; j < i; j++) {
			if (strcmp(tree_rows[j].path, row->path) == 0) {
				log_error("tree row '%s' appears twice", row->path);
				return -EINVAL;
			}
		}
		bool is_entry = strcmp(tree_row_name(row), "*") == 0;
		if (is_entry != (parents[i]->kind == TREE_MAPPING)) {
			log_error("tree row '%s': '*' rows are exactly a mapping's entries",
				  row->path);
			return -EINVAL;
		}
		if ((row->kind == TREE_MAPPING) != (row->entries != NULL) ||
		    (row->kind == TREE_FILE && !row->source) ||
		    (row->presence != TREE_ALWAYS && !row->source)) {
			log_error("tree row '%s' lacks its source or entries", row->path);
			return -EINVAL;
		}
		if ((row->format == TREE_JSON_FIELD || row->format == TREE_JSON_FIELD_LAST_PART) !=
		    (row->field != NULL)) {
			log_error("tree row '%s': a field format needs a field", row->path);
			return -EINVAL;
		}
	}
	for (size_t i = 0; i < tree_row_count; i++) {
		const struct tree_row *row = &tree_rows[i];
		if (row->kind == TREE_MAPPING && !tree_child(row, "*")) {
			log_error("tree row '%s': a mapping needs an entry row", row->path);
			return -EINVAL;
		}
	}
	return 0;
}

/* `path` is `root` itself or lies below it. */
static bool under(const char *path, const char *root)
{
	size_t n = strlen(root);

	return strncmp(path, root, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

bool tree_path_is_volatile(const char *path)
{
	for (size_t i = 0; i < sizeof(volatile_roots) / sizeof(volatile_roots[0]); i++)
		if (under(path, volatile_roots[i]))
			return true;
	return false;
}

bool tree_path_is_sensitive(const char *path)
{
	if (strcmp(path, "user-data") == 0)
		return true;
	for (size_t i = 0; i < sizeof(sensitive_roots) / sizeof(sensitive_roots[0]); i++) {
		size_t n = strlen(sensitive_roots[i]);
		if (strncmp(path, sensitive_roots[i], n) == 0 && path[n] == '/' && path[n + 1])
			return true;
	}
	return false;
}

bool tree_dir_is_sensitive(const char *prefix)
{
	for (size_t i = 0; i < sizeof(sensitive_roots) / sizeof(sensitive_roots[0]); i++)
		if (under(prefix, sensitive_roots[i]))
			return true;
	return false;
}

bool tree_name_is_valid(const char *name, size_t len)
{
	if (len == 0 || len > TREE_NAME_MAX)
		return false;
	if ((len == 1 && name[0] == '.') || (len == 2 && name[0] == '.' && name[1] == '.'))
		return false;
	return memchr(name, '/', len) == NULL && memchr(name, '\0', len) == NULL;
}

void tree_listing_free(struct tree_listing *l)
{
	for (size_t i = 0; i < l->count; i++) {
		free(l->entries[i].name);
		free(l->entries[i].remote);
	}
	free(l->entries);
	free(l->by_name);
	memset(l, 0, sizeof(*l));
}

/* Log the first few skipped lines one by one; a hostile listing of 100,000
 * bad lines must not become 100,000 log lines. */
#define SKIP_LOG_MAX 5

/* What IMDS sent, shown safely: printable ASCII as is, other bytes as \xNN,
 * cut at 64 bytes. */
static void quote_line(const char *line, size_t len, char *out, size_t size)
{
	size_t n = 0;

	for (size_t i = 0; i < len && i < 64 && n + 5 < size; i++) {
		unsigned char c = (unsigned char)line[i];
		if (c >= 0x20 && c < 0x7f && c != '\\')
			out[n++] = (char)c;
		else
			n += (size_t)snprintf(out + n, size - n, "\\x%02x", c);
	}
	if (len > 64 && n + 4 < size) {
		memcpy(out + n, "...", 3);
		n += 3;
	}
	out[n] = '\0';
}

static void note_skip(struct tree_listing *l, const char *where, const char *why, const char *line,
		      size_t len)
{
	char shown[64 * 4 + 8];

	l->skipped++;
	if (l->skipped > SKIP_LOG_MAX)
		return;
	quote_line(line, len, shown, sizeof(shown));
	log_warning("listing %s: skipped line \"%s\": %s", where[0] ? where : "/latest/", shown,
		    why);
}

static bool all_digits(const char *s, size_t len)
{
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++)
		if (s[i] < '0' || s[i] > '9')
			return false;
	return true;
}

static int add_entry(struct tree_listing *l, size_t *cap, const char *name, size_t name_len,
		     const char *remote, size_t remote_len, bool is_dir)
{
	struct tree_entry *e;

	if (l->count == *cap) {
		size_t n = *cap ? *cap * 2 : 16;
		struct tree_entry *grown = realloc(l->entries, n * sizeof(*grown));
		if (!grown)
			return -ENOMEM;
		l->entries = grown;
		*cap = n;
	}
	e = &l->entries[l->count];
	e->name = strndup(name, name_len);
	e->remote = strndup(remote, remote_len);
	e->is_dir = is_dir;
	if (!e->name || !e->remote) {
		free(e->name);
		free(e->remote);
		return -ENOMEM;
	}
	l->count++;
	return 0;
}

static int compare_names(const void *a, const void *b)
{
	const struct tree_entry *x = *(const struct tree_entry *const *)a;
	const struct tree_entry *y = *(const struct tree_entry *const *)b;
	int c = strcmp(x->name, y->name);

	/* Equal names keep listing order, so the first one wins. */
	return c ? c : (x < y ? -1 : x > y);
}

/* Drop later duplicates (by name) in O(n log n): a listing can be huge. */
static int drop_duplicates(struct tree_listing *l, const char *where)
{
	struct tree_entry **sorted;
	bool *drop;
	size_t kept = 0;

	if (l->count < 2)
		return 0;
	sorted = malloc(l->count * sizeof(*sorted));
	drop = calloc(l->count, sizeof(*drop));
	if (!sorted || !drop) {
		free(sorted);
		free(drop);
		return -ENOMEM;
	}
	for (size_t i = 0; i < l->count; i++)
		sorted[i] = &l->entries[i];
	qsort(sorted, l->count, sizeof(*sorted), compare_names);
	for (size_t i = 1; i < l->count; i++) {
		if (strcmp(sorted[i]->name, sorted[i - 1]->name) == 0) {
			drop[sorted[i] - l->entries] = true;
			note_skip(l, where, "duplicate name", sorted[i]->name,
				  strlen(sorted[i]->name));
		}
	}
	for (size_t i = 0; i < l->count; i++) {
		if (drop[i]) {
			free(l->entries[i].name);
			free(l->entries[i].remote);
		} else {
			l->entries[kept++] = l->entries[i];
		}
	}
	l->count = kept;
	free(sorted);
	free(drop);
	return 0;
}

static int index_by_name(struct tree_listing *l)
{
	if (l->count == 0)
		return 0;
	l->by_name = malloc(l->count * sizeof(*l->by_name));
	if (!l->by_name)
		return -ENOMEM;
	for (size_t i = 0; i < l->count; i++)
		l->by_name[i] = &l->entries[i];
	qsort(l->by_name, l->count, sizeof(*l->by_name), compare_names);
	return 0;
}

int tree_parse_listing(const char *body, size_t len, enum tree_keys keys, bool raw,
		       const char *where, struct tree_listing *out)
{
	size_t cap = 0;
	const char *p = body, *end = body + len;
	int err = 0;

	memset(out, 0, sizeof(*out));
	while (p < end && !err) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
		const char *line = p;
		const char *eq = memchr(line, '=', n);
		bool is_dir = false;
		const char *name = line, *remote = line;
		size_t name_len = n, remote_len = n;

		p = nl ? nl + 1 : end;
		if (n == 0) {
			note_skip(out, where, "empty line", "", 0);
			continue;
		}
		switch (keys) {
		case TREE_KEYS_LISTING:
			if (line[n - 1] == '/') {
				is_dir = true;
				name_len = remote_len = n - 1;
			} else if (raw && eq && all_digits(line, (size_t)(eq - line))) {
				/* public-keys/ says "0=alice"; the directory is 0/. */
				is_dir = true;
				name_len = remote_len = (size_t)(eq - line);
			}
			break;
		case TREE_KEYS_INDEXED:
			if (!eq || !all_digits(line, (size_t)(eq - line))) {
				note_skip(out, where, "not of the form N=name", line, n);
				continue;
			}
			is_dir = true;
			remote_len = (size_t)(eq - line);
			name = eq + 1;
			name_len = n - remote_len - 1;
			break;
		case TREE_KEYS_LINES:
			break;
		}
		if (!tree_name_is_valid(name, name_len) ||
		    !tree_name_is_valid(remote, remote_len)) {
			note_skip(out, where, "not a valid file name", line, n);
			continue;
		}
		err = add_entry(out, &cap, name, name_len, remote, remote_len, is_dir);
	}
	if (!err)
		err = drop_duplicates(out, where);
	if (!err)
		err = index_by_name(out);
	if (out->skipped > SKIP_LOG_MAX)
		log_warning("listing %s: skipped %zu lines in all", where[0] ? where : "/latest/",
			    out->skipped);
	if (err)
		tree_listing_free(out);
	return err;
}

const struct tree_entry *tree_listing_find(const struct tree_listing *l, const char *name)
{
	size_t lo = 0, hi = l->count;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(l->by_name[mid]->name, name);
		if (c == 0)
			return l->by_name[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* Whether the whole body is one JSON document (cJSON alone accepts trailing
 * garbage). Returns the parsed document or NULL. */
static cJSON *parse_whole_json(const char *body, size_t len)
{
	const char *end = NULL;
	cJSON *doc = cJSON_ParseWithLengthOpts(body, len, &end, false);

	if (!doc)
		return NULL;
	while (end && end < body + len && (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t'))
		end++;
	if (!end || end != body + len) {
		cJSON_Delete(doc);
		return NULL;
	}
	return doc;
}

enum newline { NEWLINE_NEVER, NEWLINE_IF_MISSING, NEWLINE_ALWAYS };

/* Copy a value, adding the final '\n' SPEC.md asks for: text gets one unless
 * it is empty or already ends in one; a JSON string always gets one. */
static int copy_value(const char *data, size_t len, enum newline newline, char **out,
		      size_t *out_len)
{
	bool add = newline == NEWLINE_ALWAYS ||
		   (newline == NEWLINE_IF_MISSING && len > 0 && data[len - 1] != '\n');
	char *buf = malloc(len + 2);

	if (!buf)
		return -ENOMEM;
	memcpy(buf, data, len);
	if (add)
		buf[len++] = '\n';
	buf[len] = '\0';
	*out = buf;
	*out_len = len;
	return 0;
}

int tree_format_value(enum tree_format format, const char *field, const char *body, size_t len,
		      const char *where, char **out, size_t *out_len)
{
	cJSON *doc = NULL;
	const cJSON *item;
	const char *s;
	int err;

	*out = NULL;
	*out_len = 0;
	switch (format) {
	case TREE_BYTES:
		return copy_value(body, len, NEWLINE_NEVER, out, out_len);
	case TREE_TEXT:
		return copy_value(body, len, NEWLINE_IF_MISSING, out, out_len);
	case TREE_JSON:
	case TREE_JSON_FIELD:
	case TREE_JSON_FIELD_LAST_PART:
		break;
	}

	doc = parse_whole_json(body, len);
	if (!doc) {
		log_warning("%s: the body is not valid JSON", where);
		return -EIO;
	}
	if (format == TREE_JSON) {
		cJSON_Delete(doc);
		return copy_value(body, len, NEWLINE_IF_MISSING, out, out_len);
	}
	item = cJSON_IsObject(doc) ? cJSON_GetObjectItemCaseSensitive(doc, field) : NULL;
	if (!cJSON_IsObject(doc)) {
		log_warning("%s: the JSON document is not an object", where);
		err = -EIO;
	} else if (!item) {
		/* The library raises here: the document is not what it should be. */
		log_warning("%s: the JSON document has no member %s", where, field);
		err = -EIO;
	} else if (cJSON_IsNull(item)) {
		err = -ENOENT; /* the library's None */
	} else if (!cJSON_IsString(item)) {
		log_warning("%s: member %s is not a string", where, field);
		err = -EIO;
	} else {
		s = item->valuestring;
		if (format == TREE_JSON_FIELD_LAST_PART && strrchr(s, '/'))
			s = strrchr(s, '/') + 1;
		err = copy_value(s, strlen(s), NEWLINE_ALWAYS, out, out_len);
	}
	cJSON_Delete(doc);
	return err;
}
