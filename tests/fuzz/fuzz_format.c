/*
 * tree_format_value(): every format on the same body, including the JSON
 * field extraction used for region, account_id, the instance profile and
 * the spot action document (action, time).
 *
 * Input: one selector byte, then the body. The selector picks the JSON
 * member; with its high bit set, the member's name is taken from the input
 * instead (up to the first '\n'), so the fuzzer can find members on its own.
 */
#include "fuzz.h"
#include "tree.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

static const char *const fields[] = {
	"region", "accountId", "action", "time", "InstanceProfileArn", "InstanceProfileId",
	"Code", "AccessKeyId", "availabilityZone", "",
};

struct result {
	int err;
	char *out;
	size_t len;
};

static struct result format(enum tree_format f, const char *field, const char *body, size_t len)
{
	struct result r = {0};

	r.err = tree_format_value(f, field, body, len, "fuzz", &r.out, &r.len);
	fuzz_check(r.err == 0 || r.err == -ENOENT || r.err == -EIO || r.err == -ENOMEM);
	if (r.err) {
		fuzz_check(r.out == NULL);
	} else {
		fuzz_check(r.out != NULL);
		fuzz_check(r.out[r.len] == '\0');
	}
	return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *field;
	char *owned_field = NULL, *body;
	const uint8_t *start;
	size_t len;

	if (size < 1)
		return 0;
	start = data + 1;
	len = size - 1;
	if (data[0] & 0x80) {
		const uint8_t *nl = memchr(start, '\n', len);
		size_t n = nl ? (size_t)(nl - start) : len;
		owned_field = strndup((const char *)start, n);
		if (!owned_field)
			return 0;
		field = owned_field;
		start += nl ? n + 1 : n;
		len -= nl ? n + 1 : n;
	} else {
		field = fields[data[0] % (sizeof(fields) / sizeof(fields[0]))];
	}
	/* As a cached blob holds it: len bytes and a NUL after them. */
	body = malloc(len + 1);
	if (!body) {
		free(owned_field);
		return 0;
	}
	memcpy(body, start, len);
	body[len] = '\0';

	struct result bytes = format(TREE_BYTES, NULL, body, len);
	struct result text = format(TREE_TEXT, NULL, body, len);
	struct result json = format(TREE_JSON, NULL, body, len);
	struct result member = format(TREE_JSON_FIELD, field, body, len);
	struct result last = format(TREE_JSON_FIELD_LAST_PART, field, body, len);

	/* Bytes are exact; text adds one '\n' unless empty or already there. */
	if (!bytes.err)
		fuzz_check(bytes.len == len && memcmp(bytes.out, body, len) == 0);
	if (!text.err) {
		bool add = len > 0 && body[len - 1] != '\n';
		fuzz_check(text.len == len + add && memcmp(text.out, body, len) == 0);
		fuzz_check(!add || text.out[len] == '\n');
	}
	/* A document is the body (+ '\n'); a body that is not JSON is EIO for
	 * the document and for everything derived from it. */
	if (!json.err) {
		bool add = len > 0 && body[len - 1] != '\n';
		fuzz_check(json.len == len + add && memcmp(json.out, body, len) == 0);
		fuzz_check(len > 0);
	} else {
		fuzz_check(json.err == -EIO || json.err == -ENOMEM);
		if (json.err == -EIO) {
			fuzz_check(member.err == -EIO || member.err == -ENOMEM);
			fuzz_check(last.err == -EIO || last.err == -ENOMEM);
		}
	}
	/* A member is a string plus '\n' with no NUL in it (a file of bytes
	 * the JSON string held); its last part is a suffix without '/'. */
	if (!member.err) {
		fuzz_check(json.err == 0 || json.err == -ENOMEM);
		fuzz_check(member.len >= 1 && member.out[member.len - 1] == '\n');
		fuzz_check(memchr(member.out, '\0', member.len) == NULL);
	}
	if (!last.err) {
		fuzz_check(last.len >= 1 && last.out[last.len - 1] == '\n');
		fuzz_check(memchr(last.out, '/', last.len) == NULL);
		if (!member.err) {
			fuzz_check(last.len <= member.len);
			fuzz_check(memcmp(member.out + member.len - last.len, last.out, last.len) == 0);
		}
	}
	if (member.err != -ENOMEM && last.err != -ENOMEM)
		fuzz_check((member.err == 0) == (last.err == 0));

	free(bytes.out);
	free(text.out);
	free(json.out);
	free(member.out);
	free(last.out);
	free(body);
	free(owned_field);
	return 0;
}
