/*
 * tree_name_is_valid(): the rule for a name that comes from IMDS, against
 * an independent statement of SPEC.md's rule (not empty, not "." or "..",
 * no '/' or NUL, at most NAME_MAX bytes).
 */
#include "fuzz.h"
#include "tree.h"

#include <stdbool.h>
#include <string.h>

static bool spec_valid(const uint8_t *s, size_t len)
{
	if (len == 0 || len > 255)
		return false;
	if (len == 1 && s[0] == '.')
		return false;
	if (len == 2 && s[0] == '.' && s[1] == '.')
		return false;
	for (size_t i = 0; i < len; i++)
		if (s[i] == '/' || s[i] == '\0')
			return false;
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* Exactly `size` bytes: the function must not look past `len`. */
	fuzz_check(tree_name_is_valid((const char *)data, size) == spec_valid(data, size));
	/* And any prefix, as the listing parser passes pieces of a line. */
	for (size_t n = size > 300 ? 300 : size; n > 0; n /= 2)
		fuzz_check(tree_name_is_valid((const char *)data, n) == spec_valid(data, n));
	return 0;
}
