/*
 * probe: a scriptable low-level FUSE filesystem for pinning down what the
 * Linux FUSE driver caches and what each notification locks and wakes.
 *
 *   probe [--open] [--debug] SOCKET MOUNTPOINT
 *
 * It mounts a small in-memory tree (the root only, at first) in the
 * foreground, logs every request it receives to stdout, one line each, and
 * takes commands on the UNIX socket SOCKET, one line in and one line out:
 *
 *   file PATH TEXT [size=N] [entry=S] [attr=S]   bind PATH to a new file node
 *   dir PATH [entry=S] [attr=S]                  bind PATH to a new directory
 *   absent PATH          LOOKUP of the name answers ENOENT
 *   fail PATH ERRNO      LOOKUP of the name answers -ERRNO
 *   ino PATH             the node the name is bound to
 *   delay OP MS [ino=N] [name=NAME]   hold OP's reply MS ms (0: no more)
 *   mark TEXT            write "MARK TEXT" to the log
 *   notify inval_entry PARENT NAME [expire]
 *   notify delete PARENT CHILD NAME
 *   notify inval_inode INO OFF LEN
 *   notify inc_epoch     (a raw FUSE_NOTIFY_INC_EPOCH: libfuse 3.14 has none)
 *   notify raw CODE [LEN]  a notification header with this code, LEN zero bytes
 *   notify poll INO      mark INO readable and wake its poller
 *   self unlink|rmdir|mkdir|mknod|create|utimens PATH
 *   result ID            the outcome of a command that answered "pending ID"
 *
 * Binding a name that is bound already makes a new node (a new nodeid,
 * never reused): the name now shows another inode. Commands answer "ok ..."
 * or "err ...". notify and self run in a thread of their own and answer
 * "ok rc=RC us=MICROSECONDS" (RC: 0 or -errno; for raw notifications the
 * write's result), or "pending ID" when they are still blocked after
 * wait=MS (default 3000): the kernel may hold them on a lock.
 *
 * Log lines: "USEC OP ino=N [name=NAME] pid=PID ..." with USEC from
 * CLOCK_MONOTONIC (Python's time.monotonic()); PID is the caller's thread
 * id as the kernel reports it in the request header (task_pid, not tgid).
 * A delayed reply logs "USEC reply OP ...", every LOOKUP its outcome
 * ("answer LOOKUP ... node=N" or "err=E"). BATCH_FORGET logs its count,
 * then, like FORGET, one "FORGET ino=N n=NLOOKUP" line per inode. A notify
 * or self command logs "JOB start id=I tid=T ..." and "JOB done id=I rc=RC
 * us=U"; mark logs "MARK TEXT". --debug adds libfuse's own trace (-d),
 * which shows the requests the probe has no handler for.
 *
 * Like imdsfs, it asks for FUSE_CAP_NO_OPEN_SUPPORT (open answers ENOSYS;
 * --open answers it instead, with keep_cache) and parallel dirops, and
 * turns atomic_o_trunc and auto_inval_data off. UNLINK and RMDIR answer 0
 * and change nothing, so that what the VFS does after a successful removal
 * can be watched. Requests that create or change something are refused
 * (EROFS) unless they come from one of the probe's own threads (a self
 * command): those change the tree, so that the VFS events of real
 * operations on the mount can be watched too.
 *
 * Nodes are never freed before exit: a FORGET is only logged, so the log
 * tells when the kernel let go, whatever the probe was doing.
 */
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define LONG_TIMEOUT 86400.0
#define MAX_DELAYS   16
#define MAX_JOBS     64
#define LINE_MAX_LEN 512

/* Not in libfuse 3.14's headers; include/uapi/linux/fuse.h, protocol 7.44. */
#define PROBE_NOTIFY_INC_EPOCH 8

struct node {
	fuse_ino_t ino;
	bool is_dir;
	char *data;
	size_t len;
	double entry_timeout, attr_timeout;
	struct timespec mtime;
	bool readable;		    /* for poll */
	struct fuse_pollhandle *ph; /* the last poller's, until woken */
};

/* One name in a directory, bound to a node or not. */
struct name {
	struct name *next;
	fuse_ino_t parent;
	fuse_ino_t child; /* 0: absent */
	int lookup_err;	  /* LOOKUP answers this errno (before child) */
	char *text;
};

struct delay {
	char op[16]; /* "" when the slot is free */
	fuse_ino_t ino;
	char name[64];
	int ms;
};

/* A notify or self command, run in a thread of its own. */
struct job {
	bool used, done;
	int rc;
	long long us;
	char line[LINE_MAX_LEN];
};

struct probe {
	pthread_mutex_t lock; /* protects everything below but se */
	pthread_cond_t job_done;
	struct node **nodes; /* by nodeid; [0] unused */
	size_t count, cap;
	struct name *names;
	struct delay delays[MAX_DELAYS];
	struct job jobs[MAX_JOBS];
	bool no_open;
	int listen_fd; /* the control socket */
	int quit[2];   /* main tells the control thread to stop */
	const char *mountpoint;
	struct fuse_session *se;
};

struct job_arg {
	struct probe *p;
	int id;
};

static long long now_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

/* One write per line, so that lines from many threads never mix. */
static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...)
{
	char buf[1024];
	int n = snprintf(buf, sizeof(buf), "%lld ", now_us());
	va_list ap;

	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	if (write(STDOUT_FILENO, buf, (size_t)n) < 0)
		abort(); /* nobody reads the log: the test is gone */
}

static struct probe *probe_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static pid_t caller(fuse_req_t req)
{
	return fuse_req_ctx(req)->pid;
}

/* Whether the caller is one of our own threads (a self command). */
static bool from_self(fuse_req_t req)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/self/task/%d", (int)caller(req));
	return caller(req) > 0 && access(path, F_OK) == 0;
}

/* Under p->lock. */
static struct node *node_get(struct probe *p, fuse_ino_t ino)
{
	return ino > 0 && ino < p->count ? p->nodes[ino] : NULL;
}

/* Under p->lock. A new node with the next nodeid. */
static struct node *node_new(struct probe *p, bool is_dir)
{
	struct node *n;

	if (p->count == p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 64;
		struct node **nodes = realloc(p->nodes, cap * sizeof(*nodes));
		if (!nodes)
			return NULL;
		p->nodes = nodes;
		p->cap = cap;
	}
	n = calloc(1, sizeof(*n));
	if (!n)
		return NULL;
	n->ino = p->count;
	n->is_dir = is_dir;
	n->entry_timeout = n->attr_timeout = LONG_TIMEOUT;
	clock_gettime(CLOCK_REALTIME, &n->mtime);
	p->nodes[p->count++] = n;
	return n;
}

/* Under p->lock. */
static struct name *name_find(struct probe *p, fuse_ino_t parent, const char *text,
			      bool add)
{
	struct name *e;

	for (e = p->names; e; e = e->next)
		if (e->parent == parent && strcmp(e->text, text) == 0)
			return e;
	if (!add || !(e = calloc(1, sizeof(*e))) || !(e->text = strdup(text))) {
		free(e);
		return NULL;
	}
	e->parent = parent;
	e->next = p->names;
	p->names = e;
	return e;
}

/* Under p->lock. The name a relative PATH ends in ("a/b" -> b in a),
 * adding it when asked; NULL when a directory on the way is not bound. */
static struct name *path_name(struct probe *p, const char *path, bool add)
{
	char buf[PATH_MAX], *save = NULL, *part, *next;
	fuse_ino_t dir = FUSE_ROOT_ID;

	snprintf(buf, sizeof(buf), "%s", path);
	part = strtok_r(buf, "/", &save);
	while (part) {
		struct name *e;
		next = strtok_r(NULL, "/", &save);
		e = name_find(p, dir, part, add && !next);
		if (!next)
			return e;
		if (!e || !e->child || !p->nodes[e->child]->is_dir)
			return NULL;
		dir = e->child;
		part = next;
	}
	return NULL;
}

static void stat_of(const struct node *n, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = n->ino;
	st->st_mode = n->is_dir ? S_IFDIR | 0755 : S_IFREG | 0644;
	st->st_nlink = n->is_dir ? 2 : 1;
	st->st_size = (off_t)n->len;
	st->st_blocks = (blkcnt_t)((n->len + 511) / 512);
	st->st_blksize = 4096;
	st->st_mtim = st->st_atim = st->st_ctim = n->mtime;
}

/* Sleep as a delay rule says for this request, if one matches. */
static void maybe_delay(struct probe *p, const char *op, fuse_ino_t ino, const char *text)
{
	int ms = 0;

	pthread_mutex_lock(&p->lock);
	for (int i = 0; i < MAX_DELAYS; i++) {
		struct delay *d = &p->delays[i];
		if (d->op[0] && strcmp(d->op, op) == 0 && (!d->ino || d->ino == ino) &&
		    (!d->name[0] || (text && strcmp(d->name, text) == 0)))
			ms = d->ms;
	}
	pthread_mutex_unlock(&p->lock);
	if (ms > 0) {
		struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
		while (nanosleep(&t, &t) < 0 && errno == EINTR)
			;
		logf_("reply %s ino=%lu%s%s", op, (unsigned long)ino,
		      text ? " name=" : "", text ? text : "");
	}
}

static void probe_init(void *userdata, struct fuse_conn_info *conn)
{
	struct probe *p = userdata;

	/* As imdsfs asks (src/fs.c): the kernel opens files without us once
	 * OPEN answered ENOSYS, truncation comes as SETATTR, pages stay. */
	if (p->no_open && (conn->capable & FUSE_CAP_NO_OPEN_SUPPORT))
		conn->want |= FUSE_CAP_NO_OPEN_SUPPORT;
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
	conn->want &= ~(FUSE_CAP_ATOMIC_O_TRUNC | FUSE_CAP_AUTO_INVAL_DATA);
	logf_("INIT proto=%u.%u capable=0x%x want=0x%x", conn->proto_major,
	      conn->proto_minor, conn->capable, conn->want);
}

static void probe_lookup(fuse_req_t req, fuse_ino_t parent, const char *text)
{
	struct probe *p = probe_of(req);
	struct fuse_entry_param e;
	struct name *name;
	struct node *n = NULL;
	int err = ENOENT;

	logf_("LOOKUP ino=%lu name=%s pid=%d", (unsigned long)parent, text,
	      (int)caller(req));
	maybe_delay(p, "LOOKUP", parent, text);
	memset(&e, 0, sizeof(e));
	pthread_mutex_lock(&p->lock);
	name = name_find(p, parent, text, false);
	if (name && name->lookup_err)
		err = name->lookup_err;
	else if (name && name->child)
		n = node_get(p, name->child);
	if (n) {
		e.ino = n->ino;
		e.entry_timeout = n->entry_timeout;
		e.attr_timeout = n->attr_timeout;
		stat_of(n, &e.attr);
	}
	pthread_mutex_unlock(&p->lock);
	if (!n) {
		logf_("answer LOOKUP ino=%lu name=%s err=%d", (unsigned long)parent, text,
		      err);
		fuse_reply_err(req, err);
		return;
	}
	logf_("answer LOOKUP ino=%lu name=%s node=%lu", (unsigned long)parent, text,
	      (unsigned long)e.ino);
	fuse_reply_entry(req, &e);
}

static void probe_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	logf_("FORGET ino=%lu n=%llu", (unsigned long)ino, (unsigned long long)nlookup);
	fuse_reply_none(req);
}

static void probe_forget_multi(fuse_req_t req, size_t count,
			       struct fuse_forget_data *forgets)
{
	logf_("BATCH_FORGET count=%zu", count);
	for (size_t i = 0; i < count; i++)
		logf_("FORGET ino=%lu n=%llu", (unsigned long)forgets[i].ino,
		      (unsigned long long)forgets[i].nlookup);
	fuse_reply_none(req);
}

/* A node that exists, or an error reply. Under no lock: nodes never go. */
static struct node *node_or_reply(fuse_req_t req, fuse_ino_t ino)
{
	struct probe *p = probe_of(req);
	struct node *n;

	pthread_mutex_lock(&p->lock);
	n = node_get(p, ino);
	pthread_mutex_unlock(&p->lock);
	if (!n)
		fuse_reply_err(req, ESTALE);
	return n;
}

static void probe_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct probe *p = probe_of(req);
	struct node *n;
	struct stat st;

	logf_("GETATTR ino=%lu pid=%d fi=%d", (unsigned long)ino, (int)caller(req),
	      fi != NULL);
	maybe_delay(p, "GETATTR", ino, NULL);
	if (!(n = node_or_reply(req, ino)))
		return;
	pthread_mutex_lock(&p->lock);
	stat_of(n, &st);
	pthread_mutex_unlock(&p->lock);
	fuse_reply_attr(req, &st, n->attr_timeout);
}

static void probe_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
			  struct fuse_file_info *fi)
{
	struct probe *p = probe_of(req);
	struct node *n;
	struct stat st;

	logf_("SETATTR ino=%lu pid=%d valid=0x%x self=%d", (unsigned long)ino,
	      (int)caller(req), to_set, from_self(req));
	if (!from_self(req) || (to_set & FUSE_SET_ATTR_SIZE)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (!(n = node_or_reply(req, ino)))
		return;
	pthread_mutex_lock(&p->lock);
	if (to_set & FUSE_SET_ATTR_MTIME)
		n->mtime = attr->st_mtim;
	else if (to_set & FUSE_SET_ATTR_MTIME_NOW)
		clock_gettime(CLOCK_REALTIME, &n->mtime);
	stat_of(n, &st);
	pthread_mutex_unlock(&p->lock);
	fuse_reply_attr(req, &st, n->attr_timeout);
}

static void probe_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct probe *p = probe_of(req);

	logf_("OPEN ino=%lu pid=%d flags=0%o", (unsigned long)ino, (int)caller(req),
	      fi->flags);
	maybe_delay(p, "OPEN", ino, NULL);
	if (p->no_open) {
		fuse_reply_err(req, ENOSYS);
		return;
	}
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

static void probe_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	struct probe *p = probe_of(req);
	struct node *n;

	logf_("READ ino=%lu pid=%d off=%lld size=%zu", (unsigned long)ino,
	      (int)caller(req), (long long)off, size);
	maybe_delay(p, "READ", ino, NULL);
	if (!(n = node_or_reply(req, ino)))
		return;
	/* A node's bytes never change once made. */
	if (off < 0 || (size_t)off >= n->len)
		size = 0;
	else if (size > n->len - (size_t)off)
		size = n->len - (size_t)off;
	fuse_reply_buf(req, size ? n->data + off : NULL, size);
}

static void probe_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	logf_("FLUSH ino=%lu pid=%d", (unsigned long)ino, (int)caller(req));
	fuse_reply_err(req, ENOSYS);
}

static void probe_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	logf_("RELEASE ino=%lu", (unsigned long)ino);
	fuse_reply_err(req, 0);
}

static void probe_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	logf_("OPENDIR ino=%lu pid=%d", (unsigned long)ino, (int)caller(req));
	fuse_reply_open(req, fi);
}

static void probe_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			  struct fuse_file_info *fi)
{
	struct probe *p = probe_of(req);
	char *buf = malloc(size);
	size_t used = 0;
	off_t i = 0;

	logf_("READDIR ino=%lu pid=%d off=%lld", (unsigned long)ino, (int)caller(req),
	      (long long)off);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	/* Offsets count the bound names in list order, from 1; the list only
	 * grows at its head, so a listing in progress may see a name twice. */
	pthread_mutex_lock(&p->lock);
	for (struct name *e = p->names; e; e = e->next) {
		struct stat st = {0};
		size_t need;

		if (e->parent != ino || !e->child || ++i <= off)
			continue;
		st.st_ino = e->child;
		st.st_mode = p->nodes[e->child]->is_dir ? S_IFDIR : S_IFREG;
		need = fuse_add_direntry(req, buf + used, size - used, e->text, &st, i);
		if (need > size - used)
			break;
		used += need;
	}
	pthread_mutex_unlock(&p->lock);
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void probe_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	logf_("RELEASEDIR ino=%lu", (unsigned long)ino);
	fuse_reply_err(req, 0);
}

/* UNLINK and RMDIR: 0, and the tree unchanged unless we asked ourselves. */
static void remove_name(fuse_req_t req, const char *op, fuse_ino_t parent,
			const char *text)
{
	struct probe *p = probe_of(req);
	bool self = from_self(req);

	logf_("%s ino=%lu name=%s pid=%d self=%d", op, (unsigned long)parent, text,
	      (int)caller(req), self);
	maybe_delay(p, op, parent, text);
	if (self) {
		pthread_mutex_lock(&p->lock);
		struct name *e = name_find(p, parent, text, false);
		if (e)
			e->child = 0;
		pthread_mutex_unlock(&p->lock);
	}
	fuse_reply_err(req, 0);
}

static void probe_unlink(fuse_req_t req, fuse_ino_t parent, const char *text)
{
	remove_name(req, "UNLINK", parent, text);
}

static void probe_rmdir(fuse_req_t req, fuse_ino_t parent, const char *text)
{
	remove_name(req, "RMDIR", parent, text);
}

/* MKNOD, MKDIR, CREATE from ourselves: bind the name to a new node. */
static struct node *make_node(fuse_req_t req, const char *op, fuse_ino_t parent,
			      const char *text, bool is_dir, struct fuse_entry_param *e)
{
	struct probe *p = probe_of(req);
	struct node *n = NULL;
	struct name *name;

	logf_("%s ino=%lu name=%s pid=%d self=%d", op, (unsigned long)parent, text,
	      (int)caller(req), from_self(req));
	if (!from_self(req)) {
		fuse_reply_err(req, EROFS);
		return NULL;
	}
	pthread_mutex_lock(&p->lock);
	name = name_find(p, parent, text, true);
	if (name && (n = node_new(p, is_dir))) {
		name->child = n->ino;
		name->lookup_err = 0;
		memset(e, 0, sizeof(*e));
		e->ino = n->ino;
		e->entry_timeout = n->entry_timeout;
		e->attr_timeout = n->attr_timeout;
		stat_of(n, &e->attr);
	}
	pthread_mutex_unlock(&p->lock);
	if (!n)
		fuse_reply_err(req, ENOMEM);
	return n;
}

static void probe_mknod(fuse_req_t req, fuse_ino_t parent, const char *text, mode_t mode,
			dev_t rdev)
{
	struct fuse_entry_param e;

	if (make_node(req, "MKNOD", parent, text, false, &e))
		fuse_reply_entry(req, &e);
}

static void probe_mkdir(fuse_req_t req, fuse_ino_t parent, const char *text, mode_t mode)
{
	struct fuse_entry_param e;

	if (make_node(req, "MKDIR", parent, text, true, &e))
		fuse_reply_entry(req, &e);
}

static void probe_create(fuse_req_t req, fuse_ino_t parent, const char *text, mode_t mode,
			 struct fuse_file_info *fi)
{
	struct fuse_entry_param e;

	if (make_node(req, "CREATE", parent, text, false, &e))
		fuse_reply_create(req, &e, fi);
}

static void probe_poll(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
		       struct fuse_pollhandle *ph)
{
	struct probe *p = probe_of(req);
	struct node *n;
	struct fuse_pollhandle *old = NULL;
	unsigned revents;

	logf_("POLL ino=%lu pid=%d fh=%llu ph=%d", (unsigned long)ino, (int)caller(req),
	      (unsigned long long)fi->fh, ph != NULL);
	if (!(n = node_or_reply(req, ino))) {
		fuse_pollhandle_destroy(ph);
		return;
	}
	pthread_mutex_lock(&p->lock);
	if (ph) {
		old = n->ph;
		n->ph = ph;
	}
	revents = n->readable ? POLLIN : 0;
	pthread_mutex_unlock(&p->lock);
	fuse_pollhandle_destroy(old);
	fuse_reply_poll(req, revents);
}

static const struct fuse_lowlevel_ops probe_ops = {
	.init = probe_init,
	.lookup = probe_lookup,
	.forget = probe_forget,
	.forget_multi = probe_forget_multi,
	.getattr = probe_getattr,
	.setattr = probe_setattr,
	.open = probe_open,
	.read = probe_read,
	.flush = probe_flush,
	.release = probe_release,
	.opendir = probe_opendir,
	.readdir = probe_readdir,
	.releasedir = probe_releasedir,
	.unlink = probe_unlink,
	.rmdir = probe_rmdir,
	.mknod = probe_mknod,
	.mkdir = probe_mkdir,
	.create = probe_create,
	.poll = probe_poll,
};

/* -------- commands -------- */

static int raw_notify(struct probe *p, int code, size_t body)
{
	/* struct fuse_out_header with unique 0 (a notification), then `body`
	 * zero bytes. */
	struct {
		uint32_t len;
		int32_t error;
		uint64_t unique;
		char body[64];
	} m = {0};
	ssize_t n;

	if (body > sizeof(m.body))
		return -EINVAL;
	m.len = (uint32_t)(16 + body);
	m.error = code;
	n = write(fuse_session_fd(p->se), &m, m.len);
	return n < 0 ? -errno : (int)n;
}

static int do_notify(struct probe *p, char **argv, int argc)
{
	const char *what = argc > 1 ? argv[1] : "";

	if (strcmp(what, "inval_entry") == 0 && argc >= 5 &&
	    strcmp(argv[4], "expire") == 0)
		/* libfuse 3.14 passes the flag whatever the kernel; kernels
		 * before 6.2 ignore it (it was padding): a plain invalidation */
		return fuse_lowlevel_notify_expire_entry(p->se, strtoul(argv[2], NULL, 0),
							 argv[3], strlen(argv[3]),
							 FUSE_LL_EXPIRE_ONLY);
	if (strcmp(what, "inval_entry") == 0 && argc >= 4)
		return fuse_lowlevel_notify_inval_entry(p->se, strtoul(argv[2], NULL, 0),
							argv[3], strlen(argv[3]));
	if (strcmp(what, "delete") == 0 && argc >= 5)
		return fuse_lowlevel_notify_delete(p->se, strtoul(argv[2], NULL, 0),
						   strtoul(argv[3], NULL, 0), argv[4],
						   strlen(argv[4]));
	if (strcmp(what, "inval_inode") == 0 && argc >= 5)
		return fuse_lowlevel_notify_inval_inode(p->se, strtoul(argv[2], NULL, 0),
							strtoll(argv[3], NULL, 0),
							strtoll(argv[4], NULL, 0));
	if (strcmp(what, "inc_epoch") == 0)
		return raw_notify(p, PROBE_NOTIFY_INC_EPOCH, 0);
	if (strcmp(what, "raw") == 0 && argc >= 3)
		return raw_notify(p, atoi(argv[2]),
				  argc > 3 ? strtoul(argv[3], NULL, 0) : 0);
	if (strcmp(what, "poll") == 0 && argc >= 3) {
		struct fuse_pollhandle *ph;
		struct node *n;
		int rc;

		pthread_mutex_lock(&p->lock);
		n = node_get(p, strtoul(argv[2], NULL, 0));
		if (n)
			n->readable = true;
		ph = n ? n->ph : NULL;
		if (n)
			n->ph = NULL;
		pthread_mutex_unlock(&p->lock);
		if (!ph)
			return -ENOENT;
		rc = fuse_lowlevel_notify_poll(ph);
		fuse_pollhandle_destroy(ph);
		return rc;
	}
	return -EINVAL;
}

static int do_self(struct probe *p, char **argv, int argc)
{
	const char *op = argc > 1 ? argv[1] : "", *path = argc > 2 ? argv[2] : ".";
	int rc, fd;

	/* Opened here, not before the loop runs (the walk to the root may
	 * ask the daemon for its attributes), and closed after each use: an
	 * fd kept open would make the mount busy for a plain umount. */
	fd = open(p->mountpoint, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (strcmp(op, "unlink") == 0)
		rc = unlinkat(fd, path, 0);
	else if (strcmp(op, "rmdir") == 0)
		rc = unlinkat(fd, path, AT_REMOVEDIR);
	else if (strcmp(op, "mkdir") == 0)
		rc = mkdirat(fd, path, 0755);
	else if (strcmp(op, "mknod") == 0)
		rc = mknodat(fd, path, S_IFREG | 0644, 0);
	else if (strcmp(op, "create") == 0) {
		rc = openat(fd, path, O_CREAT | O_EXCL | O_RDONLY | O_CLOEXEC, 0644);
		if (rc >= 0)
			rc = close(rc);
	} else if (strcmp(op, "utimens") == 0)
		rc = utimensat(fd, path, NULL, 0);
	else
		rc = -1, errno = EINVAL;
	rc = rc < 0 ? -errno : 0;
	close(fd);
	return rc;
}

static int split(char *line, char **argv, int max)
{
	int argc = 0;
	char *save = NULL;

	for (char *t = strtok_r(line, " \t\r\n", &save); t && argc < max;
	     t = strtok_r(NULL, " \t\r\n", &save))
		argv[argc++] = t;
	return argc;
}

static void *job_thread(void *arg)
{
	struct job_arg *ja = arg;
	struct probe *p = ja->p;
	struct job *j = &p->jobs[ja->id];
	char line[LINE_MAX_LEN], *argv[16];
	long long t0 = now_us();
	int argc, rc;

	free(ja);
	snprintf(line, sizeof(line), "%s", j->line);
	argc = split(line, argv, 16);
	logf_("JOB start id=%d tid=%ld %s", (int)(j - p->jobs), (long)syscall(SYS_gettid),
	      j->line);
	if (argc == 0)
		rc = -EINVAL;
	else if (strcmp(argv[0], "self") == 0)
		rc = do_self(p, argv, argc);
	else
		rc = do_notify(p, argv, argc);
	pthread_mutex_lock(&p->lock);
	j->rc = rc;
	j->us = now_us() - t0;
	j->done = true;
	pthread_cond_broadcast(&p->job_done);
	pthread_mutex_unlock(&p->lock);
	logf_("JOB done id=%d rc=%d us=%lld", (int)(j - p->jobs), rc, j->us);
	return NULL;
}

/* Wait up to ms for job id; answer its outcome, or that it is pending.
 * A job's slot is freed once its outcome has been answered. */
static void job_answer(struct probe *p, int id, int ms, char *out, size_t size)
{
	struct job *j = &p->jobs[id];
	struct timespec until;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += ms / 1000;
	until.tv_nsec += (ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&p->lock);
	while (j->used && !j->done)
		if (pthread_cond_timedwait(&p->job_done, &p->lock, &until) == ETIMEDOUT)
			break;
	if (!j->used)
		snprintf(out, size, "err no job %d", id);
	else if (!j->done)
		snprintf(out, size, "pending %d", id);
	else {
		snprintf(out, size, "ok rc=%d us=%lld", j->rc, j->us);
		j->used = false;
	}
	pthread_mutex_unlock(&p->lock);
}

static void job_start(struct probe *p, const char *line, int ms, char *out, size_t size)
{
	struct job_arg *ja = malloc(sizeof(*ja));
	pthread_t t;
	int id = -1;

	pthread_mutex_lock(&p->lock);
	for (int i = 0; i < MAX_JOBS && id < 0; i++)
		if (!p->jobs[i].used)
			id = i;
	if (id >= 0) {
		p->jobs[id] = (struct job){.used = true};
		snprintf(p->jobs[id].line, sizeof(p->jobs[id].line), "%s", line);
	}
	pthread_mutex_unlock(&p->lock);
	if (id < 0 || !ja) {
		free(ja);
		snprintf(out, size, "err no free job slot");
		return;
	}
	ja->p = p;
	ja->id = id;
	/* Detached: a job the kernel never lets go must not hold up exit. */
	if (pthread_create(&t, NULL, job_thread, ja) != 0) {
		free(ja);
		p->jobs[id].used = false;
		snprintf(out, size, "err cannot start a thread");
		return;
	}
	pthread_detach(t);
	job_answer(p, id, ms, out, size);
}

/* "key=value" among argv, or NULL. */
static const char *opt(char **argv, int argc, const char *key)
{
	size_t k = strlen(key);

	for (int i = 0; i < argc; i++)
		if (strncmp(argv[i], key, k) == 0 && argv[i][k] == '=')
			return argv[i] + k + 1;
	return NULL;
}

static void bind_node(struct probe *p, char **argv, int argc, bool is_dir, char *out,
		      size_t size)
{
	const char *v;
	struct name *e;
	struct node *n = NULL;

	pthread_mutex_lock(&p->lock);
	e = path_name(p, argv[1], true);
	if (e)
		n = node_new(p, is_dir);
	if (n && !is_dir) {
		const char *text = argc > 2 && !strchr(argv[2], '=') ? argv[2] : "";
		size_t len =
		    (v = opt(argv, argc, "size")) ? strtoul(v, NULL, 0) : strlen(text);
		size_t tlen = strlen(text);

		n->data = malloc(len + 1);
		for (size_t i = 0; n->data && i < len; i++)
			n->data[i] = tlen ? text[i % tlen] : 'x';
		n->len = n->data ? len : 0;
	}
	if (n) {
		if ((v = opt(argv, argc, "entry")))
			n->entry_timeout = strtod(v, NULL);
		if ((v = opt(argv, argc, "attr")))
			n->attr_timeout = strtod(v, NULL);
		e->child = n->ino;
		e->lookup_err = 0;
		snprintf(out, size, "ok %lu", (unsigned long)n->ino);
	} else
		snprintf(out, size, "err cannot bind %s", argv[1]);
	pthread_mutex_unlock(&p->lock);
}

static void command(struct probe *p, char *line, char *out, size_t size)
{
	char copy[LINE_MAX_LEN], *argv[16];
	const char *w;
	struct name *e;
	int argc;

	snprintf(copy, sizeof(copy), "%s", line);
	copy[strcspn(copy, "\r\n")] = '\0';
	argc = split(line, argv, 16);
	w = opt(argv, argc, "wait");
	if (argc == 0)
		snprintf(out, size, "err empty");
	else if (strcmp(argv[0], "notify") == 0 || strcmp(argv[0], "self") == 0)
		job_start(p, copy, w ? atoi(w) : 3000, out, size);
	else if (strcmp(argv[0], "result") == 0 && argc > 1)
		job_answer(p, atoi(argv[1]) % MAX_JOBS, w ? atoi(w) : 3000, out, size);
	else if (strcmp(argv[0], "mark") == 0) {
		logf_("MARK %s", argc > 1 ? copy + 5 : "");
		snprintf(out, size, "ok");
	} else if ((strcmp(argv[0], "file") == 0 || strcmp(argv[0], "dir") == 0) &&
		   argc > 1)
		bind_node(p, argv, argc, argv[0][0] == 'd', out, size);
	else if ((strcmp(argv[0], "absent") == 0 || strcmp(argv[0], "fail") == 0 ||
		  strcmp(argv[0], "ino") == 0) &&
		 argc > 1) {
		pthread_mutex_lock(&p->lock);
		e = path_name(p, argv[1], argv[0][0] != 'i');
		if (e && argv[0][0] == 'a')
			e->child = 0, e->lookup_err = 0;
		else if (e && argv[0][0] == 'f')
			e->lookup_err = argc > 2 ? atoi(argv[2]) : EIO;
		if (e)
			snprintf(out, size, "ok %lu", (unsigned long)e->child);
		else
			snprintf(out, size, "err no such name %s", argv[1]);
		pthread_mutex_unlock(&p->lock);
	} else if (strcmp(argv[0], "delay") == 0 && argc > 2) {
		const char *ino = opt(argv, argc, "ino"), *text = opt(argv, argc, "name");
		int i, free_slot = -1;

		pthread_mutex_lock(&p->lock);
		for (i = 0; i < MAX_DELAYS; i++) {
			struct delay *d = &p->delays[i];
			if (!d->op[0] && free_slot < 0)
				free_slot = i;
			if (d->op[0] && strcmp(d->op, argv[1]) == 0 &&
			    d->ino == (ino ? strtoul(ino, NULL, 0) : 0) &&
			    strcmp(d->name, text ? text : "") == 0)
				break;
		}
		if (i == MAX_DELAYS)
			i = free_slot;
		if (i >= 0) {
			struct delay *d = &p->delays[i];
			snprintf(d->op, sizeof(d->op), "%s", argv[1]);
			snprintf(d->name, sizeof(d->name), "%s", text ? text : "");
			d->ino = ino ? strtoul(ino, NULL, 0) : 0;
			d->ms = atoi(argv[2]);
			if (d->ms <= 0)
				d->op[0] = '\0';
			snprintf(out, size, "ok");
		} else
			snprintf(out, size, "err too many delays");
		pthread_mutex_unlock(&p->lock);
	} else
		snprintf(out, size, "err unknown command");
}

/* Wait until fd is readable; false once main asks us to quit. */
static bool wait_readable(struct probe *p, int fd)
{
	struct pollfd fds[2] = {{.fd = fd, .events = POLLIN},
				{.fd = p->quit[0], .events = POLLIN}};

	while (poll(fds, 2, -1) < 0)
		if (errno != EINTR)
			return false;
	return !fds[1].revents;
}

/* One client at a time; a line in, a line out. */
static void *control_thread(void *arg)
{
	struct probe *p = arg;

	while (wait_readable(p, p->listen_fd)) {
		int fd = accept4(p->listen_fd, NULL, NULL, SOCK_CLOEXEC);
		char line[LINE_MAX_LEN], out[LINE_MAX_LEN];
		size_t have = 0;

		if (fd < 0)
			continue;
		while (wait_readable(p, fd)) {
			ssize_t n = read(fd, line + have, sizeof(line) - 1 - have);
			char *nl;

			if (n <= 0)
				break;
			have += (size_t)n;
			line[have] = '\0';
			while ((nl = strchr(line, '\n'))) {
				size_t used = (size_t)(nl - line) + 1;
				char cmd[LINE_MAX_LEN];

				memcpy(cmd, line, used);
				cmd[used] = '\0';
				command(p, cmd, out, sizeof(out) - 1);
				strcat(out, "\n");
				if (write(fd, out, strlen(out)) < 0)
					break;
				memmove(line, line + used, have - used + 1);
				have -= used;
			}
			if (have == sizeof(line) - 1)
				have = 0; /* an overlong line: dropped */
		}
		close(fd);
	}
	return NULL;
}

static int listen_on(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -1;
	strcpy(sa.sun_path, path);
	unlink(path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

int main(int argc, char **argv)
{
	char *fargv[] = {argv[0], "-o", "default_permissions,fsname=probe,subtype=probe",
			 "-d"};
	struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
	struct probe p = {.no_open = true, .listen_fd = -1, .quit = {-1, -1}};
	struct fuse_loop_config *cfg = NULL;
	pthread_t control;
	int i, lfd, ret = 1;

	for (i = 1; i < argc && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "--open") == 0)
			p.no_open = false;
		else if (strcmp(argv[i], "--debug") == 0)
			args.argc = 4;
		else
			break;
	}
	if (argc - i != 2) {
		fprintf(stderr, "usage: %s [--open] [--debug] SOCKET MOUNTPOINT\n",
			argv[0]);
		return 2;
	}
	p.mountpoint = argv[i + 1];
	pthread_mutex_init(&p.lock, NULL);
	pthread_cond_init(&p.job_done, NULL);
	/* Nodeid 0 is no node; the root is 1 (FUSE_ROOT_ID). */
	if (!node_new(&p, false) || !node_new(&p, true))
		goto out0;
	p.listen_fd = lfd = listen_on(argv[i]);
	if (lfd < 0) {
		perror(argv[i]);
		goto out0;
	}
	p.se = fuse_session_new(&args, &probe_ops, sizeof(probe_ops), &p);
	if (!p.se)
		goto out1;
	if (fuse_set_signal_handlers(p.se) != 0)
		goto out2;
	if (fuse_session_mount(p.se, p.mountpoint) != 0)
		goto out3;
	if (pipe2(p.quit, O_CLOEXEC) != 0)
		goto out4;
	if (pthread_create(&control, NULL, control_thread, &p) != 0)
		goto out4;
	cfg = fuse_loop_cfg_create();
	if (cfg) {
		fuse_loop_cfg_set_clone_fd(cfg, 0);
		fuse_loop_cfg_set_idle_threads(cfg, 16);
		fuse_loop_cfg_set_max_threads(cfg, 32);
		ret = fuse_session_loop_mt(p.se, cfg) != 0;
		fuse_loop_cfg_destroy(cfg);
	}
	if (write(p.quit[1], "q", 1) == 1)
		pthread_join(control, NULL);
out4:
	fuse_session_unmount(p.se);
out3:
	fuse_remove_signal_handlers(p.se);
out2:
	fuse_session_destroy(p.se);
out1:
	close(lfd);
	unlink(argv[i]);
out0:
	/* fuse_session_new may have rebuilt args on the heap. */
	fuse_opt_free_args(&args);
	if (p.quit[0] >= 0) {
		close(p.quit[0]);
		close(p.quit[1]);
	}
	while (p.names) {
		struct name *e = p.names;
		p.names = e->next;
		free(e->text);
		free(e);
	}
	for (size_t k = 0; k < p.count; k++) {
		if (p.nodes[k]) {
			fuse_pollhandle_destroy(p.nodes[k]->ph);
			free(p.nodes[k]->data);
		}
		free(p.nodes[k]);
	}
	free(p.nodes);
	return ret;
}
