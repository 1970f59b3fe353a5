/*
 * fs: FUSE low-level operations for imdsfs.
 *
 * Files are opened with keep_cache (their bytes change only when we clear
 * them, and then we invalidate the kernel's copy) or, when volatile, with
 * direct_io and a value fetched at open. An open file reads from the value
 * it got at open, so a reader never sees half of an old value and half of a
 * new one. That value is the one the node holds: the bytes whose size the
 * kernel was last told (by a lookup or a getattr).
 *
 * The daemon does not use FUSE_CAP_NO_OPEN_SUPPORT, which would make warm
 * reads cheaper still: without an open there is nothing per open file to
 * hold a value, and a reader could see two values when an rm races it.
 *
 * `rm FILE` and `rmdir DIR` clear caches and then detach the node from its
 * name: the kernel drops the dentry, and the next lookup gets a new inode,
 * with no stale pages, size or S_DEAD directory flag. Other inodes that
 * showed the same cache entries (raw/ twins, values derived from one
 * document) get an inval_inode notice from the housekeeping thread.
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
	NOTICE_INODE,  /* drop the kernel's pages and attributes of ino */
	NOTICE_DELETE, /* name in parent (which was child) is gone: drop the
			* dentry and let the inode go, so its node is forgotten */
};

struct fs_notice {
	struct fs_notice *next;
	enum notice_kind kind;
	fuse_ino_t ino; /* NOTICE_DELETE: the parent */
	fuse_ino_t child;
	char *name;
};

#define WAKE_NOTICES 'n'
#define WAKE_RELOAD  'h'
#define WAKE_QUIT    'q'

/* How long `rm` waits for the kernel to hear about the other inodes it
 * touched. Bounded because a SIGHUP's entry invalidation can need the
 * directory lock that an unlink in progress holds. */
#define NOTICE_WAIT_MS 1000

/*
 * A released file's value, and the value of a forgotten node, is freed a
 * moment later, not at once: the kernel can send RELEASE and FORGET while a
 * worker thread still answers a READ of that value (a reader killed in the
 * middle of a read, or readahead it no longer waits for).
 */
#define RELEASE_GRACE_MS 500
/* Held at once, at most; past that the oldest goes early. A ring, so that a
 * busy mount does no allocation per release. */
#define RELEASE_RING 4096

struct fs_released {
	struct blob *blob;
	struct timespec at;
};

/* An open file's value (see track_open). */
struct open_value {
	struct open_value *next;
	struct blob *blob;
};

static struct imdsfs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static struct node *node_of(struct imdsfs *fs, fuse_ino_t ino)
{
	return node_from_ino(fs->resolver.nodes, ino);
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

static void queue_notice(struct imdsfs *fs, enum notice_kind kind, fuse_ino_t ino,
			 fuse_ino_t child, const char *name)
{
	post_notices(fs, new_notice(kind, ino, child, name));
}

/* Wait until every notice queued so far has reached the kernel, so that a
 * stat right after `rm` returns never sees another inode's stale size. */
static void wait_for_notices(struct imdsfs *fs)
{
	struct timespec until;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_nsec += (long)NOTICE_WAIT_MS * 1000000L;
	until.tv_sec += until.tv_nsec / 1000000000L;
	until.tv_nsec %= 1000000000L;
	pthread_mutex_lock(&fs->notices_lock);
	unsigned long target = fs->notices_queued;
	while (fs->housekeeper_running && fs->notices_sent < target)
		if (pthread_cond_timedwait(&fs->notices_sent_cond, &fs->notices_lock, &until) ==
		    ETIMEDOUT)
			break;
	pthread_mutex_unlock(&fs->notices_lock);
}

static void send_notices(struct imdsfs *fs)
{
	struct fs_notice *list;

	pthread_mutex_lock(&fs->notices_lock);
	list = fs->notices;
	fs->notices = NULL;
	unsigned long taken = fs->notices_queued;
	pthread_mutex_unlock(&fs->notices_lock);

	while (list) {
		struct fs_notice *n = list;
		list = n->next;
		/* -ENOENT only means the kernel had already forgotten it. */
		if (fs->session && n->kind == NOTICE_INODE)
			fuse_lowlevel_notify_inval_inode(fs->session, n->ino, 0, 0);
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
}

struct covered {
	struct imdsfs *fs;
	const struct resolve_cleared *cleared; /* NULL: every file */
};

static void queue_if_covered(struct node *n, void *ctx)
{
	struct covered *c = ctx;

	if (n->is_dir || resolve_is_volatile(n))
		return;
	if (!c->cleared || resolve_cleared_covers(c->cleared, n))
		queue_notice(c->fs, NOTICE_INODE, node_ino(c->fs->resolver.nodes, n), 0, NULL);
}

/*
 * A node unbound below an rm -r'd directory (or by SIGHUP): tell the kernel
 * the name is gone. Otherwise its inode, still linked as far as the kernel
 * knows, can sit in the inode cache for long, and the node with the value
 * it holds would never be forgotten. Not waited for: the kernel needs the
 * directory's lock, which the rmdir in progress may hold.
 */
struct deletes {
	struct node_table *nodes;
	struct fs_notice *list;
};

static void note_delete(struct node *n, void *ctx)
{
	struct deletes *d = ctx;
	struct fs_notice *notice = new_notice(NOTICE_DELETE, node_ino(d->nodes, n->parent),
					      node_ino(d->nodes, n), n->name);

	if (notice) {
		notice->next = d->list;
		d->list = notice;
	}
}

static bool shows_cleared(struct node *n, void *ctx)
{
	const struct covered *c = ctx;

	return !resolve_is_volatile(n) && resolve_cleared_covers(c->cleared, n);
}

/* SIGHUP: clear every cache and the token, and make the kernel forget
 * every name and page it has from us. */
static void reload(struct imdsfs *fs)
{
	struct covered all = {fs, NULL};
	struct deletes gone = {fs->resolver.nodes, NULL};

	log_info("SIGHUP: clearing every cached value and the token");
	node_detach_all(fs->resolver.nodes, note_delete, &gone);
	cache_clear_prefix(fs->resolver.cache, "");
	fetch_forget_token(fs->resolver.fetcher);
	node_for_each_known(fs->resolver.nodes, queue_if_covered, &all);
	post_notices(fs, gone.list);
	send_notices(fs);
}

static long long ms_since(const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (long long)(now.tv_sec - t->tv_sec) * 1000 + (now.tv_nsec - t->tv_nsec) / 1000000;
}

/* Under notices_lock: drop the oldest pending release. */
static void drop_oldest(struct imdsfs *fs)
{
	struct fs_released *r = &fs->released[fs->released_first];

	blob_unref(r->blob);
	r->blob = NULL;
	fs->released_first = (fs->released_first + 1) % RELEASE_RING;
	fs->released_count--;
}

/* Free the released values older than the grace period (all when `all`).
 * Returns whether some are left. */
static bool free_released(struct imdsfs *fs, bool all)
{
	bool left;

	pthread_mutex_lock(&fs->notices_lock);
	while (fs->released_count &&
	       (all || ms_since(&fs->released[fs->released_first].at) >= RELEASE_GRACE_MS))
		drop_oldest(fs);
	left = fs->released_count > 0;
	pthread_mutex_unlock(&fs->notices_lock);
	return left;
}

/* Drop a reference to `blob` RELEASE_GRACE_MS from now (the housekeeper
 * does it). Safe under the node table's lock. */
static void release_later(struct blob *blob, void *ctx)
{
	struct imdsfs *fs = ctx;
	struct fs_released *r;
	bool first;

	pthread_mutex_lock(&fs->notices_lock);
	if (fs->released_count == RELEASE_RING)
		drop_oldest(fs);
	r = &fs->released[(fs->released_first + fs->released_count) % RELEASE_RING];
	r->blob = blob;
	clock_gettime(CLOCK_MONOTONIC, &r->at);
	first = fs->released_count++ == 0;
	pthread_mutex_unlock(&fs->notices_lock);
	if (first)
		wake(fs->wake[1], WAKE_NOTICES); /* start the housekeeper's timer */
}

static void *housekeeper(void *arg)
{
	struct imdsfs *fs = arg;

	for (;;) {
		struct pollfd p = {.fd = fs->wake[0], .events = POLLIN};
		char what[64];
		ssize_t n;
		int rc = poll(&p, 1, free_released(fs, false) ? RELEASE_GRACE_MS / 2 : -1);

		if (rc == 0)
			continue;
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
		send_notices(fs);
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
	fs->released = calloc(RELEASE_RING, sizeof(*fs->released));
	if (!fs->released) {
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
	free_released(fs, true);
	free(fs->released);
	while (fs->open_values) {
		struct open_value *v = fs->open_values;
		fs->open_values = v->next;
		blob_unref(v->blob);
		free(v);
	}
	while (fs->notices) {
		struct fs_notice *n = fs->notices;
		fs->notices = n->next;
		free(n->name);
		free(n);
	}
	pthread_mutex_destroy(&fs->notices_lock);
	pthread_cond_destroy(&fs->notices_sent_cond);
	close(fs->wake[0]);
	close(fs->wake[1]);
}

static void imdsfs_init(void *userdata, struct fuse_conn_info *conn)
{
	struct imdsfs *fs = userdata;
	int err;

	/* Values change only when we invalidate them ourselves. */
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	/* A lookup waiting on IMDS must not hold up lookups of its neighbours. */
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;

	node_table_set_drop(fs->resolver.nodes, release_later, fs);
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

static void fill_stat(const struct imdsfs *fs, const struct node *n,
		      const struct resolve_attr *attr, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = n->stable_ino;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	if (attr->is_dir) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | (attr->is_sensitive ? 0400 : 0444);
		st->st_nlink = 1;
		st->st_size = (off_t)attr->size;
		st->st_blocks = (blkcnt_t)((attr->size + 511) / 512);
	}
	st->st_blksize = 4096;
	if (attr->mtime.tv_sec)
		st->st_mtim = attr->mtime;
	else
		st->st_mtim.tv_sec = fs->started;
	st->st_atim = st->st_mtim;
	st->st_ctim = st->st_mtim;
}

static double timeout_for(const struct resolve_attr *attr)
{
	return attr->is_volatile ? 0.0 : FS_CACHE_TIMEOUT;
}

static void imdsfs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct imdsfs *fs = fs_of(req);
	struct node *dir = node_of(fs, parent);
	struct fuse_entry_param e;
	struct resolve_attr attr;
	struct blob *content;
	struct node *child;
	int err;

	if (!dir->is_dir) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	err = resolve_lookup(&fs->resolver, dir, name, &child, &attr, &content);
	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	if (content) {
		struct blob *kept = node_hold(fs->resolver.nodes, child, content);
		resolve_attr_of(child, kept, &attr);
		blob_unref(kept);
		blob_unref(content);
	}
	memset(&e, 0, sizeof(e));
	e.ino = node_ino(fs->resolver.nodes, child);
	e.attr_timeout = timeout_for(&attr);
	e.entry_timeout = timeout_for(&attr);
	fill_stat(fs, child, &attr, &e.attr);
	if (fuse_reply_entry(req, &e) != 0)
		node_forget(fs->resolver.nodes, child, 1);
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

/*
 * The value a file shows: the cache's current one, held by the node so
 * that every open serves exactly the bytes whose size the kernel was told.
 */
static int refresh_content(struct imdsfs *fs, struct node *n, struct blob **out)
{
	struct blob *fresh;
	int err = resolve_content(&fs->resolver, n, &fresh);

	if (!err) {
		*out = node_hold(fs->resolver.nodes, n, fresh);
		blob_unref(fresh);
	}
	return err;
}

/*
 * The values of open files, so that the ones whose RELEASE never comes (the
 * daemon stopped with files open) are freed at exit. A small list: it holds
 * only the files open at once.
 */
static void track_open(struct imdsfs *fs, struct blob *blob, bool opened)
{
	struct open_value *v = NULL, **link;

	if (opened && !(v = malloc(sizeof(*v))))
		return; /* untracked: leaks only if the daemon stops with it open */
	pthread_mutex_lock(&fs->notices_lock);
	if (opened) {
		v->blob = blob;
		v->next = fs->open_values;
		fs->open_values = v;
	} else {
		for (link = &fs->open_values; *link; link = &(*link)->next) {
			if ((*link)->blob == blob) {
				v = *link;
				*link = v->next;
				break;
			}
		}
	}
	pthread_mutex_unlock(&fs->notices_lock);
	if (!opened)
		free(v);
}

static void imdsfs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct imdsfs *fs = fs_of(req);
	struct node *n = node_of(fs, ino);
	struct blob *content = NULL;
	struct resolve_attr attr;
	struct stat st;
	int err = 0;

	/* An inode's value never changes (node_supersede): an open file gets
	 * the size of what it reads; a path stat of a superseded inode gets
	 * ESTALE, and the kernel looks the name up again. */
	if (!n->is_dir && !resolve_is_volatile(n)) {
		if (!(fi && fi->fh) && node_is_superseded(fs->resolver.nodes, n))
			err = -ESTALE;
		else if (!(content = node_held(fs->resolver.nodes, n)))
			err = refresh_content(fs, n, &content);
	}
	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	resolve_attr_of(n, content, &attr);
	blob_unref(content);
	fill_stat(fs, n, &attr, &st);
	fuse_reply_attr(req, &st, timeout_for(&attr));
}

static void imdsfs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
			   struct fuse_file_info *fi)
{
	fuse_reply_err(req, EROFS);
}

static void imdsfs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct imdsfs *fs = fs_of(req);
	struct node *n = node_of(fs, ino);
	struct blob *content;
	int err = 0;

	if (n->is_dir) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (node_is_superseded(fs->resolver.nodes, n)) {
		/* The kernel retries the open with a fresh lookup of the name. */
		fuse_reply_err(req, ESTALE);
		return;
	}
	/* A volatile value comes fresh; any other, as the kernel last saw it
	 * (a lookup racing an rm must not pair the old size with new bytes). */
	if (resolve_is_volatile(n))
		err = resolve_content(&fs->resolver, n, &content);
	else if (!(content = node_held(fs->resolver.nodes, n)))
		err = refresh_content(fs, n, &content);
	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	fi->fh = (uint64_t)(uintptr_t)content;
	if (resolve_is_volatile(n))
		fi->direct_io = 1;
	else
		fi->keep_cache = 1;
	/* Tracked before the reply: its RELEASE can come at once. */
	track_open(fs, content, true);
	if (fuse_reply_open(req, fi) != 0) {
		track_open(fs, content, false);
		blob_unref(content);
	}
}

static void imdsfs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			struct fuse_file_info *fi)
{
	const struct blob *b = (const struct blob *)(uintptr_t)fi->fh;

	if (off < 0 || (size_t)off >= b->len) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size > b->len - (size_t)off)
		size = b->len - (size_t)off;
	fuse_reply_buf(req, b->data + off, size);
}

static void imdsfs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct imdsfs *fs = fs_of(req);

	track_open(fs, (struct blob *)(uintptr_t)fi->fh, false);
	release_later((struct blob *)(uintptr_t)fi->fh, fs);
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

/* rm and rmdir: detach, clear, and tell the kernel about the inodes that
 * showed what was cleared. The name stays in the tree. */
static void remove_entry(fuse_req_t req, fuse_ino_t parent, const char *name, bool want_dir)
{
	struct imdsfs *fs = fs_of(req);
	struct node *dir = node_of(fs, parent);
	struct resolve_cleared cleared = {0};
	struct resolve_attr attr;
	struct node *n = node_find(fs->resolver.nodes, dir, name);
	int err = 0;

	if (!n) {
		/* The kernel looks names up before removing them, so this is a
		 * race with another rm; look it up again. */
		err = resolve_lookup(&fs->resolver, dir, name, &n, &attr, NULL);
		if (err) {
			fuse_reply_err(req, -err);
			return;
		}
	}
	if (n->is_dir != want_dir) {
		err = want_dir ? ENOTDIR : EISDIR;
	} else {
		/* The removed inode too: a file still open on it (or opened again
		 * through /proc/PID/fd) must not keep the old size with new bytes. */
		struct covered others = {fs, &cleared};

		/* Detached first: from now on the removed inode keeps the value
		 * it has, whatever the cleared cache fetches next. */
		struct deletes gone = {fs->resolver.nodes, NULL};

		node_detach(fs->resolver.nodes, n, note_delete, &gone);
		resolve_clear(&fs->resolver, n, &cleared);
		log_debug("rm %s: cleared %zu cache keys", name, cleared.count);
		/* Other names showing what was cleared get new inodes; the old
		 * ones keep their values for whoever has them open. */
		node_supersede_matching(fs->resolver.nodes, shows_cleared, &others);
		node_for_each_known(fs->resolver.nodes, queue_if_covered, &others);
		resolve_cleared_free(&cleared);
		wait_for_notices(fs);
		/* After the wait: these need the directory lock this request's
		 * caller holds, and so can only be sent once we have replied. */
		post_notices(fs, gone.list);
	}
	node_forget(fs->resolver.nodes, n, 1);
	fuse_reply_err(req, err);
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
