/*
 * watch: with -o watch=SECONDS, one poller thread asks IMDS every SECONDS
 * for the values that announce events (a spot interruption, a rebalance
 * recommendation, scheduled maintenance, an instance action, an Auto
 * Scaling lifecycle state), whatever readers do. Readers of those values
 * are answered from its last poll, and what changed between two polls
 * becomes events that ordinary file watchers see (SPEC.md, "Watching for
 * events"). How an event reaches the watchers is kernel.c's (K10).
 */
#ifndef IMDSFS_WATCH_H
#define IMDSFS_WATCH_H

#include <stdbool.h>

#define WATCH_SECONDS_MAX 3600

struct watch;
struct resolver;
struct kernel;
struct node;

/* Checks the table of watched names against what is polled: 0, or
 * -EINVAL with a log line (tests/unit/test_watch.c). */
int watch_check_table(void);

/* A watch polling every `seconds` (1..WATCH_SECONDS_MAX). Returns 0 or
 * -errno. Starts nothing. */
int watch_create(unsigned int seconds, struct watch **out);
void watch_destroy(struct watch *w);

/* Start the poller (from FUSE's init: the mount answers), which works
 * through `mountpoint` to wake watchers. Returns 0 or -errno. */
int watch_start(struct watch *w, struct resolver *r, struct kernel *k, const char *mountpoint);
/* Ask the poller to stop (it may be blocked on the mount: see
 * kernel_sever), then wait for it. Idempotent. */
void watch_quit(struct watch *w);
void watch_stop(struct watch *w);

/* Whether the value or listing at IMDS path `path` is the poller's: kept
 * between polls rather than fetched at every open. NULL-safe (no watch). */
bool watch_serves(const struct watch *w, const char *path);

/* Whether the poller is about to create `name` in `dir` (it appeared this
 * round): its own lookup of the name must find nothing, or the kernel makes
 * no IN_CREATE. For its requests only (kernel_is_events_request). Takes the
 * watch's lock. NULL-safe. */
bool watch_hides(struct watch *w, const struct node *dir, const char *name);

#endif
