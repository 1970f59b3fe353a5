/*
 * replay: run a fuzz target on files, without libFuzzer. Arguments are
 * files or directories (every regular file in them, in name order). Exits
 * non-zero when an input cannot be read; a broken contract or a sanitizer
 * report aborts.
 */
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

static int run_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL, *exact = NULL;
	size_t len = 0, cap = 0;
	int err = 0;

	if (!f) {
		fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
		return 1;
	}
	for (;;) {
		if (len == cap) {
			uint8_t *grown = realloc(buf, cap ? cap * 2 : 4096);
			if (!grown) {
				err = 1;
				goto out;
			}
			buf = grown;
			cap = cap ? cap * 2 : 4096;
		}
		size_t n = fread(buf + len, 1, cap - len, f);
		len += n;
		if (n == 0)
			break;
	}
	if (ferror(f)) {
		fprintf(stderr, "replay: %s: read error\n", path);
		err = 1;
		goto out;
	}
	/* Exactly `len` bytes, as libFuzzer hands them over (no spare NUL):
	 * a target must not read past the end either. */
	exact = malloc(len ? len : 1);
	if (!exact) {
		err = 1;
		goto out;
	}
	memcpy(exact, buf, len);
	LLVMFuzzerTestOneInput(exact, len);
out:
	free(exact);
	free(buf);
	fclose(f);
	return err;
}

static int compare_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run_dir(const char *path, size_t *count)
{
	DIR *d = opendir(path);
	struct dirent *e;
	char **names = NULL;
	size_t n = 0, cap = 0;
	int err = 0;

	if (!d) {
		fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
		return 1;
	}
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		if (n == cap) {
			char **grown = realloc(names, (cap = cap ? cap * 2 : 64) * sizeof(*names));
			if (!grown) {
				err = 1;
				break;
			}
			names = grown;
		}
		if (!(names[n] = malloc(strlen(path) + strlen(e->d_name) + 2))) {
			err = 1;
			break;
		}
		sprintf(names[n++], "%s/%s", path, e->d_name);
	}
	closedir(d);
	qsort(names, n, sizeof(*names), compare_names);
	for (size_t i = 0; i < n; i++) {
		struct stat st;
		if (!err && stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
			err |= run_file(names[i]);
			(*count)++;
		}
		free(names[i]);
	}
	free(names);
	return err;
}

int main(int argc, char **argv)
{
	size_t count = 0;
	int err = 0;

	for (int i = 1; i < argc; i++) {
		struct stat st;
		if (stat(argv[i], &st) != 0) {
			fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
			err = 1;
		} else if (S_ISDIR(st.st_mode)) {
			err |= run_dir(argv[i], &count);
		} else {
			err |= run_file(argv[i]);
			count++;
		}
	}
	printf("%s: %zu inputs replayed%s\n", argc > 0 ? argv[0] : "replay", count,
	       err ? ", with errors" : "");
	return err || count == 0;
}
