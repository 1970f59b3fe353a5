/*
 * fetch: speaks IMDSv2 over HTTP. The only user of libcurl.
 *
 * It owns the session token (one PUT at a time, refreshed before it
 * expires), per-request timeouts, retries with backoff for transient
 * failures, the body size cap, and the mapping of HTTP and curl results to
 * errno values. It knows nothing of FUSE or of the cache.
 */
#ifndef IMDSFS_FETCH_H
#define IMDSFS_FETCH_H

#include <stddef.h>

/* Bodies larger than this are refused (EIO), never truncated. */
#define FETCH_MAX_BODY (1024 * 1024)
#define FETCH_TOKEN_TTL_MAX 21600

struct fetch_config {
	const char *endpoint;	 /* "http://host[:port]", no trailing '/' */
	unsigned int token_ttl;	 /* seconds asked for on PUT /latest/api/token */
	unsigned int timeout_ms; /* per request: connect + transfer */
	unsigned int retries;	 /* further attempts after a transient failure */
};

struct fetcher;

/* Process-wide libcurl set-up; call once before any thread starts. */
int fetch_global_init(void);
void fetch_global_cleanup(void);

/* Returns 0 or -errno. Does not contact IMDS. */
int fetch_create(const struct fetch_config *config, struct fetcher **out);
void fetch_destroy(struct fetcher *fetcher);

/*
 * GET /latest/<path>. Blocks for at most about timeout * (retries + 1) plus
 * backoff, once one of a bounded number of request slots is free (a burst
 * of requests queues for them); holds no lock while the request is in
 * flight. On success returns
 * 0 and a malloc'd body (NUL-terminated for convenience; *len excludes the
 * NUL) that the caller frees. Otherwise returns -ENOENT (404), -EACCES (403,
 * or a 401 that a new token did not cure), -ETIMEDOUT, -ECONNREFUSED,
 * -EHOSTUNREACH, -EIO or -ENOMEM, and logs one line for every failure but a
 * 404. The bound holds per call: a lookup that needs a listing and then a
 * value makes two calls.
 */
int fetch_get(struct fetcher *fetcher, const char *path, char **body, size_t *len);

/* As fetch_get(), but a failure other than 404 is not logged: the line
 * fetch_get() would log is written to `why` (for the watch's poller, which
 * logs when polling starts failing, not at every poll). */
int fetch_get_quietly(struct fetcher *fetcher, const char *path, char **body, size_t *len,
		      char *why, size_t why_size);

/* Drop the token, so that the next request fetches a new one (SIGHUP). */
void fetch_forget_token(struct fetcher *fetcher);

/*
 * Percent-encode a path for a URL: '/' and the characters RFC 3986 allows in
 * a path segment pass; everything else (space, '?', '#', '%', bytes >= 0x80)
 * is encoded. Returns a malloc'd string or NULL on allocation failure.
 */
char *fetch_escape_path(const char *path);

#endif
