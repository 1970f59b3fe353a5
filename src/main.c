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

#include <fuse_lowlevel.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_ENDPOINT      "http://169.254.169.254"
#define DEFAULT_ENDPOINT_IPV6 "http://[fd00:ec2::254]"
#define MAX_WORKER_THREADS    64
#define READY_WAIT_MS	      15000

struct options {
	char *endpoint;
	char *endpoint_mode;
	char *token_ttl;
	char *timeout;
	char *retries;
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
	       "  -o endpoint=URL        IMDS base URL (default %s,\n"
	       "                         or $AWS_EC2_METADATA_SERVICE_ENDPOINT)\n"
	       "  -o endpoint_mode=MODE  ipv4 or ipv6 (ipv6: %s;\n"
	       "                         or $AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE)\n"
	       "  -o token_ttl=SECONDS   token lifetime asked for, 1..%d (default 21600)\n"
	       "  -o timeout=MS          per-request limit (default 1000)\n"
	       "  -o retries=N           retries of transient failures (default 3)\n"
	       "  -o hide_sensitive      leave credentials and user data out of the tree\n"
	       "  -o allow_other, ...    FUSE mount options are passed through\n"
	       "\n"
	       "See imdsfs(8).\n",
	       prog, DEFAULT_ENDPOINT, DEFAULT_ENDPOINT_IPV6, FETCH_TOKEN_TTL_MAX);
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
 * a malloc'd copy without the '/' or NULL. */
static char *check_endpoint(const char *url)
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
	fprintf(stderr, "imdsfs: bad endpoint '%s': expected http://HOST[:PORT]\n", url);
	return NULL;
}

static bool env_is_true(const char *name)
{
	const char *v = getenv(name);

	return v && strcasecmp(v, "true") == 0;
}

/* The endpoint: the option, else the environment, else by mode. */
static char *choose_endpoint(const struct options *o)
{
	const char *mode = o->endpoint_mode ? o->endpoint_mode
					     : getenv("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE");
	const char *url = o->endpoint ? o->endpoint : getenv("AWS_EC2_METADATA_SERVICE_ENDPOINT");

	if (url && *url)
		return check_endpoint(url);
	if (!mode || !*mode || strcasecmp(mode, "ipv4") == 0)
		return strdup(DEFAULT_ENDPOINT);
	if (strcasecmp(mode, "ipv6") == 0)
		return strdup(DEFAULT_ENDPOINT_IPV6);
	fprintf(stderr, "imdsfs: bad endpoint_mode '%s': expected ipv4 or ipv6\n", mode);
	return NULL;
}

/*
 * Fork; the parent waits until the child's mount answers (the child writes
 * to the pipe from FUSE's init, which runs once the kernel's first request
 * is served) and exits 0, or exits 1 if the child died first.
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

static int reload_fd = -1;

static void on_sighup(int sig)
{
	(void)sig;
	fs_request_reload(reload_fd);
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct options o = {0};
	struct fetch_config fc = {0};
	struct imdsfs fs = {0};
	struct fuse_loop_config *loop_config = NULL;
	struct fuse_session *se = NULL;
	char *endpoint = NULL;
	const char *mountpoint;
	long ttl = 21600, timeout = 1000, retries = 3;
	int ret = 1;

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
	mountpoint = o.positional[o.npositional - 1];
	if ((o.token_ttl && (ttl = parse_number("token_ttl", o.token_ttl, 1,
						 FETCH_TOKEN_TTL_MAX)) < 0) ||
	    (o.timeout && (timeout = parse_number("timeout", o.timeout, 1, 600000)) < 0) ||
	    (o.retries && (retries = parse_number("retries", o.retries, 0, 10)) < 0))
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

	if (tree_init() != 0 || fetch_global_init() != 0)
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

	se = fuse_session_new(&args, &imdsfs_ops, sizeof(imdsfs_ops), &fs);
	if (!se)
		goto out_state; /* libfuse said why */
	fs.session = se;
	if (fuse_set_signal_handlers(se) != 0)
		goto out_session;
	/* SIGHUP clears caches instead of ending the session. */
	reload_fd = fs_reload_fd(&fs);
	struct sigaction hup = {.sa_handler = on_sighup, .sa_flags = SA_RESTART};
	sigemptyset(&hup.sa_mask);
	sigaction(SIGHUP, &hup, NULL);

	if (fuse_session_mount(se, mountpoint) != 0) {
		fprintf(stderr, "imdsfs: cannot mount on %s\n", mountpoint);
		goto out_signals;
	}
	if (!o.foreground && daemonize(&fs, mountpoint) != 0)
		goto out_unmount;

	log_info("serving %s from %s (token_ttl=%lds timeout=%ldms retries=%ld%s)", mountpoint,
		 endpoint, ttl, timeout, retries, o.hide_sensitive ? ", hide_sensitive" : "");
	loop_config = fuse_loop_cfg_create();
	if (!loop_config)
		goto out_unmount;
	/* Enough workers that requests waiting on a slow IMDS never starve
	 * the ones the cache can answer at once. */
	fuse_loop_cfg_set_max_threads(loop_config, MAX_WORKER_THREADS);
	fuse_loop_cfg_set_idle_threads(loop_config, 4);
	ret = fuse_session_loop_mt(se, loop_config) == 0 ? 0 : 1;
	fuse_loop_cfg_destroy(loop_config);
	log_info("unmounting %s", mountpoint);

out_unmount:
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out_state:
	if (fs.wake[1] > 0)
		fs_free_state(&fs);
	node_table_destroy(fs.resolver.nodes);
	cache_destroy(fs.resolver.cache);
	fetch_destroy(fs.resolver.fetcher);
	fetch_global_cleanup();
out_args:
	free(endpoint);
	for (int i = 0; i < o.npositional; i++)
		free(o.positional[i]);
	free(o.endpoint);
	free(o.endpoint_mode);
	free(o.token_ttl);
	free(o.timeout);
	free(o.retries);
	fuse_opt_free_args(&args);
	return ret;
}
