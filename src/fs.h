/*
 * fs: the FUSE low-level operations. Turns requests into resolve calls and
 * their answers into replies, sets the kernel's cache timeouts (long, but
 * zero for the names of volatile values), and keeps the kernel's caches
 * honest when `rm` or SIGHUP clears ours: notices are queued to a
 * housekeeping thread, never sent from inside the request they concern.
 */
#ifndef IMDSFS_FS_H
#define IMDSFS_FS_H

#include "resolve.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/types.h>
#include <time.h>

/* How long the kernel may keep attributes (an inode's never change) and the
 * names of cached values (they change only when we say so: rm, SIGHUP). */
#define FS_CACHE_TIMEOUT 86400.0

struct fuse_session;
struct fuse_lowlevel_ops;
struct fs_notice;
struct fs_dropped;
struct fs_failure;

/* Everything the daemon has; built by main(), handed to FUSE as userdata. */
struct imdsfs {
	struct resolver resolver;
	uid_t uid;
	gid_t gid;
	time_t started;
	struct fuse_session *session;
	int ready_fd; /* written to once the mount answers (daemonizing), or -1 */
	bool no_open; /* the kernel opens files without asking us */

	/* The housekeeping thread: kernel notices, SIGHUP, late frees. */
	int wake[2];
	pthread_t housekeeper;
	bool housekeeper_running;

	/* Under notices_lock. */
	pthread_mutex_t notices_lock;
	pthread_cond_t notices_sent_cond;
	struct fs_notice *notices;
	struct fs_notice *later; /* sent once due (notice_later) */
	unsigned long notices_queued; /* sequence numbers */
	unsigned long notices_sent;
	struct fs_dropped *dropped; /* nodes freed late: a ring */
	size_t dropped_first, dropped_count;
	struct fs_failure *failures; /* lookups that just failed (take_failure) */
	atomic_uint failures_kept;   /* read without the lock: 0 is the usual case */
};

extern const struct fuse_lowlevel_ops imdsfs_ops;

/* Set up `fs` around its resolver's parts; returns 0 or -errno. */
int fs_init_state(struct imdsfs *fs);
void fs_free_state(struct imdsfs *fs);

/* Stop the housekeeping thread (idempotent): before unmounting, so that
 * no kernel notification is in flight while /dev/fuse closes. */
void fs_stop(struct imdsfs *fs);

/*
 * Ask for every cache and the token to be cleared (SIGHUP). Only writes one
 * byte to a pipe, so it is safe in a signal handler; pass the fd from
 * fs_reload_fd().
 */
void fs_request_reload(int reload_fd);
int fs_reload_fd(const struct imdsfs *fs);

#endif
