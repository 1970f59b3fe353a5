/*
 * fs: FUSE low-level operations for imdsfs.
 *
 * Every inode shows one value for its whole life (node.h), so the kernel
 * serves warm reads alone: names and attributes are cached for long, pages
 * are kept, and files are opened without asking us
 * (FUSE_CAP_NO_OPEN_SUPPORT). A reader so never sees half of one value and
 * half of another, whatever races it, and an open file keeps its value,
 * fstat included. What changes is which inode a name shows: a volatile name
 * is looked up at every walk, and rm, rmdir and SIGHUP unbind the names of
 * what they cleared and tell the kernel (kernel.c has the why of each).
 */
#include "fs.h"
#include "fetch.h"
#include "kernel.h"
#include "log.h"
#include "watch.h"

#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static struct imdsfs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static struct node_table *nodes_of(fuse_req_t req)
{
	return fs_of(req)->resolver.nodes;
}

/*
 * The node a request is about, with a ref (drop it with node_put), or NULL
 * after replying ESTALE. The kernel only names nodes it was given and has
 * not forgotten, so NULL means it broke that rule (kernel.c, K7).
 */
static struct node *get_node(fuse_req_t req, fuse_ino_t ino)
{
	struct node *n = node_get(nodes_of(req), ino);

	if (!n) {
		log_error("the kernel asked about node %llu, which it had forgotten",
			  (unsigned long long)ino);
		fuse_reply_err(req, ESTALE);
	}
	return n;
}

/* -d: one line per request we answer, so that what reaches the daemon
 * (and what the kernel answers alone) can be seen. Names only. */
static void trace(const char *op, const struct node *n, const char *name)
{
	log_debug("request %s %s%s%s", op, name ? name : "", name ? " in " : "",
		  n->parent ? n->name : "/");
}

/*
 * SIGHUP, on the notifier thread: clear every cache and the token, then
 * unbind every file (after the clear, so that no lookup can bind an old
 * value again) and tell the kernel. Directories keep their nodes, so that
 * a cwd inside one keeps its place (kernel.c, K6); without the epoch the
 * kernel is told to look them up again too, as what they list may have
 * changed.
 */
static void reload(void *ctx)
{
	struct imdsfs *fs = ctx;
	struct kernel_batch batch = {0};

	log_info("SIGHUP: clearing every cached value and the token");
	cache_clear_prefix(fs->resolver.cache, "");
	fetch_forget_token(fs->resolver.fetcher);
	node_unbind_stale(fs->resolver.nodes, kernel_note_name, &batch);
	if (!kernel_has_epoch(fs->kernel))
		node_each_bound_dir(fs->resolver.nodes, kernel_note_name, &batch);
	kernel_names_changed(fs->kernel, &batch);
}

static ssize_t session_read(int fd, void *buf, size_t len, void *userdata)
{
	struct imdsfs *fs = userdata;

	return kernel_read(fs->kernel, fd, buf, len);
}

static ssize_t session_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	struct imdsfs *fs = userdata;

	return kernel_writev(fs->kernel, fd, iov, count);
}

int fs_use_session_io(struct imdsfs *fs)
{
	static const struct fuse_custom_io io = {.read = session_read, .writev = session_writev};

	return fuse_session_custom_io(fs->session, &io, fuse_session_fd(fs->session));
}

void fs_request_reload(struct imdsfs *fs)
{
	kernel_request_reload(fs->kernel);
}

int fs_init_state(struct imdsfs *fs)
{
	fs->uid = getuid();
	fs->gid = getgid();
	fs->started = time(NULL);
	fs->ready_fd = -1;
	return kernel_create(&fs->kernel);
}

void fs_free_state(struct imdsfs *fs)
{
	kernel_destroy(fs->kernel);
	fs->kernel = NULL;
}

/* Whether directory `ino` has a LOOKUP being answered (kernel.c). */
static bool directory_busy(uint64_t ino, void *ctx)
{
	struct imdsfs *fs = ctx;
	struct node *dir = node_get(fs->resolver.nodes, ino);
	bool busy = dir && atomic_load(&dir->lookups) > 0;

	if (dir)
		node_put(fs->resolver.nodes, dir);
	return busy;
}

static void imdsfs_init(void *userdata, struct fuse_conn_info *conn)
{
	struct imdsfs *fs = userdata;
	int err;

	/* An inode's bytes never change (node.h): its pages stay good. */
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	/* Opening a file needs nothing from us: the kernel skips OPEN (and
	 * RELEASE) once our open handler says ENOSYS (kernel.c, K1). */
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

	err = kernel_start(fs->kernel, fs->session, reload, directory_busy, fs);
	if (err)
		log_error("cannot start the notifier thread: %s; rm and SIGHUP will not reach "
			  "the kernel's caches",
			  strerror(-err));
	if (fs->resolver.watch &&
	    (err = watch_start(fs->resolver.watch, &fs->resolver, fs->kernel, fs->mountpoint))) {
		/* Without a poller the watched values are volatile again. */
		log_error("cannot start the watch: %s; nothing is polled", strerror(-err));
		watch_destroy(fs->resolver.watch);
		fs->resolver.watch = NULL;
	}

	if (fs->ready_fd >= 0) {
		/* The mount answers requests now: let the parent exit 0. */
		char ready = '0';
		ssize_t ignored = write(fs->ready_fd, &ready, 1);
		(void)ignored;
		close(fs->ready_fd);
		fs->ready_fd = -1;
	}
}

void fs_stop(struct imdsfs *fs)
{
	/* The session loop has ended: nobody answers requests any more. The
	 * watch may be waiting on one of its own, and the notifier on a
	 * directory lock a waiting request holds; the kernel ends them all. */
	watch_quit(fs->resolver.watch);
	kernel_sever(fs->kernel);
	watch_stop(fs->resolver.watch);
	kernel_stop(fs->kernel);
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

/* Look `name` up in `dir` and answer with what it shows (LOOKUP, and the
 * watch's MKNOD and MKDIR). */
static void reply_lookup(fuse_req_t req, struct node *dir, const char *name)
{
	struct imdsfs *fs = fs_of(req);
	struct fuse_entry_param e;
	struct node *child;
	bool bound, is_volatile;
	int err = dir->is_dir ? resolve_lookup(&fs->resolver, dir, name, &child) : -ENOTDIR;

	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	/* An inode's attributes never change. A name that is bound and not
	 * volatile keeps showing this node until we say otherwise; any other
	 * is looked up again at the next walk, and dropped from the kernel's
	 * cache right after this reply so that the walk does one fresh lookup
	 * rather than a revalidation and a retry (kernel.c, K3). */
	bound = node_is_bound(fs->resolver.nodes, child);
	is_volatile = resolve_is_volatile(&fs->resolver, child);
	memset(&e, 0, sizeof(e));
	e.ino = child->ino;
	e.attr_timeout = FS_CACHE_TIMEOUT;
	e.entry_timeout = bound && !is_volatile ? FS_CACHE_TIMEOUT : 0.0;
	stat_of(fs, child, &e.attr);
	if (fuse_reply_entry(req, &e) != 0)
		node_forget(fs->resolver.nodes, e.ino, 1); /* the kernel never got it */
	else if (!bound || is_volatile)
		kernel_drop_name_later(fs->kernel, dir->ino, name);
}

/* Whether `req` is one of the watch's operations on the mount, which wake
 * file watchers (kernel.c, K10): accepted from that thread only. */
static bool from_watch(fuse_req_t req)
{
	return kernel_is_events_request(fs_of(req)->kernel, fuse_req_ctx(req)->pid);
}

static void imdsfs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct imdsfs *fs = fs_of(req);
	struct node *dir = get_node(req, parent);

	if (!dir)
		return;
	trace("LOOKUP", dir, name);
	atomic_fetch_add(&dir->lookups, 1);
	if (from_watch(req) && watch_hides(fs->resolver.watch, dir, name))
		fuse_reply_err(req, ENOENT); /* about to be created (watch.c) */
	else
		reply_lookup(req, dir, name);
	if (atomic_fetch_sub(&dir->lookups, 1) == 1)
		kernel_directory_idle(fs->kernel);
	node_put(fs->resolver.nodes, dir);
}

static void imdsfs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	node_forget(nodes_of(req), ino, nlookup);
	fuse_reply_none(req);
}

static void imdsfs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		node_forget(nodes_of(req), forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

/* An inode's own attributes, always: fstat of an open file and a path
 * walk's permission check send the same request (kernel.c, K2). */
static void imdsfs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct imdsfs *fs = fs_of(req);
	struct node *n = get_node(req, ino);
	struct stat st;

	if (!n)
		return;
	trace("GETATTR", n, NULL);
	stat_of(fs, n, &st);
	fuse_reply_attr(req, &st, FS_CACHE_TIMEOUT);
	node_put(fs->resolver.nodes, n);
}

/* Refused (EROFS), but for the watch's touch of a changed value: the
 * inode's own attributes, unchanged, so that the kernel tells watchers of
 * the name and of the inode (IN_ATTRIB). */
static void imdsfs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
			   struct fuse_file_info *fi)
{
	struct imdsfs *fs = fs_of(req);
	struct node *n;
	struct stat st;

	if (!from_watch(req)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	n = get_node(req, ino);
	if (!n)
		return;
	trace("SETATTR", n, NULL);
	stat_of(fs, n, &st);
	fuse_reply_attr(req, &st, FS_CACHE_TIMEOUT);
	node_put(fs->resolver.nodes, n);
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
	struct node *n = get_node(req, ino);

	if (!n)
		return;
	trace("OPEN", n, NULL);
	if (n->is_dir)
		fuse_reply_err(req, EISDIR);
	else if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))
		fuse_reply_err(req, EROFS);
	else if (fs->no_open)
		fuse_reply_err(req, ENOSYS);
	else {
		fi->keep_cache = 1;
		fuse_reply_open(req, fi);
	}
	node_put(fs->resolver.nodes, n);
}

static void imdsfs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			struct fuse_file_info *fi)
{
	struct node_table *nodes = nodes_of(req); /* req is gone once answered */
	struct node *n = get_node(req, ino);
	const struct blob *b;

	if (!n)
		return;
	trace("READ", n, NULL);
	b = n->value;
	if (!b)
		fuse_reply_err(req, EISDIR);
	else if (off < 0 || (size_t)off >= b->len)
		fuse_reply_buf(req, NULL, 0);
	else
		fuse_reply_buf(req, b->data + off,
			       size < b->len - (size_t)off ? size : b->len - (size_t)off);
	node_put(nodes, n);
}

/* Seen only for the opens made before the kernel stopped sending them. */
static void imdsfs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fuse_reply_err(req, ENOSYS); /* nothing to flush: the kernel stops asking */
}

static void imdsfs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fuse_reply_err(req, 0);
}

struct dir_handle {
	uint64_t stable_ino; /* the directory's st_ino */
	struct resolve_dirent *entries;
	size_t count;
};

static void imdsfs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct imdsfs *fs = fs_of(req);
	struct node *n = get_node(req, ino);
	struct dir_handle *d = NULL;
	int err = -ENOTDIR;

	if (!n)
		return;
	trace("OPENDIR", n, NULL);
	if (n->is_dir) {
		d = calloc(1, sizeof(*d));
		err = d ? resolve_list(&fs->resolver, n, &d->entries, &d->count) : -ENOMEM;
	}
	if (err) {
		free(d);
		fuse_reply_err(req, -err);
	} else {
		d->stable_ino = n->stable_ino;
		fi->fh = (uint64_t)(uintptr_t)d;
		if (fuse_reply_open(req, fi) != 0) {
			resolve_dirents_free(d->entries, d->count);
			free(d);
		}
	}
	node_put(fs->resolver.nodes, n);
}

static void imdsfs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi)
{
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
			st.st_ino = i == 0 ? d->stable_ino : 1;
		} else {
			name = d->entries[i - 2].name;
			st.st_mode = d->entries[i - 2].is_dir ? S_IFDIR : S_IFREG;
			st.st_ino = node_stable_ino(d->stable_ino, name);
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
 * rm and rmdir: clear what the name shows, unbind every name that showed a
 * cleared value, tell the kernel, succeed. The name stays in the tree; the
 * removed inode keeps its value for whoever has it open.
 */
static void remove_entry(fuse_req_t req, fuse_ino_t parent, const char *name, bool want_dir)
{
	struct imdsfs *fs = fs_of(req);
	struct node_table *nodes = fs->resolver.nodes;
	struct node *dir = get_node(req, parent), *n;
	struct kernel_batch batch = {0};
	bool looked_up = false;
	int err = 0;

	if (!dir)
		return;
	trace(want_dir ? "RMDIR" : "UNLINK", dir, name);
	n = node_find(nodes, dir, name);
	if (from_watch(req)) {
		/* A watched name went: the watch keeps its absence once the
		 * kernel has told the watchers (watch.c); the name, gone from
		 * the kernel, must not lead to its node again. */
		if (n)
			node_unbind(nodes, n, kernel_note_name, &batch);
		kernel_names_changed(fs->kernel, &batch);
		fuse_reply_err(req, 0);
		goto done;
	}
	if (!n) {
		/* The kernel looked the name up before removing it, but a
		 * clear unbound it since: what does it stand for? */
		err = resolve_lookup(&fs->resolver, dir, name, &n);
		looked_up = !err;
	}
	if (!err && n->is_dir != want_dir)
		err = want_dir ? -ENOTDIR : -EISDIR;
	if (err)
		goto out;

	resolve_clear(&fs->resolver, n);
	/* The removed name itself the kernel drops on our reply. */
	if (!n->is_dir)
		node_unbind(nodes, n, NULL, NULL);
	node_unbind_stale(nodes, kernel_note_name, &batch);
	/* Below a removed directory only a cwd can still ask us (kernel.c,
	 * K6), and it gets fresh values from an unbound parent; the kernel
	 * is told to drop the names it holds there (K8). */
	if (n->is_dir)
		node_unbind(nodes, n, kernel_note_name, &batch);
	kernel_names_changed(fs->kernel, &batch);
	log_debug("rm %s: cleared", name);
out:
	fuse_reply_err(req, -err);
done:
	if (looked_up)
		node_forget(nodes, n->ino, 1);
	else if (n)
		node_put(nodes, n);
	node_put(nodes, dir);
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

/* Refused (EROFS), but for the watch's creation of a name that appeared
 * (its new value is kept already): answered as a lookup would be, so that
 * the kernel tells watchers of the directory (IN_CREATE). */
static void create_entry(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct imdsfs *fs = fs_of(req);
	struct node *dir;

	if (!from_watch(req)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	dir = get_node(req, parent);
	if (!dir)
		return;
	trace("CREATE", dir, name);
	reply_lookup(req, dir, name);
	node_put(fs->resolver.nodes, dir);
}

static void imdsfs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
			 dev_t rdev)
{
	create_entry(req, parent, name);
}

static void imdsfs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	create_entry(req, parent, name);
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
