/*
 * resolve: the tree's rows applied to IMDS through the cache.
 *
 * Two kinds of cache key: an IMDS path holds the body as served (shared by
 * raw/ and the cleaned-up view, so reading region and then
 * raw/dynamic/instance-identity/document costs one request), and
 * "path#format" holds a cleaned-up file's formatted bytes. Clearing a path
 * clears what is derived from it.
 */
#include "resolve.h"
#include "fetch.h"
#include "log.h"
#include "watch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *join(const char *a, const char *b)
{
	char *s;

	return asprintf(&s, "%s%s", a, b) < 0 ? NULL : s;
}

struct body_fill {
	struct resolver *r;
	const char *path;
};

static int fill_body(void *ctx, struct blob **out)
{
	struct body_fill *f = ctx;
	char *data;
	size_t len;
	int err = fetch_get(f->r->fetcher, f->path, &data, &len);

	if (err)
		return err;
	*out = blob_new(data, len);
	free(data);
	return *out ? 0 : -ENOMEM;
}

/* Whether the value at `path` is fetched at every open (SPEC.md's
 * volatile paths), rather than kept: by the cache, or between polls by the
 * watch. */
static bool fetch_each_time(const struct resolver *r, const char *path)
{
	return tree_path_is_volatile(path) && !watch_serves(r->watch, path);
}

/* The body IMDS serves at `path`, cached unless fetched at every open. */
static int get_body(struct resolver *r, const char *path, struct blob **out)
{
	struct body_fill f = {r, path};

	return cache_get(r->cache, path, !fetch_each_time(r, path), fill_body, &f, out);
}

static void listing_destroy(void *listing)
{
	tree_listing_free(listing);
	free(listing);
}

static const struct tree_listing empty_listing;

/*
 * The listing at `path`, parsed once per fetched body and kept with it: the
 * result is borrowed from *holder, which the caller releases with
 * blob_unref(). On error *holder is NULL.
 */
/* One annex slot per way of reading a listing. */
_Static_assert((TREE_KEYS_LINES + 1) * 2 <= BLOB_ANNEX_SLOTS, "a listing mode without a slot");

static int parse_kept(const char *path, enum tree_keys keys, bool raw, struct blob **holder,
		      const struct tree_listing **out)
{
	unsigned int slot = (unsigned int)keys * 2 + raw;
	struct tree_listing *l;
	int err;

	l = blob_annex_get(*holder, slot);
	if (!l) {
		l = calloc(1, sizeof(*l));
		err = l ? tree_parse_listing((*holder)->data, (*holder)->len, keys, raw, path, l)
			: -ENOMEM;
		if (err) {
			free(l);
			blob_unref(*holder);
			*holder = NULL;
			return err;
		}
		l = blob_annex_set(*holder, slot, l, listing_destroy);
	}
	*out = l;
	return 0;
}

static int get_listing(struct resolver *r, const char *path, enum tree_keys keys, bool raw,
		       struct blob **holder, const struct tree_listing **out)
{
	int err = get_body(r, path, holder);

	*out = NULL;
	return err ? err : parse_kept(path, keys, raw, holder, out);
}

/* Whether a miss of `name` in the cached listing at `dir` is worth reading
 * the listing again for: the name is volatile, and the listing is not the
 * watch's (whose last poll is the answer until the next). */
static bool child_is_volatile(const struct resolver *r, const char *dir, const char *name)
{
	char *path = join(dir, name);
	bool v = path && tree_path_is_volatile(path) && !watch_serves(r->watch, dir);

	free(path);
	return v;
}

/*
 * The entry `name` of the listing at `dir`, borrowed from *holder. Volatile
 * names come and go while their parent's listing is cached (meta-data/
 * names spot/ only once an interruption is scheduled), so a miss on one
 * reads the listing again.
 */
static int find_listed(struct resolver *r, const char *dir, const char *name, enum tree_keys keys,
		       bool raw, struct blob **holder, const struct tree_entry **out)
{
	const struct tree_listing *l;

	*out = NULL;
	for (int attempt = 0;; attempt++) {
		int err = get_listing(r, dir, keys, raw, holder, &l);
		if (err)
			return err;
		*out = tree_listing_find(l, name);
		if (*out)
			return 0;
		blob_unref(*holder);
		*holder = NULL;
		if (attempt > 0 || !child_is_volatile(r, dir, name))
			return -ENOENT;
		cache_clear(r->cache, dir);
	}
}

bool resolve_is_volatile(const struct resolver *r, const struct node *n)
{
	return n->src && fetch_each_time(r, n->src);
}

static bool spec_is_sensitive(const struct node_spec *spec)
{
	if (!spec->src)
		return false;
	if (spec->is_dir)
		return tree_dir_is_sensitive(spec->src);
	if (spec->row->flags & TREE_VIA_ROLE)
		return tree_dir_is_sensitive(spec->src);
	return tree_path_is_sensitive(spec->src);
}

/* Directories of credentials and sensitive files vanish with hide_sensitive. */
static bool hidden(const struct resolver *r, const struct node_spec *spec)
{
	return r->hide_sensitive && spec_is_sensitive(spec);
}

/* The IMDS path of a TREE_VIA_ROLE value: its listing's first name (the
 * role, as the ec2-metadata library takes it). */
static int role_path(struct resolver *r, const char *listing_path, char **out)
{
	const struct tree_listing *l;
	struct blob *holder;
	int err = get_listing(r, listing_path, TREE_KEYS_LISTING, false, &holder, &l);

	*out = NULL;
	if (err)
		return err;
	if (l->count == 0 || l->entries[0].is_dir)
		err = -ENOENT;
	else if (!(*out = join(listing_path, l->entries[0].remote)))
		err = -ENOMEM;
	blob_unref(holder);
	return err;
}

static const char *format_tag(enum tree_format format)
{
	static const char *const tags[] = {
		[TREE_TEXT] = "text",
		[TREE_BYTES] = "bytes",
		[TREE_JSON] = "json",
		[TREE_JSON_FIELD] = "field",
		[TREE_JSON_FIELD_LAST_PART] = "last",
	};
	return tags[format];
}

struct content_fill {
	struct resolver *r;
	const struct tree_row *row;
	const char *path;
};

static int fill_content(void *ctx, struct blob **out)
{
	struct content_fill *f = ctx;
	struct blob *body = NULL;
	char *formatted = NULL;
	size_t len = 0;
	int err = get_body(f->r, f->path, &body);

	if (err == -ENOENT && (f->row->flags & TREE_EMPTY_ON_404))
		err = 0;
	if (err)
		return err;
	err = tree_format_value(f->row->format, f->row->field, body ? body->data : "",
				body ? body->len : 0, f->path, &formatted, &len);
	if (err == -EIO) {
		/* A malformed body must not stay cached for the next reader. */
		cache_clear(f->r->cache, f->path);
	}
	if (!err) {
		*out = blob_new(formatted, len);
		if (!*out)
			err = -ENOMEM;
		else if (body)
			(*out)->fetched = body->fetched;
	}
	free(formatted);
	blob_unref(body);
	return err;
}

/* The value at `path` formatted as `row` says, cached under
 * "path#format:field" unless volatile. */
static int get_formatted(struct resolver *r, const struct tree_row *row, const char *path,
			 struct blob **out)
{
	struct content_fill f = {r, row, path};
	char *key;
	int err;

	if (asprintf(&key, "%s#%s:%s", path, format_tag(row->format), row->field ? row->field : "") <
	    0)
		return -ENOMEM;
	err = cache_get(r->cache, key, !fetch_each_time(r, path), fill_content, &f, out);
	free(key);
	return err;
}

static int resolve_content(struct resolver *r, const struct node *file, struct blob **out)
{
	char *path = NULL;
	int err;

	*out = NULL;
	if (file->is_dir || !file->src)
		return -EISDIR;
	if (file->row->kind == TREE_RAW_FILE || file->row->format == TREE_BYTES)
		return get_body(r, file->src, out);

	if (!(file->row->flags & TREE_VIA_ROLE))
		return get_formatted(r, file->row, file->src, out);
	err = role_path(r, file->src, &path);
	if (!err)
		err = get_formatted(r, file->row, path, out);
	free(path);
	return err;
}

/*
 * Split an IMDS path into the directory whose listing names it ("a/b/", or
 * "" at the top) and its last part, without a trailing '/'. Returns 0 with
 * both malloc'd, or -ENOMEM (or -EIO for no path).
 */
static int split_path(const char *path, char **dir, char **name)
{
	size_t n = path ? strlen(path) : 0;
	const char *slash;
	size_t dir_len;

	*dir = *name = NULL;
	if (!path)
		return -EIO; /* a row without a source: tree_init() refuses it */
	if (n && path[n - 1] == '/')
		n--;
	slash = n ? memrchr(path, '/', n) : NULL;
	dir_len = slash ? (size_t)(slash - path) + 1 : 0;
	*dir = strndup(path, dir_len);
	*name = strndup(path + dir_len, n - dir_len);
	if (!*dir || !*name) {
		free(*dir);
		free(*name);
		*dir = *name = NULL;
		return -ENOMEM;
	}
	return 0;
}

/* Whether the last part of `path` is named in its directory's listing. */
static int check_listed(struct resolver *r, const char *path)
{
	const struct tree_entry *e;
	struct blob *holder = NULL;
	char *dir, *name;
	int err = split_path(path, &dir, &name);

	if (err)
		return err;
	err = find_listed(r, dir, name, TREE_KEYS_LISTING, false, &holder, &e);
	blob_unref(holder);
	free(dir);
	free(name);
	return err;
}

/* SPEC.md's presence rule for a fixed row: 0 when it is there. */
static int check_present(struct resolver *r, const struct tree_row *row, const char *src)
{
	struct blob *body;
	char *path;
	int err;

	if (row->presence == TREE_ALWAYS)
		return 0;
	if (!src)
		return -EIO; /* tree_init() refuses such a row */
	switch (row->presence) {
	case TREE_ALWAYS:
		return 0;
	case TREE_LISTED:
		return check_listed(r, src);
	case TREE_IF_ANSWERS:
		if (row->flags & TREE_VIA_ROLE) {
			err = role_path(r, src, &path);
			free(path);
			return err;
		}
		err = get_body(r, src, &body);
		blob_unref(body);
		return err;
	}
	return -EIO;
}

/* A fixed row below `dir`. Allocates spec->src. */
static int spec_for_row(const struct node *dir, const struct tree_row *row, struct node_spec *spec)
{
	memset(spec, 0, sizeof(*spec));
	spec->row = row;
	spec->base = dir->base;
	spec->is_dir = tree_row_is_dir(row);
	spec->depth = row->kind == TREE_RAW_DIR ? 1 : 0;
	if (row->source && !(spec->src = (char *)join(dir->base, row->source)))
		return -ENOMEM;
	return 0;
}

/* An entry of a mapping (a tag, an interface, a public key). Allocates
 * spec->src or spec->base. */
static int spec_for_entry(const struct node *dir, const struct tree_entry *e, struct node_spec *spec)
{
	const struct tree_row *entry_row = tree_child(dir->row, "*");
	char *where;

	memset(spec, 0, sizeof(*spec));
	if (asprintf(&where, "%s%s%s", dir->base, dir->row->entries, e->remote) < 0)
		return -ENOMEM;
	spec->row = entry_row;
	spec->is_dir = tree_row_is_dir(entry_row);
	if (spec->is_dir) {
		spec->base = join(where, "/");
		free(where);
		if (!spec->base)
			return -ENOMEM;
	} else {
		spec->src = where;
		spec->base = strdup(dir->base);
		if (!spec->base)
			return -ENOMEM;
	}
	return 0;
}

/* An entry of a raw/ directory. Allocates spec->src. */
static int spec_for_raw(const struct node *dir, const struct tree_entry *e, struct node_spec *spec)
{
	memset(spec, 0, sizeof(*spec));
	spec->is_dir = e->is_dir;
	spec->row = e->is_dir ? tree_raw_dir_row() : tree_raw_file_row();
	spec->depth = dir->depth + 1;
	if (asprintf((char **)&spec->src, "%s%s%s", dir->src, e->remote, e->is_dir ? "/" : "") < 0) {
		spec->src = NULL;
		return -ENOMEM;
	}
	spec->base = spec->src;
	return 0;
}

static void spec_free(struct node_spec *spec, bool base_owned)
{
	if (base_owned && spec->base != spec->src)
		free((char *)spec->base);
	free((char *)spec->src);
}

/* A mapping's keys, borrowed from *holder (which may stay NULL). */
static int mapping_keys(struct resolver *r, const struct node *dir, struct blob **holder,
			const struct tree_listing **l)
{
	/* Keys that are a list's lines (public-ipv4s) come from that list as
	 * its file shows it, so the two share one cache entry and one GET. */
	static const struct tree_row list_file = {.format = TREE_TEXT, .flags = TREE_EMPTY_ON_404};
	int err;

	if (dir->row->keys == TREE_KEYS_LINES) {
		err = get_formatted(r, &list_file, dir->src, holder);
		*l = NULL;
		return err ? err : parse_kept(dir->src, TREE_KEYS_LINES, false, holder, l);
	}
	err = get_listing(r, dir->src, dir->row->keys, false, holder, l);

	/* An empty mapping is an empty directory. */
	if (err == -ENOENT && dir->row->presence == TREE_ALWAYS) {
		*l = &empty_listing;
		err = 0;
	}
	return err;
}

static bool too_deep(const struct node *dir, const struct tree_entry *e)
{
	if (!e->is_dir || dir->depth < TREE_RAW_DEPTH_MAX)
		return false;
	log_warning("raw/%s%s: deeper than %d directories, not followed", dir->src, e->name,
		    TREE_RAW_DEPTH_MAX);
	return true;
}

void resolve_attr_of(const struct node *n, struct resolve_attr *attr)
{
	struct node_spec spec = {.row = n->row, .src = n->src, .is_dir = n->is_dir};

	memset(attr, 0, sizeof(*attr));
	attr->is_dir = n->is_dir;
	attr->is_sensitive = !n->is_dir && spec_is_sensitive(&spec);
	if (n->value) {
		attr->size = n->value->len;
		attr->mtime = n->value->fetched;
	}
}

int resolve_lookup(struct resolver *r, struct node *dir, const char *name, struct node **out)
{
	struct node_spec spec = {0};
	const struct tree_listing *l;
	struct blob *holder = NULL;
	const struct tree_entry *e;
	const struct tree_row *row = NULL;
	bool base_owned = false;
	int err = 0;

	*out = NULL;
	if (!tree_name_is_valid(name, strlen(name)))
		return -ENOENT;
	switch (dir->row->kind) {
	case TREE_DIR:
		row = tree_child(dir->row, name);
		if (!row)
			return -ENOENT;
		err = spec_for_row(dir, row, &spec);
		break;
	case TREE_MAPPING:
		err = mapping_keys(r, dir, &holder, &l);
		if (err)
			break;
		e = tree_listing_find(l, name);
		err = e ? spec_for_entry(dir, e, &spec) : -ENOENT;
		base_owned = true;
		break;
	case TREE_RAW_DIR:
		err = find_listed(r, dir->src, name, TREE_KEYS_LISTING, true, &holder, &e);
		if (!err)
			err = too_deep(dir, e) ? -ENOENT : spec_for_raw(dir, e, &spec);
		break;
	default:
		return -ENOTDIR;
	}
	blob_unref(holder);
	if (err)
		goto out;
	if (hidden(r, &spec)) {
		err = -ENOENT;
		goto out;
	}

	struct node probe = {.row = spec.row, .src = (char *)spec.src, .is_dir = spec.is_dir};
	if (!spec.is_dir)
		err = resolve_content(r, &probe, &spec.value);
	else if (row)
		err = check_present(r, row, spec.src);
	if (err == -ENOENT && !row && dir->src) {
		/* The cached listing named a value IMDS no longer has: drop the
		 * listing, so that ls lists only what can be opened. */
		log_debug("%s%s is gone; re-reading its listing next time", dir->src, name);
		cache_clear(r->cache, dir->src);
	}
	if (!err)
		err = node_bind(r->nodes, dir, name, &spec, out);
out:
	blob_unref(spec.value);
	spec_free(&spec, base_owned);
	return err;
}

static int add_dirent(struct resolve_dirent **v, size_t *count, size_t *cap, const char *name,
		      bool is_dir)
{
	if (*count == *cap) {
		size_t n = *cap ? *cap * 2 : 32;
		struct resolve_dirent *grown = realloc(*v, n * sizeof(*grown));
		if (!grown)
			return -ENOMEM;
		*v = grown;
		*cap = n;
	}
	(*v)[*count].name = strdup(name);
	(*v)[*count].is_dir = is_dir;
	if (!(*v)[*count].name)
		return -ENOMEM;
	(*count)++;
	return 0;
}

void resolve_dirents_free(struct resolve_dirent *v, size_t count)
{
	for (size_t i = 0; i < count; i++)
		free(v[i].name);
	free(v);
}

static int list_rows(struct resolver *r, const struct node *dir, struct resolve_dirent **v,
		     size_t *count, size_t *cap)
{
	int err = 0;

	for (const struct tree_row *row = tree_next_child(dir->row, NULL); row && !err;
	     row = tree_next_child(dir->row, row)) {
		struct node_spec spec;

		err = spec_for_row(dir, row, &spec);
		if (err)
			break;
		if (!hidden(r, &spec)) {
			err = check_present(r, row, spec.src);
			if (err == 0)
				err = add_dirent(v, count, cap, tree_row_name(row), spec.is_dir);
			else if (err == -ENOENT)
				err = 0;
		}
		spec_free(&spec, false);
	}
	return err;
}

int resolve_list(struct resolver *r, const struct node *dir, struct resolve_dirent **out,
		 size_t *count)
{
	struct resolve_dirent *v = NULL;
	const struct tree_listing *l = NULL;
	struct blob *holder = NULL;
	size_t cap = 0;
	int err = 0;

	*count = 0;
	switch (dir->row->kind) {
	case TREE_DIR:
		err = list_rows(r, dir, &v, count, &cap);
		break;
	case TREE_MAPPING:
		err = mapping_keys(r, dir, &holder, &l);
		for (size_t i = 0; !err && i < l->count; i++)
			err = add_dirent(&v, count, &cap, l->entries[i].name,
					 tree_row_is_dir(tree_child(dir->row, "*")));
		break;
	case TREE_RAW_DIR:
		err = get_listing(r, dir->src, TREE_KEYS_LISTING, true, &holder, &l);
		for (size_t i = 0; !err && i < l->count; i++) {
			struct node_spec spec;
			if (too_deep(dir, &l->entries[i]))
				continue;
			err = spec_for_raw(dir, &l->entries[i], &spec);
			if (!err && !hidden(r, &spec))
				err = add_dirent(&v, count, &cap, l->entries[i].name,
						 l->entries[i].is_dir);
			spec_free(&spec, false);
		}
		break;
	default:
		err = -ENOTDIR;
	}
	blob_unref(holder);
	if (err) {
		resolve_dirents_free(v, *count);
		*count = 0;
		v = NULL;
	}
	*out = v;
	return err;
}

static void clear_key(struct resolver *r, const char *key, bool prefix)
{
	if (!key)
		return;
	if (prefix)
		cache_clear_prefix(r->cache, key);
	else
		cache_clear(r->cache, key);
}

/* The listing that says whether `path` exists: `rmdir` clears it with the
 * values below it. */
static void clear_listing_of(struct resolver *r, const char *path)
{
	char *dir, *name;

	if (split_path(path, &dir, &name) != 0)
		return;
	clear_key(r, dir, false);
	free(dir);
	free(name);
}

/*
 * A file's value and what it is derived from. `rm FILE` leaves the listing
 * that names the file alone: `rm -r` unlinks every name it listed before it
 * removes the directory, and a re-read listing could make the later names
 * vanish under it.
 */
static void clear_file(struct resolver *r, const struct tree_row *row,
		       const char *src, bool with_listing)
{
	clear_key(r, src, (row->flags & TREE_VIA_ROLE) != 0);
	if (with_listing)
		clear_listing_of(r, src);
}

static void clear_row(struct resolver *r, const struct tree_row *row,
		      const char *base)
{
	char *src = row->source ? join(base, row->source) : NULL;
	char *entries = row->entries ? join(base, row->entries) : NULL;

	switch (row->kind) {
	case TREE_FILE:
	case TREE_RAW_FILE:
		if (src)
			clear_file(r, row, src, true);
		break;
	case TREE_MAPPING:
		clear_key(r, src, false);
		clear_key(r, entries, true);
		break;
	case TREE_RAW_DIR:
		clear_key(r, src, true);
		if (src)
			clear_listing_of(r, src);
		break;
	case TREE_DIR:
		clear_key(r, src, false);
		for (const struct tree_row *child = tree_next_child(row, NULL); child;
		     child = tree_next_child(row, child))
			clear_row(r, child, base);
		break;
	}
	free(src);
	free(entries);
}

void resolve_clear(struct resolver *r, const struct node *n)
{
	bool is_entry = strcmp(tree_row_name(n->row), "*") == 0;

	if (!n->is_dir) {
		clear_file(r, n->row, n->src, false);
	} else if (n->row->kind == TREE_RAW_DIR) {
		clear_key(r, n->src, true);
		clear_listing_of(r, n->src);
	} else if (is_entry) {
		clear_key(r, n->base, true);
	} else {
		/* A fixed directory or mapping: its rows, read against the
		 * node's base. */
		clear_row(r, n->row, n->base);
	}
}
