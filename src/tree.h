/*
 * tree: what the names under the mount point mean.
 *
 * The cleaned-up tree of SPEC.md is one declarative table (tree_rows[]): each
 * row names a file or directory, where its bytes come from in IMDS, how they
 * are formatted, and when it exists. Mapping directories (tags, interfaces,
 * public keys, ...) are a row plus one template row for their entries,
 * written with "*" in the path. raw/ is a mirror whose shape comes from
 * IMDS's own listings.
 *
 * This module also owns the rules for names that come from IMDS (listing
 * parsing, what is a valid file name), the volatile and sensitive path
 * rules, and the formatting of values. It knows nothing of FUSE or HTTP.
 */
#ifndef IMDSFS_TREE_H
#define IMDSFS_TREE_H

#include <stdbool.h>
#include <stddef.h>

enum tree_kind {
	TREE_DIR,     /* fixed directory: its entries are the rows below it */
	TREE_MAPPING, /* directory whose entries are keys that IMDS lists */
	TREE_FILE,
	TREE_RAW_DIR, /* a directory of raw/: entries from the IMDS listing */
	TREE_RAW_FILE,
};

enum tree_format {
	TREE_TEXT,	 /* body + "\n" unless empty or already ending in "\n" */
	TREE_BYTES,	 /* exactly as served */
	TREE_JSON,	 /* a JSON document (must parse) + "\n" if it had none */
	TREE_JSON_FIELD, /* a string member of a JSON document, + "\n" */
	TREE_JSON_FIELD_LAST_PART, /* its last '/'-separated part, + "\n" */
};

enum tree_presence {
	TREE_LISTED,	 /* the source's last part is named in its IMDS listing */
	TREE_ALWAYS,	 /* always there (an empty mapping is an empty directory) */
	TREE_IF_ANSWERS, /* there when the source itself answers 200 */
};

/* Where a mapping's keys come from. */
enum tree_keys {
	TREE_KEYS_LISTING, /* the lines of an IMDS listing, '/' dropped */
	TREE_KEYS_INDEXED, /* "N=name" lines: the key is name, IMDS knows it as N */
	TREE_KEYS_LINES,   /* the lines of a value (public-ipv4s) */
};

enum tree_flags {
	TREE_EMPTY_ON_404 = 1 << 0, /* a 404 is an empty file, not ENOENT */
	TREE_VIA_ROLE = 1 << 1,	    /* source is a listing; the value is at its first name */
};

/*
 * A row's source is an IMDS path under /latest/, relative to the base of the
 * nearest mapping entry above it (the empty string at the top): "vpc-id"
 * under network/interfaces/<mac>/ means
 * meta-data/network/interfaces/macs/<mac>/vpc-id.
 */
struct tree_row {
	const char *path; /* in the cleaned-up tree; "*" is a mapping's entry */
	enum tree_kind kind;
	const char *source; /* file: the value; mapping: the keys; NULL: none */
	enum tree_format format;
	enum tree_presence presence;
	unsigned int flags;
	const char *field; /* JSON member, for the field formats */
	enum tree_keys keys;
	const char *entries; /* mapping: where entry N lives, relative to the base */
};

extern const struct tree_row tree_rows[];
extern const size_t tree_row_count;

/* The row of the tree's root (the mount point itself). */
const struct tree_row *tree_root(void);
/* The row of raw/'s directories and files (shared by every raw node). */
const struct tree_row *tree_raw_dir_row(void);
const struct tree_row *tree_raw_file_row(void);

/* The last component of a row's path ("vpc_id" for the interfaces row of vpc_id). */
const char *tree_row_name(const struct tree_row *row);
/* The parent row (NULL for the root). Valid after tree_init(). */
const struct tree_row *tree_row_parent(const struct tree_row *row);
/* The child of a fixed directory or mapping row named `name` ("*" for a
 * mapping's entry row), or NULL. */
const struct tree_row *tree_child(const struct tree_row *dir, const char *name);
/* Iterate the children of `dir`: pass NULL first, then the previous one. */
const struct tree_row *tree_next_child(const struct tree_row *dir, const struct tree_row *prev);

/* Checks the table's invariants and indexes parents. Returns 0 or -EINVAL
 * with a log line naming the bad row. */
int tree_init(void);

bool tree_row_is_dir(const struct tree_row *row);

/* SPEC.md's volatile paths: fetched fresh on every open, never cached. */
bool tree_path_is_volatile(const char *imds_path);
/* SPEC.md's sensitive paths: credentials and user data (mode 0400). */
bool tree_path_is_sensitive(const char *imds_path);
/* A directory that holds only sensitive files (hidden by hide_sensitive). */
bool tree_dir_is_sensitive(const char *imds_prefix);

/* Longest name accepted from IMDS (NAME_MAX). */
#define TREE_NAME_MAX 255
/* Deepest raw/ directory followed below raw/. */
#define TREE_RAW_DEPTH_MAX 32

/* Whether `len` bytes at `name` can be a file name: not empty, not "." or
 * "..", no '/' and no NUL, at most TREE_NAME_MAX bytes. */
bool tree_name_is_valid(const char *name, size_t len);

/* One entry of a parsed IMDS listing. */
struct tree_entry {
	char *name;   /* the file name shown */
	char *remote; /* the IMDS path component ("0" for "0=alice") */
	bool is_dir;  /* the line ended in '/' (or was "N=name") */
};

struct tree_listing {
	struct tree_entry *entries; /* in listing order */
	size_t count;
	size_t skipped;	       /* invalid or duplicate lines, each logged */
	struct tree_entry **by_name; /* sorted, for tree_listing_find */
};

/*
 * Parse an IMDS listing body. `keys` says how to read each line:
 * TREE_KEYS_LISTING: "name" is a file and "name/" a directory, and for raw/
 * "N=name" names directory N; TREE_KEYS_INDEXED: "N=name" lines give name,
 * with N as remote; TREE_KEYS_LINES: every line is a name. `raw` selects the
 * raw/ reading of "N=name". Lines that are not valid names, and duplicates,
 * are skipped with a log line naming `where`. Returns 0 or -ENOMEM.
 */
int tree_parse_listing(const char *body, size_t len, enum tree_keys keys, bool raw,
		       const char *where, struct tree_listing *out);
void tree_listing_free(struct tree_listing *listing);
/* The entry named `name`, or NULL. O(log n): listings can be huge. */
const struct tree_entry *tree_listing_find(const struct tree_listing *listing, const char *name);

/*
 * Format a value served by IMDS for a cleaned-up file. For the JSON formats
 * the body must parse; a null field is -ENOENT (the library's None); a
 * missing field or anything else malformed is -EIO, logged with `where`. On success
 * returns 0 and a malloc'd buffer.
 */
int tree_format_value(enum tree_format format, const char *field, const char *body, size_t len,
		      const char *where, char **out, size_t *out_len);

#endif
