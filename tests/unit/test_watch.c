/* The watch's table: every watched name depends only on what is polled, a
 * raw/ name's listing is its own directory's, no name twice; and what it
 * serves between polls is exactly the polled keys. */
#include "check.h"
#include "watch.h"

#include <stddef.h>

int main(void)
{
	struct watch *w = NULL;

	CHECK_EQ_INT(watch_check_table(), 0);
	CHECK_EQ_INT(watch_create(5, &w), 0);
	CHECK(watch_serves(w, "meta-data/spot/instance-action"));
	CHECK(watch_serves(w, "meta-data/events/recommendations/"));
	CHECK(watch_serves(w, "meta-data/events/maintenance/scheduled"));
	CHECK(!watch_serves(w, "meta-data/spot/"));
	CHECK(!watch_serves(w, "meta-data/iam/security-credentials/"));
	CHECK(!watch_serves(w, "meta-data/instance-action#text:"));
	CHECK(!watch_serves(NULL, "meta-data/instance-action"));
	watch_destroy(w);
	return check_done("test_watch");
}
