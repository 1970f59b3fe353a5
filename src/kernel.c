/*
 * kernel: how imdsfs keeps the kernel's caches of the tree true, and the
 * kernel behaviour that rests on.
 *
 * The effect, as a user sees it:
 *
 *     $ cat /run/ec2/region; cat /run/ec2/raw/dynamic/instance-identity/document
 *     eu-west-1
 *     { ... "region" : "eu-west-1" ... }
 *     # IMDS moves the instance's document on; then:
 *     $ rm /run/ec2/region && cat /run/ec2/account_id /run/ec2/region
 *     # both read the new document: rm cleared the document, and the
 *     # kernel was told that every name showing it (account_id, region,
 *     # instance_identity_document, its raw/ twin) leads to a new inode.
 *     # Without the telling, account_id would show its old inode, from
 *     # the kernel's dentry cache, for a day (its entry timeout).
 *
 * THE KERNEL CONTRACT. Each behaviour we rely on, the kernel code that
 * does it, the versions it holds in, and the tests that pin it: first the
 * one in tests/integration/test_kernel_contract.py, which shows the bare
 * behaviour on a probe file system (tests/kernel/probe.c), then the imdsfs
 * tests that show we use it right. Figures were measured on Linux 6.18
 * with libfuse 3.14; "all versions" means 5.10 to 6.18 by the sources.
 *
 * K1. An inode's attributes and pages are the kernel's to keep. With
 *     FUSE_CAP_NO_OPEN_SUPPORT (the first OPEN's ENOSYS turns opens off for
 *     the connection, FLUSH likewise) and long entry and attribute
 *     timeouts, a warm open/fstat/read/close sends no request (100 of them:
 *     0 requests), once the GETATTR that the first fstat after a READ sends
 *     (atime) is done. fs/fuse/file.c fuse_open (fc->no_open), fs/fuse/
 *     dir.c fuse_update_get_attr. Pinned: test_no_open_cached_file_costs_
 *     no_request; test_warm_reads_never_reach_the_daemon.
 *
 * K2. fstat(2) sends GETATTR without a file handle, exactly as a path
 *     walk's permission check does (default_permissions): the daemon
 *     cannot tell them apart. So GETATTR always answers the inode's own,
 *     fixed attributes: an open file's fstat (tail -f, mmap) must work
 *     whatever its name shows now. An earlier design refused GETATTR of a
 *     superseded inode with ESTALE to send path walks back to us; it broke
 *     fstat. fs/fuse/dir.c fuse_getattr, fuse_perm_getattr. All versions.
 *     Pinned: test_getattr_of_fstat_and_of_a_path_walk_look_alike;
 *     test_open_file_keeps_its_value, test_fstat_after_many_sighups,
 *     test_tail_f_survives_sighups.
 *
 * K3. A dentry whose entry timeout is 0 stays hashed after its last use on
 *     a /dev/fuse mount (fc->delete_stale is a virtiofs option), so the
 *     next walk revalidates it with a LOOKUP; when that LOOKUP fails or
 *     names another node, the kernel drops the dentry and at once sends a
 *     fresh LOOKUP, from the same thread (2 LOOKUPs per stat). A volatile
 *     name would so cost two fetches (two rounds of retries) whenever its
 *     value changed or failed. We drop such a name from the notifier
 *     thread right after a lookup answered it (kernel_drop_name_later):
 *     the next walk then sends one fresh LOOKUP (and a GETATTR of the
 *     directory, whose attributes inval_entry marks stale). fs/fuse/dir.c
 *     fuse_dentry_settime, fuse_dentry_revalidate; fs/namei.c lookup_fast,
 *     lookup_slow. All versions (delete_stale since 5.4). Pinned:
 *     test_zero_entry_timeout_dentries; test_volatile_failure_costs_one_
 *     round_of_retries, test_volatile_open_asks_only_for_its_name.
 *
 * K4. notify_inval_entry(parent, name) takes the parent directory's inode
 *     lock (fs/fuse/dir.c fuse_reverse_inval_entry: inode_lock_nested), so
 *     it waits while an UNLINK, RMDIR or fresh LOOKUP in that directory is
 *     being answered (measured: the full 1 s the probe held each), but not
 *     for a revalidating LOOKUP. A notice about the directory of the
 *     request being answered, sent before its reply, deadlocks; waiting in
 *     a request for a notice about another directory can deadlock too (two
 *     rm's, or an rm and a rename, each holding the directory the other's
 *     notice needs). So notices go only from the notifier thread, which
 *     holds nothing and which no request waits for. FUSE_EXPIRE_ONLY (6.2+)
 *     takes the same lock. All versions. notify_inval_inode(ino, -1) takes
 *     no directory lock, but only marks attributes stale, which cannot move
 *     a name (K2). Pinned: test_inval_entry_takes_the_directory_lock,
 *     test_inval_inode_takes_no_directory_lock.
 *
 * K5. FUSE_NOTIFY_INC_EPOCH (Linux >= 6.16, protocol 7.44) takes no lock
 *     (measured: under 0.2 ms while the directory was held): it increments
 *     the connection's epoch, and every dentry made before is invalid at its
 *     next use, which then costs one fresh LOOKUP; open files and cwds are
 *     untouched (fs/fuse/dev.c fuse_notify_inc_epoch; fs/fuse/dir.c
 *     fuse_dentry_revalidate compares entry->d_time with fc->epoch). A
 *     lookup reads the epoch *before* it asks us (fuse_lookup), so a dentry
 *     made from an answer that raced the increment is stale at birth.
 *     libfuse 3.14 has no call for it: we write the 16-byte notification
 *     to the session fd ourselves. An older kernel refuses the write with
 *     EINVAL (fs/fuse/dev.c fuse_notify: unknown code), which is how
 *     kernel_start() finds out. With it, rm and SIGHUP invalidate every
 *     name synchronously, before replying: after rm returns, a new open of
 *     any twin shows the new value. Without it (5.10 to 6.15), names are
 *     told one by one by the notifier: in other directories within its next
 *     round, in the removed file's own directory once the rm's caller lets
 *     go of the directory lock, just after rm returns (the man page's
 *     CAVEATS give the window we measured). Pinned: test_inc_epoch;
 *     test_open_file_keeps_its_value, and the same with IMDSFS_EPOCH=0.
 *
 * K6. A successful RMDIR marks the directory's inode dead in the VFS
 *     (fs/namei.c vfs_rmdir: S_DEAD, d_delete): lookups in it fail with
 *     ENOENT without reaching us and it lists empty, for good, so a process
 *     whose cwd is that directory sees nothing there. A LOOKUP that answers
 *     the dead directory's node id again brings the dead inode back under
 *     the name, so a removed directory always gets a new node (node.h).
 *     Subdirectories are not marked: a cwd below keeps working, and we
 *     answer it from an unbound parent. notify_delete marks a directory
 *     dead the same way; notify_inval_entry does not (but getcwd fails in
 *     it until a walk finds the directory again), which is why we use
 *     notify_delete for files only (K10) and why SIGHUP keeps directories'
 *     nodes. All
 *     versions. Pinned: test_removed_directory_with_a_cwd_inside;
 *     test_cwd_inside_a_cleared_directory,
 *     test_cwd_inside_the_removed_directory_is_empty.
 *
 * K7. FORGET never reached the probe before the reply to a READ of the same
 *     inode in flight, even with the reader SIGKILLed mid-READ and the file
 *     unlinked (fs/fuse/inode.c fuse_evict_inode runs after
 *     truncate_inode_pages_final, which waits for the READ's locked
 *     folios). We do not rest on it: node ids are never reused (node.h), a
 *     request takes a reference on its node (node_get), and a node is freed
 *     only when the kernel has forgotten it and no request holds it; a
 *     request or a notice for a node that is gone finds nothing, never
 *     another node. Pinned: test_forget_never_overtakes_a_read_in_flight.
 *
 * K8. A dentry stays in the kernel's cache until it is invalidated or the
 *     memory shrinker takes it; stale ones included (an epoch only marks
 *     them, for the next walk to drop). Below a directory that rmdir
 *     removed no walk comes again: those names would keep their inodes, and
 *     so our nodes and their values, for as long as memory allows. So the
 *     names an operation unbinds are always dropped with notify_inval_entry
 *     from the notifier thread, epoch or not; the inodes then go, and their
 *     FORGETs free the nodes. fs/dcache.c dput keeps hashed unused dentries
 *     on the LRU; fuse evicts an inode at its last reference. All versions.
 *     Pinned: test_rm_during_reads_keeps_memory_flat.
 *
 * K9. Lookups in one directory run in parallel only if the INIT reply says
 *     FUSE_PARALLEL_DIROPS; otherwise fuse_lookup and fuse_readdir take a
 *     per-directory mutex (fs/fuse/dir.c fuse_lock_inode), and a lookup
 *     waiting on a slow IMDS holds up every fresh lookup of its neighbours,
 *     cached ones included. libfuse 3.14 never sends the flag, whatever
 *     the file system wants (fixed in libfuse 3.17.1, commit c9905341), so
 *     we hand libfuse our own read and writev (fuse_session_custom_io, a
 *     libfuse 3.14 API) and add the flag to the INIT reply when the kernel
 *     offered it (every kernel since 4.7). With a libfuse that sends it,
 *     that changes nothing. Pinned: test_libfuse_leaves_lookups_in_a_
 *     directory_serialized; test_slow_lookup_holds_up_no_neighbour.
 *
 * K10. No notification wakes inotify: inval_entry, inval_inode and
 *     inc_epoch give no event at all, notify_delete only IN_DELETE_SELF to
 *     a watcher of the inode, and none to the directory's watchers
 *     (measured). Linux raises file events from the VFS operations
 *     themselves (fs/namei.c vfs_mknod, vfs_mkdir -> fsnotify_create;
 *     vfs_unlink, vfs_rmdir -> fsnotify_delete, d_delete ->
 *     fsnotify_inoderemove; fs/attr.c notify_change -> fsnotify_change),
 *     and marks are on inodes, so a watcher through a bind mount in another
 *     mount namespace wakes too. So the watch's poller does real operations
 *     on the mount (kernel_wake_watchers: mknod or mkdir, utimensat, unlink
 *     or rmdir), which our handlers accept from that thread only: a
 *     request's pid is the calling thread's id (measured), and from anyone
 *     else they stay EROFS. Each takes the locks any such operation takes
 *     (its directory's): it may wait behind a request being answered, but
 *     no request waits for it, and the handlers it reaches answer from the
 *     cache (the lookups of the directories on its path may ask IMDS,
 *     bounded like any lookup), so it cannot deadlock; at exit
 *     kernel_sever() ends one the session loop can no longer answer. The
 *     kernel makes IN_CREATE only for a name it looked up and did not
 *     find: a name that appeared is created after the poll's values are
 *     kept, while the poller's own lookups of it find nothing
 *     (watch_hides). IN_ATTRIB must reach the inode a watcher holds: a
 *     changed name is touched before its new value is kept, and its old
 *     inode dropped after, with notify_delete (IN_DELETE_SELF), so that its
 *     watcher can watch the name's new one. A name that went is removed
 *     while the kernel still finds it. All versions. Pinned:
 *     test_inotify_events; test_watch.py.
 *
 * What we left out, and why:
 * - ESTALE from GETATTR for a superseded inode (the earlier design): it
 *   broke fstat, mmap and tail -f on open files (K2).
 * - notify_delete for every name below a cleared directory: it made
 *   directories dead (K6), so a cwd inside saw nothing, ever.
 * - Waiting in rm until notices were sent: it can deadlock (K4); a bounded
 *   wait turns that into a timer that correctness depends on.
 * - Waking watchers with the poll(2) notification (notify_poll): it wakes
 *   only a process that polls an open file, which neither inotify nor
 *   systemd does.
 * - A failure kept for the kernel's retry of a failed revalidation (K3):
 *   nothing tells a retry from a new open of the same name by the same
 *   thread, so a kept failure can be served to a later read. Dropping
 *   volatile names after each answer removes the retry instead.
 */
#include "kernel.h"
#include "log.h"

#include <fuse_lowlevel.h>
/* The kernel's side of the protocol (linux-libc-dev): the INIT messages. */
#include <linux/fuse.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/* FUSE_NOTIFY_INC_EPOCH of <linux/fuse.h> 7.44, and the header every
 * notification starts with (struct fuse_out_header, unique 0): libfuse
 * 3.14 has no call for it. */
#define NOTIFY_INC_EPOCH 8

struct notify_header {
	uint32_t len;
	int32_t code;
	uint64_t unique;
};


struct kernel_notice {
	struct kernel_notice *next;
	uint64_t parent;
	bool optional; /* a volatile name's drop (K3): waits while its directory is busy */
	char name[]; /* NUL-terminated */
};

struct kernel {
	struct fuse_session *session;
	bool has_epoch;
	int wake[2]; /* wakes the notifier thread; what for is in the flags */
	atomic_bool quit, reload_wanted;
	pthread_t notifier;
	bool running;
	void (*reload)(void *ctx);
	void *reload_ctx;

	pthread_mutex_t lock; /* protects the queue */
	struct kernel_notice *queue;
	struct kernel_notice **queue_tail;
	atomic_uint deferred; /* optional notices kept for an idle directory */
	bool (*busy)(uint64_t dir, void *ctx);
	void *busy_ctx;

	/* K9: the INIT request, seen by kernel_read and answered through
	 * kernel_writev, both on the one thread that handles INIT. */
	atomic_bool init_answered; /* read by every request's read and reply */
	uint64_t init_unique;
	uint32_t init_offered; /* the kernel's flags */

	/* K10: the thread whose operations on the mount wake file watchers
	 * (0: none), and where it finds the mount: a path, and the device
	 * that says the path still leads to this mount. (Not an open fd of
	 * the root: that would keep the mount busy, and umount would fail.) */
	_Atomic pid_t events_tid;
	char *mountpoint;
	dev_t dev;
};

/* One byte: the pipe is only a wake-up (a full one has woken enough). */
static void wake(int fd)
{
	char byte = 1;
	ssize_t ignored = write(fd, &byte, 1);
	(void)ignored;
}

int kernel_create(struct kernel **out)
{
	struct kernel *k = calloc(1, sizeof(*k));

	*out = NULL;
	if (!k)
		return -ENOMEM;
	if (pipe2(k->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
		int err = -errno;
		free(k);
		return err;
	}
	pthread_mutex_init(&k->lock, NULL);
	k->queue_tail = &k->queue;
	*out = k;
	return 0;
}

static void free_notices(struct kernel_notice *n)
{
	while (n) {
		struct kernel_notice *next = n->next;
		free(n);
		n = next;
	}
}

void kernel_destroy(struct kernel *k)
{
	if (!k)
		return;
	kernel_stop(k);
	free_notices(k->queue);
	pthread_mutex_destroy(&k->lock);
	free(k->mountpoint);
	close(k->wake[0]);
	close(k->wake[1]);
	free(k);
}

bool kernel_has_epoch(const struct kernel *k)
{
	return k->has_epoch;
}

static struct kernel_notice *new_notice(uint64_t parent, const char *name)
{
	size_t len = strlen(name);
	struct kernel_notice *n = malloc(sizeof(*n) + len + 1);

	if (!n)
		return NULL;
	n->next = NULL;
	n->parent = parent;
	n->optional = false;
	memcpy(n->name, name, len + 1);
	return n;
}

void kernel_note_name(const struct node *node, void *ctx)
{
	struct kernel_batch *batch = ctx;
	struct kernel_notice *n = new_notice(node->parent->ino, node->name);

	if (!n) {
		batch->incomplete = true;
		return;
	}
	n->next = batch->first;
	batch->first = n;
}

/* K5: make every dentry the kernel holds stale. 0, or -errno of the write
 * (-EINVAL: the kernel has no epoch). */
static int bump_epoch(struct kernel *k)
{
	struct notify_header h = {
		.len = sizeof(h),
		.code = NOTIFY_INC_EPOCH,
		.unique = 0,
	};
	ssize_t n = write(fuse_session_fd(k->session), &h, sizeof(h));

	if (n == (ssize_t)sizeof(h))
		return 0;
	return n < 0 ? -errno : -EIO;
}

/* Queue notices for the notifier thread, each name once (no wake-up). */
static void enqueue_quietly(struct kernel *k, struct kernel_notice *list)
{
	pthread_mutex_lock(&k->lock);
	while (list) {
		struct kernel_notice *n = list, *q;
		list = n->next;
		n->next = NULL;
		for (q = k->queue; q; q = q->next)
			if (q->parent == n->parent && strcmp(q->name, n->name) == 0)
				break;
		if (q) {
			free(n);
			continue;
		}
		*k->queue_tail = n;
		k->queue_tail = &n->next;
	}
	pthread_mutex_unlock(&k->lock);
}

/* Queue notices and wake the notifier thread. */
static void enqueue(struct kernel *k, struct kernel_notice *list)
{
	enqueue_quietly(k, list);
	wake(k->wake[1]);
}

void kernel_names_changed(struct kernel *k, struct kernel_batch *batch)
{
	int err = 0;

	if (!k->session) {
		free_notices(batch->first); /* not mounted (unit tests) */
		batch->first = NULL;
		return;
	}
	if (k->has_epoch && (err = bump_epoch(k)) != 0)
		log_warning("the kernel refused an epoch notice (%s); names change one by one",
			    strerror(-err));
	if (batch->incomplete && (!k->has_epoch || err))
		log_warning("out of memory: some names may show their old values until their "
			    "entry times out");
	/* With the epoch too: a name no walk reaches again (below a removed
	 * directory) would otherwise keep its inode, and we its value (K8). */
	enqueue(k, batch->first);
	batch->first = NULL;
	batch->incomplete = false;
}

void kernel_drop_name_later(struct kernel *k, uint64_t parent, const char *name)
{
	struct kernel_notice *n = new_notice(parent, name);

	if (!n)
		return;
	n->optional = true;
	enqueue(k, n);
}

void kernel_directory_idle(struct kernel *k)
{
	if (atomic_load(&k->deferred) > 0)
		wake(k->wake[1]);
}

/*
 * Send what is queued (K4: from this thread only). A notice waits for the
 * directory's lock, and while it waits, new lookups in that directory wait
 * behind it (an rwsem lets no reader pass a waiting writer): behind a
 * lookup that waits on a slow IMDS, that would hold up every fresh lookup
 * of the directory, which K9 exists to avoid. So a volatile name's drop,
 * which only saves a fetch, is kept while the directory has a lookup being
 * answered, until kernel_directory_idle() says it has none.
 */
static void send_notices(struct kernel *k)
{
	struct kernel_notice *list, *kept = NULL, **kept_tail = &kept;
	unsigned int nkept = 0;

	pthread_mutex_lock(&k->lock);
	list = k->queue;
	k->queue = NULL;
	k->queue_tail = &k->queue;
	pthread_mutex_unlock(&k->lock);

	while (list) {
		struct kernel_notice *n = list;
		int err;

		list = n->next;
		n->next = NULL;
		if (n->optional && k->busy && k->busy(n->parent, k->busy_ctx)) {
			*kept_tail = n;
			kept_tail = &n->next;
			nkept++;
			continue;
		}
		err = fuse_lowlevel_notify_inval_entry(k->session, n->parent, n->name,
						       strlen(n->name));
		/* -ENOENT: the kernel holds no such name (any more). */
		if (err && err != -ENOENT)
			log_debug("dropping the kernel's name %s: %s", n->name, strerror(-err));
		free(n);
	}
	atomic_store(&k->deferred, nkept);
	if (kept)
		enqueue_quietly(k, kept);
}

static void *notifier(void *arg)
{
	struct kernel *k = arg;
	struct pollfd p = {.fd = k->wake[0], .events = POLLIN};

	for (;;) {
		char drain[256];
		bool reloaded = false;

		if (poll(&p, 1, -1) < 0 && errno != EINTR)
			break;
		while (read(k->wake[0], drain, sizeof(drain)) > 0)
			;
		if (atomic_load(&k->quit))
			return NULL;
		if (atomic_exchange(&k->reload_wanted, false) && k->reload) {
			k->reload(k->reload_ctx);
			reloaded = true;
		}
		send_notices(k);
		if (reloaded)
			log_info("SIGHUP: done; the kernel was told");
	}
	return NULL;
}

int kernel_start(struct kernel *k, struct fuse_session *se, void (*reload)(void *ctx),
		 bool (*busy)(uint64_t dir, void *ctx), void *ctx)
{
	int err;

	k->session = se;
	k->reload = reload;
	k->reload_ctx = ctx;
	k->busy = busy;
	k->busy_ctx = ctx;
	/* Nothing is cached yet, so a first increment changes nothing.
	 * IMDSFS_EPOCH=0 makes a kernel that has it behave as one without, so
	 * that tests reach the other path. */
	const char *want = getenv("IMDSFS_EPOCH");
	err = want && strcmp(want, "0") == 0 ? -EINVAL : bump_epoch(k);
	k->has_epoch = err == 0;
	if (k->has_epoch)
		log_info("kernel: names are invalidated by epoch (FUSE_NOTIFY_INC_EPOCH)");
	else
		log_info("kernel: no FUSE_NOTIFY_INC_EPOCH (%s; Linux < 6.16): names are "
			 "invalidated one by one, just after rm returns",
			 strerror(-err));
	err = pthread_create(&k->notifier, NULL, notifier, k);
	if (err)
		return -err;
	k->running = true;
	return 0;
}

void kernel_stop(struct kernel *k)
{
	if (!k->running)
		return;
	atomic_store(&k->quit, true);
	wake(k->wake[1]);
	pthread_join(k->notifier, NULL);
	k->running = false;
}

void kernel_sever(struct kernel *k)
{
	int null;

	if (!k->session || fuse_session_fd(k->session) < 0)
		return;
	/* The session's fd now names /dev/null: the connection's last
	 * reference goes, the kernel ends every request still waiting with
	 * ENOTCONN (fs/fuse/dev.c fuse_dev_release -> fuse_abort_conn), and
	 * libfuse closes a harmless fd later. */
	null = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null >= 0) {
		dup2(null, fuse_session_fd(k->session));
		close(null);
	}
}

int kernel_events_begin(struct kernel *k, const char *mountpoint)
{
	struct stat st;

	if (stat(mountpoint, &st) != 0)
		return -errno;
	k->mountpoint = strdup(mountpoint);
	if (!k->mountpoint)
		return -ENOMEM;
	k->dev = st.st_dev;
	atomic_store(&k->events_tid, (pid_t)gettid());
	return 0;
}

bool kernel_is_events_request(const struct kernel *k, pid_t pid)
{
	return pid != 0 && pid == atomic_load(&k->events_tid);
}

int kernel_wake_watchers(struct kernel *k, const char *path, bool is_dir,
			 enum kernel_event event)
{
	struct stat st;
	char *full;
	int res = -1;

	/* Something mounted over ours would get the operation instead. */
	if (!k->mountpoint || stat(k->mountpoint, &st) != 0 || st.st_dev != k->dev)
		return -ESTALE;
	if (asprintf(&full, "%s/%s", k->mountpoint, path) < 0)
		return -ENOMEM;
	switch (event) {
	case KERNEL_APPEARED:
		res = is_dir ? mkdir(full, 0755) : mknod(full, S_IFREG | 0444, 0);
		break;
	case KERNEL_CHANGED:
		res = utimensat(AT_FDCWD, full, NULL, AT_SYMLINK_NOFOLLOW);
		break;
	case KERNEL_GONE:
		res = is_dir ? rmdir(full) : unlink(full);
		break;
	}
	res = res == 0 ? 0 : -errno;
	free(full);
	return res;
}

int kernel_drop_inode(struct kernel *k, uint64_t parent, uint64_t child, const char *name)
{
	return fuse_lowlevel_notify_delete(k->session, parent, child, name, strlen(name));
}

ssize_t kernel_read(struct kernel *k, int fd, void *buf, size_t len)
{
	ssize_t n = read(fd, buf, len);
	const struct fuse_in_header *in = buf;

	/* Kernels before 5.17 (protocol < 7.36) send the 16-byte INIT of
	 * old, without flags2: the flags are what matters. */
	if (!atomic_load(&k->init_answered) &&
	    n >= (ssize_t)(sizeof(*in) + offsetof(struct fuse_init_in, flags) + 4) &&
	    in->opcode == FUSE_INIT) {
		const struct fuse_init_in *init = (const void *)(in + 1);

		k->init_unique = in->unique;
		k->init_offered = init->flags;
	}
	return n;
}

ssize_t kernel_writev(struct kernel *k, int fd, struct iovec *iov, int count)
{
	const struct fuse_out_header *out = count == 2 ? iov[0].iov_base : NULL;
	struct fuse_init_out init;

	if (atomic_load(&k->init_answered) || !out || iov[0].iov_len != sizeof(*out) || out->error != 0 ||
	    out->unique != k->init_unique || k->init_unique == 0 ||
	    iov[1].iov_len > sizeof(init) || iov[1].iov_len < offsetof(struct fuse_init_out, flags) + 4)
		return writev(fd, iov, count);

	/* The INIT reply: what libfuse wrote, and the flag it forgets. */
	atomic_store(&k->init_answered, true);
	memset(&init, 0, sizeof(init));
	memcpy(&init, iov[1].iov_base, iov[1].iov_len);
	if (k->init_offered & FUSE_PARALLEL_DIROPS)
		init.flags |= FUSE_PARALLEL_DIROPS;
	struct iovec patched[2] = {iov[0], {&init, iov[1].iov_len}};
	return writev(fd, patched, 2);
}

void kernel_request_reload(struct kernel *k)
{
	/* Both async-signal-safe. */
	atomic_store(&k->reload_wanted, true);
	wake(k->wake[1]);
}
