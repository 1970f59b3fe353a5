/*
 * log: stderr or syslog, chosen once at start-up. Lines are written with a
 * single write(2) so that lines from worker threads never interleave.
 */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <syslog.h>
#include <unistd.h>

static atomic_bool to_syslog;
static atomic_bool debug_on;

void log_use_syslog(void)
{
	openlog("imdsfs", LOG_PID, LOG_DAEMON);
	atomic_store(&to_syslog, true);
}

void log_set_debug(bool on)
{
	atomic_store(&debug_on, on);
}

bool log_debug_enabled(void)
{
	return atomic_load(&debug_on);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	static const char *const prefix[] = {
		[LOG_LEVEL_ERROR] = "error",
		[LOG_LEVEL_WARNING] = "warning",
		[LOG_LEVEL_INFO] = "info",
		[LOG_LEVEL_DEBUG] = "debug",
	};
	static const int priority[] = {
		[LOG_LEVEL_ERROR] = LOG_ERR,
		[LOG_LEVEL_WARNING] = LOG_WARNING,
		[LOG_LEVEL_INFO] = LOG_INFO,
		[LOG_LEVEL_DEBUG] = LOG_DEBUG,
	};
	char line[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 2)
		n = sizeof(line) - 2;

	if (atomic_load(&to_syslog)) {
		syslog(priority[level], "%s", line);
		return;
	}
	char out[1100];
	int len = snprintf(out, sizeof(out), "imdsfs: %s: %.*s\n", prefix[level], n, line);
	if (len > 0) {
		ssize_t ignored = write(STDERR_FILENO, out, (size_t)len < sizeof(out) ? (size_t)len : sizeof(out) - 1);
		(void)ignored;
	}
}
