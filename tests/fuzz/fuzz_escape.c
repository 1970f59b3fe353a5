/*
 * fetch_escape_path(): every IMDS path goes through it into a URL. The
 * result must hold only RFC 3986 path characters and %XX escapes, and
 * decode back to the input exactly.
 */
#include "fetch.h"
#include "fuzz.h"

#include <stdbool.h>
#include <string.h>

static bool passes(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c && strchr("-._~!$&'()*+,;=:@/", c));
}

static int hex(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1; /* lower case is not what it writes */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A path is a C string: the input up to its first NUL. */
	char *path = strndup((const char *)data, size);
	char *escaped;
	size_t n, i = 0, j = 0;

	if (!path)
		return 0;
	n = strlen(path);
	escaped = fetch_escape_path(path);
	if (!escaped) {
		free(path);
		return 0;
	}
	fuzz_check(strlen(escaped) <= 3 * n);
	while (escaped[i]) {
		unsigned char c = (unsigned char)escaped[i];
		if (c == '%') {
			int hi = hex(escaped[i + 1]), lo = hi < 0 ? -1 : hex(escaped[i + 2]);
			fuzz_check(hi >= 0 && lo >= 0);
			c = (unsigned char)(hi * 16 + lo);
			/* Escaped only when it had to be. */
			fuzz_check(!passes(c));
			i += 3;
		} else {
			fuzz_check(passes(c));
			i++;
		}
		fuzz_check(j < n && (unsigned char)path[j] == c);
		j++;
	}
	fuzz_check(j == n);
	free(escaped);
	free(path);
	return 0;
}
