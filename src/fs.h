/*
 * fs: the FUSE low-level operations, as a thin adapter: each request is
 * turned into calls of resolve (what a name holds), node (which inode it
 * is) and kernel (what the kernel must be told), and their answers into a
 * reply. The cache timeouts it sets and every kernel behaviour they rely
 * on are in kernel.c.
 */
#ifndef IMDSFS_FS_H
#define IMDSFS_FS_H

#include "resolve.h"

#include <stdbool.h>
#include <sys/types.h>
#include <time.h>

/* How long the kernel may keep attributes (an inode's never change) and the
 * names of cached values (they change only when we say so: rm, SIGHUP). */
#define FS_CACHE_TIMEOUT 86400.0

struct fuse_session;
struct fuse_lowlevel_ops;
struct kernel;

/* Everything the daemon has; built by main(), handed to FUSE as userdata. */
struct imdsfs {
	struct resolver resolver;
	struct kernel *kernel;
	uid_t uid;
	gid_t gid;
	time_t started;
	struct fuse_session *session;
	const char *mountpoint; /* absolute */
	int ready_fd; /* written to once the mount answers (daemonizing), or -1 */
	bool no_open; /* the kernel opens files without asking us */
};

extern const struct fuse_lowlevel_ops imdsfs_ops;

/* Once mounted: read and answer requests through kernel.c (K9). Returns 0
 * or -errno. */
int fs_use_session_io(struct imdsfs *fs);

/* Set up `fs` around its resolver's parts; returns 0 or -errno. */
int fs_init_state(struct imdsfs *fs);
void fs_free_state(struct imdsfs *fs);

/* Once the session loop has ended: end what still waits on the mount and
 * stop the watch and the notifier (idempotent), before unmounting. */
void fs_stop(struct imdsfs *fs);

/*
 * Ask for every cache and the token to be cleared (SIGHUP). Only sets a
 * flag and writes one byte to a pipe, so it is safe in a signal handler.
 */
void fs_request_reload(struct imdsfs *fs);

#endif
