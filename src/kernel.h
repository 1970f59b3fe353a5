/*
 * kernel: keeping the kernel's caches of the tree true.
 *
 * The kernel keeps names (dentries), attributes and pages of this file
 * system for as long as we let it, and serves warm reads without asking
 * us. Values never change under an inode (node.h), so pages and attributes
 * never go stale; what goes stale is a *name*: after rm, SIGHUP or a
 * volatile lookup, a name must lead to another inode. This module tells the
 * kernel so, in the ways that cannot deadlock with a request in flight, and
 * says in kernel.c which kernel behaviour each way rests on.
 */
#ifndef IMDSFS_KERNEL_H
#define IMDSFS_KERNEL_H

#include "node.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct fuse_session;
struct iovec;
struct kernel;
struct kernel_notice;

/* The names an operation made stale (their nodes unbound, or directories
 * whose listing changed), gathered under the node table's lock by
 * kernel_note_name(). */
struct kernel_batch {
	struct kernel_notice *first;
	bool incomplete; /* a notice could not be allocated */
};

/* Returns 0 or -errno. Sends nothing until kernel_start(). */
int kernel_create(struct kernel **out);
void kernel_destroy(struct kernel *k);

/*
 * Start telling the kernel (from FUSE's init, once the session answers):
 * finds out whether the kernel takes FUSE_NOTIFY_INC_EPOCH, and starts the
 * notifier thread, which sends the notices that take directory locks and
 * runs `reload` (SIGHUP) when asked. `busy` says whether directory `dir`
 * has a lookup being answered (see kernel_drop_name_later); both get `ctx`.
 * Returns 0 or -errno.
 */
int kernel_start(struct kernel *k, struct fuse_session *se, void (*reload)(void *ctx),
		 bool (*busy)(uint64_t dir, void *ctx), void *ctx);
/* Stop the notifier thread (idempotent): before unmounting. */
void kernel_stop(struct kernel *k);

/* Whether names are invalidated by epoch (Linux >= 6.16). */
bool kernel_has_epoch(const struct kernel *k);

/* A node_name_fn: add `node`'s name to the kernel_batch `batch`. */
void kernel_note_name(const struct node *node, void *batch);

/*
 * Tell the kernel that the names in `batch` (just unbound, see node.h) no
 * longer lead to the inodes it may hold. With the epoch, every name the
 * kernel holds is made stale at once, before this returns. Either way the
 * names in `batch` are queued for the notifier thread, which drops them
 * (they take the parent directory's lock, which the caller's request may
 * hold: see kernel.c). Never blocks. Empties the batch.
 */
void kernel_names_changed(struct kernel *k, struct kernel_batch *batch);

/* Drop the kernel's name `name` in directory `parent` soon, from the
 * notifier thread: a volatile name, right after a lookup answered it, so
 * that the next path walk asks afresh rather than revalidating it. Waits
 * while the directory is busy (kernel.c, send_notices): call
 * kernel_directory_idle() when a directory's last lookup is answered. */
void kernel_drop_name_later(struct kernel *k, uint64_t parent, const char *name);
void kernel_directory_idle(struct kernel *k);

/* After the session loop ended: end every request still in flight, so
 * that no thread stays blocked on the mount (the notifier's notices, the
 * watch's operations). The mount answers ENOTCONN until it is unmounted. */
void kernel_sever(struct kernel *k);

/*
 * Waking file watchers (kernel.c, K10): the calling thread (the watch's
 * poller, never a FUSE request) becomes the one whose operations on the
 * mount are events. kernel_wake_watchers() performs one, relative to the
 * mount's root: APPEARED creates `path` (mknod or mkdir), CHANGED touches
 * it (utimensat), GONE removes it; the file system's handlers recognise the
 * thread (kernel_is_events_request) and accept, where they refuse everyone
 * else. Blocks like any file operation. Returns 0 or -errno.
 */
enum kernel_event { KERNEL_APPEARED, KERNEL_CHANGED, KERNEL_GONE };
int kernel_events_begin(struct kernel *k, const char *mountpoint);
bool kernel_is_events_request(const struct kernel *k, pid_t pid);
int kernel_wake_watchers(struct kernel *k, const char *path, bool is_dir,
			 enum kernel_event event);
/* notify_delete of `child`, named `name` in `parent`, from the events
 * thread (a watcher of that inode sees IN_DELETE_SELF). Returns 0 or
 * -errno. */
int kernel_drop_inode(struct kernel *k, uint64_t parent, uint64_t child, const char *name);

/*
 * The session's read and writev (fuse_session_custom_io): what libfuse
 * would do, but the INIT reply also says FUSE_PARALLEL_DIROPS when the
 * kernel offered it, which libfuse 3.14 forgets (kernel.c, K9).
 */
ssize_t kernel_read(struct kernel *k, int fd, void *buf, size_t len);
ssize_t kernel_writev(struct kernel *k, int fd, struct iovec *iov, int count);

/* Ask the notifier thread to run the reload callback (SIGHUP). Only sets a
 * flag and writes one byte to a pipe: safe in a signal handler. */
void kernel_request_reload(struct kernel *k);

#endif
