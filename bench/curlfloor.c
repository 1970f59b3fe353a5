/*
 * curlfloor: the peak memory of a program that does nothing but one HTTP
 * GET with libcurl, as imdsfs does it (curl_global_init, one easy handle).
 * scripts/bench prints it beside the daemon's peak RSS: the part of the
 * daemon's memory that comes with libcurl and the libraries it loads.
 *
 *   curlfloor URL   prints "<VmHWM kB> <RssAnon kB> <RssFile kB>"
 */
#include <curl/curl.h>

#include <stdio.h>
#include <string.h>

static size_t discard(char *data, size_t size, size_t n, void *ctx)
{
	(void)data;
	(void)ctx;
	return size * n;
}

static long status_kb(const char *field)
{
	char line[256];
	long kb = -1;
	size_t len = strlen(field);
	FILE *f = fopen("/proc/self/status", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, field, len) == 0 && line[len] == ':')
			sscanf(line + len + 1, "%ld", &kb);
	fclose(f);
	return kb;
}

int main(int argc, char *argv[])
{
	CURL *curl;
	CURLcode rc;

	if (argc != 2) {
		fprintf(stderr, "usage: %s URL\n", argv[0]);
		return 2;
	}
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK ||
	    !(curl = curl_easy_init()))
		return 1;
	curl_easy_setopt(curl, CURLOPT_URL, argv[1]);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 5000L);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard);
	rc = curl_easy_perform(curl);
	if (rc != CURLE_OK) {
		fprintf(stderr, "curlfloor: %s: %s\n", argv[1], curl_easy_strerror(rc));
		return 1;
	}
	printf("%ld %ld %ld\n", status_kb("VmHWM"), status_kb("RssAnon"),
	       status_kb("RssFile"));
	curl_easy_cleanup(curl);
	curl_global_cleanup();
	return 0;
}
