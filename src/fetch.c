/*
 * fetch: IMDSv2 over libcurl.
 *
 * Easy handles live in a small pool: a request takes one, uses it and gives
 * it back, so a worker thread keeps reusing a handle (and its keep-alive
 * connection) without thread-local state to clean up. A burst of readers
 * makes more, one per request in flight; the pool keeps only a few of them
 * afterwards (each holds a connection and some fds). The pool lock and the
 * token lock are only ever held for pointer moves, never across a request.
 *
 * Every request is bounded: each attempt by the configured timeout, the whole
 * call by a deadline of timeout * (retries + 1) plus the largest backoff, so
 * that a reader never waits longer than SPEC.md promises, even when it
 * queued behind another thread's token request.
 */
#include "fetch.h"
#include "log.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TOKEN_HEADER	 "X-aws-ec2-metadata-token: "
#define TOKEN_TTL_HEADER "X-aws-ec2-metadata-token-ttl-seconds: "
#define TOKEN_PATH	 "api/token"
#define BACKOFF_BASE_MS	 100
#define TOKEN_MAX_LEN	 4096
/* Idle handles kept, as many as main.c keeps idle worker threads: past a
 * burst, the daemon holds what it held before. */
#define IDLE_HANDLES_MAX 2
/* Requests to IMDS at once, at most: as many as the daemon had worker
 * threads before main.c let them grow for readers that share a request.
 * IMDS takes 1,024 packets per second per interface, and each request
 * beyond the idle handles opens a connection. A burst of readers of many
 * cold values waits its turn here, as it used to in the kernel's queue,
 * before its own deadline starts. */
#define REQUESTS_AT_ONCE 64

struct handle {
	CURL *curl;
	struct handle *next;
	char error[CURL_ERROR_SIZE];
};

struct fetcher {
	char *endpoint;
	unsigned int token_ttl;
	unsigned int timeout_ms;
	unsigned int retries;

	pthread_mutex_t pool_lock; /* protects the three below */
	pthread_cond_t pool_cond;  /* a request slot was given back */
	struct handle *idle;
	unsigned int idle_count;
	unsigned int in_flight; /* requests holding a slot, <= REQUESTS_AT_ONCE */

	pthread_mutex_t token_lock;
	pthread_cond_t token_cond;
	char *token;		       /* NULL when there is none */
	struct timespec token_expires; /* CLOCK_MONOTONIC */
	bool token_fetching;
	unsigned long token_round; /* bumped when a token request ends */
	bool token_round_ok;	   /* the last token request got a token */
	int token_error;	   /* how the last token request failed */
	bool token_error_transient;
	char token_reason[CURL_ERROR_SIZE + 32];
};

/* What one HTTP exchange came to. */
struct outcome {
	int err;	/* 0 or -errno for the reader */
	bool transient; /* worth another attempt */
	bool unauthorized;
	char reason[CURL_ERROR_SIZE + 32];
};

struct body {
	char *data;
	size_t len;
	size_t cap;
	bool too_big;
};

int fetch_global_init(void)
{
	return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -EIO;
}

void fetch_global_cleanup(void)
{
	curl_global_cleanup();
}

static void now_monotonic(struct timespec *ts)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
}

static long long ms_until(const struct timespec *deadline)
{
	struct timespec now;

	now_monotonic(&now);
	return (long long)(deadline->tv_sec - now.tv_sec) * 1000 +
	       (deadline->tv_nsec - now.tv_nsec) / 1000000;
}

static void add_ms(struct timespec *ts, long long ms)
{
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (ms % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

static void sleep_ms(long long ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};

	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

/* Backoff before attempt n (n >= 1): about 100 ms, doubling, with jitter in
 * [base/2, base] so that the bound in SPEC.md holds. */
static long long backoff_ms(unsigned int attempt)
{
	long long base = (long long)BACKOFF_BASE_MS << (attempt - 1 < 16 ? attempt - 1 : 16);
	unsigned int seed = (unsigned int)(uintptr_t)&base ^ (unsigned int)time(NULL) ^ attempt;

	return base / 2 + rand_r(&seed) % (base / 2 + 1);
}

static long long backoff_total_ms(unsigned int retries)
{
	long long total = 0;

	for (unsigned int n = 1; n <= retries; n++)
		total += (long long)BACKOFF_BASE_MS << (n - 1 < 16 ? n - 1 : 16);
	return total;
}

char *fetch_escape_path(const char *path)
{
	static const char allowed[] = "-._~!$&'()*+,;=:@/";
	size_t n = strlen(path);
	char *out = malloc(n * 3 + 1);
	char *p = out;

	if (!out)
		return NULL;
	for (const unsigned char *s = (const unsigned char *)path; *s; s++) {
		if ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		    (*s >= '0' && *s <= '9') || strchr(allowed, *s)) {
			*p++ = (char)*s;
		} else {
			sprintf(p, "%%%02X", *s);
			p += 3;
		}
	}
	*p = '\0';
	return out;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata)
{
	struct body *body = userdata;
	size_t n = size * nmemb;

	if (body->len + n > FETCH_MAX_BODY) {
		body->too_big = true;
		return 0; /* makes curl stop with CURLE_WRITE_ERROR */
	}
	if (body->len + n + 1 > body->cap) {
		size_t cap = body->cap ? body->cap : 256;
		while (cap < body->len + n + 1)
			cap *= 2;
		char *grown = realloc(body->data, cap);
		if (!grown)
			return 0;
		body->data = grown;
		body->cap = cap;
	}
	memcpy(body->data + body->len, data, n);
	body->len += n;
	body->data[body->len] = '\0';
	return n;
}

/* A request slot and a handle for it (give both back with handle_give).
 * Blocks while REQUESTS_AT_ONCE requests are in flight. */
static struct handle *handle_take(struct fetcher *f)
{
	struct handle *h;

	pthread_mutex_lock(&f->pool_lock);
	while (f->in_flight >= REQUESTS_AT_ONCE)
		pthread_cond_wait(&f->pool_cond, &f->pool_lock);
	f->in_flight++;
	h = f->idle;
	if (h) {
		f->idle = h->next;
		f->idle_count--;
	}
	pthread_mutex_unlock(&f->pool_lock);
	if (h)
		return h;

	h = calloc(1, sizeof(*h));
	if (h && !(h->curl = curl_easy_init())) {
		free(h);
		h = NULL;
	}
	if (!h) {
		pthread_mutex_lock(&f->pool_lock);
		f->in_flight--;
		pthread_cond_signal(&f->pool_cond);
		pthread_mutex_unlock(&f->pool_lock);
	}
	return h;
}

static void handle_free(struct handle *h)
{
	curl_easy_cleanup(h->curl);
	free(h);
}

static void handle_give(struct fetcher *f, struct handle *h)
{
	bool keep;

	pthread_mutex_lock(&f->pool_lock);
	keep = f->idle_count < IDLE_HANDLES_MAX;
	if (keep) {
		h->next = f->idle;
		f->idle = h;
		f->idle_count++;
	}
	f->in_flight--;
	pthread_cond_signal(&f->pool_cond);
	pthread_mutex_unlock(&f->pool_lock);
	if (!keep)
		handle_free(h); /* closes its connection */
}

/* One status-to-errno table for the whole daemon (SPEC.md, "Errors"). */
static void classify_http(long status, struct outcome *o)
{
	o->transient = false;
	o->unauthorized = false;
	switch (status) {
	case 200:
		o->err = 0;
		return;
	case 401:
		o->err = -EACCES;
		o->unauthorized = true;
		o->transient = true;
		break;
	case 403:
		o->err = -EACCES;
		break;
	case 404:
		o->err = -ENOENT;
		break;
	case 429:
		o->err = -EIO;
		o->transient = true;
		break;
	default:
		o->err = -EIO;
		o->transient = status >= 500 && status <= 599;
		break;
	}
	snprintf(o->reason, sizeof(o->reason), "HTTP %ld", status);
}

static void classify_curl(CURLcode code, CURL *curl, const char *error, const struct body *body,
			  struct outcome *o)
{
	long os_errno = 0;

	o->unauthorized = false;
	o->transient = true;
	snprintf(o->reason, sizeof(o->reason), "%s", error[0] ? error : curl_easy_strerror(code));
	switch (code) {
	case CURLE_OPERATION_TIMEDOUT:
		o->err = -ETIMEDOUT;
		break;
	case CURLE_COULDNT_CONNECT:
		curl_easy_getinfo(curl, CURLINFO_OS_ERRNO, &os_errno);
		if (os_errno == EHOSTUNREACH || os_errno == ENETUNREACH)
			o->err = -EHOSTUNREACH;
		else if (os_errno == ETIMEDOUT)
			o->err = -ETIMEDOUT;
		else
			o->err = -ECONNREFUSED;
		break;
	case CURLE_COULDNT_RESOLVE_HOST:
		o->err = -EHOSTUNREACH;
		break;
	case CURLE_WRITE_ERROR:
		o->err = -EIO;
		o->transient = false;
		if (body->too_big)
			snprintf(o->reason, sizeof(o->reason), "body larger than %d bytes",
				 FETCH_MAX_BODY);
		break;
	default:
		/* Resets, truncated bodies, empty replies: the connection broke. */
		o->err = -EIO;
		break;
	}
}

/*
 * One HTTP exchange. `token` is the header value for a GET, NULL for the
 * token PUT. Returns the outcome; on success hands over the body.
 */
static void exchange(struct fetcher *f, struct handle *h, const char *path, const char *token,
		     long long budget_ms, struct body *body, struct outcome *o)
{
	CURL *c = h->curl;
	struct curl_slist *headers = NULL;
	char header[TOKEN_MAX_LEN + 64];
	char *escaped = fetch_escape_path(path);
	char *url = NULL;
	long timeout = budget_ms < (long long)f->timeout_ms ? (long)budget_ms : (long)f->timeout_ms;
	long status = 0;
	CURLcode code;

	memset(o, 0, sizeof(*o));
	if (timeout < 1)
		timeout = 1;
	if (!escaped || asprintf(&url, "%s/latest/%s", f->endpoint, escaped) < 0) {
		url = NULL;
		o->err = -ENOMEM;
		snprintf(o->reason, sizeof(o->reason), "out of memory");
		goto out;
	}

	if (token) {
		snprintf(header, sizeof(header), TOKEN_HEADER "%s", token);
		curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
		curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, NULL);
	} else {
		snprintf(header, sizeof(header), TOKEN_TTL_HEADER "%u", f->token_ttl);
		curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "PUT");
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
	}
	headers = curl_slist_append(headers, header);
	if (!headers) {
		o->err = -ENOMEM;
		snprintf(o->reason, sizeof(o->reason), "out of memory");
		goto out;
	}

	h->error[0] = '\0';
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, h->error);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, timeout);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
	/* IMDS is link-local: an http_proxy from the environment must not
	 * carry the token (or the credentials) anywhere else. */
	curl_easy_setopt(c, CURLOPT_PROXY, "");
	curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http");

	code = curl_easy_perform(c);
	if (code != CURLE_OK) {
		classify_curl(code, c, h->error, body, o);
		goto out;
	}
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	classify_http(status, o);
out:
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
	curl_slist_free_all(headers);
	free(url);
	free(escaped);
}

static long long refresh_margin_ms(const struct fetcher *f)
{
	long long half = (long long)f->token_ttl * 1000 / 2;

	return half < 60000 ? half : 60000;
}

/* PUT a new token and publish the outcome of this round; wakes every
 * thread that waited for it. Logs nothing: the reader's fetch_get() says
 * once why it failed. */
static void request_token(struct fetcher *f, struct handle *h, long long budget_ms)
{
	struct body body = {0};
	struct outcome o;
	char *token = NULL;

	exchange(f, h, TOKEN_PATH, NULL, budget_ms, &body, &o);
	if (o.err == 0) {
		/* A token is opaque printable ASCII; anything else would corrupt
		 * the header it goes back in. */
		bool printable = body.len > 0 && body.len <= TOKEN_MAX_LEN;
		for (size_t i = 0; printable && i < body.len; i++)
			printable = body.data[i] > 0x20 && body.data[i] < 0x7f;
		if (printable) {
			token = body.data;
			body.data = NULL;
		} else {
			o.err = -EIO;
			o.transient = false;
			snprintf(o.reason, sizeof(o.reason), "malformed token in the reply");
		}
	}
	if (o.err == -ENOENT) {
		o.err = -EIO; /* no token endpoint: this is not an IMDSv2 service */
		snprintf(o.reason, sizeof(o.reason), "HTTP 404 (no IMDSv2 token service)");
	}
	free(body.data);
	if (!token)
		log_debug("token request (PUT /latest/api/token): %s", o.reason);

	pthread_mutex_lock(&f->token_lock);
	f->token_round_ok = token != NULL;
	if (token) {
		free(f->token);
		f->token = token;
		now_monotonic(&f->token_expires);
		add_ms(&f->token_expires, (long long)f->token_ttl * 1000);
		f->token_error = 0;
	} else {
		f->token_error = o.err;
		f->token_error_transient = o.transient;
		snprintf(f->token_reason, sizeof(f->token_reason), "%s", o.reason);
	}
	f->token_fetching = false;
	f->token_round++;
	pthread_cond_broadcast(&f->token_cond);
	pthread_mutex_unlock(&f->token_lock);
}

/* Under token_lock: a copy of the token if it has not expired yet. */
static int copy_live_token(struct fetcher *f, char **out)
{
	if (!f->token || ms_until(&f->token_expires) <= 0)
		return -ENOENT;
	*out = strdup(f->token);
	return *out ? 0 : -ENOMEM;
}

/* Under token_lock: how the last round failed, for the caller. */
static int round_failed(struct fetcher *f, bool *transient, char *reason, size_t size)
{
	*transient = f->token_error_transient;
	snprintf(reason, size, "%s", f->token_reason);
	return f->token_error ? f->token_error : -EIO;
}

/*
 * Get a copy of a usable token, requesting one when needed. Only one thread
 * requests at a time; the others wait for its round (or use the old token
 * while it is still valid). One round per call at most: a failed round ends
 * the call (with the old token if it has not expired), so a reader is never
 * held past its deadline. Returns 0 with *out set, or -errno with
 * *transient and `reason` set.
 */
static int acquire_token(struct fetcher *f, struct handle *h, const struct timespec *deadline,
			 char **out, bool *transient, char *reason, size_t reason_size)
{
	int err;

	*out = NULL;
	*transient = false;
	reason[0] = '\0';
	pthread_mutex_lock(&f->token_lock);
	for (;;) {
		long long left = f->token ? ms_until(&f->token_expires) : 0;

		if (f->token && (left > refresh_margin_ms(f) || (left > 0 && f->token_fetching))) {
			err = copy_live_token(f, out);
			break;
		}
		if (ms_until(deadline) <= 0) {
			err = -ETIMEDOUT;
			*transient = true;
			snprintf(reason, reason_size, "no time left to wait for a token");
			break;
		}
		unsigned long round = f->token_round;
		if (!f->token_fetching) {
			f->token_fetching = true;
			pthread_mutex_unlock(&f->token_lock);
			request_token(f, h, ms_until(deadline));
			pthread_mutex_lock(&f->token_lock);
		} else {
			while (f->token_fetching && round == f->token_round) {
				struct timespec until;
				/* cond waits on CLOCK_REALTIME by default. */
				clock_gettime(CLOCK_REALTIME, &until);
				add_ms(&until, ms_until(deadline) > 0 ? ms_until(deadline) : 0);
				if (pthread_cond_timedwait(&f->token_cond, &f->token_lock,
							   &until) == ETIMEDOUT)
					break;
			}
			if (round == f->token_round) {
				err = -ETIMEDOUT;
				*transient = true;
				snprintf(reason, reason_size, "timed out waiting for a token");
				break;
			}
		}
		if (f->token_round_ok) {
			/* A new token (unless SIGHUP or a 401 dropped it at once:
			 * then loop, bounded by the deadline). */
			err = copy_live_token(f, out);
			if (err != -ENOENT)
				break;
			continue;
		}
		/* The round failed: the old token serves while it lives. */
		err = copy_live_token(f, out);
		if (err)
			err = round_failed(f, transient, reason, reason_size);
		break;
	}
	pthread_mutex_unlock(&f->token_lock);
	return err;
}

/* A 401 means the token we sent is no longer good; drop it unless another
 * thread already replaced it. */
static void invalidate_token(struct fetcher *f, const char *used)
{
	pthread_mutex_lock(&f->token_lock);
	if (f->token && strcmp(f->token, used) == 0) {
		free(f->token);
		f->token = NULL;
	}
	pthread_mutex_unlock(&f->token_lock);
}

void fetch_forget_token(struct fetcher *f)
{
	pthread_mutex_lock(&f->token_lock);
	free(f->token);
	f->token = NULL;
	pthread_mutex_unlock(&f->token_lock);
}

/* fetch_get(), and what it would log on failure in `why` (when given) or
 * in the log. */
static int get(struct fetcher *f, const char *path, char **out, size_t *out_len, char *why,
	       size_t why_size)
{
	struct handle *h = handle_take(f);
	struct timespec deadline;
	struct outcome o = {.err = -EIO};
	struct body body = {0};
	unsigned int attempt;
	bool token_failed = false;

	*out = NULL;
	*out_len = 0;
	if (!h)
		return -ENOMEM;

	now_monotonic(&deadline);
	add_ms(&deadline, (long long)f->timeout_ms * (f->retries + 1) + backoff_total_ms(f->retries));

	for (attempt = 0; attempt <= f->retries; attempt++) {
		char *token = NULL;
		bool transient;

		if (attempt > 0) {
			long long pause = backoff_ms(attempt);
			long long left = ms_until(&deadline);
			if (left <= 0)
				break;
			sleep_ms(pause < left ? pause : left);
		}
		if (ms_until(&deadline) <= 0)
			break;

		o.err = acquire_token(f, h, &deadline, &token, &transient, o.reason,
				      sizeof(o.reason));
		if (o.err) {
			token_failed = true;
			o.transient = transient;
			if (!transient)
				break;
			continue;
		}
		token_failed = false;

		free(body.data);
		memset(&body, 0, sizeof(body));
		exchange(f, h, path, token, ms_until(&deadline), &body, &o);
		if (o.unauthorized)
			invalidate_token(f, token);
		free(token);
		if (o.err == 0 || !o.transient)
			break;
		log_debug("GET /latest/%s: attempt %u failed: %s", path, attempt + 1, o.reason);
	}
	handle_give(f, h);

	if (o.err == 0) {
		*out = body.data ? body.data : strdup("");
		*out_len = body.len;
		if (!*out)
			return -ENOMEM;
		log_debug("GET /latest/%s: %zu bytes", path, body.len);
		return 0;
	}
	free(body.data);
	if (o.err == -ENOENT) {
		log_debug("GET /latest/%s: not found", path);
		return o.err;
	}
	char line[512];
	if (token_failed && o.err == -ETIMEDOUT)
		snprintf(line, sizeof(line),
			 "token request (PUT /latest/api/token) timed out (%s) reading "
			 "/latest/%s; in a container, the instance may need "
			 "http-put-response-hop-limit >= 2",
			 o.reason, path);
	else if (token_failed)
		snprintf(line, sizeof(line),
			 "token request (PUT /latest/api/token) failed (%s) reading /latest/%s",
			 o.reason, path);
	else
		snprintf(line, sizeof(line), "GET /latest/%s failed: %s%s", path, o.reason,
			 o.transient ? " (after retries)" : "");
	if (why)
		snprintf(why, why_size, "%s", line);
	else
		log_warning("%s", line);
	return o.err;
}

int fetch_get(struct fetcher *f, const char *path, char **out, size_t *out_len)
{
	return get(f, path, out, out_len, NULL, 0);
}

int fetch_get_quietly(struct fetcher *f, const char *path, char **out, size_t *out_len, char *why,
		      size_t why_size)
{
	return get(f, path, out, out_len, why, why_size);
}

int fetch_create(const struct fetch_config *config, struct fetcher **out)
{
	struct fetcher *f = calloc(1, sizeof(*f));

	*out = NULL;
	if (!f)
		return -ENOMEM;
	f->endpoint = strdup(config->endpoint);
	if (!f->endpoint) {
		free(f);
		return -ENOMEM;
	}
	f->token_ttl = config->token_ttl;
	f->timeout_ms = config->timeout_ms;
	f->retries = config->retries;
	pthread_mutex_init(&f->pool_lock, NULL);
	pthread_cond_init(&f->pool_cond, NULL);
	pthread_mutex_init(&f->token_lock, NULL);
	pthread_cond_init(&f->token_cond, NULL);
	*out = f;
	return 0;
}

void fetch_destroy(struct fetcher *f)
{
	if (!f)
		return;
	while (f->idle) {
		struct handle *h = f->idle;
		f->idle = h->next;
		handle_free(h);
	}
	pthread_mutex_destroy(&f->pool_lock);
	pthread_cond_destroy(&f->pool_cond);
	pthread_mutex_destroy(&f->token_lock);
	pthread_cond_destroy(&f->token_cond);
	free(f->token);
	free(f->endpoint);
	free(f);
}
