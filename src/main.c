/*
 * main: options, validation, and the mount / daemonize / loop / teardown
 * ladder. Everything that can be refused is refused here, before mounting,
 * with one line and exit status 1: after the mount, the daemon never exits
 * on its own (a dead daemon leaves a dead mount point).
 */
#include "config.h"
#include "fetch.h"
#include "fs.h"
#include "log.h"
#include "tree.h"
#include "watch.h"

#include <fuse_lowlevel.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/vfs.h>
#include <unistd.h>

#define DEFAULT_ENDPOINT      "http://169.254.169.254"
#define DEFAULT_ENDPOINT_IPV6 "http://[fd00:ec2::254]"
/*
 * One worker thread per request in flight, up to this many: readers of one
 * volatile value share its request only if they are all in the daemon while
 * it is under way (the kernel queues the rest). Waiting threads are cheap;
 * what reaches IMDS at once is bounded by fetch.c, not by this.
 */
#define MAX_WORKER_THREADS    1024
/* Worker threads kept idle after a burst (the rest exit as they finish);
 * fetch.c keeps as many idle connections. */
#define IDLE_WORKER_THREADS   2
#define READY_WAIT_MS	      15000

struct options {
	char *endpoint;
	char *endpoint_mode;
	char *token_ttl;
	char *timeout;
	char *retries;
	char *watch;
	int hide_sensitive;
	int foreground;
	int debug;
	int help;
	int version;
	char *positional[3];
	int npositional;
};

enum {
	KEY_FOREGROUND,
	KEY_DEBUG,
	KEY_HELP,
	KEY_VERSION,
};

#define OPTION(spec, field) {spec, offsetof(struct options, field), 1}

static const struct fuse_opt option_spec[] = {
	OPTION("endpoint=%s", endpoint),
	OPTION("endpoint_mode=%s", endpoint_mode),
	OPTION("token_ttl=%s", token_ttl),
	OPTION("timeout=%s", timeout),
	OPTION("retries=%s", retries),
	OPTION("watch=%s", watch),
	OPTION("hide_sensitive", hide_sensitive),
	FUSE_OPT_KEY("-f", KEY_FOREGROUND),
	FUSE_OPT_KEY("-d", KEY_DEBUG),
	FUSE_OPT_KEY("debug", KEY_DEBUG),
	FUSE_OPT_KEY("-h", KEY_HELP),
	FUSE_OPT_KEY("--help", KEY_HELP),
	FUSE_OPT_KEY("-V", KEY_VERSION),
	FUSE_OPT_KEY("--version", KEY_VERSION),
	FUSE_OPT_END,
};

static void usage(const char *prog)
{
	printf("usage: %s [options] [SOURCE] MOUNTPOINT\n"
	       "\n"
	       "Mount the EC2 Instance Metadata Service (IMDSv2) as files.\n"
	       "\n"
	       "  -f                     stay in the foreground (logs to stderr)\n"
	       "  -d, -o debug           debug logging (never values or secrets)\n"
	       "  -h, --help             this text\n"
	       "  -V, --version          the version\n"
	       "  -o endpoint=URL        IMDS base URL (default %s)\n"
	       "  -o endpoint_mode=MODE  ipv4 or ipv6 (ipv6: %s)\n"
	       "  -o token_ttl=SECONDS   token lifetime asked for, 1..%d (default 21600)\n"
	       "  -o timeout=MS          per-request limit, 1..600000 (default 1000)\n"
	       "  -o retries=N           retries of transient failures, 0..10 (default 3)\n"
	       "  -o watch=SECONDS       poll the event values (spot interruption, rebalance,\n"
	       "                         maintenance, ...) every SECONDS and wake file watchers\n"
	       "                         on changes, 1..%d; 0: off (default)\n"
	       "  -o hide_sensitive      leave credentials and user data out of the tree\n"
	       "  -o allow_other, ...    FUSE mount options are passed through\n"
	       "\n"
	       "Environment: AWS_EC2_METADATA_SERVICE_ENDPOINT,\n"
	       "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE, AWS_EC2_METADATA_DISABLED.\n"
	       "See imdsfs(8).\n",
	       prog, DEFAULT_ENDPOINT, DEFAULT_ENDPOINT_IPV6, FETCH_TOKEN_TTL_MAX,
	       WATCH_SECONDS_MAX);
}

static int on_option(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct options *o = data;

	switch (key) {
	case FUSE_OPT_KEY_NONOPT:
		if (o->npositional >= 2) {
			fprintf(stderr, "imdsfs: unexpected argument '%s'\n", arg);
			return -1;
		}
		o->positional[o->npositional++] = strdup(arg);
		return 0;
	case KEY_FOREGROUND:
		o->foreground = 1;
		return 0;
	case KEY_DEBUG:
		o->debug = 1;
		return 0;
	case KEY_HELP:
		o->help = 1;
		return 0;
	case KEY_VERSION:
		o->version = 1;
		return 0;
	default:
		return 1; /* a FUSE mount option: pass it on */
	}
}

/* A whole decimal number in [min, max], or -1. */
static long parse_number(const char *name, const char *text, long min, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(text, &end, 10);
	if (!*text || *end || errno || v < min || v > max || !isdigit((unsigned char)text[0])) {
		fprintf(stderr, "imdsfs: bad value for %s: '%s' (a whole number, %ld..%ld)\n",
			name, text, min, max);
		return -1;
	}
	return v;
}

/* http://host[:port] with an optional trailing '/', nothing else. Returns
 * a malloc'd copy without the '/', or NULL after one line on stderr that
 * names `what` (the option or variable it came from). */
static char *check_endpoint(const char *what, const char *url)
{
	const char *host = url + strlen("http://"), *p;
	size_t n;
	char *copy;

	if (strncasecmp(url, "http://", 7) != 0)
		goto bad;
	if (*host == '[') {
		p = strchr(host, ']');
		if (!p || p == host + 1)
			goto bad;
		for (const char *c = host + 1; c < p; c++)
			if (!isxdigit((unsigned char)*c) && *c != ':' && *c != '.')
				goto bad;
		p++;
	} else {
		p = host;
		while (isalnum((unsigned char)*p) || *p == '.' || *p == '-')
			p++;
		if (p == host)
			goto bad;
	}
	if (*p == ':') {
		char *end;
		long port = strtol(p + 1, &end, 10);
		if (end == p + 1 || port < 1 || port > 65535 || !isdigit((unsigned char)p[1]))
			goto bad;
		p = end;
	}
	if (*p == '/')
		p++;
	if (*p)
		goto bad;
	n = strlen(url);
	copy = strdup(url);
	if (copy && n && copy[n - 1] == '/')
		copy[n - 1] = '\0';
	return copy;
bad:
	fprintf(stderr, "imdsfs: bad %s '%s': expected http://HOST[:PORT]\n", what, url);
	return NULL;
}

static bool env_is_true(const char *name)
{
	const char *v = getenv(name);

	return v && strcasecmp(v, "true") == 0;
}

/* ipv4 or ipv6 (any case) → its fixed URL; NULL for anything else. */
static const char *mode_endpoint(const char *mode)
{
	if (strcasecmp(mode, "ipv4") == 0)
		return DEFAULT_ENDPOINT;
	if (strcasecmp(mode, "ipv6") == 0)
		return DEFAULT_ENDPOINT_IPV6;
	return NULL;
}

/*
 * The endpoint, most explicit first: the endpoint option, the endpoint_mode
 * option, $AWS_EC2_METADATA_SERVICE_ENDPOINT, then
 * $AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE (an endpoint beats a mode, as in
 * the AWS SDKs; a command line beats the environment). Every value given is
 * checked, used or not, so that a typo never passes silently. Returns a
 * malloc'd URL, or NULL after one line on stderr.
 */
static char *choose_endpoint(const struct options *o)
{
	const char *env_url = getenv("AWS_EC2_METADATA_SERVICE_ENDPOINT");
	const char *env_mode = getenv("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE");
	const char *by_opt_mode = NULL, *by_env_mode = NULL;
	char *url = NULL, *env_checked = NULL;

	if (o->endpoint_mode && !(by_opt_mode = mode_endpoint(o->endpoint_mode))) {
		fprintf(stderr, "imdsfs: bad endpoint_mode '%s': expected ipv4 or ipv6\n",
			o->endpoint_mode);
		return NULL;
	}
	if (env_mode && *env_mode && !(by_env_mode = mode_endpoint(env_mode))) {
		fprintf(stderr,
			"imdsfs: bad AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE '%s': expected "
			"IPv4 or IPv6\n",
			env_mode);
		return NULL;
	}
	if (env_url && *env_url &&
	    !(env_checked = check_endpoint("AWS_EC2_METADATA_SERVICE_ENDPOINT", env_url)))
		return NULL;
	if (o->endpoint)
		url = check_endpoint("endpoint", o->endpoint);
	else if (by_opt_mode)
		url = strdup(by_opt_mode);
	else if (env_checked)
		url = strdup(env_checked);
	else
		url = strdup(by_env_mode ? by_env_mode : DEFAULT_ENDPOINT);
	free(env_checked);
	return url;
}

/* Undo the octal escapes of /proc/self/mountinfo (\040 for a space) in place. */
static void unescape_mountinfo(char *s)
{
	char *out = s;

	while (*s) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
		    s[3] >= '0' && s[3] <= '7') {
			*out++ = (char)((s[1] - '0') << 6 | (s[2] - '0') << 3 | (s[3] - '0'));
			s += 4;
		} else {
			*out++ = *s++;
		}
	}
	*out = '\0';
}

/* Whether the topmost mount on the absolute path `dir` is an imdsfs. */
static bool imdsfs_mounted_at(const char *dir)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0;
	bool found = false;

	if (!f)
		return false;
	/* id parent dev root MOUNTPOINT options [tags...] - TYPE source superopts;
	 * later lines are mounted on top of earlier ones. */
	while (getline(&line, &cap, f) > 0) {
		char *save = NULL, *field, *mnt = NULL, *type = NULL;
		int i = 0;
		bool after_dash = false;

		for (field = strtok_r(line, " \n", &save); field;
		     field = strtok_r(NULL, " \n", &save), i++) {
			if (i == 4)
				mnt = field;
			else if (after_dash) {
				type = field;
				break;
			} else if (i > 5 && strcmp(field, "-") == 0)
				after_dash = true;
		}
		if (!mnt || !type)
			continue;
		unescape_mountinfo(mnt);
		if (strcmp(mnt, dir) == 0)
			found = strcmp(type, "fuse.imdsfs") == 0;
	}
	free(line);
	fclose(f);
	return found;
}

/* The absolute path of `path`, also when it is a dead FUSE mount (whose own
 * stat fails with ENOTCONN): then its parent is resolved and its name kept.
 * Returns a malloc'd path or NULL with errno set. */
static char *absolute_path(const char *path)
{
	char *abs = realpath(path, NULL), *copy, *slash, *parent;
	const char *name;

	if (abs || errno != ENOTCONN)
		return abs;
	copy = strdup(path);
	if (!copy)
		return NULL;
	for (size_t n = strlen(copy); n > 1 && copy[n - 1] == '/'; n--)
		copy[n - 1] = '\0';
	slash = strrchr(copy, '/');
	name = slash ? slash + 1 : copy;
	if (slash == copy)
		parent = realpath("/", NULL);
	else if (slash) {
		*slash = '\0';
		parent = realpath(copy, NULL);
	} else {
		parent = realpath(".", NULL);
	}
	if (parent && strcmp(name, ".") != 0 && strcmp(name, "..") != 0 &&
	    asprintf(&abs, "%s%s%s", parent, strcmp(parent, "/") ? "/" : "", name) < 0)
		abs = NULL;
	if (!abs)
		errno = ENOTCONN;
	free(parent);
	free(copy);
	return abs;
}

/*
 * Check the mount point before mounting, so that a mistake gets one clear
 * line instead of libfuse's. It must be a directory. A live imdsfs mount
 * there is refused: FUSE would stack a second daemon on top of it and hide
 * the first. A dead imdsfs mount there (its daemon was killed: "Transport
 * endpoint is not connected") is detached, so that a restart after a crash
 * works. Returns the absolute path to mount on (malloc'd: the daemon chdirs
 * to / and must unmount the same place), or NULL after one line on stderr.
 */
static char *prepare_mountpoint(const char *mountpoint)
{
	struct statfs sfs;
	struct stat st;
	char *abs = absolute_path(mountpoint);

	if (!abs) {
		fprintf(stderr, "imdsfs: cannot mount on %s: %s\n", mountpoint, strerror(errno));
		return NULL;
	}
	/* statfs, not stat: the kernel may answer a stat of a dead FUSE mount
	 * from its attribute cache, but always asks the daemon for statfs. */
	if (statfs(abs, &sfs) != 0 && errno == ENOTCONN) {
		if (!imdsfs_mounted_at(abs)) {
			fprintf(stderr,
				"imdsfs: cannot mount on %s: another FUSE file system there is "
				"dead (unmount it: fusermount3 -u -z %s)\n",
				mountpoint, abs);
			goto fail;
		}
		if (umount2(abs, MNT_DETACH) != 0) {
			fprintf(stderr,
				"imdsfs: cannot mount on %s: a dead imdsfs mount is there and "
				"cannot be detached (%s); run fusermount3 -u -z %s\n",
				mountpoint, strerror(errno), abs);
			goto fail;
		}
		log_info("detached the dead imdsfs mount on %s (its daemon had died)", abs);
	}
	if (stat(abs, &st) != 0) {
		fprintf(stderr, "imdsfs: cannot mount on %s: %s\n", mountpoint, strerror(errno));
		goto fail;
	}
	if (!S_ISDIR(st.st_mode)) {
		fprintf(stderr, "imdsfs: cannot mount on %s: %s\n", mountpoint,
			strerror(ENOTDIR));
		goto fail;
	}
	if (imdsfs_mounted_at(abs)) {
		fprintf(stderr,
			"imdsfs: cannot mount on %s: imdsfs is already mounted there "
			"(unmount it first: fusermount3 -u %s)\n",
			mountpoint, abs);
		goto fail;
	}
	return abs;
fail:
	free(abs);
	return NULL;
}

/*
 * Tell systemd how we are (Type=notify: "READY=1", "STOPPING=1"), speaking
 * sd_notify's datagram protocol directly rather than linking libsystemd.
 * Does nothing when $NOTIFY_SOCKET is not set.
 */
static void notify_systemd(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	size_t n;
	int fd;

	if (!path || (path[0] != '/' && path[0] != '@') ||
	    (n = strlen(path)) >= sizeof(sa.sun_path))
		return;
	memcpy(sa.sun_path, path, n);
	if (sa.sun_path[0] == '@')
		sa.sun_path[0] = '\0'; /* an abstract socket */
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0 ||
	    sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa,
		   (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n)) < 0)
		log_warning("cannot tell systemd %s: %s", state, strerror(errno));
	if (fd >= 0)
		close(fd);
}

/*
 * Fork; the parent waits until the child's mount answers (the child writes
 * to the pipe from FUSE's init, which runs once the kernel's first request
 * is served) and exits 0, or exits 1 if the child died first. A child that
 * is still not ready after READY_WAIT_MS is told to unmount and quit, so
 * that a non-zero exit never leaves a mount behind.
 */
static int daemonize(struct imdsfs *fs, const char *mountpoint)
{
	int ready[2];
	pid_t pid;

	if (pipe(ready) < 0) {
		fprintf(stderr, "imdsfs: pipe: %s\n", strerror(errno));
		return -1;
	}
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, "imdsfs: fork: %s\n", strerror(errno));
		return -1;
	}
	if (pid > 0) {
		struct pollfd p = {.fd = ready[0], .events = POLLIN};
		char c = 0;

		close(ready[1]);
		if (poll(&p, 1, READY_WAIT_MS) == 1 && read(ready[0], &c, 1) == 1 && c == '0')
			_exit(0);
		kill(pid, SIGTERM);
		fprintf(stderr, "imdsfs: the daemon did not get %s ready; see syslog\n",
			mountpoint);
		_exit(1);
	}
	close(ready[0]);
	fs->ready_fd = ready[1];
	if (setsid() < 0 || chdir("/") < 0)
		return -1;
	int null = open("/dev/null", O_RDWR);
	if (null >= 0) {
		dup2(null, STDIN_FILENO);
		dup2(null, STDOUT_FILENO);
		dup2(null, STDERR_FILENO);
		if (null > STDERR_FILENO)
			close(null);
	}
	log_use_syslog();
	return 0;
}

/* The signal handler's only way to the daemon's state. */
static struct imdsfs *reload_target;

static void on_sighup(int sig)
{
	(void)sig;
	fs_request_reload(reload_target);
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct options o = {0};
	struct fetch_config fc = {0};
	struct imdsfs fs = {0};
	struct fuse_loop_config *loop_config = NULL;
	struct fuse_session *se = NULL;
	char *endpoint = NULL, *mountpoint = NULL;
	long ttl = 21600, timeout = 1000, retries = 3, watch = 0;
	int ret = 1, res;

	/* One malloc arena: values are allocated by worker threads and freed
	 * by others (the housekeeper, forgets); per-thread arenas would keep
	 * growing with them. The daemon is not allocation-bound. */
	mallopt(M_ARENA_MAX, 1);

	if (fuse_opt_parse(&args, &o, option_spec, on_option) != 0)
		goto out_args;
	if (o.help) {
		usage(argv[0]);
		ret = 0;
		goto out_args;
	}
	if (o.version) {
		printf("imdsfs %s (libfuse %s)\n", IMDSFS_VERSION, fuse_pkgversion());
		ret = 0;
		goto out_args;
	}
	if (env_is_true("AWS_EC2_METADATA_DISABLED")) {
		fprintf(stderr, "imdsfs: AWS_EC2_METADATA_DISABLED is true: IMDS access is "
				"disabled, not mounting\n");
		goto out_args;
	}
	if (o.npositional == 0) {
		fprintf(stderr, "imdsfs: no mount point given (try --help)\n");
		goto out_args;
	}
	if ((o.token_ttl && (ttl = parse_number("token_ttl", o.token_ttl, 1,
						 FETCH_TOKEN_TTL_MAX)) < 0) ||
	    (o.timeout && (timeout = parse_number("timeout", o.timeout, 1, 600000)) < 0) ||
	    (o.retries && (retries = parse_number("retries", o.retries, 0, 10)) < 0) ||
	    (o.watch && (watch = parse_number("watch", o.watch, 0, WATCH_SECONDS_MAX)) < 0))
		goto out_args;
	endpoint = choose_endpoint(&o);
	if (!endpoint)
		goto out_args;
	log_set_debug(o.debug);

	/* default_permissions always: the file modes are what keep credentials
	 * from other users and from containers. */
	if (fuse_opt_add_arg(&args, "-odefault_permissions") != 0 ||
	    fuse_opt_add_arg(&args, "-ofsname=imdsfs") != 0 ||
	    fuse_opt_add_arg(&args, "-osubtype=imdsfs") != 0)
		goto out_args;

	if (tree_init() != 0 || watch_check_table() != 0 || fetch_global_init() != 0)
		goto out_args;
	fc.endpoint = endpoint;
	fc.token_ttl = (unsigned int)ttl;
	fc.timeout_ms = (unsigned int)timeout;
	fc.retries = (unsigned int)retries;
	if (fetch_create(&fc, &fs.resolver.fetcher) != 0 ||
	    !(fs.resolver.cache = cache_create()) ||
	    !(fs.resolver.nodes = node_table_create()) || fs_init_state(&fs) != 0) {
		fprintf(stderr, "imdsfs: out of memory\n");
		goto out_state;
	}
	fs.resolver.hide_sensitive = o.hide_sensitive;
	if (watch > 0 && watch_create((unsigned int)watch, &fs.resolver.watch) != 0) {
		fprintf(stderr, "imdsfs: out of memory\n");
		goto out_state;
	}

	se = fuse_session_new(&args, &imdsfs_ops, sizeof(imdsfs_ops), &fs);
	if (!se)
		goto out_state; /* libfuse said why */
	fs.session = se;
	/* SIGTERM and SIGINT always unmount cleanly, even when whoever started
	 * us ignored them (a shell does for `imdsfs -f ... &`): libfuse only
	 * takes over signals that are at their default. */
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	if (fuse_set_signal_handlers(se) != 0)
		goto out_session;
	/* SIGHUP clears caches instead of ending the session. */
	reload_target = &fs;
	struct sigaction hup = {.sa_handler = on_sighup, .sa_flags = SA_RESTART};
	sigemptyset(&hup.sa_mask);
	sigaction(SIGHUP, &hup, NULL);

	/* Last before mounting, as it may detach a dead mount: every option
	 * has been accepted by now. */
	mountpoint = prepare_mountpoint(o.positional[o.npositional - 1]);
	if (!mountpoint)
		goto out_signals;
	fs.mountpoint = mountpoint;
	if (fuse_session_mount(se, mountpoint) != 0) {
		/* libfuse (or fusermount3) has said why on the line before. */
		fprintf(stderr, "imdsfs: cannot mount on %s\n", mountpoint);
		goto out_signals;
	}
	if (fs_use_session_io(&fs) != 0) {
		fprintf(stderr, "imdsfs: out of memory\n");
		goto out_unmount;
	}
	if (!o.foreground && daemonize(&fs, mountpoint) != 0)
		goto out_unmount;

	log_info("serving %s from %s (token_ttl=%lds timeout=%ldms retries=%ld watch=%lds%s)",
		 mountpoint, endpoint, ttl, timeout, retries, watch,
		 o.hide_sensitive ? ", hide_sensitive" : "");
	loop_config = fuse_loop_cfg_create();
	if (!loop_config)
		goto out_unmount;
	/* Enough workers that requests waiting on a slow IMDS never starve
	 * the ones the cache can answer at once, and that many readers of one
	 * value wait for its one request together. */
	fuse_loop_cfg_set_max_threads(loop_config, MAX_WORKER_THREADS);
	fuse_loop_cfg_set_idle_threads(loop_config, IDLE_WORKER_THREADS);
	/* Under systemd (Type=notify): the mount exists, and the kernel holds
	 * any request to it until the loop below answers FUSE's init. */
	if (o.foreground)
		notify_systemd("READY=1");
	/* 0 after an unmount, the signal's number after SIGTERM/SIGINT (both
	 * a clean end), -errno when reading from /dev/fuse failed. */
	res = fuse_session_loop_mt(se, loop_config);
	ret = res == 0 || res == SIGTERM || res == SIGINT ? 0 : 1;
	fs_stop(&fs);
	fuse_loop_cfg_destroy(loop_config);
	if (o.foreground)
		notify_systemd("STOPPING=1");
	if (ret != 0)
		log_error("the FUSE session ended with an error: %s",
			  strerror(res < 0 ? -res : EIO));
	log_info("unmounting %s", mountpoint);

out_unmount:
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out_state:
	fs_free_state(&fs);
	watch_destroy(fs.resolver.watch);
	node_table_destroy(fs.resolver.nodes);
	cache_destroy(fs.resolver.cache);
	fetch_destroy(fs.resolver.fetcher);
	fetch_global_cleanup();
out_args:
	free(mountpoint);
	free(endpoint);
	for (int i = 0; i < o.npositional; i++)
		free(o.positional[i]);
	free(o.endpoint);
	free(o.endpoint_mode);
	free(o.token_ttl);
	free(o.timeout);
	free(o.retries);
	free(o.watch);
	fuse_opt_free_args(&args);
	return ret;
}
