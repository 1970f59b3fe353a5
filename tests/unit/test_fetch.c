/* The fetcher's pure parts, and its error mapping against a closed port on
 * loopback (never any other address). */
#include "check.h"
#include "fetch.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void expect_escape(const char *in, const char *out)
{
	char *got = fetch_escape_path(in);

	CHECK(got && strcmp(got, out) == 0);
	if (got && strcmp(got, out) != 0)
		fprintf(stderr, "  escape(%s) = %s, expected %s\n", in, got, out);
	free(got);
}

static void test_escape(void)
{
	expect_escape("meta-data/ami-id", "meta-data/ami-id");
	expect_escape("meta-data/network/interfaces/macs/0e:49:61:0f:c3:11/",
		      "meta-data/network/interfaces/macs/0e:49:61:0f:c3:11/");
	expect_escape("meta-data/tags/instance/a b", "meta-data/tags/instance/a%20b");
	expect_escape("x?y#z%", "x%3Fy%23z%25");
	expect_escape("caf\xc3\xa9", "caf%C3%A9");
	expect_escape("aws:autoscaling:groupName=1+2@x", "aws:autoscaling:groupName=1+2@x");
}

static void test_refused(void)
{
	struct fetch_config config = {
		/* Port 1 on loopback: nothing listens there. */
		.endpoint = "http://127.0.0.1:1",
		.token_ttl = 60,
		.timeout_ms = 500,
		.retries = 1,
	};
	struct fetcher *f;
	struct timespec t0, t1;
	char *body = NULL;
	size_t len = 0;

	CHECK_EQ_INT(fetch_create(&config, &f), 0);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	CHECK_EQ_INT(fetch_get(f, "meta-data/ami-id", &body, &len), -ECONNREFUSED);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	CHECK(body == NULL);
	/* Bounded by timeout * (retries + 1) plus backoff. */
	CHECK((t1.tv_sec - t0.tv_sec) < 3);
	fetch_destroy(f);
}

int main(void)
{
	CHECK_EQ_INT(fetch_global_init(), 0);
	test_escape();
	test_refused();
	fetch_global_cleanup();
	return check_done("test_fetch");
}
