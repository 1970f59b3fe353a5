/*
 * openloop: how many times a second one file can be opened, read whole and
 * closed, by THREADS threads for SECONDS seconds. scripts/bench runs it on
 * a file in imdsfs and on a tmpfs file with the same bytes, and compares.
 *
 *   openloop FILE SECONDS THREADS   prints "<ops per second> <ops> <bytes per read>"
 *
 * Every read is checked against the size the first one saw, so a loop that
 * quietly gets errors or short reads fails instead of looking fast.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 64
#define BUF_SIZE    65536

struct worker {
	pthread_t thread;
	const char *path;
	ssize_t expect;
	unsigned long long ops;
	int err;
	char pad[64]; /* keep each worker's counter on its own cache line */
};

static atomic_bool stop;

static ssize_t read_once(const char *path, char *buf, int *err)
{
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0) {
		*err = errno;
		return -1;
	}
	n = read(fd, buf, BUF_SIZE);
	if (n < 0)
		*err = errno;
	close(fd);
	return n;
}

static void *run(void *arg)
{
	struct worker *w = arg;
	char *buf = malloc(BUF_SIZE);

	if (!buf) {
		w->err = ENOMEM;
		return NULL;
	}
	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		ssize_t n = read_once(w->path, buf, &w->err);

		if (n != w->expect) {
			if (!w->err)
				w->err = EIO; /* a short or changed read */
			break;
		}
		w->ops++;
	}
	free(buf);
	return NULL;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char *argv[])
{
	struct worker workers[MAX_THREADS] = {0};
	unsigned long long total = 0;
	struct timespec pause;
	double seconds, start, elapsed;
	int threads, err = 0;
	ssize_t expect;
	char *buf;

	if (argc != 4 || (seconds = atof(argv[2])) <= 0 ||
	    (threads = atoi(argv[3])) < 1 || threads > MAX_THREADS) {
		fprintf(stderr, "usage: %s FILE SECONDS THREADS (1..%d)\n", argv[0],
			MAX_THREADS);
		return 2;
	}
	buf = malloc(BUF_SIZE);
	if (!buf)
		return 1;
	expect = read_once(argv[1], buf, &err);
	free(buf);
	if (expect < 0) {
		fprintf(stderr, "openloop: %s: %s\n", argv[1], strerror(err));
		return 1;
	}

	start = now();
	for (int i = 0; i < threads; i++) {
		workers[i].path = argv[1];
		workers[i].expect = expect;
		err = pthread_create(&workers[i].thread, NULL, run, &workers[i]);
		if (err) {
			fprintf(stderr, "openloop: pthread_create: %s\n", strerror(err));
			atomic_store(&stop, true);
			threads = i;
			break;
		}
	}
	if (!err) {
		pause.tv_sec = (time_t)seconds;
		pause.tv_nsec = (long)((seconds - (double)pause.tv_sec) * 1e9);
		while (nanosleep(&pause, &pause) == -1 && errno == EINTR)
			;
		atomic_store(&stop, true);
	}
	for (int i = 0; i < threads; i++) {
		pthread_join(workers[i].thread, NULL);
		total += workers[i].ops;
		if (workers[i].err && !err)
			err = workers[i].err;
	}
	elapsed = now() - start;
	if (err) {
		fprintf(stderr, "openloop: %s: %s\n", argv[1], strerror(err));
		return 1;
	}
	printf("%.0f %llu %zd\n", (double)total / elapsed, total, expect);
	return 0;
}
