/*
 * tree_parse_listing(): every key mode, raw/ or not, on any bytes.
 *
 * Input: one selector byte (keys mode, raw flag), then the listing body.
 * The body is handed over as fetch_get() hands it to the parser: exactly
 * `len` bytes followed by a NUL that is not part of it.
 */
#include "fuzz.h"
#include "tree.h"

#include <stdbool.h>
#include <string.h>

static bool all_digits(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return false;
	return true;
}

/* "12=x": digits, then '='. */
static bool all_digits_before_eq(const char *s)
{
	const char *eq = strchr(s, '=');
	bool digits = eq && eq > s;

	for (const char *p = s; digits && p < eq; p++)
		digits = *p >= '0' && *p <= '9';
	return digits;
}

static void check_listing(const struct tree_listing *l, const char *body, size_t len,
			  enum tree_keys keys, bool raw)
{
	size_t lines = 0;

	/* Each entry and each skipped line is one line of the body. */
	for (size_t i = 0; i < len; i++)
		lines += body[i] == '\n';
	if (len && body[len - 1] != '\n')
		lines++;
	fuzz_check(l->count + l->skipped <= lines);
	fuzz_check(l->count == 0 || l->entries);

	for (size_t i = 0; i < l->count; i++) {
		const struct tree_entry *e = &l->entries[i];

		fuzz_check(e->name && e->remote);
		fuzz_check(tree_name_is_valid(e->name, strlen(e->name)));
		fuzz_check(tree_name_is_valid(e->remote, strlen(e->remote)));
		/* A name is a piece of the body, never invented. */
		fuzz_check(memmem(body, len, e->name, strlen(e->name)) != NULL);
		fuzz_check(memmem(body, len, e->remote, strlen(e->remote)) != NULL);
		switch (keys) {
		case TREE_KEYS_INDEXED:
			fuzz_check(e->is_dir);
			fuzz_check(all_digits(e->remote));
			break;
		case TREE_KEYS_LINES:
			fuzz_check(!e->is_dir);
			fuzz_check(strcmp(e->name, e->remote) == 0);
			break;
		case TREE_KEYS_LISTING:
			fuzz_check(strcmp(e->name, e->remote) == 0);
			/* Only raw/ reads "N=name" as the directory N. */
			if (raw && !e->is_dir)
				fuzz_check(!strchr(e->name, '=') || !all_digits_before_eq(e->name));
			break;
		}
		/* Names are unique, and find() finds each one. */
		fuzz_check(tree_listing_find(l, e->name) == e);
		if (l->by_name && i + 1 < l->count)
			fuzz_check(strcmp(l->by_name[i]->name, l->by_name[i + 1]->name) < 0);
	}
	fuzz_check(tree_listing_find(l, "") == NULL);
	fuzz_check(tree_listing_find(l, ".") == NULL);
	fuzz_check(tree_listing_find(l, "..") == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const enum tree_keys modes[] = {TREE_KEYS_LISTING, TREE_KEYS_INDEXED,
					       TREE_KEYS_LINES};
	struct tree_listing l;
	enum tree_keys keys;
	bool raw;
	char *body;
	size_t len;

	if (size < 1)
		return 0;
	keys = modes[data[0] % 3];
	raw = (data[0] >> 2) & 1;
	len = size - 1;
	body = malloc(len + 1);
	if (!body)
		return 0;
	memcpy(body, data + 1, len);
	body[len] = '\0';

	if (tree_parse_listing(body, len, keys, raw, "fuzz/", &l) == 0) {
		check_listing(&l, body, len, keys, raw);
		tree_listing_free(&l);
	}
	free(body);
	return 0;
}
