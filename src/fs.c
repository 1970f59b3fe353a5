/*
 * fs: FUSE low-level operations for imdsfs.
 *
 * Every inode shows one value for its whole life (node.h), so the kernel
 * can serve warm reads alone: names and attributes are cached for long,
 * pages are kept, and files are opened without asking us
 * (FUSE_CAP_NO_OPEN_SUPPORT). A reader so never sees half of one value
 * and half of another, whatever races it: its inode's bytes cannot change.
 *
 * What changes is which inode a name shows. A volatile name has an entry
 * timeout of zero, so every path walk looks it up again and gets a fresh
 * value (a new inode when it changed). `rm FILE` and `rmdir DIR` clear the
 * cache and detach the removed node; other names that showed what was
 * cleared (raw/ twins, values derived from one document) are superseded:
 * before rm returns, the kernel is told their inodes' attributes are
 * stale, so its next use of such a name by path asks us, is refused with
 * ESTALE, and walks the path again to the new node. Those notices go from
 * a housekeeping thread, never from inside the request they concern.
 */
#include "fs.h"
#include "fetch.h"
#include "log.h"

#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum notice_kind {
	NOTICE_ATTRS,  /* ino's attributes are stale: ask before using it by path */
	NOTICE_DELETE, /* name in ino (which was child) is gone: drop the
			* dentry and let the inode go, so its node is forgotten */
};

struct fs_notice {
	struct fs_notice *next;
	struct timespec due; /* fs->later: not before then */
	enum notice_kind kind;
	fuse_ino_t ino; /* NOTICE_DELETE: the parent */
	fuse_ino_t child;
	char *name;
};

#define WAKE_NOTICES 'n'
#define WAKE_RELOAD  'h'
#define WAKE_QUIT    'q'

/* How long after a lookup's reply a supersede that raced it is told to the
 * kernel again (see imdsfs_lookup): by then the kernel has made the inode. */
#define RENOTICE_MS 20

/* How long `rm` waits for the kernel to hear about the other inodes it
 * touched. Bounded because a SIGHUP's notices can need a directory lock
 * that an unlink in progress holds. */
#define NOTICE_WAIT_MS 1000

/*
 * A node the kernel forgot is freed a moment later, not at once: the
 * kernel can send FORGET while a worker thread still answers a READ from
 * that node (a reader killed in the middle of a read, or readahead it no
 * longer waits for).
 */
#define DROP_GRACE_MS 500
/* Held at once, at most; past that the oldest goes early. A ring, so that a
 * busy mount does no allocation per forgotten node. */
#define DROP_RING 4096

struct fs_dropped {
	struct node *node;
	struct timespec at;
};

/*
 * When a name the kernel holds fails to look up (a volatile name is looked
 * up at every path walk), the kernel drops the name and at once looks it
 * up afresh, from the same thread. That second lookup gets the same answer
 * rather than asking IMDS all over again: otherwise a reader would wait
 * twice the bound SPEC.md promises, and IMDS would see each failure twice.
 */
#define FAILURE_KEPT_MS 200
#define FAILURE_SLOTS	16

struct fs_failure {
	fuse_ino_t parent;
	pid_t pid;
	int err;
	struct timespec at;
	char name[TREE_NAME_MAX + 1]; /* "" when the slot is free */
};

static struct imdsfs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static struct node *node_of(struct imdsfs *fs, fuse_ino_t ino)
{
	return node_from_ino(fs->resolver.nodes, ino);
}

/* -d: one line per request we answer, so that what reaches the daemon
 * (and what the kernel answers alone) can be seen. Names only. */
static void trace(const char *op, const struct node *n, const char *name)
{
	log_debug("request %s %s%s%s", op, name ? name : "", name ? " in " : "",
		  n->parent ? n->name : "/");
}

static void wake(int fd, char what)
{
	ssize_t ignored = write(fd, &what, 1);
	(void)ignored;
}

static struct fs_notice *new_notice(enum notice_kind kind, fuse_ino_t ino, fuse_ino_t child,
				    const char *name)
{
	struct fs_notice *n = calloc(1, sizeof(*n));

	if (!n || (name && !(n->name = strdup(name)))) {
		free(n);
		log_warning("out of memory: a kernel cache invalidation was dropped");
		return NULL;
	}
	n->kind = kind;
	n->ino = ino;
	n->child = child;
	return n;
}

static void free_notices(struct fs_notice *list)
{
	while (list) {
		struct fs_notice *n = list;
		list = n->next;
		free(n->name);
		free(n);
	}
}

static long long ms_since(const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (long long)(now.tv_sec - t->tv_sec) * 1000 + (now.tv_nsec - t->tv_nsec) / 1000000;
}

/* Now on `clock`, plus `ms`. */
static struct timespec ms_from_now(clockid_t clock, long ms)
{
	struct timespec t;

	clock_gettime(clock, &t);
	t.tv_nsec += ms * 1000000L;
	t.tv_sec += t.tv_nsec / 1000000000L;
	t.tv_nsec %= 1000000000L;
	return t;
}

/* Hand a list of notices to the housekeeping thread. */
static void post_notices(struct imdsfs *fs, struct fs_notice *list)
{
	if (!list)
		return;
	pthread_mutex_lock(&fs->notices_lock);
	while (list) {
		struct fs_notice *n = list;
		list = n->next;
		n->next = fs->notices;
		fs->notices = n;
		fs->notices_queued++;
	}
	pthread_mutex_unlock(&fs->notices_lock);
	wake(fs->wake[1], WAKE_NOTICES);
}

/* Wait until every notice queued so far has reached the kernel, so that a
 * read right after `rm` returns never sees another name's old value.
 * Returns false when that took longer than NOTICE_WAIT_MS. */
static bool wait_for_notices(struct imdsfs *fs)
{
	struct timespec until = ms_from_now(CLOCK_REALTIME, NOTICE_WAIT_MS);
	bool sent;

	pthread_mutex_lock(&fs->notices_lock);
	unsigned long target = fs->notices_queued;
	while (fs->housekeeper_running && fs->notices_sent < target)
		if (pthread_cond_timedwait(&fs->notices_sent_cond, &fs->notices_lock, &until) ==
		    ETIMEDOUT)
			break;
	sent = !fs->housekeeper_running || fs->notices_sent >= target;
	pthread_mutex_unlock(&fs->notices_lock);
	return sent;
}

/* Send the queued notices, and the later ones that are due. Returns
 * whether later ones are left. */
static bool send_notices(struct imdsfs *fs)
{
	struct fs_notice *list, **link;
	bool left;

	pthread_mutex_lock(&fs->notices_lock);
	list = fs->notices;
	fs->notices = NULL;
	unsigned long taken = fs->notices_queued;
	for (link = &fs->later; *link;) {
		struct fs_notice *n = *link;
		if (ms_since(&n->due) < 0) {
			link = &n->next;
			continue;
		}
		*link = n->next;
		n->next = list;
		list = n;
	}
	left = fs->later != NULL;
	pthread_mutex_unlock(&fs->notices_lock);

	while (list) {
		struct fs_notice *n = list;
		list = n->next;
		/* -ENOENT only means the kernel had already forgotten it. An
		 * offset of -1 keeps the inode's pages: its bytes are still
		 * right for the files open on it. */
		if (fs->session && n->kind == NOTICE_ATTRS)
			fuse_lowlevel_notify_inval_inode(fs->session, n->ino, -1, 0);
		else if (fs->session)
			fuse_lowlevel_notify_delete(fs->session, n->ino, n->child, n->name,
						    strlen(n->name));
		free(n->name);
		free(n);
	}
	pthread_mutex_lock(&fs->notices_lock);
	fs->notices_sent = taken;
	pthread_cond_broadcast(&fs->notices_sent_cond);
	pthread_mutex_unlock(&fs->notices_lock);
	return left;
}

/* Tell the kernel ino's attributes are stale, RENOTICE_MS from now. */
static void notice_later(struct imdsfs *fs, fuse_ino_t ino)
{
	struct fs_notice *n = new_notice(NOTICE_ATTRS, ino, 0, NULL);

	if (!n)
		return;
	n->due = ms_from_now(CLOCK_MONOTONIC, RENOTICE_MS);
	pthread_mutex_lock(&fs->notices_lock);
	n->next = fs->later;
	fs->later = n;
	pthread_mutex_unlock(&fs->notices_lock);
	wake(fs->wake[1], WAKE_NOTICES);
}

/* Notices gathered under the node table's lock, posted once it is let go. */
struct notices {
	struct node_table *nodes;
	struct fs_notice *list;
};

static void add_notice(struct notices *notices, enum notice_kind kind, struct node *n)
{
	struct node_table *t = notices->nodes;
	struct fs_notice *notice =
		kind == NOTICE_ATTRS
			? new_notice(kind, node_ino(t, n), 0, NULL)
			: new_notice(kind, node_ino(t, n->parent), node_ino(t, n), n->name);

	if (notice) {
		notice->next = notices->list;
		notices->list = notice;
	}
}

/* A superseded file: the kernel must ask before using it by path again. */
static void note_superseded(struct node *n, void *ctx)
{
	add_notice(ctx, NOTICE_ATTRS, n);
}

/*
 * A node unbound below an rm -r'd directory: tell the kernel the name is
 * gone. Otherwise its inode, still linked as far as the kernel knows, can
 * sit in the kernel's caches for long, and the node with the value it
 * holds would never be forgotten.
 */
static void note_deleted(struct node *n, void *ctx)
{
	add_notice(ctx, NOTICE_DELETE, n);
}

/* SIGHUP: both. Deletes are sent parent first, and a parent's unhashes
 * its children's names, so theirs then fail: the attribute notice is what
 * still sends a path that leads to an old file inode back to us. */
static void note_gone(struct node *n, void *ctx)
{
	if (!n->is_dir)
		note_superseded(n, ctx);
	note_deleted(n, ctx);
}

static bool shows_cleared(struct node *n, void *ctx)
{
	const struct resolve_cleared *cleared = ctx;

	return !resolve_is_volatile(n) && resolve_cleared_covers(cleared, n);
}

/* SIGHUP: clear every cache and the token, then unbind every name (after
 * the clear, so that no lookup can bind an old value again) and tell the
 * kernel each name it knows is gone. */
static void reload(struct imdsfs *fs)
{
	struct notices gone = {fs->resolver.nodes, NULL};

	log_info("SIGHUP: clearing every cached value and the token");
	cache_clear_prefix(fs->resolver.cache, "");
	fetch_forget_token(fs->resolver.fetcher);
	node_detach_all(fs->resolver.nodes, note_gone, &gone);
	post_notices(fs, gone.list);
	send_notices(fs);
}

/* The failure kept for this lookup, if it is the kernel's retry of one
 * that just failed: 0 when there is none. */
static int take_failure(struct imdsfs *fs, fuse_ino_t parent, const char *name, pid_t pid)
{
	int err = 0;

	if (pid == 0 || atomic_load_explicit(&fs->failures_kept, memory_order_relaxed) == 0)
		return 0;
	pthread_mutex_lock(&fs->notices_lock);
	for (unsigned int i = 0; i < FAILURE_SLOTS; i++) {
		struct fs_failure *f = &fs->failures[i];

		if (!f->name[0])
			continue;
		bool expired = ms_since(&f->at) > FAILURE_KEPT_MS;
		if (!expired && !err && f->parent == parent && f->pid == pid &&
		    strcmp(f->name, name) == 0)
			err = f->err;
		else if (!expired)
			continue;
		f->name[0] = '\0';
		atomic_fetch_sub(&fs->failures_kept, 1);
	}
	pthread_mutex_unlock(&fs->notices_lock);
	return err;
}

static void keep_failure(struct imdsfs *fs, fuse_ino_t parent, const char *name, pid_t pid,
			 int err)
{
	struct fs_failure *slot = &fs->failures[0];

	/* pid 0: a reader in another pid namespace, which it cannot tell
	 * apart from others there. */
	if (pid == 0 || strlen(name) > TREE_NAME_MAX)
		return;
	pthread_mutex_lock(&fs->notices_lock);
	for (unsigned int i = 0; i < FAILURE_SLOTS; i++) {
		struct fs_failure *f = &fs->failures[i];
		if (!f->name[0] || ms_since(&f->at) > ms_since(&slot->at))
			slot = f; /* a free slot, or else the oldest */
		if (!f->name[0])
			break;
	}
	if (!slot->name[0])
		atomic_fetch_add(&fs->failures_kept, 1);
	slot->parent = parent;
	slot->pid = pid;
	slot->err = err;
	clock_gettime(CLOCK_MONOTONIC, &slot->at);
	strcpy(slot->name, name);
	pthread_mutex_unlock(&fs->notices_lock);
}

/* Under notices_lock: free the oldest dropped node. */
static void free_oldest(struct imdsfs *fs)
{
	struct fs_dropped *r = &fs->dropped[fs->dropped_first];

	node_free(r->node);
	r->node = NULL;
	fs->dropped_first = (fs->dropped_first + 1) % DROP_RING;
	fs->dropped_count--;
}

/* Free the dropped nodes older than the grace period (all when `all`).
 * Returns whether some are left. */
static bool free_dropped(struct imdsfs *fs, bool all)
{
	bool left;

	pthread_mutex_lock(&fs->notices_lock);
	while (fs->dropped_count &&
	       (all || ms_since(&fs->dropped[fs->dropped_first].at) >= DROP_GRACE_MS))
		free_oldest(fs);
	left = fs->dropped_count > 0;
	pthread_mutex_unlock(&fs->notices_lock);
	return left;
}

/* Free `node` DROP_GRACE_MS from now (the housekeeper does it). Called
 * under the node table's lock. */
static void free_later(struct node *node, void *ctx)
{
	struct imdsfs *fs = ctx;
	struct fs_dropped *r;
	bool first;

	pthread_mutex_lock(&fs->notices_lock);
	if (fs->dropped_count == DROP_RING)
		free_oldest(fs);
	r = &fs->dropped[(fs->dropped_first + fs->dropped_count) % DROP_RING];
	r->node = node;
	clock_gettime(CLOCK_MONOTONIC, &r->at);
	first = fs->dropped_count++ == 0;
	pthread_mutex_unlock(&fs->notices_lock);
	if (first)
		wake(fs->wake[1], WAKE_NOTICES); /* start the housekeeper's timer */
}

static void *housekeeper(void *arg)
{
	struct imdsfs *fs = arg;
	bool later = false;

	for (;;) {
		struct pollfd p = {.fd = fs->wake[0], .events = POLLIN};
		char what[64];
		ssize_t n;
		int timeout = free_dropped(fs, false) ? DROP_GRACE_MS / 2 : -1;
		int rc = poll(&p, 1, later ? RENOTICE_MS : timeout);

		if (rc == 0) {
			later = send_notices(fs);
			continue;
		}
		if (rc < 0) {
			if (errno == EINTR)
				continue;
			log_error("housekeeping: poll: %s", strerror(errno));
			return NULL;
		}
		n = read(fs->wake[0], what, sizeof(what));
		for (ssize_t i = 0; i < n; i++) {
			if (what[i] == WAKE_QUIT)
				return NULL;
			if (what[i] == WAKE_RELOAD)
				reload(fs);
		}
		later = send_notices(fs);
	}
}

void fs_request_reload(int reload_fd)
{
	wake(reload_fd, WAKE_RELOAD);
}

int fs_reload_fd(const struct imdsfs *fs)
{
	return fs->wake[1];
}

int fs_init_state(struct imdsfs *fs)
{
	fs->uid = getuid();
	fs->gid = getgid();
	fs->started = time(NULL);
	fs->ready_fd = -1;
	if (pipe2(fs->wake, O_CLOEXEC | O_NONBLOCK) < 0)
		return -errno;
	fs->dropped = calloc(DROP_RING, sizeof(*fs->dropped));
	fs->failures = calloc(FAILURE_SLOTS, sizeof(*fs->failures));
	if (!fs->dropped || !fs->failures) {
		free(fs->dropped);
		free(fs->failures);
		close(fs->wake[0]);
		close(fs->wake[1]);
		fs->wake[0] = fs->wake[1] = -1;
		return -ENOMEM;
	}
	pthread_mutex_init(&fs->notices_lock, NULL);
	pthread_cond_init(&fs->notices_sent_cond, NULL);
	return 0;
}

void fs_free_state(struct imdsfs *fs)
{
	if (fs->resolver.nodes)
		node_table_set_drop(fs->resolver.nodes, NULL, NULL);
	free_dropped(fs, true);
	free(fs->dropped);
	free(fs->failures);
	free_notices(fs->notices);
	free_notices(fs->later);
	pthread_mutex_destroy(&fs->notices_lock);
	pthread_cond_destroy(&fs->notices_sent_cond);
	close(fs->wake[0]);
	close(fs->wake[1]);
}

static void imdsfs_init(void *userdata, struct fuse_conn_info *conn)
{
	struct imdsfs *fs = userdata;
	int err;

	/* An inode's bytes never change (node.h): its pages stay good. */
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	/* Opening a file needs nothing from us: the kernel skips OPEN (and
	 * RELEASE) once our open handler says ENOSYS. */
	if (conn->capable & FUSE_CAP_NO_OPEN_SUPPORT)
		conn->want |= FUSE_CAP_NO_OPEN_SUPPORT;
	/* With O_TRUNC left to OPEN, a kernel that skips OPEN would empty its
	 * copy of the file without asking us: truncation must come as a
	 * setattr, which is refused (EROFS). */
	conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
	/* A lookup waiting on IMDS must not hold up lookups of its neighbours. */
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
	fs->no_open = (conn->capable & FUSE_CAP_NO_OPEN_SUPPORT) != 0;

	node_table_set_drop(fs->resolver.nodes, free_later, fs);
	err = pthread_create(&fs->housekeeper, NULL, housekeeper, fs);
	if (err)
		log_error("cannot start the housekeeping thread: %s; rm and SIGHUP will not "
			  "reach the kernel's caches",
			  strerror(err));
	else
		fs->housekeeper_running = true;

	if (fs->ready_fd >= 0) {
		/* The mount answers requests now: let the parent exit 0. */
		wake(fs->ready_fd, '0');
		close(fs->ready_fd);
		fs->ready_fd = -1;
	}
}

void fs_stop(struct imdsfs *fs)
{
	if (fs->housekeeper_running) {
		wake(fs->wake[1], WAKE_QUIT);
		pthread_join(fs->housekeeper, NULL);
		fs->housekeeper_running = false;
	}
}

static void imdsfs_destroy(void *userdata)
{
	fs_stop(userdata);
}

static void stat_of(const struct imdsfs *fs, const struct node *n, struct stat *st)
{
	struct resolve_attr attr;

	resolve_attr_of(n, &attr);
	memset(st, 0, sizeof(*st));
	st->st_ino = n->stable_ino;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	if (attr.is_dir) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | (attr.is_sensitive ? 0400 : 0444);
		st->st_nlink = 1;
		st->st_size = (off_t)attr.size;
		st->st_blocks = (blkcnt_t)((attr.size + 511) / 512);
	}
	st->st_blksize = 4096;
	if (attr.mtime.tv_sec)
		st->st_mtim = attr.mtime;
	else
		st->st_mtim.tv_sec = fs->started;
	st->st_atim = st->st_mtim;
	st->st_ctim = st->st_mtim;
}

static void imdsfs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct imdsfs *fs = fs_of(req);
	struct node *dir = node_of(fs, parent);
	struct fuse_entry_param e;
	struct node *child;
	bool superseded;
	int err;

	trace("LOOKUP", dir, name);
	if (!dir->is_dir) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	err = take_failure(fs, parent, name, fuse_req_ctx(req)->pid);
	if (err) {
		/* The kernel holds no name for the node now: any lookup but
		 * its retry is a fresh one, whose failure is not kept. */
		node_name_dropped(fs->resolver.nodes, dir, name);
		log_debug("%s: the kernel's retry of a failed lookup; failing again", name);
		fuse_reply_err(req, -err);
		return;
	}
	err = resolve_lookup(&fs->resolver, dir, name, &child);
	if (err) {
		if (err != -ENOMEM && node_known(fs->resolver.nodes, dir, name))
			keep_failure(fs, parent, name, fuse_req_ctx(req)->pid, err);
		fuse_reply_err(req, -err);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.ino = node_ino(fs->resolver.nodes, child);
	/* An inode's attributes never change; a volatile name is looked up
	 * again at every walk, and so shows a fresh value. A transient node
	 * (node_child) is for this answer only, and an rm may already have
	 * superseded the node. */
	superseded = node_is_superseded(fs->resolver.nodes, child);
	if (child->transient || superseded) {
		e.attr_timeout = e.entry_timeout = 0.0;
	} else {
		e.attr_timeout = FS_CACHE_TIMEOUT;
		e.entry_timeout = resolve_is_volatile(child) ? 0.0 : FS_CACHE_TIMEOUT;
	}
	stat_of(fs, child, &e.attr);
	if (fuse_reply_entry(req, &e) != 0) {
		node_forget(fs->resolver.nodes, child, 1);
		return;
	}
	/* Superseded since we looked, before the kernel made its inode from
	 * this reply: the rm's notice found no inode to tell. Tell it again
	 * once it exists. (The node is freed late, so it is still there.) */
	if (!superseded && node_is_superseded(fs->resolver.nodes, child))
		notice_later(fs, e.ino);
}

static void imdsfs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	struct imdsfs *fs = fs_of(req);

	if (ino != FUSE_ROOT_ID)
		node_forget(fs->resolver.nodes, node_of(fs, ino), nlookup);
	fuse_reply_none(req);
}

static void imdsfs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	struct imdsfs *fs = fs_of(req);

	for (size_t i = 0; i < count; i++)
		if (forgets[i].ino != FUSE_ROOT_ID)
			node_forget(fs->resolver.nodes, node_of(fs, forgets[i].ino),
				    forgets[i].nlookup);
	fuse_reply_none(req);
}

static void imdsfs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct imdsfs *fs = fs_of(req);
	struct node *n = node_of(fs, ino);
	bool superseded = !n->is_dir && node_is_superseded(fs->resolver.nodes, n);
	struct stat st;

	trace("GETATTR", n, NULL);
	/* Asked by path (and by fstat) for a superseded file: ESTALE makes
	 * the kernel walk the path again, looking every name up, and so find
	 * the name's new node. A read of a file open on it comes with the
	 * file, and gets its own attributes, but only for this once: were
	 * they cached again, a path could lead to the inode without asking.
	 * Nor may a transient node's be cached (see imdsfs_lookup). */
	if (superseded && !fi) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	stat_of(fs, n, &st);
	fuse_reply_attr(req, &st, superseded || n->transient ? 0.0 : FS_CACHE_TIMEOUT);
}

static void imdsfs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
			   struct fuse_file_info *fi)
{
	fuse_reply_err(req, EROFS);
}

/*
 * Only the first opens come here: ENOSYS tells the kernel to open files
 * without us from then on (an open holds nothing: reads come from the
 * inode's node). A kernel without that support keeps asking, and gets
 * keep_cache, as an inode's pages never go stale.
 */
static void imdsfs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct imdsfs *fs = fs_of(req);
	struct node *n = node_of(fs, ino);

	trace("OPEN", n, NULL);
	if (n->is_dir)
		fuse_reply_err(req, EISDIR);
	else if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))
		fuse_reply_err(req, EROFS);
	else if (node_is_superseded(fs->resolver.nodes, n))
		fuse_reply_err(req, ESTALE); /* as getattr: walk the path again */
	else if (fs->no_open)
		fuse_reply_err(req, ENOSYS);
	else {
		fi->keep_cache = 1;
		fuse_reply_open(req, fi);
	}
}

static void imdsfs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			struct fuse_file_info *fi)
{
	const struct node *n = node_of(fs_of(req), ino);
	const struct blob *b = n->value;

	trace("READ", n, NULL);
	if (!b) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if (off < 0 || (size_t)off >= b->len) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size > b->len - (size_t)off)
		size = b->len - (size_t)off;
	fuse_reply_buf(req, b->data + off, size);
}

/* Seen only for the opens made before the kernel stopped sending them. */
static void imdsfs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	trace("FLUSH", node_of(fs_of(req), ino), NULL);
	fuse_reply_err(req, ENOSYS); /* nothing to flush: the kernel stops asking */
}

static void imdsfs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	trace("RELEASE", node_of(fs_of(req), ino), NULL);
	fuse_reply_err(req, 0);
}

struct dir_handle {
	struct resolve_dirent *entries;
	size_t count;
};

static void imdsfs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct imdsfs *fs = fs_of(req);
	struct node *n = node_of(fs, ino);
	struct dir_handle *d;
	int err;

	trace("OPENDIR", n, NULL);
	if (!n->is_dir) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	d = calloc(1, sizeof(*d));
	if (!d) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	err = resolve_list(&fs->resolver, n, &d->entries, &d->count);
	if (err) {
		free(d);
		fuse_reply_err(req, -err);
		return;
	}
	fi->fh = (uint64_t)(uintptr_t)d;
	if (fuse_reply_open(req, fi) != 0) {
		resolve_dirents_free(d->entries, d->count);
		free(d);
	}
}

static void imdsfs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi)
{
	struct imdsfs *fs = fs_of(req);
	struct node *dir = node_of(fs, ino);
	struct dir_handle *d = (struct dir_handle *)(uintptr_t)fi->fh;
	char *buf = malloc(size);
	size_t used = 0;

	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	/* Offsets: 0 and 1 are "." and "..", then entry i is i + 2. */
	for (size_t i = (size_t)(off < 0 ? 0 : off); i < d->count + 2; i++) {
		struct stat st = {0};
		const char *name;
		size_t need;

		if (i < 2) {
			name = i == 0 ? "." : "..";
			st.st_mode = S_IFDIR;
			st.st_ino = i == 0 ? dir->stable_ino : 1;
		} else {
			name = d->entries[i - 2].name;
			st.st_mode = d->entries[i - 2].is_dir ? S_IFDIR : S_IFREG;
			st.st_ino = node_stable_ino(dir, name);
		}
		need = fuse_add_direntry(req, buf + used, size - used, name, &st, (off_t)(i + 1));
		if (need > size - used)
			break;
		used += need;
	}
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void imdsfs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct dir_handle *d = (struct dir_handle *)(uintptr_t)fi->fh;

	resolve_dirents_free(d->entries, d->count);
	free(d);
	fuse_reply_err(req, 0);
}

/*
 * rm and rmdir: detach, clear, and send the kernel back to us for the
 * other names that showed what was cleared. The name stays in the tree;
 * the removed inode keeps its value for whoever has it open.
 */
static void remove_entry(fuse_req_t req, fuse_ino_t parent, const char *name, bool want_dir)
{
	struct imdsfs *fs = fs_of(req);
	struct node *dir = node_of(fs, parent);
	struct node *n = node_find(fs->resolver.nodes, dir, name);
	struct resolve_cleared cleared = {0};
	struct notices gone = {fs->resolver.nodes, NULL};
	struct notices others = {fs->resolver.nodes, NULL};
	int err = 0;

	trace(want_dir ? "RMDIR" : "UNLINK", dir, name);
	if (!n) {
		/* The kernel looks names up before removing them, so this is a
		 * race with another rm; look it up again. */
		err = resolve_lookup(&fs->resolver, dir, name, &n);
		if (err) {
			fuse_reply_err(req, -err);
			return;
		}
	}
	if (n->is_dir != want_dir) {
		node_forget(fs->resolver.nodes, n, 1);
		fuse_reply_err(req, want_dir ? ENOTDIR : EISDIR);
		return;
	}
	node_detach(fs->resolver.nodes, n, note_deleted, &gone);
	resolve_clear(&fs->resolver, n, &cleared);
	log_debug("rm %s: cleared %zu cache keys", name, cleared.count);
	node_supersede_matching(fs->resolver.nodes, shows_cleared, &cleared, note_superseded,
				&others);
	resolve_cleared_free(&cleared);
	node_forget(fs->resolver.nodes, n, 1);
	/* Attribute notices take no lock the caller holds: wait for them, so
	 * that no read after rm returns finds another name's old value. */
	post_notices(fs, others.list);
	if (!wait_for_notices(fs))
		log_warning("rm %s: the kernel took over %d ms to hear which other files "
			    "changed; they may show their old values for a moment",
			    name, NOTICE_WAIT_MS);
	fuse_reply_err(req, 0);
	/* After the reply: these need the lock of the removed directory,
	 * which this request's caller holds. */
	post_notices(fs, gone.list);
}

static void imdsfs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	remove_entry(req, parent, name, false);
}

static void imdsfs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	remove_entry(req, parent, name, true);
}

static void reply_erofs_entry(fuse_req_t req)
{
	fuse_reply_err(req, EROFS);
}

static void imdsfs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
			 dev_t rdev)
{
	reply_erofs_entry(req);
}

static void imdsfs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	reply_erofs_entry(req);
}

static void imdsfs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	reply_erofs_entry(req);
}

static void imdsfs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	reply_erofs_entry(req);
}

static void imdsfs_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
			  fuse_ino_t newparent, const char *newname, unsigned int flags)
{
	reply_erofs_entry(req);
}

static void imdsfs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
			  struct fuse_file_info *fi)
{
	reply_erofs_entry(req);
}

static void imdsfs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
			 struct fuse_file_info *fi)
{
	fuse_reply_err(req, EROFS);
}

static void imdsfs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			    size_t size, int flags)
{
	fuse_reply_err(req, EROFS);
}

static void imdsfs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	fuse_reply_err(req, EROFS);
}

const struct fuse_lowlevel_ops imdsfs_ops = {
	.init = imdsfs_init,
	.destroy = imdsfs_destroy,
	.lookup = imdsfs_lookup,
	.forget = imdsfs_forget,
	.forget_multi = imdsfs_forget_multi,
	.getattr = imdsfs_getattr,
	.setattr = imdsfs_setattr,
	.open = imdsfs_open,
	.read = imdsfs_read,
	.flush = imdsfs_flush,
	.release = imdsfs_release,
	.opendir = imdsfs_opendir,
	.readdir = imdsfs_readdir,
	.releasedir = imdsfs_releasedir,
	.unlink = imdsfs_unlink,
	.rmdir = imdsfs_rmdir,
	.mknod = imdsfs_mknod,
	.mkdir = imdsfs_mkdir,
	.symlink = imdsfs_symlink,
	.link = imdsfs_link,
	.rename = imdsfs_rename,
	.create = imdsfs_create,
	.write = imdsfs_write,
	.setxattr = imdsfs_setxattr,
	.removexattr = imdsfs_removexattr,
};
